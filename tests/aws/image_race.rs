//! PutImage racing DeleteRepository on the AWS backend (S3 + DynamoDB): the scenarios of
//! tests/common/image_race.rs.

use crate::common::image_race::*;
use crate::common::service::small_parts;
use crate::common::{aws, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_image_in_writes_only_in_its_incarnation_on_aws() {
    put_image_in_writes_only_in_its_incarnation(&aws::metadata().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_image_racing_delete_writes_nothing_on_aws() {
    let (meta, blobs) = aws::adapters().await;
    put_image_racing_delete_writes_nothing(meta, blobs, small_parts(), &unique("aws-race/image"))
        .await;
}

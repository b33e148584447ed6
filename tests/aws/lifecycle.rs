//! Repositories deleted and created again, and the upload age cap, on the AWS backend (S3 +
//! DynamoDB): the scenarios of tests/common/lifecycle.rs. The table is shared with the other
//! suites, so nothing here sweeps it.

use std::sync::Arc;

use ecr_layer_upload::domain::clock::ManualClock;
use ecr_layer_upload::ports::MetadataStore;
use ecr_layer_upload::service::Service;
use ecr_layer_upload::service::types::DeleteRepositoryRequest;

use crate::common::lifecycle::*;
use crate::common::service::small_parts;
use crate::common::{aws, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_repository_shares_nothing_on_aws() {
    let (meta, blobs) = aws::adapters().await;
    let svc = Service::new(meta, blobs, small_parts());
    recreated_repository_shares_nothing(&svc, &unique("aws-life/recreated")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_a_deleted_incarnation_is_not_live_on_aws() {
    let (meta, blobs) = aws::adapters().await;
    let svc = Service::new(meta, blobs, small_parts());
    an_upload_of_a_deleted_incarnation_is_not_live(&svc, &unique("aws-life/stale")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_racing_delete_records_nothing_on_aws() {
    let (meta, blobs) = aws::adapters().await;
    complete_racing_delete_records_nothing(meta, blobs, small_parts(), &unique("aws-life/race"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_end_at_their_age_cap_on_aws() {
    let (meta, blobs) = aws::adapters().await;
    let clock = Arc::new(ManualClock::starting_now());
    let svc = Service::new(meta, blobs, age_settings()).with_clock(clock.clone());
    let name = unique("aws-life/age");
    let id = uploads_end_at_their_age_cap(&svc, &clock, &name).await;
    // DeleteRepository ends the capped upload too (the shared table is not swept here).
    svc.delete_repository(DeleteRepositoryRequest {
        force: true,
        ..DeleteRepositoryRequest::new(name.parse().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(svc.metadata().get_upload(&id).await.unwrap(), None);
}

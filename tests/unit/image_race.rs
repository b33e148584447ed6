//! PutImage racing DeleteRepository on the in-memory and embedded backends (the scenarios are in
//! tests/common/image_race.rs).

use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata};
use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};

use crate::common::image_race::*;
use crate::common::service::small_parts;
use crate::common::temp_dir;

#[tokio::test]
async fn memory_put_image_in_writes_only_in_its_incarnation() {
    put_image_in_writes_only_in_its_incarnation(&MemoryMetadata::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_put_image_in_writes_only_in_its_incarnation() {
    let dir = temp_dir();
    put_image_in_writes_only_in_its_incarnation(&LocalMetadata::open(dir.path()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_put_image_racing_delete_writes_nothing() {
    put_image_racing_delete_writes_nothing(
        MemoryMetadata::new(),
        MemoryBlobs::new(),
        small_parts(),
        "race/image",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_put_image_racing_delete_writes_nothing() {
    let dir = temp_dir();
    put_image_racing_delete_writes_nothing(
        LocalMetadata::open(dir.path()).unwrap(),
        LocalBlobs::open(dir.path()).unwrap(),
        small_parts(),
        "race/image",
    )
    .await;
}

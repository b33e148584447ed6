//! CompleteLayerUpload cut and retried, and the answers that must not be wrong
//! (tests/common/completion.rs), on the in-memory adapters.

use std::sync::Arc;

use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};
use ecr_layer_upload::service::Service;

use crate::common::completion::{self, Gated, GatedService};
use crate::common::service::{create_repository, memory_service, small_parts};

async fn gated(repo: &str) -> GatedService<MemoryMetadata, MemoryBlobs> {
    let svc = Arc::new(Service::new(
        MemoryMetadata::new(),
        Gated::new(MemoryBlobs::new()),
        small_parts(),
    ));
    create_repository(&svc, repo).await;
    svc
}

#[tokio::test]
async fn complete_during_complete_is_retryable_and_then_succeeds() {
    completion::complete_during_complete(gated("app").await, "app").await;
}

#[tokio::test]
async fn a_long_completion_keeps_its_lease() {
    completion::a_long_completion_keeps_its_lease(gated("app").await, "app").await;
}

#[tokio::test]
async fn dropped_completion_is_taken_over_within_30_s() {
    completion::dropped_completion_is_taken_over(gated("app").await, "app").await;
}

#[tokio::test]
async fn wrong_digest_leaves_the_upload_open() {
    let svc = memory_service(small_parts());
    create_repository(&svc, "app").await;
    completion::wrong_digest_leaves_the_upload_open(&svc, "app").await;
}

#[tokio::test]
async fn digest_algorithm_is_matched_exactly() {
    let svc = memory_service(small_parts());
    create_repository(&svc, "app").await;
    completion::digest_algorithm_is_matched_exactly(&svc, "app").await;
}

#[tokio::test]
async fn contiguity_is_checked_before_the_size_limit() {
    let svc = memory_service(small_parts());
    create_repository(&svc, "app").await;
    completion::contiguity_is_checked_before_the_size_limit(&svc, "app").await;
}

//! CompleteLayerUpload cut and retried, and the answers that must not be wrong
//! (tests/common/completion.rs), in-process on S3 + DynamoDB.

use std::sync::Arc;

use ecr_layer_upload::backends::aws::{DynamoMetadata, S3Blobs};
use ecr_layer_upload::service::Service;

use crate::common::aws;
use crate::common::completion::{self, Gated, GatedService};
use crate::common::service::{create_repository, small_parts};

/// A repository name of its own for every test and run: the bucket and table are shared.
fn repo_name(kind: &str) -> String {
    format!("aws-completion/{kind}-{}", uuid::Uuid::new_v4().simple())
}

async fn gated(repo: &str) -> GatedService<DynamoMetadata, S3Blobs> {
    let (meta, blobs) = aws::adapters().await;
    let svc = Arc::new(Service::new(meta, Gated::new(blobs), small_parts()));
    create_repository(&svc, repo).await;
    svc
}

async fn plain(repo: &str) -> Service<DynamoMetadata, S3Blobs> {
    let (meta, blobs) = aws::adapters().await;
    let svc = Service::new(meta, blobs, small_parts());
    create_repository(&svc, repo).await;
    svc
}

#[tokio::test]
async fn complete_during_complete_is_retryable_and_then_succeeds() {
    let repo = repo_name("during");
    completion::complete_during_complete(gated(&repo).await, &repo).await;
}

#[tokio::test]
async fn a_long_completion_keeps_its_lease() {
    let repo = repo_name("long");
    completion::a_long_completion_keeps_its_lease(gated(&repo).await, &repo).await;
}

#[tokio::test]
async fn dropped_completion_is_taken_over_within_30_s() {
    let repo = repo_name("dropped");
    completion::dropped_completion_is_taken_over(gated(&repo).await, &repo).await;
}

#[tokio::test]
async fn wrong_digest_leaves_the_upload_open() {
    let repo = repo_name("wrong");
    completion::wrong_digest_leaves_the_upload_open(&plain(&repo).await, &repo).await;
}

#[tokio::test]
async fn digest_algorithm_is_matched_exactly() {
    let repo = repo_name("algorithm");
    completion::digest_algorithm_is_matched_exactly(&plain(&repo).await, &repo).await;
}

#[tokio::test]
async fn contiguity_is_checked_before_the_size_limit() {
    let repo = repo_name("contiguity");
    completion::contiguity_is_checked_before_the_size_limit(&plain(&repo).await, &repo).await;
}

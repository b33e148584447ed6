//! The production backend: S3 holds the bytes (one multipart upload per layer upload, small
//! staging objects for the tail), DynamoDB holds the metadata in one table (docs/architecture.md, "State" and "Bytes").
//!
//! Both adapters are built from an already loaded [`aws_config::SdkConfig`], so the SDK config
//! is loaded once at start; local S3/DynamoDB servers are reached through the standard
//! `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL_DYNAMODB` variables.
//!
//! Errors: a lost condition is [`StoreError::Conflict`]; throttling, 5xx and timeouts (after the
//! SDK's own retries) are [`StoreError::Backend`], which the service answers as a retryable
//! `ServerException`. Messages carry the SDK's error context (code, message, request id), never
//! bodies or credentials.

mod dynamo;
mod s3;

use std::error::Error;
use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};

pub use dynamo::DynamoMetadata;
pub use s3::S3Blobs;

use crate::domain::error::StoreError;

/// A failed SDK call as a backend failure, naming the operation.
fn sdk_failure<E, R>(op: &str, err: &SdkError<E, R>) -> StoreError
where
    E: Error + 'static,
    R: Debug,
{
    StoreError::Backend(format!("{op}: {}", DisplayErrorContext(err)))
}

/// Sleeps before attempt `attempt` (1-based) of a retry loop of our own: exponential from 20 ms,
/// capped at 1 s, with jitter so that writers that collided do not collide again in step.
async fn backoff(attempt: u32) {
    let base_ms = 20u64.saturating_mul(1 << attempt.min(6)).min(1_000);
    // Sub-second clock noise is jitter enough here; no random-number dependency needed.
    let noise = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    let ms = base_ms / 2 + noise % (base_ms / 2 + 1);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

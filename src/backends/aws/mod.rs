//! The production backend: S3 holds the bytes (one multipart upload per layer upload, small
//! staging objects for the tail), DynamoDB holds the metadata in one table (docs/architecture.md, "State" and "Bytes").
//!
//! Both adapters are built from an already loaded [`aws_config::SdkConfig`], so the SDK config
//! is loaded once at start; local S3/DynamoDB servers are reached through the standard
//! `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL_DYNAMODB` variables.
//!
//! Errors: a lost condition is [`StoreError::Conflict`]; throttling, 5xx and timeouts (after the
//! SDK's own retries) are [`StoreError::Backend`], which the service answers as a retryable
//! `ServerException`. They name the operation and key, and keep the SDK error as their source,
//! whose chain carries its code, message and request id (never bodies or credentials).

mod dynamo;
mod gc;
mod keys;
mod s3;

use std::error::Error;
use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::error::SdkError;

pub use dynamo::DynamoMetadata;
pub use gc::{Collected, GcLimits, collect, remove_unreferenced_layers, unreferenced_layers};
pub use keys::DynamoKeys;
pub use s3::{S3Blobs, crc64_header};

use crate::domain::error::StoreError;

/// A failed SDK call as a backend failure: `context` names the operation and its key, the SDK
/// error (code, message, request id in its chain of sources) is kept as the source.
fn sdk_failure<E, R>(context: impl Into<String>, err: SdkError<E, R>) -> StoreError
where
    E: Error + Send + Sync + 'static,
    R: Debug + Send + Sync + 'static,
{
    StoreError::backend(context, err)
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

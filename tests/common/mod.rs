//! What the test binaries share: tests/unit, tests/aws and tests/e2e (their main.rs) each declare it
//! (`#[path = "../common/mod.rs"] mod common;`), and so does benches/push.rs.
//!
//! - here: digests, names, test data, temporary directories;
//! - [`server`]: the real binary on a loopback port, and aws-sdk-ecr against it;
//! - [`http`]: a plain HTTP/1.1 client for download URLs;
//! - [`service`]: the service in-process: construction, settings, request helpers;
//! - [`aws`]: the AWS backend's adapters against the local S3 and DynamoDB servers;
//! - [`lifecycle`]: scenarios of repositories deleted and created again, and of upload age.
//! - [`completion`]: CompleteLayerUpload cut, met and retried, as scenarios on any backend.
//! - [`faults`]: faults injected into the AWS backend's SDK clients, and a retrying client.
//! - [`soak`]: the soak run of `make soak`.
//! - [`image_race`]: PutImage racing DeleteRepository, on the port and the service.
//! - [`layer_gc`]: layers no image references, collected (or not) on any backend with a collector.

// Each binary uses a different part of it.
#![allow(dead_code, unused_imports)]

pub mod aws;
pub mod completion;
pub mod faults;
pub mod http;
pub mod image_race;
pub mod keys;
pub mod layer_gc;
pub mod lifecycle;
pub mod server;
pub mod service;
pub mod soak;

pub use http::{http_get, http_request};
pub use server::{Server, create_repository, push_blob};

/// The registry id the service answers with when a request names none.
pub const REGISTRY: &str = "123456789012";

/// `sha256:<hex>` of `data`, as ECR names layers and images.
pub fn digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// `prefix-` and eight random hex digits: a repository name of its own for every test and run
/// (servers and their state may be shared).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Deterministic bytes that do not repeat with any short period (xorshift64), so a part written
/// at the wrong offset or in the wrong order changes the digest.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A temporary directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// Seconds and milliseconds since the Unix epoch.
pub fn now() -> (u64, u64) {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970");
    (since.as_secs(), since.as_millis() as u64)
}

/// The record of an open upload with nothing received, as InitiateLayerUpload writes it: blob
/// key `uploads/<id>`, no multipart upload yet, version 1, expiring a day from now. Tests change
/// what they need with `UploadRecord { field: value, ..open_upload(id, repository) }`.
pub fn open_upload(upload_id: &str, repository: &str) -> ecr_layer_upload::ports::UploadRecord {
    let (secs, millis) = now();
    ecr_layer_upload::ports::UploadRecord {
        upload_id: upload_id.to_owned(),
        registry_id: REGISTRY.into(),
        repository: repository.into(),
        repository_incarnation: String::new(),
        blob_key: format!("uploads/{upload_id}"),
        multipart_id: String::new(),
        next_byte: 0,
        flushed_bytes: 0,
        parts_flushed: 0,
        part_numbers_used: 0,
        last_part: None,
        smallest_nonfinal_part: None,
        state: ecr_layer_upload::ports::UploadState::Open,
        version: 1,
        created_at_ms: millis,
        updated_at_ms: millis,
        expires_at: secs + 86_400,
        hash: None,
        part_checksums: false,
    }
}

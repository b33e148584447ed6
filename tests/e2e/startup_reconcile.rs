//! The real binary on the embedded backend reconciles its data directory at start-up, before it
//! serves (src/backends/local/reconcile.rs): after a SIGKILL, the temporary files of cut writes
//! and staging objects that no record owns are gone by the time it listens again, and the live
//! layer's bytes stay and stay available.

use std::path::Path;

use aws_sdk_ecr::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ecr::types::LayerAvailability;

use crate::common::{create_repository, noise, push_blob, temp_dir};
use crate::completion_cuts::Process;

/// A client of `endpoint` with the SDK's default retries.
fn client_of(endpoint: &str) -> aws_sdk_ecr::Client {
    let conf = aws_sdk_ecr::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .build();
    aws_sdk_ecr::Client::from_conf(conf)
}

/// Every file under `dir` with its size.
fn files(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, e.metadata().unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

fn plant(path: &Path, len: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, vec![7u8; len]).unwrap();
}

#[tokio::test]
async fn the_binary_removes_what_a_crash_left_before_it_serves() {
    let data = temp_dir();
    let blobs = data.path().join("blobs");
    let server = Process::start(data.path());
    let ecr = client_of(&server.endpoint);
    create_repository(&ecr, "startup").await;
    let layer = noise(50_000, 11);
    let layer_digest = push_blob(&ecr, "startup", &layer).await;
    server.kill();

    let live = files(&blobs);
    assert!(
        live.iter()
            .any(|(p, n)| p.starts_with("objects/layers/") && *n == 50_000),
        "{live:#?}"
    );
    // What a crash leaves: temporary files of cut writes, and a staging object whose record
    // was never written.
    plant(&blobs.join("objects/staging/.tmp-crashed"), 1000);
    plant(&blobs.join("objects/layers/.tmp-crashed"), 1100);
    plant(&blobs.join("multipart/.tmp-crashed"), 1200);
    plant(
        &blobs.join("objects/staging/no-such-upload/00000000000000000000-deadbeefdeadbeef"),
        1300,
    );

    let server = Process::start(data.path());
    // It listens only after the reconciliation: what was planted is gone, the rest is as it was.
    assert_eq!(files(&blobs), live, "only live files remain");
    let check = client_of(&server.endpoint)
        .batch_check_layer_availability()
        .repository_name("startup")
        .layer_digests(&layer_digest)
        .send()
        .await
        .unwrap();
    assert_eq!(
        check.layers()[0].layer_availability(),
        Some(&LayerAvailability::Available)
    );
}

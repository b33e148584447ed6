//! Nothing left behind on the embedded backend: after a run of crashed, raced, abandoned and
//! deleted uploads, the expiry sweep and the reconciliation of src/backends/local/reconcile.rs
//! (at start-up, then with its clock past the grace period) leave in the data directory exactly
//! the bytes that live records own, and those read back whole.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata, Reconciled, reconcile};
use ecr_layer_upload::domain::clock::ManualClock;
use ecr_layer_upload::ports::{BlobStore, MetadataStore};
use ecr_layer_upload::service::types::*;
use ecr_layer_upload::service::{Service, Settings};
use futures_util::TryStreamExt;

use crate::common::service::{complete, create_repository, initiate, part, push_blob, small_parts};
use crate::common::{REGISTRY, digest, noise, temp_dir};

const GRACE: Duration = Duration::from_secs(3600);
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Every file under `dir`, with its path relative to it and its size, sorted.
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

fn total(files: &[(String, u64)]) -> u64 {
    files.iter().map(|(_, n)| n).sum()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

async fn push_image<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &str,
    layer: &[u8],
) -> (String, String) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let c = push_blob(svc, name, config).await;
    let l = push_blob(svc, name, layer).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    svc.put_image(PutImageRequest {
        image_tag: Some("v1".parse().unwrap()),
        ..PutImageRequest::new(name.parse().unwrap(), manifest)
    })
    .await
    .unwrap();
    (c, l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_live_bytes_remain_after_cuts_crashes_races_and_deletions() {
    let dir = temp_dir();
    let clock = Arc::new(ManualClock::starting_now());
    let meta = LocalMetadata::open(dir.path()).unwrap();
    let blobs = LocalBlobs::open(dir.path()).unwrap();
    let settings = Settings {
        upload_ttl_secs: 600,
        ..small_parts()
    };
    let svc =
        Arc::new(Service::new(meta.clone(), blobs.clone(), settings).with_clock(clock.clone()));
    let objects = dir.path().join("blobs/objects");
    let multipart = dir.path().join("blobs/multipart");

    // Live: an image over a layer, a layer no image references yet, and an open upload with a
    // part staged (after two writers raced for it).
    create_repository(&*svc, "keep").await;
    let live_layer = noise(7000, 1);
    let (config_digest, layer_digest) = push_image(&*svc, "keep", &live_layer).await;
    // Pushed late enough to be within the grace period at the collection below: a push in
    // flight, which an image may reference any moment (an older unreferenced layer would be
    // collected, tests/unit/layer_gc.rs).
    clock.advance_secs(GRACE.as_secs());
    let pending = noise(3000, 2);
    let pending_digest = push_blob(&*svc, "keep", &pending).await;
    // Abandoned: an upload with a part staged whose client went away; it expires.
    let abandoned = initiate(&*svc, "keep").await;
    part(&*svc, "keep", &abandoned, 0, &noise(2500, 6))
        .await
        .unwrap();

    // The clock passes the abandoned upload's TTL; the expiry sweep ends it.
    clock.advance_secs(601);
    assert!(svc.sweep_expired(100).await.unwrap() >= 1);
    assert_eq!(svc.metadata().get_upload(&abandoned).await.unwrap(), None);

    let open = initiate(&*svc, "keep").await;
    let (a, b) = (noise(1500, 3), noise(1500, 4));
    let racers = [a.clone(), b.clone()].map(|bytes| {
        let (svc, open) = (svc.clone(), open.clone());
        tokio::spawn(async move { part(&*svc, "keep", &open, 0, &bytes).await.is_ok() })
    });
    let mut won = 0;
    for r in racers {
        won += usize::from(r.await.unwrap());
    }
    assert_eq!(won, 1, "exactly one of two racing parts is accepted");

    // Deleted: a repository with an image, deleted with force.
    create_repository(&*svc, "gone").await;
    push_image(&*svc, "gone", &noise(9000, 5)).await;
    svc.delete_repository(DeleteRepositoryRequest {
        force: true,
        ..DeleteRepositoryRequest::new("gone".parse().unwrap())
    })
    .await
    .unwrap();

    // Crashed: temporary files of cut writes, a part file of a cut completion in a multipart
    // directory whose upload row was never written, and the staging object of a part whose
    // record was never written.
    write(&objects.join("staging/.tmp-crashed"), &[7; 1000]);
    write(&objects.join("layers/.tmp-crashed"), &[7; 1100]);
    let ghost = blobs.create_multipart("layers/ghost").await.unwrap();
    write(&multipart.join(&ghost).join("1.abc"), &[7; 1200]);
    write(&multipart.join(".tmp-crashed"), &[7; 1300]);
    write(
        &objects.join(format!("staging/{open}/1500-deadbeef")),
        &[7; 1400],
    );
    write(
        &objects.join("staging/no-such-upload/0-deadbeef"),
        &[7; 1500],
    );

    // Start-up: what a crash or a lost race left goes at once; the deleted repository's layer
    // bytes stay for the grace period (a download may be in flight).
    let before = files(dir.path().join("blobs").as_path());
    let gc_clock = ManualClock::starting_now();
    let first = reconcile(&meta, &blobs, true, GRACE, &gc_clock)
        .await
        .unwrap();
    let after_first = files(dir.path().join("blobs").as_path());
    assert!(
        first.files >= 6,
        "{first:?}: removed {:#?}",
        before
            .iter()
            .filter(|f| !after_first.contains(f))
            .collect::<Vec<_>>()
    );
    assert!(
        after_first.iter().all(|(p, _)| !p.contains(".tmp-")
            && !p.contains("ghost")
            && !p.contains("no-such-upload")
            && !p.contains("1500-deadbeef")
            && !p.contains(&ghost)),
        "{after_first:#?}"
    );
    assert_eq!(total(&before) - total(&after_first), first.bytes);

    // Past the grace period: the deleted repository's layers go too.
    gc_clock.advance_secs(GRACE.as_secs() + 1);
    let second = reconcile(&meta, &blobs, false, GRACE, &gc_clock)
        .await
        .unwrap();
    assert!(second.files >= 2, "{second:?}");
    let left = files(dir.path().join("blobs").as_path());

    // What is left is exactly what live records own.
    let m = svc.metadata();
    let mut owned = 0u64;
    for d in [&config_digest, &layer_digest, &pending_digest] {
        owned += m
            .get_layer(REGISTRY, "keep", d)
            .await
            .unwrap()
            .unwrap()
            .size;
    }
    let segments = m.list_segments(&open, 0).await.unwrap();
    assert_eq!(segments.len(), 1);
    owned += segments[0].len;
    let up = m.get_upload(&open).await.unwrap().unwrap();
    let key_files: u64 = left
        .iter()
        .filter(|(p, _)| p.starts_with(&format!("multipart/{}/", up.multipart_id)))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        total(&left),
        owned + key_files,
        "only live data remains: {left:#?}"
    );
    // And nothing more goes on a later pass.
    assert_eq!(
        reconcile(&meta, &blobs, false, GRACE, &gc_clock)
            .await
            .unwrap(),
        Reconciled::default()
    );

    // The live data is whole: the image's layer reads back, the open upload completes with the
    // part that won.
    let layer = m
        .get_layer(REGISTRY, "keep", &layer_digest)
        .await
        .unwrap()
        .unwrap();
    let read: Vec<bytes::Bytes> = blobs
        .read_object(&layer.blob_key, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(digest(&read.concat()), layer_digest);
    let staged = if digest(&a) == digest(&blobs.get_object(&segments[0].key).await.unwrap()) {
        a
    } else {
        b
    };
    let done = complete(&*svc, "keep", &open, &[&digest(&staged)])
        .await
        .unwrap();
    assert_eq!(done.layer_digest, digest(&staged));
}

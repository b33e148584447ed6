//! The soak run on the embedded backend (tests/common/soak.rs); `make soak` runs it, `make test`
//! does not.

use std::sync::Arc;
use std::time::Duration;

use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata, reconcile};
use ecr_layer_upload::domain::clock::SystemClock;
use ecr_layer_upload::service::Service;

use crate::common::service::small_parts;
use crate::common::soak::{Counts, SoakConfig, reference, report, run, verify};
use crate::common::temp_dir;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a soak run: `make soak`"]
async fn soak_embedded() {
    let cfg = SoakConfig::from_env();
    let dir = temp_dir();
    let meta = LocalMetadata::open(dir.path()).unwrap();
    let blobs = LocalBlobs::open(dir.path()).unwrap();
    let svc = Arc::new(Service::new(meta.clone(), blobs.clone(), small_parts()));
    let counts = Arc::new(Counts::default());
    let layers = run(svc.clone(), "soak/embedded", &cfg, counts.clone()).await;
    let bad = verify(&meta, &blobs, &layers).await;
    reference(&svc, &layers).await;
    // What the run left that no record owns: what the start-up reconciliation removes.
    let left = reconcile(&meta, &blobs, true, Duration::ZERO, &SystemClock)
        .await
        .unwrap();
    let bad_after = verify(&meta, &blobs, &layers).await;
    let again = reconcile(&meta, &blobs, true, Duration::ZERO, &SystemClock)
        .await
        .unwrap();
    assert_eq!(again.files, 0, "nothing is left after one reconciliation");
    println!(
        "{}",
        report("embedded", &counts, 0, bad, (left.files, left.bytes))
    );
    assert_eq!(bad, 0, "every layer reported complete reads back whole");
    assert_eq!(bad_after, 0, "the reconciliation removed nothing live");
    assert!(!layers.is_empty());
}

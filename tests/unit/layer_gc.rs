//! Layers no image references on the embedded backend: the reconciliation of
//! src/backends/local/reconcile.rs deletes their records, then their files, past the grace
//! period, and never a layer an image references or a push in flight marked (the scenarios of
//! tests/common/layer_gc.rs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata, reconcile};
use ecr_layer_upload::domain::clock::{Clock, ManualClock};
use ecr_layer_upload::ports::UnreferencedLayer;
use ecr_layer_upload::service::Service;

use crate::common::layer_gc::{self, Collector, GRACE};
use crate::common::service::small_parts;
use crate::common::temp_dir;

struct Local {
    meta: LocalMetadata,
    blobs: LocalBlobs,
    dir: PathBuf,
}

impl Collector for Local {
    async fn sweep(&self, clock: &ManualClock) -> u64 {
        reconcile(&self.meta, &self.blobs, false, GRACE, clock)
            .await
            .unwrap()
            .layers
    }

    async fn unreferenced(&self, clock: &ManualClock) -> Vec<UnreferencedLayer> {
        self.meta
            .unreferenced_layers(clock.now_ms(), GRACE.as_millis() as u64)
            .await
            .unwrap()
    }

    async fn remove(&self, layers: &[UnreferencedLayer]) -> u64 {
        self.meta.remove_unreferenced_layers(layers).await.unwrap()
    }

    async fn layer_bytes(&self) -> BTreeMap<String, u64> {
        let root = self.dir.join("blobs").join("objects");
        let mut out = BTreeMap::new();
        walk(&root, &root.join("layers"), &mut out);
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            let key = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(key, e.metadata().unwrap().len());
        }
    }
}

fn setup() -> (
    tempfile::TempDir,
    Arc<ManualClock>,
    Service<LocalMetadata, LocalBlobs>,
    Local,
) {
    let dir = temp_dir();
    let meta = LocalMetadata::open(dir.path()).unwrap();
    let blobs = LocalBlobs::open(dir.path()).unwrap();
    let clock = Arc::new(ManualClock::starting_now());
    let svc = Service::new(meta.clone(), blobs.clone(), small_parts()).with_clock(clock.clone());
    let local = Local {
        meta,
        blobs,
        dir: dir.path().to_path_buf(),
    };
    (dir, clock, svc, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_layers_and_their_files_go_after_the_grace_period() {
    let (_dir, clock, svc, local) = setup();
    layer_gc::unreferenced_layers_and_their_bytes_go_after_the_grace_period(&svc, &clock, &local)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_image_racing_the_reconciliation_never_loses_its_layers() {
    let (_dir, clock, svc, local) = setup();
    layer_gc::put_image_racing_the_collector_never_loses_its_layers(&svc, &clock, &local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_layer_keeps_the_files_it_shares() {
    let (_dir, clock, svc, local) = setup();
    layer_gc::a_mounted_layer_keeps_the_bytes_it_shares(&svc, &clock, &local).await;
}

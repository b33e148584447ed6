//! Layers no image references on the AWS backend: the collection of src/backends/aws/gc.rs
//! deletes their items, then their objects, past the grace period, and never a layer an image
//! references or a push in flight marked (the scenarios of tests/common/layer_gc.rs), on a
//! bucket and a table of their own (tests/aws/gc.rs), so the bucket's counts are theirs.

use std::collections::BTreeMap;
use std::sync::Arc;

use ecr_layer_upload::backends::aws::{
    DynamoMetadata, GcLimits, S3Blobs, collect, remove_unreferenced_layers, unreferenced_layers,
};
use ecr_layer_upload::domain::clock::ManualClock;
use ecr_layer_upload::ports::UnreferencedLayer;
use ecr_layer_upload::service::Service;

use crate::common::layer_gc::{self, Collector, GRACE};
use crate::common::service::small_parts;
use crate::gc::{bucket_state, own_adapters};

struct Aws {
    meta: DynamoMetadata,
    blobs: S3Blobs,
}

impl Collector for Aws {
    async fn sweep(&self, clock: &ManualClock) -> u64 {
        let c = collect(&self.meta, &self.blobs, GRACE, clock, GcLimits::default())
            .await
            .unwrap();
        assert!(c.complete, "{c:?}");
        c.layers
    }

    async fn unreferenced(&self, clock: &ManualClock) -> Vec<UnreferencedLayer> {
        unreferenced_layers(&self.meta, GRACE, clock, GcLimits::default())
            .await
            .unwrap()
            .expect("the table fits one scan")
    }

    async fn remove(&self, layers: &[UnreferencedLayer]) -> u64 {
        remove_unreferenced_layers(&self.meta, layers)
            .await
            .unwrap()
    }

    async fn layer_bytes(&self) -> BTreeMap<String, u64> {
        let (objects, _) = bucket_state(&self.blobs).await;
        objects
            .into_iter()
            .filter(|(k, _)| k.starts_with("layers/"))
            .collect()
    }
}

/// A service on the adapters with a clock of its own.
fn service(aws: &Aws) -> (Arc<ManualClock>, Service<DynamoMetadata, S3Blobs>) {
    let clock = Arc::new(ManualClock::starting_now());
    let svc =
        Service::new(aws.meta.clone(), aws.blobs.clone(), small_parts()).with_clock(clock.clone());
    (clock, svc)
}

/// The scenarios in turn on one bucket and table of their own (SeaweedFS gives every bucket
/// volumes of its own, so the suites keep their buckets few): the first counts the bucket's
/// bytes, before the others leave any; the others look only at their own repositories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_layers_go_and_pushes_in_flight_keep_theirs() {
    let (meta, blobs) = own_adapters().await;
    let aws = Aws { meta, blobs };
    let (clock, svc) = service(&aws);
    layer_gc::unreferenced_layers_and_their_bytes_go_after_the_grace_period(&svc, &clock, &aws)
        .await;
    let (clock, svc) = service(&aws);
    layer_gc::put_image_racing_the_collector_never_loses_its_layers(&svc, &clock, &aws).await;
    let (clock, svc) = service(&aws);
    layer_gc::a_mounted_layer_keeps_the_bytes_it_shares(&svc, &clock, &aws).await;
}

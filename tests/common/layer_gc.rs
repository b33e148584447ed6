//! Layers no image references, as scenarios on any backend with a collector: the embedded
//! backend's reconciliation (tests/unit/layer_gc.rs) and the AWS backend's collection
//! (tests/aws/layer_gc.rs). A backend takes part through [`Collector`].
//!
//! What they pin (docs/architecture.md, "Layers no image references"): a layer record that no
//! image of its repository references, and that was neither recorded nor marked referenced by
//! a PutImage within the grace period, is deleted, and its bytes go with the same run; a layer
//! an image references, or one younger than the grace period, stays with its bytes; and a
//! PutImage that marks a layer between the collector's reading and its delete makes the delete
//! fail, while one that comes after the delete fails with `LayersNotFoundException`.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use ecr_layer_upload::domain::clock::{Clock, ManualClock};
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::domain::model::LayerAvailability;
use ecr_layer_upload::ports::{BlobStore, LayerReference, MetadataStore, UnreferencedLayer};
use ecr_layer_upload::protocols::ecr::wire;
use ecr_layer_upload::service::Service;
use ecr_layer_upload::service::types::*;
use futures_util::TryStreamExt;

use super::service::{create_repository, push_blob};
use super::{REGISTRY, digest, noise, unique};

/// The grace period the scenarios run with.
pub const GRACE: Duration = Duration::from_secs(3600);
/// How far past the grace period the collector's clock goes: the bytes' own ages are taken
/// from their files' and objects' times, written a few (real) seconds after the clocks began.
const SLACK_SECS: u64 = 120;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// A backend's collector of unreferenced layers, with ages taken at a clock of the test's.
pub trait Collector {
    /// One whole run (layer records, then the bytes no record owns); returns how many layer
    /// records it deleted.
    fn sweep(&self, clock: &ManualClock) -> impl Future<Output = u64>;
    /// The collector's first step alone: the layers it would delete.
    fn unreferenced(&self, clock: &ManualClock) -> impl Future<Output = Vec<UnreferencedLayer>>;
    /// Its second step alone: deletes those still as read; returns how many went.
    fn remove(&self, layers: &[UnreferencedLayer]) -> impl Future<Output = u64>;
    /// The stored layer bytes: `layers/...` key → size.
    fn layer_bytes(&self) -> impl Future<Output = BTreeMap<String, u64>>;
}

/// A manifest over `config` and `layers` (digest, bytes).
fn manifest(config: &(String, Vec<u8>), layers: &[&(String, Vec<u8>)]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, b)| {
            format!(
                r#"{{"mediaType":"{LAYER_TYPE}","digest":"{d}","size":{}}}"#,
                b.len()
            )
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{CONFIG_TYPE}","digest":"{}","size":{}}},"layers":[{}]}}"#,
        config.0,
        config.1.len(),
        layers.join(",")
    )
}

async fn blob<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    repo: &str,
    bytes: Vec<u8>,
) -> (String, Vec<u8>) {
    (push_blob(svc, repo, &bytes).await, bytes)
}

async fn put<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    repo: &str,
    manifest: String,
    tag: &str,
) -> Result<PutImageResponse, EcrError> {
    svc.put_image(PutImageRequest {
        image_tag: Some(tag.parse().unwrap()),
        ..PutImageRequest::new(repo.parse().unwrap(), manifest)
    })
    .await
}

/// BatchCheckLayerAvailability's verdict on each digest: `Some(true)` available,
/// `Some(false)` unavailable, `None` a `MissingLayerDigest` failure.
async fn availability<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    repo: &str,
    digests: &[&str],
) -> Vec<Option<bool>> {
    let req =
        BatchCheckLayerAvailabilityRequest::try_from(wire::BatchCheckLayerAvailabilityRequest {
            repository_name: Some(repo.into()),
            layer_digests: Some(digests.iter().map(|d| d.to_string()).collect()),
            ..Default::default()
        })
        .unwrap();
    let out = svc.batch_check_layer_availability(req).await.unwrap();
    digests
        .iter()
        .map(|d| {
            if let Some(l) = out.layers.iter().find(|l| l.layer_digest == *d) {
                return Some(l.layer_availability == LayerAvailability::Available);
            }
            let f = out.failures.iter().find(|f| f.layer_digest == *d).unwrap();
            assert_eq!(f.failure_code.as_str(), "MissingLayerDigest", "{f:?}");
            None
        })
        .collect()
}

async fn download_url<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    repo: &str,
    digest: &str,
) -> Result<GetDownloadUrlForLayerResponse, EcrError> {
    let req = GetDownloadUrlForLayerRequest::try_from(wire::GetDownloadUrlForLayerRequest {
        repository_name: Some(repo.into()),
        layer_digest: Some(digest.into()),
        ..Default::default()
    })
    .unwrap();
    svc.get_download_url_for_layer(req).await
}

/// The bytes of layer `digest` of `repo` read back whole, hashed.
async fn read_back<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    repo: &str,
    digest_of: &str,
) -> String {
    let layer = svc
        .metadata()
        .get_layer(REGISTRY, repo, digest_of)
        .await
        .unwrap()
        .unwrap();
    let chunks: Vec<bytes::Bytes> = svc
        .blobs()
        .read_object(&layer.blob_key, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    digest(&chunks.concat())
}

async fn blob_key<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    repo: &str,
    digest: &str,
) -> String {
    svc.metadata()
        .get_layer(REGISTRY, repo, digest)
        .await
        .unwrap()
        .unwrap()
        .blob_key
}

/// Images pushed, one deleted, a layer pushed and never referenced, one pushed within the
/// grace period: past the grace period exactly the unreferenced old layers go, records and
/// bytes. `svc_clock` is the service's clock; the collector's starts at the same time.
pub async fn unreferenced_layers_and_their_bytes_go_after_the_grace_period<
    M: MetadataStore,
    B: BlobStore,
    C: Collector,
>(
    svc: &Service<M, B>,
    svc_clock: &ManualClock,
    collector: &C,
) {
    let gc_clock = ManualClock::at_ms(svc_clock.now_ms());
    let repo = unique("layer-gc");
    create_repository(svc, &repo).await;
    let config = blob(
        svc,
        &repo,
        br#"{"architecture":"amd64","os":"linux"}"#.to_vec(),
    )
    .await;
    let shared = blob(svc, &repo, noise(6000, 21)).await;
    let only_a = blob(svc, &repo, noise(5000, 22)).await;
    let only_b = blob(svc, &repo, noise(7000, 23)).await;
    let never = blob(svc, &repo, noise(4000, 24)).await;
    put(svc, &repo, manifest(&config, &[&shared, &only_a]), "a")
        .await
        .unwrap();
    let b = put(svc, &repo, manifest(&config, &[&shared, &only_b]), "b")
        .await
        .unwrap();
    let del = svc
        .batch_delete_image(BatchDeleteImageRequest::new(
            repo.parse().unwrap(),
            vec![RequestedImage::new(ImageIdentifier {
                image_digest: b.image.image_id.image_digest.clone(),
                image_tag: None,
            })],
        ))
        .await
        .unwrap();
    assert_eq!(del.image_ids.len(), 1, "{del:?}");
    let doomed_keys = [
        blob_key(svc, &repo, &only_b.0).await,
        blob_key(svc, &repo, &never.0).await,
    ];
    let before = collector.layer_bytes().await;
    for key in &doomed_keys {
        assert!(before.contains_key(key), "{key} stored: {before:?}");
    }

    // Within the grace period nothing goes: a push may be about to reference any of them.
    assert_eq!(collector.sweep(&gc_clock).await, 0);
    assert_eq!(collector.layer_bytes().await, before);

    // A layer pushed late stays past the others' grace period: it is younger than its own.
    svc_clock.advance_secs(GRACE.as_secs());
    let late = blob(svc, &repo, noise(3000, 25)).await;
    let late_key = blob_key(svc, &repo, &late.0).await;
    let before = collector.layer_bytes().await;
    gc_clock.advance_secs(GRACE.as_secs() + SLACK_SECS);
    assert_eq!(collector.sweep(&gc_clock).await, 2, "only_b and never go");
    let after = collector.layer_bytes().await;

    // Exactly the two unreferenced layers' bytes went; the referenced and the young stayed.
    let went: BTreeMap<String, u64> = before
        .iter()
        .filter(|(k, _)| !after.contains_key(*k))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let expected: BTreeMap<String, u64> = [
        (doomed_keys[0].clone(), only_b.1.len() as u64),
        (doomed_keys[1].clone(), never.1.len() as u64),
    ]
    .into();
    assert_eq!(went, expected);
    assert!(after.contains_key(&late_key));
    eprintln!(
        "layer gc: before {} layer objects / {} bytes; after {} / {}",
        before.len(),
        before.values().sum::<u64>(),
        after.len(),
        after.values().sum::<u64>()
    );
    assert_eq!(
        before.values().sum::<u64>() - after.values().sum::<u64>(),
        (only_b.1.len() + never.1.len()) as u64
    );

    // The API answers for the collected layers as for a layer never pushed.
    let never_pushed = digest(b"never pushed");
    let digests = [
        config.0.as_str(),
        shared.0.as_str(),
        only_a.0.as_str(),
        late.0.as_str(),
        only_b.0.as_str(),
        never.0.as_str(),
        never_pushed.as_str(),
    ];
    let answers = availability(svc, &repo, &digests).await;
    assert_eq!(answers[..4], [Some(true); 4]);
    assert_eq!(answers[4], answers[6]);
    assert_eq!(answers[5], answers[6]);
    assert_ne!(answers[6], Some(true));
    for gone in [&only_b.0, &never.0] {
        let err = download_url(svc, &repo, gone).await.unwrap_err();
        assert_eq!(err.type_name(), "LayersNotFoundException");
    }
    download_url(svc, &repo, &only_a.0).await.unwrap();
    // The image still standing reads back whole.
    for (d, _) in [&config, &shared, &only_a] {
        assert_eq!(&read_back(svc, &repo, d).await, d);
    }
    // An image over a collected layer is refused, as over one never pushed.
    let err = put(svc, &repo, manifest(&config, &[&only_b]), "again")
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "LayersNotFoundException");

    // A later run finds nothing more.
    assert_eq!(collector.sweep(&gc_clock).await, 0);
    assert_eq!(collector.layer_bytes().await, after);
}

/// The race of the collector with PutImage, its two steps run by hand: a PutImage whose marks
/// land between the collector's reading and its delete makes the delete fail and its image's
/// layers stay readable; a mark before the reading keeps the layer out of it; a PutImage after
/// the delete fails cleanly.
pub async fn put_image_racing_the_collector_never_loses_its_layers<
    M: MetadataStore,
    B: BlobStore,
    C: Collector,
>(
    svc: &Service<M, B>,
    svc_clock: &ManualClock,
    collector: &C,
) {
    let gc_clock = ManualClock::at_ms(svc_clock.now_ms());
    let repo = unique("layer-race");
    create_repository(svc, &repo).await;
    let config = blob(
        svc,
        &repo,
        br#"{"architecture":"arm64","os":"linux"}"#.to_vec(),
    )
    .await;
    let layer = blob(svc, &repo, noise(6500, 31)).await;
    let marked_early = blob(svc, &repo, noise(2500, 32)).await;
    let lost = blob(svc, &repo, noise(3500, 33)).await;
    let in_flight = blob(svc, &repo, noise(1500, 34)).await;
    gc_clock.advance_secs(GRACE.as_secs() + SLACK_SECS);

    // A mark before the collector reads: the layer is not among those it would delete.
    svc_clock.advance_secs(GRACE.as_secs());
    let missing = svc
        .metadata()
        .mark_layers_referenced(
            REGISTRY,
            &repo,
            &[LayerReference {
                digest: marked_early.0.clone(),
                media_type: None,
            }],
            svc_clock.now_ms(),
        )
        .await
        .unwrap();
    assert!(missing.is_empty());
    let read = collector.unreferenced(&gc_clock).await;
    let names: Vec<&str> = read
        .iter()
        .filter(|l| l.repository == repo)
        .map(|l| l.digest.as_str())
        .collect();
    let mut expected = vec![
        config.0.as_str(),
        layer.0.as_str(),
        lost.0.as_str(),
        in_flight.0.as_str(),
    ];
    expected.sort();
    let mut names_sorted = names.clone();
    names_sorted.sort();
    assert_eq!(names_sorted, expected);

    // PutImage marks config and layer (and writes its image) between the reading and the
    // delete, and another marks `in_flight` but has not written its image yet: those deletes
    // fail; `lost`, unmarked, goes.
    put(svc, &repo, manifest(&config, &[&layer]), "raced")
        .await
        .unwrap();
    let missing = svc
        .metadata()
        .mark_layers_referenced(
            REGISTRY,
            &repo,
            &[LayerReference {
                digest: in_flight.0.clone(),
                // The record itself stays as read (as when its media type is already the
                // one marked): only the count of marks tells.
                media_type: None,
            }],
            svc_clock.now_ms(),
        )
        .await
        .unwrap();
    assert!(missing.is_empty());
    let ours: Vec<UnreferencedLayer> = read.into_iter().filter(|l| l.repository == repo).collect();
    assert_eq!(collector.remove(&ours).await, 1);
    let m = svc.metadata();
    assert!(
        m.get_layer(REGISTRY, &repo, &lost.0)
            .await
            .unwrap()
            .is_none()
    );
    for (d, _) in [&config, &layer, &marked_early, &in_flight] {
        assert!(m.get_layer(REGISTRY, &repo, d).await.unwrap().is_some());
    }
    // The push in flight writes its image over its marked layer.
    put(svc, &repo, manifest(&config, &[&in_flight]), "in-flight")
        .await
        .unwrap();

    // A PutImage after the delete finds no record and fails, writing nothing.
    let err = put(svc, &repo, manifest(&config, &[&lost]), "late")
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "LayersNotFoundException");
    assert!(err.message().contains(&lost.0), "{}", err.message());
    assert!(m.get_tag(REGISTRY, &repo, "late").await.unwrap().is_none());

    // A whole run now keeps the image's layers and their bytes: they read back whole.
    collector.sweep(&gc_clock).await;
    for (d, _) in [&config, &layer, &in_flight] {
        assert_eq!(&read_back(svc, &repo, d).await, d);
        download_url(svc, &repo, d).await.unwrap();
    }
}

/// A blob mounted into another repository shares its bytes: the mount marks its source, so a
/// collector that read the source before the mount does not delete it, and once the source is
/// collected the bytes stay for the mounted layer, which reads back whole.
pub async fn a_mounted_layer_keeps_the_bytes_it_shares<
    M: MetadataStore,
    B: BlobStore,
    C: Collector,
>(
    svc: &Service<M, B>,
    svc_clock: &ManualClock,
    collector: &C,
) {
    let gc_clock = ManualClock::at_ms(svc_clock.now_ms());
    let (source, target) = (unique("mount-src"), unique("mount-dst"));
    create_repository(svc, &source).await;
    create_repository(svc, &target).await;
    let shared = blob(svc, &source, noise(4500, 41)).await;
    let key = blob_key(svc, &source, &shared.0).await;
    gc_clock.advance_secs(GRACE.as_secs() + SLACK_SECS);

    let read: Vec<UnreferencedLayer> = collector
        .unreferenced(&gc_clock)
        .await
        .into_iter()
        .filter(|l| l.repository == source)
        .collect();
    assert_eq!(read.len(), 1, "{read:?}");
    let mounted = svc
        .mount_blob(
            &target.parse().unwrap(),
            &source.parse().unwrap(),
            &shared.0.parse().unwrap(),
        )
        .await
        .unwrap();
    assert!(mounted);
    // The mount's mark came after the reading: the delete fails.
    assert_eq!(collector.remove(&read).await, 0);
    assert!(
        svc.metadata()
            .get_layer(REGISTRY, &source, &shared.0)
            .await
            .unwrap()
            .is_some()
    );

    // Later the source, still unreferenced and its mark old, goes; the mounted layer, young,
    // stays, and with it the bytes both named.
    gc_clock.advance_secs(GRACE.as_secs());
    svc_clock.advance_secs(2 * GRACE.as_secs());
    let mounted_too = blob(svc, &target, noise(100, 42)).await;
    svc.metadata()
        .mark_layers_referenced(
            REGISTRY,
            &target,
            &[LayerReference {
                digest: shared.0.clone(),
                media_type: None,
            }],
            svc_clock.now_ms(),
        )
        .await
        .unwrap();
    assert!(collector.sweep(&gc_clock).await >= 1);
    let m = svc.metadata();
    assert!(
        m.get_layer(REGISTRY, &source, &shared.0)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        m.get_layer(REGISTRY, &target, &mounted_too.0)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(blob_key(svc, &target, &shared.0).await, key);
    assert!(collector.layer_bytes().await.contains_key(&key));
    assert_eq!(read_back(svc, &target, &shared.0).await, shared.0);
}

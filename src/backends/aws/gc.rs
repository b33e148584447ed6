//! Collects what no record owns any more from the bucket: S3's side of
//! src/backends/local/reconcile.rs, bounded so that one run fits a Lambda invocation.
//!
//! Key layouts this relies on (re-check them when src/service/upload.rs, src/service/images.rs or
//! src/backends/aws/dynamo.rs change):
//!
//! - bucket: `staging/<upload id>/<offset, 20 digits>-<16 hex>` staging objects (a staged
//!   segment's `key`), `layers/<upload id>` layer bytes (an upload's and its layer's
//!   `blob_key`), `manifests/<registry>/<repository>/<digest>` manifests kept outside their
//!   image item (an image's `manifest_key`); multipart uploads on `layers/<upload id>`, named
//!   by an upload's `multipart_id`;
//! - table: items carry `kind` (`upload`, `segment`, `layer`, `image`, ...) and their record as
//!   JSON in `doc` (dynamo.rs's module comment), read by [`DynamoMetadata`]'s `owned`.
//!
//! First, layer records that no image of their repository references, recorded and last marked
//! referenced (by a PutImage, `marks`/`referencedAt` on the layer item) more than the grace
//! period ago, are deleted, each on condition that its `doc` and its count of marks are still
//! those the Scan read: a PutImage marks its layers before it writes its image, so one racing
//! the deletion either makes it fail or finds no record and answers `LayersNotFoundException`
//! (docs/architecture.md, "Layers no image references"). Their bytes then go with the rest,
//! unless another layer record (a mounted blob) names them too.
//!
//! The table is read first (a strongly consistent Scan) and the bucket listed after it. An
//! object or a multipart upload is removed only if the table owns nothing of it AND it is at
//! least the grace period old (S3's `LastModified`, which for a multipart object is when the
//! upload began; a multipart upload's `Initiated`):
//!
//! - staging objects that are no staged segment (a part that lost its race or whose request was
//!   cut, a segment already written as a multipart part, an upload expired or deleted);
//! - layer bytes that no layer record references and no upload record names (a deleted
//!   repository's layers, a completion that found the layer recorded);
//! - manifests that no image references;
//! - multipart uploads that no upload record names (an upload expired, deleted, or whose
//!   Initiate was cut before its record was written).
//!
//! Why bytes in flight are kept: a Scan is no snapshot, so a record written while it runs may
//! be missed. But an object at least the grace period old was written that long ago, and its
//! record (a segment, an upload, an image) is written by the same request right after it, so
//! before the Scan began as long as the grace period exceeds a request's longest run plus the
//! run's own time budget. A layer record written during the Scan belongs to an upload whose
//! record exists from Initiate until after the layer is recorded (Complete records both in one
//! transaction; the upload item stays until it expires): an upload seen by the Scan protects
//! its `layers/` key whatever its state, one begun after the Scan has a multipart younger than
//! the grace period. A PutImage racing a removal cannot end with an image over removed bytes:
//! PutImage references only layers whose records it marked, and layer records go only with
//! their repository or by the first step above, which no marked layer passes.
//! The grace period protects downloads too: URLs issued before a repository was deleted stay
//! valid for an hour.
//!
//! Expired uploads whose records are still in the table own their bytes here: the service's
//! expiry sweep (`Service::sweep_expired`) ends them first, and DynamoDB's TTL removes records
//! that no sweep reached; either way the next run collects their bytes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::{DynamoMetadata, S3Blobs, sdk_failure};
use crate::domain::clock::Clock;
use crate::domain::error::StoreError;
use crate::ports::{LayerRecord, StoreResult, UnreferencedLayer};

/// Conditional layer deletes sent at once.
const REMOVE_CONCURRENCY: usize = 16;

/// What the table refers to in the bucket (read by `DynamoMetadata::owned`).
#[derive(Debug, Default)]
pub(super) struct Owned {
    /// Multipart upload ids of every upload record.
    pub multipart_ids: HashSet<String>,
    /// Blob keys of every upload record, finished or not.
    pub upload_blobs: HashSet<String>,
    /// Keys of every staged segment.
    pub segment_keys: HashSet<String>,
    /// Blob keys of every layer record, of every repository.
    pub layer_keys: HashSet<String>,
    /// Keys of manifests kept outside their image item.
    pub manifest_keys: HashSet<String>,
    /// Every layer record, with what its deletion is conditional on.
    pub layers: Vec<ScannedLayer>,
    /// (registry, repository) → the digests its images reference; `None` when an image's
    /// references cannot be told from its record (then every layer of it is kept).
    pub referenced: HashMap<(String, String), Option<HashSet<String>>>,
}

/// A layer item as the Scan read it.
#[derive(Debug)]
pub(super) struct ScannedLayer {
    pub record: LayerRecord,
    /// The item's `doc` as stored.
    pub stored: String,
    /// Its count of marks (0 when never marked) and the time of the last.
    pub marks: u64,
    pub referenced_at_ms: Option<u64>,
}

impl Owned {
    /// The layers no image of their repository references that were neither recorded nor
    /// marked referenced within `grace` before `now_ms`.
    fn unreferenced(&self, now_ms: u64, grace: Duration) -> Vec<UnreferencedLayer> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let old = |ms: u64| now_ms.saturating_sub(ms) >= grace_ms;
        self.layers
            .iter()
            .filter(|l| {
                let r = &l.record;
                let kept = match self
                    .referenced
                    .get(&(r.registry_id.clone(), r.repository.clone()))
                {
                    Some(None) => true,
                    Some(Some(set)) => set.contains(&r.digest),
                    None => false,
                };
                !kept && old(r.created_at_ms) && l.referenced_at_ms.is_none_or(old)
            })
            .map(|l| UnreferencedLayer {
                registry_id: l.record.registry_id.clone(),
                repository: l.record.repository.clone(),
                digest: l.record.digest.clone(),
                blob_key: l.record.blob_key.clone(),
                stored: l.stored.clone(),
                marks: l.marks,
            })
            .collect()
    }
}

/// The work one run may do.
#[derive(Debug, Clone, Copy)]
pub struct GcLimits {
    /// Pages of the table's Scan (1 MB each); a larger table makes the run remove nothing.
    pub scan_pages: u32,
    /// Pages (of 1000) of the bucket's object listing and of its multipart upload listing.
    pub list_pages: u32,
    /// Wall time after which the run stops listing and removing (what it found so far goes).
    pub budget: Duration,
}

impl Default for GcLimits {
    /// Sized for a Lambda invocation of a few minutes.
    fn default() -> Self {
        Self {
            scan_pages: 200,
            list_pages: 50,
            budget: Duration::from_secs(120),
        }
    }
}

/// What one run removed, and whether it saw everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    pub objects: u64,
    pub bytes: u64,
    pub multipart_aborted: u64,
    /// Layer records deleted because no image referenced them.
    pub layers: u64,
    /// False when a limit stopped the run before it had looked at the whole bucket.
    pub complete: bool,
}

/// Removes from `blobs`' bucket what `meta`'s table does not own and is older than `grace`,
/// ages taken at `clock`'s time (see the module comment), within `limits`.
pub async fn collect(
    meta: &DynamoMetadata,
    blobs: &S3Blobs,
    grace: Duration,
    clock: &dyn Clock,
    limits: GcLimits,
) -> StoreResult<Collected> {
    let started = Instant::now();
    let mut done = Collected::default();
    let Some(mut owned) = meta.owned(limits.scan_pages).await? else {
        tracing::warn!(
            pages = limits.scan_pages,
            "the table is larger than one collection may scan: nothing removed"
        );
        return Ok(done);
    };
    let now_ms = clock.now_ms();
    let now_secs = now_ms / 1000;
    let out_of_time = || started.elapsed() >= limits.budget;

    // Layer records no image references first; then their bytes go below with the rest, unless
    // another record (a mounted layer) names them too.
    let mut gone: HashSet<(String, String, String)> = HashSet::new();
    for chunk in owned.unreferenced(now_ms, grace).chunks(REMOVE_CONCURRENCY) {
        if out_of_time() {
            break;
        }
        let results =
            futures_util::future::join_all(chunk.iter().map(|l| meta.remove_unreferenced_layer(l)))
                .await;
        for (l, removed) in chunk.iter().zip(results) {
            if removed? {
                gone.insert((
                    l.registry_id.clone(),
                    l.repository.clone(),
                    l.digest.clone(),
                ));
            }
        }
    }
    done.layers = gone.len() as u64;
    if !gone.is_empty() {
        owned.layer_keys = owned
            .layers
            .iter()
            .map(|l| &l.record)
            .filter(|r| {
                !gone.contains(&(
                    r.registry_id.clone(),
                    r.repository.clone(),
                    r.digest.clone(),
                ))
            })
            .map(|r| r.blob_key.clone())
            .collect();
    }

    let old = |secs: Option<i64>| {
        secs.and_then(|s| u64::try_from(s).ok())
            .is_some_and(|t| now_secs.saturating_sub(t) >= grace.as_secs())
    };
    let (client, bucket) = (blobs.client(), blobs.bucket());

    let mut objects_seen_all = false;
    let mut token: Option<String> = None;
    for _ in 0..limits.list_pages {
        if out_of_time() {
            break;
        }
        let out = client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| sdk_failure(format!("gc list_objects_v2 {bucket}"), e))?;
        let mut doomed = Vec::new();
        for o in out.contents() {
            let Some(key) = o.key() else { continue };
            let unowned = if key.starts_with("staging/") {
                !owned.segment_keys.contains(key)
            } else if key.starts_with("layers/") {
                !owned.layer_keys.contains(key) && !owned.upload_blobs.contains(key)
            } else if key.starts_with("manifests/") {
                !owned.manifest_keys.contains(key)
            } else {
                false
            };
            if unowned && old(o.last_modified().map(|t| t.secs())) {
                let size = u64::try_from(o.size().unwrap_or(0)).unwrap_or(0);
                doomed.push((key.to_owned(), size));
            }
        }
        let removed = delete(blobs, &doomed).await?;
        done.objects += removed.0;
        done.bytes += removed.1;
        token = out
            .next_continuation_token()
            .filter(|_| out.is_truncated() == Some(true))
            .map(str::to_owned);
        if token.is_none() {
            objects_seen_all = true;
            break;
        }
    }

    let mut uploads_seen_all = false;
    let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
    for _ in 0..limits.list_pages {
        if out_of_time() {
            break;
        }
        let out = client
            .list_multipart_uploads()
            .bucket(bucket)
            .set_key_marker(key_marker.take())
            .set_upload_id_marker(id_marker.take())
            .send()
            .await
            .map_err(|e| sdk_failure(format!("gc list_multipart_uploads {bucket}"), e))?;
        for u in out.uploads() {
            let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                continue;
            };
            if !owned.multipart_ids.contains(id) && old(u.initiated().map(|t| t.secs())) {
                blobs_abort(blobs, key, id).await?;
                done.multipart_aborted += 1;
            }
        }
        if out.is_truncated() != Some(true) {
            uploads_seen_all = true;
            break;
        }
        key_marker = out.next_key_marker().map(str::to_owned);
        id_marker = out.next_upload_id_marker().map(str::to_owned);
        if key_marker.is_none() && id_marker.is_none() {
            uploads_seen_all = true;
            break;
        }
    }
    done.complete = objects_seen_all && uploads_seen_all;
    Ok(done)
}

/// The layer records that no image of their repository references and that were neither
/// recorded nor marked referenced within `grace` (ages at `clock`'s time), from one bounded
/// Scan (`None`: the table is larger than `limits` lets a run scan). The first step of
/// [`collect`], public so that its race with PutImage can be driven step by step.
pub async fn unreferenced_layers(
    meta: &DynamoMetadata,
    grace: Duration,
    clock: &dyn Clock,
    limits: GcLimits,
) -> StoreResult<Option<Vec<UnreferencedLayer>>> {
    let Some(owned) = meta.owned(limits.scan_pages).await? else {
        return Ok(None);
    };
    Ok(Some(owned.unreferenced(clock.now_ms(), grace)))
}

/// Deletes each of `layers` that is still exactly as [`unreferenced_layers`] read it (the same
/// record, no mark since); returns how many went. The second step of [`collect`].
pub async fn remove_unreferenced_layers(
    meta: &DynamoMetadata,
    layers: &[UnreferencedLayer],
) -> StoreResult<u64> {
    let mut removed = 0;
    for chunk in layers.chunks(REMOVE_CONCURRENCY) {
        let results =
            futures_util::future::join_all(chunk.iter().map(|l| meta.remove_unreferenced_layer(l)))
                .await;
        for r in results {
            removed += u64::from(r?);
        }
    }
    Ok(removed)
}

/// Deletes `doomed` (key, size) in one DeleteObjects; returns what went (objects, bytes).
async fn delete(blobs: &S3Blobs, doomed: &[(String, u64)]) -> StoreResult<(u64, u64)> {
    if doomed.is_empty() {
        return Ok((0, 0));
    }
    let mut objects = Vec::with_capacity(doomed.len());
    for (key, _) in doomed {
        objects.push(
            ObjectIdentifier::builder()
                .key(key)
                .build()
                .map_err(|e| StoreError::backend(format!("gc delete {key}"), e))?,
        );
    }
    let request = Delete::builder()
        .set_objects(Some(objects))
        .quiet(true)
        .build()
        .map_err(|e| StoreError::backend("gc delete", e))?;
    let out = blobs
        .client()
        .delete_objects()
        .bucket(blobs.bucket())
        .delete(request)
        .send()
        .await
        .map_err(|e| sdk_failure(format!("gc delete_objects of {} keys", doomed.len()), e))?;
    let failed: HashSet<&str> = out
        .errors()
        .iter()
        .filter(|e| e.code() != Some("NoSuchKey"))
        .filter_map(|e| e.key())
        .collect();
    Ok(doomed
        .iter()
        .filter(|(k, _)| !failed.contains(k.as_str()))
        .fold((0, 0), |(n, b), (_, size)| (n + 1, b + size)))
}

async fn blobs_abort(blobs: &S3Blobs, key: &str, id: &str) -> StoreResult<()> {
    use crate::ports::BlobStore;
    blobs.abort_multipart(key, id).await
}

//! The service's behaviour (the upload state machine and repositories: the properties of
//! docs/architecture.md, "Properties"), written once and run on every backend:
//! `tests/unit/service.rs` (in-memory and embedded) and `tests/aws/backend.rs` (S3 + DynamoDB
//! servers).
//!
//! Every behaviour is a `pub async fn name<F: Backend>()`. A [`Backend`] opens the adapters and
//! answers what only it can see (staging objects as its store lists them, multipart parts as S3
//! reports them); a hook it does not implement answers `None` and the check falls back to what the
//! ports show. Each test serves a registry of its own, so the behaviours can run concurrently
//! against a persistent, shared server.
//!
//! `service_behaviours!(service_tests!(service_suite, Backend))` makes one `#[tokio::test]` per
//! behaviour, the way `tests/contract/suite.rs` does for the storage ports; `images.rs` beside
//! this file is the images' part of the suite, on the same backends.

// Each test crate that includes this file uses a different subset of it.
#![allow(dead_code, unused_macros, unused_imports)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::domain::limits::S3_MIN_PART_SIZE;
use ecr_layer_upload::domain::model::Page;
use ecr_layer_upload::frontdoors::lambda::part_size as lambda_part_size;
use ecr_layer_upload::ports::{BlobStore, FlushedPart, MetadataStore, UploadRecord};
use ecr_layer_upload::protocols::ecr::wire;
use ecr_layer_upload::service::types::*;
use ecr_layer_upload::service::{DIRECT_MIN_PART, Service, Settings, staging_key};
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};

use crate::common::service::{create_repository as repo, initiate, last_valid, part, small_parts};
use crate::common::{digest, noise};

pub const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The lists of behaviours and the test generator.

/// Calls `$callback!($($args)* ; name, name, ...)` with every service behaviour.
macro_rules! service_behaviours {
    ($($callback:ident)::+ ! ($($args:tt)*)) => {
        $($callback)::+! {
            $($args)* ;
            upload_part_rejects_gap_with_last_valid_byte,
            upload_part_rejects_length_mismatch,
            identical_resend_is_accepted_once_and_different_bytes_are_not,
            concurrent_parts_for_one_range_have_exactly_one_winner,
            concurrent_parts_at_one_offset_stage_only_the_winner,
            small_nonfinal_parts_fail_completion_with_ecrs_message,
            tiny_parts_coalesce_into_multipart_parts_of_at_least_5_mib,
            tiny_and_odd_parts_make_a_correct_layer_of_5_mib_parts,
            lambda_sized_parts_coalesce_into_parts_of_at_least_5_mib,
            digest_list_rules,
            layer_already_exists_is_per_repository_and_after_verification,
            uploads_are_bound_to_their_repository_and_registry,
            bad_input_gets_invalid_parameter,
            expired_uploads_are_absent_and_swept,
            abandoned_uploads_are_absent_and_swept_with_their_bytes,
            repositories_page_and_delete,
            parts_beyond_the_maximum_layer_size_are_refused,
            batch_check_reports_available_unavailable_and_failures
        }
    };
}
pub(crate) use service_behaviours;

/// Makes one `#[tokio::test]` per behaviour of the suite module `crate::$suite` on backend
/// `$backend`. Use inside a module of a test crate that has `mod service_suite;` (and, for the
/// images, `mod service_images;`) at its root:
/// `service_suite::service_behaviours!(service_suite::service_tests!(service_suite, MyBackend));`
macro_rules! service_tests {
    ($suite:ident, $backend:ty ; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crate::$suite::$name::<$backend>().await;
            }
        )*
    };
}
pub(crate) use service_tests;

// ---------------------------------------------------------------------------------------------
// Backends.

/// One multipart part as the blob store itself lists it.
#[derive(Debug, PartialEq, Eq)]
pub struct ListedPart {
    pub number: u32,
    pub etag: String,
    pub size: u64,
}

/// A backend the suite runs on: its adapters, and what it can show of its own state.
pub trait Backend: Send + Sync + Sized + 'static {
    type Metadata: MetadataStore + Clone;
    type Blobs: BlobStore + Clone;

    /// Whether other tests use the same stores at the same time (a sweep may then take their
    /// expired uploads too).
    const SHARED: bool = false;

    /// Adapters for one test (fresh ones, or clients of the shared servers).
    fn open() -> impl Future<Output = Self> + Send;
    fn metadata(&self) -> Self::Metadata;
    fn blobs(&self) -> Self::Blobs;

    /// The objects the blob store holds under `staging/<upload_id>/`, key → size, listed by the
    /// store itself (so orphans show); `None` if it cannot list.
    fn staging_objects(
        &self,
        upload_id: &str,
    ) -> impl Future<Output = Option<BTreeMap<String, u64>>> + Send {
        let _ = upload_id;
        async { None }
    }

    /// The parts of the open multipart upload `multipart_id` of `key`, as the blob store lists
    /// them: `Some(Err(code))` if it refuses (`NoSuchUpload` once completed or aborted); `None`
    /// if it cannot list.
    fn multipart_parts(
        &self,
        key: &str,
        multipart_id: &str,
    ) -> impl Future<Output = Option<Result<Vec<ListedPart>, String>>> + Send {
        let _ = (key, multipart_id);
        async { None }
    }

    /// The sizes of the parts the completed object at `key` was assembled from, in order;
    /// `None` if the store does not keep them.
    fn completed_part_sizes(&self, key: &str) -> impl Future<Output = Option<Vec<u64>>> + Send {
        let _ = key;
        async { None }
    }
}

pub type Svc<F> = Service<<F as Backend>::Metadata, <F as Backend>::Blobs>;

/// A backend opened for one test, serving a registry of its own.
pub struct Ctx<F: Backend> {
    pub backend: F,
    pub registry: String,
}

impl<F: Backend> Ctx<F> {
    pub async fn open() -> Self {
        let n = uuid::Uuid::new_v4().as_u128() % 1_000_000_000_000;
        Ctx {
            backend: F::open().await,
            registry: format!("{n:012}"),
        }
    }

    /// The service over this test's adapters (another call: another service over the same
    /// stores), answering for the test's registry.
    pub fn service(&self, settings: Settings) -> Svc<F> {
        Service::new(
            self.backend.metadata(),
            self.backend.blobs(),
            Settings {
                registry_id: self.registry.clone(),
                ..settings
            },
        )
    }
}

/// A fresh backend and the service on it.
async fn service<F: Backend>(settings: Settings) -> (Ctx<F>, Svc<F>) {
    let ctx = Ctx::<F>::open().await;
    let svc = ctx.service(settings);
    (ctx, svc)
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// CompleteLayerUpload through the protocol's checks: some tests send digests the model refuses.
async fn complete<F: Backend>(
    svc: &Svc<F>,
    name: &str,
    id: &str,
    digests: &[&str],
) -> Result<CompleteLayerUploadResponse, EcrError> {
    let req = wire::CompleteLayerUploadRequest {
        registry_id: None,
        repository_name: Some(name.into()),
        upload_id: Some(id.into()),
        layer_digests: Some(digests.iter().map(|s| s.to_string()).collect()),
    };
    svc.complete_layer_upload(req.try_into()?).await
}

async fn push<F: Backend>(
    svc: &Svc<F>,
    name: &str,
    layer: &[u8],
    part_size: usize,
) -> Result<String, EcrError> {
    let id = initiate(svc, name).await;
    let mut first = 0u64;
    for chunk in layer.chunks(part_size) {
        part(svc, name, &id, first, chunk).await?;
        first += chunk.len() as u64;
    }
    Ok(complete::<F>(svc, name, &id, &[&digest(layer)])
        .await?
        .layer_digest)
}

/// Sends `layer` as parts of `sizes` (which must add up to its length); checks every answer.
async fn send_parts<F: Backend>(svc: &Svc<F>, name: &str, id: &str, layer: &[u8], sizes: &[u64]) {
    assert_eq!(sizes.iter().sum::<u64>(), layer.len() as u64);
    let mut first = 0u64;
    for &len in sizes {
        let bytes = &layer[first as usize..(first + len) as usize];
        let out = part(svc, name, id, first, bytes)
            .await
            .unwrap_or_else(|e| panic!("part at {first} ({len} bytes): {e}"));
        assert_eq!(out.last_byte_received, first + len - 1);
        first += len;
    }
}

async fn read_all<F: Backend>(svc: &Svc<F>, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = svc.blobs().read_object(key, None).await.unwrap();
    while let Some(chunk) = s.try_next().await.unwrap() {
        out.extend_from_slice(&chunk);
    }
    out
}

async fn stored_bytes<F: Backend>(svc: &Svc<F>, name: &str, digest: &str) -> Vec<u8> {
    let layer = svc
        .metadata()
        .get_layer(&svc.settings().registry_id, name, digest)
        .await
        .unwrap()
        .expect("layer recorded");
    read_all::<F>(svc, &layer.blob_key).await
}

async fn upload_record<F: Backend>(svc: &Svc<F>, id: &str) -> UploadRecord {
    svc.metadata()
        .get_upload(id)
        .await
        .unwrap()
        .expect("upload record")
}

/// The objects staged for upload `id`: as the store lists them where it can, else the objects
/// its segment records name (each must exist with the recorded size).
async fn staged_objects<F: Backend>(ctx: &Ctx<F>, svc: &Svc<F>, id: &str) -> BTreeMap<String, u64> {
    if let Some(listed) = ctx.backend.staging_objects(id).await {
        return listed;
    }
    let mut found = BTreeMap::new();
    for s in svc.metadata().list_segments(id, 0).await.unwrap() {
        if let Some(size) = svc.blobs().object_size(&s.key).await.unwrap() {
            found.insert(s.key, size);
        }
    }
    found
}

/// The multipart parts the coalescing rule makes of ECR parts of `sizes` before completion: a
/// part of at least `s3_part_size` or 6 MiB with nothing staged before it is one on its own;
/// after any other part, while the staged bytes reach `s3_part_size`, the shortest prefix of staged
/// parts that reaches it becomes the next part. Returns the parts as (offset, len) and the
/// lengths still staged.
fn expected_flushes(sizes: &[u64], s3_part_size: u64) -> (Vec<(u64, u64)>, Vec<u64>) {
    let mut parts = Vec::new();
    let mut staged: Vec<u64> = Vec::new();
    let mut flushed = 0u64;
    for &len in sizes {
        if staged.is_empty() && len >= s3_part_size.min(DIRECT_MIN_PART) {
            // The direct path (src/service/direct.rs): the part is a multipart part on its own.
            parts.push((flushed, len));
            flushed += len;
            continue;
        }
        staged.push(len);
        loop {
            let mut total = 0;
            let mut take = 0;
            while take < staged.len() && total < s3_part_size {
                total += staged[take];
                take += 1;
            }
            if total < s3_part_size {
                break;
            }
            parts.push((flushed, total));
            flushed += total;
            staged.drain(..take);
        }
    }
    (parts, staged)
}

/// Before completion: the part records are what the coalescing rule predicts, the blob store's
/// own list of multipart parts (where it has one) agrees with them part for part (numbers,
/// ETags, sizes), every part is at least S3's 5 MiB, and the staging objects are exactly the
/// staged segments. Returns the records.
async fn check_open_upload<F: Backend>(
    ctx: &Ctx<F>,
    svc: &Svc<F>,
    id: &str,
    sizes: &[u64],
) -> Vec<FlushedPart> {
    let s3_part_size = svc.settings().s3_part_size;
    let (want_parts, want_staged) = expected_flushes(sizes, s3_part_size);
    let up = upload_record::<F>(svc, id).await;
    let total: u64 = sizes.iter().sum();
    assert_eq!(up.next_byte, total);
    assert_eq!(up.blob_key, format!("layers/{id}"));

    let flushed = svc.metadata().list_parts(id).await.unwrap();
    let got: Vec<(u32, u64, u64)> = flushed
        .iter()
        .map(|p| (p.number, p.offset, p.len))
        .collect();
    let want: Vec<(u32, u64, u64)> = want_parts
        .iter()
        .enumerate()
        .map(|(i, &(offset, len))| (i as u32 + 1, offset, len))
        .collect();
    assert_eq!(got, want, "flushed parts (number, offset, len)");
    assert_eq!(up.parts_flushed as usize, flushed.len());
    assert_eq!(up.flushed_bytes, flushed.iter().map(|p| p.len).sum::<u64>());
    for p in &flushed {
        assert!(
            p.len >= s3_part_size && p.len >= S3_MIN_PART_SIZE,
            "flushed part {} has {} bytes",
            p.number,
            p.len
        );
    }

    if let Some(listed) = ctx
        .backend
        .multipart_parts(&up.blob_key, &up.multipart_id)
        .await
    {
        let listed = listed.expect("the store lists the open multipart upload");
        let recorded: Vec<ListedPart> = flushed
            .iter()
            .map(|p| ListedPart {
                number: p.number,
                etag: p.etag.clone(),
                size: p.len,
            })
            .collect();
        assert_eq!(listed, recorded, "the store's parts are the recorded ones");
        for p in &listed {
            assert!(
                p.size >= S3_MIN_PART_SIZE,
                "stored part {} has {} bytes, under 5 MiB",
                p.number,
                p.size
            );
        }
    }

    let segments = svc.metadata().list_segments(id, 0).await.unwrap();
    assert_eq!(
        segments.iter().map(|s| s.len).collect::<Vec<_>>(),
        want_staged,
        "staged segments"
    );
    if let Some(first) = segments.first() {
        assert_eq!(
            first.offset, up.flushed_bytes,
            "staging starts where the parts end"
        );
    }
    let objects = staged_objects(ctx, svc, id).await;
    let from_records: BTreeMap<String, u64> =
        segments.iter().map(|s| (s.key.clone(), s.len)).collect();
    assert_eq!(
        objects, from_records,
        "staging objects are exactly the staged segments (no orphans)"
    );
    flushed
}

/// Nothing of upload `up` is left: no records, no staging objects, no open multipart upload.
async fn check_upload_gone<F: Backend>(ctx: &Ctx<F>, svc: &Svc<F>, up: &UploadRecord) {
    let id = &up.upload_id;
    assert!(svc.metadata().get_upload(id).await.unwrap().is_none());
    assert!(
        svc.metadata()
            .list_segments(id, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(svc.metadata().list_parts(id).await.unwrap().is_empty());
    if let Some(listed) = ctx.backend.staging_objects(id).await {
        assert!(listed.is_empty(), "staging objects remain: {listed:?}");
    }
    if let Some(res) = ctx
        .backend
        .multipart_parts(&up.blob_key, &up.multipart_id)
        .await
    {
        assert_eq!(
            res.as_ref().err().map(String::as_str),
            Some("NoSuchUpload"),
            "the multipart upload is no longer listable: {res:?}"
        );
    }
}

/// After completion: the answer, the layer record, the object's bytes and (where the store
/// keeps them) its parts, and nothing left of the upload.
async fn check_completed<F: Backend>(
    ctx: &Ctx<F>,
    svc: &Svc<F>,
    name: &str,
    up: &UploadRecord,
    answer: &CompleteLayerUploadResponse,
    layer: &[u8],
    flushed_before: &[FlushedPart],
) {
    let registry = &svc.settings().registry_id;
    let want = digest(layer);
    assert_eq!(answer.layer_digest, want);
    assert_eq!(answer.upload_id, up.upload_id);
    assert_eq!(answer.repository_name, name);
    assert_eq!(&answer.registry_id, registry);

    let record = svc
        .metadata()
        .get_layer(registry, name, &want)
        .await
        .unwrap()
        .expect("layer recorded");
    assert_eq!(record.blob_key, up.blob_key);
    assert_eq!(record.size, layer.len() as u64);

    let stored = read_all::<F>(svc, &up.blob_key).await;
    assert_eq!(stored.len() as u64, layer.len() as u64);
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&stored))),
        want,
        "the stored object hashes to the layer's digest"
    );

    // The object is assembled from the parts flushed before completion and, if bytes were
    // still staged, one last part of the tail: every part but the last is at least 5 MiB.
    if let Some(sizes) = ctx.backend.completed_part_sizes(&up.blob_key).await {
        let tail = up.next_byte - up.flushed_bytes;
        let mut want_sizes: Vec<u64> = flushed_before.iter().map(|p| p.len).collect();
        if tail > 0 {
            want_sizes.push(tail);
        }
        assert_eq!(
            sizes, want_sizes,
            "the object's parts are the flushed parts plus the tail"
        );
        if let Some((_, all_but_last)) = sizes.split_last() {
            assert!(
                all_but_last.iter().all(|&s| s >= S3_MIN_PART_SIZE),
                "{sizes:?}"
            );
        }
    }
    if ctx.backend.staging_objects(&up.upload_id).await.is_none() {
        // Without a listing, at least the segments' objects must be gone.
        assert!(
            staged_objects(ctx, svc, &up.upload_id).await.is_empty(),
            "no staging objects remain after completion"
        );
    }
    check_upload_gone(ctx, svc, up).await;
}

// ---------------------------------------------------------------------------------------------
// Contiguity and retries.

pub async fn upload_part_rejects_gap_with_last_valid_byte<F: Backend>() {
    let (_ctx, svc) = service::<F>(Settings::default()).await;
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    let err = part(&svc, "app", &id, 10, b"abc").await.unwrap_err();
    assert_eq!(
        err.message(),
        "First byte of the layer part is 10 instead of 0"
    );
    assert_eq!(last_valid(&err), 0);
    part(&svc, "app", &id, 0, b"abcd").await.unwrap();
    let err = part(&svc, "app", &id, 5, b"x").await.unwrap_err();
    assert_eq!(
        err.message(),
        "First byte of the layer part is 5 instead of 4"
    );
    assert_eq!(last_valid(&err), 3);
    // An overlapping part is not contiguous either.
    let err = part(&svc, "app", &id, 2, b"xy").await.unwrap_err();
    assert_eq!(last_valid(&err), 3);
}

pub async fn upload_part_rejects_length_mismatch<F: Backend>() {
    let (_ctx, svc) = service::<F>(Settings::default()).await;
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    let err = svc
        .upload_layer_part(UploadLayerPartRequest {
            part_last_byte: 9,
            ..UploadLayerPartRequest::new(
                "app".parse().unwrap(),
                id.parse().unwrap(),
                0,
                Bytes::from_static(b"short"),
            )
        })
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidLayerPartException");
    let err = svc
        .upload_layer_part(UploadLayerPartRequest {
            part_last_byte: 4,
            ..UploadLayerPartRequest::new(
                "app".parse().unwrap(),
                id.parse().unwrap(),
                5,
                Bytes::new(),
            )
        })
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidLayerPartException");
}

pub async fn identical_resend_is_accepted_once_and_different_bytes_are_not<F: Backend>() {
    let (_ctx, svc) = service::<F>(small_parts()).await;
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    assert_eq!(
        part(&svc, "app", &id, 0, b"hello")
            .await
            .unwrap()
            .last_byte_received,
        4
    );
    assert_eq!(
        part(&svc, "app", &id, 0, b"hello")
            .await
            .unwrap()
            .last_byte_received,
        4
    );
    let err = part(&svc, "app", &id, 0, b"HELLO").await.unwrap_err();
    assert_eq!(last_valid(&err), 4);
    part(&svc, "app", &id, 5, b" world").await.unwrap();
    // Only the last accepted part may be re-sent.
    assert!(part(&svc, "app", &id, 0, b"hello").await.is_err());
    let d = complete::<F>(&svc, "app", &id, &[&digest(b"hello world")])
        .await
        .unwrap();
    assert_eq!(
        stored_bytes::<F>(&svc, "app", &d.layer_digest).await,
        b"hello world"
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrency.

pub async fn concurrent_parts_for_one_range_have_exactly_one_winner<F: Backend>() {
    let (_ctx, svc) = service::<F>(small_parts()).await;
    let svc = Arc::new(svc);
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    let mut tasks = Vec::new();
    for seed in 0..8u8 {
        let (svc, id) = (svc.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let bytes = data(1000, seed);
            (seed, part(&svc, "app", &id, 0, &bytes).await)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (seed, r) = t.await.unwrap();
        match r {
            Ok(_) => winners.push(seed),
            Err(e) => assert_eq!(last_valid(&e), 999),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let layer = data(1000, winners[0]);
    let d = complete::<F>(&svc, "app", &id, &[&digest(&layer)])
        .await
        .unwrap();
    assert_eq!(stored_bytes::<F>(&svc, "app", &d.layer_digest).await, layer);
}

/// Racers of different bytes and lengths released together: one wins, every loser is told the
/// winner's last byte, only the winner's bytes stay staged, and retries are answered alike.
pub async fn concurrent_parts_at_one_offset_stage_only_the_winner<F: Backend>() {
    let (ctx, svc) = service::<F>(small_parts()).await;
    let svc = Arc::new(svc);
    let name = "race";
    repo(&svc, name).await;
    let id = initiate(&svc, name).await;

    const RACERS: u64 = 6;
    // Different bytes and lengths: a loser's answer names the winner's last byte.
    let bytes_of = |seed: u64| noise(1000 + 111 * seed as usize, 100 + seed);
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS as usize));
    let mut tasks = Vec::new();
    for seed in 0..RACERS {
        let (svc, id, barrier) = (svc.clone(), id.clone(), barrier.clone());
        let bytes = bytes_of(seed);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (seed, part(&svc, name, &id, 0, &bytes).await)
        }));
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (seed, Ok(out)) => winners.push((seed, out)),
            (seed, Err(e)) => losers.push((seed, e)),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "winners {:?}, losers {:?}",
        winners.iter().map(|w| w.0).collect::<Vec<_>>(),
        losers
            .iter()
            .map(|(s, e)| format!("{s}: {e}"))
            .collect::<Vec<_>>()
    );
    let (winner, out) = &winners[0];
    let layer = bytes_of(*winner);
    assert_eq!(out.last_byte_received, layer.len() as u64 - 1);
    for (seed, err) in &losers {
        assert_eq!(
            last_valid(err),
            layer.len() as u64 - 1,
            "loser {seed} is told the winner's last byte"
        );
    }

    // Only the winner's bytes are staged: the losers removed their staging objects, and the one
    // left is the object the upload's record names, holding the winner's bytes.
    let objects = staged_objects(&ctx, &svc, &id).await;
    let segments = svc.metadata().list_segments(&id, 0).await.unwrap();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let winner_key = segments[0].key.clone();
    assert!(winner_key.starts_with(&format!("staging/{id}/")));
    assert_eq!(
        svc.blobs().get_object(&winner_key).await.unwrap().as_ref(),
        layer.as_slice()
    );
    assert_eq!(
        objects.into_iter().collect::<Vec<_>>(),
        [(winner_key, layer.len() as u64)]
    );
    // A loser's retry still loses; the winner's retry is answered as accepted.
    let (loser, _) = &losers[0];
    let err = part(&svc, name, &id, 0, &bytes_of(*loser))
        .await
        .unwrap_err();
    assert_eq!(last_valid(&err), layer.len() as u64 - 1);
    let again = part(&svc, name, &id, 0, &layer).await.unwrap();
    assert_eq!(again.last_byte_received, layer.len() as u64 - 1);

    let up = upload_record::<F>(&svc, &id).await;
    let answer = complete::<F>(&svc, name, &id, &[&digest(&layer)])
        .await
        .unwrap();
    check_completed(&ctx, &svc, name, &up, &answer, &layer, &[]).await;
}

// ---------------------------------------------------------------------------------------------
// Part sizes and coalescing.

pub async fn small_nonfinal_parts_fail_completion_with_ecrs_message<F: Backend>() {
    let (_ctx, svc) = service::<F>(Settings::default()).await;
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    part(&svc, "app", &id, 0, &data(1024, 1)).await.unwrap();
    part(&svc, "app", &id, 1024, &data(10, 2)).await.unwrap();
    let err = complete::<F>(&svc, "app", &id, &[&digest(b"x")])
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "LayerPartTooSmallException");
    assert_eq!(
        err.message(),
        "All layer parts except the last part should be at least 5MB"
    );
    // A small last part is fine.
    let id = initiate(&svc, "app").await;
    let layer = data(5 * MIB as usize + 3, 3);
    part(&svc, "app", &id, 0, &layer[..5 * MIB as usize])
        .await
        .unwrap();
    part(&svc, "app", &id, 5 * MIB, &layer[5 * MIB as usize..])
        .await
        .unwrap();
    complete::<F>(&svc, "app", &id, &[&digest(&layer)])
        .await
        .unwrap();
}

pub async fn tiny_parts_coalesce_into_multipart_parts_of_at_least_5_mib<F: Backend>() {
    let (ctx, svc) = service::<F>(small_parts()).await;
    repo(&svc, "app").await;
    let layer = data(12 * MIB as usize + 12345, 7);
    let id = initiate(&svc, "app").await;
    let mut first = 0u64;
    // Odd sizes, from 1 KiB to a few hundred KiB.
    let mut sizes = [1024usize, 333_333, 65_537, 1, 200_000].iter().cycle();
    while (first as usize) < layer.len() {
        let len = (*sizes.next().unwrap()).min(layer.len() - first as usize);
        part(
            &svc,
            "app",
            &id,
            first,
            &layer[first as usize..first as usize + len],
        )
        .await
        .unwrap();
        first += len as u64;
    }
    let parts = svc.metadata().list_parts(&id).await.unwrap();
    assert_eq!(
        parts.len(),
        2,
        "12 MiB holds two full 5 MiB parts before completion"
    );
    assert!(parts.iter().all(|p| p.len >= 5 * MIB));
    let up = svc.metadata().get_upload(&id).await.unwrap().unwrap();
    assert_eq!(up.flushed_bytes, parts.iter().map(|p| p.len).sum::<u64>());
    assert!(up.next_byte - up.flushed_bytes < 5 * MIB + 333_333);
    let d = complete::<F>(&svc, "app", &id, &[&digest(&layer)])
        .await
        .unwrap();
    assert_eq!(d.layer_digest, digest(&layer));
    assert_eq!(stored_bytes::<F>(&svc, "app", &d.layer_digest).await, layer);
    // Nothing of the upload is left behind: no records, no staging objects.
    assert!(svc.metadata().get_upload(&id).await.unwrap().is_none());
    assert!(
        svc.metadata()
            .list_segments(&id, 0)
            .await
            .unwrap()
            .is_empty()
    );
    check_upload_gone(&ctx, &svc, &up).await;
}

/// Tiny and odd-sized parts, and a run of 1 KiB parts across the first 5 MiB boundary (a
/// multipart part assembled from a hundred-odd staging objects read back from the store).
pub async fn tiny_and_odd_parts_make_a_correct_layer_of_5_mib_parts<F: Backend>() {
    let (ctx, svc) = service::<F>(small_parts()).await;
    let name = "odd-parts";
    repo(&svc, name).await;

    let total = 11 * MIB + 4321;
    let odd = [1, 4097, 333_333, MIB + 7, 65_537, 777_777];
    let run = (5 * MIB - 96 * 1024)..(5 * MIB + 32 * 1024);
    let mut sizes = Vec::new();
    let mut at = 0u64;
    let mut next_odd = odd.iter().cycle();
    while at < total {
        let len = if run.contains(&at) {
            1024
        } else if at < run.start {
            // An odd part, cut short where the run begins.
            (*next_odd.next().unwrap()).min(run.start - at)
        } else {
            (*next_odd.next().unwrap()).min(total - at)
        };
        sizes.push(len);
        at += len;
    }
    assert!(sizes.iter().filter(|&&s| s == 1024).count() >= 100);
    assert!(sizes.len() < 250, "{} requests", sizes.len());

    let layer = noise(total as usize, 2);
    let id = initiate(&svc, name).await;
    send_parts::<F>(&svc, name, &id, &layer, &sizes).await;

    let flushed = check_open_upload(&ctx, &svc, &id, &sizes).await;
    assert!(
        flushed.len() >= 2,
        "11 MiB flushes two 5 MiB parts: {}",
        flushed.len()
    );
    let up = upload_record::<F>(&svc, &id).await;
    assert!(
        up.next_byte > up.flushed_bytes,
        "a tail is left for completion"
    );

    let answer = complete::<F>(&svc, name, &id, &[&digest(&layer)])
        .await
        .unwrap();
    check_completed(&ctx, &svc, name, &up, &answer, &layer, &flushed).await;
}

/// A 64 MiB layer in parts of the size the Lambda front door advertises (under S3's minimum:
/// that is what coalescing is for), flushed as 8 MiB parts.
pub async fn lambda_sized_parts_coalesce_into_parts_of_at_least_5_mib<F: Backend>() {
    let settings = Settings {
        part_size: lambda_part_size(),
        min_part_size: MIB,
        ..Settings::default()
    };
    assert_eq!(settings.s3_part_size, 8 * MIB);
    let (ctx, svc) = service::<F>(settings).await;
    let name = "lambda-parts";
    repo(&svc, name).await;

    let layer = noise(64 * MIB as usize, 1);
    let part_size = lambda_part_size();
    assert!(
        part_size < S3_MIN_PART_SIZE,
        "a Lambda-sized part ({part_size}) is under S3's minimum: that is what coalescing is for"
    );
    let sizes: Vec<u64> = layer
        .chunks(part_size as usize)
        .map(|c| c.len() as u64)
        .collect();
    let id = initiate(&svc, name).await;
    send_parts::<F>(&svc, name, &id, &layer, &sizes).await;

    let flushed = check_open_upload(&ctx, &svc, &id, &sizes).await;
    assert!(
        flushed.len() >= 6,
        "64 MiB makes several 8 MiB parts: {}",
        flushed.len()
    );
    let up = upload_record::<F>(&svc, &id).await;

    let answer = complete::<F>(&svc, name, &id, &[&digest(&layer)])
        .await
        .unwrap();
    check_completed(&ctx, &svc, name, &up, &answer, &layer, &flushed).await;
}

// ---------------------------------------------------------------------------------------------
// Digests and existing layers.

pub async fn digest_list_rules<F: Backend>() {
    let (ctx, svc) = service::<F>(small_parts()).await;
    repo(&svc, "app").await;
    let layer = b"some layer";
    let good = digest(layer);
    let upper = format!("sha256:{}", good["sha256:".len()..].to_uppercase());
    // Upper-case hex matches; digests of other algorithms are ignored beside a sha256 one.
    for digests in [vec![upper.as_str()], vec!["sha512:abcd", good.as_str()]] {
        // A repository of its own, where the layer does not exist yet.
        let (_ctx, svc) = service::<F>(small_parts()).await;
        repo(&svc, "app").await;
        let id = initiate(&svc, "app").await;
        part(&svc, "app", &id, 0, layer).await.unwrap();
        let d = complete::<F>(&svc, "app", &id, &digests).await.unwrap();
        assert_eq!(d.layer_digest, good);
    }
    let id = initiate(&svc, "app").await;
    part(&svc, "app", &id, 0, layer).await.unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = complete::<F>(&svc, "app", &id, &[&wrong, "sha512:ab"])
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidLayerException");
    assert!(
        svc.metadata()
            .get_layer(&ctx.registry, "app", &good)
            .await
            .unwrap()
            .is_none()
    );
    // A list that names no sha256 digest cannot be verified: refused, the upload left as it is.
    let err = complete::<F>(&svc, "app", &id, &["sha512:abcd"])
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidParameterException");
    let err = complete::<F>(&svc, "app", &id, &["sha256"])
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidParameterException");
    // The upload failed verification but stays for a retry with the right digest.
    let d = complete::<F>(&svc, "app", &id, &[&good]).await.unwrap();
    assert_eq!(d.layer_digest, good);
}

pub async fn layer_already_exists_is_per_repository_and_after_verification<F: Backend>() {
    let (_ctx, svc) = service::<F>(small_parts()).await;
    repo(&svc, "one").await;
    repo(&svc, "two").await;
    let layer = b"shared layer";
    push::<F>(&svc, "one", layer, 5).await.unwrap();
    let err = push::<F>(&svc, "one", layer, 5).await.unwrap_err();
    assert_eq!(err.type_name(), "LayerAlreadyExistsException");
    assert!(err.message().contains(&digest(layer)));
    push::<F>(&svc, "two", layer, 5).await.unwrap();
    // A wrong digest is reported as such even when the bytes exist already.
    let id = initiate(&svc, "one").await;
    part(&svc, "one", &id, 0, layer).await.unwrap();
    let err = complete::<F>(&svc, "one", &id, &[&digest(b"other")])
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidLayerException");
    // The first copy is still intact.
    assert_eq!(stored_bytes::<F>(&svc, "one", &digest(layer)).await, layer);
}

// ---------------------------------------------------------------------------------------------
// Requests that name the wrong thing.

pub async fn uploads_are_bound_to_their_repository_and_registry<F: Backend>() {
    let (ctx, svc) = service::<F>(small_parts()).await;
    repo(&svc, "one").await;
    repo(&svc, "two").await;
    let id = initiate(&svc, "one").await;
    let err = part(&svc, "two", &id, 0, b"x").await.unwrap_err();
    assert_eq!(err.type_name(), "UploadNotFoundException");
    assert_eq!(
        err.message(),
        format!(
            "The upload with id '{id}' does not exist in the repository with name 'two' in the registry with id '{}'",
            ctx.registry
        )
    );
    let other = if ctx.registry == "210987654321" {
        "210987654322"
    } else {
        "210987654321"
    };
    let err = svc
        .initiate_layer_upload(InitiateLayerUploadRequest {
            registry_id: Some(other.parse().unwrap()),
            ..InitiateLayerUploadRequest::new("one".parse().unwrap())
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        format!("The repository with name 'one' does not exist in the registry with id '{other}'")
    );
    let unknown = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    let err = complete::<F>(&svc, "one", unknown, &["sha256:00"])
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "UploadNotFoundException");
}

pub async fn bad_input_gets_invalid_parameter<F: Backend>() {
    let (_ctx, svc) = service::<F>(small_parts()).await;
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    // Constraints are checked where a request arrives: these go through the protocol's checks.
    let cases: Vec<(wire::UploadLayerPartRequest, &str)> = vec![
        (
            wire::UploadLayerPartRequest {
                repository_name: Some("app".into()),
                upload_id: Some(id.clone()),
                part_first_byte: Some(-1),
                part_last_byte: Some(0),
                layer_part_blob: Some(Bytes::from_static(b"x")),
                ..Default::default()
            },
            "Invalid parameter at 'partFirstByte' failed to satisfy constraint: 'must have value greater than or equal to 0'",
        ),
        (
            wire::UploadLayerPartRequest {
                repository_name: Some("app".into()),
                upload_id: Some(id.clone()),
                part_first_byte: Some(0),
                part_last_byte: Some(0),
                ..Default::default()
            },
            "Invalid parameter at 'layerPartBlob' failed to satisfy constraint: 'must not be null'",
        ),
        (
            wire::UploadLayerPartRequest {
                repository_name: Some("app".into()),
                upload_id: Some("not-a-uuid".into()),
                part_first_byte: Some(0),
                part_last_byte: Some(0),
                layer_part_blob: Some(Bytes::from_static(b"x")),
                ..Default::default()
            },
            "Invalid parameter at 'uploadId' failed to satisfy constraint: 'must satisfy regular expression pattern: [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}'",
        ),
        (
            wire::UploadLayerPartRequest {
                repository_name: Some("app".into()),
                upload_id: Some(id.clone()),
                part_first_byte: Some(0),
                part_last_byte: Some(20_971_520),
                layer_part_blob: Some(Bytes::from(vec![0u8; 20_971_521])),
                ..Default::default()
            },
            "Invalid parameter at 'layerPartBlob' failed to satisfy constraint: 'must have length less than or equal to 20971520'",
        ),
        (
            wire::UploadLayerPartRequest {
                registry_id: Some("12".into()),
                repository_name: Some("app".into()),
                ..Default::default()
            },
            "Invalid parameter at 'registryId' failed to satisfy constraint: 'must satisfy regular expression pattern: [0-9]{12}'",
        ),
    ];
    for (req, message) in cases {
        let err = match UploadLayerPartRequest::try_from(req) {
            Err(e) => e,
            Ok(req) => svc.upload_layer_part(req).await.unwrap_err(),
        };
        assert_eq!(err.type_name(), "InvalidParameterException");
        assert_eq!(err.message(), message);
    }
    let err = complete::<F>(&svc, "app", &id, &[]).await.unwrap_err();
    assert_eq!(
        err.message(),
        "Invalid parameter at 'layerDigests' failed to satisfy constraint: 'must have length greater than or equal to 1'"
    );
}

pub async fn parts_beyond_the_maximum_layer_size_are_refused<F: Backend>() {
    let (_ctx, svc) = service::<F>(small_parts()).await;
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    // A part that continues the upload past the limit (contiguity is checked first): the
    // upload is moved to just below it, as no test sends 52,000 MiB.
    let mut up = svc.metadata().get_upload(&id).await.unwrap().unwrap();
    up.version += 1;
    up.next_byte = 52_000 * MIB - 1;
    svc.metadata()
        .update_upload(&up, ecr_layer_upload::ports::SideWrite::None)
        .await
        .unwrap();
    let err = part(&svc, "app", &id, 52_000 * MIB - 1, b"xy")
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "LimitExceededException");
    // Past the end of what was received, contiguity answers first.
    let err = part(&svc, "app", &id, 52_000 * MIB, b"x")
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidLayerPartException");
}

// ---------------------------------------------------------------------------------------------
// Expiry. Time is controlled through the upload TTL: a TTL of zero or one second, and a wait of
// just over it.

/// Held by every sweep of this suite. A sweep removes every expired upload of the store, and
/// on a shared backend the tests run side by side: a test that looks at an expired upload before
/// sweeping it holds this, so that another test's sweep cannot take the upload from under it.
static SWEEPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sweeps until upload `id` is gone; returns what the first sweep removed. On a shared backend
/// other tests' expired uploads may go first, so it sweeps again while that makes progress.
async fn sweep_until_gone<F: Backend>(svc: &Svc<F>, id: &str) -> usize {
    let _sweeping = SWEEPS.lock().await;
    let first = svc.sweep_expired(1000).await.unwrap();
    if F::SHARED {
        for _ in 0..50 {
            if svc.metadata().get_upload(id).await.unwrap().is_none() {
                break;
            }
            if svc.sweep_expired(1000).await.unwrap() == 0 {
                break;
            }
        }
    }
    first
}

pub async fn expired_uploads_are_absent_and_swept<F: Backend>() {
    let (_ctx, svc) = service::<F>(Settings {
        upload_ttl_secs: 0,
        ..small_parts()
    })
    .await;
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = part(&svc, "app", &id, 0, b"x").await.unwrap_err();
    assert_eq!(err.type_name(), "UploadNotFoundException");
    let removed = sweep_until_gone::<F>(&svc, &id).await;
    if !F::SHARED {
        assert_eq!(removed, 1);
    }
    assert!(svc.metadata().get_upload(&id).await.unwrap().is_none());
}

pub async fn abandoned_uploads_are_absent_and_swept_with_their_bytes<F: Backend>() {
    // Two services over the same adapters, differing only in the upload TTL: the parts go in
    // under a day's TTL, and the last one, under a TTL of one second, sets the expiry that the
    // upload then passes. (Every part pushes the expiry forward, so staging several parts under
    // a one-second TTL would race the clock.)
    let (ctx, long) = service::<F>(small_parts()).await;
    let short = ctx.service(Settings {
        upload_ttl_secs: 1,
        ..small_parts()
    });
    let name = "abandoned";
    repo(&long, name).await;

    let layer = noise(6 * MIB as usize + 12_345, 3);
    let id = initiate(&long, name).await;
    let m = MIB as usize;
    for i in 0..6 {
        part(&long, name, &id, (i * m) as u64, &layer[i * m..(i + 1) * m])
            .await
            .unwrap();
    }
    part(&short, name, &id, 6 * MIB, &layer[6 * m..])
        .await
        .unwrap();

    // One 5 MiB multipart part and two staged segments (1 MiB and the 12,345-byte tail).
    let up = upload_record::<F>(&long, &id).await;
    let sizes = [MIB, MIB, MIB, MIB, MIB, MIB, 12_345];
    let flushed = check_open_upload(&ctx, &long, &id, &sizes).await;
    assert_eq!(flushed.len(), 1);
    let staged = staged_objects(&ctx, &long, &id).await;
    assert_eq!(staged.len(), 2);

    // `live_upload` treats `expires_at <= now` as absent; the sweep takes `expires_at < now`.
    // Two seconds past the last write satisfies both. No other test sweeps meanwhile.
    let no_sweeps = SWEEPS.lock().await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;

    for svc in [&long, &short] {
        let err = part(svc, name, &id, up.next_byte, b"late")
            .await
            .unwrap_err();
        assert_eq!(err.type_name(), "UploadNotFoundException", "{err}");
        let err = complete::<F>(svc, name, &id, &[&digest(&layer)])
            .await
            .unwrap_err();
        assert_eq!(err.type_name(), "UploadNotFoundException", "{err}");
    }
    // Absent to the API, but still stored until swept (DynamoDB's TTL may lag by days).
    assert!(long.metadata().get_upload(&id).await.unwrap().is_some());
    drop(no_sweeps);

    sweep_until_gone::<F>(&long, &id).await;
    assert!(
        long.metadata().get_upload(&id).await.unwrap().is_none(),
        "the sweep removed the upload record"
    );
    check_upload_gone(&ctx, &long, &up).await;
    // The staged objects went with it, and nothing was assembled.
    for key in staged.keys() {
        assert_eq!(
            long.blobs().object_size(key).await.unwrap(),
            None,
            "the sweep removed staging object {key}"
        );
    }
    assert_eq!(long.blobs().object_size(&up.blob_key).await.unwrap(), None);
    assert!(
        long.metadata()
            .get_layer(&ctx.registry, name, &digest(&layer))
            .await
            .unwrap()
            .is_none()
    );
}

// ---------------------------------------------------------------------------------------------
// Repositories and layer checks.

pub async fn repositories_page_and_delete<F: Backend>() {
    let (_ctx, svc) = service::<F>(small_parts()).await;
    for name in ["c-repo", "a-repo", "b-repo"] {
        repo(&svc, name).await;
    }
    let page = svc
        .describe_repositories(DescribeRepositoriesRequest::new(RepositorySelection::Page(
            Page::first(2),
        )))
        .await
        .unwrap();
    let names: Vec<_> = page
        .repositories
        .iter()
        .map(|r| r.repository_name.as_str())
        .collect();
    assert_eq!(names, ["a-repo", "b-repo"]);
    let page = svc
        .describe_repositories(DescribeRepositoriesRequest::new(RepositorySelection::Page(
            Page {
                max_results: 2,
                after: page.next_token,
            },
        )))
        .await
        .unwrap();
    assert_eq!(page.repositories.len(), 1);
    assert!(page.next_token.is_none());
    svc.delete_repository(DeleteRepositoryRequest::new("a-repo".parse().unwrap()))
        .await
        .unwrap();
    let err = svc
        .delete_repository(DeleteRepositoryRequest::new("a-repo".parse().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "RepositoryNotFoundException");
}

pub async fn batch_check_reports_available_unavailable_and_failures<F: Backend>() {
    let (_ctx, svc) = service::<F>(small_parts()).await;
    repo(&svc, "app").await;
    let layer = b"checked layer";
    let d = push::<F>(&svc, "app", layer, 4).await.unwrap();
    let absent = format!("sha256:{}", "1".repeat(64));
    let out = svc
        .batch_check_layer_availability(
            wire::BatchCheckLayerAvailabilityRequest {
                registry_id: None,
                repository_name: Some("app".into()),
                layer_digests: Some(vec![
                    d.clone(),
                    absent.clone(),
                    "nope".into(),
                    String::new(),
                ]),
            }
            .try_into()
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(out.layers.len(), 2);
    assert_eq!(out.layers[0].layer_digest, d);
    assert_eq!(out.layers[0].layer_availability, "AVAILABLE");
    assert_eq!(out.layers[0].layer_size, Some(layer.len() as u64));
    assert_eq!(out.layers[1].layer_digest, absent);
    assert_eq!(out.layers[1].layer_availability, "UNAVAILABLE");
    assert_eq!(out.layers[1].layer_size, None);
    let codes: Vec<_> = out
        .failures
        .iter()
        .map(|f| f.failure_code.as_str())
        .collect();
    assert_eq!(codes, ["InvalidLayerDigest", "MissingLayerDigest"]);
    let err =
        BatchCheckLayerAvailabilityRequest::try_from(wire::BatchCheckLayerAvailabilityRequest {
            registry_id: None,
            repository_name: Some("app".into()),
            layer_digests: Some(vec![]),
        })
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidParameterException");
}

//! The upload state machine on the AWS backend (S3 + DynamoDB), driven in-process against the
//! local S3 (SeaweedFS) and DynamoDB (dynoxide) servers of `scripts/services.sh`: the coalescing
//! of small ECR parts into S3 multipart parts of at least 5 MiB, checked against S3's own view of
//! the multipart upload (ListParts, HeadObject, ListObjectsV2); abandoned uploads and their
//! cleanup; a same-offset race decided by DynamoDB's conditional writes; images whose manifest is
//! too big for a DynamoDB item, and layer downloads from presigned S3 URLs.
//!
//! Run with `make test-aws-backend` (starts the servers and exports their environment). Without
//! that environment these tests fail, they do not pass vacuously.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use ecr_layer_upload::backends::aws::{DynamoMetadata, S3Blobs};
use ecr_layer_upload::domain::limits::S3_MIN_PART_SIZE;
use ecr_layer_upload::frontdoors::lambda::part_size as lambda_part_size;
use ecr_layer_upload::ports::{BlobStore, FlushedPart, MetadataStore, UploadRecord};
use ecr_layer_upload::service::types::*;
use ecr_layer_upload::service::{Service, Settings, staging_key};
use sha2::{Digest, Sha256};

use crate::common::service::{
    complete, create_repository as repo, initiate, last_valid, part, small_parts,
};
use crate::common::{self, REGISTRY, aws, digest, noise};

const MIB: u64 = 1024 * 1024;
type Svc = Service<DynamoMetadata, S3Blobs>;

// ---------------------------------------------------------------------------------------------
// Adapters and helpers, in the style of tests/unit/service.rs.

async fn service(settings: Settings) -> Svc {
    let (meta, blobs) = aws::adapters().await;
    Service::new(meta, blobs, settings)
}

/// A repository name of its own for every test and run: the bucket and table are shared.
fn repo_name(kind: &str) -> String {
    format!("aws-backend/{kind}-{}", uuid::Uuid::new_v4().simple())
}

/// Sends `layer` as parts of `sizes` (which must add up to its length); checks every answer.
async fn send_parts(svc: &Svc, name: &str, id: &str, layer: &[u8], sizes: &[u64]) {
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

async fn upload_record(svc: &Svc, id: &str) -> UploadRecord {
    svc.metadata()
        .get_upload(id)
        .await
        .unwrap()
        .expect("upload item in DynamoDB")
}

/// Removes what a test left in the shared bucket and table: the layer objects and the
/// repository (with its layer items).
async fn cleanup(svc: &Svc, name: &str, blob_keys: &[String]) {
    svc.blobs().delete_objects(blob_keys).await.unwrap();
    svc.delete_repository(DeleteRepositoryRequest::new(name.parse().unwrap()))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// What S3 itself says.

/// The objects under `staging/<uploadId>/` (ListObjectsV2, every page): key → size.
async fn staging_objects(svc: &Svc, upload_id: &str) -> BTreeMap<String, u64> {
    let b = svc.blobs();
    let prefix = format!("staging/{upload_id}/");
    let mut found = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let out = b
            .client()
            .list_objects_v2()
            .bucket(b.bucket())
            .prefix(&prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .expect("ListObjectsV2");
        for o in out.contents() {
            let key = o.key().expect("a listed key").to_owned();
            found.insert(key, o.size().unwrap_or(-1) as u64);
        }
        token = out.next_continuation_token().map(str::to_owned);
        if !out.is_truncated().unwrap_or(false) || token.is_none() {
            return found;
        }
    }
}

/// One part as ListParts reports it.
#[derive(Debug, PartialEq, Eq)]
struct S3Part {
    number: u32,
    etag: String,
    size: u64,
}

/// ListParts of the upload's multipart upload, every page; `Err(code)` if S3 refuses.
async fn s3_parts(svc: &Svc, up: &UploadRecord) -> Result<Vec<S3Part>, String> {
    let b = svc.blobs();
    let mut parts = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = b
            .client()
            .list_parts()
            .bucket(b.bucket())
            .key(&up.blob_key)
            .upload_id(&up.multipart_id)
            .set_part_number_marker(marker.take())
            .send()
            .await
            .map_err(|e| {
                e.as_service_error()
                    .and_then(|se| se.code())
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{e:?}"))
            })?;
        for p in out.parts() {
            parts.push(S3Part {
                number: p.part_number().expect("a part number") as u32,
                etag: p.e_tag().expect("an ETag").to_owned(),
                size: p.size().expect("a size") as u64,
            });
        }
        marker = out.next_part_number_marker().map(str::to_owned);
        if !out.is_truncated().unwrap_or(false) || marker.is_none() {
            return Ok(parts);
        }
    }
}

/// GetObject of `key`, streamed through sha256: (digest, size).
async fn s3_object_digest(svc: &Svc, key: &str) -> (String, u64) {
    let b = svc.blobs();
    let out = b
        .client()
        .get_object()
        .bucket(b.bucket())
        .key(key)
        .send()
        .await
        .expect("GetObject of the layer");
    let mut body = out.body;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.try_next().await.expect("reading the layer") {
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (format!("sha256:{}", hex::encode(hasher.finalize())), size)
}

/// HeadObject of part `number` of the completed object at `key`.
async fn head_part(svc: &Svc, key: &str, number: u32) -> HeadObjectOutput {
    let b = svc.blobs();
    b.client()
        .head_object()
        .bucket(b.bucket())
        .key(key)
        .part_number(number as i32)
        .send()
        .await
        .unwrap_or_else(|e| panic!("HeadObject partNumber={number} of {key}: {e:?}"))
}

/// The sizes of the parts the completed object at `key` was assembled from, in order.
/// HeadObject with `partNumber=1` answers the count (`x-amz-mp-parts-count`; a multipart ETag
/// ends in `-<count>` as well, and where both are given they must agree); HeadObject of each
/// part number answers that part's length.
async fn s3_completed_part_sizes(svc: &Svc, key: &str) -> Vec<u64> {
    let first = head_part(svc, key, 1).await;
    let etag = first
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned();
    let from_etag: Option<u32> = etag.rsplit_once('-').and_then(|(_, n)| n.parse().ok());
    let count = match (first.parts_count(), from_etag) {
        (Some(n), Some(m)) => {
            assert_eq!(n as u32, m, "parts count {n} and ETag {etag:?} disagree");
            m
        }
        (Some(n), None) => n as u32,
        (None, Some(m)) => m,
        (None, None) => panic!(
            "the layer object {key} reports neither a parts count nor a multipart ETag ({etag:?})"
        ),
    };
    let mut sizes = vec![first.content_length().expect("a part length") as u64];
    for number in 2..=count {
        let head = head_part(svc, key, number).await;
        sizes.push(head.content_length().expect("a part length") as u64);
    }
    sizes
}

/// The multipart parts the coalescing rule makes of ECR parts of `sizes` before completion:
/// after each part, while the staged bytes reach `s3_part_size`, the shortest prefix of staged
/// parts that reaches it becomes the next part. Returns the parts as (offset, len) and the
/// lengths still staged.
fn expected_flushes(sizes: &[u64], s3_part_size: u64) -> (Vec<(u64, u64)>, Vec<u64>) {
    let mut parts = Vec::new();
    let mut staged: Vec<u64> = Vec::new();
    let mut flushed = 0u64;
    for &len in sizes {
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

/// Before completion: the service's part records are what the coalescing rule predicts, S3's
/// ListParts agrees with them part for part (numbers, ETags, sizes), every part is at least
/// S3's 5 MiB, and the staging objects are exactly the staged segments. Returns the records.
async fn check_open_upload(svc: &Svc, id: &str, sizes: &[u64]) -> Vec<FlushedPart> {
    let s3_part_size = svc.settings().s3_part_size;
    let (want_parts, want_staged) = expected_flushes(sizes, s3_part_size);
    let up = upload_record(svc, id).await;
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

    let listed = s3_parts(svc, &up)
        .await
        .expect("ListParts of the open upload");
    let recorded: Vec<S3Part> = flushed
        .iter()
        .map(|p| S3Part {
            number: p.number,
            etag: p.etag.clone(),
            size: p.len,
        })
        .collect();
    assert_eq!(listed, recorded, "S3's parts are the recorded ones");
    for p in &listed {
        assert!(
            p.size >= S3_MIN_PART_SIZE,
            "S3 part {} has {} bytes, under 5 MiB",
            p.number,
            p.size
        );
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
    let objects = staging_objects(svc, id).await;
    let from_records: BTreeMap<String, u64> =
        segments.iter().map(|s| (s.key.clone(), s.len)).collect();
    assert_eq!(
        objects, from_records,
        "staging objects are exactly the staged segments (no orphans)"
    );
    flushed
}

/// After completion: the answer, the layer item, the object's bytes and part count, and nothing
/// left of the upload (staging objects, multipart upload, upload items).
async fn check_completed(
    svc: &Svc,
    name: &str,
    up: &UploadRecord,
    answer: &CompleteLayerUploadResponse,
    layer: &[u8],
    flushed_before: &[FlushedPart],
) {
    let want = digest(layer);
    assert_eq!(answer.layer_digest, want);
    assert_eq!(answer.upload_id, up.upload_id);
    assert_eq!(answer.repository_name, name);
    assert_eq!(answer.registry_id, REGISTRY);

    let record = svc
        .metadata()
        .get_layer(REGISTRY, name, &want)
        .await
        .unwrap()
        .expect("layer item recorded");
    assert_eq!(record.blob_key, up.blob_key);
    assert_eq!(record.size, layer.len() as u64);

    let (got, size) = s3_object_digest(svc, &up.blob_key).await;
    assert_eq!(size, layer.len() as u64);
    assert_eq!(got, want, "the stored object hashes to the layer's digest");

    // The object is assembled from the parts flushed before completion and, if bytes were
    // still staged, one last part of the tail: every part but the last is at least 5 MiB.
    let tail = up.next_byte - up.flushed_bytes;
    let mut want_sizes: Vec<u64> = flushed_before.iter().map(|p| p.len).collect();
    if tail > 0 {
        want_sizes.push(tail);
    }
    let sizes = s3_completed_part_sizes(svc, &up.blob_key).await;
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

    assert!(
        staging_objects(svc, &up.upload_id).await.is_empty(),
        "no staging objects remain after completion"
    );
    assert!(
        svc.metadata()
            .get_upload(&up.upload_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        svc.metadata()
            .list_segments(&up.upload_id, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        svc.metadata()
            .list_parts(&up.upload_id)
            .await
            .unwrap()
            .is_empty()
    );
    let res = s3_parts(svc, up).await;
    assert_eq!(
        res.as_ref().err().map(String::as_str),
        Some("NoSuchUpload"),
        "the completed multipart upload is no longer listable: {res:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. A 64 MiB layer in Lambda-sized parts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_sized_parts_coalesce_into_s3_parts_of_at_least_5_mib() {
    let settings = Settings {
        part_size: lambda_part_size(),
        min_part_size: MIB,
        ..Settings::default()
    };
    assert_eq!(settings.s3_part_size, 8 * MIB);
    let svc = service(settings).await;
    let name = repo_name("lambda-parts");
    repo(&svc, &name).await;

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
    let id = initiate(&svc, &name).await;
    send_parts(&svc, &name, &id, &layer, &sizes).await;

    let flushed = check_open_upload(&svc, &id, &sizes).await;
    assert!(
        flushed.len() >= 6,
        "64 MiB makes several 8 MiB parts: {}",
        flushed.len()
    );
    let up = upload_record(&svc, &id).await;

    let answer = complete(&svc, &name, &id, &[&digest(&layer)])
        .await
        .unwrap();
    check_completed(&svc, &name, &up, &answer, &layer, &flushed).await;
    cleanup(&svc, &name, &[up.blob_key]).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Tiny and odd-sized parts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_and_odd_parts_make_a_correct_layer_of_5_mib_parts() {
    let svc = service(small_parts()).await;
    let name = repo_name("odd-parts");
    repo(&svc, &name).await;

    let total = 11 * MIB + 4321;
    // Odd sizes throughout, and a run of 1 KiB parts across the first 5 MiB boundary, so that
    // a multipart part is assembled from a hundred-odd staging objects read back from S3.
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
    let id = initiate(&svc, &name).await;
    send_parts(&svc, &name, &id, &layer, &sizes).await;

    let flushed = check_open_upload(&svc, &id, &sizes).await;
    assert!(
        flushed.len() >= 2,
        "11 MiB flushes two 5 MiB parts: {}",
        flushed.len()
    );
    let up = upload_record(&svc, &id).await;
    assert!(
        up.next_byte > up.flushed_bytes,
        "a tail is left for completion"
    );

    let answer = complete(&svc, &name, &id, &[&digest(&layer)])
        .await
        .unwrap();
    check_completed(&svc, &name, &up, &answer, &layer, &flushed).await;
    cleanup(&svc, &name, &[up.blob_key]).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Abandoned uploads.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_are_absent_and_swept_with_their_bytes() {
    // Two services over the same adapters, differing only in the upload TTL: the parts go in
    // under a day's TTL, and the last one, under a TTL of one second, sets the expiry that the
    // upload then passes. (Every part pushes the expiry forward, so staging several parts under
    // a one-second TTL would race the clock.)
    let long = service(small_parts()).await;
    let short = Service::new(
        long.metadata().clone(),
        long.blobs().clone(),
        Settings {
            upload_ttl_secs: 1,
            ..small_parts()
        },
    );
    let name = repo_name("abandoned");
    repo(&long, &name).await;

    let layer = noise(6 * MIB as usize + 12_345, 3);
    let id = initiate(&long, &name).await;
    let m = MIB as usize;
    for i in 0..6 {
        part(
            &long,
            &name,
            &id,
            (i * m) as u64,
            &layer[i * m..(i + 1) * m],
        )
        .await
        .unwrap();
    }
    part(&short, &name, &id, 6 * MIB, &layer[6 * m..])
        .await
        .unwrap();

    // One 5 MiB multipart part and two staged segments (1 MiB and the 12,345-byte tail).
    let up = upload_record(&long, &id).await;
    let sizes = [MIB, MIB, MIB, MIB, MIB, MIB, 12_345];
    let flushed = check_open_upload(&long, &id, &sizes).await;
    assert_eq!(flushed.len(), 1);
    assert_eq!(staging_objects(&long, &id).await.len(), 2);

    // `live_upload` treats `expires_at <= now` as absent; the sweep takes `expires_at < now`.
    // Two seconds past the last write satisfies both.
    tokio::time::sleep(Duration::from_millis(2_100)).await;

    for svc in [&long, &short] {
        let err = part(svc, &name, &id, up.next_byte, b"late")
            .await
            .unwrap_err();
        assert_eq!(err.type_name(), "UploadNotFoundException", "{err}");
        let err = complete(svc, &name, &id, &[&digest(&layer)])
            .await
            .unwrap_err();
        assert_eq!(err.type_name(), "UploadNotFoundException", "{err}");
    }
    // Absent to the API, but still stored until swept (DynamoDB's TTL may lag by days).
    assert!(long.metadata().get_upload(&id).await.unwrap().is_some());

    // The table is shared: other expired uploads may be swept first. Sweep until ours is gone.
    for _ in 0..50 {
        let removed = long.sweep_expired(1000).await.unwrap();
        if long.metadata().get_upload(&id).await.unwrap().is_none() || removed == 0 {
            break;
        }
    }
    assert!(
        long.metadata().get_upload(&id).await.unwrap().is_none(),
        "the sweep removed the upload item"
    );
    assert!(
        long.metadata()
            .list_segments(&id, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(long.metadata().list_parts(&id).await.unwrap().is_empty());
    assert!(
        staging_objects(&long, &id).await.is_empty(),
        "the sweep removed the staging objects"
    );
    let res = s3_parts(&long, &up).await;
    assert_eq!(
        res.as_ref().err().map(String::as_str),
        Some("NoSuchUpload"),
        "the sweep aborted the multipart upload: {res:?}"
    );
    assert_eq!(long.blobs().object_size(&up.blob_key).await.unwrap(), None);
    assert!(
        long.metadata()
            .get_layer(REGISTRY, &name, &digest(&layer))
            .await
            .unwrap()
            .is_none()
    );
    cleanup(&long, &name, &[]).await;
}

/// The deployed counterpart of the sweep: the bucket's lifecycle rules in template.yaml abort
/// incomplete multipart uploads and expire the staging prefix the service writes under.
#[test]
fn template_lifecycle_rules_clean_up_abandoned_uploads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml");
    let text = std::fs::read_to_string(path).expect("template.yaml");
    let start = text
        .find("LifecycleConfiguration:")
        .expect("the bucket has a LifecycleConfiguration");
    let indent = |line: &str| line.len() - line.trim_start().len();
    // The block: the lines after the key that are indented deeper than it.
    let key_line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let key_indent = indent(&text[key_line_start..]);
    let block: Vec<&str> = text[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim().is_empty() || indent(l) > key_indent)
        .collect();
    // Its rules, one per `- ` item.
    let mut rules: Vec<String> = Vec::new();
    for line in &block {
        let t = line.trim();
        if t.starts_with("- ") {
            rules.push(String::new());
        }
        if let Some(r) = rules.last_mut() {
            r.push_str(t);
            r.push('\n');
        }
    }
    let enabled = |r: &&String| r.contains("Status: Enabled");
    assert!(
        rules
            .iter()
            .filter(enabled)
            .any(|r| r.contains("AbortIncompleteMultipartUpload:")
                && r.contains("DaysAfterInitiation:")),
        "an enabled rule aborts incomplete multipart uploads: {rules:#?}"
    );
    assert!(
        rules.iter().filter(enabled).any(|r| {
            r.lines().any(|l| {
                let l = l.trim_start_matches("- ");
                l == "Prefix: staging/" || l == "Prefix: \"staging/\"" || l == "Prefix: 'staging/'"
            }) && r.contains("ExpirationInDays:")
        }),
        "an enabled rule expires the staging/ prefix: {rules:#?}"
    );
    // That prefix is where the service stages bytes.
    assert!(staging_key("id", 0, &"0".repeat(64)).starts_with("staging/id/"));
}

// ---------------------------------------------------------------------------------------------
// 4. A same-offset race.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_parts_at_one_offset_have_exactly_one_winner() {
    let svc = Arc::new(service(small_parts()).await);
    let name = repo_name("race");
    repo(&svc, &name).await;
    let id = initiate(&svc, &name).await;

    const RACERS: u64 = 6;
    // Different bytes and lengths: a loser's answer names the winner's last byte.
    let bytes_of = |seed: u64| noise(1000 + 111 * seed as usize, 100 + seed);
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS as usize));
    let mut tasks = Vec::new();
    for seed in 0..RACERS {
        let (svc, name, id, barrier) = (svc.clone(), name.clone(), id.clone(), barrier.clone());
        let bytes = bytes_of(seed);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (seed, part(&svc, &name, &id, 0, &bytes).await)
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

    // Only the winner's bytes are staged: the losers removed their staging objects.
    let objects = staging_objects(&svc, &id).await;
    let winner_key = staging_key(&id, 0, &hex::encode(Sha256::digest(&layer)));
    assert_eq!(
        objects.into_iter().collect::<Vec<_>>(),
        [(winner_key, layer.len() as u64)]
    );
    // A loser's retry still loses; the winner's retry is answered as accepted.
    let (loser, _) = &losers[0];
    let err = part(&svc, &name, &id, 0, &bytes_of(*loser))
        .await
        .unwrap_err();
    assert_eq!(last_valid(&err), layer.len() as u64 - 1);
    let again = part(&svc, &name, &id, 0, &layer).await.unwrap();
    assert_eq!(again.last_byte_received, layer.len() as u64 - 1);

    let up = upload_record(&svc, &id).await;
    let answer = complete(&svc, &name, &id, &[&digest(&layer)])
        .await
        .unwrap();
    check_completed(&svc, &name, &up, &answer, &layer, &[]).await;
    cleanup(&svc, &name, &[up.blob_key]).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Images: a manifest too big for a DynamoDB item, and layer downloads straight from S3.

/// Pushes `data` as one layer; returns its digest and where S3 holds it.
async fn push_blob(svc: &Svc, name: &str, data: &[u8]) -> (String, String) {
    let id = initiate(svc, name).await;
    send_parts(svc, name, &id, data, &[data.len() as u64]).await;
    let d = digest(data);
    complete(svc, name, &id, &[&d]).await.unwrap();
    let layer = svc
        .metadata()
        .get_layer(REGISTRY, name, &d)
        .await
        .unwrap()
        .expect("the layer item");
    (d, layer.blob_key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_manifests_live_in_s3_and_layers_download_from_presigned_urls() {
    let svc = service(small_parts()).await;
    let name = repo_name("images");
    repo(&svc, &name).await;
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = noise(6 * MIB as usize + 333, 51);
    let (config_digest, config_key) = push_blob(&svc, &name, config).await;
    let (layer_digest, layer_key) = push_blob(&svc, &name, &layer).await;

    // Over the 256 KiB the service keeps in the image item.
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{}}}],"annotations":{{"pad":"{}"}}}}"#,
        config.len(),
        layer.len(),
        "p".repeat(300 * 1024)
    );
    let image_digest = digest(manifest.as_bytes());
    svc.put_image(PutImageRequest {
        image_tag: Some("big".parse().unwrap()),
        ..PutImageRequest::new(name.parse().unwrap(), manifest.clone())
    })
    .await
    .unwrap();
    let record = svc
        .metadata()
        .get_image(REGISTRY, &name, &image_digest)
        .await
        .unwrap()
        .expect("the image item");
    assert_eq!(record.manifest, None, "too big for the item");
    let manifest_key = record.manifest_key.clone().expect("kept in S3");
    assert_eq!(
        svc.blobs().object_size(&manifest_key).await.unwrap(),
        Some(manifest.len() as u64)
    );
    // The function role may write, read and delete there (template.yaml).
    let prefix = &manifest_key[..manifest_key.find('/').expect("a prefix") + 1];
    assert_role_grants_objects(prefix, &["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]);
    assert_role_grants_objects("layers/", &["s3:GetObject"]);
    assert!(layer_key.starts_with("layers/"), "{layer_key}");

    let got = svc
        .batch_get_image(BatchGetImageRequest::new(
            name.parse().unwrap(),
            vec![RequestedImage::new(ImageIdentifier {
                image_digest: None,
                image_tag: Some("big".into()),
            })],
        ))
        .await
        .unwrap();
    assert!(got.failures.is_empty());
    assert_eq!(got.images.len(), 1);
    assert!(
        got.images[0].image_manifest == manifest,
        "the manifest, byte for byte"
    );

    // The layer, by a URL any HTTP client can fetch without credentials.
    let url = svc
        .get_download_url_for_layer(GetDownloadUrlForLayerRequest::new(
            name.parse().unwrap(),
            layer_digest
                .parse::<ecr_layer_upload::domain::model::Digest>()
                .unwrap()
                .into(),
        ))
        .await
        .unwrap()
        .download_url;
    let (status, body) = common::http_get(&url).await;
    assert_eq!(status, 200);
    assert!(body == layer, "the whole layer");
    let range = format!("bytes={}-{}", 5 * MIB - 7, 5 * MIB + 7);
    let (status, _, body) = common::http_request(&url, &[("Range", &range)]).await;
    assert_eq!(status, 206);
    assert!(body == layer[5 * MIB as usize - 7..=5 * MIB as usize + 7]);

    let deleted = svc
        .batch_delete_image(BatchDeleteImageRequest::new(
            name.parse().unwrap(),
            vec![RequestedImage::new(ImageIdentifier {
                image_digest: Some(image_digest.clone()),
                image_tag: None,
            })],
        ))
        .await
        .unwrap();
    assert!(deleted.failures.is_empty());
    assert_eq!(
        svc.blobs().object_size(&manifest_key).await.unwrap(),
        None,
        "the manifest object goes with its image"
    );
    assert_eq!(
        svc.metadata()
            .get_tag(REGISTRY, &name, "big")
            .await
            .unwrap(),
        None
    );
    cleanup(&svc, &name, &[config_key, layer_key]).await;
}

/// The function role in template.yaml allows `actions` on objects under `prefix`.
fn assert_role_grants_objects(prefix: &str, actions: &[&str]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml");
    let text = std::fs::read_to_string(path).expect("template.yaml");
    let resource = format!("${{Bucket.Arn}}/{prefix}*");
    // Statements are the `- Sid:` items of the role's policy.
    let granted = text.split("- Sid: ").any(|statement| {
        statement.contains("Effect: Allow")
            && statement.contains(&resource)
            && actions
                .iter()
                .all(|a| statement.contains(&format!("- {a}\n")))
    });
    assert!(granted, "template.yaml grants {actions:?} on {resource}");
}

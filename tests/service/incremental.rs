//! Incremental verification (`ECR_VERIFY=incremental`, `src/service/incremental.rs`) on every
//! backend of the service suite (`tests/service/suite.rs` has the backends and the generator):
//! `incremental_behaviours!(service_suite::service_tests!(service_incremental, Backend))`.
//!
//! Each accepted part advances a SHA-256 state kept with the upload record; completion takes the
//! digest from it when it matches the upload exactly, and otherwise verifies by streaming the
//! assembled layer, as the default mode does. Each fallback is shown by a state that would
//! answer another digest than the bytes': the digest of the bytes completes the layer, the
//! state's is refused. On S3 the assembly is also checked against the CRC-64 of the accepted
//! bytes (`tests/aws/incremental.rs` shows S3 refusing a wrong one).

#![allow(dead_code, unused_macros, unused_imports)]

use bytes::Bytes;
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::domain::limits::S3_MIN_PART_SIZE;
use ecr_layer_upload::domain::model::Digest;
use ecr_layer_upload::frontdoors::lambda::part_size as lambda_part_size;
use ecr_layer_upload::ports::{
    BlobStore, MetadataStore, PartFingerprint, SideWrite, StagedSegment, UploadRecord,
};
use ecr_layer_upload::service::{RunningHash, Settings, VerifyMode, part_fingerprint, staging_key};
use futures_util::TryStreamExt;

use crate::common::service::{complete, create_repository as repo, initiate, part, small_parts};
use crate::common::{digest, noise};
use crate::service_suite::{Backend, Ctx, Svc};

const MIB: usize = 1024 * 1024;

/// Calls `$callback!($($args)* ; name, ...)` with every behaviour of this file.
macro_rules! incremental_behaviours {
    ($($callback:ident)::+ ! ($($args:tt)*)) => {
        $($callback)::+! {
            $($args)* ;
            incremental_right_digest_completes_and_wrong_one_is_refused,
            incremental_identical_resend_leaves_the_state_unchanged,
            incremental_lambda_sized_staged_parts_complete,
            incremental_replaced_part_falls_back_to_streaming,
            incremental_missing_state_falls_back_to_streaming,
            incremental_undecodable_state_falls_back_to_streaming,
            incremental_state_behind_the_upload_falls_back_to_streaming,
            incremental_upload_begun_in_stream_mode_is_streamed,
            incremental_v2_chunks_of_any_size_complete
        }
    };
}
pub(crate) use incremental_behaviours;

fn incremental(settings: Settings) -> Settings {
    Settings {
        verify: VerifyMode::Incremental,
        ..settings
    }
}

async fn open<F: Backend>(settings: Settings) -> (Ctx<F>, Svc<F>) {
    let ctx = Ctx::<F>::open().await;
    let svc = ctx.service(incremental(settings));
    repo(&svc, "app").await;
    (ctx, svc)
}

async fn read_all<F: Backend>(svc: &Svc<F>, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = svc.blobs().read_object(key, None).await.unwrap();
    while let Some(chunk) = s.try_next().await.unwrap() {
        out.extend_from_slice(&chunk);
    }
    out
}

async fn record<F: Backend>(svc: &Svc<F>, id: &str) -> UploadRecord {
    svc.metadata()
        .get_upload(id)
        .await
        .unwrap()
        .expect("upload")
}

/// Sends `layer` as parts of `size` bytes (the last one shorter).
async fn send<F: Backend>(svc: &Svc<F>, id: &str, layer: &[u8], size: usize) {
    let mut first = 0u64;
    for chunk in layer.chunks(size) {
        part(svc, "app", id, first, chunk)
            .await
            .unwrap_or_else(|e| panic!("part at {first}: {e}"));
        first += chunk.len() as u64;
    }
}

/// The digest the upload's recorded state gives, as completion would read it.
fn state_digest(up: &UploadRecord) -> String {
    let state = up.hash.as_ref().expect("a hash state");
    let running = RunningHash::decode(state).expect("a state this code wrote");
    assert_eq!(running.len(), up.next_byte, "the state covers the upload");
    Digest::sha256(&running.digest()).to_string()
}

/// Completion refuses `wrong` (the layer is not recorded under it), then records the layer
/// under `right` with exactly `bytes`.
async fn refuses_then_completes<F: Backend>(
    svc: &Svc<F>,
    id: &str,
    wrong: &str,
    right: &str,
    bytes: &[u8],
) {
    let registry = svc.settings().registry_id.clone();
    match complete(svc, "app", id, &[wrong]).await {
        Err(EcrError::InvalidLayer(_)) => {}
        other => panic!("a wrong digest must be refused as today: {other:?}"),
    }
    assert!(
        svc.metadata()
            .get_layer(&registry, "app", wrong)
            .await
            .unwrap()
            .is_none()
    );
    let done = complete(svc, "app", id, &[right])
        .await
        .expect("the digest of the bytes completes the upload");
    assert_eq!(done.layer_digest, right);
    let layer = svc
        .metadata()
        .get_layer(&registry, "app", right)
        .await
        .unwrap()
        .expect("layer recorded");
    assert_eq!(layer.size, bytes.len() as u64);
    assert_eq!(read_all::<F>(svc, &layer.blob_key).await, bytes);
}

/// Direct parts (6 MiB, written straight as multipart parts) and a short last one: the state
/// covers every byte and completion answers by it; a wrong digest is refused as in the default
/// mode, and the upload can then be completed with the right one.
pub async fn incremental_right_digest_completes_and_wrong_one_is_refused<F: Backend>() {
    let (_ctx, svc) = open::<F>(small_parts()).await;
    let id = initiate(&svc, "app").await;
    let layer = noise(2 * 6 * MIB + 12_345, 1);
    send::<F>(&svc, &id, &layer, 6 * MIB).await;
    let up = record::<F>(&svc, &id).await;
    assert!(up.part_checksums);
    assert_eq!(state_digest(&up), digest(&layer));
    let wrong = digest(b"other bytes");
    refuses_then_completes::<F>(&svc, &id, &wrong, &digest(&layer), &layer).await;
}

/// A byte-identical re-send of the last part (an SDK retry) is accepted once: the state does
/// not move, and the layer is right.
pub async fn incremental_identical_resend_leaves_the_state_unchanged<F: Backend>() {
    let (_ctx, svc) = open::<F>(small_parts()).await;
    let id = initiate(&svc, "app").await;
    let layer = noise(3 * MIB + 7, 2);
    let (a, b) = layer.split_at(2 * MIB);
    part(&svc, "app", &id, 0, a).await.unwrap();
    part(&svc, "app", &id, a.len() as u64, b).await.unwrap();
    let before = record::<F>(&svc, &id).await;
    let again = part(&svc, "app", &id, a.len() as u64, b).await.unwrap();
    assert_eq!(again.last_byte_received, layer.len() as u64 - 1);
    let after = record::<F>(&svc, &id).await;
    assert_eq!(after.hash, before.hash);
    assert_eq!(after.next_byte, before.next_byte);
    // A different part at that offset is still refused, and moves nothing either.
    let mut other = b.to_vec();
    other[0] ^= 1;
    assert!(
        part(&svc, "app", &id, a.len() as u64, &other)
            .await
            .is_err()
    );
    assert_eq!(record::<F>(&svc, &id).await.hash, before.hash);
    let d = digest(&layer);
    assert_eq!(state_digest(&after), d);
    refuses_then_completes::<F>(&svc, &id, &digest(&other), &d, &layer).await;
}

/// Lambda-sized parts (3,473,408 B) staged and coalesced into 8 MiB multipart parts (each
/// written with its CRC-64 on S3), the tail flushed at completion.
pub async fn incremental_lambda_sized_staged_parts_complete<F: Backend>() {
    let (_ctx, svc) = open::<F>(Settings {
        part_size: lambda_part_size(),
        min_part_size: ecr_layer_upload::frontdoors::lambda::MIN_PART_SIZE,
        ..Settings::default()
    })
    .await;
    let size = lambda_part_size() as usize;
    let id = initiate(&svc, "app").await;
    let layer = noise(5 * size + 999, 3);
    send::<F>(&svc, &id, &layer, size).await;
    let up = record::<F>(&svc, &id).await;
    assert!(up.parts_flushed >= 1, "staged parts were coalesced");
    assert_eq!(state_digest(&up), digest(&layer));
    refuses_then_completes::<F>(&svc, &id, &digest(&layer[1..]), &digest(&layer), &layer).await;
}

/// A part replaced by a writer that did not keep the state: the upload's last part at 1 MiB is
/// another one (other bytes, same length) than the part the state was advanced by. The state
/// says the old bytes' digest; completion must not believe it.
pub async fn incremental_replaced_part_falls_back_to_streaming<F: Backend>() {
    let (_ctx, svc) = open::<F>(small_parts()).await;
    let id = initiate(&svc, "app").await;
    let old = noise(2 * MIB, 4);
    send::<F>(&svc, &id, &old, MIB).await;
    let up = record::<F>(&svc, &id).await;
    assert_eq!(state_digest(&up), digest(&old));
    let segments = svc.metadata().list_segments(&id, MIB as u64).await.unwrap();
    assert_eq!(segments.len(), 1, "the second part is staged");

    // The replacement: its bytes in a staging object of their own, and the record naming it
    // as the last part, written as an older writer would, leaving the state as it was.
    let new_part = noise(MIB, 5);
    let key = staging_key(&id, MIB as u64).unwrap();
    svc.blobs()
        .put_object(&key, Bytes::from(new_part.clone()))
        .await
        .unwrap();
    let replaced = UploadRecord {
        version: up.version + 1,
        last_part: Some(PartFingerprint {
            first: MIB as u64,
            last: 2 * MIB as u64 - 1,
            checksum: part_fingerprint(&new_part),
        }),
        ..up.clone()
    };
    svc.metadata()
        .update_upload(
            &replaced,
            SideWrite::Segment(StagedSegment {
                offset: MIB as u64,
                len: MIB as u64,
                key,
            }),
        )
        .await
        .unwrap();
    let layer = [&old[..MIB], &new_part[..]].concat();
    refuses_then_completes::<F>(&svc, &id, &digest(&old), &digest(&layer), &layer).await;
}

/// No state in the record (a record written by a version that kept none): completion streams.
pub async fn incremental_missing_state_falls_back_to_streaming<F: Backend>() {
    let (_ctx, svc) = open::<F>(small_parts()).await;
    let id = initiate(&svc, "app").await;
    let layer = noise(6 * MIB + 100, 6);
    send::<F>(&svc, &id, &layer, 6 * MIB).await;
    let up = record::<F>(&svc, &id).await;
    let stripped = UploadRecord {
        version: up.version + 1,
        hash: None,
        ..up.clone()
    };
    svc.metadata()
        .update_upload(&stripped, SideWrite::None)
        .await
        .unwrap();
    // Parts after the loss keep no state either.
    let more = noise(MIB, 7);
    part(&svc, "app", &id, layer.len() as u64, &more)
        .await
        .unwrap();
    assert_eq!(record::<F>(&svc, &id).await.hash, None);
    let whole = [&layer[..], &more[..]].concat();
    refuses_then_completes::<F>(&svc, &id, &digest(&layer), &digest(&whole), &whole).await;
}

/// A state this code did not write (another encoding, a damaged record) that claims the upload's
/// length and last part: completion streams.
pub async fn incremental_undecodable_state_falls_back_to_streaming<F: Backend>() {
    let (_ctx, svc) = open::<F>(small_parts()).await;
    let id = initiate(&svc, "app").await;
    let layer = noise(MIB + 3, 12);
    send::<F>(&svc, &id, &layer, MIB).await;
    let up = record::<F>(&svc, &id).await;
    let mut state = up.hash.clone().expect("a state");
    state.sha256 = "not hex".into();
    let damaged = UploadRecord {
        version: up.version + 1,
        hash: Some(state),
        ..up.clone()
    };
    svc.metadata()
        .update_upload(&damaged, SideWrite::None)
        .await
        .unwrap();
    refuses_then_completes::<F>(&svc, &id, &digest(b"x"), &digest(&layer), &layer).await;
}

/// A state that covers fewer bytes than the upload holds (a part accepted by a writer that did
/// not advance it): completion streams, and later parts do not advance it either.
pub async fn incremental_state_behind_the_upload_falls_back_to_streaming<F: Backend>() {
    let (_ctx, svc) = open::<F>(small_parts()).await;
    let id = initiate(&svc, "app").await;
    let layer = noise(3 * MIB, 8);
    let (a, b) = layer.split_at(MIB);
    part(&svc, "app", &id, 0, a).await.unwrap();
    let after_a = record::<F>(&svc, &id).await;
    part(&svc, "app", &id, MIB as u64, b).await.unwrap();
    let up = record::<F>(&svc, &id).await;
    let behind = UploadRecord {
        version: up.version + 1,
        hash: after_a.hash.clone(),
        ..up.clone()
    };
    svc.metadata()
        .update_upload(&behind, SideWrite::None)
        .await
        .unwrap();
    let more = noise(1000, 9);
    part(&svc, "app", &id, layer.len() as u64, &more)
        .await
        .unwrap();
    assert_eq!(
        record::<F>(&svc, &id).await.hash,
        None,
        "not advanced when behind"
    );
    let whole = [&layer[..], &more[..]].concat();
    refuses_then_completes::<F>(&svc, &id, &digest(a), &digest(&whole), &whole).await;
}

/// An upload begun in the default mode, then continued and completed by a service in
/// incremental mode (a configuration change between requests): no state, streamed.
pub async fn incremental_upload_begun_in_stream_mode_is_streamed<F: Backend>() {
    let ctx = Ctx::<F>::open().await;
    let stream = ctx.service(small_parts());
    let svc = ctx.service(incremental(small_parts()));
    repo(&stream, "app").await;
    let id = initiate(&stream, "app").await;
    let layer = noise(7 * MIB, 10);
    let (a, b) = layer.split_at(6 * MIB);
    part(&stream, "app", &id, 0, a).await.unwrap();
    part(&svc, "app", &id, a.len() as u64, b).await.unwrap();
    let up = record::<F>(&svc, &id).await;
    assert_eq!(up.hash, None);
    assert!(!up.part_checksums);
    refuses_then_completes::<F>(&svc, &id, &digest(a), &digest(&layer), &layer).await;
}

/// The OCI API's path (`/v2/` PATCH chunks of any size, then `PUT ?digest=`), which goes
/// through the same upload and completion: chunks far under 5 MiB and odd ones.
pub async fn incremental_v2_chunks_of_any_size_complete<F: Backend>() {
    let (_ctx, svc) = open::<F>(small_parts()).await;
    let name = "app".parse().unwrap();
    let layer = noise(6 * MIB + 3, 11);
    for wrong_first in [true, false] {
        let id = initiate(&svc, "app").await;
        let mut first = 0usize;
        for len in [1000, 3 * MIB, 17, 2 * MIB] {
            part(&svc, "app", &id, first as u64, &layer[first..first + len])
                .await
                .unwrap();
            first += len;
        }
        part(&svc, "app", &id, first as u64, &layer[first..])
            .await
            .unwrap();
        assert_eq!(state_digest(&record::<F>(&svc, &id).await), digest(&layer));
        let upload_id = id.parse().unwrap();
        if wrong_first {
            let wrong = digest(&layer[..layer.len() - 1]).parse().unwrap();
            match svc.complete_blob_upload(&name, &upload_id, wrong).await {
                Err(EcrError::InvalidLayer(_)) => {}
                other => panic!("a wrong digest must be refused: {other:?}"),
            }
            continue;
        }
        let d = svc
            .complete_blob_upload(&name, &upload_id, digest(&layer).parse().unwrap())
            .await
            .unwrap();
        assert_eq!(d, digest(&layer));
        let blob = svc.blob(&name, &digest(&layer).parse().unwrap()).await;
        assert!(format!("{blob:?}").contains(&digest(&layer)));
    }
}

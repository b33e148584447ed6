//! `/v2/` chunks streamed into the embedded store as they arrive (src/service/stream.rs,
//! `BlobStore::upload_part_stream`): a `PATCH` in many small pieces or in one is written as one
//! part and recorded once; a chunk that does not start at the upload's end is refused (416);
//! of two writers racing on one upload, the later claim is recorded and the earlier writer gets a
//! retryable 500; a body cut mid-`PATCH` leaves the upload as it was before it, and a retry from
//! the offset the upload reports completes with the right digest; a wrong digest is refused
//! and ends the upload. In incremental mode the chunks advance the upload's SHA-256 state as
//! they stream, and a state that does not match its upload is dropped, not advanced.

use std::sync::Arc;

use bytes::Bytes;
use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata};
use ecr_layer_upload::ports::MetadataStore;
use ecr_layer_upload::protocols::oci::{self, BodyError, BodyStream, Delivery, Payload};
use ecr_layer_upload::service::{Service, Settings};
use futures_util::TryStreamExt;
use http::{Method, Request};
use tokio::sync::mpsc;

use crate::common::service::create_repository;
use crate::common::{digest, noise, temp_dir};

const MIB: usize = 1024 * 1024;
const NAME: &str = "oci/stream";

type Local = Service<LocalMetadata, LocalBlobs>;

/// The embedded service on a fresh directory, and its metadata store (a clone sharing it).
async fn service() -> (Arc<Local>, LocalMetadata, tempfile::TempDir) {
    let dir = temp_dir();
    let meta = LocalMetadata::open(dir.path()).unwrap();
    let blobs = LocalBlobs::open(dir.path())
        .unwrap()
        .with_min_part_size(5 * MIB as u64);
    let svc = Service::new(meta.clone(), blobs, Settings::default());
    create_repository(&svc, NAME).await;
    (Arc::new(svc), meta, dir)
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn code(&self) -> String {
        let doc: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        doc["errors"][0]["code"].as_str().unwrap().to_owned()
    }
}

async fn call(
    svc: &Local,
    method: Method,
    uri: &str,
    headers: &[(&str, String)],
    body: BodyStream,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = Box::pin(oci::handle(
        svc,
        None,
        Delivery::Serve,
        req.body(body).unwrap(),
    ))
    .await;
    let (parts, payload) = resp.into_parts();
    let body = match payload {
        Payload::Full(b) => b.to_vec(),
        Payload::Blob(stream) => {
            let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
            chunks.concat()
        }
    };
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// A body of `pieces`, which, as the local server's, must not be polled again once it has
/// ended.
fn strict(pieces: Vec<Result<Bytes, BodyError>>) -> BodyStream {
    Box::pin(futures_util::stream::unfold(
        pieces.into_iter(),
        |mut it| async move { it.next().map(|p| (p, it)) },
    ))
}

/// `data` in pieces of `piece` bytes.
fn pieces(data: &[u8], piece: usize) -> BodyStream {
    let data = Bytes::copy_from_slice(data);
    strict(
        (0..data.len())
            .step_by(piece)
            .map(|at| Ok(data.slice(at..(at + piece).min(data.len()))))
            .collect(),
    )
}

/// A body whose pieces are sent through the returned channel, as a connection delivers them;
/// it ends when the sender goes.
fn channel_body() -> (mpsc::Sender<Result<Bytes, BodyError>>, BodyStream) {
    let (tx, rx) = mpsc::channel(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let piece = rx.recv().await?;
        Some((piece, rx))
    });
    (tx, Box::pin(body))
}

fn empty() -> BodyStream {
    strict(Vec::new())
}

/// Starts an upload; its path.
async fn start(svc: &Local) -> String {
    let a = call(
        svc,
        Method::POST,
        &format!("/v2/{NAME}/blobs/uploads/"),
        &[],
        empty(),
    )
    .await;
    assert_eq!(a.status, 202);
    a.header("location").to_owned()
}

fn upload_id(location: &str) -> &str {
    location.rsplit('/').next().unwrap()
}

async fn patch(
    svc: &Local,
    location: &str,
    range: Option<(usize, usize)>,
    body: BodyStream,
) -> Answer {
    let headers: Vec<(&str, String)> = range
        .map(|(first, len)| ("content-range", format!("{first}-{}", first + len - 1)))
        .into_iter()
        .collect();
    call(svc, Method::PATCH, location, &headers, body).await
}

async fn finish(svc: &Local, location: &str, digest: &str) -> Answer {
    call(
        svc,
        Method::PUT,
        &format!("{location}?digest={digest}"),
        &[],
        empty(),
    )
    .await
}

/// The bytes the upload reports holding (its status's `Range`).
async fn held(svc: &Local, location: &str) -> String {
    let a = call(svc, Method::GET, location, &[], empty()).await;
    assert_eq!(a.status, 204);
    a.header("range").to_owned()
}

async fn blob(svc: &Local, digest: &str) -> Answer {
    call(
        svc,
        Method::GET,
        &format!("/v2/{NAME}/blobs/{digest}"),
        &[],
        empty(),
    )
    .await
}

/// Pushes `data` in one `PATCH` of pieces of `piece` bytes and completes it; checks that the
/// chunk was recorded as one part and that the blob reads back.
async fn push_streamed(piece: usize) {
    let (svc, meta, _dir) = service().await;
    let data = noise(21 * MIB + 13, piece as u64);
    let location = start(&svc).await;
    let a = patch(&svc, &location, None, pieces(&data, piece)).await;
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("range"), format!("0-{}", data.len() - 1));
    let parts = meta.list_parts(upload_id(&location)).await.unwrap();
    assert_eq!(parts.len(), 1, "one part for the chunk: {parts:?}");
    assert_eq!((parts[0].offset, parts[0].len), (0, data.len() as u64));

    let d = digest(&data);
    let a = finish(&svc, &location, &d).await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("docker-content-digest"), d);
    let got = blob(&svc, &d).await;
    assert_eq!(got.status, 200);
    assert!(got.body == data, "the blob reads back as pushed");
}

#[tokio::test]
async fn a_patch_in_many_small_pieces_is_written_as_one_part() {
    push_streamed(16 * 1024).await;
}

#[tokio::test]
async fn a_patch_in_one_piece_is_written_as_one_part() {
    push_streamed(64 * MIB).await;
}

#[tokio::test]
async fn chunks_stream_after_one_another_and_a_misplaced_chunk_is_refused() {
    let (svc, meta, _dir) = service().await;
    let data = noise(20 * MIB, 3);
    let location = start(&svc).await;
    let a = patch(
        &svc,
        &location,
        Some((0, 7 * MIB)),
        pieces(&data[..7 * MIB], MIB),
    )
    .await;
    assert_eq!(a.status, 202);
    assert_eq!(a.header("range"), format!("0-{}", 7 * MIB - 1));

    // Not at the upload's end: refused, with what the upload holds, and nothing written.
    for first in [0, 6 * MIB, 8 * MIB] {
        let a = patch(
            &svc,
            &location,
            Some((first, MIB)),
            pieces(&noise(MIB, 9), MIB),
        )
        .await;
        assert_eq!(a.status, 416, "a chunk at {first}");
        assert_eq!(a.code(), "BLOB_UPLOAD_INVALID");
        assert_eq!(a.header("range"), format!("0-{}", 7 * MIB - 1));
    }
    assert_eq!(held(&svc, &location).await, format!("0-{}", 7 * MIB - 1));

    let a = patch(
        &svc,
        &location,
        Some((7 * MIB, 13 * MIB)),
        pieces(&data[7 * MIB..], 100_000),
    )
    .await;
    assert_eq!(a.status, 202);
    let parts = meta.list_parts(upload_id(&location)).await.unwrap();
    let extents: Vec<(u64, u64)> = parts.iter().map(|p| (p.offset, p.len)).collect();
    assert_eq!(
        extents,
        [(0, 7 * MIB as u64), (7 * MIB as u64, 13 * MIB as u64)]
    );
    let d = digest(&data);
    assert_eq!(finish(&svc, &location, &d).await.status, 201);
    assert!(blob(&svc, &d).await.body == data);
}

#[tokio::test]
async fn a_chunk_after_staged_bytes_takes_the_part_path() {
    let (svc, _meta, _dir) = service().await;
    let data = noise(19 * MIB + 5, 4);
    let location = start(&svc).await;
    // Shorter than a direct part: staged.
    let a = patch(&svc, &location, None, pieces(&data[..MIB + 5], 4096)).await;
    assert_eq!(a.status, 202);
    // Bytes are staged before it: cut into parts as before, in whatever pieces it comes.
    let a = patch(&svc, &location, None, pieces(&data[MIB + 5..], 3 * MIB + 1)).await;
    assert_eq!(a.status, 202);
    assert_eq!(a.header("range"), format!("0-{}", data.len() - 1));
    let d = digest(&data);
    assert_eq!(finish(&svc, &location, &d).await.status, 201);
    assert!(blob(&svc, &d).await.body == data);
}

#[tokio::test]
async fn a_monolithic_post_streams_too() {
    let (svc, _meta, _dir) = service().await;
    let data = noise(9 * MIB + 1, 5);
    let d = digest(&data);
    let a = call(
        &svc,
        Method::POST,
        &format!("/v2/{NAME}/blobs/uploads/?digest={d}"),
        &[],
        pieces(&data, 200_000),
    )
    .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert!(blob(&svc, &d).await.body == data);
}

#[tokio::test]
async fn of_two_writers_racing_on_one_upload_the_later_one_is_recorded() {
    let (svc, _meta, _dir) = service().await;
    let location = start(&svc).await;
    let early = noise(12 * MIB, 6);
    let late = noise(10 * MIB, 7);

    // The early writer gets past the first direct part's worth and is writing when the late
    // writer comes (the eighth piece is taken once the seventh is, which the store reads after
    // the claim).
    let (tx, body) = channel_body();
    let task = {
        let (svc, location) = (Arc::clone(&svc), location.clone());
        tokio::spawn(async move { patch(&svc, &location, None, body).await })
    };
    let mut sent = 0;
    while sent < 8 * MIB {
        tx.send(Ok(Bytes::copy_from_slice(&early[sent..sent + MIB])))
            .await
            .unwrap();
        sent += MIB;
    }

    // Both saw an empty upload: the late writer claims a higher number and is recorded.
    let a = patch(&svc, &location, Some((0, late.len())), pieces(&late, MIB)).await;
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("range"), format!("0-{}", late.len() - 1));

    // The early writer's next bytes overlap the recorded part: refused, retryably.
    while sent < early.len() {
        if tx
            .send(Ok(Bytes::copy_from_slice(&early[sent..sent + MIB])))
            .await
            .is_err()
        {
            break;
        }
        sent += MIB;
    }
    drop(tx);
    let a = task.await.unwrap();
    assert_eq!(a.status, 500, "{}", String::from_utf8_lossy(&a.body));
    assert!(String::from_utf8_lossy(&a.body).contains("retry"));

    // The upload holds the late writer's bytes, intact.
    assert_eq!(held(&svc, &location).await, format!("0-{}", late.len() - 1));
    let d = digest(&late);
    assert_eq!(finish(&svc, &location, &d).await.status, 201);
    assert!(blob(&svc, &d).await.body == late);
}

#[tokio::test]
async fn a_writer_that_ends_first_but_claimed_first_is_not_recorded() {
    let (svc, _meta, _dir) = service().await;
    let location = start(&svc).await;
    let early = noise(8 * MIB, 8);
    let late = noise(11 * MIB, 9);

    let (tx, body) = channel_body();
    let task = {
        let (svc, location) = (Arc::clone(&svc), location.clone());
        tokio::spawn(async move { patch(&svc, &location, None, body).await })
    };
    // The eighth piece is taken once the seventh is, which the store reads after the claim.
    for at in (0..8 * MIB).step_by(MIB) {
        tx.send(Ok(Bytes::copy_from_slice(&early[at..at + MIB])))
            .await
            .unwrap();
    }
    // The late writer claims its number while the early one waits for its body's end, and
    // writes over the same bytes.
    let (late_tx, late_body) = channel_body();
    let late_task = {
        let (svc, location) = (Arc::clone(&svc), location.clone());
        tokio::spawn(async move { patch(&svc, &location, None, late_body).await })
    };
    for at in (0..late.len()).step_by(MIB) {
        late_tx
            .send(Ok(Bytes::copy_from_slice(&late[at..at + MIB])))
            .await
            .unwrap();
    }
    // The early writer ends first: its claim is no longer the last, so it is not recorded.
    drop(tx);
    let a = task.await.unwrap();
    assert_eq!(a.status, 500, "{}", String::from_utf8_lossy(&a.body));
    drop(late_tx);
    let a = late_task.await.unwrap();
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    let d = digest(&late);
    assert_eq!(finish(&svc, &location, &d).await.status, 201);
    assert!(blob(&svc, &d).await.body == late);
}

#[tokio::test]
async fn a_cut_patch_leaves_the_upload_as_it_was_and_a_retry_completes_it() {
    let (svc, meta, _dir) = service().await;
    cut_patch_then_retry(&svc, &meta).await;
}

/// As above, in incremental mode: the state the cut chunk's pieces advanced is not kept, and
/// the retry advances the one the upload held, to cover every byte.
#[tokio::test]
async fn a_cut_patch_leaves_the_hash_state_as_it_was() {
    let (svc, meta, _dir) = incremental_service().await;
    cut_patch_then_retry(&svc, &meta).await;
}

async fn cut_patch_then_retry(svc: &Local, meta: &LocalMetadata) {
    let data = noise(30 * MIB + 3, 10);
    let location = start(svc).await;
    let a = patch(svc, &location, None, pieces(&data[..8 * MIB], MIB)).await;
    assert_eq!(a.status, 202);

    // The connection goes after 12 MiB of the next chunk.
    let cut: Vec<Result<Bytes, BodyError>> = (8 * MIB..20 * MIB)
        .step_by(MIB)
        .map(|at| Ok(Bytes::copy_from_slice(&data[at..at + MIB])))
        .chain([Err(BodyError("connection reset by peer".into()))])
        .collect();
    let a = patch(
        svc,
        &location,
        Some((8 * MIB, data.len() - 8 * MIB)),
        strict(cut),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.code(), "BLOB_UPLOAD_INVALID");

    // Nothing of the cut chunk was recorded: the upload holds the first chunk.
    let reported = held(svc, &location).await;
    assert_eq!(reported, format!("0-{}", 8 * MIB - 1));
    let parts = meta.list_parts(upload_id(&location)).await.unwrap();
    assert_eq!(parts.len(), 1);

    // The retry resumes from the reported offset; bytes the cut chunk wrote past it are
    // overwritten.
    let from: usize = reported
        .split('-')
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        + 1;
    let a = patch(
        svc,
        &location,
        Some((from, data.len() - from)),
        pieces(&data[from..], 300_000),
    )
    .await;
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    if svc.settings().verify == ecr_layer_upload::service::VerifyMode::Incremental {
        let state = running(meta, upload_id(&location))
            .await
            .expect("the state is kept");
        assert_eq!(state.len(), data.len() as u64);
        assert_eq!(
            ecr_layer_upload::domain::model::Digest::sha256(&state.digest()).to_string(),
            digest(&data)
        );
    }
    let d = digest(&data);
    let a = finish(svc, &location, &d).await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert!(blob(svc, &d).await.body == data);
}

#[tokio::test]
async fn a_streamed_upload_with_the_wrong_digest_is_refused() {
    let (svc, _meta, _dir) = service().await;
    let data = noise(7 * MIB, 11);
    let location = start(&svc).await;
    let a = patch(&svc, &location, None, pieces(&data, MIB)).await;
    assert_eq!(a.status, 202);
    let wrong = digest(b"something else");
    let a = finish(&svc, &location, &wrong).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.code(), "DIGEST_INVALID");
    assert_eq!(blob(&svc, &wrong).await.status, 404);
    assert_eq!(blob(&svc, &digest(&data)).await.status, 404);
    // As CompleteLayerUpload with a wrong digest does, the refusal ends the upload.
    let a = finish(&svc, &location, &digest(&data)).await;
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    assert_eq!(blob(&svc, &digest(&data)).await.status, 404);
}

/// The embedded service in `ECR_VERIFY=incremental` mode on a fresh directory.
async fn incremental_service() -> (Arc<Local>, LocalMetadata, tempfile::TempDir) {
    let dir = temp_dir();
    let meta = LocalMetadata::open(dir.path()).unwrap();
    let blobs = LocalBlobs::open(dir.path())
        .unwrap()
        .with_min_part_size(5 * MIB as u64);
    let settings = Settings {
        verify: ecr_layer_upload::service::VerifyMode::Incremental,
        ..Settings::default()
    };
    let svc = Service::new(meta.clone(), blobs, settings);
    create_repository(&svc, NAME).await;
    (Arc::new(svc), meta, dir)
}

/// The hash state upload `id` keeps, decoded.
async fn running(meta: &LocalMetadata, id: &str) -> Option<ecr_layer_upload::service::RunningHash> {
    let up = meta.get_upload(id).await.unwrap().expect("the upload");
    up.hash
        .as_ref()
        .map(|state| ecr_layer_upload::service::RunningHash::decode(state).expect("decodes"))
}

/// With `ECR_VERIFY=incremental` an upload keeps a SHA-256 state that each part advances: a
/// streamed `/v2/` chunk advances it as its pieces arrive, chunk after chunk, so that the state
/// covers every byte (and completion needs no read-back) while each chunk is still written as
/// one part.
#[tokio::test]
async fn streamed_chunks_advance_an_uploads_hash_state() {
    let (svc, meta, _dir) = incremental_service().await;
    let data = noise(21 * MIB + 13, 7);
    let cut = 13 * MIB + 5;
    let location = start(&svc).await;
    let id = upload_id(&location).to_owned();
    let a = patch(&svc, &location, None, pieces(&data[..cut], 64 * 1024)).await;
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    let a = patch(
        &svc,
        &location,
        Some((cut, data.len() - cut)),
        pieces(&data[cut..], 1_000_003),
    )
    .await;
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    let parts = meta.list_parts(&id).await.unwrap();
    assert_eq!(parts.len(), 2, "one part per chunk, streamed: {parts:?}");
    let state = running(&meta, &id).await.expect("the state is kept");
    assert_eq!(
        state.len(),
        data.len() as u64,
        "the state covers every byte"
    );
    assert_eq!(
        ecr_layer_upload::domain::model::Digest::sha256(&state.digest()).to_string(),
        digest(&data),
        "and is the SHA-256 of the bytes pushed"
    );
    assert_eq!(
        state.crc64(),
        ecr_layer_upload::service::part_crc(&data),
        "and their CRC-64"
    );

    let wrong = digest(b"not these bytes");
    assert_eq!(
        finish(&svc, &location, &wrong).await.code(),
        "DIGEST_INVALID"
    );
    let location = start(&svc).await;
    let a = patch(&svc, &location, None, pieces(&data, 64 * 1024)).await;
    assert_eq!(a.status, 202);
    let d = digest(&data);
    let a = finish(&svc, &location, &d).await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let got = blob(&svc, &d).await;
    assert!(got.body == data, "the blob reads back as pushed");
}

/// A state that does not match its upload (here: one that claims other bytes) is not
/// advanced by a streamed chunk: the part drops it, and completion verifies by streaming the
/// stored bytes, so the right digest is still accepted and a wrong one refused.
#[tokio::test]
async fn a_streamed_chunk_drops_a_state_that_does_not_match_its_upload() {
    let (svc, meta, _dir) = incremental_service().await;
    let data = noise(9 * MIB + 1, 8);
    let location = start(&svc).await;
    let id = upload_id(&location).to_owned();
    let mut up = meta.get_upload(&id).await.unwrap().expect("the upload");
    let mut other = ecr_layer_upload::service::RunningHash::new();
    other.update(b"bytes the upload never took", 1, "elsewhere");
    up.hash = Some(other.encode());
    up.version += 1;
    meta.update_upload(&up, ecr_layer_upload::ports::SideWrite::None)
        .await
        .unwrap();

    let a = patch(&svc, &location, None, pieces(&data, MIB)).await;
    assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(meta.list_parts(&id).await.unwrap().len(), 1, "streamed");
    assert!(running(&meta, &id).await.is_none(), "the state is dropped");
    assert_eq!(
        finish(&svc, &location, &digest(b"wrong")).await.code(),
        "DIGEST_INVALID"
    );
    let location = start(&svc).await;
    let id = upload_id(&location).to_owned();
    let mut up = meta.get_upload(&id).await.unwrap().expect("the upload");
    up.hash = Some(other.encode());
    up.version += 1;
    meta.update_upload(&up, ecr_layer_upload::ports::SideWrite::None)
        .await
        .unwrap();
    assert_eq!(
        patch(&svc, &location, None, pieces(&data, MIB))
            .await
            .status,
        202
    );
    let a = finish(&svc, &location, &digest(&data)).await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
}

//! Early verification in the default mode (src/service/early.rs): on the embedded store, a
//! `/v2/` chunk streamed into the upload's file is read back from the file as it is written and
//! hashed, so that completion confirms the digest without reading the layer again; whenever that
//! hash does not cover exactly the recorded parts (a chunk that took UploadLayerPart's path, a
//! restart) or does not match the digest asked for, completion streams the assembled layer as
//! before, and a wrong digest is still refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata};
use ecr_layer_upload::ports::{BlobStore, ByteStream, FlushedPart, PartStream, StoreResult};
use ecr_layer_upload::protocols::oci::{self, BodyStream, Delivery, Payload};
use ecr_layer_upload::service::{Service, Settings};
use futures_util::{StreamExt, TryStreamExt};
use http::{Method, Request};

use crate::common::service::create_repository;
use crate::common::{digest, noise, temp_dir};

const MIB: usize = 1024 * 1024;
const NAME: &str = "oci/early";

/// A blob store that counts the bytes read from layer objects (completion's verification) and
/// from uploads before completion (the early read-back), forwarding every method.
struct Counting<B> {
    inner: B,
    layer_reads: Arc<AtomicU64>,
    written_reads: Arc<AtomicU64>,
}

impl<B: BlobStore> BlobStore for Counting<B> {
    async fn put_object(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.inner.put_object(key, data).await
    }
    async fn get_object(&self, key: &str) -> StoreResult<Bytes> {
        self.inner.get_object(key).await
    }
    async fn read_object(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        let stream = self.inner.read_object(key, range).await?;
        if !key.starts_with("layers/") {
            return Ok(stream);
        }
        let reads = Arc::clone(&self.layer_reads);
        Ok(Box::pin(stream.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                reads.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        })))
    }
    async fn object_size(&self, key: &str) -> StoreResult<Option<u64>> {
        self.inner.object_size(key).await
    }
    async fn delete_objects(&self, keys: &[String]) -> StoreResult<()> {
        self.inner.delete_objects(keys).await
    }
    async fn create_multipart(&self, key: &str) -> StoreResult<String> {
        self.inner.create_multipart(key).await
    }
    async fn upload_part(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        data: Bytes,
    ) -> StoreResult<String> {
        self.inner
            .upload_part(key, multipart_id, number, data)
            .await
    }
    async fn upload_part_at(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        offset: u64,
        data: Bytes,
    ) -> StoreResult<String> {
        self.inner
            .upload_part_at(key, multipart_id, number, offset, data)
            .await
    }
    fn reads_one_stream_fast(&self) -> bool {
        self.inner.reads_one_stream_fast()
    }
    fn streams_parts(&self) -> bool {
        self.inner.streams_parts()
    }
    async fn upload_part_stream(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        offset: u64,
        data: PartStream<'_>,
    ) -> StoreResult<(String, u64)> {
        self.inner
            .upload_part_stream(key, multipart_id, number, offset, data)
            .await
    }
    async fn read_written(
        &self,
        key: &str,
        multipart_id: &str,
        offset: u64,
        len: u64,
    ) -> StoreResult<Option<Bytes>> {
        let read = self
            .inner
            .read_written(key, multipart_id, offset, len)
            .await?;
        if let Some(bytes) = &read {
            self.written_reads
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
        }
        Ok(read)
    }
    async fn complete_multipart(
        &self,
        key: &str,
        multipart_id: &str,
        parts: &[FlushedPart],
    ) -> StoreResult<()> {
        self.inner
            .complete_multipart(key, multipart_id, parts)
            .await
    }
    async fn abort_multipart(&self, key: &str, multipart_id: &str) -> StoreResult<()> {
        self.inner.abort_multipart(key, multipart_id).await
    }
    async fn download_url(&self, key: &str, expires_in_secs: u64) -> StoreResult<String> {
        self.inner.download_url(key, expires_in_secs).await
    }
}

type Svc = Service<LocalMetadata, Counting<LocalBlobs>>;

struct Fixture {
    svc: Svc,
    layer_reads: Arc<AtomicU64>,
    written_reads: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = temp_dir();
    let meta = LocalMetadata::open(dir.path()).unwrap();
    let blobs = Counting {
        inner: LocalBlobs::open(dir.path())
            .unwrap()
            .with_min_part_size(5 * MIB as u64),
        layer_reads: Arc::default(),
        written_reads: Arc::default(),
    };
    let (layer_reads, written_reads) = (
        Arc::clone(&blobs.layer_reads),
        Arc::clone(&blobs.written_reads),
    );
    let svc = Service::new(meta, blobs, Settings::default());
    create_repository(&svc, NAME).await;
    Fixture {
        svc,
        layer_reads,
        written_reads,
        _dir: dir,
    }
}

impl Fixture {
    fn reads(&self) -> (u64, u64) {
        (
            self.written_reads.swap(0, Ordering::SeqCst),
            self.layer_reads.swap(0, Ordering::SeqCst),
        )
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        range: Option<(usize, usize)>,
        body: BodyStream,
    ) -> (u16, String, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some((first, len)) = range {
            req = req.header("content-range", format!("{first}-{}", first + len - 1));
        }
        let resp = Box::pin(oci::handle(
            &self.svc,
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
        let location = parts
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (parts.status.as_u16(), location, body)
    }

    async fn start(&self) -> String {
        let (status, location, _) = self
            .call(
                Method::POST,
                &format!("/v2/{NAME}/blobs/uploads/"),
                None,
                pieces(&[], 1),
            )
            .await;
        assert_eq!(status, 202);
        location
    }

    async fn patch(&self, location: &str, first: usize, data: &[u8], piece: usize) -> u16 {
        self.call(
            Method::PATCH,
            location,
            Some((first, data.len())),
            pieces(data, piece),
        )
        .await
        .0
    }

    async fn finish(&self, location: &str, digest: &str) -> (u16, Vec<u8>) {
        let (status, _, body) = self
            .call(
                Method::PUT,
                &format!("{location}?digest={digest}"),
                None,
                pieces(&[], 1),
            )
            .await;
        (status, body)
    }

    async fn blob(&self, digest: &str) -> Vec<u8> {
        let (status, _, body) = self
            .call(
                Method::GET,
                &format!("/v2/{NAME}/blobs/{digest}"),
                None,
                pieces(&[], 1),
            )
            .await;
        assert_eq!(status, 200);
        body
    }
}

/// `data` in pieces of `piece` bytes.
fn pieces(data: &[u8], piece: usize) -> BodyStream {
    let data = Bytes::copy_from_slice(data);
    let list: Vec<_> = (0..data.len())
        .step_by(piece)
        .map(|at| Ok(data.slice(at..(at + piece).min(data.len()))))
        .collect();
    Box::pin(futures_util::stream::iter(list))
}

#[tokio::test]
async fn a_streamed_layer_is_read_back_while_written_and_not_read_again_at_completion() {
    let f = fixture().await;
    let data = noise(23 * MIB + 7, 21);
    let cut = 9 * MIB + 1;
    let location = f.start().await;
    assert_eq!(f.patch(&location, 0, &data[..cut], 300_000).await, 202);
    assert_eq!(f.patch(&location, cut, &data[cut..], MIB).await, 202);
    let (early, _) = f.reads();
    assert_eq!(early, data.len() as u64, "every stored byte read back once");

    let d = digest(&data);
    let (status, body) = f.finish(&location, &d).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(f.reads(), (0, 0), "completion read nothing");
    assert!(f.blob(&d).await == data, "the blob reads back as pushed");
}

#[tokio::test]
async fn a_wrong_digest_is_still_refused_after_streaming_the_layer() {
    let f = fixture().await;
    let data = noise(8 * MIB, 22);
    let location = f.start().await;
    assert_eq!(f.patch(&location, 0, &data, MIB).await, 202);
    f.reads();
    let (status, body) = f.finish(&location, &digest(b"other bytes")).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("DIGEST_INVALID"));
    let (_, layer) = f.reads();
    assert_eq!(
        layer,
        data.len() as u64,
        "a digest the early hash does not confirm is checked against the stored layer"
    );
}

#[tokio::test]
async fn a_chunk_that_took_the_part_path_leaves_completion_to_stream() {
    let f = fixture().await;
    let data = noise(14 * MIB + 3, 23);
    let location = f.start().await;
    // A first chunk shorter than a part of its own (6 MiB) is staged; the next one then cannot
    // stream, so nothing is read back early.
    assert_eq!(f.patch(&location, 0, &data[..MIB], MIB).await, 202);
    assert_eq!(f.patch(&location, MIB, &data[MIB..], MIB).await, 202);
    assert_eq!(f.reads().0, 0);
    let d = digest(&data);
    let (status, body) = f.finish(&location, &d).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        f.reads().1,
        data.len() as u64,
        "completion streamed the layer"
    );

    // A service restarted between the chunks has no early hash for the upload: the second
    // chunk is not read back from where the first left off, and completion streams.
    let dir = temp_dir();
    let meta = LocalMetadata::open(dir.path()).unwrap();
    let counted = || Counting {
        inner: LocalBlobs::open(dir.path())
            .unwrap()
            .with_min_part_size(5 * MIB as u64),
        layer_reads: Arc::clone(&f.layer_reads),
        written_reads: Arc::clone(&f.written_reads),
    };
    let first = Service::new(meta.clone(), counted(), Settings::default());
    create_repository(&first, NAME).await;
    let g = Fixture {
        svc: first,
        layer_reads: Arc::clone(&f.layer_reads),
        written_reads: Arc::clone(&f.written_reads),
        _dir: temp_dir(),
    };
    let data = noise(16 * MIB, 24);
    let location = g.start().await;
    assert_eq!(g.patch(&location, 0, &data[..8 * MIB], MIB).await, 202);
    drop(g);
    let h = Fixture {
        svc: Service::new(meta, counted(), Settings::default()),
        layer_reads: Arc::clone(&f.layer_reads),
        written_reads: Arc::clone(&f.written_reads),
        _dir: dir,
    };
    f.reads();
    assert_eq!(
        h.patch(&location, 8 * MIB, &data[8 * MIB..], MIB).await,
        202
    );
    assert_eq!(f.reads().0, 0, "no hash to continue");
    let d = digest(&data);
    let (status, body) = h.finish(&location, &d).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        f.reads().1,
        data.len() as u64,
        "completion streamed the layer"
    );
    assert!(h.blob(&d).await == data);
}

//! CompleteLayerUpload cut and retried, and the answers that must not be wrong, as scenarios on
//! any backend: tests/unit/completion.rs runs them on the in-memory adapters, tests/aws/completion.rs
//! on S3 + DynamoDB. A [`Gated`] blob store holds `complete_multipart` so that a completion can be
//! caught halfway, met by another request, or dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::ports::{
    BlobStore, ByteStream, FlushedPart, MetadataStore, PartStream, StoreResult,
};
use ecr_layer_upload::service::Service;
use ecr_layer_upload::service::types::CompleteLayerUploadResponse;

use super::digest;
use super::service::{complete, initiate, part};

/// A blob store whose `complete_multipart`, while the gate is shut, waits until it is opened.
pub struct Gated<B> {
    inner: B,
    shut: AtomicBool,
    waiting: AtomicUsize,
    open: tokio::sync::Notify,
}

impl<B> Gated<B> {
    pub fn new(inner: B) -> Self {
        Gated {
            inner,
            shut: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            open: tokio::sync::Notify::new(),
        }
    }

    pub fn shut(&self) {
        self.shut.store(true, Ordering::SeqCst);
    }

    /// Lets every held and later completion through.
    pub fn open(&self) {
        self.shut.store(false, Ordering::SeqCst);
        self.open.notify_waiters();
    }

    /// Waits until `n` completions have reached the gate (at most 10 s).
    pub async fn reached(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.waiting.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "no completion reached the gate");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl<B: BlobStore> BlobStore for Gated<B> {
    async fn put_object(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.inner.put_object(key, data).await
    }
    async fn get_object(&self, key: &str) -> StoreResult<Bytes> {
        self.inner.get_object(key).await
    }
    async fn read_object(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        self.inner.read_object(key, range).await
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
    async fn complete_multipart(
        &self,
        key: &str,
        multipart_id: &str,
        parts: &[FlushedPart],
    ) -> StoreResult<()> {
        if self.shut.load(Ordering::SeqCst) {
            let opened = self.open.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            if self.shut.load(Ordering::SeqCst) {
                opened.await;
            }
        }
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

pub type GatedService<M, B> = Arc<Service<M, Gated<B>>>;

/// A layer of `len` bytes uploaded in one part, not completed: its upload id and digest.
async fn uploaded<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    repo: &str,
    len: usize,
    seed: u64,
) -> (String, String) {
    let layer = super::noise(len, seed);
    let id = initiate(svc, repo).await;
    part(svc, repo, &id, 0, &layer).await.unwrap();
    (id, digest(&layer))
}

fn assert_retryable(err: &EcrError, upload_id: &str) {
    assert_eq!(err.type_name(), "ServerException", "{err}");
    assert_eq!(err.status(), 500);
    assert_eq!(
        err.message(),
        format!(
            "The upload with id '{upload_id}' is being completed by another request; retry the request"
        )
    );
}

fn assert_completed(out: &CompleteLayerUploadResponse, id: &str, repo: &str, d: &str) {
    assert_eq!(out.upload_id, id);
    assert_eq!(out.repository_name, repo);
    assert_eq!(out.layer_digest, d);
}

/// A CompleteLayerUpload that meets another one at work gets a retryable ServerException, never
/// UploadNotFoundException; once the first has finished, the retry gets its success, and so
/// does any later retry with the same digest.
pub async fn complete_during_complete<M: MetadataStore, B: BlobStore>(
    svc: GatedService<M, B>,
    repo: &str,
) {
    let (id, d) = uploaded(&svc, repo, 3000, 1).await;
    svc.blobs().shut();
    let first = tokio::spawn({
        let (svc, repo, id, d) = (svc.clone(), repo.to_owned(), id.clone(), d.clone());
        async move { complete(&svc, &repo, &id, &[&d]).await }
    });
    svc.blobs().reached(1).await;
    let err = complete(&svc, repo, &id, &[&d]).await.unwrap_err();
    assert_retryable(&err, &id);
    // A part is not taken meanwhile either.
    assert!(part(&svc, repo, &id, 3000, b"more").await.is_err());
    svc.blobs().open();
    let out = first.await.unwrap().unwrap();
    assert_completed(&out, &id, repo, &d);
    for _ in 0..2 {
        let again = complete(&svc, repo, &id, &[&d]).await.unwrap();
        assert_completed(&again, &id, repo, &d);
    }
    // Upper-case hex is the same sha256 digest.
    let upper = format!("sha256:{}", d["sha256:".len()..].to_uppercase());
    assert_completed(
        &complete(&svc, repo, &id, &[&upper]).await.unwrap(),
        &id,
        repo,
        &d,
    );
    // Another digest is no retry of this completion.
    let other = digest(b"other");
    let err = complete(&svc, repo, &id, &[&other]).await.unwrap_err();
    assert_eq!(err.type_name(), "UploadNotFoundException");
}

/// A completion that takes longer than the lease keeps it by its heartbeat: a CompleteLayerUpload
/// sent after the lease time is still answered retryably, not handed the upload, and the first
/// completion ends with success.
pub async fn a_long_completion_keeps_its_lease<M: MetadataStore, B: BlobStore>(
    svc: GatedService<M, B>,
    repo: &str,
) {
    use ecr_layer_upload::service::COMPLETING_LEASE_MS;
    let (id, d) = uploaded(&svc, repo, 3000, 5).await;
    svc.blobs().shut();
    let first = tokio::spawn({
        let (svc, repo, id, d) = (svc.clone(), repo.to_owned(), id.clone(), d.clone());
        async move { complete(&svc, &repo, &id, &[&d]).await }
    });
    svc.blobs().reached(1).await;
    tokio::time::sleep(Duration::from_millis(COMPLETING_LEASE_MS + 2000)).await;
    // A request that took the upload over would wait at the gate too.
    let second = tokio::time::timeout(Duration::from_secs(5), complete(&svc, repo, &id, &[&d]))
        .await
        .expect("the live completion was taken over");
    assert_retryable(&second.unwrap_err(), &id);
    assert_eq!(
        svc.blobs().waiting.load(Ordering::SeqCst),
        1,
        "nobody took the live completion over"
    );
    svc.blobs().open();
    let out = first.await.unwrap().unwrap();
    assert_completed(&out, &id, repo, &d);
    let again = complete(&svc, repo, &id, &[&d]).await.unwrap();
    assert_completed(&again, &id, repo, &d);
}

/// A completion dropped halfway (its request future cancelled, as a stopped Lambda or a cut
/// connection without a detached task would) leaves a lease that runs out: retries get a
/// retryable error, then one takes the completion over and succeeds within 30 s.
pub async fn dropped_completion_is_taken_over<M: MetadataStore, B: BlobStore>(
    svc: GatedService<M, B>,
    repo: &str,
) {
    let (id, d) = uploaded(&svc, repo, 5000, 2).await;
    svc.blobs().shut();
    let first = tokio::spawn({
        let (svc, repo, id, d) = (svc.clone(), repo.to_owned(), id.clone(), d.clone());
        async move { complete(&svc, &repo, &id, &[&d]).await }
    });
    svc.blobs().reached(1).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    svc.blobs().open();
    let started = Instant::now();
    let mut retryable = 0;
    let out = loop {
        match complete(&svc, repo, &id, &[&d]).await {
            Ok(out) => break out,
            Err(err) => {
                assert_retryable(&err, &id);
                retryable += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the completion was not taken over within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_completed(&out, &id, repo, &d);
    assert!(retryable > 0, "the dead completion's lease was honoured");
    let again = complete(&svc, repo, &id, &[&d]).await.unwrap();
    assert_completed(&again, &id, repo, &d);
}

/// A wrong digest leaves the upload for a retry with the right one, as a resumed client needs;
/// the assembled upload takes no more parts meanwhile, but a re-sent last part is still fine.
pub async fn wrong_digest_leaves_the_upload_open<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    repo: &str,
) {
    let layer = super::noise(4000, 3);
    let id = initiate(svc, repo).await;
    part(svc, repo, &id, 0, &layer).await.unwrap();
    let wrong = digest(b"not the layer");
    for _ in 0..2 {
        let err = complete(svc, repo, &id, &[&wrong]).await.unwrap_err();
        assert_eq!(err.type_name(), "InvalidLayerException", "{err}");
    }
    part(svc, repo, &id, 0, &layer).await.unwrap();
    let err = part(svc, repo, &id, 4000, b"more").await.unwrap_err();
    assert_eq!(err.type_name(), "InvalidLayerPartException", "{err}");
    let d = digest(&layer);
    let out = complete(svc, repo, &id, &[&d]).await.unwrap();
    assert_completed(&out, &id, repo, &d);
}

/// `SHA256:<hex>` is another algorithm than `sha256`: a digest list without an exact `sha256`
/// one cannot be verified and is refused (InvalidParameterException), leaving the upload as it
/// was; with the right digest it then completes.
pub async fn digest_algorithm_is_matched_exactly<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    repo: &str,
) {
    let layer = super::noise(2000, 4);
    let id = initiate(svc, repo).await;
    part(svc, repo, &id, 0, &layer).await.unwrap();
    let d = digest(&layer);
    let hex = &d["sha256:".len()..];
    for digests in [
        vec![format!("SHA256:{hex}")],
        vec![format!("SHA256:{}", hex.to_uppercase())],
        vec![format!("Sha256:{hex}"), "sha512:abcd".to_owned()],
    ] {
        let digests: Vec<&str> = digests.iter().map(String::as_str).collect();
        let err = complete(svc, repo, &id, &digests).await.unwrap_err();
        assert_eq!(err.type_name(), "InvalidParameterException", "{digests:?}");
        assert_eq!(
            err.message(),
            "Invalid parameter at 'layerDigests' failed to satisfy constraint: 'must include a digest of algorithm sha256 (lower case), the one the registry verifies'"
        );
    }
    let out = complete(svc, repo, &id, &[&format!("SHA256:{hex}"), &d])
        .await
        .unwrap();
    assert_completed(&out, &id, repo, &d);
}

/// A part that does not continue the upload is InvalidLayerPartException wherever it starts,
/// even past the layer size limit (LimitExceededException is a throttling code SDKs retry).
pub async fn contiguity_is_checked_before_the_size_limit<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    repo: &str,
) {
    let id = initiate(svc, repo).await;
    part(svc, repo, &id, 0, b"abc").await.unwrap();
    for first in [1u64 << 62, (1u64 << 62) + 3, u64::MAX / 2] {
        let err = part(svc, repo, &id, first, b"xyz").await.unwrap_err();
        assert_eq!(err.type_name(), "InvalidLayerPartException", "{first}");
        assert_eq!(
            err.message(),
            format!("First byte of the layer part is {first} instead of 3")
        );
        assert_eq!(super::service::last_valid(&err), 2);
    }
}

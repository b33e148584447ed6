//! Scenarios of a repository's and an upload's life on any backend, run by tests/unit/lifecycle.rs
//! (in-memory and embedded) and tests/aws/lifecycle.rs (S3 + DynamoDB): a repository deleted and
//! created again under the same name shares nothing with the old one, also when the deletion
//! races a CompleteLayerUpload; and no upload outlives its age cap, by a manual clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use ecr_layer_upload::domain::clock::ManualClock;
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::domain::model::{LayerAvailability, Sent};
use ecr_layer_upload::ports::{
    BlobStore, ByteStream, FlushedPart, MetadataStore, PartStream, StoreResult,
};
use ecr_layer_upload::service::types::*;
use ecr_layer_upload::service::{Service, Settings, staging_key};
use futures_util::TryStreamExt;
use sha2::Digest;
use tokio::sync::Notify;

use super::service::{complete, create_repository, initiate, part, push_blob};
use super::{REGISTRY, digest, noise};

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A [`BlobStore`] that holds the first read of an assembled layer (`layers/...`) once its bytes
/// are read, until the test lets it go: CompleteLayerUpload is then between its verification and
/// recording the layer.
#[derive(Clone)]
pub struct GatedBlobs<B> {
    inner: B,
    gate: Arc<Gate>,
}

#[derive(Default)]
pub struct Gate {
    armed: AtomicBool,
    reached: Notify,
    go: Notify,
}

impl Gate {
    /// Waits until a completion is held at the gate.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held completion go on.
    pub fn open(&self) {
        self.go.notify_one();
    }
}

impl<B: BlobStore> GatedBlobs<B> {
    pub fn new(inner: B) -> Self {
        let gate = Gate::default();
        gate.armed.store(true, Ordering::SeqCst);
        GatedBlobs {
            inner,
            gate: Arc::new(gate),
        }
    }

    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }
}

impl<B: BlobStore> BlobStore for GatedBlobs<B> {
    async fn put_object(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.inner.put_object(key, data).await
    }
    async fn get_object(&self, key: &str) -> StoreResult<Bytes> {
        self.inner.get_object(key).await
    }
    async fn read_object(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        let stream = self.inner.read_object(key, range).await?;
        if !key.starts_with("layers/") || !self.gate.armed.swap(false, Ordering::SeqCst) {
            return Ok(stream);
        }
        // The whole object first, so that whatever happens to it meanwhile the completion reads
        // what it assembled.
        let chunks: Vec<Bytes> = stream.try_collect().await?;
        self.gate.reached.notify_one();
        self.gate.go.notified().await;
        Ok(Box::pin(futures_util::stream::iter(
            chunks.into_iter().map(Ok),
        )))
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

async fn delete<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &str,
) -> Result<DeleteRepositoryResponse, EcrError> {
    svc.delete_repository(DeleteRepositoryRequest {
        force: true,
        ..DeleteRepositoryRequest::new(name.parse().unwrap())
    })
    .await
}

fn assert_upload_not_found<T: std::fmt::Debug>(res: Result<T, EcrError>, what: &str) {
    match res {
        Err(e) => assert_eq!(e.type_name(), "UploadNotFoundException", "{what}: {e}"),
        Ok(v) => panic!("{what}: expected UploadNotFoundException, got {v:?}"),
    }
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#)
}

/// Everything of a repository deleted and created again is gone: its layers, images and tags,
/// and its uploads, which answer UploadNotFoundException to parts and completion, with their
/// records and staged bytes removed.
pub async fn recreated_repository_shares_nothing<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &str,
) {
    create_repository(svc, name).await;
    // A layer, a config and an image tagged over them.
    let layer = noise(3000, 11);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer_digest = push_blob(svc, name, &layer).await;
    let config_digest = push_blob(svc, name, config).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        descriptor(CONFIG_TYPE, &config_digest, config.len()),
        descriptor(LAYER_TYPE, &layer_digest, layer.len()),
    );
    svc.put_image(PutImageRequest {
        image_tag: Some("v1".parse().unwrap()),
        ..PutImageRequest::new(name.parse().unwrap(), manifest.clone())
    })
    .await
    .unwrap();
    // An upload with a part staged.
    let open = initiate(svc, name).await;
    let staged = noise(1000, 12);
    part(svc, name, &open, 0, &staged).await.unwrap();
    let up = svc.metadata().get_upload(&open).await.unwrap().unwrap();
    let segments = svc.metadata().list_segments(&open, 0).await.unwrap();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let staged_key = segments[0].key.clone();
    assert!(
        staged_key.starts_with(&format!("staging/{open}/")),
        "{staged_key}"
    );
    assert!(
        svc.blobs()
            .object_size(&staged_key)
            .await
            .unwrap()
            .is_some()
    );
    let first = svc
        .metadata()
        .get_repository(REGISTRY, name)
        .await
        .unwrap()
        .unwrap();

    delete(svc, name).await.unwrap();
    // Its upload went with it.
    assert_eq!(svc.metadata().get_upload(&open).await.unwrap(), None);
    assert!(
        svc.metadata()
            .list_segments(&open, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        svc.blobs().object_size(&staged_key).await.unwrap(),
        None,
        "the staged bytes were removed"
    );
    assert!(
        svc.blobs()
            .upload_part(&up.blob_key, &up.multipart_id, 1, Bytes::from_static(b"x"))
            .await
            .is_err(),
        "the multipart upload was aborted"
    );

    create_repository(svc, name).await;
    let second = svc
        .metadata()
        .get_repository(REGISTRY, name)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(second.incarnation, first.incarnation);
    let more = noise(500, 13);
    assert_upload_not_found(
        part(svc, name, &open, 1000, &more).await,
        "a part of the old upload",
    );
    assert_upload_not_found(
        part(svc, name, &open, 0, &staged).await,
        "the old upload's first part again",
    );
    assert_upload_not_found(
        complete(svc, name, &open, &[&digest(&staged)]).await,
        "completing the old upload",
    );
    let m = svc.metadata();
    for d in [&layer_digest, &config_digest] {
        assert_eq!(m.get_layer(REGISTRY, name, d).await.unwrap(), None);
    }
    assert!(m.list_images(REGISTRY, name).await.unwrap().is_empty());
    assert!(m.list_tags(REGISTRY, name).await.unwrap().is_empty());
    assert!(
        m.repository_uploads(REGISTRY, name)
            .await
            .unwrap()
            .is_empty()
    );

    // The new repository works as any: the same layer can be pushed into it.
    assert_eq!(push_blob(svc, name, &layer).await, layer_digest);
    delete(svc, name).await.unwrap();
}

/// An upload whose record outlived its repository's deletion (an InitiateLayerUpload racing
/// DeleteRepository writes it after the deletion's cleanup) is of the old incarnation: once the
/// repository is created again, it accepts no part and completes nothing.
pub async fn an_upload_of_a_deleted_incarnation_is_not_live<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &str,
) {
    create_repository(svc, name).await;
    let id = initiate(svc, name).await;
    let bytes = noise(2000, 14);
    part(svc, name, &id, 0, &bytes[..1000]).await.unwrap();
    // The repository's records go, but not the upload's (as if it were written after the
    // deletion listed the repository's uploads).
    assert!(
        svc.metadata()
            .delete_repository(REGISTRY, name)
            .await
            .unwrap()
    );
    assert_eq!(
        part(svc, name, &id, 1000, &bytes[1000..])
            .await
            .unwrap_err()
            .type_name(),
        "RepositoryNotFoundException"
    );
    create_repository(svc, name).await;
    assert_upload_not_found(
        part(svc, name, &id, 1000, &bytes[1000..]).await,
        "a part after the re-creation",
    );
    assert_upload_not_found(
        complete(svc, name, &id, &[&digest(&bytes[..1000])]).await,
        "a completion after the re-creation",
    );
    assert_eq!(
        svc.metadata()
            .get_layer(REGISTRY, name, &digest(&bytes[..1000]))
            .await
            .unwrap(),
        None
    );
    delete(svc, name).await.unwrap();
    assert_eq!(svc.metadata().get_upload(&id).await.unwrap(), None);
}

/// DeleteRepository (and CreateRepository of the same name) while CompleteLayerUpload has
/// verified the layer but not yet recorded it: the completion answers UploadNotFoundException
/// and the new repository holds no layer.
pub async fn complete_racing_delete_records_nothing<M: MetadataStore, B: BlobStore>(
    meta: M,
    blobs: B,
    settings: Settings,
    name: &str,
) {
    let blobs = GatedBlobs::new(blobs);
    let gate = blobs.gate();
    let svc = Arc::new(Service::new(meta, blobs, settings));
    create_repository(&*svc, name).await;
    let bytes = noise(4000, 15);
    let layer_digest = digest(&bytes);
    let id = initiate(&*svc, name).await;
    part(&*svc, name, &id, 0, &bytes).await.unwrap();

    let completing = {
        let (svc, name, id, d) = (
            svc.clone(),
            name.to_owned(),
            id.clone(),
            layer_digest.clone(),
        );
        tokio::spawn(async move { complete(&*svc, &name, &id, &[&d]).await })
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), gate.reached())
        .await
        .expect("the completion reached the gate");
    delete(&svc, name).await.unwrap();
    create_repository(&*svc, name).await;
    gate.open();
    assert_upload_not_found(completing.await.unwrap(), "the completion that raced");

    let m = svc.metadata();
    assert_eq!(
        m.get_layer(REGISTRY, name, &layer_digest).await.unwrap(),
        None,
        "no layer in the new repository"
    );
    let out = svc
        .batch_check_layer_availability(BatchCheckLayerAvailabilityRequest::new(
            name.parse().unwrap(),
            vec![Sent {
                text: layer_digest.clone(),
                value: Ok(layer_digest.parse().unwrap()),
            }],
        ))
        .await
        .unwrap();
    assert!(
        out.layers
            .iter()
            .all(|l| l.layer_availability != LayerAvailability::Available),
        "{out:?}"
    );
    assert_eq!(m.get_upload(&id).await.unwrap(), None);
    // The same layer pushed into the new repository is recorded there.
    assert_eq!(push_blob(&*svc, name, &bytes).await, layer_digest);
    delete(&svc, name).await.unwrap();
}

/// Settings of the age scenario: a ten-minute idle TTL and a one-hour age cap.
pub fn age_settings() -> Settings {
    Settings {
        upload_ttl_secs: 600,
        max_upload_age_secs: 3600,
        ..super::service::small_parts()
    }
}

/// With parts every 500 s, an upload never idles past its TTL; it still ends at its age cap:
/// parts and completion answer UploadNotFoundException from then on, and its stored expiry
/// (DynamoDB's TTL, the sweep's index) never passed the cap by more than a completion's lease.
/// An upload completed before the cap keeps every byte. Returns the capped upload's id, still
/// stored (to sweep, where the caller may).
pub async fn uploads_end_at_their_age_cap<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    clock: &ManualClock,
    name: &str,
) -> String {
    let settings = svc.settings().clone();
    assert_eq!(
        (settings.upload_ttl_secs, settings.max_upload_age_secs),
        (600, 3600)
    );
    create_repository(svc, name).await;
    let capped = initiate(svc, name).await;
    let kept = initiate(svc, name).await;
    let created = svc
        .metadata()
        .get_upload(&capped)
        .await
        .unwrap()
        .unwrap()
        .created_at_ms;
    let chunk = 1000usize;
    let layer = noise(chunk * 8, 16);
    let mut at = 0usize;
    // Parts at 0, 500, ..., 3500 s: eight parts, each within the TTL of the one before.
    for step in 0..8 {
        if step > 0 {
            clock.advance_secs(500);
        }
        for id in [&capped, &kept] {
            part(svc, name, id, at as u64, &layer[at..at + chunk])
                .await
                .unwrap_or_else(|e| panic!("part {step} at {}s: {e}", step * 500));
            let up = svc.metadata().get_upload(id).await.unwrap().unwrap();
            assert!(
                up.expires_at <= up.created_at_ms / 1000 + 3600 + 16 * 60,
                "the stored expiry {} passes the cap of an upload created at {}",
                up.expires_at,
                up.created_at_ms / 1000
            );
        }
        at += chunk;
    }
    // 3500 s old: the kept upload completes with every acknowledged byte.
    complete(svc, name, &kept, &[&digest(&layer)])
        .await
        .unwrap();
    assert!(
        svc.metadata()
            .get_layer(REGISTRY, name, &digest(&layer))
            .await
            .unwrap()
            .is_some()
    );
    // 3600 s old: gone, though its last part came 100 s ago.
    clock.set_ms(created + 3600 * 1000);
    assert_upload_not_found(
        part(svc, name, &capped, at as u64, b"late").await,
        "a part at the cap",
    );
    assert_upload_not_found(
        complete(svc, name, &capped, &[&digest(&layer)]).await,
        "a completion at the cap",
    );
    let up = svc.metadata().get_upload(&capped).await.unwrap().unwrap();
    // Past its stored expiry, the sweep takes it.
    clock.set_ms((up.expires_at + 1) * 1000);
    let listed = svc
        .metadata()
        .expired_uploads(up.expires_at + 1, 100_000)
        .await
        .unwrap();
    assert!(listed.iter().any(|u| u.upload_id == capped));
    capped
}

//! PutImage and DeleteRepository on any backend, run by tests/unit/image_race.rs (in-memory and
//! embedded) and tests/aws/image_race.rs (S3 + DynamoDB): an image is written only on condition
//! that its repository is still the incarnation PutImage read, so one that races the deletion
//! (and the creation of a new repository of the same name) leaves nothing in the new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::domain::model::{EncryptionType, ManifestMediaType, TagMutability};
use ecr_layer_upload::ports::{
    BlobStore, ByteStream, FlushedPart, ImageRecord, MetadataStore, PartStream, PutImageOutcome,
    RepositoryRecord, StoreResult,
};
use ecr_layer_upload::service::types::*;
use ecr_layer_upload::service::{INLINE_MANIFEST_MAX, Service, Settings};
use tokio::sync::Notify;

use super::service::{create_repository, push_blob};
use super::{REGISTRY, digest, noise, unique};

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

// ---------------------------------------------------------------------------------------------
// The port: `put_image_in`.

fn repository(name: &str, incarnation: &str) -> RepositoryRecord {
    RepositoryRecord {
        registry_id: REGISTRY.into(),
        name: name.into(),
        created_at_ms: 1,
        image_tag_mutability: TagMutability::Mutable,
        scan_on_push: false,
        encryption_type: EncryptionType::Aes256,
        kms_key: None,
        incarnation: incarnation.into(),
    }
}

fn image(name: &str, seed: &str) -> ImageRecord {
    let manifest = format!(r#"{{"schemaVersion":2,"note":"{seed}"}}"#);
    ImageRecord {
        registry_id: REGISTRY.into(),
        repository: name.into(),
        digest: digest(manifest.as_bytes()),
        manifest: Some(manifest),
        manifest_key: None,
        media_type: ManifestMediaType::OciManifest,
        artifact_media_type: None,
        size: 0,
        pushed_at_ms: 1,
        blobs: vec![],
        manifests: vec![],
        subject: None,
    }
}

/// `put_image_in` writes in the incarnation it names and nowhere else: not in a deleted
/// repository, not in one created again under the same name, tagged or not; the original
/// incarnation (`""`) is matched exactly too.
pub async fn put_image_in_writes_only_in_its_incarnation<M: MetadataStore>(m: &M) {
    let name = unique("race/port");
    let old = unique("inc");
    m.create_repository(&repository(&name, &old)).await.unwrap();
    let a = image(&name, &unique("a"));
    assert_eq!(
        m.put_image_in(&old, &a, Some("v1"), false).await.unwrap(),
        PutImageOutcome::Stored
    );
    // Another incarnation's name gets nothing, even in an existing repository.
    let b = image(&name, &unique("b"));
    for tag in [None, Some("v2")] {
        assert_eq!(
            m.put_image_in("other", &b, tag, false).await.unwrap(),
            PutImageOutcome::RepositoryGone
        );
        assert_eq!(
            m.put_image_in("", &b, tag, false).await.unwrap(),
            PutImageOutcome::RepositoryGone
        );
    }
    assert_eq!(m.get_image(REGISTRY, &name, &b.digest).await.unwrap(), None);
    assert_eq!(m.get_tag(REGISTRY, &name, "v2").await.unwrap(), None);
    // The same outcome rules as `put_image` otherwise.
    assert_eq!(
        m.put_image_in(&old, &a, Some("v1"), false).await.unwrap(),
        PutImageOutcome::AlreadyExists
    );
    assert_eq!(
        m.put_image_in(&old, &b, Some("v1"), true).await.unwrap(),
        PutImageOutcome::TagImmutable {
            digest: a.digest.clone()
        }
    );
    assert_eq!(
        m.put_image_in(&old, &b, None, false).await.unwrap(),
        PutImageOutcome::Stored
    );

    // Deleted: nothing is written.
    assert!(m.delete_repository(REGISTRY, &name).await.unwrap());
    let c = image(&name, &unique("c"));
    for tag in [None, Some("v3")] {
        assert_eq!(
            m.put_image_in(&old, &c, tag, false).await.unwrap(),
            PutImageOutcome::RepositoryGone
        );
    }
    // Created again: the old incarnation still writes nothing, the new one does.
    let new = unique("inc");
    m.create_repository(&repository(&name, &new)).await.unwrap();
    for tag in [None, Some("v3")] {
        assert_eq!(
            m.put_image_in(&old, &c, tag, false).await.unwrap(),
            PutImageOutcome::RepositoryGone
        );
    }
    assert!(m.list_images(REGISTRY, &name).await.unwrap().is_empty());
    assert!(m.list_tags(REGISTRY, &name).await.unwrap().is_empty());
    assert_eq!(
        m.put_image_in(&new, &c, Some("v3"), false).await.unwrap(),
        PutImageOutcome::Stored
    );
    assert_eq!(
        m.get_tag(REGISTRY, &name, "v3")
            .await
            .unwrap()
            .unwrap()
            .digest,
        c.digest
    );

    // The original incarnation ("", records from before incarnations) is one of its own.
    let legacy = unique("race/legacy");
    m.create_repository(&repository(&legacy, "")).await.unwrap();
    let d = image(&legacy, &unique("d"));
    assert_eq!(
        m.put_image_in(&new, &d, None, false).await.unwrap(),
        PutImageOutcome::RepositoryGone
    );
    assert_eq!(
        m.put_image_in("", &d, Some("x"), false).await.unwrap(),
        PutImageOutcome::Stored
    );
    for n in [&name, &legacy] {
        m.delete_repository(REGISTRY, n).await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The service: PutImage racing DeleteRepository.

/// A [`BlobStore`] that holds the first write of a manifest object (`manifests/...`, PutImage of
/// a manifest too large for its record) until the test lets it go: PutImage has then read the
/// repository and checked its layers, and has not yet written the image.
pub struct ManifestGate<B> {
    inner: B,
    armed: AtomicBool,
    reached: Notify,
    go: Notify,
}

impl<B> ManifestGate<B> {
    pub fn new(inner: B) -> Self {
        ManifestGate {
            inner,
            armed: AtomicBool::new(true),
            reached: Notify::new(),
            go: Notify::new(),
        }
    }
}

impl<B: BlobStore> BlobStore for ManifestGate<B> {
    async fn put_object(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let held = key.starts_with("manifests/") && self.armed.swap(false, Ordering::SeqCst);
        self.inner.put_object(key, data).await?;
        if held {
            self.reached.notify_one();
            self.go.notified().await;
        }
        Ok(())
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

fn descriptor(media_type: &str, digest: &str, size: usize) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#)
}

async fn delete<M: MetadataStore, B: BlobStore>(svc: &Service<M, B>, name: &str) {
    svc.delete_repository(DeleteRepositoryRequest {
        force: true,
        ..DeleteRepositoryRequest::new(name.parse().unwrap())
    })
    .await
    .unwrap();
}

/// DeleteRepository, then CreateRepository of the same name, while PutImage has checked the
/// layers of the old repository and not yet written the image: PutImage answers
/// RepositoryNotFoundException and the new repository holds no image and no tag, even with the
/// same layers pushed into it meanwhile.
pub async fn put_image_racing_delete_writes_nothing<M: MetadataStore, B: BlobStore>(
    meta: M,
    blobs: B,
    settings: Settings,
    name: &str,
) {
    let svc = Arc::new(Service::new(meta, ManifestGate::new(blobs), settings));
    create_repository(&*svc, name).await;
    let layer = noise(3000, 21);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer_digest = push_blob(&*svc, name, &layer).await;
    let config_digest = push_blob(&*svc, name, config).await;
    // Too large for the record: PutImage writes it to the blob store first, where it is held.
    let pad = "p".repeat(INLINE_MANIFEST_MAX + 10);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}],"annotations":{{"pad":"{pad}"}}}}"#,
        descriptor(CONFIG_TYPE, &config_digest, config.len()),
        descriptor(LAYER_TYPE, &layer_digest, layer.len()),
    );
    let putting = {
        let (svc, name, manifest) = (svc.clone(), name.to_owned(), manifest.clone());
        tokio::spawn(async move {
            svc.put_image(PutImageRequest {
                image_tag: Some("v1".parse().unwrap()),
                ..PutImageRequest::new(name.parse().unwrap(), manifest)
            })
            .await
        })
    };
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        svc.blobs().reached.notified(),
    )
    .await
    .expect("PutImage reached the gate");
    delete(&svc, name).await;
    create_repository(&*svc, name).await;
    // The new repository holds the same layers: only the incarnation tells the two apart.
    assert_eq!(push_blob(&*svc, name, &layer).await, layer_digest);
    assert_eq!(push_blob(&*svc, name, config).await, config_digest);
    svc.blobs().go.notify_one();
    match putting.await.unwrap() {
        Err(e @ EcrError::RepositoryNotFound(_)) => {
            assert_eq!(e.type_name(), "RepositoryNotFoundException")
        }
        other => {
            panic!("the PutImage that raced: expected RepositoryNotFoundException, got {other:?}")
        }
    }
    let m = svc.metadata();
    assert!(
        m.list_images(REGISTRY, name).await.unwrap().is_empty(),
        "no image in the new repository"
    );
    assert!(
        m.list_tags(REGISTRY, name).await.unwrap().is_empty(),
        "no tag in the new repository"
    );
    // The new repository takes the same image when it is pushed to it.
    svc.put_image(PutImageRequest {
        image_tag: Some("v1".parse().unwrap()),
        ..PutImageRequest::new(name.parse().unwrap(), manifest)
    })
    .await
    .unwrap();
    assert_eq!(m.list_images(REGISTRY, name).await.unwrap().len(), 1);
    delete(&svc, name).await;
}

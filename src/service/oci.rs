//! What the OCI Distribution API (`/v2/`, src/protocols/oci.rs) needs beyond ECR's operations,
//! over the same records: an upload's progress, cancelling an upload, a blob by digest whether or
//! not an image references it yet, mounting a blob of another repository, a manifest by tag or
//! digest, tag and repository listings with `n`/`last` paging, and the referrers of a manifest.
//!
//! Every write goes through the state machine and records ECR's operations use: a `/v2/` upload
//! is an upload of InitiateLayerUpload, its chunks are UploadLayerPart's parts, and its end is
//! CompleteLayerUpload (without ECR's bound on the size of non-final parts: OCI chunks may have
//! any size, and the staged segments coalesce into multipart parts of `s3_part_size` either way).

use super::Service;
use super::types::*;
use crate::domain::error::EcrError;
use crate::domain::model::{Digest, ImageId, ImageTag, RepositoryName, UploadId};
use crate::ports::{
    BlobStore, ByteStream, Finish, ImageRecord, LayerRecord, LayerReference, MetadataStore,
    RepositoryRecord, UploadRecord, UploadState,
};

/// A blob of a repository: a layer record, referenced by an image or not yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    /// Where the bytes are in the blob store.
    pub key: String,
}

/// A manifest of a repository, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub digest: String,
    /// The media type's wire string.
    pub media_type: String,
    pub text: String,
}

/// What a manifest reference of the OCI API names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(ImageTag),
    Digest(Digest),
}

impl Reference {
    fn image_id(&self) -> ImageId {
        match self {
            Reference::Tag(t) => ImageId::by_tag(t.clone()),
            Reference::Digest(d) => ImageId::by_digest(d.clone()),
        }
    }
}

/// One page of names in order: those after `last`, at most `n` (all when `None`), and whether
/// more follow.
fn name_page(mut names: Vec<String>, n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
    names.retain(|name| last.is_none_or(|l| name.as_str() > l));
    match n {
        Some(n) if names.len() > n => {
            names.truncate(n);
            (names, true)
        }
        _ => (names, false),
    }
}

impl<M: MetadataStore, B: BlobStore> Service<M, B> {
    /// The repository `name` of the registry served.
    pub async fn oci_repository(
        &self,
        name: &RepositoryName,
    ) -> Result<RepositoryRecord, EcrError> {
        self.repository(None, name).await
    }

    /// The repository `name`, created (with ECR's defaults) if it does not exist.
    pub async fn oci_repository_or_create(
        &self,
        name: &RepositoryName,
    ) -> Result<RepositoryRecord, EcrError> {
        match self.repository(None, name).await {
            Err(EcrError::RepositoryNotFound(_)) => {
                match self
                    .create_repository(CreateRepositoryRequest::new(name.clone()))
                    .await
                {
                    Ok(_) | Err(EcrError::RepositoryAlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
                self.repository(None, name).await
            }
            other => other,
        }
    }

    /// The number of bytes a live upload of repository `name` holds.
    pub async fn upload_progress(
        &self,
        name: &RepositoryName,
        upload_id: &UploadId,
    ) -> Result<u64, EcrError> {
        let repo = self.repository(None, name).await?;
        let up = self.live_upload(&repo, upload_id.as_str()).await?;
        match up.state {
            UploadState::Open => Ok(up.next_byte),
            _ => Err(EcrError::upload_not_found(
                &repo.registry_id,
                &repo.name,
                upload_id.as_str(),
            )),
        }
    }

    /// Completes an upload of the OCI API: CompleteLayerUpload with the single digest `digest`,
    /// whatever the sizes of its chunks. An upload holding no bytes records the empty blob.
    pub async fn complete_blob_upload(
        &self,
        name: &RepositoryName,
        upload_id: &UploadId,
        digest: Digest,
    ) -> Result<String, EcrError> {
        let repo = self.repository(None, name).await?;
        let up = self.live_upload(&repo, upload_id.as_str()).await?;
        if up.next_byte == 0 && up.state == UploadState::Open {
            return self.complete_empty(&repo, up, digest).await;
        }
        let given = digest.to_string();
        let req = CompleteLayerUploadRequest::new(name.clone(), upload_id.clone(), vec![digest]);
        match self.complete_upload(req, 0).await {
            Ok(done) => Ok(done.layer_digest),
            // The repository held the blob already, and the upload's bytes had its digest: the
            // push succeeded.
            Err(EcrError::LayerAlreadyExists(_)) => Ok(given),
            Err(e) => Err(e),
        }
    }

    /// The zero-length blob: written whole (a multipart upload cannot be empty) and recorded
    /// with the upload's retirement, as CompleteLayerUpload records a layer.
    async fn complete_empty(
        &self,
        repo: &RepositoryRecord,
        up: UploadRecord,
        digest: Digest,
    ) -> Result<String, EcrError> {
        use sha2::Digest as _;
        let computed = Digest::sha256(&sha2::Sha256::digest(b""));
        if digest != computed {
            return Err(EcrError::InvalidLayer(
                "None of the provided layer digests match the calculated layer digest".into(),
            ));
        }
        self.blobs
            .put_object(&up.blob_key, bytes::Bytes::new())
            .await?;
        let layer = LayerRecord {
            registry_id: repo.registry_id.clone(),
            repository: repo.name.clone(),
            digest: computed.to_string(),
            blob_key: up.blob_key.clone(),
            size: 0,
            media_type: None,
            created_at_ms: self.clock_ms(),
        };
        let mut done = up.clone();
        done.version += 1;
        done.state = UploadState::Done;
        done.updated_at_ms = self.clock_ms();
        match self.meta.finish_upload(&done, &layer).await? {
            Finish::Recorded => {
                self.forget(&up, true).await;
                Ok(layer.digest)
            }
            Finish::LayerExists(existing) => {
                self.forget(&up, true).await;
                if existing.blob_key != up.blob_key {
                    self.drop_objects(vec![up.blob_key.clone()]).await;
                }
                Ok(existing.digest)
            }
            Finish::RepositoryGone => Err(EcrError::upload_not_found(
                &repo.registry_id,
                &repo.name,
                &up.upload_id,
            )),
        }
    }

    /// Cancels a live upload: its staged bytes, multipart upload and records go.
    pub async fn cancel_upload(
        &self,
        name: &RepositoryName,
        upload_id: &UploadId,
    ) -> Result<(), EcrError> {
        let repo = self.repository(None, name).await?;
        let up = self.live_upload(&repo, upload_id.as_str()).await?;
        if up.state == UploadState::Completing {
            return Err(EcrError::upload_not_found(
                &repo.registry_id,
                &repo.name,
                upload_id.as_str(),
            ));
        }
        self.drop_objects(vec![up.blob_key.clone()]).await;
        self.forget(&up, true).await;
        Ok(())
    }

    /// The blob `digest` of repository `name`, if it holds one.
    pub async fn blob(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<Blob>, EcrError> {
        let repo = self.repository(None, name).await?;
        Ok(self
            .meta
            .get_layer(&repo.registry_id, &repo.name, &digest.to_string())
            .await?
            .map(|l| Blob {
                digest: l.digest,
                size: l.size,
                key: l.blob_key,
            }))
    }

    /// The bytes of a blob, or the inclusive range of them.
    pub async fn read_blob(
        &self,
        blob: &Blob,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, EcrError> {
        Ok(self.blobs.read_object(&blob.key, range).await?)
    }

    /// A URL that serves a blob's bytes (with `Range`) for as long as GetDownloadUrlForLayer's.
    pub async fn blob_url(&self, blob: &Blob) -> Result<String, EcrError> {
        Ok(self
            .blobs
            .download_url(&blob.key, super::DOWNLOAD_URL_SECS)
            .await?)
    }

    /// Makes the blob `digest` of repository `from` a blob of `name` too, sharing its bytes:
    /// `Ok(false)` when `from` does not hold it (or cannot be read), and nothing is written. The
    /// layer is recorded as CompleteLayerUpload records one, by an upload retired at once.
    pub async fn mount_blob(
        &self,
        name: &RepositoryName,
        from: &RepositoryName,
        digest: &Digest,
    ) -> Result<bool, EcrError> {
        let repo = self.repository(None, name).await?;
        let Ok(source) = self.repository(None, from).await else {
            return Ok(false);
        };
        let Some(layer) = self
            .meta
            .get_layer(&source.registry_id, &source.name, &digest.to_string())
            .await?
        else {
            return Ok(false);
        };
        if self
            .meta
            .get_layer(&repo.registry_id, &repo.name, &layer.digest)
            .await?
            .is_some()
        {
            return Ok(true);
        }
        let now = self.clock_ms();
        // The source's record must outlive the mount's being written, or the bytes could go
        // with it: a mark keeps the collector of unreferenced layers off it for the grace
        // period, and a source collected before the mark is no source.
        let source_mark = LayerReference {
            digest: layer.digest.clone(),
            media_type: None,
        };
        if !self
            .meta
            .mark_layers_referenced(&source.registry_id, &source.name, &[source_mark], now)
            .await?
            .is_empty()
        {
            return Ok(false);
        }
        let upload_id = UploadId::random().into_string();
        let up = UploadRecord {
            upload_id: upload_id.clone(),
            registry_id: repo.registry_id.clone(),
            repository: repo.name.clone(),
            repository_incarnation: repo.incarnation.clone(),
            blob_key: layer.blob_key.clone(),
            // No multipart upload: the bytes are the source layer's.
            multipart_id: format!("mount-{upload_id}"),
            next_byte: layer.size,
            flushed_bytes: layer.size,
            parts_flushed: 0,
            part_numbers_used: 0,
            last_part: None,
            smallest_nonfinal_part: None,
            state: UploadState::Open,
            version: 1,
            created_at_ms: now,
            updated_at_ms: now,
            expires_at: now / 1000 + self.settings.upload_ttl_secs,
            hash: None,
            part_checksums: false,
        };
        self.meta.create_upload(&up).await?;
        let mut done = up.clone();
        done.version = 2;
        done.state = UploadState::Done;
        let mounted = LayerRecord {
            registry_id: repo.registry_id.clone(),
            repository: repo.name.clone(),
            media_type: None,
            created_at_ms: now,
            ..layer
        };
        let outcome = self.meta.finish_upload(&done, &mounted).await;
        // The retired record names the source's bytes: drop it, never its blob.
        if let Err(e) = self.meta.delete_upload(&upload_id).await {
            tracing::warn!(upload_id = %upload_id, error = %crate::domain::error::chain(&e), "mount record cleanup failed");
        }
        match outcome? {
            Finish::Recorded | Finish::LayerExists(_) => Ok(true),
            Finish::RepositoryGone => Err(EcrError::repository_not_found(
                &repo.registry_id,
                &repo.name,
            )),
        }
    }

    /// The manifest a tag or digest names in repository `name`, if any.
    pub async fn manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, EcrError> {
        let repo = self.repository(None, name).await?;
        let requested = RequestedImage::from(reference.image_id());
        let Ok(image) = self.find_image(&repo, &requested).await? else {
            return Ok(None);
        };
        let text = self.manifest_text(&image).await?;
        Ok(Some(StoredManifest {
            digest: image.digest,
            media_type: image.media_type.to_string(),
            text,
        }))
    }

    /// Deletes a manifest by digest (the image and its tags) or a tag, as BatchDeleteImage
    /// does; `Ok(false)` if there was none. An image an index lists is kept
    /// (`ImageReferencedByManifestList`, answered as an error).
    pub async fn delete_manifest(
        &self,
        name: &RepositoryName,
        reference: &Reference,
    ) -> Result<bool, EcrError> {
        let req = BatchDeleteImageRequest::new(
            name.clone(),
            vec![RequestedImage::from(reference.image_id())],
        );
        let out = self.batch_delete_image(req).await?;
        if let Some(f) = out.failures.first() {
            return match f.failure_code {
                crate::domain::model::ImageFailureCode::ImageNotFound => Ok(false),
                _ => Err(EcrError::InvalidParameter(f.failure_reason.clone())),
            };
        }
        Ok(true)
    }

    /// The tags of repository `name` in order, a page of them: after `last`, at most `n`.
    /// The flag tells whether more follow.
    pub async fn tag_page(
        &self,
        name: &RepositoryName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(String, Vec<String>, bool), EcrError> {
        let repo = self.repository(None, name).await?;
        let tags = self.meta.list_tags(&repo.registry_id, &repo.name).await?;
        let (page, more) = name_page(tags.into_iter().map(|t| t.tag).collect(), n, last);
        Ok((repo.name, page, more))
    }

    /// The repositories of the registry in name order, a page of them.
    pub async fn repository_page(
        &self,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(Vec<String>, bool), EcrError> {
        let all = self
            .meta
            .list_repositories(&self.settings.registry_id)
            .await?;
        Ok(name_page(
            all.into_iter().map(|r| r.name).collect(),
            n,
            last,
        ))
    }

    /// The images of repository `name` whose `subject` is `digest`, in digest order, with their
    /// manifests' text.
    pub async fn referrers(
        &self,
        name: &RepositoryName,
        digest: &Digest,
    ) -> Result<Vec<(ImageRecord, String)>, EcrError> {
        let repo = self.repository(None, name).await?;
        let subject = digest.to_string();
        let mut out = Vec::new();
        for image in self
            .meta
            .list_images(&repo.registry_id, &repo.name)
            .await?
            .into_iter()
            .filter(|i| i.subject.as_deref() == Some(subject.as_str()))
        {
            let text = self.manifest_text(&image).await?;
            out.push((image, text));
        }
        Ok(out)
    }
}

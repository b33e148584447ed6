//! PutImage, BatchGetImage, ListImages, DescribeImages, BatchDeleteImage and
//! GetDownloadUrlForLayer: images over the layers the upload state machine records.
//!
//! An image is its manifest, stored under the sha256 of the manifest text exactly as sent; tags
//! are separate records naming a digest. PutImage is what makes a layer "referenced": it marks the
//! layer record (its media type, which BatchCheckLayerAvailability reports and which
//! GetDownloadUrlForLayer requires, as ECR serves only layers an image references; and the time,
//! which keeps the collector of unreferenced layers away from it).

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::Service;
use super::types::*;
use crate::domain;
use crate::domain::error::EcrError;
use crate::domain::manifest::{self, Kind};
use crate::domain::model::{Digest as ContentDigest, ImageFailureCode, ImageId, ImageStatus};
use crate::ports::{
    BlobStore, ImageRecord, LayerReference, MetadataStore, PutImageOutcome, RepositoryRecord,
    TagRecord,
};

/// Manifests longer than this are kept in the blob store rather than in the image record
/// (DynamoDB items are at most 400 KB; ECR allows 4 MiB manifests).
pub const INLINE_MANIFEST_MAX: usize = 256 * 1024;
/// How long a download URL works: S3 presigned URLs of ECR last one hour.
pub const DOWNLOAD_URL_SECS: u64 = 3600;
/// The media type recorded for a referenced blob whose descriptor names none.
const DEFAULT_BLOB_MEDIA_TYPE: &str = "application/octet-stream";

fn manifest_key(registry: &str, repo: &str, digest: &str) -> String {
    format!("manifests/{registry}/{repo}/{digest}")
}

fn failure(id: &ImageIdentifier, code: ImageFailureCode) -> ImageFailure {
    ImageFailure {
        image_id: id.clone(),
        failure_code: code,
        failure_reason: code.reason().into(),
    }
}

/// Tags of each image, in tag order: `tags` is sorted by tag.
fn tags_of<'a>(tags: &'a [TagRecord], digest: &str) -> Vec<&'a str> {
    tags.iter()
        .filter(|t| t.digest == digest)
        .map(|t| t.tag.as_str())
        .collect()
}

impl<M: MetadataStore, B: BlobStore> Service<M, B> {
    /// PutImage: records a manifest whose blobs (or, for an index, manifests) the repository
    /// holds, and points the tag at it.
    pub async fn put_image(&self, req: PutImageRequest) -> Result<PutImageResponse, EcrError> {
        let repo = self
            .repository(req.registry_id.as_ref(), &req.repository_name)
            .await?;
        let text = req.image_manifest;
        let parsed = manifest::parse(&text, req.image_manifest_media_type.as_deref())?;
        let computed = ContentDigest::sha256(&Sha256::digest(text.as_bytes()));
        if let Some(given) = &req.image_digest
            && given.value.as_ref() != Some(&computed)
        {
            return Err(EcrError::ImageDigestDoesNotMatch(format!(
                "The provided image digest '{}' does not match the digest of the manifest, '{computed}'",
                given.text
            )));
        }
        let digest = computed.to_string();
        let (registry, name) = (repo.registry_id.as_str(), repo.name.as_str());

        let size = match parsed.kind {
            Kind::Manifest => self.check_blobs(&repo, &parsed).await?,
            Kind::Index => self.check_manifests(&repo, &parsed).await?,
        };

        let inline = text.len() <= INLINE_MANIFEST_MAX;
        let manifest_key = (!inline).then(|| manifest_key(registry, name, &digest));
        if let Some(key) = &manifest_key {
            // Content-addressed: a concurrent or repeated write puts the same bytes.
            self.blobs
                .put_object(key, Bytes::copy_from_slice(text.as_bytes()))
                .await?;
        }
        let record = ImageRecord {
            registry_id: registry.to_string(),
            repository: name.to_string(),
            digest: digest.clone(),
            manifest: inline.then(|| text.clone()),
            manifest_key,
            media_type: parsed.media_type,
            artifact_media_type: parsed.artifact_media_type.clone(),
            size,
            pushed_at_ms: self.clock_ms(),
            blobs: parsed
                .blobs()
                .iter()
                .map(|d| d.digest.to_string())
                .collect(),
            manifests: parsed
                .manifests
                .iter()
                .map(|d| d.digest.to_string())
                .collect(),
            subject: parsed.subject.as_ref().map(ContentDigest::to_string),
        };
        let immutable = repo.image_tag_mutability.is_immutable();
        let tag = req.image_tag.as_ref().map(|t| t.as_str());
        // On condition that the repository is still the incarnation read above: one deleted
        // (and perhaps created again) meanwhile gets no image.
        let outcome = self
            .meta
            .put_image_in(&repo.incarnation, &record, tag, immutable)
            .await?;
        match outcome {
            PutImageOutcome::RepositoryGone => Err(EcrError::repository_not_found(registry, name)),
            PutImageOutcome::Stored => Ok(PutImageResponse {
                image: Image {
                    registry_id: registry.to_string(),
                    repository_name: name.to_string(),
                    image_id: ImageIdentifier {
                        image_digest: Some(digest),
                        image_tag: tag.map(String::from),
                    },
                    image_manifest: text,
                    image_manifest_media_type: parsed.media_type,
                },
            }),
            PutImageOutcome::AlreadyExists => Err(EcrError::ImageAlreadyExists(match tag {
                Some(tag) => format!(
                    "Image with digest '{digest}' and tag '{tag}' already exists in the repository with name '{name}' in registry with id '{registry}'"
                ),
                None => format!(
                    "Image with digest '{digest}' already exists in the repository with name '{name}' in registry with id '{registry}'"
                ),
            })),
            PutImageOutcome::TagImmutable { .. } => Err(EcrError::ImageTagAlreadyExists(format!(
                "The image tag '{}' already exists in the '{name}' repository and cannot be overwritten because the repository is immutable.",
                tag.unwrap_or_default()
            ))),
        }
    }

    /// Every blob of an image manifest must be a layer of the repository, of the size the
    /// manifest says; each is then marked as referenced. Returns the image size (its layers).
    async fn check_blobs(
        &self,
        repo: &RepositoryRecord,
        parsed: &manifest::Manifest,
    ) -> Result<u64, EcrError> {
        let (registry, name) = (repo.registry_id.as_str(), repo.name.as_str());
        let mut missing = Vec::new();
        let mut found = Vec::new();
        for blob in parsed.blobs() {
            let digest = blob.digest.to_string();
            match self.meta.get_layer(registry, name, &digest).await? {
                None => missing.push(digest),
                Some(layer) if layer.size != blob.size => {
                    return Err(domain::invalid(
                        "imageManifest",
                        format_args!(
                            "the blob {} has {} bytes, not the {} its descriptor says",
                            blob.digest, layer.size, blob.size
                        ),
                    ));
                }
                Some(layer) => found.push((layer, blob)),
            }
        }
        if missing.is_empty() {
            // Marked before the image is written, each on condition that its record still
            // exists: the collector of unreferenced layers never deletes a layer marked after
            // it read it or within the grace period before (docs/architecture.md), and a layer
            // it deleted first is reported missing here.
            let references: Vec<LayerReference> = found
                .iter()
                .map(|(layer, blob)| LayerReference {
                    digest: layer.digest.clone(),
                    media_type: Some(
                        blob.media_type
                            .as_deref()
                            .unwrap_or(DEFAULT_BLOB_MEDIA_TYPE)
                            .to_owned(),
                    ),
                })
                .collect();
            missing = self
                .meta
                .mark_layers_referenced(registry, name, &references, self.clock_ms())
                .await?;
        }
        if !missing.is_empty() {
            return Err(EcrError::LayersNotFound(format!(
                "Layers with digests '[{}]' required for pushing image into repository with name '{name}' in registry with id '{registry}' do not exist",
                missing.join(", ")
            )));
        }
        Ok(parsed.layers.iter().map(|d| d.size).sum())
    }

    /// Every manifest an index lists must be an image of the repository. Returns the index's
    /// size: that of its largest image.
    async fn check_manifests(
        &self,
        repo: &RepositoryRecord,
        parsed: &manifest::Manifest,
    ) -> Result<u64, EcrError> {
        let (registry, name) = (repo.registry_id.as_str(), repo.name.as_str());
        let mut missing = Vec::new();
        let mut size = 0;
        for m in &parsed.manifests {
            let digest = m.digest.to_string();
            match self.meta.get_image(registry, name, &digest).await? {
                Some(image) => size = size.max(image.size),
                None => missing.push(digest),
            }
        }
        if !missing.is_empty() {
            return Err(EcrError::ReferencedImagesNotFound(format!(
                "Manifests with digests '[{}]' referenced by the image index do not exist in the repository with name '{name}' in registry with id '{registry}'",
                missing.join(", ")
            )));
        }
        Ok(size)
    }

    /// The manifest text of an image record.
    pub(super) async fn manifest_text(&self, image: &ImageRecord) -> Result<String, EcrError> {
        if let Some(text) = &image.manifest {
            return Ok(text.clone());
        }
        let key = image
            .manifest_key
            .as_deref()
            .ok_or_else(|| EcrError::Server(format!("image {} has no manifest", image.digest)))?;
        let bytes = self.blobs.get_object(key).await?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            EcrError::Server(format!("manifest of image {} is not UTF-8", image.digest))
        })
    }

    /// Resolves an image identifier the way BatchGetImage and BatchDeleteImage do: a failure
    /// entry for what cannot be found or is malformed.
    pub(super) async fn find_image(
        &self,
        repo: &RepositoryRecord,
        requested: &RequestedImage,
    ) -> Result<Result<ImageRecord, ImageFailure>, EcrError> {
        let (registry, name) = (repo.registry_id.as_str(), repo.name.as_str());
        let sent = &requested.sent;
        let id = match &requested.id {
            Err(code) => return Ok(Err(failure(sent, *code))),
            Ok(id) => id,
        };
        let digest = match (id.digest(), id.tag()) {
            (digest, Some(tag)) => match self.meta.get_tag(registry, name, tag.as_str()).await? {
                None => return Ok(Err(failure(sent, ImageFailureCode::ImageNotFound))),
                Some(t) => {
                    if digest.is_some_and(|d| *d != t.digest) {
                        return Ok(Err(failure(
                            sent,
                            ImageFailureCode::ImageTagDoesNotMatchDigest,
                        )));
                    }
                    t.digest
                }
            },
            (Some(d), None) => d.to_string(),
            (None, None) => return Ok(Err(failure(sent, ImageFailureCode::MissingDigestAndTag))),
        };
        Ok(self
            .meta
            .get_image(registry, name, &digest)
            .await?
            .ok_or_else(|| failure(sent, ImageFailureCode::ImageNotFound)))
    }

    /// BatchGetImage: manifests by tag or digest. A stored manifest is answered as it is, even
    /// when its media type is not among `acceptedMediaTypes` (ECR converts formats where it can;
    /// here nothing is converted, and clients check the media type they get).
    pub async fn batch_get_image(
        &self,
        req: BatchGetImageRequest,
    ) -> Result<BatchGetImageResponse, EcrError> {
        let repo = self
            .repository(req.registry_id.as_ref(), &req.repository_name)
            .await?;
        let ids = req.image_ids;
        let mut out = BatchGetImageResponse {
            images: Vec::new(),
            failures: Vec::new(),
        };
        let limit = self.settings.response_limit;
        let mut response_bytes = 0u64;
        for id in &ids {
            response_bytes += limit.map_or(0, |l| l.entry_overhead);
            match self.find_image(&repo, id).await? {
                Err(f) => out.failures.push(f),
                Ok(image) => {
                    let manifest = self.manifest_text(&image).await?;
                    if let Some(limit) = limit {
                        response_bytes += (limit.manifest_cost)(&manifest);
                    }
                    if let Some(max) = limit.map(|l| l.max_bytes)
                        && response_bytes > max
                    {
                        return Err(EcrError::LimitExceeded(format!(
                            "The manifests of the requested images make a response larger than the {max} bytes this deployment can return; request fewer images at a time"
                        )));
                    }
                    out.images.push(Image {
                        registry_id: repo.registry_id.clone(),
                        repository_name: repo.name.clone(),
                        image_id: ImageIdentifier {
                            image_digest: Some(image.digest),
                            image_tag: id.sent.image_tag.clone(),
                        },
                        image_manifest: manifest,
                        image_manifest_media_type: image.media_type,
                    });
                }
            }
        }
        Ok(out)
    }

    /// ListImages: one entry per tag of each image, and one per untagged image, in
    /// (digest, tag) order.
    pub async fn list_images(
        &self,
        req: ListImagesRequest,
    ) -> Result<ListImagesResponse, EcrError> {
        let repo = self
            .repository(req.registry_id.as_ref(), &req.repository_name)
            .await?;
        let tag_status = req.filter.tag_status;
        let active = req.filter.image_status.keeps_active();
        let (registry, name) = (repo.registry_id.as_str(), repo.name.as_str());
        let images = self.meta.list_images(registry, name).await?;
        let tags = self.meta.list_tags(registry, name).await?;
        let mut entries: Vec<(String, ImageIdentifier)> = Vec::new();
        for image in images.iter().filter(|_| active) {
            let image_tags = tags_of(&tags, &image.digest);
            if !tag_status.keeps(!image_tags.is_empty()) {
                continue;
            }
            if image_tags.is_empty() {
                entries.push((
                    format!("{}\n", image.digest),
                    ImageIdentifier {
                        image_digest: Some(image.digest.clone()),
                        image_tag: None,
                    },
                ));
            }
            for tag in image_tags {
                entries.push((
                    format!("{}\n{tag}", image.digest),
                    ImageIdentifier {
                        image_digest: Some(image.digest.clone()),
                        image_tag: Some(tag.to_string()),
                    },
                ));
            }
        }
        let (page, next_token) = super::paginate(entries, &req.page);
        Ok(ListImagesResponse {
            image_ids: page,
            next_token,
        })
    }

    fn detail(&self, image: &ImageRecord, tags: Vec<String>) -> ImageDetail {
        ImageDetail {
            registry_id: image.registry_id.clone(),
            repository_name: image.repository.clone(),
            image_digest: image.digest.clone(),
            image_tags: tags,
            image_size_in_bytes: image.size,
            image_pushed_at: image.pushed_at_ms as f64 / 1000.0,
            image_manifest_media_type: image.media_type,
            artifact_media_type: image.artifact_media_type.clone(),
            subject_manifest_digest: image.subject.clone(),
            image_status: ImageStatus::Active,
        }
    }

    /// DescribeImages: details of the named images (any missing one fails the request), or of
    /// every image a page at a time, in digest order.
    pub async fn describe_images(
        &self,
        req: DescribeImagesRequest,
    ) -> Result<DescribeImagesResponse, EcrError> {
        let repo = self
            .repository(req.registry_id.as_ref(), &req.repository_name)
            .await?;
        let tag_status = req.filter.tag_status;
        let active = req.filter.image_status.keeps_active();
        let (registry, name) = (repo.registry_id.as_str(), repo.name.as_str());
        let page = match req.selection {
            ImageSelection::Page(page) => page,
            ImageSelection::Ids(ids) => {
                let tags = self.meta.list_tags(registry, name).await?;
                let mut details: Vec<ImageDetail> = Vec::new();
                for id in &ids {
                    match self.find_image(&repo, id).await? {
                        Ok(image) => {
                            if details.iter().any(|d| d.image_digest == image.digest) {
                                continue;
                            }
                            let image_tags = tags_of(&tags, &image.digest);
                            details.push(self.detail(
                                &image,
                                image_tags.into_iter().map(String::from).collect(),
                            ));
                        }
                        Err(f) if f.failure_code == ImageFailureCode::ImageNotFound => {
                            return Err(EcrError::ImageNotFound(format!(
                                "The image with imageId {{imageDigest:'{}', imageTag:'{}'}} does not exist within the repository with name '{name}' in the registry with id '{registry}'",
                                id.sent.image_digest.as_deref().unwrap_or("null"),
                                id.sent.image_tag.as_deref().unwrap_or("null"),
                            )));
                        }
                        Err(f) => {
                            return Err(EcrError::InvalidParameter(f.failure_reason));
                        }
                    }
                }
                return Ok(DescribeImagesResponse {
                    image_details: details,
                    next_token: None,
                });
            }
        };
        let images = self.meta.list_images(registry, name).await?;
        let tags = self.meta.list_tags(registry, name).await?;
        let entries: Vec<(String, ImageDetail)> = images
            .iter()
            .filter(|_| active)
            .filter_map(|image| {
                let image_tags = tags_of(&tags, &image.digest);
                tag_status.keeps(!image_tags.is_empty()).then(|| {
                    (
                        image.digest.clone(),
                        self.detail(image, image_tags.into_iter().map(String::from).collect()),
                    )
                })
            })
            .collect();
        let (page, next_token) = super::paginate(entries, &page);
        Ok(DescribeImagesResponse {
            image_details: page,
            next_token,
        })
    }

    /// BatchDeleteImage: by digest, an image and all its tags; by tag, the tag, and the image too
    /// once its last tag is gone (as ECR does). An image an index of the repository lists is
    /// kept (`ImageReferencedByManifestList`).
    pub async fn batch_delete_image(
        &self,
        req: BatchDeleteImageRequest,
    ) -> Result<BatchDeleteImageResponse, EcrError> {
        let repo = self
            .repository(req.registry_id.as_ref(), &req.repository_name)
            .await?;
        let ids = req.image_ids;
        let (registry, name) = (repo.registry_id.as_str(), repo.name.as_str());
        let mut out = BatchDeleteImageResponse {
            image_ids: Vec::new(),
            failures: Vec::new(),
        };
        for id in &ids {
            let image = match self.find_image(&repo, id).await? {
                Err(f) => {
                    out.failures.push(f);
                    continue;
                }
                Ok(image) => image,
            };
            let tags = self.meta.list_tags(registry, name).await?;
            let image_tags: Vec<String> = tags_of(&tags, &image.digest)
                .into_iter()
                .map(String::from)
                .collect();
            let tag = id.id.as_ref().ok().and_then(ImageId::tag);
            let remove_image = match tag {
                Some(tag) => {
                    if !self
                        .meta
                        .delete_tag(registry, name, tag.as_str(), &image.digest)
                        .await?
                    {
                        // The tag moved or went between the lookup and the delete.
                        out.failures
                            .push(failure(&id.sent, ImageFailureCode::ImageNotFound));
                        continue;
                    }
                    out.image_ids.push(ImageIdentifier {
                        image_digest: Some(image.digest.clone()),
                        image_tag: Some(tag.to_string()),
                    });
                    image_tags.iter().all(|t| t == tag.as_str())
                }
                None => true,
            };
            if !remove_image {
                continue;
            }
            if self.listed_by_an_index(&repo, &image.digest).await? {
                if tag.is_none() {
                    out.failures.push(failure(
                        &id.sent,
                        ImageFailureCode::ImageReferencedByManifestList,
                    ));
                }
                continue;
            }
            if self
                .meta
                .delete_image(registry, name, &image.digest)
                .await?
                && tag.is_none()
            {
                if image_tags.is_empty() {
                    out.image_ids.push(ImageIdentifier {
                        image_digest: Some(image.digest.clone()),
                        image_tag: None,
                    });
                }
                for tag in image_tags {
                    out.image_ids.push(ImageIdentifier {
                        image_digest: Some(image.digest.clone()),
                        image_tag: Some(tag),
                    });
                }
            }
            if let Some(key) = &image.manifest_key {
                self.drop_objects(vec![key.clone()]).await;
            }
        }
        Ok(out)
    }

    async fn listed_by_an_index(
        &self,
        repo: &RepositoryRecord,
        digest: &str,
    ) -> Result<bool, EcrError> {
        Ok(self
            .meta
            .list_images(&repo.registry_id, &repo.name)
            .await?
            .iter()
            .any(|i| i.manifests.iter().any(|m| m == digest)))
    }

    /// GetDownloadUrlForLayer: a URL that serves a referenced layer's bytes for an hour.
    pub async fn get_download_url_for_layer(
        &self,
        req: GetDownloadUrlForLayerRequest,
    ) -> Result<GetDownloadUrlForLayerResponse, EcrError> {
        let repo = self
            .repository(req.registry_id.as_ref(), &req.repository_name)
            .await?;
        let digest = &req.layer_digest.text;
        let (registry, name) = (repo.registry_id.as_str(), repo.name.as_str());
        let layer = self
            .meta
            .get_layer(registry, name, &req.layer_digest.value.to_string())
            .await?
            .ok_or_else(|| {
                EcrError::LayersNotFound(format!(
                    "The layer with digest {digest} does not exist within the repository with name '{name}' in the registry with id '{registry}'"
                ))
            })?;
        if layer.media_type.is_none() {
            return Err(EcrError::LayerInaccessible(format!(
                "The layer with digest {digest} in the repository with name '{name}' in the registry with id '{registry}' is not referenced by any image"
            )));
        }
        let url = self
            .blobs
            .download_url(&layer.blob_key, DOWNLOAD_URL_SECS)
            .await?;
        Ok(GetDownloadUrlForLayerResponse {
            download_url: url,
            layer_digest: layer.digest,
        })
    }
}

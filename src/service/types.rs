//! Operation inputs and outputs, named after the model's shapes.
//!
//! Inputs are typed: every member has been parsed and checked where the request arrived (the
//! protocol), so an operation receives only valid values, with the defaults of absent members
//! applied. Each input has a `new` with its required members; optional ones are public fields.
//! Outputs serialize to the model's camelCase members; absent members are omitted.

use bytes::Bytes;
use serde::Serialize;

use crate::domain::model::{
    Digest, EncryptionType, ImageFailureCode, ImageId, ImageStatus, ImageStatusFilter, ImageTag,
    LayerAvailability, LayerFailureCode, ManifestMediaType, Page, PageToken, RegistryId,
    RepositoryName, Sent, TagMutability, TagStatus, UploadId,
};

#[derive(Debug, Clone)]
pub struct InitiateLayerUploadRequest {
    /// The registry addressed; absent means the one served.
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
}

impl InitiateLayerUploadRequest {
    pub fn new(repository_name: RepositoryName) -> Self {
        InitiateLayerUploadRequest {
            registry_id: None,
            repository_name,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitiateLayerUploadResponse {
    pub upload_id: String,
    pub part_size: u64,
}

/// One part of a layer: bytes `part_first_byte..=part_last_byte`.
#[derive(Clone)]
pub struct UploadLayerPartRequest {
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
    pub upload_id: UploadId,
    pub part_first_byte: u64,
    pub part_last_byte: u64,
    /// At most [`crate::domain::limits::MAX_LAYER_PART`] bytes.
    pub layer_part_blob: Bytes,
}

impl UploadLayerPartRequest {
    /// The part of `blob` starting at byte `first` of the layer (a part is never empty: an
    /// empty `blob` is taken as one byte long, which the service refuses).
    pub fn new(
        repository_name: RepositoryName,
        upload_id: UploadId,
        first: u64,
        blob: Bytes,
    ) -> Self {
        UploadLayerPartRequest {
            registry_id: None,
            repository_name,
            upload_id,
            part_first_byte: first,
            part_last_byte: first + (blob.len() as u64).saturating_sub(1),
            layer_part_blob: blob,
        }
    }
}

impl std::fmt::Debug for UploadLayerPartRequest {
    // Never print the blob, only its length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadLayerPartRequest")
            .field("registry_id", &self.registry_id)
            .field("repository_name", &self.repository_name)
            .field("upload_id", &self.upload_id)
            .field("part_first_byte", &self.part_first_byte)
            .field("part_last_byte", &self.part_last_byte)
            .field("layer_part_blob_len", &self.layer_part_blob.len())
            .finish()
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadLayerPartResponse {
    pub registry_id: String,
    pub repository_name: String,
    pub upload_id: String,
    pub last_byte_received: u64,
}

#[derive(Debug, Clone)]
pub struct CompleteLayerUploadRequest {
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
    pub upload_id: UploadId,
    /// 1..=100 digests the layer is expected to have.
    pub layer_digests: Vec<Digest>,
}

impl CompleteLayerUploadRequest {
    pub fn new(
        repository_name: RepositoryName,
        upload_id: UploadId,
        layer_digests: Vec<Digest>,
    ) -> Self {
        CompleteLayerUploadRequest {
            registry_id: None,
            repository_name,
            upload_id,
            layer_digests,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteLayerUploadResponse {
    pub registry_id: String,
    pub repository_name: String,
    pub upload_id: String,
    pub layer_digest: String,
}

/// A resource tag of CreateRepository (validated, not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// 1..=128 characters.
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone)]
pub struct CreateRepositoryRequest {
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
    /// At most 200.
    pub tags: Vec<Tag>,
    pub image_tag_mutability: TagMutability,
    pub scan_on_push: bool,
    pub encryption_type: EncryptionType,
    /// Only with a KMS encryption type.
    pub kms_key: Option<String>,
}

impl CreateRepositoryRequest {
    /// A repository with ECR's defaults: mutable tags, no scan on push, AES256.
    pub fn new(repository_name: RepositoryName) -> Self {
        CreateRepositoryRequest {
            registry_id: None,
            repository_name,
            tags: Vec::new(),
            image_tag_mutability: TagMutability::default(),
            scan_on_push: false,
            encryption_type: EncryptionType::default(),
            kms_key: None,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageScanningConfigurationOut {
    pub scan_on_push: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionConfigurationOut {
    pub encryption_type: EncryptionType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    pub repository_arn: String,
    pub registry_id: String,
    pub repository_name: String,
    pub repository_uri: String,
    /// Seconds since the epoch (AWS JSON timestamps).
    pub created_at: f64,
    pub image_tag_mutability: TagMutability,
    pub image_scanning_configuration: ImageScanningConfigurationOut,
    pub encryption_configuration: EncryptionConfigurationOut,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRepositoryResponse {
    pub repository: Repository,
}

/// Which repositories DescribeRepositories describes.
#[derive(Debug, Clone)]
pub enum RepositorySelection {
    /// These (1..=100), each of which must exist.
    Named(Vec<RepositoryName>),
    /// All of them, a page at a time in name order.
    Page(Page),
}

#[derive(Debug, Clone)]
pub struct DescribeRepositoriesRequest {
    pub registry_id: Option<RegistryId>,
    pub selection: RepositorySelection,
}

impl DescribeRepositoriesRequest {
    pub fn new(selection: RepositorySelection) -> Self {
        DescribeRepositoriesRequest {
            registry_id: None,
            selection,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeRepositoriesResponse {
    pub repositories: Vec<Repository>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "token")]
    pub next_token: Option<PageToken>,
}

fn token<S: serde::Serializer>(t: &Option<PageToken>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(t),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone)]
pub struct DeleteRepositoryRequest {
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
    /// Delete even with images in it.
    pub force: bool,
}

impl DeleteRepositoryRequest {
    pub fn new(repository_name: RepositoryName) -> Self {
        DeleteRepositoryRequest {
            registry_id: None,
            repository_name,
            force: false,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRepositoryResponse {
    pub repository: Repository,
}

/// A layer digest of BatchCheckLayerAvailability as sent, or the failure code it earns.
pub type LayerDigestQuery = Sent<Result<Digest, LayerFailureCode>>;

#[derive(Debug, Clone)]
pub struct BatchCheckLayerAvailabilityRequest {
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
    /// 1..=100 digests, in request order.
    pub layer_digests: Vec<LayerDigestQuery>,
}

impl BatchCheckLayerAvailabilityRequest {
    pub fn new(repository_name: RepositoryName, layer_digests: Vec<LayerDigestQuery>) -> Self {
        BatchCheckLayerAvailabilityRequest {
            registry_id: None,
            repository_name,
            layer_digests,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub layer_digest: String,
    pub layer_availability: LayerAvailability,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerFailure {
    pub layer_digest: String,
    pub failure_code: LayerFailureCode,
    pub failure_reason: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchCheckLayerAvailabilityResponse {
    pub layers: Vec<Layer>,
    pub failures: Vec<LayerFailure>,
}

/// The model's `ImageIdentifier` as answered (and as a request sent it).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIdentifier {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_tag: Option<String>,
}

impl From<&ImageId> for ImageIdentifier {
    fn from(id: &ImageId) -> Self {
        ImageIdentifier {
            image_digest: id.digest().map(Digest::to_string),
            image_tag: id.tag().map(|t| t.to_string()),
        }
    }
}

/// An image identifier of a request: what was sent, and the image it names or the failure code
/// it earns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedImage {
    pub sent: ImageIdentifier,
    pub id: Result<ImageId, ImageFailureCode>,
}

impl RequestedImage {
    /// Parses an identifier as sent.
    pub fn new(sent: ImageIdentifier) -> Self {
        let id = ImageId::parse(sent.image_digest.as_deref(), sent.image_tag.as_deref());
        RequestedImage { sent, id }
    }
}

impl From<ImageId> for RequestedImage {
    fn from(id: ImageId) -> Self {
        RequestedImage {
            sent: ImageIdentifier::from(&id),
            id: Ok(id),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PutImageRequest {
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
    /// 1..=4,194,304 characters, kept exactly as sent (its digest is that of these bytes).
    pub image_manifest: String,
    /// As sent: the manifest parser compares it with the document's own `mediaType`.
    pub image_manifest_media_type: Option<String>,
    pub image_tag: Option<ImageTag>,
    /// The digest the client expects, as sent; `value` is `None` when it is no digest at all
    /// (then it matches nothing).
    pub image_digest: Option<Sent<Option<Digest>>>,
}

impl PutImageRequest {
    pub fn new(repository_name: RepositoryName, image_manifest: String) -> Self {
        PutImageRequest {
            registry_id: None,
            repository_name,
            image_manifest,
            image_manifest_media_type: None,
            image_tag: None,
            image_digest: None,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub registry_id: String,
    pub repository_name: String,
    pub image_id: ImageIdentifier,
    pub image_manifest: String,
    pub image_manifest_media_type: ManifestMediaType,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PutImageResponse {
    pub image: Image,
}

#[derive(Debug, Clone)]
pub struct BatchGetImageRequest {
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
    /// 1..=100.
    pub image_ids: Vec<RequestedImage>,
    /// 1..=100 when given; nothing is converted, so they only pass validation.
    pub accepted_media_types: Option<Vec<String>>,
}

impl BatchGetImageRequest {
    pub fn new(repository_name: RepositoryName, image_ids: Vec<RequestedImage>) -> Self {
        BatchGetImageRequest {
            registry_id: None,
            repository_name,
            image_ids,
            accepted_media_types: None,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFailure {
    pub image_id: ImageIdentifier,
    pub failure_code: ImageFailureCode,
    pub failure_reason: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchGetImageResponse {
    pub images: Vec<Image>,
    pub failures: Vec<ImageFailure>,
}

/// `filter` of ListImages and DescribeImages; absent members are `ANY`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImageFilter {
    pub tag_status: TagStatus,
    pub image_status: ImageStatusFilter,
}

#[derive(Debug, Clone)]
pub struct ListImagesRequest {
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
    pub page: Page,
    pub filter: ImageFilter,
}

impl ListImagesRequest {
    /// The first page of 100, unfiltered.
    pub fn new(repository_name: RepositoryName) -> Self {
        ListImagesRequest {
            registry_id: None,
            repository_name,
            page: Page::first(100),
            filter: ImageFilter::default(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListImagesResponse {
    pub image_ids: Vec<ImageIdentifier>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "token")]
    pub next_token: Option<PageToken>,
}

/// Which images DescribeImages describes.
#[derive(Debug, Clone)]
pub enum ImageSelection {
    /// These (1..=100); one that is not there fails the request.
    Ids(Vec<RequestedImage>),
    /// All of them, a page at a time in digest order.
    Page(Page),
}

#[derive(Debug, Clone)]
pub struct DescribeImagesRequest {
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
    pub selection: ImageSelection,
    pub filter: ImageFilter,
}

impl DescribeImagesRequest {
    pub fn new(repository_name: RepositoryName, selection: ImageSelection) -> Self {
        DescribeImagesRequest {
            registry_id: None,
            repository_name,
            selection,
            filter: ImageFilter::default(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageDetail {
    pub registry_id: String,
    pub repository_name: String,
    pub image_digest: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_tags: Vec<String>,
    pub image_size_in_bytes: u64,
    /// Seconds since the epoch.
    pub image_pushed_at: f64,
    pub image_manifest_media_type: ManifestMediaType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_manifest_digest: Option<String>,
    pub image_status: ImageStatus,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeImagesResponse {
    pub image_details: Vec<ImageDetail>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "token")]
    pub next_token: Option<PageToken>,
}

#[derive(Debug, Clone)]
pub struct BatchDeleteImageRequest {
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
    /// 1..=100.
    pub image_ids: Vec<RequestedImage>,
}

impl BatchDeleteImageRequest {
    pub fn new(repository_name: RepositoryName, image_ids: Vec<RequestedImage>) -> Self {
        BatchDeleteImageRequest {
            registry_id: None,
            repository_name,
            image_ids,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchDeleteImageResponse {
    pub image_ids: Vec<ImageIdentifier>,
    pub failures: Vec<ImageFailure>,
}

#[derive(Debug, Clone)]
pub struct GetDownloadUrlForLayerRequest {
    pub registry_id: Option<RegistryId>,
    pub repository_name: RepositoryName,
    /// As sent, for the messages that name it.
    pub layer_digest: Sent<Digest>,
}

impl GetDownloadUrlForLayerRequest {
    pub fn new(repository_name: RepositoryName, layer_digest: Sent<Digest>) -> Self {
        GetDownloadUrlForLayerRequest {
            registry_id: None,
            repository_name,
            layer_digest,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetDownloadUrlForLayerResponse {
    pub download_url: String,
    pub layer_digest: String,
}

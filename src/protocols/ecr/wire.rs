//! Requests as the wire carries them, and their conversion into the service's typed requests.
//!
//! Every member is optional here, as in JSON; [`TryFrom`] checks presence and the model's
//! constraints once, member by member in the order ECR reports them, and answers the modelled
//! `InvalidParameterException` (see src/domain/model.rs for the rules and their wording). What
//! passes is a typed request whose values the service takes as they are.

use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::domain::error::EcrError;
use crate::domain::limits::MAX_LAYER_PART;
use crate::domain::model::{
    Digest, EncryptionType, ImageStatusFilter, ImageTag, LayerFailureCode, Page, RegistryId,
    RepositoryName, Sent, TagMutability, TagStatus, UploadId,
};
use crate::domain::{check_len, invalid, required};
use crate::service::types as typed;
use crate::service::types::ImageIdentifier as SentImageId;

/// `maxResults` when a listing names none.
const DEFAULT_PAGE: usize = 100;
/// `imageManifest` length bound of the model.
const MANIFEST_MAX: usize = 4_194_304;

/// Reads a JSON list member keeping at most `MAX + 1` of its elements, so that a list of millions
/// costs no more memory than one of `MAX + 1`, and the member's length check (`MAX` is its
/// model's bound) still refuses it with the same message. Every element is still read into its
/// type (and then dropped), so a malformed element past the bound is reported as before.
fn at_most<'de, D, T, const MAX: usize>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct AtMost<T, const MAX: usize>(Vec<T>);

    impl<'de, T: Deserialize<'de>, const MAX: usize> Deserialize<'de> for AtMost<T, MAX> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Elements<T, const MAX: usize>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for Elements<T, MAX> {
                type Value = Vec<T>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    // As serde's own `Vec` says, so the answers read the same.
                    f.write_str("a sequence")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                    let hint = seq.size_hint().unwrap_or(0).min(MAX + 1);
                    let mut kept = Vec::with_capacity(hint);
                    while let Some(element) = seq.next_element::<T>()? {
                        if kept.len() <= MAX {
                            kept.push(element);
                        }
                    }
                    Ok(kept)
                }
            }
            d.deserialize_seq(Elements::<T, MAX>(PhantomData))
                .map(AtMost)
        }
    }

    Ok(Option::<AtMost<T, MAX>>::deserialize(d)?.map(|a| a.0))
}

fn registry(id: Option<String>) -> Result<Option<RegistryId>, EcrError> {
    id.map(|id| RegistryId::parse("registryId", &id))
        .transpose()
}

fn repository(name: Option<String>) -> Result<RepositoryName, EcrError> {
    let name = required("repositoryName", name)?;
    RepositoryName::parse("repositoryName", &name)
}

fn upload_id(id: Option<String>) -> Result<UploadId, EcrError> {
    let id = required("uploadId", id)?;
    UploadId::parse("uploadId", &id)
}

fn nonnegative(member: &str, v: Option<i64>) -> Result<u64, EcrError> {
    let v = required(member, v)?;
    u64::try_from(v).map_err(|_| invalid(member, "must have value greater than or equal to 0"))
}

/// `imageIds`: present, 1..=100 of them; each is then resolved or failed on its own.
fn image_ids(ids: Option<Vec<ImageIdentifier>>) -> Result<Vec<typed::RequestedImage>, EcrError> {
    let ids = required("imageIds", ids)?;
    check_len("imageIds", ids.len(), 1, 100)?;
    Ok(ids.into_iter().map(ImageIdentifier::requested).collect())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitiateLayerUploadRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
}

impl TryFrom<InitiateLayerUploadRequest> for typed::InitiateLayerUploadRequest {
    type Error = EcrError;
    fn try_from(w: InitiateLayerUploadRequest) -> Result<Self, EcrError> {
        Ok(typed::InitiateLayerUploadRequest {
            registry_id: registry(w.registry_id)?,
            repository_name: repository(w.repository_name)?,
        })
    }
}

/// UploadLayerPart with its blob already decoded from base64 (see `decode_upload_part` in
/// src/protocols/ecr.rs).
#[derive(Default)]
pub struct UploadLayerPartRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
    pub upload_id: Option<String>,
    pub part_first_byte: Option<i64>,
    pub part_last_byte: Option<i64>,
    pub layer_part_blob: Option<Bytes>,
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
            .field(
                "layer_part_blob_len",
                &self.layer_part_blob.as_ref().map(Bytes::len),
            )
            .finish()
    }
}

impl TryFrom<UploadLayerPartRequest> for typed::UploadLayerPartRequest {
    type Error = EcrError;
    fn try_from(w: UploadLayerPartRequest) -> Result<Self, EcrError> {
        let registry_id = registry(w.registry_id)?;
        let repository_name = repository(w.repository_name)?;
        let upload_id = upload_id(w.upload_id)?;
        let part_first_byte = nonnegative("partFirstByte", w.part_first_byte)?;
        let part_last_byte = nonnegative("partLastByte", w.part_last_byte)?;
        let layer_part_blob = required("layerPartBlob", w.layer_part_blob)?;
        check_len(
            "layerPartBlob",
            layer_part_blob.len(),
            0,
            MAX_LAYER_PART as usize,
        )?;
        Ok(typed::UploadLayerPartRequest {
            registry_id,
            repository_name,
            upload_id,
            part_first_byte,
            part_last_byte,
            layer_part_blob,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteLayerUploadRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
    pub upload_id: Option<String>,
    #[serde(default, deserialize_with = "at_most::<_, _, 100>")]
    pub layer_digests: Option<Vec<String>>,
}

impl TryFrom<CompleteLayerUploadRequest> for typed::CompleteLayerUploadRequest {
    type Error = EcrError;
    fn try_from(w: CompleteLayerUploadRequest) -> Result<Self, EcrError> {
        let registry_id = registry(w.registry_id)?;
        let repository_name = repository(w.repository_name)?;
        let upload_id = upload_id(w.upload_id)?;
        let digests = required("layerDigests", w.layer_digests)?;
        check_len("layerDigests", digests.len(), 1, 100)?;
        let layer_digests = digests
            .iter()
            .map(|d| Digest::parse("layerDigests.member", d))
            .collect::<Result<_, _>>()?;
        Ok(typed::CompleteLayerUploadRequest {
            registry_id,
            repository_name,
            upload_id,
            layer_digests,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageScanningConfiguration {
    pub scan_on_push: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionConfiguration {
    pub encryption_type: Option<String>,
    pub kms_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRepositoryRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
    #[serde(default, deserialize_with = "at_most::<_, _, 200>")]
    pub tags: Option<Vec<Tag>>,
    pub image_tag_mutability: Option<String>,
    pub image_scanning_configuration: Option<ImageScanningConfiguration>,
    pub encryption_configuration: Option<EncryptionConfiguration>,
}

impl TryFrom<CreateRepositoryRequest> for typed::CreateRepositoryRequest {
    type Error = EcrError;
    fn try_from(w: CreateRepositoryRequest) -> Result<Self, EcrError> {
        let registry_id = registry(w.registry_id)?;
        let repository_name = repository(w.repository_name)?;
        let image_tag_mutability = w
            .image_tag_mutability
            .map(|m| TagMutability::parse("imageTagMutability", &m))
            .transpose()?
            .unwrap_or_default();
        let encryption = w.encryption_configuration.unwrap_or_default();
        let encryption_type = encryption
            .encryption_type
            .map(|t| EncryptionType::parse("encryptionConfiguration.encryptionType", &t))
            .transpose()?
            .unwrap_or_default();
        if encryption_type == EncryptionType::Aes256 && encryption.kms_key.is_some() {
            return Err(invalid(
                "encryptionConfiguration.kmsKey",
                "must be absent when encryptionType is AES256",
            ));
        }
        let wire_tags = w.tags.unwrap_or_default();
        if wire_tags.len() > 200 {
            return Err(invalid(
                "tags",
                "must have length less than or equal to 200",
            ));
        }
        let mut tags = Vec::with_capacity(wire_tags.len());
        for tag in wire_tags {
            let key = required("tags.member.Key", tag.key)?;
            check_len("tags.member.Key", key.chars().count(), 1, 128)?;
            let value = required("tags.member.Value", tag.value)?;
            tags.push(typed::Tag { key, value });
        }
        Ok(typed::CreateRepositoryRequest {
            registry_id,
            repository_name,
            tags,
            image_tag_mutability,
            scan_on_push: w
                .image_scanning_configuration
                .and_then(|c| c.scan_on_push)
                .unwrap_or(false),
            encryption_type,
            kms_key: encryption.kms_key,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeRepositoriesRequest {
    pub registry_id: Option<String>,
    #[serde(default, deserialize_with = "at_most::<_, _, 100>")]
    pub repository_names: Option<Vec<String>>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
}

impl TryFrom<DescribeRepositoriesRequest> for typed::DescribeRepositoriesRequest {
    type Error = EcrError;
    fn try_from(w: DescribeRepositoriesRequest) -> Result<Self, EcrError> {
        let registry_id = registry(w.registry_id)?;
        let selection = match w.repository_names {
            Some(names) => {
                check_len("repositoryNames", names.len(), 1, 100)?;
                let names = names
                    .iter()
                    .map(|n| RepositoryName::parse("repositoryNames.member", n))
                    .collect::<Result<_, _>>()?;
                if w.next_token.is_some() || w.max_results.is_some() {
                    return Err(invalid(
                        "repositoryNames",
                        "cannot be combined with nextToken or maxResults",
                    ));
                }
                typed::RepositorySelection::Named(names)
            }
            None => typed::RepositorySelection::Page(Page::parse(
                w.max_results,
                w.next_token.as_deref(),
                DEFAULT_PAGE,
            )?),
        };
        Ok(typed::DescribeRepositoriesRequest {
            registry_id,
            selection,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRepositoryRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
    pub force: Option<bool>,
}

impl TryFrom<DeleteRepositoryRequest> for typed::DeleteRepositoryRequest {
    type Error = EcrError;
    fn try_from(w: DeleteRepositoryRequest) -> Result<Self, EcrError> {
        Ok(typed::DeleteRepositoryRequest {
            registry_id: registry(w.registry_id)?,
            repository_name: repository(w.repository_name)?,
            force: w.force.unwrap_or(false),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchCheckLayerAvailabilityRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
    #[serde(default, deserialize_with = "at_most::<_, _, 100>")]
    pub layer_digests: Option<Vec<String>>,
}

impl TryFrom<BatchCheckLayerAvailabilityRequest> for typed::BatchCheckLayerAvailabilityRequest {
    type Error = EcrError;
    fn try_from(w: BatchCheckLayerAvailabilityRequest) -> Result<Self, EcrError> {
        let registry_id = registry(w.registry_id)?;
        let repository_name = repository(w.repository_name)?;
        let digests = required("layerDigests", w.layer_digests)?;
        check_len("layerDigests", digests.len(), 1, 100)?;
        for d in &digests {
            check_len("layerDigests.member", d.chars().count(), 0, 1000)?;
        }
        // A malformed digest fails on its own, as a `failures` entry.
        let layer_digests = digests
            .into_iter()
            .map(|text| {
                let value = if text.is_empty() {
                    Err(LayerFailureCode::MissingLayerDigest)
                } else {
                    Digest::try_parse(&text).ok_or(LayerFailureCode::InvalidLayerDigest)
                };
                Sent { text, value }
            })
            .collect();
        Ok(typed::BatchCheckLayerAvailabilityRequest {
            registry_id,
            repository_name,
            layer_digests,
        })
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIdentifier {
    pub image_digest: Option<String>,
    pub image_tag: Option<String>,
}

impl ImageIdentifier {
    fn requested(self) -> typed::RequestedImage {
        typed::RequestedImage::new(SentImageId {
            image_digest: self.image_digest,
            image_tag: self.image_tag,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutImageRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
    pub image_manifest: Option<String>,
    pub image_manifest_media_type: Option<String>,
    pub image_tag: Option<String>,
    pub image_digest: Option<String>,
}

impl TryFrom<PutImageRequest> for typed::PutImageRequest {
    type Error = EcrError;
    fn try_from(w: PutImageRequest) -> Result<Self, EcrError> {
        let registry_id = registry(w.registry_id)?;
        let repository_name = repository(w.repository_name)?;
        let image_manifest = required("imageManifest", w.image_manifest)?;
        check_len(
            "imageManifest",
            image_manifest.chars().count(),
            1,
            MANIFEST_MAX,
        )?;
        let image_tag = w
            .image_tag
            .map(|t| ImageTag::parse("imageTag", &t))
            .transpose()?;
        // The model puts no pattern on `imageDigest`: one that is no digest matches nothing.
        let image_digest = w.image_digest.map(|text| Sent {
            value: Digest::try_parse(&text),
            text,
        });
        Ok(typed::PutImageRequest {
            registry_id,
            repository_name,
            image_manifest,
            image_manifest_media_type: w.image_manifest_media_type,
            image_tag,
            image_digest,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchGetImageRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
    #[serde(default, deserialize_with = "at_most::<_, _, 100>")]
    pub image_ids: Option<Vec<ImageIdentifier>>,
    #[serde(default, deserialize_with = "at_most::<_, _, 100>")]
    pub accepted_media_types: Option<Vec<String>>,
}

impl TryFrom<BatchGetImageRequest> for typed::BatchGetImageRequest {
    type Error = EcrError;
    fn try_from(w: BatchGetImageRequest) -> Result<Self, EcrError> {
        let registry_id = registry(w.registry_id)?;
        let repository_name = repository(w.repository_name)?;
        let image_ids = image_ids(w.image_ids)?;
        if let Some(types) = &w.accepted_media_types {
            check_len("acceptedMediaTypes", types.len(), 1, 100)?;
        }
        Ok(typed::BatchGetImageRequest {
            registry_id,
            repository_name,
            image_ids,
            accepted_media_types: w.accepted_media_types,
        })
    }
}

/// `filter` of ListImages and DescribeImages.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFilter {
    pub tag_status: Option<String>,
    pub image_status: Option<String>,
}

fn filter(f: Option<ImageFilter>) -> Result<typed::ImageFilter, EcrError> {
    let f = f.unwrap_or_default();
    Ok(typed::ImageFilter {
        tag_status: f
            .tag_status
            .map(|s| TagStatus::parse("filter.tagStatus", &s))
            .transpose()?
            .unwrap_or_default(),
        image_status: f
            .image_status
            .map(|s| ImageStatusFilter::parse("filter.imageStatus", &s))
            .transpose()?
            .unwrap_or_default(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListImagesRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
    pub filter: Option<ImageFilter>,
}

impl TryFrom<ListImagesRequest> for typed::ListImagesRequest {
    type Error = EcrError;
    fn try_from(w: ListImagesRequest) -> Result<Self, EcrError> {
        let registry_id = registry(w.registry_id)?;
        let repository_name = repository(w.repository_name)?;
        let page = Page::parse(w.max_results, w.next_token.as_deref(), DEFAULT_PAGE)?;
        let filter = filter(w.filter)?;
        Ok(typed::ListImagesRequest {
            registry_id,
            repository_name,
            page,
            filter,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeImagesRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
    #[serde(default, deserialize_with = "at_most::<_, _, 100>")]
    pub image_ids: Option<Vec<ImageIdentifier>>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
    pub filter: Option<ImageFilter>,
}

impl TryFrom<DescribeImagesRequest> for typed::DescribeImagesRequest {
    type Error = EcrError;
    fn try_from(w: DescribeImagesRequest) -> Result<Self, EcrError> {
        let registry_id = registry(w.registry_id)?;
        let repository_name = repository(w.repository_name)?;
        let filter = filter(w.filter)?;
        let selection = match w.image_ids {
            Some(ids) => {
                let ids = image_ids(Some(ids))?;
                if w.next_token.is_some() || w.max_results.is_some() {
                    return Err(invalid(
                        "imageIds",
                        "cannot be combined with nextToken or maxResults",
                    ));
                }
                typed::ImageSelection::Ids(ids)
            }
            None => typed::ImageSelection::Page(Page::parse(
                w.max_results,
                w.next_token.as_deref(),
                DEFAULT_PAGE,
            )?),
        };
        Ok(typed::DescribeImagesRequest {
            registry_id,
            repository_name,
            selection,
            filter,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchDeleteImageRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
    #[serde(default, deserialize_with = "at_most::<_, _, 100>")]
    pub image_ids: Option<Vec<ImageIdentifier>>,
}

impl TryFrom<BatchDeleteImageRequest> for typed::BatchDeleteImageRequest {
    type Error = EcrError;
    fn try_from(w: BatchDeleteImageRequest) -> Result<Self, EcrError> {
        let registry_id = registry(w.registry_id)?;
        let repository_name = repository(w.repository_name)?;
        let image_ids = image_ids(w.image_ids)?;
        Ok(typed::BatchDeleteImageRequest {
            registry_id,
            repository_name,
            image_ids,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetDownloadUrlForLayerRequest {
    pub registry_id: Option<String>,
    pub repository_name: Option<String>,
    pub layer_digest: Option<String>,
}

impl TryFrom<GetDownloadUrlForLayerRequest> for typed::GetDownloadUrlForLayerRequest {
    type Error = EcrError;
    fn try_from(w: GetDownloadUrlForLayerRequest) -> Result<Self, EcrError> {
        let registry_id = registry(w.registry_id)?;
        let repository_name = repository(w.repository_name)?;
        let text = required("layerDigest", w.layer_digest)?;
        let value = Digest::parse("layerDigest", &text)?;
        Ok(typed::GetDownloadUrlForLayerRequest {
            registry_id,
            repository_name,
            layer_digest: Sent { text, value },
        })
    }
}

//! CreateRepository, DescribeRepositories, DeleteRepository.

use super::types::*;
use super::{Service, now_ms};
use crate::domain;
use crate::domain::error::{EcrError, StoreError};
use crate::ports::{BlobStore, MetadataStore, RepositoryRecord};

const MUTABILITY: [&str; 4] = [
    "MUTABLE",
    "IMMUTABLE",
    "MUTABLE_WITH_EXCLUSION",
    "IMMUTABLE_WITH_EXCLUSION",
];
const ENCRYPTION: [&str; 3] = ["AES256", "KMS", "KMS_DSSE"];

fn enum_value(member: &str, value: &str, allowed: &[&str]) -> Result<(), EcrError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(domain::invalid(
            member,
            format_args!(
                "Member must satisfy enum value set: [{}]",
                allowed.join(", ")
            ),
        ))
    }
}

impl<M: MetadataStore, B: BlobStore> Service<M, B> {
    pub(crate) fn repository_out(&self, r: &RepositoryRecord) -> Repository {
        let region = &self.settings.region;
        Repository {
            repository_arn: format!(
                "arn:aws:ecr:{region}:{}:repository/{}",
                r.registry_id, r.name
            ),
            registry_id: r.registry_id.clone(),
            repository_name: r.name.clone(),
            repository_uri: format!(
                "{}.dkr.ecr.{region}.amazonaws.com/{}",
                r.registry_id, r.name
            ),
            created_at: r.created_at_ms as f64 / 1000.0,
            image_tag_mutability: r.image_tag_mutability.clone(),
            image_scanning_configuration: ImageScanningConfigurationOut {
                scan_on_push: r.scan_on_push,
            },
            encryption_configuration: EncryptionConfigurationOut {
                encryption_type: r.encryption_type.clone(),
                kms_key: r.kms_key.clone(),
            },
        }
    }

    /// CreateRepository: a new, empty repository in our registry.
    pub async fn create_repository(
        &self,
        req: CreateRepositoryRequest,
    ) -> Result<CreateRepositoryResponse, EcrError> {
        let registry = self.registry(req.registry_id.as_deref())?;
        let name = domain::required("repositoryName", req.repository_name)?;
        domain::repository_name("repositoryName", &name)?;
        let mutability = req.image_tag_mutability.unwrap_or_else(|| "MUTABLE".into());
        enum_value("imageTagMutability", &mutability, &MUTABILITY)?;
        let encryption = req.encryption_configuration.unwrap_or_default();
        let encryption_type = domain::required(
            "encryptionConfiguration.encryptionType",
            encryption.encryption_type.or(Some("AES256".into())),
        )?;
        enum_value(
            "encryptionConfiguration.encryptionType",
            &encryption_type,
            &ENCRYPTION,
        )?;
        if encryption_type == "AES256" && encryption.kms_key.is_some() {
            return Err(domain::invalid(
                "encryptionConfiguration.kmsKey",
                "must be absent when encryptionType is AES256",
            ));
        }
        let tags = req.tags.unwrap_or_default();
        if tags.len() > 200 {
            return Err(domain::invalid(
                "tags",
                "must have length less than or equal to 200",
            ));
        }
        for tag in &tags {
            let key = domain::required("tags.member.Key", tag.key.as_deref())?;
            domain::check_len("tags.member.Key", key.chars().count(), 1, 128)?;
            domain::required("tags.member.Value", tag.value.as_deref())?;
        }
        if registry != self.settings.registry_id {
            // Only our own registry can hold repositories.
            return Err(EcrError::InvalidParameter(format!(
                "Invalid parameter at 'registryId' failed to satisfy constraint: 'must be the registry of this service ({})'",
                self.settings.registry_id
            )));
        }
        let record = RepositoryRecord {
            registry_id: registry.clone(),
            name: name.clone(),
            created_at_ms: now_ms(),
            image_tag_mutability: mutability,
            scan_on_push: req
                .image_scanning_configuration
                .and_then(|c| c.scan_on_push)
                .unwrap_or(false),
            encryption_type,
            kms_key: encryption.kms_key,
        };
        match self.meta.create_repository(&record).await {
            Ok(()) => Ok(CreateRepositoryResponse {
                repository: self.repository_out(&record),
            }),
            Err(StoreError::AlreadyExists) => Err(EcrError::RepositoryAlreadyExists(format!(
                "The repository with name '{name}' already exists in the registry with id '{registry}'"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// DescribeRepositories: the named repositories, or all of them a page at a time.
    pub async fn describe_repositories(
        &self,
        req: DescribeRepositoriesRequest,
    ) -> Result<DescribeRepositoriesResponse, EcrError> {
        let registry = self.registry(req.registry_id.as_deref())?;
        if let Some(names) = req.repository_names {
            domain::check_len("repositoryNames", names.len(), 1, 100)?;
            for name in &names {
                domain::repository_name("repositoryNames.member", name)?;
            }
            if req.next_token.is_some() || req.max_results.is_some() {
                return Err(EcrError::InvalidParameter(
                    "Invalid parameter at 'repositoryNames' failed to satisfy constraint: 'cannot be combined with nextToken or maxResults'".into(),
                ));
            }
            let mut repositories = Vec::with_capacity(names.len());
            for name in &names {
                let record = self.find_repository(&registry, name).await?;
                repositories.push(self.repository_out(&record));
            }
            return Ok(DescribeRepositoriesResponse {
                repositories,
                next_token: None,
            });
        }
        let max = super::page_size(req.max_results, 100)?;
        let after = super::page_after(req.next_token.as_deref())?;
        if registry != self.settings.registry_id {
            return Ok(DescribeRepositoriesResponse {
                repositories: Vec::new(),
                next_token: None,
            });
        }
        let all = self.meta.list_repositories(&registry).await?;
        let entries = all.iter().map(|r| (r.name.clone(), r)).collect();
        let (page, next_token) = super::paginate(entries, after.as_deref(), max);
        Ok(DescribeRepositoriesResponse {
            repositories: page.into_iter().map(|r| self.repository_out(r)).collect(),
            next_token,
        })
    }

    /// DeleteRepository: removes the repository and the layers, images and tags recorded in it;
    /// a repository with images only with `force`.
    pub async fn delete_repository(
        &self,
        req: DeleteRepositoryRequest,
    ) -> Result<DeleteRepositoryResponse, EcrError> {
        let record = self
            .repository(req.registry_id.as_deref(), req.repository_name.as_deref())
            .await?;
        // Layers that no image references are not content ECR counts; images are.
        if !req.force.unwrap_or(false)
            && !self
                .meta
                .list_images(&record.registry_id, &record.name)
                .await?
                .is_empty()
        {
            return Err(EcrError::RepositoryNotEmpty(format!(
                "The repository with name '{}' in registry with id '{}' cannot be deleted because it still contains images",
                record.name, record.registry_id
            )));
        }
        if !self
            .meta
            .delete_repository(&record.registry_id, &record.name)
            .await?
        {
            return Err(EcrError::repository_not_found(
                &record.registry_id,
                &record.name,
            ));
        }
        Ok(DeleteRepositoryResponse {
            repository: self.repository_out(&record),
        })
    }
}

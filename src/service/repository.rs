//! CreateRepository, DescribeRepositories, DeleteRepository.

use super::Service;
use super::types::*;
use crate::domain::error::{EcrError, StoreError};
use crate::ports::{BlobStore, MetadataStore, RepositoryRecord, UploadState};

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
            repository_uri: match &self.settings.registry_host {
                Some(host) => format!("{host}/{}", r.name),
                None => format!(
                    "{}.dkr.ecr.{region}.amazonaws.com/{}",
                    r.registry_id, r.name
                ),
            },
            created_at: r.created_at_ms as f64 / 1000.0,
            image_tag_mutability: r.image_tag_mutability,
            image_scanning_configuration: ImageScanningConfigurationOut {
                scan_on_push: r.scan_on_push,
            },
            encryption_configuration: EncryptionConfigurationOut {
                encryption_type: r.encryption_type,
                kms_key: r.kms_key.clone(),
            },
        }
    }

    /// CreateRepository: a new, empty repository in our registry.
    pub async fn create_repository(
        &self,
        req: CreateRepositoryRequest,
    ) -> Result<CreateRepositoryResponse, EcrError> {
        let registry = self.registry(req.registry_id.as_ref());
        let name = req.repository_name.into_string();
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
            created_at_ms: self.clock_ms(),
            image_tag_mutability: req.image_tag_mutability,
            scan_on_push: req.scan_on_push,
            encryption_type: req.encryption_type,
            kms_key: req.kms_key,
            // Fresh for every creation: nothing of an earlier repository of this name (its
            // uploads above all) counts in this one.
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
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
        let registry = self.registry(req.registry_id.as_ref());
        let page = match req.selection {
            RepositorySelection::Named(names) => {
                let mut repositories = Vec::with_capacity(names.len());
                for name in &names {
                    let record = self.find_repository(&registry, name.as_str()).await?;
                    repositories.push(self.repository_out(&record));
                }
                return Ok(DescribeRepositoriesResponse {
                    repositories,
                    next_token: None,
                });
            }
            RepositorySelection::Page(page) => page,
        };
        if registry != self.settings.registry_id {
            return Ok(DescribeRepositoriesResponse {
                repositories: Vec::new(),
                next_token: None,
            });
        }
        let all = self.meta.list_repositories(&registry).await?;
        let entries = all.iter().map(|r| (r.name.clone(), r)).collect();
        let (page, next_token) = super::paginate(entries, &page);
        Ok(DescribeRepositoriesResponse {
            repositories: page.into_iter().map(|r| self.repository_out(r)).collect(),
            next_token,
        })
    }

    /// DeleteRepository: removes the repository and the layers, images and tags recorded in it,
    /// and ends its uploads (records, staged bytes, multipart uploads); a repository with images
    /// only with `force`. An upload that slips in meanwhile is of the deleted incarnation: it
    /// accepts nothing more and records no layer, and expires.
    pub async fn delete_repository(
        &self,
        req: DeleteRepositoryRequest,
    ) -> Result<DeleteRepositoryResponse, EcrError> {
        let record = self
            .repository(req.registry_id.as_ref(), &req.repository_name)
            .await?;
        // Layers that no image references are not content ECR counts; images are.
        if !req.force
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
        self.end_uploads(&record).await;
        Ok(DeleteRepositoryResponse {
            repository: self.repository_out(&record),
        })
    }

    /// Removes the uploads of deleted incarnations of `record`'s name with their bytes (best
    /// effort: what is left expires and is swept). The repository is read after the uploads are
    /// listed: an upload listed was started before that read, so if the name is free then, or
    /// another incarnation's, the upload's incarnation is a deleted one. Only uploads of the
    /// incarnation read (one created again meanwhile) are left alone.
    async fn end_uploads(&self, record: &RepositoryRecord) {
        let (registry, name) = (&record.registry_id, &record.name);
        let listed = self.meta.repository_uploads(registry, name).await;
        let current = self.meta.get_repository(registry, name).await;
        let (uploads, current) = match (listed, current) {
            (Ok(uploads), Ok(current)) => (uploads, current.map(|r| r.incarnation)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(repository = %name, error = %crate::domain::error::chain(&e), "listing the deleted repository's uploads failed");
                return;
            }
        };
        for up in uploads
            .iter()
            .filter(|u| current.as_ref() != Some(&u.repository_incarnation))
        {
            if up.state != UploadState::Done {
                self.drop_objects(vec![up.blob_key.clone()]).await;
            }
            self.forget(up, true).await;
        }
    }
}

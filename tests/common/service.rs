//! The service in-process: construction, the settings the suites share, and requests made the
//! way a client makes them, on any backend.

use bytes::Bytes;
use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::domain::limits::S3_MIN_PART_SIZE;
use ecr_layer_upload::ports::{BlobStore, MetadataStore};
use ecr_layer_upload::service::types::*;
use ecr_layer_upload::service::{Service, Settings};

pub type MemoryService = Service<MemoryMetadata, MemoryBlobs>;

/// The service on fresh in-memory adapters.
pub fn memory_service(settings: Settings) -> MemoryService {
    Service::new(MemoryMetadata::new(), MemoryBlobs::new(), settings)
}

/// Coalescing on S3's floor: any ECR part size is accepted, and every staged 5 MiB becomes a
/// multipart part.
pub fn small_parts() -> Settings {
    Settings {
        min_part_size: 0,
        s3_part_size: S3_MIN_PART_SIZE,
        ..Settings::default()
    }
}

pub async fn create_repository<M: MetadataStore, B: BlobStore>(svc: &Service<M, B>, name: &str) {
    svc.create_repository(CreateRepositoryRequest::new(name.parse().unwrap()))
        .await
        .unwrap();
}

/// A new upload in repository `name`; checks the advertised part size.
pub async fn initiate<M: MetadataStore, B: BlobStore>(svc: &Service<M, B>, name: &str) -> String {
    let out = svc
        .initiate_layer_upload(InitiateLayerUploadRequest::new(name.parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(out.part_size, svc.settings().part_size);
    out.upload_id
}

/// `bytes` as the part of upload `id` that starts at byte `first`.
pub async fn part<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &str,
    id: &str,
    first: u64,
    bytes: &[u8],
) -> Result<UploadLayerPartResponse, EcrError> {
    svc.upload_layer_part(UploadLayerPartRequest::new(
        name.parse().unwrap(),
        id.parse().unwrap(),
        first,
        Bytes::copy_from_slice(bytes),
    ))
    .await
}

pub async fn complete<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &str,
    id: &str,
    digests: &[&str],
) -> Result<CompleteLayerUploadResponse, EcrError> {
    svc.complete_layer_upload(CompleteLayerUploadRequest::new(
        name.parse().unwrap(),
        id.parse().unwrap(),
        digests.iter().map(|s| s.parse().unwrap()).collect(),
    ))
    .await
}

/// Uploads `data` to repository `name` as one part; returns its digest.
pub async fn push_blob<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &str,
    data: &[u8],
) -> String {
    let id = initiate(svc, name).await;
    part(svc, name, &id, 0, data).await.unwrap();
    let digest = super::digest(data);
    complete(svc, name, &id, &[&digest]).await.unwrap();
    digest
}

/// The last valid byte an InvalidLayerPartException reports.
pub fn last_valid(err: &EcrError) -> u64 {
    match err {
        EcrError::InvalidLayerPart {
            last_valid_byte_received,
            ..
        } => *last_valid_byte_received,
        other => panic!("expected InvalidLayerPartException, got {other}"),
    }
}

//! The service: ECR's operations over the storage ports, independent of wire and backend.

mod direct;
mod early;
mod images;
mod incremental;
mod oci;
mod repository;
mod stream;
pub mod types;
mod upload;
mod verify;

use std::sync::Arc;

use crate::domain::clock::{Clock, SystemClock};
use crate::domain::error::EcrError;
use crate::domain::model::{Page, PageToken, RegistryId, RepositoryName};
use crate::ports::{BlobStore, MetadataStore, RepositoryRecord};

pub use direct::DIRECT_MIN_PART;
pub use images::{DOWNLOAD_URL_SECS, INLINE_MANIFEST_MAX};
pub use incremental::{Running as RunningHash, VerifyMode, part_crc};
pub use oci::{Blob, Reference, StoredManifest};
pub use stream::{StreamFailure, Streamed};
pub use upload::{COMPLETING_LEASE_MS, HEARTBEAT, part_fingerprint, staging_key};

/// What the operations need to know about their deployment, fixed at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The registry served; requests naming another one find no repository.
    pub registry_id: String,
    /// Region written into ARNs and repository URIs.
    pub region: String,
    /// `partSize` answered by InitiateLayerUpload.
    pub part_size: u64,
    /// Smallest ECR part, other than the last, that CompleteLayerUpload accepts.
    pub min_part_size: u64,
    /// Staged bytes become one multipart part once at least this many are held (≥ 5 MiB).
    pub s3_part_size: u64,
    /// Seconds an unfinished upload lives after its last part.
    pub upload_ttl_secs: u64,
    /// Seconds an upload may live from its creation, however active: past it the upload is gone
    /// and swept. It keeps every upload inside the bucket's lifecycle rules (template.yaml),
    /// which count from creation: they must sit at least [`UPLOAD_AGE_MARGIN_SECS`] above it.
    pub max_upload_age_secs: u64,
    /// The front door's bound on one answer, if it has one. Only BatchGetImage, which returns
    /// whole manifests, can come near it.
    pub response_limit: Option<ResponseLimit>,
    /// The registry's address as clients reach it (`host[:port]`), the start of every
    /// `repositoryUri`; `None` names ECR's own (`<registry>.dkr.ecr.<region>.amazonaws.com`).
    pub registry_host: Option<String>,
    /// A push through the OCI API (`/v2/`) to a repository that does not exist creates it
    /// (with ECR's defaults) instead of answering NAME_UNKNOWN.
    pub create_on_push: bool,
    /// How CompleteLayerUpload verifies the layer's digest: by streaming the assembled object
    /// (the default), or from a SHA-256 state each part advances (`service/incremental.rs`).
    pub verify: VerifyMode,
}

/// A front door's bound on the size of one answer, with its way of counting: BatchGetImage stops
/// with `LimitExceededException` as soon as the images answered so far would pass `max_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct ResponseLimit {
    pub max_bytes: u64,
    /// What each image or failure entry adds besides a manifest.
    pub entry_overhead: u64,
    /// What a manifest's text adds, as the front door encodes it.
    pub manifest_cost: fn(&str) -> u64,
}

impl PartialEq for ResponseLimit {
    /// Limits are equal when they bound alike; the cost function is not compared (function
    /// addresses are not stable across codegen units).
    fn eq(&self, other: &Self) -> bool {
        self.max_bytes == other.max_bytes && self.entry_overhead == other.entry_overhead
    }
}

impl Eq for ResponseLimit {}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            registry_id: "123456789012".into(),
            region: "us-east-1".into(),
            part_size: 10_485_760,
            min_part_size: 5_242_880,
            s3_part_size: 8 * 1024 * 1024,
            upload_ttl_secs: 86_400,
            max_upload_age_secs: DEFAULT_MAX_UPLOAD_AGE_SECS,
            response_limit: None,
            registry_host: None,
            create_on_push: false,
            verify: VerifyMode::Stream,
        }
    }
}

/// The default of [`Settings::max_upload_age_secs`]: 23 hours, an hour under the one-day
/// lifecycle rules of template.yaml.
pub const DEFAULT_MAX_UPLOAD_AGE_SECS: u64 = 23 * 3600;

/// How far the bucket's lifecycle rules (abort incomplete multipart uploads, expire staging
/// objects; both count from creation) must sit above [`Settings::max_upload_age_secs`]: a
/// completion begun just before the cap may hold the upload for its lease (16 minutes), and the
/// multipart upload is created a moment before the upload's record.
pub const UPLOAD_AGE_MARGIN_SECS: u64 = 3600;

pub struct Service<M, B> {
    meta: M,
    blobs: B,
    settings: Settings,
    clock: Arc<dyn Clock>,
    /// Staged segments this process wrote lately (`upload::RecentSegments`).
    recent: upload::RecentSegments,
    /// Hashes of stored bytes read back as `/v2/` chunks were written (`early.rs`).
    early: early::EarlyHashes,
}

/// One page of `entries` (sorted by their keys): those after `after`, at most `max`, and the
/// token of the next page if there is one.
fn paginate<T>(entries: Vec<(String, T)>, page: &Page) -> (Vec<T>, Option<PageToken>) {
    let (after, max) = (page.after.as_ref().map(PageToken::key), page.max_results);
    let mut page: Vec<(String, T)> = entries
        .into_iter()
        .filter(|(key, _)| after.is_none_or(|a| key.as_str() > a))
        .take(max + 1)
        .collect();
    let next = if page.len() > max {
        page.truncate(max);
        page.last().map(|(key, _)| PageToken::after(key))
    } else {
        None
    };
    (page.into_iter().map(|(_, v)| v).collect(), next)
}

impl<M: MetadataStore, B: BlobStore> Service<M, B> {
    pub fn new(meta: M, blobs: B, settings: Settings) -> Self {
        Service {
            recent: upload::RecentSegments::new(settings.s3_part_size),
            early: early::EarlyHashes::new(),
            meta,
            blobs,
            settings,
            clock: Arc::new(SystemClock),
        }
    }

    /// The same service reading the time from `clock` (tests move time with a manual clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Milliseconds since the epoch, by the service's clock.
    pub(crate) fn clock_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn metadata(&self) -> &M {
        &self.meta
    }

    pub fn blobs(&self) -> &B {
        &self.blobs
    }

    /// The registry a request addresses: its `registryId` when given, else ours.
    fn registry(&self, given: Option<&RegistryId>) -> String {
        match given {
            None => self.settings.registry_id.clone(),
            Some(id) => id.to_string(),
        }
    }

    /// The repository a request names.
    async fn repository(
        &self,
        registry_id: Option<&RegistryId>,
        repository_name: &RepositoryName,
    ) -> Result<RepositoryRecord, EcrError> {
        let registry = self.registry(registry_id);
        self.find_repository(&registry, repository_name.as_str())
            .await
    }

    async fn find_repository(
        &self,
        registry: &str,
        name: &str,
    ) -> Result<RepositoryRecord, EcrError> {
        if registry != self.settings.registry_id {
            return Err(EcrError::repository_not_found(registry, name));
        }
        self.meta
            .get_repository(registry, name)
            .await?
            .ok_or_else(|| EcrError::repository_not_found(registry, name))
    }
}

//! The errors the service answers, named after the ECR model's exception shapes.
//!
//! The protocol layer renders each one as `{"__type": <name>, "message": ..., <extra members>}`
//! with the status from [`EcrError::status`]; this is the only list of names and statuses.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EcrError {
    InvalidParameter(String),
    RepositoryNotFound(String),
    RepositoryAlreadyExists(String),
    RepositoryNotEmpty(String),
    UploadNotFound(String),
    InvalidLayerPart {
        message: String,
        registry_id: String,
        repository_name: String,
        upload_id: String,
        last_valid_byte_received: u64,
    },
    InvalidLayer(String),
    LayerPartTooSmall(String),
    LayerAlreadyExists(String),
    EmptyUpload(String),
    LayersNotFound(String),
    LayerInaccessible(String),
    ImageAlreadyExists(String),
    ImageNotFound(String),
    ImageDigestDoesNotMatch(String),
    ImageTagAlreadyExists(String),
    ReferencedImagesNotFound(String),
    LimitExceeded(String),
    /// A failure of ours or of a backend; clients retry these.
    Server(String),
    /// Protocol level: the target names no operation we serve.
    UnknownOperation(String),
    /// Protocol level: the body is not a JSON object of the operation's shape.
    Serialization(String),
}

impl EcrError {
    /// The bare shape name that goes into `__type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::InvalidParameter(_) => "InvalidParameterException",
            Self::RepositoryNotFound(_) => "RepositoryNotFoundException",
            Self::RepositoryAlreadyExists(_) => "RepositoryAlreadyExistsException",
            Self::RepositoryNotEmpty(_) => "RepositoryNotEmptyException",
            Self::UploadNotFound(_) => "UploadNotFoundException",
            Self::InvalidLayerPart { .. } => "InvalidLayerPartException",
            Self::InvalidLayer(_) => "InvalidLayerException",
            Self::LayerPartTooSmall(_) => "LayerPartTooSmallException",
            Self::LayerAlreadyExists(_) => "LayerAlreadyExistsException",
            Self::EmptyUpload(_) => "EmptyUploadException",
            Self::LayersNotFound(_) => "LayersNotFoundException",
            Self::LayerInaccessible(_) => "LayerInaccessibleException",
            Self::ImageAlreadyExists(_) => "ImageAlreadyExistsException",
            Self::ImageNotFound(_) => "ImageNotFoundException",
            Self::ImageDigestDoesNotMatch(_) => "ImageDigestDoesNotMatchException",
            Self::ImageTagAlreadyExists(_) => "ImageTagAlreadyExistsException",
            Self::ReferencedImagesNotFound(_) => "ReferencedImagesNotFoundException",
            Self::LimitExceeded(_) => "LimitExceededException",
            Self::Server(_) => "ServerException",
            Self::UnknownOperation(_) => "UnknownOperationException",
            Self::Serialization(_) => "SerializationException",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::Server(_) => 500,
            _ => 400,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::InvalidLayerPart { message, .. } => message,
            Self::InvalidParameter(m)
            | Self::RepositoryNotFound(m)
            | Self::RepositoryAlreadyExists(m)
            | Self::RepositoryNotEmpty(m)
            | Self::UploadNotFound(m)
            | Self::InvalidLayer(m)
            | Self::LayerPartTooSmall(m)
            | Self::LayerAlreadyExists(m)
            | Self::EmptyUpload(m)
            | Self::LayersNotFound(m)
            | Self::LayerInaccessible(m)
            | Self::ImageAlreadyExists(m)
            | Self::ImageNotFound(m)
            | Self::ImageDigestDoesNotMatch(m)
            | Self::ImageTagAlreadyExists(m)
            | Self::ReferencedImagesNotFound(m)
            | Self::LimitExceeded(m)
            | Self::Server(m)
            | Self::UnknownOperation(m)
            | Self::Serialization(m) => m,
        }
    }

    pub fn repository_not_found(registry: &str, repo: &str) -> Self {
        Self::RepositoryNotFound(format!(
            "The repository with name '{repo}' does not exist in the registry with id '{registry}'"
        ))
    }

    pub fn upload_not_found(registry: &str, repo: &str, upload_id: &str) -> Self {
        Self::UploadNotFound(format!(
            "The upload with id '{upload_id}' does not exist in the repository with name '{repo}' in the registry with id '{registry}'"
        ))
    }
}

impl fmt::Display for EcrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.type_name(), self.message())
    }
}

impl std::error::Error for EcrError {}

/// A storage adapter's failure. `Conflict` is a domain outcome (a conditional write lost), the
/// rest become `ServerException` after being logged.
#[derive(Debug)]
pub enum StoreError {
    /// The condition of a conditional write did not hold.
    Conflict,
    /// The thing to create exists already.
    AlreadyExists,
    /// The thing read does not exist (for blob reads of a key that must exist).
    NotFound(String),
    /// The backend failed; `retryable` says whether the client should try again.
    Backend(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conflict => f.write_str("conditional write lost"),
            Self::AlreadyExists => f.write_str("already exists"),
            Self::NotFound(what) => write!(f, "not found: {what}"),
            Self::Backend(m) => write!(f, "backend failure: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<StoreError> for EcrError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failure");
        EcrError::Server(
            "An internal error occurred in the registry backend; retry the request".into(),
        )
    }
}

//! The errors the service answers, named after the ECR model's exception shapes.
//!
//! The protocol layer renders each one as `{"__type": <name>, "message": ..., <extra members>}`
//! with the status from [`EcrError::status`]; this is the only list of names and statuses.

use std::error::Error;
use std::fmt;

/// An underlying failure of any kind, kept as the `source` of ours.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// What a client reads when a failure underneath (a backend's) answers `ServerException`.
pub const INTERNAL_MESSAGE: &str =
    "An internal error occurred in the registry backend; retry the request";

#[derive(Debug)]
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
    /// A failure of ours that we describe to the client ourselves; clients retry these.
    Server(String),
    /// A failure underneath, a backend's most of all: answered `ServerException` with
    /// [`INTERNAL_MESSAGE`] only, while its chain of causes (`source`) is for the log.
    Internal(BoxError),
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
            Self::Server(_) | Self::Internal(_) => "ServerException",
            Self::UnknownOperation(_) => "UnknownOperationException",
            Self::Serialization(_) => "SerializationException",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::Server(_) | Self::Internal(_) => 500,
            _ => 400,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::InvalidLayerPart { message, .. } => message,
            Self::Internal(_) => INTERNAL_MESSAGE,
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

impl Error for EcrError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Internal(source) => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl EcrError {
    /// A failure underneath, answered with [`INTERNAL_MESSAGE`]; `source` is kept for the log.
    pub fn internal(source: impl Into<BoxError>) -> Self {
        Self::Internal(source.into())
    }
}

/// A storage adapter's failure. `Conflict`, `AlreadyExists` and `NotFound` are domain outcomes;
/// `Backend` is a failure, answered `ServerException` (see [`EcrError::Internal`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The condition of a conditional write did not hold.
    #[error("conditional write lost")]
    Conflict,
    /// The thing to create exists already.
    #[error("already exists")]
    AlreadyExists,
    /// The thing read does not exist (for blob reads of a key that must exist).
    #[error("not found: {0}")]
    NotFound(String),
    /// The backend failed. `context` names the operation and what it was about (key, path,
    /// record); `source` is the failure underneath (an SDK, I/O, database or task error), absent
    /// when the backend itself refused or found something broken.
    #[error("backend failure: {context}")]
    Backend {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl StoreError {
    /// A backend failure caused by `source`, while doing `context` (operation and key).
    pub fn backend(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A backend failure with no error underneath: `context` says what was refused or broken.
    pub fn failure(context: impl Into<String>) -> Self {
        Self::Backend {
            context: context.into(),
            source: None,
        }
    }

    /// Puts the operation `op` in front of a backend failure's context; outcomes pass unchanged.
    pub fn during(self, op: &str) -> Self {
        match self {
            Self::Backend { context, source } => Self::Backend {
                context: format!("{op}: {context}"),
                source,
            },
            outcome => outcome,
        }
    }
}

impl From<StoreError> for EcrError {
    fn from(e: StoreError) -> Self {
        EcrError::internal(e)
    }
}

/// Displays an error followed by its chain of causes, `error: cause: root cause`, for logs.
///
/// A cause whose text its error already shows is left out, so that errors that also print their
/// source do not repeat it.
pub fn chain<'a>(error: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(error)
}

/// See [`chain`].
#[derive(Clone, Copy)]
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !shown.contains(&text) {
                write!(f, ": {text}")?;
                shown = text;
            }
            next = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

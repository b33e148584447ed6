//! The access keys the service verifies requests against (docs/security.md): a port of its own,
//! implemented by every backend, so that `keys create|list|delete` and the server share them.
//!
//! The trait is object-safe (boxed futures) so that the protocol layer can hold any backend's
//! store as `Arc<dyn KeyStore>` without knowing which one it is.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use super::StoreResult;

/// A future of a key store operation.
pub type KeyFuture<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// What a key may do; each level includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// The read operations (and GetAuthorizationToken).
    Pull,
    /// Pull, plus uploads and image writes.
    Push,
    /// Push, plus repository creation and deletion and BatchDeleteImage.
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Pull => "pull",
            Permission::Push => "push",
            Permission::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pull" => Some(Permission::Pull),
            "push" => Some(Permission::Push),
            "admin" => Some(Permission::Admin),
            _ => None,
        }
    }
}

/// One access key. The secret is what SigV4 signatures are checked with; it never leaves the
/// store except towards the verifier and, once, towards the operator who created the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// A label for people; not unique.
    #[serde(default)]
    pub name: String,
    pub permission: Permission,
    /// Repository name patterns (`*` matches any run of characters, `/` included); empty: every
    /// repository.
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Milliseconds since the epoch.
    pub created_at_ms: u64,
}

impl std::fmt::Debug for KeyRecord {
    // The secret is left out, so that no log or panic message can carry it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("access_key_id", &self.access_key_id)
            .field("name", &self.name)
            .field("permission", &self.permission)
            .field("repositories", &self.repositories)
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}

/// The access keys of a deployment.
pub trait KeyStore: Send + Sync + 'static {
    /// Stores a new key; `StoreError::AlreadyExists` if its id is taken.
    fn create_key<'a>(&'a self, key: &'a KeyRecord) -> KeyFuture<'a, ()>;
    /// The key with this id, read fresh from storage.
    fn get_key<'a>(&'a self, access_key_id: &'a str) -> KeyFuture<'a, Option<KeyRecord>>;
    /// Every key, ordered by id.
    fn list_keys(&self) -> KeyFuture<'_, Vec<KeyRecord>>;
    /// Removes the key; whether it was there.
    fn delete_key<'a>(&'a self, access_key_id: &'a str) -> KeyFuture<'a, bool>;
}

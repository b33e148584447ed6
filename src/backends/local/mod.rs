//! The embedded backend: everything in one data directory, no external services.
//!
//! - [`LocalMetadata`] keeps the state of docs/architecture.md ("State") in a redb database (`<dir>/state.redb`),
//!   one record per row serialized as JSON. Each port write is one redb write transaction, which
//!   is what makes the conditional writes (version compare, create-if-absent) atomic: redb runs
//!   write transactions one at a time and commits them durably.
//! - [`LocalBlobs`] keeps bytes as files under `<dir>/blobs/` (docs/architecture.md, "Bytes"): objects at
//!   `objects/<key>`, multipart uploads as directories `multipart/<id>/` holding one data file
//!   that each part is written into at its offset (and renamed into place at completion), or one
//!   file per part for parts written without an offset. Every other write goes to a temporary
//!   file, is fsynced and renamed into place, so a reader or a restart sees either the old or the
//!   new content, never a torn one; a part in place is fdatasynced before it is acknowledged.
//!
//! - [`reconcile`] removes what no record owns any more from the blob directories: temporary
//!   files of writes a crash cut, staging objects and multipart directories of no live upload,
//!   and layer and manifest bytes no record references (after a grace period).
//!
//! Both are cheap to clone (an `Arc` inside) and may be shared across tasks. Both do their
//! blocking work on tokio's blocking pool, never on a runtime worker.

mod blob;
mod keys;
mod meta;
mod reconcile;

pub use blob::LocalBlobs;
pub use keys::LocalKeys;
pub use meta::LocalMetadata;
pub use reconcile::{Reconciled, reconcile};

use crate::domain::error::StoreError;
use crate::ports::StoreResult;

/// Runs blocking work on the blocking pool, turning a lost task (a panic in it, or a runtime
/// shutting down) into a backend error instead of propagating the panic.
async fn blocking<T, F>(what: &'static str, f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StoreResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::backend(format!("{what}: blocking task failed"), e))?
}

//! [`MetadataStore`] on redb: one table per record kind, JSON values, one write transaction per
//! port call.

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::blocking;
use crate::error::StoreError;
use crate::ports::{
    Finish, FlushedPart, LayerRecord, MetadataStore, RepositoryRecord, SideWrite, StagedSegment,
    StoreResult, UploadRecord,
};

/// Bumped when the table layout or the record encoding changes incompatibly, so that an old
/// binary never misreads a newer data directory (or the reverse).
const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (registry, name) → RepositoryRecord. Tuple keys sort element by element, so a registry's
/// repositories are contiguous and sorted by name.
const REPOS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("repositories");
/// upload id → UploadRecord.
const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
/// (expires_at, upload id) → (): an index so the expiry sweep reads only expired uploads,
/// oldest first, instead of scanning every upload.
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("upload_expiry");
/// (upload id, offset) → StagedSegment; numeric keys, so offset order is key order.
const SEGMENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("segments");
/// (upload id, part number) → FlushedPart.
const PARTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("parts");
/// (registry, repository, digest) → LayerRecord.
const LAYERS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("layers");

/// Maps any redb failure to a backend error; redb's error types all convert into `redb::Error`.
trait OrBackend<T> {
    fn db(self) -> StoreResult<T>;
}

impl<T, E: Into<redb::Error>> OrBackend<T> for Result<T, E> {
    fn db(self) -> StoreResult<T> {
        self.map_err(|e| StoreError::Backend(format!("state store: {}", e.into())))
    }
}

fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Backend(format!("state store: cannot encode record: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Backend(format!("state store: cannot decode record: {e}")))
}

/// The embedded [`MetadataStore`]: a redb database at `<dir>/state.redb`. Clones share the
/// database.
#[derive(Clone)]
pub struct LocalMetadata {
    db: Arc<Database>,
}

impl std::fmt::Debug for LocalMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalMetadata").finish_non_exhaustive()
    }
}

impl LocalMetadata {
    /// Opens (creating if needed) the database in `dir`. Fails if another process holds it open.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join("state.redb");
        let db = Database::create(&path).map_err(|e| {
            StoreError::Backend(format!("cannot open state store {}: {e}", path.display()))
        })?;
        // Create every table up front: read transactions cannot create tables, and opening a
        // missing one there is an error rather than an empty table.
        let txn = db.begin_write().db()?;
        {
            let mut meta = txn.open_table(META).db()?;
            let stored = meta.get("schema_version").db()?.map(|g| g.value());
            match stored {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION).db()?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::Backend(format!(
                        "state store {} has schema version {other}, this build reads {SCHEMA_VERSION}",
                        path.display()
                    )));
                }
            }
            txn.open_table(REPOS).db()?;
            txn.open_table(UPLOADS).db()?;
            txn.open_table(EXPIRY).db()?;
            txn.open_table(SEGMENTS).db()?;
            txn.open_table(PARTS).db()?;
            txn.open_table(LAYERS).db()?;
        }
        txn.commit().db()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs `f` in one write transaction and commits it if `f` succeeds. An error from `f` drops
    /// the transaction, which aborts it: nothing of a failed conditional write is kept.
    async fn write<T, F>(&self, what: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        blocking(what, move || {
            let txn = db.begin_write().db()?;
            let out = f(&txn)?;
            txn.commit().db()?;
            Ok(out)
        })
        .await
    }

    /// Runs `f` on a consistent snapshot.
    async fn read<T, F>(&self, what: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        blocking(what, move || {
            let txn = db.begin_read().db()?;
            f(&txn)
        })
        .await
    }
}

/// Loads the stored upload and checks it is the version `upload` was derived from; the
/// condition of every upload write.
fn check_version(
    uploads: &impl ReadableTable<&'static str, &'static [u8]>,
    upload: &UploadRecord,
) -> StoreResult<UploadRecord> {
    let stored: UploadRecord = match uploads.get(upload.upload_id.as_str()).db()? {
        Some(guard) => decode(guard.value())?,
        None => return Err(StoreError::Conflict),
    };
    if Some(stored.version) == upload.version.checked_sub(1) {
        Ok(stored)
    } else {
        Err(StoreError::Conflict)
    }
}

/// Replaces the stored upload by `upload`, keeping the expiry index in step.
fn put_upload(
    txn: &WriteTransaction,
    previous: Option<&UploadRecord>,
    upload: &UploadRecord,
) -> StoreResult<()> {
    let id = upload.upload_id.as_str();
    let mut expiry = txn.open_table(EXPIRY).db()?;
    if let Some(prev) = previous {
        expiry.remove((prev.expires_at, id)).db()?;
    }
    expiry.insert((upload.expires_at, id), ()).db()?;
    txn.open_table(UPLOADS)
        .db()?
        .insert(id, encode(upload)?.as_slice())
        .db()?;
    Ok(())
}

impl MetadataStore for LocalMetadata {
    async fn create_repository(&self, repo: &RepositoryRecord) -> StoreResult<()> {
        let repo = repo.clone();
        self.write("create_repository", move |txn| {
            let mut repos = txn.open_table(REPOS).db()?;
            let key = (repo.registry_id.as_str(), repo.name.as_str());
            if repos.get(key).db()?.is_some() {
                return Err(StoreError::AlreadyExists);
            }
            repos.insert(key, encode(&repo)?.as_slice()).db()?;
            Ok(())
        })
        .await
    }

    async fn get_repository(
        &self,
        registry_id: &str,
        name: &str,
    ) -> StoreResult<Option<RepositoryRecord>> {
        let (registry_id, name) = (registry_id.to_owned(), name.to_owned());
        self.read("get_repository", move |txn| {
            let repos = txn.open_table(REPOS).db()?;
            let found = repos.get((registry_id.as_str(), name.as_str())).db()?;
            found.map(|g| decode(g.value())).transpose()
        })
        .await
    }

    async fn list_repositories(&self, registry_id: &str) -> StoreResult<Vec<RepositoryRecord>> {
        let registry_id = registry_id.to_owned();
        self.read("list_repositories", move |txn| {
            let repos = txn.open_table(REPOS).db()?;
            let mut out = Vec::new();
            for item in repos.range((registry_id.as_str(), "")..).db()? {
                let (key, value) = item.db()?;
                if key.value().0 != registry_id {
                    break;
                }
                out.push(decode(value.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_repository(&self, registry_id: &str, name: &str) -> StoreResult<bool> {
        let (registry_id, name) = (registry_id.to_owned(), name.to_owned());
        self.write("delete_repository", move |txn| {
            let (reg, repo) = (registry_id.as_str(), name.as_str());
            let existed = txn
                .open_table(REPOS)
                .db()?
                .remove((reg, repo))
                .db()?
                .is_some();
            let mut layers = txn.open_table(LAYERS).db()?;
            // The repository's layers are the contiguous run of keys starting at (reg, repo, "").
            let mut doomed: Vec<String> = Vec::new();
            for item in layers.range((reg, repo, "")..).db()? {
                let (key, _) = item.db()?;
                let (r, n, digest) = key.value();
                if r != reg || n != repo {
                    break;
                }
                doomed.push(digest.to_owned());
            }
            for digest in &doomed {
                layers.remove((reg, repo, digest.as_str())).db()?;
            }
            Ok(existed)
        })
        .await
    }

    async fn create_upload(&self, upload: &UploadRecord) -> StoreResult<()> {
        let upload = upload.clone();
        self.write("create_upload", move |txn| {
            if txn
                .open_table(UPLOADS)
                .db()?
                .get(upload.upload_id.as_str())
                .db()?
                .is_some()
            {
                return Err(StoreError::AlreadyExists);
            }
            put_upload(txn, None, &upload)
        })
        .await
    }

    async fn get_upload(&self, upload_id: &str) -> StoreResult<Option<UploadRecord>> {
        let upload_id = upload_id.to_owned();
        self.read("get_upload", move |txn| {
            let uploads = txn.open_table(UPLOADS).db()?;
            let found = uploads.get(upload_id.as_str()).db()?;
            found.map(|g| decode(g.value())).transpose()
        })
        .await
    }

    async fn update_upload(&self, upload: &UploadRecord, side: SideWrite) -> StoreResult<()> {
        let upload = upload.clone();
        self.write("update_upload", move |txn| {
            let stored = check_version(&txn.open_table(UPLOADS).db()?, &upload)?;
            let id = upload.upload_id.as_str();
            match &side {
                SideWrite::None => {}
                SideWrite::Segment(seg) => {
                    txn.open_table(SEGMENTS)
                        .db()?
                        .insert((id, seg.offset), encode(seg)?.as_slice())
                        .db()?;
                }
                SideWrite::Part(part) => {
                    txn.open_table(PARTS)
                        .db()?
                        .insert((id, part.number), encode(part)?.as_slice())
                        .db()?;
                }
            }
            put_upload(txn, Some(&stored), &upload)
        })
        .await
    }

    async fn list_segments(&self, upload_id: &str, from: u64) -> StoreResult<Vec<StagedSegment>> {
        let upload_id = upload_id.to_owned();
        self.read("list_segments", move |txn| {
            let segments = txn.open_table(SEGMENTS).db()?;
            let id = upload_id.as_str();
            segments
                .range((id, from)..=(id, u64::MAX))
                .db()?
                .map(|item| decode(item.db()?.1.value()))
                .collect()
        })
        .await
    }

    async fn delete_segments(&self, upload_id: &str, offsets: &[u64]) -> StoreResult<()> {
        let (upload_id, offsets) = (upload_id.to_owned(), offsets.to_vec());
        self.write("delete_segments", move |txn| {
            let mut segments = txn.open_table(SEGMENTS).db()?;
            for offset in offsets {
                segments.remove((upload_id.as_str(), offset)).db()?;
            }
            Ok(())
        })
        .await
    }

    async fn list_parts(&self, upload_id: &str) -> StoreResult<Vec<FlushedPart>> {
        let upload_id = upload_id.to_owned();
        self.read("list_parts", move |txn| {
            let parts = txn.open_table(PARTS).db()?;
            let id = upload_id.as_str();
            parts
                .range((id, 0)..=(id, u32::MAX))
                .db()?
                .map(|item| decode(item.db()?.1.value()))
                .collect()
        })
        .await
    }

    async fn finish_upload(
        &self,
        upload: &UploadRecord,
        layer: &LayerRecord,
    ) -> StoreResult<Finish> {
        let (upload, layer) = (upload.clone(), layer.clone());
        self.write("finish_upload", move |txn| {
            let stored = check_version(&txn.open_table(UPLOADS).db()?, &upload)?;
            let outcome = {
                let mut layers = txn.open_table(LAYERS).db()?;
                let key = (
                    layer.registry_id.as_str(),
                    layer.repository.as_str(),
                    layer.digest.as_str(),
                );
                let existing: Option<LayerRecord> = layers
                    .get(key)
                    .db()?
                    .map(|g| decode(g.value()))
                    .transpose()?;
                match existing {
                    Some(existing) => Finish::LayerExists(existing),
                    None => {
                        layers.insert(key, encode(&layer)?.as_slice()).db()?;
                        Finish::Recorded
                    }
                }
            };
            put_upload(txn, Some(&stored), &upload)?;
            Ok(outcome)
        })
        .await
    }

    async fn delete_upload(&self, upload_id: &str) -> StoreResult<()> {
        let upload_id = upload_id.to_owned();
        self.write("delete_upload", move |txn| {
            let id = upload_id.as_str();
            let removed: Option<UploadRecord> = txn
                .open_table(UPLOADS)
                .db()?
                .remove(id)
                .db()?
                .map(|g| decode(g.value()))
                .transpose()?;
            if let Some(upload) = removed {
                txn.open_table(EXPIRY)
                    .db()?
                    .remove((upload.expires_at, id))
                    .db()?;
            }
            txn.open_table(SEGMENTS)
                .db()?
                .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                .db()?;
            txn.open_table(PARTS)
                .db()?
                .retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
                .db()?;
            Ok(())
        })
        .await
    }

    async fn expired_uploads(&self, now_secs: u64, limit: usize) -> StoreResult<Vec<UploadRecord>> {
        self.read("expired_uploads", move |txn| {
            let expiry = txn.open_table(EXPIRY).db()?;
            let uploads = txn.open_table(UPLOADS).db()?;
            let mut out = Vec::new();
            // (now_secs, "") is the smallest key with expires_at == now_secs: an exclusive bound
            // there yields exactly the uploads with expires_at < now_secs.
            for item in expiry.range((0, "")..(now_secs, "")).db()? {
                if out.len() >= limit {
                    break;
                }
                let (key, _) = item.db()?;
                let (_, id) = key.value();
                if let Some(guard) = uploads.get(id).db()? {
                    out.push(decode(guard.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn get_layer(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> StoreResult<Option<LayerRecord>> {
        let key = (
            registry_id.to_owned(),
            repository.to_owned(),
            digest.to_owned(),
        );
        self.read("get_layer", move |txn| {
            let layers = txn.open_table(LAYERS).db()?;
            let found = layers
                .get((key.0.as_str(), key.1.as_str(), key.2.as_str()))
                .db()?;
            found.map(|g| decode(g.value())).transpose()
        })
        .await
    }
}

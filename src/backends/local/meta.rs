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
use crate::domain::error::StoreError;
use crate::ports::{
    Finish, FlushedPart, ImageRecord, LayerRecord, LayerReference, MetadataStore, PutImageOutcome,
    RepositoryRecord, SideWrite, StagedSegment, StoreResult, TagRecord, UnreferencedLayer,
    UploadRecord,
};

/// Bumped when the table layout or the record encoding changes incompatibly, so that an old
/// binary never misreads a newer data directory (or the reverse). Adding tables is compatible:
/// [`LocalMetadata::open`] creates missing ones, and older binaries never open them.
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
/// (registry, repository, digest) → ImageRecord: a repository's images are contiguous and
/// sorted by digest.
const IMAGES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("images");
/// (registry, repository, tag) → TagRecord, sorted by tag within a repository.
const TAGS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("tags");
/// (registry, repository, digest) → [`LayerMarks`]: how often and when images marked the layer
/// referenced (`mark_layers_referenced`), kept beside its record, which stays as recorded.
const LAYER_MARKS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("layer_marks");

/// Key type of the tables keyed by (registry, repository, name).
type RepoKey = (&'static str, &'static str, &'static str);

/// Maps any redb failure to a backend error; redb's error types all convert into `redb::Error`.
trait OrBackend<T> {
    fn db(self) -> StoreResult<T>;
}

impl<T, E: Into<redb::Error>> OrBackend<T> for Result<T, E> {
    fn db(self) -> StoreResult<T> {
        self.map_err(|e| StoreError::backend("state store", e.into()))
    }
}

fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::backend("state store: cannot encode record", e))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::backend("state store: cannot decode record", e))
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
            StoreError::backend(format!("cannot create data directory {}", dir.display()), e)
        })?;
        let path = dir.join("state.redb");
        let db = Database::create(&path).map_err(|e| {
            StoreError::backend(format!("cannot open state store {}", path.display()), e)
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
                    return Err(StoreError::failure(format!(
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
            txn.open_table(IMAGES).db()?;
            txn.open_table(TAGS).db()?;
            txn.open_table(LAYER_MARKS).db()?;
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
            let run = || {
                let txn = db.begin_write().db()?;
                let out = f(&txn)?;
                txn.commit().db()?;
                Ok(out)
            };
            run().map_err(|e: StoreError| e.during(what))
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
            let run = || {
                let txn = db.begin_read().db()?;
                f(&txn)
            };
            run().map_err(|e: StoreError| e.during(what))
        })
        .await
    }

    /// `put_image`, on condition that the repository is `incarnation` when one is named,
    /// checked inside the write transaction.
    async fn put_image_if(
        &self,
        incarnation: Option<&str>,
        image: &ImageRecord,
        tag: Option<&str>,
        immutable_tags: bool,
    ) -> StoreResult<PutImageOutcome> {
        let (image, tag) = (image.clone(), tag.map(str::to_owned));
        let incarnation = incarnation.map(str::to_owned);
        self.write("put_image", move |txn| {
            let (reg, repo) = (image.registry_id.as_str(), image.repository.as_str());
            if let Some(incarnation) = &incarnation {
                let repository: Option<RepositoryRecord> = txn
                    .open_table(REPOS)
                    .db()?
                    .get((reg, repo))
                    .db()?
                    .map(|g| decode(g.value()))
                    .transpose()?;
                if repository.is_none_or(|r| &r.incarnation != incarnation) {
                    return Ok(PutImageOutcome::RepositoryGone);
                }
            }
            let mut images = txn.open_table(IMAGES).db()?;
            let image_key = (reg, repo, image.digest.as_str());
            let image_exists = images.get(image_key).db()?.is_some();
            if let Some(tag) = &tag {
                let mut tags = txn.open_table(TAGS).db()?;
                let tag_key = (reg, repo, tag.as_str());
                let current: Option<TagRecord> = tags
                    .get(tag_key)
                    .db()?
                    .map(|g| decode(g.value()))
                    .transpose()?;
                match current {
                    Some(t) if t.digest == image.digest && image_exists => {
                        return Ok(PutImageOutcome::AlreadyExists);
                    }
                    Some(t) if t.digest != image.digest && immutable_tags => {
                        return Ok(PutImageOutcome::TagImmutable { digest: t.digest });
                    }
                    _ => {}
                }
                let record = TagRecord {
                    registry_id: image.registry_id.clone(),
                    repository: image.repository.clone(),
                    tag: tag.clone(),
                    digest: image.digest.clone(),
                    updated_at_ms: image.pushed_at_ms,
                };
                tags.insert(tag_key, encode(&record)?.as_slice()).db()?;
            } else if image_exists {
                return Ok(PutImageOutcome::AlreadyExists);
            }
            // An existing record is kept as it is: its push time is the first push's.
            if !image_exists {
                images.insert(image_key, encode(&image)?.as_slice()).db()?;
            }
            Ok(PutImageOutcome::Stored)
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

/// The third key parts (digests, tags) of `table`'s rows in one repository, in key order: the
/// contiguous run of keys from `(registry_id, repository, "")`.
fn names_in_repository(
    table: &impl ReadableTable<RepoKey, &'static [u8]>,
    registry_id: &str,
    repository: &str,
) -> StoreResult<Vec<String>> {
    let mut out = Vec::new();
    for item in table.range((registry_id, repository, "")..).db()? {
        let (key, _) = item.db()?;
        let (reg, repo, name) = key.value();
        if reg != registry_id || repo != repository {
            break;
        }
        out.push(name.to_owned());
    }
    Ok(out)
}

/// The decoded records of `table`'s rows in one repository, in key order.
fn in_repository<T: DeserializeOwned>(
    table: &impl ReadableTable<RepoKey, &'static [u8]>,
    registry_id: &str,
    repository: &str,
) -> StoreResult<Vec<T>> {
    let mut out = Vec::new();
    for item in table.range((registry_id, repository, "")..).db()? {
        let (key, value) = item.db()?;
        let (reg, repo, _) = key.value();
        if reg != registry_id || repo != repository {
            break;
        }
        out.push(decode(value.value())?);
    }
    Ok(out)
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
            for definition in [LAYERS, LAYER_MARKS, IMAGES, TAGS] {
                let mut table = txn.open_table(definition).db()?;
                for name in names_in_repository(&table, reg, repo)? {
                    table.remove((reg, repo, name.as_str())).db()?;
                }
            }
            Ok(existed)
        })
        .await
    }

    async fn repository_uploads(
        &self,
        registry_id: &str,
        name: &str,
    ) -> StoreResult<Vec<UploadRecord>> {
        let (registry_id, name) = (registry_id.to_owned(), name.to_owned());
        self.read("repository_uploads", move |txn| {
            // Uploads are keyed by id: a scan, fine for the few uploads a data directory holds
            // (finished ones are removed) and for an operation as rare as DeleteRepository.
            let uploads = txn.open_table(UPLOADS).db()?;
            let mut out = Vec::new();
            for item in uploads.iter().db()? {
                let (_, value) = item.db()?;
                let upload: UploadRecord = decode(value.value())?;
                if upload.registry_id == registry_id && upload.repository == name {
                    out.push(upload);
                }
            }
            Ok(out)
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
            let repository: Option<RepositoryRecord> = txn
                .open_table(REPOS)
                .db()?
                .get((upload.registry_id.as_str(), upload.repository.as_str()))
                .db()?
                .map(|g| decode(g.value()))
                .transpose()?;
            if repository.is_none_or(|r| r.incarnation != upload.repository_incarnation) {
                return Ok(Finish::RepositoryGone);
            }
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

    async fn set_layer_media_type(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
        media_type: &str,
    ) -> StoreResult<()> {
        let (registry_id, repository, digest, media_type) = (
            registry_id.to_owned(),
            repository.to_owned(),
            digest.to_owned(),
            media_type.to_owned(),
        );
        self.write("set_layer_media_type", move |txn| {
            let mut layers = txn.open_table(LAYERS).db()?;
            let key = (registry_id.as_str(), repository.as_str(), digest.as_str());
            let existing: Option<LayerRecord> = layers
                .get(key)
                .db()?
                .map(|g| decode(g.value()))
                .transpose()?;
            if let Some(mut layer) = existing
                && layer.media_type.as_deref() != Some(media_type.as_str())
            {
                layer.media_type = Some(media_type);
                layers.insert(key, encode(&layer)?.as_slice()).db()?;
            }
            Ok(())
        })
        .await
    }

    async fn mark_layers_referenced(
        &self,
        registry_id: &str,
        repository: &str,
        layers: &[LayerReference],
        now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        let (registry_id, repository, layers) = (
            registry_id.to_owned(),
            repository.to_owned(),
            layers.to_vec(),
        );
        self.write("mark_layers_referenced", move |txn| {
            let (reg, repo) = (registry_id.as_str(), repository.as_str());
            let mut records = txn.open_table(LAYERS).db()?;
            let mut marks = txn.open_table(LAYER_MARKS).db()?;
            let mut missing = Vec::new();
            for r in &layers {
                let key = (reg, repo, r.digest.as_str());
                let existing: Option<LayerRecord> = records
                    .get(key)
                    .db()?
                    .map(|g| decode(g.value()))
                    .transpose()?;
                let Some(mut layer) = existing else {
                    missing.push(r.digest.clone());
                    continue;
                };
                if let Some(mt) = &r.media_type
                    && layer.media_type.as_ref() != Some(mt)
                {
                    layer.media_type = Some(mt.clone());
                    records.insert(key, encode(&layer)?.as_slice()).db()?;
                }
                let before: LayerMarks = marks
                    .get(key)
                    .db()?
                    .map(|g| decode(g.value()))
                    .transpose()?
                    .unwrap_or_default();
                let after = LayerMarks {
                    count: before.count + 1,
                    last_ms: now_ms,
                };
                marks.insert(key, encode(&after)?.as_slice()).db()?;
            }
            Ok(missing)
        })
        .await
    }

    async fn put_image(
        &self,
        image: &ImageRecord,
        tag: Option<&str>,
        immutable_tags: bool,
    ) -> StoreResult<PutImageOutcome> {
        self.put_image_if(None, image, tag, immutable_tags).await
    }

    async fn put_image_in(
        &self,
        incarnation: &str,
        image: &ImageRecord,
        tag: Option<&str>,
        immutable_tags: bool,
    ) -> StoreResult<PutImageOutcome> {
        self.put_image_if(Some(incarnation), image, tag, immutable_tags)
            .await
    }

    async fn get_image(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> StoreResult<Option<ImageRecord>> {
        let key = (
            registry_id.to_owned(),
            repository.to_owned(),
            digest.to_owned(),
        );
        self.read("get_image", move |txn| {
            let images = txn.open_table(IMAGES).db()?;
            let found = images
                .get((key.0.as_str(), key.1.as_str(), key.2.as_str()))
                .db()?;
            found.map(|g| decode(g.value())).transpose()
        })
        .await
    }

    async fn get_tag(
        &self,
        registry_id: &str,
        repository: &str,
        tag: &str,
    ) -> StoreResult<Option<TagRecord>> {
        let key = (
            registry_id.to_owned(),
            repository.to_owned(),
            tag.to_owned(),
        );
        self.read("get_tag", move |txn| {
            let tags = txn.open_table(TAGS).db()?;
            let found = tags
                .get((key.0.as_str(), key.1.as_str(), key.2.as_str()))
                .db()?;
            found.map(|g| decode(g.value())).transpose()
        })
        .await
    }

    async fn list_images(
        &self,
        registry_id: &str,
        repository: &str,
    ) -> StoreResult<Vec<ImageRecord>> {
        let (registry_id, repository) = (registry_id.to_owned(), repository.to_owned());
        self.read("list_images", move |txn| {
            let images = txn.open_table(IMAGES).db()?;
            in_repository(&images, &registry_id, &repository)
        })
        .await
    }

    async fn list_tags(&self, registry_id: &str, repository: &str) -> StoreResult<Vec<TagRecord>> {
        let (registry_id, repository) = (registry_id.to_owned(), repository.to_owned());
        self.read("list_tags", move |txn| {
            let tags = txn.open_table(TAGS).db()?;
            in_repository(&tags, &registry_id, &repository)
        })
        .await
    }

    async fn delete_tag(
        &self,
        registry_id: &str,
        repository: &str,
        tag: &str,
        digest: &str,
    ) -> StoreResult<bool> {
        let (registry_id, repository, tag, digest) = (
            registry_id.to_owned(),
            repository.to_owned(),
            tag.to_owned(),
            digest.to_owned(),
        );
        self.write("delete_tag", move |txn| {
            let mut tags = txn.open_table(TAGS).db()?;
            let key = (registry_id.as_str(), repository.as_str(), tag.as_str());
            let current: Option<TagRecord> =
                tags.get(key).db()?.map(|g| decode(g.value())).transpose()?;
            if current.is_some_and(|t| t.digest == digest) {
                tags.remove(key).db()?;
                return Ok(true);
            }
            Ok(false)
        })
        .await
    }

    async fn delete_image(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> StoreResult<bool> {
        let (registry_id, repository, digest) = (
            registry_id.to_owned(),
            repository.to_owned(),
            digest.to_owned(),
        );
        self.write("delete_image", move |txn| {
            let (reg, repo) = (registry_id.as_str(), repository.as_str());
            let existed = txn
                .open_table(IMAGES)
                .db()?
                .remove((reg, repo, digest.as_str()))
                .db()?
                .is_some();
            let mut tags = txn.open_table(TAGS).db()?;
            let naming: Vec<String> = in_repository::<TagRecord>(&tags, reg, repo)?
                .into_iter()
                .filter(|t| t.digest == digest)
                .map(|t| t.tag)
                .collect();
            for tag in &naming {
                tags.remove((reg, repo, tag.as_str())).db()?;
            }
            Ok(existed)
        })
        .await
    }
}

/// What the state owns in the blob directories, read in one snapshot (see
/// `super::reconcile`).
#[derive(Debug, Default)]
pub(super) struct Owned {
    /// Every upload: id → (multipart id, blob key, whether it is `Done`).
    pub uploads: std::collections::HashMap<String, (String, String, bool)>,
    /// Keys of the staged segments of every upload.
    pub segment_keys: std::collections::HashSet<String>,
    /// Blob keys of every layer record, of every repository.
    pub layer_keys: std::collections::HashSet<String>,
    /// Blob keys of every image's manifest kept outside its record.
    pub manifest_keys: std::collections::HashSet<String>,
}

impl LocalMetadata {
    /// Everything the state refers to in the blob store, from one consistent snapshot.
    pub(super) async fn owned(&self) -> StoreResult<Owned> {
        self.read("reconcile", |txn| {
            let mut owned = Owned::default();
            for item in txn.open_table(UPLOADS).db()?.iter().db()? {
                let u: UploadRecord = decode(item.db()?.1.value())?;
                let done = u.state == crate::ports::UploadState::Done;
                owned
                    .uploads
                    .insert(u.upload_id, (u.multipart_id, u.blob_key, done));
            }
            for item in txn.open_table(SEGMENTS).db()?.iter().db()? {
                let s: StagedSegment = decode(item.db()?.1.value())?;
                owned.segment_keys.insert(s.key);
            }
            for item in txn.open_table(LAYERS).db()?.iter().db()? {
                let l: LayerRecord = decode(item.db()?.1.value())?;
                owned.layer_keys.insert(l.blob_key);
            }
            for item in txn.open_table(IMAGES).db()?.iter().db()? {
                let i: ImageRecord = decode(item.db()?.1.value())?;
                owned.manifest_keys.extend(i.manifest_key);
            }
            Ok(owned)
        })
        .await
    }
}

/// How often, and when last, images marked a layer referenced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
struct LayerMarks {
    count: u64,
    last_ms: u64,
}

impl LocalMetadata {
    /// The layers, of every repository, that no image of their repository references and that
    /// were neither recorded nor marked referenced in the `grace_ms` before `now_ms`, from one
    /// snapshot. A repository with an image whose references cannot be told (an image manifest
    /// recorded without blobs) keeps all its layers. See `super::reconcile`.
    pub async fn unreferenced_layers(
        &self,
        now_ms: u64,
        grace_ms: u64,
    ) -> StoreResult<Vec<UnreferencedLayer>> {
        self.read("unreferenced layers", move |txn| {
            let old = |ms: u64| now_ms.saturating_sub(ms) >= grace_ms;
            // (registry, repository) → the digests its images reference; `None`: keep all.
            let mut referenced: std::collections::HashMap<
                (String, String),
                Option<std::collections::HashSet<String>>,
            > = std::collections::HashMap::new();
            for item in txn.open_table(IMAGES).db()?.iter().db()? {
                let i: ImageRecord = decode(item.db()?.1.value())?;
                let entry = referenced
                    .entry((i.registry_id.clone(), i.repository.clone()))
                    .or_insert_with(|| Some(Default::default()));
                if i.blobs_unknown() {
                    *entry = None;
                } else if let Some(set) = entry {
                    set.extend(i.blobs);
                }
            }
            let marks = txn.open_table(LAYER_MARKS).db()?;
            let mut out = Vec::new();
            for item in txn.open_table(LAYERS).db()?.iter().db()? {
                let (key, value) = item.db()?;
                let stored = value.value();
                let l: LayerRecord = decode(stored)?;
                let (reg, repo, digest) = key.value();
                let kept = match referenced.get(&(reg.to_owned(), repo.to_owned())) {
                    Some(None) => true,
                    Some(Some(set)) => set.contains(digest),
                    None => false,
                };
                if kept || !old(l.created_at_ms) {
                    continue;
                }
                let m: LayerMarks = marks
                    .get((reg, repo, digest))
                    .db()?
                    .map(|g| decode(g.value()))
                    .transpose()?
                    .unwrap_or_default();
                if m.count > 0 && !old(m.last_ms) {
                    continue;
                }
                out.push(UnreferencedLayer {
                    registry_id: reg.to_owned(),
                    repository: repo.to_owned(),
                    digest: digest.to_owned(),
                    blob_key: l.blob_key,
                    stored: String::from_utf8_lossy(stored).into_owned(),
                    marks: m.count,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Deletes each of `layers` (with its marks) that is still exactly as read: the same
    /// record, no mark since, and still no image of its repository referencing it, each
    /// checked inside the write transaction that deletes it. Returns how many went.
    pub async fn remove_unreferenced_layers(
        &self,
        layers: &[UnreferencedLayer],
    ) -> StoreResult<u64> {
        let mut removed = 0;
        // One write transaction per repository: short, so requests are not held up for long.
        let mut by_repository: std::collections::BTreeMap<(&str, &str), Vec<UnreferencedLayer>> =
            std::collections::BTreeMap::new();
        for l in layers {
            by_repository
                .entry((l.registry_id.as_str(), l.repository.as_str()))
                .or_default()
                .push(l.clone());
        }
        for ((reg, repo), doomed) in by_repository {
            let (reg, repo) = (reg.to_owned(), repo.to_owned());
            removed += self
                .write("remove unreferenced layers", move |txn| {
                    let (reg, repo) = (reg.as_str(), repo.as_str());
                    let images: Vec<ImageRecord> =
                        in_repository(&txn.open_table(IMAGES).db()?, reg, repo)?;
                    if images.iter().any(ImageRecord::blobs_unknown) {
                        return Ok(0);
                    }
                    let mut records = txn.open_table(LAYERS).db()?;
                    let mut marks = txn.open_table(LAYER_MARKS).db()?;
                    let mut n = 0;
                    for l in &doomed {
                        let key = (reg, repo, l.digest.as_str());
                        if images.iter().any(|i| i.blobs.contains(&l.digest)) {
                            continue;
                        }
                        let same = records
                            .get(key)
                            .db()?
                            .is_some_and(|g| g.value() == l.stored.as_bytes());
                        let count = marks
                            .get(key)
                            .db()?
                            .map(|g| decode::<LayerMarks>(g.value()))
                            .transpose()?
                            .map_or(0, |m| m.count);
                        if same && count == l.marks {
                            records.remove(key).db()?;
                            marks.remove(key).db()?;
                            n += 1;
                        }
                    }
                    Ok(n)
                })
                .await?;
        }
        Ok(removed)
    }
}

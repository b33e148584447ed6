//! In-memory adapters for the storage ports, for unit tests of the service logic.
//!
//! They keep the same observable contract as the embedded and AWS adapters (the contract suite in
//! `tests/contract/suite.rs` runs against them too), so a service test that passes here exercises
//! the same conditional-write and multipart semantics it will meet in production. Nothing survives
//! the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};

use crate::domain::error::StoreError;
use crate::ports::multipart::{check_part_list, check_part_number, part_etag, resolve_range};
use crate::ports::{
    BlobStore, ByteStream, Finish, FlushedPart, ImageRecord, LayerRecord, LayerReference,
    MetadataStore, PutImageOutcome, RepositoryRecord, SideWrite, StagedSegment, StoreResult,
    TagRecord, UploadRecord,
};

/// Chunk size of [`MemoryBlobs::read_object`] streams: small enough that consumers see several
/// chunks for a multi-MiB object, as they would from a file or S3.
const READ_CHUNK: usize = 256 * 1024;

/// Takes a mutex even if a previous holder panicked: every mutation below checks its conditions
/// before it changes anything, so a poisoned state is still a consistent one.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Default)]
struct MetaState {
    /// (registry, name) → repository.
    repos: BTreeMap<(String, String), RepositoryRecord>,
    uploads: HashMap<String, UploadRecord>,
    /// (upload id, offset) → segment.
    segments: BTreeMap<(String, u64), StagedSegment>,
    /// (upload id, part number) → part.
    parts: BTreeMap<(String, u32), FlushedPart>,
    /// (registry, repository, digest) → layer.
    layers: BTreeMap<(String, String, String), LayerRecord>,
    /// (registry, repository, digest) → image.
    images: BTreeMap<(String, String, String), ImageRecord>,
    /// (registry, repository, tag) → tag.
    tags: BTreeMap<(String, String, String), TagRecord>,
}

fn key3(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.to_owned(), b.to_owned(), c.to_owned())
}

/// The records of `map` whose first two key parts are `registry_id` and `repository`, in order.
fn in_repository<V: Clone>(
    map: &BTreeMap<(String, String, String), V>,
    registry_id: &str,
    repository: &str,
) -> Vec<V> {
    map.range(key3(registry_id, repository, "")..)
        .take_while(|((reg, repo, _), _)| reg == registry_id && repo == repository)
        .map(|(_, v)| v.clone())
        .collect()
}

/// [`MetadataStore`] in a mutex-guarded map. Clones share the same state.
#[derive(Clone, Default)]
pub struct MemoryMetadata {
    state: Arc<Mutex<MetaState>>,
}

impl MemoryMetadata {
    pub fn new() -> Self {
        Self::default()
    }

    /// `put_image`, on condition that the repository is `incarnation` when one is named.
    fn put_image_if(
        &self,
        incarnation: Option<&str>,
        image: &ImageRecord,
        tag: Option<&str>,
        immutable_tags: bool,
    ) -> StoreResult<PutImageOutcome> {
        let mut s = lock(&self.state);
        if let Some(incarnation) = incarnation {
            let repo = s
                .repos
                .get(&(image.registry_id.clone(), image.repository.clone()));
            if repo.is_none_or(|r| r.incarnation != incarnation) {
                return Ok(PutImageOutcome::RepositoryGone);
            }
        }
        let image_key = key3(&image.registry_id, &image.repository, &image.digest);
        let image_exists = s.images.contains_key(&image_key);
        if let Some(tag) = tag {
            let tag_key = key3(&image.registry_id, &image.repository, tag);
            match s.tags.get(&tag_key) {
                Some(t) if t.digest == image.digest && image_exists => {
                    return Ok(PutImageOutcome::AlreadyExists);
                }
                Some(t) if t.digest != image.digest && immutable_tags => {
                    return Ok(PutImageOutcome::TagImmutable {
                        digest: t.digest.clone(),
                    });
                }
                _ => {}
            }
            s.tags.insert(
                tag_key,
                TagRecord {
                    registry_id: image.registry_id.clone(),
                    repository: image.repository.clone(),
                    tag: tag.to_owned(),
                    digest: image.digest.clone(),
                    updated_at_ms: image.pushed_at_ms,
                },
            );
        } else if image_exists {
            return Ok(PutImageOutcome::AlreadyExists);
        }
        s.images.entry(image_key).or_insert_with(|| image.clone());
        Ok(PutImageOutcome::Stored)
    }
}

/// The compare half of the compare-and-set every upload write does.
fn check_version(state: &MetaState, upload: &UploadRecord) -> StoreResult<()> {
    let stored = state
        .uploads
        .get(&upload.upload_id)
        .ok_or(StoreError::Conflict)?;
    if Some(stored.version) == upload.version.checked_sub(1) {
        Ok(())
    } else {
        Err(StoreError::Conflict)
    }
}

impl MetadataStore for MemoryMetadata {
    async fn create_repository(&self, repo: &RepositoryRecord) -> StoreResult<()> {
        let mut s = lock(&self.state);
        let key = (repo.registry_id.clone(), repo.name.clone());
        if s.repos.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        s.repos.insert(key, repo.clone());
        Ok(())
    }

    async fn get_repository(
        &self,
        registry_id: &str,
        name: &str,
    ) -> StoreResult<Option<RepositoryRecord>> {
        let s = lock(&self.state);
        Ok(s.repos
            .get(&(registry_id.to_owned(), name.to_owned()))
            .cloned())
    }

    async fn list_repositories(&self, registry_id: &str) -> StoreResult<Vec<RepositoryRecord>> {
        let s = lock(&self.state);
        Ok(s.repos
            .range((registry_id.to_owned(), String::new())..)
            .take_while(|((reg, _), _)| reg == registry_id)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn delete_repository(&self, registry_id: &str, name: &str) -> StoreResult<bool> {
        let mut s = lock(&self.state);
        let existed = s
            .repos
            .remove(&(registry_id.to_owned(), name.to_owned()))
            .is_some();
        let other =
            |(reg, repo, _): &(String, String, String)| !(reg == registry_id && repo == name);
        s.layers.retain(|k, _| other(k));
        s.images.retain(|k, _| other(k));
        s.tags.retain(|k, _| other(k));
        Ok(existed)
    }

    async fn repository_uploads(
        &self,
        registry_id: &str,
        name: &str,
    ) -> StoreResult<Vec<UploadRecord>> {
        let s = lock(&self.state);
        let mut out: Vec<UploadRecord> = s
            .uploads
            .values()
            .filter(|u| u.registry_id == registry_id && u.repository == name)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.upload_id.cmp(&b.upload_id));
        Ok(out)
    }

    async fn create_upload(&self, upload: &UploadRecord) -> StoreResult<()> {
        let mut s = lock(&self.state);
        if s.uploads.contains_key(&upload.upload_id) {
            return Err(StoreError::AlreadyExists);
        }
        s.uploads.insert(upload.upload_id.clone(), upload.clone());
        Ok(())
    }

    async fn get_upload(&self, upload_id: &str) -> StoreResult<Option<UploadRecord>> {
        Ok(lock(&self.state).uploads.get(upload_id).cloned())
    }

    async fn update_upload(&self, upload: &UploadRecord, side: SideWrite) -> StoreResult<()> {
        let mut s = lock(&self.state);
        check_version(&s, upload)?;
        let id = upload.upload_id.clone();
        match side {
            SideWrite::None => {}
            SideWrite::Segment(seg) => {
                s.segments.insert((id.clone(), seg.offset), seg);
            }
            SideWrite::Part(part) => {
                s.parts.insert((id.clone(), part.number), part);
            }
        }
        s.uploads.insert(id, upload.clone());
        Ok(())
    }

    async fn list_segments(&self, upload_id: &str, from: u64) -> StoreResult<Vec<StagedSegment>> {
        let s = lock(&self.state);
        Ok(s.segments
            .range((upload_id.to_owned(), from)..=(upload_id.to_owned(), u64::MAX))
            .map(|(_, seg)| seg.clone())
            .collect())
    }

    async fn delete_segments(&self, upload_id: &str, offsets: &[u64]) -> StoreResult<()> {
        let mut s = lock(&self.state);
        for &offset in offsets {
            s.segments.remove(&(upload_id.to_owned(), offset));
        }
        Ok(())
    }

    async fn list_parts(&self, upload_id: &str) -> StoreResult<Vec<FlushedPart>> {
        let s = lock(&self.state);
        Ok(s.parts
            .range((upload_id.to_owned(), 0)..=(upload_id.to_owned(), u32::MAX))
            .map(|(_, p)| p.clone())
            .collect())
    }

    async fn finish_upload(
        &self,
        upload: &UploadRecord,
        layer: &LayerRecord,
    ) -> StoreResult<Finish> {
        let mut s = lock(&self.state);
        let repo = s
            .repos
            .get(&(upload.registry_id.clone(), upload.repository.clone()));
        if repo.is_none_or(|r| r.incarnation != upload.repository_incarnation) {
            return Ok(Finish::RepositoryGone);
        }
        check_version(&s, upload)?;
        let key = (
            layer.registry_id.clone(),
            layer.repository.clone(),
            layer.digest.clone(),
        );
        let outcome = match s.layers.get(&key) {
            Some(existing) => Finish::LayerExists(existing.clone()),
            None => {
                s.layers.insert(key, layer.clone());
                Finish::Recorded
            }
        };
        s.uploads.insert(upload.upload_id.clone(), upload.clone());
        Ok(outcome)
    }

    async fn delete_upload(&self, upload_id: &str) -> StoreResult<()> {
        let mut s = lock(&self.state);
        s.uploads.remove(upload_id);
        s.segments.retain(|(id, _), _| id != upload_id);
        s.parts.retain(|(id, _), _| id != upload_id);
        Ok(())
    }

    async fn expired_uploads(&self, now_secs: u64, limit: usize) -> StoreResult<Vec<UploadRecord>> {
        let s = lock(&self.state);
        let mut expired: Vec<UploadRecord> = s
            .uploads
            .values()
            .filter(|u| u.expires_at < now_secs)
            .cloned()
            .collect();
        // Oldest first, like the embedded backend's expiry index, so a sweep with a small limit
        // makes progress on the longest-abandoned uploads.
        expired.sort_by(|a, b| (a.expires_at, &a.upload_id).cmp(&(b.expires_at, &b.upload_id)));
        expired.truncate(limit);
        Ok(expired)
    }

    async fn get_layer(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> StoreResult<Option<LayerRecord>> {
        let s = lock(&self.state);
        Ok(s.layers
            .get(&(
                registry_id.to_owned(),
                repository.to_owned(),
                digest.to_owned(),
            ))
            .cloned())
    }

    async fn set_layer_media_type(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
        media_type: &str,
    ) -> StoreResult<()> {
        let mut s = lock(&self.state);
        if let Some(layer) = s.layers.get_mut(&key3(registry_id, repository, digest)) {
            layer.media_type = Some(media_type.to_owned());
        }
        Ok(())
    }

    async fn mark_layers_referenced(
        &self,
        registry_id: &str,
        repository: &str,
        layers: &[LayerReference],
        _now_ms: u64,
    ) -> StoreResult<Vec<String>> {
        // Nothing collects layers here: a mark only sets the media type.
        let mut s = lock(&self.state);
        let mut missing = Vec::new();
        for r in layers {
            match s.layers.get_mut(&key3(registry_id, repository, &r.digest)) {
                None => missing.push(r.digest.clone()),
                Some(layer) => {
                    if let Some(mt) = &r.media_type {
                        layer.media_type = Some(mt.clone());
                    }
                }
            }
        }
        Ok(missing)
    }

    async fn put_image(
        &self,
        image: &ImageRecord,
        tag: Option<&str>,
        immutable_tags: bool,
    ) -> StoreResult<PutImageOutcome> {
        self.put_image_if(None, image, tag, immutable_tags)
    }

    async fn put_image_in(
        &self,
        incarnation: &str,
        image: &ImageRecord,
        tag: Option<&str>,
        immutable_tags: bool,
    ) -> StoreResult<PutImageOutcome> {
        self.put_image_if(Some(incarnation), image, tag, immutable_tags)
    }

    async fn get_image(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> StoreResult<Option<ImageRecord>> {
        let s = lock(&self.state);
        Ok(s.images
            .get(&key3(registry_id, repository, digest))
            .cloned())
    }

    async fn get_tag(
        &self,
        registry_id: &str,
        repository: &str,
        tag: &str,
    ) -> StoreResult<Option<TagRecord>> {
        let s = lock(&self.state);
        Ok(s.tags.get(&key3(registry_id, repository, tag)).cloned())
    }

    async fn list_images(
        &self,
        registry_id: &str,
        repository: &str,
    ) -> StoreResult<Vec<ImageRecord>> {
        Ok(in_repository(
            &lock(&self.state).images,
            registry_id,
            repository,
        ))
    }

    async fn list_tags(&self, registry_id: &str, repository: &str) -> StoreResult<Vec<TagRecord>> {
        Ok(in_repository(
            &lock(&self.state).tags,
            registry_id,
            repository,
        ))
    }

    async fn delete_tag(
        &self,
        registry_id: &str,
        repository: &str,
        tag: &str,
        digest: &str,
    ) -> StoreResult<bool> {
        let mut s = lock(&self.state);
        let key = key3(registry_id, repository, tag);
        if s.tags.get(&key).is_some_and(|t| t.digest == digest) {
            s.tags.remove(&key);
            return Ok(true);
        }
        Ok(false)
    }

    async fn delete_image(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> StoreResult<bool> {
        let mut s = lock(&self.state);
        let existed = s
            .images
            .remove(&key3(registry_id, repository, digest))
            .is_some();
        s.tags.retain(|(reg, repo, _), t| {
            !(reg == registry_id && repo == repository && t.digest == digest)
        });
        Ok(existed)
    }
}

struct Multipart {
    key: String,
    /// Part number → (ETag, bytes).
    parts: BTreeMap<u32, (String, Bytes)>,
}

#[derive(Default)]
struct BlobState {
    objects: HashMap<String, Bytes>,
    multiparts: HashMap<String, Multipart>,
}

/// [`BlobStore`] in a mutex-guarded map. Clones share the same state.
#[derive(Clone, Default)]
pub struct MemoryBlobs {
    state: Arc<Mutex<BlobState>>,
    /// Smallest size accepted for a non-final part at completion; 0 disables the check.
    min_part_size: u64,
}

impl MemoryBlobs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rejects completions whose non-final parts are smaller than `bytes`, as S3 does with
    /// 5 MiB (`EntityTooSmall`). Off by default so service tests may use small part targets; turn
    /// it on to pin that the service never produces an upload S3 would refuse.
    pub fn with_min_part_size(mut self, bytes: u64) -> Self {
        self.min_part_size = bytes;
        self
    }
}

fn no_such_upload(multipart_id: &str) -> StoreError {
    StoreError::NotFound(format!("multipart upload {multipart_id}"))
}

impl BlobStore for MemoryBlobs {
    async fn put_object(&self, key: &str, data: Bytes) -> StoreResult<()> {
        lock(&self.state).objects.insert(key.to_owned(), data);
        Ok(())
    }

    async fn get_object(&self, key: &str) -> StoreResult<Bytes> {
        lock(&self.state)
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))
    }

    async fn read_object(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        let data = self.get_object(key).await?;
        let chunks: Vec<StoreResult<Bytes>> = match resolve_range(data.len() as u64, range)? {
            None => Vec::new(),
            Some((first, last)) => {
                // Both bounds are below data.len(), so they fit in usize.
                let slice = data.slice(first as usize..=last as usize);
                (0..slice.len())
                    .step_by(READ_CHUNK)
                    .map(|at| Ok(slice.slice(at..(at + READ_CHUNK).min(slice.len()))))
                    .collect()
            }
        };
        Ok(Box::pin(futures_util::stream::iter(chunks)))
    }

    async fn object_size(&self, key: &str) -> StoreResult<Option<u64>> {
        Ok(lock(&self.state)
            .objects
            .get(key)
            .map(|data| data.len() as u64))
    }

    async fn delete_objects(&self, keys: &[String]) -> StoreResult<()> {
        let mut s = lock(&self.state);
        for key in keys {
            s.objects.remove(key);
        }
        Ok(())
    }

    async fn create_multipart(&self, key: &str) -> StoreResult<String> {
        let id = uuid::Uuid::new_v4().to_string();
        lock(&self.state).multiparts.insert(
            id.clone(),
            Multipart {
                key: key.to_owned(),
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        data: Bytes,
    ) -> StoreResult<String> {
        check_part_number(number)?;
        let etag = part_etag(&data);
        let mut s = lock(&self.state);
        match s.multiparts.get_mut(multipart_id) {
            Some(mp) if mp.key == key => {
                mp.parts.insert(number, (etag.clone(), data));
                Ok(etag)
            }
            _ => Err(no_such_upload(multipart_id)),
        }
    }

    async fn complete_multipart(
        &self,
        key: &str,
        multipart_id: &str,
        parts: &[FlushedPart],
    ) -> StoreResult<()> {
        check_part_list(parts, self.min_part_size)?;
        let mut s = lock(&self.state);
        let Some(mp) = s.multiparts.get(multipart_id).filter(|mp| mp.key == key) else {
            // A retry after a completion whose answer was lost: the object is already there.
            let total: u64 = parts.iter().map(|p| p.len).sum();
            return match s.objects.get(key) {
                Some(data) if data.len() as u64 == total => Ok(()),
                _ => Err(no_such_upload(multipart_id)),
            };
        };
        let mut assembled = BytesMut::new();
        for part in parts {
            match mp.parts.get(&part.number) {
                Some((etag, data)) if *etag == part.etag => assembled.extend_from_slice(data),
                _ => return Err(StoreError::Conflict),
            }
        }
        s.multiparts.remove(multipart_id);
        s.objects.insert(key.to_owned(), assembled.freeze());
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, multipart_id: &str) -> StoreResult<()> {
        let mut s = lock(&self.state);
        if s.multiparts
            .get(multipart_id)
            .is_some_and(|mp| mp.key == key)
        {
            s.multiparts.remove(multipart_id);
        }
        Ok(())
    }

    /// An address no client can fetch: in-memory objects are read through the port only.
    async fn download_url(&self, key: &str, expires_in_secs: u64) -> StoreResult<String> {
        let expires = crate::domain::clock::now_ms() / 1000 + expires_in_secs;
        Ok(format!("memory:///{key}?expires={expires}"))
    }
}

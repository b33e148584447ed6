//! The storage ports: what the service needs from a backend, and nothing of how it is done.
//!
//! `MetadataStore` mirrors the DynamoDB single-table model (docs/architecture.md): every state change is
//! one conditional write. `BlobStore` mirrors S3: staging objects, a multipart upload per layer
//! upload, read-back as a stream, deletes. The embedded backend (data directory + redb) and the AWS
//! backend (S3 + DynamoDB) implement both; one contract suite (`tests/contract/suite.rs`) pins them.
//!
//! Expiry is the service's business: adapters return records as stored, expired or not.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::domain::error::StoreError;
use crate::domain::model::{EncryptionType, ManifestMediaType, TagMutability};

pub mod keys;
pub mod multipart;

pub type StoreResult<T> = Result<T, StoreError>;

/// A stream of an object's bytes, in order, in chunks of any size.
pub type ByteStream = Pin<Box<dyn Stream<Item = StoreResult<Bytes>> + Send>>;

/// The bytes of a part as they arrive ([`BlobStore::upload_part_stream`]): the part ends where
/// the stream does.
pub type PartStream<'a> = Pin<Box<dyn Stream<Item = Bytes> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryRecord {
    pub registry_id: String,
    pub name: String,
    /// Milliseconds since the epoch.
    pub created_at_ms: u64,
    /// Stored as its wire string (`MUTABLE`, `IMMUTABLE`, ...).
    pub image_tag_mutability: TagMutability,
    pub scan_on_push: bool,
    /// Stored as its wire string (`AES256`, `KMS` or `KMS_DSSE`).
    pub encryption_type: EncryptionType,
    pub kms_key: Option<String>,
    /// Which life of the name this is: fresh at every CreateRepository, so that a repository
    /// deleted and created again under the same name shares nothing with the old one. Records
    /// written before incarnations existed read as `""`, the original incarnation.
    #[serde(default)]
    pub incarnation: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadState {
    /// Accepting parts.
    Open,
    /// CompleteLayerUpload is assembling and verifying it, under a lease that the running
    /// completion renews (`updated_at_ms`); a stale lease is taken over by the next one.
    Completing,
    /// A completion failed (a digest that does not match, a backend failure) after the multipart
    /// upload was or may have been assembled: no more parts, and CompleteLayerUpload may be
    /// tried again.
    Assembled,
    /// Completed: the id is retired.
    Done,
}

/// The last ECR part accepted, so that a byte-identical re-send can be answered with success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartFingerprint {
    pub first: u64,
    pub last: u64,
    /// The part's content fingerprint, `service::part_fingerprint`. Records written
    /// before it was a CRC hold a sha256 here; they only ever fail to match, so a re-send across
    /// that change is answered as a part that does not continue the upload.
    #[serde(alias = "sha256")]
    pub checksum: String,
}

/// One layer upload. Kept small: per-part data lives in [`StagedSegment`] and [`FlushedPart`]
/// records beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub upload_id: String,
    pub registry_id: String,
    pub repository: String,
    /// The [`RepositoryRecord::incarnation`] the upload was started in; it is live only while the
    /// repository is that incarnation. Records written before incarnations read as `""`.
    #[serde(default)]
    pub repository_incarnation: String,
    /// Where the assembled layer will live in the blob store.
    pub blob_key: String,
    /// The blob store's multipart upload id for `blob_key`.
    pub multipart_id: String,
    /// Bytes received so far = offset the next part must start at.
    pub next_byte: u64,
    /// Bytes already written as multipart parts (a prefix of the layer).
    pub flushed_bytes: u64,
    /// Number of multipart parts written and recorded.
    pub parts_flushed: u32,
    /// The highest multipart part number handed out so far, recorded or not: a part written
    /// straight from an ECR part claims a number of its own before it writes, so that no two
    /// writers ever write different bytes under one number (`service/direct.rs`). Recorded part
    /// numbers ascend with their offsets but may leave gaps. Records written before it read as 0
    /// (then `parts_flushed` is the highest number).
    #[serde(default)]
    pub part_numbers_used: u32,
    pub last_part: Option<PartFingerprint>,
    /// Length of the smallest ECR part that is no longer the last one, if any.
    pub smallest_nonfinal_part: Option<u64>,
    pub state: UploadState,
    /// Incremented by every write; conditional writes compare it.
    pub version: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Seconds since the epoch after which the upload counts as absent (DynamoDB TTL attribute).
    pub expires_at: u64,
    /// Incremental verification (`service::VerifyMode::Incremental`): the SHA-256 and CRC-64
    /// of the bytes accepted so far, advanced by every accepted part in the write that accepts
    /// it. Absent in the default mode and in records written before it existed; a state that is
    /// absent or does not match the upload makes completion verify by streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HashState>,
    /// The multipart upload was created with a full-object CRC-64/NVME checksum: every part is
    /// written with its CRC-64, and the assembly may be given the whole object's
    /// ([`BlobStore::create_multipart_checksummed`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub part_checksums: bool,
}

/// A resumable SHA-256 over a prefix of a layer, with its CRC-64/NVME, as kept in an
/// [`UploadRecord`] (`service/incremental.rs` advances and finishes it). Plain values, so that
/// its encoding is this crate's and not a hash library's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashState {
    /// The eight 32-bit words of the SHA-256 state after the whole 64-byte blocks, big-endian,
    /// as 64 lower-case hex digits.
    pub sha256: String,
    /// The bytes after the last whole block (fewer than 64), in lower-case hex.
    pub tail: String,
    /// Bytes covered: the blocks and the tail.
    pub len: u64,
    /// CRC-64/NVME of the bytes covered.
    pub crc64: u64,
    /// The fingerprint ([`PartFingerprint::checksum`]) of the last part covered, `""` before
    /// the first: the state matches an upload only if its last part is that one.
    pub last_part: String,
}

/// Bytes received but not yet written as a multipart part: one staging object per ECR part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedSegment {
    /// Offset of the segment's first byte in the layer.
    pub offset: u64,
    pub len: u64,
    /// Key of the staging object holding the bytes.
    pub key: String,
}

/// A multipart part that was written, with the ETag the blob store answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushedPart {
    /// 1-based part number.
    pub number: u32,
    pub etag: String,
    /// Offset of the part's first byte in the layer.
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub registry_id: String,
    pub repository: String,
    /// `sha256:<64 lower hex>`.
    pub digest: String,
    pub blob_key: String,
    pub size: u64,
    pub media_type: Option<String>,
    pub created_at_ms: u64,
}

/// A layer that an image about to be written references, for
/// [`MetadataStore::mark_layers_referenced`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerReference {
    /// `sha256:<64 lower hex>`.
    pub digest: String,
    /// The media type the image's descriptor gives the layer; `None` leaves the stored one.
    pub media_type: Option<String>,
}

/// A layer record that no image of its repository referenced when the collector of unreferenced
/// layers read it, with what identifies that reading: the delete goes ahead only if the record
/// is still exactly this one and no image marked it referenced since (docs/architecture.md,
/// "Layers no image references").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreferencedLayer {
    pub registry_id: String,
    pub repository: String,
    pub digest: String,
    pub blob_key: String,
    /// The record as stored (its JSON document): a record deleted and recorded again differs.
    pub stored: String,
    /// How many times an image marked it referenced (0: never), when it was read.
    pub marks: u64,
}

/// An image: a manifest stored under its digest in a repository. Tags live in [`TagRecord`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub registry_id: String,
    pub repository: String,
    /// `sha256:<64 lower hex>` of the manifest bytes exactly as sent.
    pub digest: String,
    /// The manifest text as sent, when it is small enough to keep in the record (DynamoDB items
    /// are at most 400 KB); otherwise `None` and the text is the blob at `manifest_key`.
    pub manifest: Option<String>,
    pub manifest_key: Option<String>,
    /// The manifest's media type (OCI or Docker v2, manifest or index), stored as its wire
    /// string.
    pub media_type: ManifestMediaType,
    /// The config blob's media type, for manifests that have one.
    pub artifact_media_type: Option<String>,
    /// Sum of the referenced blobs' sizes; for an index, the largest of its manifests' sizes.
    pub size: u64,
    /// Milliseconds since the epoch.
    pub pushed_at_ms: u64,
    /// Digests of the blobs (config, layers) the manifest references.
    pub blobs: Vec<String>,
    /// Digests of the manifests an index references.
    pub manifests: Vec<String>,
    /// The `subject` manifest digest (OCI referrers), if any.
    pub subject: Option<String>,
}

impl ImageRecord {
    /// Whether the blobs the image references cannot be told from its record: an image
    /// manifest always names its config, so one recorded without blobs is in doubt, and the
    /// collector of unreferenced layers then keeps every layer of its repository.
    pub fn blobs_unknown(&self) -> bool {
        self.media_type.kind() == crate::domain::model::ManifestKind::Manifest
            && self.blobs.is_empty()
    }
}

/// A tag of a repository and the image digest it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub registry_id: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    /// Milliseconds since the epoch of the write that made the tag name `digest`.
    pub updated_at_ms: u64,
}

/// What [`MetadataStore::put_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutImageOutcome {
    /// The image was recorded (if new) and the tag (if any) now names it.
    Stored,
    /// The image was already there and the tag, if any, already named it: nothing was written.
    AlreadyExists,
    /// The tag names the image `digest` and tags are immutable: nothing was written.
    TagImmutable { digest: String },
    /// ([`MetadataStore::put_image_in`] only) The repository is gone, or is another incarnation
    /// than the one named: nothing was written.
    RepositoryGone,
}

/// Why a download URL presented to the local server is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadRefused {
    /// The signature does not match (forged or altered URL).
    BadSignature,
    /// The URL's expiry time has passed.
    Expired,
}

/// A record written in the same atomic step as an upload update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideWrite {
    None,
    /// A newly accepted part's staging segment.
    Segment(StagedSegment),
    /// A multipart part just written.
    Part(FlushedPart),
}

/// What [`MetadataStore::finish_upload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The layer was recorded and the upload retired.
    Recorded,
    /// A layer with that digest was already there (returned); the upload was retired anyway.
    LayerExists(LayerRecord),
    /// The repository is gone, or is another incarnation than the upload's (deleted and created
    /// again): nothing was written.
    RepositoryGone,
}

pub trait MetadataStore: Send + Sync + 'static {
    /// Create a repository unless one with that registry and name exists (`AlreadyExists`).
    fn create_repository(
        &self,
        repo: &RepositoryRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    fn get_repository(
        &self,
        registry_id: &str,
        name: &str,
    ) -> impl Future<Output = StoreResult<Option<RepositoryRecord>>> + Send;
    /// All repositories of a registry, sorted by name.
    fn list_repositories(
        &self,
        registry_id: &str,
    ) -> impl Future<Output = StoreResult<Vec<RepositoryRecord>>> + Send;
    /// Delete a repository and the layers, images and tags recorded in it; `Ok(false)` if there
    /// was none. Its uploads are left to the caller ([`MetadataStore::repository_uploads`]).
    fn delete_repository(
        &self,
        registry_id: &str,
        name: &str,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// The uploads recorded for repository `name` of `registry_id`, of any incarnation and state,
    /// whether or not the repository exists (those of a deleted one are still listed).
    fn repository_uploads(
        &self,
        registry_id: &str,
        name: &str,
    ) -> impl Future<Output = StoreResult<Vec<UploadRecord>>> + Send;

    /// Create an upload unless its id exists (`AlreadyExists`).
    fn create_upload(&self, upload: &UploadRecord) -> impl Future<Output = StoreResult<()>> + Send;
    fn get_upload(
        &self,
        upload_id: &str,
    ) -> impl Future<Output = StoreResult<Option<UploadRecord>>> + Send;
    /// Replace the upload with `upload` if the stored version is `upload.version - 1`, writing
    /// `side` in the same atomic step; otherwise `Conflict` and nothing is written.
    fn update_upload(
        &self,
        upload: &UploadRecord,
        side: SideWrite,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Staged segments of an upload with `offset >= from`, in offset order.
    fn list_segments(
        &self,
        upload_id: &str,
        from: u64,
    ) -> impl Future<Output = StoreResult<Vec<StagedSegment>>> + Send;
    /// Forget staged segments (after their bytes were written as a part). Absent ones are fine.
    fn delete_segments(
        &self,
        upload_id: &str,
        offsets: &[u64],
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Recorded multipart parts of an upload, in part-number order.
    fn list_parts(
        &self,
        upload_id: &str,
    ) -> impl Future<Output = StoreResult<Vec<FlushedPart>>> + Send;
    /// Retire the upload (`upload` as in `update_upload`, state `Done`) and record `layer` unless
    /// a layer with its registry, repository and digest exists, in one atomic step, on condition
    /// that the upload's repository exists as the incarnation `upload.repository_incarnation`
    /// (`RepositoryGone` otherwise, nothing written, whatever the upload's version).
    /// `Conflict` if the upload's version moved; then nothing is written.
    fn finish_upload(
        &self,
        upload: &UploadRecord,
        layer: &LayerRecord,
    ) -> impl Future<Output = StoreResult<Finish>> + Send;
    /// Delete an upload and its segment and part records (cleanup of retired or expired uploads).
    fn delete_upload(&self, upload_id: &str) -> impl Future<Output = StoreResult<()>> + Send;
    /// Uploads whose `expires_at` is before `now_secs`, at most `limit` of them.
    fn expired_uploads(
        &self,
        now_secs: u64,
        limit: usize,
    ) -> impl Future<Output = StoreResult<Vec<UploadRecord>>> + Send;

    fn get_layer(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> impl Future<Output = StoreResult<Option<LayerRecord>>> + Send;
    /// Set the media type of a recorded layer (an image references it); absent layers are fine.
    fn set_layer_media_type(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
        media_type: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Marks layers referenced by an image about to be written, before it is written: for each
    /// of `layers`, on condition that its record exists, sets its media type (when given),
    /// counts one more mark and records `now_ms` as the time it was last referenced. Returns the
    /// digests of the layers that are not recorded (nothing is written for those). The
    /// collector of unreferenced layers deletes a layer only if no mark came after its reading
    /// and none within the grace period before it, so an image written after its marks never
    /// names a collected layer.
    fn mark_layers_referenced(
        &self,
        registry_id: &str,
        repository: &str,
        layers: &[LayerReference],
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    /// In one atomic step: record `image` unless an image with its registry, repository and
    /// digest exists (an existing record is kept as it is), and make `tag` name it. A tag that
    /// names another image is moved, unless `immutable_tags` (then `TagImmutable`, nothing
    /// written). Image and tag already in place: `AlreadyExists`, nothing written.
    fn put_image(
        &self,
        image: &ImageRecord,
        tag: Option<&str>,
        immutable_tags: bool,
    ) -> impl Future<Output = StoreResult<PutImageOutcome>> + Send;
    /// `put_image` on condition that the image's repository exists as the incarnation
    /// `incarnation` ([`RepositoryRecord::incarnation`]), checked in the same atomic step as
    /// the write: otherwise `RepositoryGone` and nothing is written. So an image never lands in
    /// a repository deleted (and perhaps created again) after PutImage read it.
    fn put_image_in(
        &self,
        incarnation: &str,
        image: &ImageRecord,
        tag: Option<&str>,
        immutable_tags: bool,
    ) -> impl Future<Output = StoreResult<PutImageOutcome>> + Send;
    fn get_image(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> impl Future<Output = StoreResult<Option<ImageRecord>>> + Send;
    fn get_tag(
        &self,
        registry_id: &str,
        repository: &str,
        tag: &str,
    ) -> impl Future<Output = StoreResult<Option<TagRecord>>> + Send;
    /// Every image of a repository, sorted by digest.
    fn list_images(
        &self,
        registry_id: &str,
        repository: &str,
    ) -> impl Future<Output = StoreResult<Vec<ImageRecord>>> + Send;
    /// Every tag of a repository, sorted by tag.
    fn list_tags(
        &self,
        registry_id: &str,
        repository: &str,
    ) -> impl Future<Output = StoreResult<Vec<TagRecord>>> + Send;
    /// Delete `tag` if it names `digest`: `Ok(false)` if it is absent or names another image.
    fn delete_tag(
        &self,
        registry_id: &str,
        repository: &str,
        tag: &str,
        digest: &str,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Delete an image and every tag that names it, in one atomic step; `Ok(false)` if absent.
    fn delete_image(
        &self,
        registry_id: &str,
        repository: &str,
        digest: &str,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
}

pub trait BlobStore: Send + Sync + 'static {
    /// Write a whole small object (a staging segment), replacing any object at `key`.
    fn put_object(&self, key: &str, data: Bytes) -> impl Future<Output = StoreResult<()>> + Send;
    /// Read a whole small object (a staging segment). `NotFound` if absent.
    fn get_object(&self, key: &str) -> impl Future<Output = StoreResult<Bytes>> + Send;
    /// Stream an object, or the inclusive byte range `range` of it. `NotFound` if absent.
    fn read_object(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> impl Future<Output = StoreResult<ByteStream>> + Send;
    /// Size of an object, `None` if absent.
    fn object_size(&self, key: &str) -> impl Future<Output = StoreResult<Option<u64>>> + Send;
    /// Delete objects; absent ones are fine.
    fn delete_objects(&self, keys: &[String]) -> impl Future<Output = StoreResult<()>> + Send;

    /// Start a multipart upload for `key`; returns its id.
    fn create_multipart(&self, key: &str) -> impl Future<Output = StoreResult<String>> + Send;
    /// Write part `number` (1-based) of a multipart upload, replacing an earlier write of the same
    /// number; returns the part's ETag. Every part but the last must be at least 5 MiB.
    fn upload_part(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        data: Bytes,
    ) -> impl Future<Output = StoreResult<String>> + Send;
    /// [`upload_part`](Self::upload_part) told where the part's first byte lands in the object
    /// (`offset`, the part's [`FlushedPart::offset`]), for a store that writes each part in place
    /// so that completion need not copy (the embedded store). Numbers are handed out so that of
    /// two writes overlapping a range, the one that can still be recorded has the higher number
    /// (`service/direct.rs`): such a store may refuse, with `Conflict`, a write overlapping one
    /// of a higher number. By default, the plain `upload_part`.
    fn upload_part_at(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        offset: u64,
        data: Bytes,
    ) -> impl Future<Output = StoreResult<String>> + Send {
        let _ = offset;
        self.upload_part(key, multipart_id, number, data)
    }
    /// [`create_multipart`](Self::create_multipart) for an upload whose assembled object the
    /// store verifies against a full-object CRC-64/NVME
    /// ([`complete_multipart_checksummed`](Self::complete_multipart_checksummed)); its parts are
    /// written with [`upload_part_checksummed`](Self::upload_part_checksummed). A store that
    /// verifies nothing itself (the default) creates a plain one.
    fn create_multipart_checksummed(
        &self,
        key: &str,
    ) -> impl Future<Output = StoreResult<String>> + Send {
        self.create_multipart(key)
    }
    /// [`upload_part_at`](Self::upload_part_at) of a part of a multipart upload created by
    /// [`create_multipart_checksummed`](Self::create_multipart_checksummed), with the part's
    /// CRC-64/NVME (`crc64`), which the store checks against the bytes it receives. By default,
    /// the plain `upload_part_at`.
    fn upload_part_checksummed(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        offset: u64,
        data: Bytes,
        crc64: u64,
    ) -> impl Future<Output = StoreResult<String>> + Send {
        let _ = crc64;
        self.upload_part_at(key, multipart_id, number, offset, data)
    }
    /// [`complete_multipart`](Self::complete_multipart) of an upload created by
    /// [`create_multipart_checksummed`](Self::create_multipart_checksummed): with
    /// `Some(crc64)`, the CRC-64/NVME of the whole object as the service computed it, which the
    /// store compares with the object it assembles, failing (never assembling) on a mismatch.
    /// By default, the plain `complete_multipart`.
    fn complete_multipart_checksummed(
        &self,
        key: &str,
        multipart_id: &str,
        parts: &[FlushedPart],
        crc64: Option<u64>,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        let _ = crc64;
        self.complete_multipart(key, multipart_id, parts)
    }
    /// Whether one stream reads an object about as fast as several ranged reads at once (a
    /// local disk, unlike S3 over one connection): a completion then hashes the layer from one
    /// stream rather than from ranges read in parallel, holding less of it in memory.
    fn reads_one_stream_fast(&self) -> bool {
        false
    }
    /// Whether [`upload_part_stream`](Self::upload_part_stream) writes a part's bytes as they
    /// arrive, in bounded memory, rather than gathering them first (the default). A front door
    /// hands a store that does a body in small pieces. Such a store checks no part checksum
    /// (a streamed part is written before its CRC-64 is known), as the default
    /// [`upload_part_checksummed`](Self::upload_part_checksummed) does.
    fn streams_parts(&self) -> bool {
        false
    }
    /// [`upload_part_at`](Self::upload_part_at) with the part's bytes arriving as `data`, a
    /// stream that ends where the part does; returns the part's ETag and length. Durable once it
    /// answers, as `upload_part_at` is; the same rule for overlapping writes of different numbers
    /// holds while it writes. A store that [streams parts](Self::streams_parts) writes each piece
    /// as it comes; by default the pieces are gathered and handed to `upload_part_at`.
    fn upload_part_stream(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        offset: u64,
        mut data: PartStream<'_>,
    ) -> impl Future<Output = StoreResult<(String, u64)>> + Send {
        async move {
            let mut buf = bytes::BytesMut::new();
            while let Some(piece) = futures_util::StreamExt::next(&mut data).await {
                buf.extend_from_slice(&piece);
            }
            let len = buf.len() as u64;
            let etag = self
                .upload_part_at(key, multipart_id, number, offset, buf.freeze())
                .await?;
            Ok((etag, len))
        }
    }
    /// The `len` bytes from `offset` of the multipart upload `multipart_id` of `key` as its
    /// parts wrote them, before completion: `None` for a store that cannot read them (the
    /// default, as S3). The embedded store reads them from the upload's data file, where parts
    /// are written in place ([`upload_part_at`](Self::upload_part_at),
    /// [`upload_part_stream`](Self::upload_part_stream)); completion then assembles the object
    /// from exactly those bytes.
    fn read_written(
        &self,
        key: &str,
        multipart_id: &str,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = StoreResult<Option<Bytes>>> + Send {
        let _ = (key, multipart_id, offset, len);
        async { Ok(None) }
    }
    /// Assemble the object at `key` from `parts` (in order, with the ETags recorded for them).
    /// A part whose ETag no longer matches fails with `Conflict`. Completing an upload that was
    /// already completed into an object of the same total size succeeds.
    fn complete_multipart(
        &self,
        key: &str,
        multipart_id: &str,
        parts: &[FlushedPart],
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Abort a multipart upload, dropping its parts; absent ones are fine.
    fn abort_multipart(
        &self,
        key: &str,
        multipart_id: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// A URL from which the object at `key` can be fetched with a plain HTTP GET (honouring
    /// `Range`) for `expires_in_secs` seconds, and not after.
    fn download_url(
        &self,
        key: &str,
        expires_in_secs: u64,
    ) -> impl Future<Output = StoreResult<String>> + Send;
}

/// A store whose download URLs the local HTTP server answers itself (S3 serves its own). Kept out
/// of [`BlobStore`]: the service never resolves URLs, only the front door that serves them does.
pub trait SignedDownloads: Send + Sync + 'static {
    /// The object key that the request `path` and `query` (as received, without `?`) name, if
    /// they form a download URL this store issued; `None` if they are no download URL of it.
    fn resolve_download(
        &self,
        path: &str,
        query: Option<&str>,
    ) -> Option<Result<String, DownloadRefused>>;
}

//! InitiateLayerUpload, UploadLayerPart, CompleteLayerUpload: the upload state machine.
//!
//! An ECR part is not a multipart part (docs/architecture.md). Each accepted ECR part is written once as
//! a staging object and recorded, with the upload's advance, in one conditional write. As soon as
//! the staged bytes reach `s3_part_size`, the shortest prefix of staged segments that reaches it
//! is written as the next multipart part and the segments are dropped. Because segments are only
//! appended and the prefix rule depends on nothing else, every writer that flushes part `n`
//! writes the same bytes, so racing flushers are harmless. Completion flushes only the tail. An
//! ECR part that can be a multipart part on its own skips staging (`service/direct.rs`).
//!
//! CompleteLayerUpload holds the upload in `Completing` under a short lease that the running
//! completion renews every [`HEARTBEAT`]; a completion that died (its process killed, its
//! Lambda stopped) is taken over by the next CompleteLayerUpload once [`COMPLETING_LEASE_MS`]
//! passed without a beat. Every step of a completion is safe to run again or twice at once
//! (parts are deterministic, completing a completed multipart upload succeeds, the final write
//! is conditional), so a takeover needs no trust in the lease. A CompleteLayerUpload that meets
//! a live completion answers `ServerException` (HTTP 500), which the AWS SDKs and the aws CLI
//! retry. A completed upload's outcome stays answerable: its layer record keeps the upload's
//! blob key, so a retried CompleteLayerUpload with the layer's digest gets the same success.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Mutex;

use super::incremental::{self, PartHash, VerifyMode};
use super::types::*;
use super::{Service, direct, verify};
use crate::domain::error::{EcrError, StoreError};
use crate::domain::invalid;
use crate::domain::limits::MAX_LAYER_SIZE;
use crate::domain::model::{Digest as LayerDigest, LayerAvailability, UploadId};
use crate::ports::{
    BlobStore, Finish, FlushedPart, LayerRecord, MetadataStore, PartFingerprint, RepositoryRecord,
    SideWrite, StagedSegment, UploadRecord, UploadState,
};

/// How often a write that lost only to an unrelated change (a flush bumping the version) is
/// tried again before answering ServerException.
pub(super) const MAX_ATTEMPTS: usize = 16;

/// How long an upload stays in `Completing` without a heartbeat of its completion before another
/// CompleteLayerUpload takes it over (the completion died with its process or Lambda).
pub const COMPLETING_LEASE_MS: u64 = 10_000;

/// How often a running completion renews its lease: well inside [`COMPLETING_LEASE_MS`], so that
/// a late write or two does not hand a live completion over.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

// A completion begun just before the age cap ends inside the lifecycle rules' margin.
const _: () = assert!(COMPLETING_LEASE_MS.div_ceil(1000) + 5 * 60 <= super::UPLOAD_AGE_MARGIN_SECS);

/// Where the assembled layer of an upload lives.
fn blob_key(upload_id: &str) -> String {
    format!("layers/{upload_id}")
}

/// A new staging object for the part starting at `offset`. The key ends in 64 random bits, so
/// that concurrent writers of one offset never share an object: a loser can neither overwrite
/// nor remove the winner's bytes.
pub fn staging_key(upload_id: &str, offset: u64) -> Result<String, EcrError> {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce)
        .map_err(|e| EcrError::Server(format!("no random source for a staging key: {e}")))?;
    Ok(format!(
        "staging/{upload_id}/{offset:020}-{}",
        hex::encode(nonce)
    ))
}

/// A part's content fingerprint: its CRC-64/NVME in hex. It only tells a byte-identical re-send
/// of the last accepted part (an SDK retry after a lost answer) from a different part; it is
/// not what keeps wrong bytes out of a layer (completion verifies the layer's sha256 digest),
/// so it does not need to be a cryptographic hash, and the CRC costs a small fraction of one.
pub fn part_fingerprint(data: &[u8]) -> String {
    fingerprint_of(incremental::part_crc(data))
}

/// The fingerprint of a part whose CRC-64/NVME is `crc`.
pub(super) fn fingerprint_of(crc: u64) -> String {
    format!("{crc:016x}")
}

/// The staged segments this process wrote lately and has not flushed yet, at most `limit` bytes
/// of them (the S3 part size: the segments a part is made of, but the one at hand), newest kept:
/// when they become a multipart part, their bytes come from here instead of
/// being read back from the store, as long as the same process (a local server, a warm Lambda
/// instance) takes the upload's parts. A staging key ends in random bits and its object is never
/// rewritten, so bytes found under a key are that object's bytes; anything not found here is
/// read from the store as before.
pub(super) struct RecentSegments {
    limit: u64,
    held: std::sync::Mutex<std::collections::VecDeque<(String, Bytes)>>,
}

impl RecentSegments {
    pub(super) fn new(limit: u64) -> Self {
        Self {
            limit,
            held: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    fn keep(&self, key: &str, bytes: &Bytes) {
        if bytes.len() as u64 >= self.limit {
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.push_back((key.to_owned(), bytes.clone()));
        let mut total: u64 = held.iter().map(|(_, b)| b.len() as u64).sum();
        while total > self.limit {
            let Some((_, oldest)) = held.pop_front() else {
                break;
            };
            total -= oldest.len() as u64;
        }
    }

    fn take(&self, key: &str) -> Option<Bytes> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let at = held.iter().position(|(k, _)| k == key)?;
        held.remove(at).map(|(_, bytes)| bytes)
    }
}

/// The retryable answer to a CompleteLayerUpload that meets another one at work on the upload.
fn completion_in_progress(upload_id: &str) -> EcrError {
    EcrError::Server(format!(
        "The upload with id '{upload_id}' is being completed by another request; retry the request"
    ))
}

pub(super) fn invalid_part(up: &UploadRecord, message: String) -> EcrError {
    EcrError::InvalidLayerPart {
        message,
        registry_id: up.registry_id.clone(),
        repository_name: up.repository.clone(),
        upload_id: up.upload_id.clone(),
        last_valid_byte_received: up.next_byte.saturating_sub(1),
    }
}

impl<M: MetadataStore, B: BlobStore> Service<M, B> {
    /// InitiateLayerUpload: a fresh upload id and the part size we want.
    pub async fn initiate_layer_upload(
        &self,
        req: InitiateLayerUploadRequest,
    ) -> Result<InitiateLayerUploadResponse, EcrError> {
        let repo = self
            .repository(req.registry_id.as_ref(), &req.repository_name)
            .await?;
        let upload_id = UploadId::random().into_string();
        let key = blob_key(&upload_id);
        let incremental = self.settings.verify == VerifyMode::Incremental;
        let multipart_id = if incremental {
            self.blobs.create_multipart_checksummed(&key).await?
        } else {
            self.blobs.create_multipart(&key).await?
        };
        let now = self.clock_ms();
        let record = UploadRecord {
            upload_id: upload_id.clone(),
            registry_id: repo.registry_id,
            repository: repo.name,
            repository_incarnation: repo.incarnation,
            blob_key: key,
            multipart_id,
            next_byte: 0,
            flushed_bytes: 0,
            parts_flushed: 0,
            part_numbers_used: 0,
            last_part: None,
            smallest_nonfinal_part: None,
            state: UploadState::Open,
            version: 1,
            created_at_ms: now,
            updated_at_ms: now,
            expires_at: self.expiry(now, now),
            hash: incremental.then(incremental::initial_state),
            part_checksums: incremental,
        };
        self.meta.create_upload(&record).await?;
        Ok(InitiateLayerUploadResponse {
            upload_id,
            part_size: self.settings.part_size,
        })
    }

    /// BatchCheckLayerAvailability: which layers the repository holds. AWS's Go client asks
    /// before every upload and uploads only on `UNAVAILABLE`; any `failures` entry stops it.
    pub async fn batch_check_layer_availability(
        &self,
        req: BatchCheckLayerAvailabilityRequest,
    ) -> Result<BatchCheckLayerAvailabilityResponse, EcrError> {
        let repo = self
            .repository(req.registry_id.as_ref(), &req.repository_name)
            .await?;
        let mut out = BatchCheckLayerAvailabilityResponse {
            layers: Vec::new(),
            failures: Vec::new(),
        };
        for query in req.layer_digests {
            let digest = match query.value {
                Err(code) => {
                    out.failures.push(LayerFailure {
                        layer_digest: query.text,
                        failure_code: code,
                        failure_reason: code.reason().into(),
                    });
                    continue;
                }
                Ok(digest) => digest,
            };
            // Layers are recorded under the computed, lower-case sha256 digest.
            let found = self
                .meta
                .get_layer(&repo.registry_id, &repo.name, &digest.to_string())
                .await?;
            out.layers.push(match found {
                Some(layer) => Layer {
                    layer_digest: query.text,
                    layer_availability: LayerAvailability::Available,
                    layer_size: Some(layer.size),
                    media_type: layer.media_type,
                },
                None => Layer {
                    layer_digest: query.text,
                    layer_availability: LayerAvailability::Unavailable,
                    layer_size: None,
                    media_type: None,
                },
            });
        }
        Ok(out)
    }

    /// The upload `upload_id` of repository `repo`, if it is live: present, of this repository
    /// in its current incarnation (not of one deleted since), neither idle past its TTL nor
    /// older than `max_upload_age_secs`. Anything else is UploadNotFoundException.
    pub(super) async fn live_upload(
        &self,
        repository: &RepositoryRecord,
        upload_id: &str,
    ) -> Result<UploadRecord, EcrError> {
        let (registry, repo) = (repository.registry_id.as_str(), repository.name.as_str());
        let not_found = || EcrError::upload_not_found(registry, repo, upload_id);
        let up = self
            .meta
            .get_upload(upload_id)
            .await?
            .ok_or_else(not_found)?;
        let now_secs = self.clock_ms() / 1000;
        if up.registry_id != registry
            || up.repository != repo
            || up.expires_at <= now_secs
            || up.created_at_ms / 1000 + self.settings.max_upload_age_secs <= now_secs
            || up.state == UploadState::Done
            // An upload of an earlier repository of this name (`repository` was read by this
            // request; a delete since then took the upload record with it).
            || up.repository_incarnation != repository.incarnation
        {
            return Err(not_found());
        }
        Ok(up)
    }

    pub(super) fn touched(&self, up: &UploadRecord) -> UploadRecord {
        let now = self.clock_ms();
        UploadRecord {
            version: up.version + 1,
            updated_at_ms: now,
            expires_at: self.expiry(up.created_at_ms, now),
            ..up.clone()
        }
    }

    /// The expiry (seconds) of an upload created at `created_ms` and written at `now_ms`:
    /// `upload_ttl_secs` on, but no later than its age cap plus a completion lease, so that the
    /// sweep and DynamoDB's TTL take it soon after the cap and never under a completion begun
    /// before it.
    fn expiry(&self, created_ms: u64, now_ms: u64) -> u64 {
        let idle = now_ms / 1000 + self.settings.upload_ttl_secs;
        let cap = created_ms / 1000 + self.settings.max_upload_age_secs;
        idle.min(cap + COMPLETING_LEASE_MS.div_ceil(1000))
    }

    /// UploadLayerPart: accepts the next contiguous part of an upload.
    pub async fn upload_layer_part(
        &self,
        req: UploadLayerPartRequest,
    ) -> Result<UploadLayerPartResponse, EcrError> {
        let repo = self
            .repository(req.registry_id.as_ref(), &req.repository_name)
            .await?;
        let upload_id = req.upload_id.into_string();
        let (first, last) = (req.part_first_byte, req.part_last_byte);
        let blob = req.layer_part_blob;

        let mut up = self.live_upload(&repo, &upload_id).await?;
        let answer = |up: &UploadRecord| UploadLayerPartResponse {
            registry_id: up.registry_id.clone(),
            repository_name: up.repository.clone(),
            upload_id: up.upload_id.clone(),
            last_byte_received: up.next_byte.saturating_sub(1),
        };
        if up.state == UploadState::Completing {
            return Err(EcrError::upload_not_found(
                &repo.registry_id,
                &repo.name,
                &upload_id,
            ));
        }
        if last < first || last - first + 1 != blob.len() as u64 {
            return Err(invalid_part(
                &up,
                format!(
                    "The layer part size is not valid: partFirstByte {first} to partLastByte {last} is not the length of layerPartBlob ({} bytes)",
                    blob.len()
                ),
            ));
        }
        let crc = incremental::part_crc(&blob);
        let fingerprint = PartFingerprint {
            first,
            last,
            checksum: fingerprint_of(crc),
        };
        // Advances the upload's SHA-256 state, if it keeps one (incremental mode only).
        let mut hash = PartHash::new(blob.clone(), crc);
        let key = staging_key(&upload_id, first)?;
        let mut staged = false;
        for _ in 0..MAX_ATTEMPTS {
            if up.last_part.as_ref() == Some(&fingerprint) {
                // A byte-identical re-send of the last accepted part (an SDK retry after a
                // timeout): it is already stored.
                return Ok(answer(&up));
            }
            if first != up.next_byte {
                let err = invalid_part(
                    &up,
                    format!(
                        "First byte of the layer part is {first} instead of {}",
                        up.next_byte
                    ),
                );
                if staged {
                    // We lost to a different part at this offset; our staging object is ours
                    // alone (the key holds our content hash) and nothing refers to it.
                    self.drop_objects(vec![key]).await;
                }
                return Err(err);
            }
            if up.state == UploadState::Assembled {
                // A CompleteLayerUpload assembled the parts (and then failed): the upload
                // takes no more bytes, only another CompleteLayerUpload.
                return Err(invalid_part(
                    &up,
                    format!(
                        "The parts of upload '{upload_id}' were already assembled by CompleteLayerUpload; complete the upload with the layer's digest"
                    ),
                ));
            }
            if up.state != UploadState::Open {
                return Err(EcrError::upload_not_found(
                    &repo.registry_id,
                    &repo.name,
                    &upload_id,
                ));
            }
            // After contiguity: a part that does not continue the upload is answered as such
            // (InvalidLayerPartException), never as a limit.
            if last >= MAX_LAYER_SIZE {
                // Beyond this, S3's 10,000 parts of `s3_part_size` could not hold the layer either.
                return Err(EcrError::LimitExceeded(format!(
                    "The layer would exceed the maximum layer size of {} bytes",
                    MAX_LAYER_SIZE
                )));
            }
            if !staged && self.goes_direct(&up, first, blob.len() as u64) {
                // A part that can be a multipart part on its own is written once, as one
                // (`service/direct.rs`).
                match self.claim_part_number(&up).await {
                    Ok((claimed, number)) => {
                        return self
                            .write_direct(&repo, claimed, number, blob, fingerprint, hash)
                            .await;
                    }
                    Err(StoreError::Conflict) => {
                        up = self.live_upload(&repo, &upload_id).await?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !staged {
                self.blobs.put_object(&key, blob.clone()).await?;
                staged = true;
            }
            let next = self.advanced(&up, &fingerprint, &mut hash);
            let segment = StagedSegment {
                offset: first,
                len: blob.len() as u64,
                key: key.clone(),
            };
            match self
                .meta
                .update_upload(&next, SideWrite::Segment(segment))
                .await
            {
                Ok(()) => {
                    up = next;
                    if let Err(e) = self.flush_full_parts(&mut up, Some((&key, &blob))).await {
                        // The part is committed; the next part or completion flushes again.
                        tracing::warn!(upload_id = %upload_id, error = %crate::domain::error::chain(&e), "flush deferred");
                    }
                    if up.flushed_bytes <= first {
                        // Not in a multipart part yet: the flush that makes it one may find
                        // its bytes here.
                        self.recent.keep(&key, &blob);
                    }
                    return Ok(UploadLayerPartResponse {
                        last_byte_received: last,
                        ..answer(&up)
                    });
                }
                Err(StoreError::Conflict) => {
                    up = self.live_upload(&repo, &upload_id).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EcrError::Server(
            "The upload is changing too fast to accept the part; retry the request".into(),
        ))
    }

    /// `up` having accepted the part `fingerprint` (which starts at its `next_byte`): the next
    /// version, with the part as the last one and the upload's hash state, if it keeps one,
    /// advanced by it (`hash`, the part's bytes).
    pub(super) fn advanced(
        &self,
        up: &UploadRecord,
        fingerprint: &PartFingerprint,
        hash: &mut PartHash,
    ) -> UploadRecord {
        let mut next = self.touched(up);
        next.hash = hash.advance(up, fingerprint);
        next.next_byte = fingerprint.last + 1;
        if let Some(prev) = &up.last_part {
            let prev_len = prev.last - prev.first + 1;
            next.smallest_nonfinal_part = Some(
                next.smallest_nonfinal_part
                    .map_or(prev_len, |s| s.min(prev_len)),
            );
        }
        next.last_part = Some(fingerprint.clone());
        next
    }

    pub(super) async fn drop_objects(&self, keys: Vec<String>) {
        if let Err(e) = self.blobs.delete_objects(&keys).await {
            tracing::warn!(error = %crate::domain::error::chain(&e), count = keys.len(), "staging cleanup failed");
        }
    }

    /// Writes every full multipart part the staged segments make (see the module comment).
    /// `fresh` is a segment whose bytes are at hand, to spare reading it back.
    async fn flush_full_parts(
        &self,
        up: &mut UploadRecord,
        fresh: Option<(&str, &Bytes)>,
    ) -> Result<(), EcrError> {
        loop {
            let segments = self
                .meta
                .list_segments(&up.upload_id, up.flushed_bytes)
                .await?;
            let mut total = 0u64;
            let mut take = 0usize;
            for s in &segments {
                if total >= self.settings.s3_part_size {
                    break;
                }
                total += s.len;
                take += 1;
            }
            if total < self.settings.s3_part_size {
                return Ok(());
            }
            self.flush_segments(up, &segments[..take], fresh).await?;
        }
    }

    /// Writes `segments` (which start at `up.flushed_bytes`) as the next multipart part (the
    /// number after the last one handed out) and records it; then drops the staging objects.
    async fn flush_segments(
        &self,
        up: &mut UploadRecord,
        segments: &[StagedSegment],
        fresh: Option<(&str, &Bytes)>,
    ) -> Result<(), EcrError> {
        let offset = up.flushed_bytes;
        let mut expected = offset;
        for s in segments {
            if s.offset != expected {
                return Err(EcrError::Server(format!(
                    "staged segments of upload {} are not contiguous at byte {expected}",
                    up.upload_id
                )));
            }
            expected += s.len;
        }
        let len = expected - offset;
        let data = if let [only] = segments {
            self.segment_bytes(only, fresh).await?
        } else {
            let mut buf = BytesMut::with_capacity(len as usize);
            for s in segments {
                buf.extend_from_slice(&self.segment_bytes(s, fresh).await?);
            }
            buf.freeze()
        };
        // Every writer that flushes these segments reads the same number from the record (the
        // direct path claims numbers only while nothing is staged), so racing flushers write the
        // same bytes under the same number. A number that was handed out meanwhile is not ours:
        // then the part is written again under the next one.
        let mut number = direct::part_counter(up) + 1;
        // An upload created with a full-object checksum gets every part's CRC-64 (a fraction of
        // a millisecond per MiB; the default mode skips it).
        let crc = up.part_checksums.then(|| incremental::part_crc(&data));
        let mut part = FlushedPart {
            number,
            etag: self
                .write_part(up, number, offset, data.clone(), crc)
                .await?,
            offset,
            len,
        };
        for _ in 0..MAX_ATTEMPTS {
            if up.flushed_bytes != offset {
                // Another writer recorded this part (with the same bytes).
                return Ok(());
            }
            if direct::part_counter(up) >= number {
                number = direct::part_counter(up) + 1;
                part = FlushedPart {
                    number,
                    etag: self
                        .write_part(up, number, offset, data.clone(), crc)
                        .await?,
                    offset,
                    len,
                };
            }
            let mut next = self.touched(up);
            next.parts_flushed = up.parts_flushed + 1;
            next.part_numbers_used = number;
            next.flushed_bytes = offset + len;
            match self
                .meta
                .update_upload(&next, SideWrite::Part(part.clone()))
                .await
            {
                Ok(()) => {
                    *up = next;
                    let offsets: Vec<u64> = segments.iter().map(|s| s.offset).collect();
                    let keys = segments.iter().map(|s| s.key.clone()).collect();
                    self.meta.delete_segments(&up.upload_id, &offsets).await?;
                    self.drop_objects(keys).await;
                    return Ok(());
                }
                Err(StoreError::Conflict) => {
                    *up =
                        self.meta.get_upload(&up.upload_id).await?.ok_or_else(|| {
                            EcrError::Server("upload vanished during a flush".into())
                        })?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EcrError::Server("could not record a flushed part".into()))
    }

    /// Writes `data` as part `number` of `up`'s multipart upload at `offset`, with its CRC-64
    /// (`crc`) when the upload was created with a full-object checksum.
    pub(super) async fn write_part(
        &self,
        up: &UploadRecord,
        number: u32,
        offset: u64,
        data: Bytes,
        crc: Option<u64>,
    ) -> Result<String, StoreError> {
        match crc {
            Some(crc) if up.part_checksums => {
                self.blobs
                    .upload_part_checksummed(
                        &up.blob_key,
                        &up.multipart_id,
                        number,
                        offset,
                        data,
                        crc,
                    )
                    .await
            }
            _ => {
                self.blobs
                    .upload_part_at(&up.blob_key, &up.multipart_id, number, offset, data)
                    .await
            }
        }
    }

    async fn segment_bytes(
        &self,
        s: &StagedSegment,
        fresh: Option<(&str, &Bytes)>,
    ) -> Result<Bytes, EcrError> {
        match fresh {
            Some((key, bytes)) if key == s.key => Ok(bytes.clone()),
            _ => match self.recent.take(&s.key) {
                Some(bytes) if bytes.len() as u64 == s.len => Ok(bytes),
                _ => Ok(self.blobs.get_object(&s.key).await?),
            },
        }
    }

    /// CompleteLayerUpload: assembles, verifies and records the layer.
    pub async fn complete_layer_upload(
        &self,
        req: CompleteLayerUploadRequest,
    ) -> Result<CompleteLayerUploadResponse, EcrError> {
        self.complete_upload(req, self.settings.min_part_size).await
    }

    /// CompleteLayerUpload with its own bound on non-final parts: the OCI API's chunks may be of
    /// any size (the staged segments coalesce into multipart parts of `s3_part_size` either way).
    pub(super) async fn complete_upload(
        &self,
        req: CompleteLayerUploadRequest,
        min_part_size: u64,
    ) -> Result<CompleteLayerUploadResponse, EcrError> {
        let digests = req.layer_digests;
        // Only sha256 can be verified, and algorithms are compared exactly (`SHA256` is not
        // `sha256`): a list without one would record bytes nobody checked. Refused before
        // anything is read, as a constraint of the request, and the upload stays as it was.
        if !digests.iter().any(LayerDigest::is_sha256) {
            return Err(invalid(
                "layerDigests",
                "must include a digest of algorithm sha256 (lower case), the one the registry verifies",
            ));
        }
        let repo = self
            .repository(req.registry_id.as_ref(), &req.repository_name)
            .await?;
        let upload_id = req.upload_id.into_string();
        let (registry, name) = (repo.registry_id.as_str(), repo.name.as_str());
        let given: Vec<String> = digests
            .iter()
            .filter(|d| d.is_sha256())
            .map(ToString::to_string)
            .collect();

        // Take the upload into `Completing`, so that no part lands while it is assembled.
        let mut up = match self.live_upload(&repo, &upload_id).await {
            Ok(up) => up,
            Err(EcrError::UploadNotFound(_)) => {
                return self
                    .completed_answer(registry, name, &upload_id, &given)
                    .await;
            }
            Err(e) => return Err(e),
        };
        let mut taken = false;
        let mut prior = up.state;
        for _ in 0..MAX_ATTEMPTS {
            prior = up.state;
            match up.state {
                UploadState::Open | UploadState::Assembled => {}
                UploadState::Completing => {
                    let silent_ms = self.clock_ms().saturating_sub(up.updated_at_ms);
                    if silent_ms <= COMPLETING_LEASE_MS {
                        return Err(completion_in_progress(&upload_id));
                    }
                    tracing::info!(upload_id = %upload_id, silent_ms, "taking over a completion that stopped");
                }
                UploadState::Done => {
                    return self
                        .completed_answer(registry, name, &upload_id, &given)
                        .await;
                }
            }
            if up.next_byte == 0 {
                return Err(EcrError::EmptyUpload(format!(
                    "The upload with id '{upload_id}' in the repository with name '{name}' in registry with id '{registry}' cannot be completed because it does not have any parts"
                )));
            }
            if up.smallest_nonfinal_part.is_some_and(|s| s < min_part_size) {
                return Err(EcrError::LayerPartTooSmall(format!(
                    "All layer parts except the last part should be at least {}",
                    human_size(min_part_size)
                )));
            }
            let mut next = self.touched(&up);
            next.state = UploadState::Completing;
            match self.meta.update_upload(&next, SideWrite::None).await {
                Ok(()) => {
                    up = next;
                    taken = true;
                    break;
                }
                Err(StoreError::Conflict) => {
                    up = match self.live_upload(&repo, &upload_id).await {
                        Ok(up) => up,
                        Err(EcrError::UploadNotFound(_)) => {
                            return self
                                .completed_answer(registry, name, &upload_id, &given)
                                .await;
                        }
                        Err(e) => return Err(e),
                    };
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !taken {
            return Err(EcrError::Server(
                "could not take the upload for completion".into(),
            ));
        }

        // The work and the heartbeat that keeps the lease, in this one task: if the request is
        // dropped (a Lambda stopped), both stop and the lease runs out for a retry to take over.
        let lease = Mutex::new(up);
        let mut assembled = false;
        let work = async {
            let result = self
                .assemble_and_verify(&lease, &digests, &mut assembled)
                .await;
            // Waits out a heartbeat write in flight (it holds the record), so that dropping the
            // heartbeat below never cuts a write whose outcome the record in hand would miss.
            drop(lease.lock().await);
            result
        };
        let result = tokio::select! {
            result = work => result,
            never = self.keep_lease(&lease) => match never {},
        };
        let up = lease.into_inner();
        match result {
            Ok(layer) => self.record_layer(up, layer).await,
            Err(err) => {
                // A wrong digest or a backend failure: hand the upload back so that a retry (with
                // the right digest) can finish it. Once assembled (perhaps by a completion taken
                // over), it takes no more parts.
                let mut back = self.touched(&up);
                back.state = if assembled || prior != UploadState::Open {
                    UploadState::Assembled
                } else {
                    UploadState::Open
                };
                if let Err(e) = self.meta.update_upload(&back, SideWrite::None).await {
                    tracing::warn!(upload_id = %up.upload_id, error = %crate::domain::error::chain(&e), "could not reopen upload");
                }
                Err(err)
            }
        }
    }

    /// Renews the lease of a running completion every [`HEARTBEAT`]; never returns. Holds the
    /// record while it writes, as the completion does while it flushes, so that a conflict can
    /// only mean that another request took the upload over: then it stops beating (the
    /// completion goes on; its final conditional write tells it how it ended).
    async fn keep_lease(&self, lease: &Mutex<UploadRecord>) -> Infallible {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            let mut up = lease.lock().await;
            let next = self.touched(&up);
            match self.meta.update_upload(&next, SideWrite::None).await {
                Ok(()) => *up = next,
                Err(StoreError::Conflict) => {
                    tracing::warn!(upload_id = %up.upload_id, "completion taken over by another request");
                    drop(up);
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    tracing::warn!(upload_id = %up.upload_id, error = %crate::domain::error::chain(&e), "completion heartbeat failed");
                }
            }
        }
    }

    /// The answer to a CompleteLayerUpload of an upload that is no longer live: the success it
    /// had if it recorded the layer of one of the `sha256` digests `given` (the layer's blob is
    /// the upload's), LayerAlreadyExists if it was retired because such a layer was there
    /// already, else UploadNotFoundException.
    async fn completed_answer(
        &self,
        registry: &str,
        name: &str,
        upload_id: &str,
        given: &[String],
    ) -> Result<CompleteLayerUploadResponse, EcrError> {
        let own_blob = blob_key(upload_id);
        let mut existing = None;
        for digest in given {
            if let Some(layer) = self.meta.get_layer(registry, name, digest).await? {
                if layer.blob_key == own_blob {
                    return Ok(CompleteLayerUploadResponse {
                        registry_id: registry.to_owned(),
                        repository_name: name.to_owned(),
                        upload_id: upload_id.to_owned(),
                        layer_digest: layer.digest,
                    });
                }
                existing.get_or_insert(layer.digest);
            }
        }
        if let Some(digest) = existing
            && let Some(up) = self.meta.get_upload(upload_id).await?
            && up.state == UploadState::Done
            && up.registry_id == registry
            && up.repository == name
        {
            return Err(layer_exists(&digest, name, registry));
        }
        Err(EcrError::upload_not_found(registry, name, upload_id))
    }

    /// Flushes the tail, assembles the multipart upload, and hashes the assembled object;
    /// `assembled` tells whether the multipart upload was completed (then it takes no parts).
    async fn assemble_and_verify(
        &self,
        lease: &Mutex<UploadRecord>,
        digests: &[LayerDigest],
        assembled: &mut bool,
    ) -> Result<LayerRecord, EcrError> {
        let started = std::time::Instant::now();
        let up = {
            // The record is held while the flushes write it (see `keep_lease`).
            let mut up = lease.lock().await;
            self.flush_full_parts(&mut up, None).await?;
            let tail = self
                .meta
                .list_segments(&up.upload_id, up.flushed_bytes)
                .await?;
            if !tail.is_empty() {
                self.flush_segments(&mut up, &tail, None).await?;
            }
            if up.flushed_bytes != up.next_byte {
                return Err(EcrError::Server(format!(
                    "upload {} holds {} of {} bytes after the final flush",
                    up.upload_id, up.flushed_bytes, up.next_byte
                )));
            }
            up.clone()
        };
        let flushed = started.elapsed();
        let parts = self.meta.list_parts(&up.upload_id).await?;
        // Incremental mode: the digest of the bytes the parts were accepted with, if the
        // recorded state matches the upload exactly (`service/incremental.rs`); else `None`,
        // and the assembled object is streamed as in the default mode.
        let recorded = incremental::recorded_digest(&up);
        if up.hash.is_some() && recorded.is_none() {
            tracing::info!(upload_id = %up.upload_id, "hash state does not match the upload; verifying by streaming");
        }
        if up.part_checksums {
            // The store compares the assembled object with the CRC-64 of the accepted bytes
            // (S3 refuses the assembly on a mismatch).
            self.blobs
                .complete_multipart_checksummed(
                    &up.blob_key,
                    &up.multipart_id,
                    &parts,
                    recorded.as_ref().map(|(_, crc)| *crc),
                )
                .await?;
        } else {
            self.blobs
                .complete_multipart(&up.blob_key, &up.multipart_id, &parts)
                .await?;
        }
        *assembled = true;
        let joined = started.elapsed();

        let from_state = recorded.is_some();
        let mut early = false;
        let (computed, size) = match recorded {
            Some((digest, _)) => (digest, up.next_byte),
            // The default mode: the hash of the stored bytes read back as they were written
            // (`service/early.rs`) if it covers exactly these parts and confirms a digest asked
            // for; else the assembled object, streamed.
            None => match self.early.digest(&up, &parts) {
                Some(digest)
                    if digests.contains(&digest)
                        && self.blobs.object_size(&up.blob_key).await? == Some(up.next_byte) =>
                {
                    early = true;
                    (digest, up.next_byte)
                }
                _ => verify::sha256_of_object(&self.blobs, &up.blob_key, up.next_byte).await?,
            },
        };
        tracing::debug!(
            upload_id = %up.upload_id,
            parts = parts.len(),
            from_state,
            early,
            flush_ms = flushed.as_millis() as u64,
            assemble_ms = (joined - flushed).as_millis() as u64,
            verify_ms = (started.elapsed() - joined).as_millis() as u64,
            "completion steps"
        );
        if size != up.next_byte {
            return Err(EcrError::Server(format!(
                "assembled layer of upload {} has {size} bytes, expected {}",
                up.upload_id, up.next_byte
            )));
        }
        // Only exact `sha256` digests are compared (the request has at least one); a digest of
        // another algorithm can be neither verified nor refuted.
        if !digests.contains(&computed) {
            return Err(EcrError::InvalidLayer(
                "None of the provided layer digests match the calculated layer digest".into(),
            ));
        }
        Ok(LayerRecord {
            registry_id: up.registry_id.clone(),
            repository: up.repository.clone(),
            digest: computed.to_string(),
            blob_key: up.blob_key.clone(),
            size,
            media_type: None,
            created_at_ms: self.clock_ms(),
        })
    }

    async fn record_layer(
        &self,
        up: UploadRecord,
        layer: LayerRecord,
    ) -> Result<CompleteLayerUploadResponse, EcrError> {
        let mut done = self.touched(&up);
        done.state = UploadState::Done;
        let outcome = match self.meta.finish_upload(&done, &layer).await {
            Ok(outcome) => outcome,
            Err(StoreError::Conflict) => {
                // Another request took the completion over: it ended it, or is still at it.
                let (registry, name) = (up.registry_id.as_str(), up.repository.as_str());
                return match self.meta.get_upload(&up.upload_id).await? {
                    Some(now) if now.state != UploadState::Done => {
                        Err(completion_in_progress(&up.upload_id))
                    }
                    _ => {
                        self.completed_answer(registry, name, &up.upload_id, &[layer.digest])
                            .await
                    }
                };
            }
            Err(e) => return Err(e.into()),
        };
        let answer = CompleteLayerUploadResponse {
            registry_id: up.registry_id.clone(),
            repository_name: up.repository.clone(),
            upload_id: up.upload_id.clone(),
            layer_digest: layer.digest.clone(),
        };
        match outcome {
            Finish::Recorded => {
                // The layer record (whose blob is the upload's) answers a retry from now on.
                self.forget(&up, true).await;
                Ok(answer)
            }
            Finish::RepositoryGone => {
                // The repository was deleted during the completion: the upload went with it.
                self.forget(&up, true).await;
                self.drop_objects(vec![up.blob_key.clone()]).await;
                Err(EcrError::upload_not_found(
                    &up.registry_id,
                    &up.repository,
                    &up.upload_id,
                ))
            }
            Finish::LayerExists(existing) => {
                // The retired record stays until it expires, so that a retry gets this answer.
                self.forget(&up, false).await;
                if existing.blob_key != up.blob_key {
                    self.drop_objects(vec![up.blob_key.clone()]).await;
                }
                Err(layer_exists(&layer.digest, &up.repository, &up.registry_id))
            }
        }
    }

    /// Drops the staging objects and multipart upload of a finished upload, and its records if
    /// `records`.
    pub(super) async fn forget(&self, up: &UploadRecord, records: bool) {
        match self.meta.list_segments(&up.upload_id, 0).await {
            Ok(segments) => {
                self.drop_objects(segments.into_iter().map(|s| s.key).collect())
                    .await
            }
            Err(e) => {
                tracing::warn!(upload_id = %up.upload_id, error = %crate::domain::error::chain(&e), "cleanup listing failed")
            }
        }
        if let Err(e) = self
            .blobs
            .abort_multipart(&up.blob_key, &up.multipart_id)
            .await
        {
            tracing::warn!(upload_id = %up.upload_id, error = %crate::domain::error::chain(&e), "multipart abort failed");
        }
        if !records {
            return;
        }
        if let Err(e) = self.meta.delete_upload(&up.upload_id).await {
            tracing::warn!(upload_id = %up.upload_id, error = %crate::domain::error::chain(&e), "upload cleanup failed");
        }
    }

    /// Removes uploads past their expiry with their staged bytes and multipart uploads (the
    /// embedded backend's counterpart of the bucket lifecycle rule and the DynamoDB TTL).
    /// Returns how many were removed.
    pub async fn sweep_expired(&self, limit: usize) -> Result<usize, EcrError> {
        let expired = self
            .meta
            .expired_uploads(self.clock_ms() / 1000, limit)
            .await?;
        for up in &expired {
            if up.state != UploadState::Done {
                self.drop_objects(vec![up.blob_key.clone()]).await;
            }
            self.forget(up, true).await;
        }
        Ok(expired.len())
    }
}

fn layer_exists(digest: &str, repository: &str, registry: &str) -> EcrError {
    EcrError::LayerAlreadyExists(format!(
        "The layer with digest '{digest}' already exists in the repository with name '{repository}' in registry with id '{registry}'"
    ))
}

/// ECR words the minimum as "5MB".
fn human_size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes.is_multiple_of(MIB) {
        format!("{}MB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

//! UploadLayerPart's direct path: an ECR part that can be a multipart part on its own is written
//! once, straight to `UploadPart`, instead of as a staging object copied into the multipart upload
//! later (`service/upload.rs` has the staged path and the state machine).
//!
//! A part goes this way when nothing is staged before it (`flushed_bytes` is its first byte) and
//! it is at least `s3_part_size` or [`DIRECT_MIN_PART`] long, whichever is less, so that every
//! multipart part but the last stays at least that size whichever path wrote it. The second
//! bound lets a client's last part (which ECR does not mark as last) of 6 MiB or more skip the
//! staging write and the copy at completion too, while keeping every part well above S3's
//! 5 MiB minimum and the part numbers within reach (below).
//!
//! Racing writers: the part number is claimed first, by a conditional write that raises the
//! upload's `part_numbers_used`, and only then written. Every claim gets a number of its own, so
//! two writers never write different bytes under one number: a writer that loses (a different
//! part for the same range, or one whose upload moved on) leaves an unreferenced part behind,
//! which the multipart upload's abort or the bucket's lifecycle rule removes, and never touches
//! the bytes another writer recorded. The part is accepted by a second conditional write that
//! advances the upload and records the part with the ETag the store answered, in one step; the
//! completion hands exactly those ETags to the multipart completion, which refuses any mismatch.
//! Numbers ascend with offsets (a claim at an offset happens after the part before it was
//! accepted), and claims that never led to a part are bounded by [`MAX_UNUSED_PART_NUMBERS`].
//! Of two claims for one range only the later one is accepted (the earlier answers a retryable
//! `ServerException`), and a staged flush always records a number above every claim: so the part
//! recorded for a range is the highest-numbered write overlapping it, which is what lets the
//! embedded store write parts in place in one file (`BlobStore::upload_part_at`).

use bytes::Bytes;

use super::Service;
use super::incremental::PartHash;
use super::types::UploadLayerPartResponse;
use super::upload::{MAX_ATTEMPTS, invalid_part};
use crate::domain::error::{EcrError, StoreError};
use crate::ports::{
    BlobStore, FlushedPart, MetadataStore, PartFingerprint, RepositoryRecord, SideWrite,
    UploadRecord, UploadState,
};

/// S3's highest part number.
const MAX_PART_NUMBER: u32 = 10_000;

/// The size from which a part goes the direct way even when `s3_part_size` is larger. With every
/// part at least this long, ECR's largest layer (52,000 MiB) needs at most 8,667 part numbers.
pub const DIRECT_MIN_PART: u64 = 6 * 1024 * 1024;

/// Part numbers an upload may claim without recording a part (lost races, failed writes) before
/// it stops taking the direct path: the staged path's parts then still find numbers for the
/// largest layer with `s3_part_size` at 6 MiB or more (8,667 + 1,000 < 10,000).
pub const MAX_UNUSED_PART_NUMBERS: u32 = 1_000;

/// The highest part number handed out for `up`, recorded or not.
pub fn part_counter(up: &UploadRecord) -> u32 {
    up.part_numbers_used.max(up.parts_flushed)
}

impl<M: MetadataStore, B: BlobStore> Service<M, B> {
    /// Whether the part at `first` (the upload's `next_byte`) of `len` bytes is written straight
    /// as a multipart part.
    pub(super) fn goes_direct(&self, up: &UploadRecord, first: u64, len: u64) -> bool {
        let counter = part_counter(up);
        up.flushed_bytes == first
            && len >= self.settings.s3_part_size.min(DIRECT_MIN_PART)
            && counter < MAX_PART_NUMBER
            && counter - up.parts_flushed.min(counter) < MAX_UNUSED_PART_NUMBERS
    }

    /// Claims the next part number of `up` (read by this request): the claimed record, or
    /// `Conflict` if the upload changed since it was read.
    pub(super) async fn claim_part_number(
        &self,
        up: &UploadRecord,
    ) -> Result<(UploadRecord, u32), StoreError> {
        let number = part_counter(up) + 1;
        let mut next = self.touched(up);
        next.part_numbers_used = number;
        self.meta.update_upload(&next, SideWrite::None).await?;
        Ok((next, number))
    }

    /// Writes `blob` as part `number` (claimed in `up`) and accepts it: the answer to the
    /// UploadLayerPart.
    pub(super) async fn write_direct(
        &self,
        repo: &RepositoryRecord,
        up: UploadRecord,
        number: u32,
        blob: Bytes,
        fingerprint: PartFingerprint,
        hash: PartHash,
    ) -> Result<UploadLayerPartResponse, EcrError> {
        let first = fingerprint.first;
        let len = blob.len() as u64;
        // The part's fingerprint is its CRC-64/NVME: the checksum of a checksummed upload.
        let etag = self
            .write_part(&up, number, first, blob, Some(hash.crc()))
            .await?;
        let part = FlushedPart {
            number,
            etag,
            offset: first,
            len,
        };
        self.record_direct(repo, up, part, fingerprint, hash).await
    }

    /// Accepts `part`, written under the number claimed in `up` (the part `fingerprint`, which
    /// advances the upload's hash state if it keeps one: `hash`): the answer to the
    /// UploadLayerPart.
    pub(super) async fn record_direct(
        &self,
        repo: &RepositoryRecord,
        mut up: UploadRecord,
        part: FlushedPart,
        fingerprint: PartFingerprint,
        mut hash: PartHash,
    ) -> Result<UploadLayerPartResponse, EcrError> {
        let (first, last, number) = (fingerprint.first, fingerprint.last, part.number);
        let upload_id = up.upload_id.clone();
        for _ in 0..MAX_ATTEMPTS {
            if up.last_part.as_ref() == Some(&fingerprint) {
                // The same bytes, sent again, were accepted meanwhile (under another number).
                return Ok(part_answer(&up, up.next_byte.saturating_sub(1)));
            }
            if first != up.next_byte {
                return Err(invalid_part(
                    &up,
                    format!(
                        "First byte of the layer part is {first} instead of {}",
                        up.next_byte
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
            if up.flushed_bytes != first || part_counter(&up) < number {
                // Cannot happen while the claim holds (nothing is staged at `next_byte` and
                // numbers only grow); refuse rather than record a part out of order.
                return Err(EcrError::Server(format!(
                    "upload {upload_id} changed under a direct part at byte {first}; retry the request"
                )));
            }
            if part_counter(&up) > number {
                // A later request claimed a number for this same range: the last claim wins,
                // so that a store writing parts in place (the embedded one) holds the bytes of
                // the part recorded, whichever write landed last (`BlobStore::upload_part_at`).
                return Err(EcrError::Server(format!(
                    "another request is writing the part at byte {first} of upload {upload_id}; retry the request"
                )));
            }
            let mut next = self.advanced(&up, &fingerprint, &mut hash);
            next.flushed_bytes = last + 1;
            next.parts_flushed = up.parts_flushed + 1;
            match self
                .meta
                .update_upload(&next, SideWrite::Part(part.clone()))
                .await
            {
                Ok(()) => return Ok(part_answer(&next, last)),
                Err(StoreError::Conflict) => {
                    up = self.live_upload(repo, &upload_id).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EcrError::Server(
            "The upload is changing too fast to accept the part; retry the request".into(),
        ))
    }
}

fn part_answer(up: &UploadRecord, last_byte_received: u64) -> UploadLayerPartResponse {
    UploadLayerPartResponse {
        registry_id: up.registry_id.clone(),
        repository_name: up.repository.clone(),
        upload_id: up.upload_id.clone(),
        last_byte_received,
    }
}

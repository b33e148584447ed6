//! A chunk of an upload written as it arrives: one direct part (`service/direct.rs`) whose bytes
//! the blob store writes piece by piece ([`BlobStore::upload_part_stream`]), for a store that
//! streams parts (the embedded one). The OCI API (src/protocols/oci.rs) hands a `PATCH` body
//! over so, instead of cutting it into parts of `s3_part_size` each written, synced and recorded
//! before the next: memory stays at a few small pieces, the store syncs once per chunk, and the
//! part is recorded in one metadata commit.
//!
//! It is the same state machine as UploadLayerPart's direct path: the part number is claimed
//! first, the chunk must start at the upload's `next_byte` with nothing staged before it, and the
//! part is accepted by the same conditional write (of two writers racing on one range only the
//! later claim is accepted; the earlier gets a retryable `ServerException`). The chunk goes this
//! way only once its first [`Service::stream_threshold`] bytes have arrived, so that every part
//! but the last stays at least as large as a direct part must be; a shorter chunk, or one that
//! cannot go direct, takes UploadLayerPart's path. A chunk whose body is cut is not recorded:
//! the upload holds what it held before it, and the client resumes from there. An upload that
//! keeps a SHA-256 state (`ECR_VERIFY=incremental`) has it advanced by the pieces as they
//! arrive, on a thread beside the writes, and recorded with the part.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::Service;
use super::direct::DIRECT_MIN_PART;
use super::early;
use super::incremental::{self, PartHash, Running, VerifyMode};
use super::upload::{MAX_ATTEMPTS, fingerprint_of, invalid_part};
use crate::domain::error::{EcrError, StoreError};
use crate::domain::limits::MAX_LAYER_SIZE;
use crate::domain::model::{RepositoryName, UploadId};
use crate::ports::{BlobStore, FlushedPart, MetadataStore, PartFingerprint, UploadState};

/// Pieces of a streamed chunk queued for its hasher (each also held by the write until written).
const HASHER_QUEUE: usize = 4;

/// Advances `running` by every piece `pieces` yields, until its senders are gone.
fn absorb(mut running: Running, mut pieces: tokio::sync::mpsc::Receiver<Bytes>) -> Running {
    while let Some(piece) = pieces.blocking_recv() {
        running.absorb(&piece);
    }
    running
}

/// What became of a chunk handed to [`Service::upload_layer_stream`].
#[derive(Debug)]
pub enum Streamed {
    /// Written and recorded: the upload now holds this many bytes.
    Written(u64),
    /// The upload cannot take the chunk as a direct part (bytes are staged before it, or its
    /// part numbers are spent): nothing was written, and these are the pieces it was given
    /// first, for UploadLayerPart's path.
    NotDirect(Vec<Bytes>),
}

/// Why a streamed chunk was not recorded.
#[derive(Debug)]
pub enum StreamFailure<E> {
    /// The body could not be read to its end.
    Body(E),
    /// The upload refused the chunk, or the store failed.
    Upload(EcrError),
}

impl<E> From<EcrError> for StreamFailure<E> {
    fn from(e: EcrError) -> Self {
        StreamFailure::Upload(e)
    }
}

impl<E> From<StoreError> for StreamFailure<E> {
    fn from(e: StoreError) -> Self {
        StreamFailure::Upload(e.into())
    }
}

impl<M: MetadataStore, B: BlobStore> Service<M, B> {
    /// Whether the blob store writes a chunk as it arrives ([`BlobStore::streams_parts`]).
    pub fn streams_parts(&self) -> bool {
        self.blobs.streams_parts()
    }

    /// The bytes of a chunk that must have arrived before it is streamed as a part of its own:
    /// the least a direct part may hold.
    pub fn stream_threshold(&self) -> u64 {
        self.settings.s3_part_size.min(DIRECT_MIN_PART)
    }

    /// Writes the chunk starting at byte `first_byte` of upload `upload_id` of `name` (`head`,
    /// at least [`stream_threshold`](Self::stream_threshold) bytes, then whatever `rest` yields
    /// until it ends) as one direct part, written as it arrives and recorded once it is durable.
    pub async fn upload_layer_stream<S, E>(
        &self,
        name: &RepositoryName,
        upload_id: &UploadId,
        first_byte: u64,
        head: Vec<Bytes>,
        rest: &mut S,
    ) -> Result<Streamed, StreamFailure<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: Send,
    {
        let repo = self.repository(None, name).await?;
        let upload_id = upload_id.as_str();
        let head_len: u64 = head.iter().map(|b| b.len() as u64).sum();
        let mut up = self.live_upload(&repo, upload_id).await?;
        let mut claim = None;
        for _ in 0..MAX_ATTEMPTS {
            if up.state == UploadState::Completing {
                return Err(
                    EcrError::upload_not_found(&repo.registry_id, &repo.name, upload_id).into(),
                );
            }
            if first_byte != up.next_byte {
                return Err(invalid_part(
                    &up,
                    format!(
                        "First byte of the layer part is {first_byte} instead of {}",
                        up.next_byte
                    ),
                )
                .into());
            }
            if up.state == UploadState::Assembled {
                return Err(invalid_part(
                    &up,
                    format!(
                        "The parts of upload '{upload_id}' were already assembled; complete the upload with the layer's digest"
                    ),
                )
                .into());
            }
            if up.state != UploadState::Open {
                return Err(
                    EcrError::upload_not_found(&repo.registry_id, &repo.name, upload_id).into(),
                );
            }
            // A store that gathers the pieces would write the part without the CRC-64 an
            // upload with part checksums (`ECR_VERIFY=incremental` on S3) gives each part; one
            // that streams parts checks none (`BlobStore::streams_parts`).
            if head_len == 0
                || (up.part_checksums && !self.blobs.streams_parts())
                || !self.goes_direct(&up, first_byte, head_len)
            {
                return Ok(Streamed::NotDirect(head));
            }
            match self.claim_part_number(&up).await {
                Ok(claimed) => {
                    claim = Some(claimed);
                    break;
                }
                Err(StoreError::Conflict) => up = self.live_upload(&repo, upload_id).await?,
                Err(e) => return Err(e.into()),
            }
        }
        let Some((claimed, number)) = claim else {
            return Err(EcrError::Server(
                "The upload is changing too fast to accept the part; retry the request".into(),
            )
            .into());
        };

        // An upload that keeps a SHA-256 state (`ECR_VERIFY=incremental`) has it advanced by
        // the chunk's bytes as they arrive, on a thread of its own beside the writes, so that
        // its completion needs no read-back (`service/incremental.rs`). A state that does not
        // match the upload is not advanced: the part then drops it, and completion streams.
        let (to_hasher, hasher) = match incremental::matching_state(&claimed) {
            Some(running) => {
                let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(HASHER_QUEUE);
                (
                    Some(tx),
                    Some(tokio::task::spawn_blocking(move || absorb(running, rx))),
                )
            }
            None => (None, None),
        };

        // In the default mode, with a store that can read an upload's bytes, they are read back
        // and hashed as they are written (`service/early.rs`): the store writes a piece before
        // it takes the next, so a piece's range is handed to the reader once the next one is
        // taken, and the last once the write is done.
        let early = (self.settings.verify == VerifyMode::Stream && claimed.hash.is_none())
            .then(|| self.early.start(upload_id, first_byte))
            .flatten();
        let (written_tx, written_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
        let written_tx = early.is_some().then_some(written_tx);
        let last_piece: std::sync::Mutex<Option<(u64, u64)>> = std::sync::Mutex::new(None);

        // The bytes the layer may still take from here.
        let room = MAX_LAYER_SIZE.saturating_sub(first_byte);
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        let mut failure: Option<StreamFailure<E>> = None;
        let mut taken = 0u64;
        let to_reader = written_tx.clone();
        let last_piece = &last_piece;
        let pieces = futures_util::stream::iter(head.into_iter().map(Ok))
            .chain(&mut *rest)
            .scan(
                (&mut crc, &mut failure, &mut taken),
                move |(crc, failure, taken), piece| {
                    let next = match piece {
                        Ok(piece) if **taken + piece.len() as u64 > room => {
                            **failure = Some(StreamFailure::Upload(EcrError::LimitExceeded(
                                format!(
                                    "The layer would exceed the maximum layer size of {MAX_LAYER_SIZE} bytes"
                                ),
                            )));
                            None
                        }
                        Ok(piece) => {
                            crc.update(&piece);
                            if let Some(tx) = &to_reader {
                                let range = (first_byte + **taken, piece.len() as u64);
                                let before = last_piece
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .replace(range);
                                if let Some(before) = before {
                                    // Written: the store takes a piece once the last is in.
                                    let _ = tx.send(before);
                                }
                            }
                            **taken += piece.len() as u64;
                            Some(piece)
                        }
                        Err(e) => {
                            **failure = Some(StreamFailure::Body(e));
                            None
                        }
                    };
                    std::future::ready(next)
                },
            )
            .then(move |piece| {
                let to_hasher = to_hasher.clone();
                async move {
                    if let Some(tx) = to_hasher {
                        // A hasher that stopped leaves the state behind (the part then drops
                        // it): no reason to stop the write.
                        let _ = tx.send(piece.clone()).await;
                    }
                    piece
                }
            });
        let write = async {
            let written = self
                .blobs
                .upload_part_stream(
                    &claimed.blob_key,
                    &claimed.multipart_id,
                    number,
                    first_byte,
                    Box::pin(pieces),
                )
                .await;
            if let (Ok(_), Some(tx)) = (&written, &written_tx) {
                let last = last_piece.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(last) = last {
                    let _ = tx.send(last);
                }
            }
            // The reader ends when the ranges do.
            drop(written_tx);
            written
        };
        let reading = async {
            match early {
                Some(covered) => early::read_back(&self.blobs, &claimed, covered, written_rx).await,
                None => None,
            }
        };
        let (written, early) = tokio::join!(write, reading);
        if let Some(failure) = failure {
            // Nothing is recorded: the claimed number stays unused, and the bytes written in
            // place belong to no part (a later part over them has a higher number).
            return Err(failure);
        }
        let (etag, len) = match written {
            Ok(written) => written,
            Err(StoreError::Conflict) => {
                return Err(EcrError::Server(format!(
                    "another request is writing the part at byte {first_byte} of upload {upload_id}; retry the request"
                ))
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        let crc = crc.finalize();
        let fingerprint = PartFingerprint {
            first: first_byte,
            last: first_byte + len - 1,
            checksum: fingerprint_of(crc),
        };
        let part = FlushedPart {
            number,
            etag,
            offset: first_byte,
            len,
        };
        let hash = match (hasher, &claimed.hash) {
            (Some(hasher), Some(from)) => match hasher.await {
                Ok(mut running) => {
                    running.end_part(crc, len, &fingerprint.checksum);
                    PartHash::streamed(crc, from.clone(), running.encode())
                }
                Err(e) => {
                    tracing::warn!(error = %e, upload_id, "hashing a streamed part failed; its completion will stream");
                    PartHash::unhashed(crc)
                }
            },
            _ => PartHash::unhashed(crc),
        };
        let checksum = fingerprint.checksum.clone();
        self.record_direct(&repo, claimed, part.clone(), fingerprint, hash)
            .await?;
        if let Some(mut covered) = early
            && covered.len() == first_byte + len
        {
            covered.end_part(part, &checksum);
            self.early.keep(upload_id, covered);
        }
        Ok(Streamed::Written(first_byte + len))
    }
}

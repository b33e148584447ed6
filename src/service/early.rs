//! Early verification, in the default mode (`ECR_VERIFY=stream`), for a store that can read an
//! upload's bytes before completion (`BlobStore::read_written`: the embedded one). A `/v2/`
//! chunk streamed into the upload's data file (`service/stream.rs`) is read back from the file
//! piece by piece as the pieces are written, beside the writes, and hashed: the same reading of
//! the stored bytes that completion would do, done while the client is still sending instead of
//! after. Completion (`service/upload.rs`) then takes the digest from that hash, without reading
//! the layer again, when it covers exactly the parts the upload records.
//!
//! Why the bytes read are the layer's: the store writes each piece before it takes the next
//! one, so a piece is read only once it is in the file; a write of a lower part number over it
//! afterwards is refused, and a write of a higher number over a recorded part makes the
//! assembly fail (`BlobStore::upload_part_stream`, `complete_multipart`), so the recorded
//! parts' bytes are the bytes read. The hash is kept in this process only, per upload, and a
//! chunk continues it only from the exact byte it covers. Anything else (no hash: a chunk that
//! took UploadLayerPart's path, another process, a restart; a part list that differs; a read
//! that failed) leaves completion to stream the assembled object as always, and so does a
//! digest that does not match: the early hash may confirm a digest, never refute one.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedReceiver;

use super::incremental::Running;
use crate::domain::model::Digest as LayerDigest;
use crate::ports::{BlobStore, FlushedPart, UploadRecord};

/// Uploads whose early hash is kept at once; the oldest is dropped beyond it (an upload that
/// is never completed).
const KEPT: usize = 256;

/// The most read back at once: below the allocator's mmap threshold (`main.rs`), so that the
/// buffers are reused rather than mapped and faulted in afresh.
const READ_AT_ONCE: u64 = 512 * 1024;

/// A hash of an upload's stored bytes from its first byte, and the parts that hold them.
#[derive(Debug, Clone)]
pub(super) struct Covered {
    running: Running,
    /// Bytes hashed (the state's own length counts whole parts only).
    len: u64,
    parts: Vec<FlushedPart>,
}

impl Covered {
    fn fresh() -> Self {
        Covered {
            running: Running::new(),
            len: 0,
            parts: Vec::new(),
        }
    }

    /// Bytes hashed.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Counts the bytes hashed since the last part as the part `part` (whose fingerprint is
    /// `checksum`), which the upload recorded.
    pub(super) fn end_part(&mut self, part: FlushedPart, checksum: &str) {
        // The CRC is not kept here: only the SHA-256 is used.
        self.running.end_part(0, part.len, checksum);
        self.parts.push(part);
    }
}

/// The early hashes of the uploads this process streams chunks into.
pub(super) struct EarlyHashes {
    held: Mutex<VecDeque<(String, Covered)>>,
}

impl EarlyHashes {
    pub(super) fn new() -> Self {
        EarlyHashes {
            held: Mutex::new(VecDeque::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(String, Covered)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the hash of upload `upload_id`, if any.
    fn take(&self, upload_id: &str) -> Option<Covered> {
        let mut held = self.lock();
        let at = held.iter().position(|(id, _)| id == upload_id)?;
        held.remove(at).map(|(_, covered)| covered)
    }

    /// The hash a chunk starting at `first_byte` of upload `upload_id` continues: a fresh one
    /// at byte 0, the one kept if it ends exactly there, else none.
    pub(super) fn start(&self, upload_id: &str, first_byte: u64) -> Option<Covered> {
        let kept = self.take(upload_id);
        if first_byte == 0 {
            return Some(Covered::fresh());
        }
        kept.filter(|c| c.len == first_byte)
    }

    /// Keeps `covered` for upload `upload_id`.
    pub(super) fn keep(&self, upload_id: &str, covered: Covered) {
        let mut held = self.lock();
        held.retain(|(id, _)| id != upload_id);
        held.push_back((upload_id.to_owned(), covered));
        while held.len() > KEPT {
            held.pop_front();
        }
    }

    /// The digest of the layer of `up` (assembled from `parts`) from its early hash, if that
    /// hash covers exactly those parts; the hash is dropped either way.
    pub(super) fn digest(&self, up: &UploadRecord, parts: &[FlushedPart]) -> Option<LayerDigest> {
        let covered = self.take(&up.upload_id)?;
        (covered.len == up.next_byte
            && covered.running.len() == up.next_byte
            && covered.parts == parts)
            .then(|| LayerDigest::sha256(&covered.running.digest()))
    }
}

/// Reads back, from upload `up` of `blobs`, each range `written` yields (in order, from the
/// byte `covered` ends at) and advances `covered` by it: the hash of the stored bytes, or
/// `None` if a range could not be read or did not follow on.
pub(super) async fn read_back<B: BlobStore>(
    blobs: &B,
    up: &UploadRecord,
    mut covered: Covered,
    mut written: UnboundedReceiver<(u64, u64)>,
) -> Option<Covered> {
    let mut failed = false;
    while let Some((offset, len)) = written.recv().await {
        // Once failed, the ranges are still taken, so that the writer never waits.
        if failed || offset != covered.len {
            failed = true;
            continue;
        }
        let mut at = offset;
        while at < offset + len {
            let take = (offset + len - at).min(READ_AT_ONCE);
            let bytes: Bytes = match blobs
                .read_written(&up.blob_key, &up.multipart_id, at, take)
                .await
            {
                Ok(Some(bytes)) if bytes.len() as u64 == take => bytes,
                _ => {
                    failed = true;
                    break;
                }
            };
            let mut running = covered.running;
            match tokio::task::spawn_blocking(move || {
                running.absorb(&bytes);
                running
            })
            .await
            {
                Ok(advanced) => covered.running = advanced,
                Err(_) => return None,
            }
            at += take;
        }
        covered.len = at;
    }
    (!failed).then_some(covered)
}

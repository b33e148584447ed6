//! The ECR calls of a push, in the order AWS's Go client (amazon-ecr-containerd-resolver) makes
//! them: per blob BatchCheckLayerAvailability with that one digest, then (if UNAVAILABLE)
//! InitiateLayerUpload, UploadLayerPart strictly in order at exactly `partSize`, and
//! CompleteLayerUpload; then PutImage with the manifest bytes exactly as stored. Several blobs
//! are uploaded at once ([`push_blobs`]), each reading its next part while one is sent
//! (`parts.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_ecr::Client;
use aws_sdk_ecr::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecr::operation::complete_layer_upload::CompleteLayerUploadError;
use aws_sdk_ecr::operation::put_image::PutImageError;
use aws_sdk_ecr::operation::upload_layer_part::UploadLayerPartError;
use aws_sdk_ecr::primitives::Blob;
use aws_sdk_ecr::types::LayerAvailability;

use super::image::{BlobRef, ManifestPush};
use super::parts::Parts;
use super::progress::Progress;
use super::state::{self, StateFile};

/// How many times one blob's upload is re-synchronised with the server (a part that failed
/// after the SDK's own retries, a stale offset, an upload the server forgot) before giving up.
pub const MAX_RESYNCS: u32 = 8;

/// Used only when a server answers InitiateLayerUpload without a `partSize` (ECR always sends
/// one): ECR's own value.
const FALLBACK_PART_SIZE: u64 = 10_485_760;

pub struct Pusher {
    pub ecr: Client,
    pub registry_id: Option<String>,
    pub repository: String,
    /// The endpoint part of the state key: the endpoint URL, or `ecr:<region>` for real ECR.
    pub endpoint_key: String,
    /// Shared by the blobs uploaded at once: each change of the file is made under this lock
    /// (and written through a rename, `state.rs`); `None` once it could not be used.
    pub state: Mutex<Option<StateFile>>,
    pub progress: Progress,
    /// Test seam: stop (as if interrupted) once this many parts were accepted in this run.
    pub stop_after_parts: Option<u64>,
    pub parts_sent: AtomicU64,
}

/// How many blobs `push` uploads at once unless `--max-concurrent-uploads` says otherwise:
/// dockerd's default for the same setting (`max-concurrent-uploads`). AWS's Go client
/// (amazon-ecr-containerd-resolver's ecr-push, through containerd's `Client.Push` without
/// `WithMaxConcurrentUploadedLayers`) sets no limit at all and starts every blob of a manifest at
/// once; a bound keeps the client's memory at about two parts per blob being uploaded.
pub const DEFAULT_CONCURRENT_UPLOADS: u16 = 5;

/// Pushes `blobs`, up to `concurrency` at once, started in the order given. After a blob fails
/// no other one starts; those under way run to their end (each is left complete, or resumable
/// from the state file as after an interruption), then the first failure is the answer and the
/// others are printed before it.
pub async fn push_blobs(
    pusher: &Arc<Pusher>,
    blobs: Vec<BlobRef>,
    concurrency: usize,
) -> Result<Vec<BlobOutcome>, String> {
    let mut queue = blobs.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut outcomes = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    loop {
        while failures.is_empty() && running.len() < concurrency.max(1) {
            let Some(blob) = queue.next() else {
                break;
            };
            let pusher = Arc::clone(pusher);
            running.spawn(async move { pusher.push_blob(&blob).await });
        }
        let Some(done) = running.join_next().await else {
            break;
        };
        match done {
            Ok(Ok(outcome)) => outcomes.push(outcome),
            Ok(Err(msg)) => failures.push(msg),
            Err(e) => failures.push(format!("a blob's upload stopped: {e}")),
        }
    }
    match failures.split_first() {
        None => Ok(outcomes),
        Some((first, others)) => {
            for msg in others {
                pusher.progress.line(&format!("also failed: {msg}"));
            }
            Err(first.clone())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    Present,
    Uploaded { sent: u64 },
}

/// An SDK error on one line: the service's code and message when there is one (no request or
/// credential details are included either way).
fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let text = match err.as_service_error() {
        Some(e) => match (e.code(), e.message()) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            (Some(code), None) => code.to_string(),
            _ => DisplayErrorContext(err).to_string(),
        },
        None => DisplayErrorContext(err).to_string(),
    };
    text.replace(['\n', '\r'], " ")
}

/// The byte the server expects next, from an InvalidLayerPartException. Its message says
/// `First byte of the layer part is X instead of Y`; without that, `lastValidByteReceived + 1`,
/// except that 0 also means "nothing received": then the server wants 0, unless 0 is what was
/// just refused.
pub fn expected_offset(
    message: Option<&str>,
    last_valid: Option<i64>,
    sent_first: u64,
) -> Option<u64> {
    if let Some(msg) = message
        && let Some(rest) = msg.split(" instead of ").nth(1)
    {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse::<u64>() {
            return Some(n);
        }
    }
    let last = u64::try_from(last_valid?).ok()?;
    if last == 0 {
        Some(if sent_first == 0 { 1 } else { 0 })
    } else {
        Some(last + 1)
    }
}

impl Pusher {
    fn key(&self, digest: &str) -> String {
        state::key(
            &self.endpoint_key,
            self.registry_id.as_deref().unwrap_or("default"),
            &self.repository,
            digest,
        )
    }

    /// Runs `f` on the state file under its lock. A state file that cannot be read or written
    /// costs the ability to resume, not the push: one warning, then the push goes on without it.
    fn with_state<T>(&self, f: impl FnOnce(&StateFile) -> Result<T, String>) -> Option<T> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match f(state.as_ref()?) {
            Ok(v) => Some(v),
            Err(msg) => {
                *state = None;
                self.progress.line(&format!(
                    "warning: {msg}; unfinished uploads will not be resumable"
                ));
                None
            }
        }
    }

    fn saved(&self, key: &str) -> Option<state::Saved> {
        self.with_state(|s| s.get(key)).flatten()
    }

    fn save(&self, key: &str, upload_id: &str, next: u64, part_size: u64) {
        self.with_state(|s| s.put(key, upload_id, next, part_size));
    }

    fn forget(&self, key: &str) {
        self.with_state(|s| s.remove(key));
    }

    async fn is_available(&self, digest: &str) -> Result<bool, String> {
        let out = self
            .ecr
            .batch_check_layer_availability()
            .set_registry_id(self.registry_id.clone())
            .repository_name(&self.repository)
            .layer_digests(digest)
            .send()
            .await
            .map_err(|e| format!("BatchCheckLayerAvailability for {digest}: {}", describe(&e)))?;
        if let Some(f) = out.failures().first() {
            return Err(format!(
                "BatchCheckLayerAvailability for {digest}: {} {}",
                f.failure_code().map(|c| c.as_str()).unwrap_or("failure"),
                f.failure_reason().unwrap_or("")
            ));
        }
        Ok(out
            .layers()
            .iter()
            .any(|l| l.layer_availability() == Some(&LayerAvailability::Available)))
    }

    async fn initiate(&self, digest: &str) -> Result<(String, u64), String> {
        let out = self
            .ecr
            .initiate_layer_upload()
            .set_registry_id(self.registry_id.clone())
            .repository_name(&self.repository)
            .send()
            .await
            .map_err(|e| format!("InitiateLayerUpload for {digest}: {}", describe(&e)))?;
        let id = out
            .upload_id()
            .ok_or_else(|| format!("InitiateLayerUpload for {digest}: no uploadId in the answer"))?
            .to_string();
        let part_size = match out.part_size() {
            Some(n) if n > 0 => n as u64,
            _ => FALLBACK_PART_SIZE,
        };
        Ok((id, part_size))
    }

    /// Makes `blob` present in the repository.
    pub async fn push_blob(&self, blob: &BlobRef) -> Result<BlobOutcome, String> {
        let digest = blob.digest.as_str();
        let key = self.key(digest);
        if self.is_available(digest).await? {
            self.forget(&key);
            self.progress.blob(digest, blob.size).finish("exists");
            return Ok(BlobOutcome::Present);
        }
        let read_err = |e: std::io::Error| format!("cannot read blob {digest}: {e}");
        let (mut upload_id, mut part_size, start) = match self.saved(&key) {
            Some(saved) if saved.next_byte <= blob.size && saved.part_size > 0 => {
                self.progress.line(&format!(
                    "resuming {digest} at byte {} of upload {}",
                    saved.next_byte, saved.upload_id
                ));
                (saved.upload_id, saved.part_size, saved.next_byte)
            }
            _ => {
                let (id, size) = self.initiate(digest).await?;
                self.save(&key, &id, 0, size);
                (id, size, 0)
            }
        };
        let mut parts = Parts::open(&blob.region, blob.size, part_size)
            .await
            .map_err(read_err)?;
        parts.seek(start, part_size).await.map_err(read_err)?;
        let mut bar = self.progress.blob(digest, blob.size);
        bar.update(start, 0);
        let mut resyncs = 0u32;
        loop {
            let Some(part) = parts.next().await.map_err(read_err)? else {
                // Every byte is on the server: check what was read, then complete.
                let actual = parts.digest().await.map_err(read_err)?;
                if actual != digest {
                    // What was sent is not the blob: a later run starts a fresh upload.
                    self.forget(&key);
                    return Err(format!("corrupt layout: blob {digest} has digest {actual}"));
                }
                match self.complete(digest, &upload_id).await {
                    Ok(()) => break,
                    Err(failure @ (CompleteFailure::UploadGone | CompleteFailure::OtherBytes))
                        if resyncs < MAX_RESYNCS =>
                    {
                        resyncs += 1;
                        let why = match failure {
                            CompleteFailure::OtherBytes => "holds other bytes than the file",
                            _ => "is gone",
                        };
                        self.progress.line(&format!(
                            "upload {upload_id} of {digest} {why}; starting over"
                        ));
                        (upload_id, part_size) = self.initiate(digest).await?;
                        self.save(&key, &upload_id, 0, part_size);
                        parts.seek(0, part_size).await.map_err(read_err)?;
                        bar.update(0, 0);
                        continue;
                    }
                    Err(CompleteFailure::UploadGone) => {
                        return Err(format!(
                            "CompleteLayerUpload for {digest}: upload {upload_id} not found"
                        ));
                    }
                    Err(CompleteFailure::OtherBytes) => {
                        return Err(format!(
                            "CompleteLayerUpload for {digest}: upload {upload_id} holds other bytes than the file"
                        ));
                    }
                    Err(CompleteFailure::Other(msg)) => return Err(msg),
                }
            };
            let (first, end, len, mark) = (part.first, part.end(), part.len(), part.mark());
            let last = end - 1;
            // The part's bytes go to the request; a retry reads them again (`parts.rewind`).
            let sent = self
                .ecr
                .upload_layer_part()
                .set_registry_id(self.registry_id.clone())
                .repository_name(&self.repository)
                .upload_id(&upload_id)
                .part_first_byte(first as i64)
                .part_last_byte(last as i64)
                .layer_part_blob(Blob::new(part.bytes))
                .send()
                .await;
            let err = match sent {
                Ok(_) => {
                    self.save(&key, &upload_id, end, part_size);
                    bar.update(end, len);
                    let sent_so_far = self.parts_sent.fetch_add(1, Ordering::SeqCst) + 1;
                    if self.stop_after_parts.is_some_and(|n| sent_so_far >= n) {
                        bar.finish("stopped");
                        return Err(format!(
                            "UploadLayerPart for {digest}: stopped after {sent_so_far} parts, as {} asks",
                            super::STOP_AFTER_PARTS_ENV
                        ));
                    }
                    continue;
                }
                Err(e) => e,
            };
            let what = describe(&err);
            if resyncs >= MAX_RESYNCS {
                return Err(format!(
                    "UploadLayerPart for {digest} (bytes {first}-{last}): {what}"
                ));
            }
            resyncs += 1;
            match err.as_service_error() {
                Some(UploadLayerPartError::InvalidLayerPartException(e)) => {
                    let Some(next) =
                        expected_offset(e.message(), e.last_valid_byte_received(), first)
                            .filter(|&n| n != first && n <= blob.size)
                    else {
                        return Err(format!(
                            "UploadLayerPart for {digest} (bytes {first}-{last}): {what}"
                        ));
                    };
                    self.progress.line(&format!(
                        "resuming {digest} at byte {next} of upload {upload_id}"
                    ));
                    // When the server already has this part, the part read ahead is the next.
                    parts.seek(next, part_size).await.map_err(read_err)?;
                    self.save(&key, &upload_id, next, part_size);
                    bar.update(next, 0);
                }
                Some(UploadLayerPartError::UploadNotFoundException(_)) => {
                    // Expired, or completed by an earlier run whose answer was lost: a fresh
                    // upload (an already stored layer then ends as LayerAlreadyExists).
                    self.progress.line(&format!(
                        "upload {upload_id} of {digest} is gone; starting over"
                    ));
                    (upload_id, part_size) = self.initiate(digest).await?;
                    self.save(&key, &upload_id, 0, part_size);
                    parts.seek(0, part_size).await.map_err(read_err)?;
                    bar.update(0, 0);
                }
                _ => {
                    // The SDK already retried; send the same part again after a pause. The
                    // server either takes it or says where it is (InvalidLayerPartException).
                    self.progress.line(&format!(
                        "UploadLayerPart for {digest} failed ({what}); retrying"
                    ));
                    tokio::time::sleep(std::time::Duration::from_millis(500 * u64::from(resyncs)))
                        .await;
                    parts.rewind(mark).await.map_err(read_err)?;
                }
            }
        }
        self.forget(&key);
        let sent = bar.sent();
        bar.finish("uploaded");
        Ok(BlobOutcome::Uploaded { sent })
    }

    async fn complete(&self, digest: &str, upload_id: &str) -> Result<(), CompleteFailure> {
        let out = self
            .ecr
            .complete_layer_upload()
            .set_registry_id(self.registry_id.clone())
            .repository_name(&self.repository)
            .upload_id(upload_id)
            .layer_digests(digest)
            .send()
            .await;
        match out {
            Ok(out) => match out.layer_digest() {
                Some(d) if !d.eq_ignore_ascii_case(digest) => Err(CompleteFailure::Other(format!(
                    "CompleteLayerUpload for {digest}: the server computed {d}"
                ))),
                _ => Ok(()),
            },
            Err(e) => match e.as_service_error() {
                Some(CompleteLayerUploadError::LayerAlreadyExistsException(_)) => Ok(()),
                Some(CompleteLayerUploadError::UploadNotFoundException(_)) => {
                    Err(CompleteFailure::UploadGone)
                }
                // The bytes just read match the digest, so the upload's are others: sent by an
                // earlier run from a file that has changed since.
                Some(CompleteLayerUploadError::InvalidLayerException(_)) => {
                    Err(CompleteFailure::OtherBytes)
                }
                _ => Err(CompleteFailure::Other(format!(
                    "CompleteLayerUpload for {digest}: {}",
                    describe(&e)
                ))),
            },
        }
    }

    /// PutImage; `Ok(false)` when the image was already there with this tag.
    pub async fn put_manifest(&self, m: &ManifestPush) -> Result<bool, String> {
        let text = std::str::from_utf8(&m.bytes)
            .map_err(|_| format!("manifest {} is not UTF-8 text", m.digest))?;
        let out = self
            .ecr
            .put_image()
            .set_registry_id(self.registry_id.clone())
            .repository_name(&self.repository)
            .image_manifest(text)
            .image_manifest_media_type(&m.media_type)
            .set_image_tag(m.tag.clone())
            .image_digest(&m.digest)
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e) => match e.as_service_error() {
                Some(PutImageError::ImageAlreadyExistsException(_)) => Ok(false),
                _ => Err(format!("PutImage of {}: {}", m.digest, describe(&e))),
            },
        }
    }
}

enum CompleteFailure {
    UploadGone,
    OtherBytes,
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::expected_offset;

    #[test]
    fn expected_offset_reads_the_message_first() {
        let msg = "First byte of the layer part is 3145728 instead of 1048576";
        assert_eq!(
            expected_offset(Some(msg), Some(1_048_575), 3_145_728),
            Some(1_048_576)
        );
        assert_eq!(
            expected_offset(
                Some("First byte of the layer part is 5 instead of 0"),
                Some(0),
                5
            ),
            Some(0)
        );
    }

    #[test]
    fn expected_offset_disambiguates_zero() {
        assert_eq!(expected_offset(None, Some(0), 1_048_576), Some(0));
        assert_eq!(expected_offset(None, Some(0), 0), Some(1));
        assert_eq!(expected_offset(Some("other"), Some(99), 0), Some(100));
        assert_eq!(expected_offset(None, None, 0), None);
    }
}

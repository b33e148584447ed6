//! The ECR calls of a push, in the order AWS's Go client (amazon-ecr-containerd-resolver) makes
//! them: per blob BatchCheckLayerAvailability with that one digest, then (if UNAVAILABLE)
//! InitiateLayerUpload, UploadLayerPart strictly in order at exactly `partSize`, and
//! CompleteLayerUpload; then PutImage with the manifest bytes exactly as stored.

use std::io::Read;

use aws_sdk_ecr::Client;
use aws_sdk_ecr::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecr::operation::complete_layer_upload::CompleteLayerUploadError;
use aws_sdk_ecr::operation::put_image::PutImageError;
use aws_sdk_ecr::operation::upload_layer_part::UploadLayerPartError;
use aws_sdk_ecr::primitives::Blob;
use aws_sdk_ecr::types::LayerAvailability;
use sha2::{Digest, Sha256};

use super::image::{BlobRef, ManifestPush};
use super::progress::Progress;
use super::source::Region;
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
    pub state: Option<StateFile>,
    pub progress: Progress,
    /// Test seam: stop (as if interrupted) once this many parts were accepted in this run.
    pub stop_after_parts: Option<u64>,
    pub parts_sent: u64,
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

/// Reads a blob in order and hashes every byte it reads, so the digest is verified however the
/// upload moves (resumed at an offset, rewound to where the server is).
struct BlobReader {
    region: Region,
    reader: std::io::Take<std::io::BufReader<std::fs::File>>,
    hasher: Sha256,
    pos: u64,
}

impl BlobReader {
    fn open(region: &Region) -> std::io::Result<BlobReader> {
        Ok(BlobReader {
            region: region.clone(),
            reader: region.open()?,
            hasher: Sha256::new(),
            pos: 0,
        })
    }

    fn read_chunk(&mut self, len: u64) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.reader.read_exact(&mut buf)?;
        self.hasher.update(&buf);
        self.pos += len;
        Ok(buf)
    }

    /// Moves to `target`, hashing what lies before it (rewinding means reading from 0 again).
    fn seek(&mut self, target: u64) -> std::io::Result<()> {
        if target < self.pos {
            *self = BlobReader::open(&self.region)?;
        }
        let mut buf = vec![0u8; 1 << 20];
        while self.pos < target {
            let n = (target - self.pos).min(buf.len() as u64) as usize;
            self.reader.read_exact(&mut buf[..n])?;
            self.hasher.update(&buf[..n]);
            self.pos += n as u64;
        }
        Ok(())
    }

    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

/// Blocking file reads on a runtime worker, without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
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

    /// A state file that cannot be read or written costs the ability to resume, not the push:
    /// one warning, then the push goes on without it.
    fn state_failed(&mut self, msg: String) {
        self.progress.line(&format!(
            "warning: {msg}; unfinished uploads will not be resumable"
        ));
        self.state = None;
    }

    fn saved(&mut self, key: &str) -> Option<state::Saved> {
        match self.state.as_ref().map(|s| s.get(key)) {
            Some(Ok(saved)) => saved,
            Some(Err(msg)) => {
                self.state_failed(msg);
                None
            }
            None => None,
        }
    }

    fn save(&mut self, key: &str, upload_id: &str, next: u64, part_size: u64) {
        if let Some(Err(msg)) = self
            .state
            .as_ref()
            .map(|s| s.put(key, upload_id, next, part_size))
        {
            self.state_failed(msg);
        }
    }

    fn forget(&mut self, key: &str) {
        if let Some(Err(msg)) = self.state.as_ref().map(|s| s.remove(key)) {
            self.state_failed(msg);
        }
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
    pub async fn push_blob(&mut self, blob: &BlobRef) -> Result<BlobOutcome, String> {
        let digest = blob.digest.as_str();
        let key = self.key(digest);
        if self.is_available(digest).await? {
            self.forget(&key);
            self.progress.blob(digest, blob.size).finish("exists");
            return Ok(BlobOutcome::Present);
        }
        let read_err = |e: std::io::Error| format!("cannot read blob {digest}: {e}");
        let mut reader = blocking(|| BlobReader::open(&blob.region)).map_err(read_err)?;
        let (mut upload_id, mut part_size) = match self.saved(&key) {
            Some(saved) if saved.next_byte <= blob.size && saved.part_size > 0 => {
                self.progress.line(&format!(
                    "resuming {digest} at byte {} of upload {}",
                    saved.next_byte, saved.upload_id
                ));
                blocking(|| reader.seek(saved.next_byte)).map_err(read_err)?;
                (saved.upload_id, saved.part_size)
            }
            _ => {
                let (id, size) = self.initiate(digest).await?;
                self.save(&key, &id, 0, size);
                (id, size)
            }
        };
        let mut bar = self.progress.blob(digest, blob.size);
        bar.update(reader.pos, 0);
        let mut resyncs = 0u32;
        // The part being sent, kept until the server accepts it so a retry re-sends it as is.
        let mut chunk: Option<Vec<u8>> = None;
        loop {
            if chunk.is_none() && reader.pos < blob.size {
                let len = part_size.min(blob.size - reader.pos);
                chunk = Some(blocking(|| reader.read_chunk(len)).map_err(read_err)?);
            }
            let Some(part) = &chunk else {
                // Every byte is on the server: check what was read, then complete.
                let actual = reader.digest();
                if actual != digest {
                    return Err(format!("corrupt layout: blob {digest} has digest {actual}"));
                }
                match self.complete(digest, &upload_id).await {
                    Ok(()) => break,
                    Err(CompleteFailure::UploadGone) if resyncs < MAX_RESYNCS => {
                        resyncs += 1;
                        self.progress.line(&format!(
                            "upload {upload_id} of {digest} is gone; starting over"
                        ));
                        (upload_id, part_size) = self.initiate(digest).await?;
                        self.save(&key, &upload_id, 0, part_size);
                        blocking(|| reader.seek(0)).map_err(read_err)?;
                        bar.update(0, 0);
                        continue;
                    }
                    Err(CompleteFailure::UploadGone) => {
                        return Err(format!(
                            "CompleteLayerUpload for {digest}: upload {upload_id} not found"
                        ));
                    }
                    Err(CompleteFailure::Other(msg)) => return Err(msg),
                }
            };
            let first = reader.pos - part.len() as u64;
            let last = reader.pos - 1;
            let sent = self
                .ecr
                .upload_layer_part()
                .set_registry_id(self.registry_id.clone())
                .repository_name(&self.repository)
                .upload_id(&upload_id)
                .part_first_byte(first as i64)
                .part_last_byte(last as i64)
                .layer_part_blob(Blob::new(part.clone()))
                .send()
                .await;
            let err = match sent {
                Ok(_) => {
                    let len = part.len() as u64;
                    chunk = None;
                    self.save(&key, &upload_id, reader.pos, part_size);
                    bar.update(reader.pos, len);
                    self.parts_sent += 1;
                    if self.stop_after_parts.is_some_and(|n| self.parts_sent >= n) {
                        bar.finish("stopped");
                        return Err(format!(
                            "UploadLayerPart for {digest}: stopped after {} parts, as {} asks",
                            self.parts_sent,
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
                    chunk = None;
                    if next != reader.pos {
                        blocking(|| reader.seek(next)).map_err(read_err)?;
                    }
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
                    chunk = None;
                    blocking(|| reader.seek(0)).map_err(read_err)?;
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

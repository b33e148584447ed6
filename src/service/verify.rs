//! Streaming verification of an assembled layer: its bytes are read by a task of their own while
//! this one hashes them, so that a completion costs about the longer of reading and hashing
//! rather than their sum. At most [`AHEAD`] chunks wait between the two, so memory stays flat
//! whatever the layer size.

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};

use crate::domain::error::StoreError;
use crate::domain::model::Digest as LayerDigest;
use crate::ports::ByteStream;

/// Chunks read ahead of the hasher (the S3 SDK's chunks are tens of KiB, the embedded store's a
/// few MiB at most).
const AHEAD: usize = 16;

/// The sha256 digest and the length of everything `stream` yields.
pub async fn sha256_of(mut stream: ByteStream) -> Result<(LayerDigest, u64), StoreError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(AHEAD);
    let reader = tokio::spawn(async move {
        loop {
            match stream.try_next().await {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    // Dropping the receiver (an error, or the request cancelled) ends the reader at its next send.
    let _abort = AbortOnDrop(reader.abort_handle());
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    reader
        .await
        .map_err(|e| StoreError::backend("reading the assembled layer", e))?;
    Ok((LayerDigest::sha256(&hasher.finalize()), size))
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! Streaming verification of an assembled layer: its bytes are read by tasks of their own while
//! this one hashes them, so that a completion costs about the longer of reading and hashing
//! rather than their sum, and [`sha256_of_object`] reads several ranges at once. A bounded
//! number of chunks or ranges wait between the readers and the hasher, so memory stays flat
//! whatever the layer size.

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};

use crate::domain::error::StoreError;
use crate::domain::model::Digest as LayerDigest;
use crate::ports::{BlobStore, ByteStream};

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

/// Bytes of one ranged read of [`sha256_of_object`].
const RANGE: u64 = 4 * 1024 * 1024;

/// Ranged reads in flight at once: at most `PARALLEL × RANGE` bytes wait for the hasher.
const PARALLEL: usize = 4;

/// The sha256 digest and the length of the object at `key`, expected to hold `expected` bytes,
/// read in one stream from a store that [reads one stream fast](BlobStore::reads_one_stream_fast),
/// else as consecutive ranges of [`RANGE`] bytes, [`PARALLEL`] at a time, each by a task of its
/// own, and hashed in order as they arrive: a store that serves one stream at a time at less
/// than the hasher's speed (S3 over one connection) is read at several times that speed.
///
/// The last range asks for one byte past `expected`, so an object longer than expected shows in
/// the returned length as surely as a shorter one.
pub async fn sha256_of_object<B: BlobStore>(
    blobs: &B,
    key: &str,
    expected: u64,
) -> Result<(LayerDigest, u64), StoreError> {
    if expected == 0 {
        return sha256_of(blobs.read_object(key, None).await?).await;
    }
    if blobs.reads_one_stream_fast() {
        // Nothing to gain from ranges in parallel or a queue of chunks: one stream, hashed as
        // it is read.
        let mut stream = blobs.read_object(key, Some((0, expected))).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.try_next().await? {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        return Ok((LayerDigest::sha256(&hasher.finalize()), size));
    }
    let count = expected.div_ceil(RANGE);
    let mut ranges = (0..count).map(move |i| {
        let first = i * RANGE;
        // The last range ends one byte past `expected`, even when `expected` is a multiple of
        // `RANGE`.
        let last = if i + 1 == count {
            expected
        } else {
            first + RANGE - 1
        };
        (first, last)
    });
    let mut flight: VecDeque<Reading> = VecDeque::with_capacity(PARALLEL);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        while flight.len() < PARALLEL {
            let Some(range) = ranges.next() else { break };
            let stream = blobs.read_object(key, Some(range)).await?;
            let task = tokio::spawn(collect(stream));
            flight.push_back(Reading {
                _abort: AbortOnDrop(task.abort_handle()),
                task,
            });
        }
        let Some(mut next) = flight.pop_front() else {
            break;
        };
        let chunks = (&mut next.task)
            .await
            .map_err(|e| StoreError::backend("reading the assembled layer", e))??;
        for chunk in chunks {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
    }
    Ok((LayerDigest::sha256(&hasher.finalize()), size))
}

/// A ranged read in flight; dropping it (an error, or the request cancelled) ends its task.
struct Reading {
    _abort: AbortOnDrop,
    task: tokio::task::JoinHandle<Result<Vec<Bytes>, StoreError>>,
}

async fn collect(mut stream: ByteStream) -> Result<Vec<Bytes>, StoreError> {
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        chunks.push(chunk);
    }
    Ok(chunks)
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! A blob's parts, read in order on the blocking pool and kept one part ahead of the one being
//! sent: while part N is in flight, part N+1 is read (and hashed) from the file. At most two parts
//! of a blob are held at a time, the one being sent (by then as its encoded request) and the one
//! read ahead; a part that has to be sent again is read again from its offset rather than kept.
//!
//! Every byte is hashed as it is read, in order, including the bytes before a resumed offset, so
//! the blob's digest is checked however the upload moves (resumed, rewound to where the server
//! is, started over).

use std::io::Read;

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use super::source::Region;

/// One part as read: its first byte and its bytes.
pub struct Part {
    pub first: u64,
    pub bytes: Vec<u8>,
    /// The hash of the blob's bytes before `first`, to read this part again without reading the
    /// bytes before it again.
    before: Sha256,
}

/// Where a part starts, enough to read it again ([`Parts::rewind`]).
pub struct Mark {
    first: u64,
    before: Sha256,
}

impl Part {
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The byte after the part.
    pub fn end(&self) -> u64 {
        self.first + self.len()
    }

    pub fn mark(&self) -> Mark {
        Mark {
            first: self.first,
            before: self.before.clone(),
        }
    }
}

/// Reads a blob in order and hashes every byte it reads.
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

    fn read_part(&mut self, len: u64) -> std::io::Result<Part> {
        let before = self.hasher.clone();
        let first = self.pos;
        let mut bytes = vec![0u8; len as usize];
        self.reader.read_exact(&mut bytes)?;
        self.hasher.update(&bytes);
        self.pos += len;
        Ok(Part {
            first,
            bytes,
            before,
        })
    }

    /// Moves to `target`, hashing what lies before it (moving back means reading from 0 again).
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

    /// Moves back to a part's start, with the hash of what lies before it.
    fn rewind(&mut self, mark: Mark) -> std::io::Result<()> {
        self.reader = self.region.open_at(mark.first)?;
        self.hasher = mark.before;
        self.pos = mark.first;
        Ok(())
    }

    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

type Ahead = JoinHandle<(BlobReader, std::io::Result<Part>)>;

/// The parts of one blob, one read ahead.
pub struct Parts {
    size: u64,
    part_size: u64,
    /// `None` while a read is running (`ahead`).
    reader: Option<BlobReader>,
    ahead: Option<Ahead>,
    /// A part read ahead and waited for, the next one to hand out.
    ready: Option<Part>,
}

fn join_error(e: tokio::task::JoinError) -> std::io::Error {
    std::io::Error::other(format!("the reading task failed: {e}"))
}

fn lost() -> std::io::Error {
    std::io::Error::other("the blob's reader was lost after a failed read")
}

impl Parts {
    /// The parts of the blob at `region` (`size` bytes), from its first byte.
    pub async fn open(region: &Region, size: u64, part_size: u64) -> std::io::Result<Parts> {
        let region = region.clone();
        let reader = tokio::task::spawn_blocking(move || BlobReader::open(&region))
            .await
            .map_err(join_error)??;
        Ok(Parts {
            size,
            part_size: part_size.max(1),
            reader: Some(reader),
            ahead: None,
            ready: None,
        })
    }

    /// Whether a part is being read or was read ahead (for tests of the read-ahead).
    pub fn has_read_ahead(&self) -> bool {
        self.ahead.is_some() || self.ready.is_some()
    }

    /// Waits for the read under way, if any; its part becomes `ready`.
    async fn settle(&mut self) -> std::io::Result<()> {
        if let Some(handle) = self.ahead.take() {
            let (reader, part) = handle.await.map_err(join_error)?;
            self.reader = Some(reader);
            self.ready = Some(part?);
        }
        Ok(())
    }

    /// Starts reading the next part on the blocking pool, unless the blob is read to its end.
    fn read_ahead(&mut self) {
        let Some(mut reader) = self.reader.take() else {
            return;
        };
        if reader.pos >= self.size {
            self.reader = Some(reader);
            return;
        }
        let len = self.part_size.min(self.size - reader.pos);
        self.ahead = Some(tokio::task::spawn_blocking(move || {
            let part = reader.read_part(len);
            (reader, part)
        }));
    }

    /// The next part in order (`None` at the end of the blob); the one after it starts being read
    /// before this one is answered.
    pub async fn next(&mut self) -> std::io::Result<Option<Part>> {
        self.settle().await?;
        if self.ready.is_none() {
            self.read_ahead();
            self.settle().await?;
        }
        let part = self.ready.take();
        if part.is_some() {
            self.read_ahead();
        }
        Ok(part)
    }

    /// Runs `f` on the reader on the blocking pool, with nothing read ahead.
    async fn with_reader(
        &mut self,
        f: impl FnOnce(&mut BlobReader) -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.settle().await?;
        self.ready = None;
        let mut reader = self.reader.take().ok_or_else(lost)?;
        let reader = tokio::task::spawn_blocking(move || f(&mut reader).map(|()| reader))
            .await
            .map_err(join_error)??;
        self.reader = Some(reader);
        Ok(())
    }

    /// Continues at byte `target` with parts of `part_size` (a new upload may ask for another
    /// size). A part read ahead that is exactly the one wanted there is kept.
    pub async fn seek(&mut self, target: u64, part_size: u64) -> std::io::Result<()> {
        self.settle().await?;
        self.part_size = part_size.max(1);
        if let Some(p) = &self.ready
            && p.first == target
            && p.len() == self.part_size.min(self.size.saturating_sub(target))
        {
            return Ok(());
        }
        self.with_reader(move |r| r.seek(target)).await
    }

    /// Continues with the part `mark` starts, read again from the file.
    pub async fn rewind(&mut self, mark: Mark) -> std::io::Result<()> {
        self.with_reader(move |r| r.rewind(mark)).await
    }

    /// The digest of every byte read, once the blob is read to its end.
    pub async fn digest(&mut self) -> std::io::Result<String> {
        self.settle().await?;
        let reader = self.reader.as_ref().ok_or_else(lost)?;
        if self.ready.is_some() || reader.pos != self.size {
            return Err(std::io::Error::other("the blob is not read to its end"));
        }
        Ok(reader.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(len: usize) -> (tempfile::NamedTempFile, Region, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &data).unwrap();
        let region = Region {
            path: file.path().to_path_buf(),
            offset: 0,
            len: len as u64,
        };
        (file, region, data)
    }

    fn sha(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_come_in_order_with_the_next_one_read_ahead() {
        let (_f, region, data) = blob(1000);
        let mut parts = Parts::open(&region, 1000, 300).await.unwrap();
        let mut got = Vec::new();
        while let Some(p) = parts.next().await.unwrap() {
            assert_eq!(p.first, got.len() as u64);
            // While this part is "in flight", the next one is already being read.
            assert_eq!(parts.has_read_ahead(), p.end() < 1000, "{}", p.first);
            got.extend_from_slice(&p.bytes);
        }
        assert_eq!(got, data);
        assert_eq!(parts.digest().await.unwrap(), sha(&data));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rewinding_and_seeking_keep_the_digest_right() {
        let (_f, region, data) = blob(1000);
        let mut parts = Parts::open(&region, 1000, 300).await.unwrap();
        let p0 = parts.next().await.unwrap().unwrap();
        let p1 = parts.next().await.unwrap().unwrap();
        assert_eq!((p0.first, p1.first), (0, 300));
        // Part 1 failed: read again from its start.
        parts.rewind(p1.mark()).await.unwrap();
        let again = parts.next().await.unwrap().unwrap();
        assert_eq!((again.first, &again.bytes), (300, &p1.bytes));
        // The server says it has part 2 already: the part read ahead is skipped.
        parts.seek(900, 300).await.unwrap();
        let last = parts.next().await.unwrap().unwrap();
        assert_eq!((last.first, last.bytes.as_slice()), (900, &data[900..]));
        assert!(parts.next().await.unwrap().is_none());
        assert_eq!(parts.digest().await.unwrap(), sha(&data));
        // Started over with another part size: everything is read and hashed again.
        parts.seek(0, 512).await.unwrap();
        let a = parts.next().await.unwrap().unwrap();
        let b = parts.next().await.unwrap().unwrap();
        assert_eq!((a.len(), b.len()), (512, 488));
        assert!(parts.next().await.unwrap().is_none());
        assert_eq!(parts.digest().await.unwrap(), sha(&data));
    }
}

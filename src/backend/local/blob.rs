//! [`BlobStore`] on the file system.
//!
//! Layout under `<dir>/blobs/`:
//! - `objects/<key>`: one file per object, the key's `/`-separated components as directories.
//! - `multipart/<id>/key`: the object key the multipart upload was created for (an upload id
//!   used with another key is unknown, as in S3).
//! - `multipart/<id>/<number>.<etag>`: a part's bytes. The ETag (hex sha256 of the bytes) is in
//!   the file name rather than in a file beside the part so that bytes and ETag change in one
//!   rename: after a crash or a concurrent overwrite, a part is found under an ETag only if those
//!   are its bytes, which is what lets completion detect an overwritten part (DESIGN.md §4).
//!
//! Temporary files are named `.tmp-<uuid>` in the directory of their target; keys may not have
//! components starting with `.`, so no key can name one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::blocking;
use crate::backend::memory::{check_part_list, check_part_number, part_etag, resolve_range};
use crate::error::StoreError;
use crate::ports::{BlobStore, ByteStream, FlushedPart, StoreResult};

/// Size of the reads behind [`LocalBlobs::read_object`] streams: one chunk in memory per stream.
const READ_CHUNK: u64 = 256 * 1024;
/// Name of the file in a multipart directory that holds the upload's object key.
const KEY_FILE: &str = "key";

#[derive(Debug)]
struct Roots {
    objects: PathBuf,
    multipart: PathBuf,
}

/// The embedded [`BlobStore`]: files under `<dir>/blobs/`. Clones share the directory.
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    roots: Arc<Roots>,
    /// Smallest size accepted for a non-final part at completion; 0 disables the check.
    min_part_size: u64,
}

impl LocalBlobs {
    /// Opens (creating if needed) the blob directories under `dir`.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        let base = dir.join("blobs");
        let roots = Roots {
            objects: base.join("objects"),
            multipart: base.join("multipart"),
        };
        for d in [&roots.objects, &roots.multipart] {
            fs::create_dir_all(d).map_err(|e| io_err("cannot create blob directory", d, e))?;
        }
        Ok(Self {
            roots: Arc::new(roots),
            min_part_size: 0,
        })
    }

    /// Rejects completions whose non-final parts are smaller than `bytes`, as S3 does with
    /// 5 MiB (`EntityTooSmall`). Off by default; turn it on to hold the local server to S3's rule.
    pub fn with_min_part_size(mut self, bytes: u64) -> Self {
        self.min_part_size = bytes;
        self
    }

    fn object_path(&self, key: &str) -> StoreResult<PathBuf> {
        object_path(&self.roots.objects, key)
    }

    fn multipart_dir(&self, multipart_id: &str) -> StoreResult<PathBuf> {
        let valid = !multipart_id.is_empty()
            && multipart_id.len() <= 64
            && multipart_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if valid {
            Ok(self.roots.multipart.join(multipart_id))
        } else {
            Err(StoreError::NotFound(format!(
                "multipart upload {multipart_id:?}"
            )))
        }
    }
}

/// Maps an object key to its file, refusing keys that could leave the objects directory or
/// collide with temporary files.
///
/// Accepted: `uploads/1f0c…`, `staging/abc/0`, `a.b/c-d_e`.
/// Refused: `` (empty), `/abs`, `a//b`, `a/`, `../x`, `a/../b`, `./a`, `a/.tmp-1`, `a\b`, `a\0b`.
pub(crate) fn object_path(root: &Path, key: &str) -> StoreResult<PathBuf> {
    let invalid = |why: &str| StoreError::Backend(format!("invalid object key {key:?}: {why}"));
    if key.is_empty() {
        return Err(invalid("empty"));
    }
    let mut path = root.to_path_buf();
    for component in key.split('/') {
        if component.is_empty() {
            return Err(invalid(
                "empty path component (leading, trailing or double '/')",
            ));
        }
        if component.starts_with('.') {
            return Err(invalid("path component starting with '.'"));
        }
        if component.contains(['\\', '\0']) {
            return Err(invalid("backslash or NUL in key"));
        }
        path.push(component);
    }
    Ok(path)
}

fn io_err(what: &str, path: &Path, e: io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// Whether an error means "nothing at that path": the file is missing, a directory on the way
/// is missing, or a directory on the way is a file.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Makes a rename or a new entry in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing ancestors below `root`, fsyncing each new entry's parent so the
/// directories survive a crash along with the file about to be written into them.
fn create_dirs_durably(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut d = dir;
    while d != root && !d.is_dir() {
        missing.push(d);
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    fs::create_dir_all(dir)?;
    for m in missing.iter().rev() {
        if let Some(parent) = m.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Removes now-empty directories from `dir` up to (excluding) `root`, so deleted staging
/// objects leave no directory per upload behind. Stops at the first directory still in use.
fn prune_empty_dirs(root: &Path, dir: Option<&Path>) {
    let mut d = dir;
    while let Some(dir) = d {
        if dir == root || !dir.starts_with(root) || fs::remove_dir(dir).is_err() {
            break;
        }
        d = dir.parent();
    }
}

/// Writes `path` atomically and durably: `fill` writes a temporary file beside it, which is
/// fsynced and renamed over `path`, and the directory is fsynced. With `dirs_below` set, missing
/// directories are created (up to that root); otherwise a missing directory is an error.
fn write_atomic(
    path: &Path,
    dirs_below: Option<&Path>,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("target has no parent directory"))?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let mut attempt = 0;
    let mut file = loop {
        if let Some(root) = dirs_below {
            create_dirs_durably(root, dir)?;
        }
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break f,
            // A concurrent delete pruned the directory between its creation and ours: recreate.
            Err(e)
                if dirs_below.is_some() && e.kind() == io::ErrorKind::NotFound && attempt < 5 =>
            {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let result = fill(&mut file)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp, path)
        })
        .and_then(|()| sync_dir(dir));
    if result.is_err() {
        // Best effort: after a successful rename there is no temporary file left to remove.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether the multipart directory `dir` exists and belongs to `key`.
fn owns(dir: &Path, key: &str) -> StoreResult<bool> {
    let path = dir.join(KEY_FILE);
    match fs::read(&path) {
        Ok(stored) => Ok(stored == key.as_bytes()),
        Err(e) if is_absent(&e) => Ok(false),
        Err(e) => Err(io_err("cannot read", &path, e)),
    }
}

fn part_file_name(number: u32, etag: &str) -> String {
    format!("{number}.{etag}")
}

fn no_such_upload(multipart_id: &str) -> StoreError {
    StoreError::NotFound(format!("multipart upload {multipart_id}"))
}

impl BlobStore for LocalBlobs {
    async fn put_object(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let path = self.object_path(key)?;
        let roots = Arc::clone(&self.roots);
        blocking("put_object", move || {
            write_atomic(&path, Some(&roots.objects), |f| f.write_all(&data))
                .map_err(|e| io_err("cannot write", &path, e))
        })
        .await
    }

    async fn get_object(&self, key: &str) -> StoreResult<Bytes> {
        let path = self.object_path(key)?;
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Bytes::from(data)),
            // A directory at the key means only longer keys exist under it, not this one.
            Err(e) if is_absent(&e) || e.kind() == io::ErrorKind::IsADirectory => {
                Err(StoreError::NotFound(key.to_owned()))
            }
            Err(e) => Err(io_err("cannot read", &path, e)),
        }
    }

    async fn read_object(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        let path = self.object_path(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Err(StoreError::NotFound(key.to_owned())),
            Err(e) => return Err(io_err("cannot open", &path, e)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(|e| io_err("cannot stat", &path, e))?;
        if !meta.is_file() {
            return Err(StoreError::NotFound(key.to_owned()));
        }
        let Some((first, last)) = resolve_range(meta.len(), range)? else {
            return Ok(Box::pin(futures_util::stream::empty()));
        };
        file.seek(io::SeekFrom::Start(first))
            .await
            .map_err(|e| io_err("cannot seek in", &path, e))?;
        // The open file keeps the version it opened: a concurrent replace renames a new inode
        // over the name, so the stream never mixes two versions.
        let state = (file, last - first + 1, path);
        let stream =
            futures_util::stream::try_unfold(state, |(mut file, remaining, path)| async move {
                if remaining == 0 {
                    return Ok(None);
                }
                // At most READ_CHUNK, so it fits in usize.
                let want = remaining.min(READ_CHUNK) as usize;
                let mut buf = BytesMut::zeroed(want);
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| io_err("cannot read", &path, e))?;
                if n == 0 {
                    return Err(StoreError::Backend(format!(
                        "{} ended before the requested range",
                        path.display()
                    )));
                }
                buf.truncate(n);
                Ok(Some((buf.freeze(), (file, remaining - n as u64, path))))
            });
        Ok(Box::pin(stream))
    }

    async fn object_size(&self, key: &str) -> StoreResult<Option<u64>> {
        let path = self.object_path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_err("cannot stat", &path, e)),
        }
    }

    async fn delete_objects(&self, keys: &[String]) -> StoreResult<()> {
        // Validate every key before deleting any, so a bad batch changes nothing.
        let paths = keys
            .iter()
            .map(|k| self.object_path(k))
            .collect::<StoreResult<Vec<_>>>()?;
        let roots = Arc::clone(&self.roots);
        blocking("delete_objects", move || {
            for path in &paths {
                match fs::remove_file(path) {
                    Ok(()) => prune_empty_dirs(&roots.objects, path.parent()),
                    Err(e) if is_absent(&e) || e.kind() == io::ErrorKind::IsADirectory => {}
                    Err(e) => return Err(io_err("cannot delete", path, e)),
                }
            }
            Ok(())
        })
        .await
    }

    async fn create_multipart(&self, key: &str) -> StoreResult<String> {
        // Refuse a bad key now rather than at completion, after all the bytes were sent.
        self.object_path(key)?;
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.multipart_dir(&id)?;
        let roots = Arc::clone(&self.roots);
        let key = key.to_owned();
        blocking("create_multipart", move || {
            fs::create_dir(&dir)
                .and_then(|()| sync_dir(&roots.multipart))
                .and_then(|()| {
                    write_atomic(&dir.join(KEY_FILE), None, |f| f.write_all(key.as_bytes()))
                })
                .map_err(|e| io_err("cannot create multipart upload", &dir, e))?;
            Ok(id)
        })
        .await
    }

    async fn upload_part(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        data: Bytes,
    ) -> StoreResult<String> {
        check_part_number(number)?;
        let dir = self.multipart_dir(multipart_id)?;
        let (key, multipart_id) = (key.to_owned(), multipart_id.to_owned());
        blocking("upload_part", move || {
            if !owns(&dir, &key)? {
                return Err(no_such_upload(&multipart_id));
            }
            let etag = part_etag(&data);
            let name = part_file_name(number, &etag);
            let path = dir.join(&name);
            match write_atomic(&path, None, |f| f.write_all(&data)) {
                Ok(()) => {}
                // Aborted or completed while we wrote.
                Err(e) if is_absent(&e) => return Err(no_such_upload(&multipart_id)),
                Err(e) => return Err(io_err("cannot write", &path, e)),
            }
            // Drop earlier writes of this number: their ETags must stop matching, as in S3,
            // where a part write replaces the previous one.
            let prefix = format!("{number}.");
            let entries = fs::read_dir(&dir).map_err(|e| io_err("cannot list", &dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| io_err("cannot list", &dir, e))?;
                let file_name = entry.file_name();
                let Some(other) = file_name.to_str() else {
                    continue;
                };
                if other.starts_with(&prefix) && other != name {
                    match fs::remove_file(entry.path()) {
                        Ok(()) => {}
                        Err(e) if is_absent(&e) => {}
                        Err(e) => return Err(io_err("cannot delete", &entry.path(), e)),
                    }
                }
            }
            Ok(etag)
        })
        .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        multipart_id: &str,
        parts: &[FlushedPart],
    ) -> StoreResult<()> {
        check_part_list(parts, self.min_part_size)?;
        let target = self.object_path(key)?;
        let dir = self.multipart_dir(multipart_id)?;
        let roots = Arc::clone(&self.roots);
        let (key, multipart_id, parts) = (key.to_owned(), multipart_id.to_owned(), parts.to_vec());
        blocking("complete_multipart", move || {
            if !owns(&dir, &key)? {
                // A retry after a completion whose answer was lost: the object is already there.
                let total: u64 = parts.iter().map(|p| p.len).sum();
                return match fs::metadata(&target) {
                    Ok(meta) if meta.is_file() && meta.len() == total => Ok(()),
                    _ => Err(no_such_upload(&multipart_id)),
                };
            }
            let mut sources = Vec::with_capacity(parts.len());
            for part in &parts {
                // An ETag that could not be one of ours cannot name a part (and must not name a
                // path outside the directory).
                if part.etag.is_empty() || !part.etag.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(StoreError::Conflict);
                }
                let path = dir.join(part_file_name(part.number, &part.etag));
                if !path.is_file() {
                    return Err(StoreError::Conflict);
                }
                sources.push(path);
            }
            // io::copy streams through a fixed buffer (or copy_file_range), so memory stays flat
            // whatever the layer size.
            let assembled = write_atomic(&target, Some(&roots.objects), |out| {
                for source in &sources {
                    io::copy(&mut File::open(source)?, out)?;
                }
                Ok(())
            });
            match assembled {
                Ok(()) => {}
                // A part was replaced between the check and the copy.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::Conflict),
                Err(e) => return Err(io_err("cannot assemble", &target, e)),
            }
            // The key file goes first: once it is gone, a retry takes the "already completed"
            // path above instead of finding some parts missing.
            let key_file = dir.join(KEY_FILE);
            match fs::remove_file(&key_file) {
                Ok(()) => {}
                Err(e) if is_absent(&e) => {}
                Err(e) => return Err(io_err("cannot retire multipart upload", &key_file, e)),
            }
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove completed multipart upload's parts");
            }
            Ok(())
        })
        .await
    }

    async fn abort_multipart(&self, key: &str, multipart_id: &str) -> StoreResult<()> {
        // An id that cannot be ours names no upload, and absent uploads are fine.
        let Ok(dir) = self.multipart_dir(multipart_id) else {
            return Ok(());
        };
        let key = key.to_owned();
        blocking("abort_multipart", move || {
            if !owns(&dir, &key)? {
                return Ok(());
            }
            match fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if is_absent(&e) => Ok(()),
                Err(e) => Err(io_err("cannot abort multipart upload", &dir, e)),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_path_accepts_nested_keys() {
        let root = Path::new("/data/objects");
        for key in ["uploads/1f0c", "staging/abc/0", "a.b/c-d_e", "x"] {
            let path = object_path(root, key).expect(key);
            assert!(path.starts_with(root), "{key} → {}", path.display());
        }
        assert_eq!(
            object_path(root, "staging/abc/0").ok(),
            Some(PathBuf::from("/data/objects/staging/abc/0"))
        );
    }

    #[test]
    fn object_path_refuses_keys_that_escape_or_collide() {
        let root = Path::new("/data/objects");
        for key in [
            "", "/abs", "a//b", "a/", "../x", "a/../b", "./a", "..", ".", "a/.tmp-1", "a\\b",
            "a\0b",
        ] {
            assert!(object_path(root, key).is_err(), "{key:?} was accepted");
        }
    }
}

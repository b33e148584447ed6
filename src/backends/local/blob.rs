//! [`BlobStore`] on the file system.
//!
//! Layout under `<dir>/blobs/`:
//! - `objects/<key>`: one file per object, the key's `/`-separated components as directories.
//! - `multipart/<id>/key`: the object key the multipart upload was created for (an upload id
//!   used with another key is unknown, as in S3).
//! - `multipart/<id>/<number>.<etag>`: a part's bytes. The ETag (hex sha256 of the bytes) is in
//!   the file name rather than in a file beside the part so that bytes and ETag change in one
//!   rename: after a crash or a concurrent overwrite, a part is found under an ETag only if those
//!   are its bytes, which is what lets completion detect an overwritten part (docs/architecture.md, "Bytes").
//!   Written by [`BlobStore::upload_part`], which is not told where the part lands.
//! - `multipart/<id>/data`: the parts written by [`BlobStore::upload_part_at`], each at its
//!   offset in the layer, so that completion truncates this file to the layer's length and
//!   renames it into place: each byte is written once, and read once (by the verification).
//!   Their ETag names number, offset and length (`at<offset>l<len>n<number>`), not content: the
//!   service hands out numbers so that the part recorded for a range is the highest-numbered
//!   write overlapping it (`service/direct.rs`), and this store, under one lock per upload,
//!   refuses a write overlapping one of a higher number and lets a higher number overwrite, so
//!   the file holds the recorded part's bytes whichever write landed last. Every write is
//!   fdatasynced before it is acknowledged; bytes of a write that was never recorded (a lost
//!   race, a crash before the record) lie past the accepted length or under a later part, and
//!   are overwritten or truncated away at completion.
//!
//! Temporary files are named `.tmp-<uuid>` in the directory of their target; keys may not have
//! components starting with `.`, so no key can name one.
//!
//! Download URLs are served by the local server itself:
//! `<base>/_download/<key>?X-Ecr-Expires=<epoch secs>&X-Ecr-Signature=<hex HMAC-SHA256>`, signed
//! with a 32-byte key kept in `<dir>/download.key` (created once, mode 0600) so that URLs stay
//! valid across restarts. `<base>` is the server's public address ([`LocalBlobs::with_public_url`]).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use hmac::{KeyInit, Mac};

use super::blocking;
use crate::domain::error::StoreError;
use crate::ports::multipart::{check_part_list, check_part_number, part_etag, resolve_range};
use crate::ports::{
    BlobStore, ByteStream, DownloadRefused, FlushedPart, PartStream, SignedDownloads, StoreResult,
};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Size of the reads behind [`LocalBlobs::read_object`] streams: one chunk in memory per stream.
const READ_CHUNK: u64 = 256 * 1024;
/// Name of the file in a multipart directory that holds the upload's object key.
const KEY_FILE: &str = "key";
/// Name of the file in a multipart directory that parts written in place go to.
const DATA_FILE: &str = "data";
/// File in the data directory holding the key that signs download URLs.
const SECRET_FILE: &str = "download.key";
const SECRET_LEN: usize = 32;
/// Path under the server's base URL where download URLs live.
const DOWNLOAD_PATH: &str = "/_download/";
/// The local server's default address, for stores built without a public URL.
const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8080";
const EXPIRES_PARAM: &str = "X-Ecr-Expires";
const SIGNATURE_PARAM: &str = "X-Ecr-Signature";

#[derive(Debug)]
struct Roots {
    objects: PathBuf,
    multipart: PathBuf,
}

/// What issuing and checking download URLs needs.
#[derive(Clone)]
struct Downloads {
    /// Scheme, authority and optional path prefix, without a trailing `/`.
    base: String,
    /// The path part of `base` (`""` or `/prefix`).
    base_path: String,
    /// HMAC-SHA256 keyed with the data directory's secret; cloned for each signature.
    mac: HmacSha256,
}

impl std::fmt::Debug for Downloads {
    // The key stays out of logs and panic messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// A part written in place: bytes `[first, end)` of the layer, under part `number`.
#[derive(Debug, Clone, Copy)]
struct Written {
    first: u64,
    end: u64,
    number: u32,
}

/// The writes in place of each multipart upload since this process started, one lock per
/// upload: held while a part is checked, written and synced, so that overlapping writes land
/// in a known order. After a restart it starts empty: the writes of before are finished (the
/// process that made them is gone), and every write after has a higher number.
#[derive(Debug, Default)]
struct InPlace {
    uploads: Mutex<HashMap<String, Arc<Mutex<Vec<Written>>>>>,
}

impl InPlace {
    fn upload(&self, multipart_id: &str) -> Arc<Mutex<Vec<Written>>> {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(uploads.entry(multipart_id.to_owned()).or_default())
    }

    fn forget(&self, multipart_id: &str) {
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        uploads.remove(multipart_id);
    }
}

/// The ETag of a part written in place.
fn in_place_etag(number: u32, offset: u64, len: u64) -> String {
    format!("at{offset}l{len}n{number}")
}

/// The embedded [`BlobStore`]: files under `<dir>/blobs/`. Clones share the directory.
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    roots: Arc<Roots>,
    in_place: Arc<InPlace>,
    /// Smallest size accepted for a non-final part at completion; 0 disables the check.
    min_part_size: u64,
    downloads: Arc<Downloads>,
}

impl LocalBlobs {
    /// Opens (creating if needed) the blob directories under `dir` and the download-URL key
    /// `dir/download.key`. Download URLs point at `http://127.0.0.1:8080` until
    /// [`with_public_url`](Self::with_public_url) says where the server is.
    pub fn open(dir: &Path) -> StoreResult<Self> {
        let base = dir.join("blobs");
        let roots = Roots {
            objects: base.join("objects"),
            multipart: base.join("multipart"),
        };
        for d in [&roots.objects, &roots.multipart] {
            fs::create_dir_all(d).map_err(|e| io_err("cannot create blob directory", d, e))?;
        }
        let secret = load_or_create_secret(dir)?;
        let mac = <HmacSha256 as KeyInit>::new_from_slice(&secret)
            .map_err(|e| StoreError::backend("download URL key", e))?;
        let downloads = Downloads {
            base: String::new(),
            base_path: String::new(),
            mac,
        };
        Ok(Self {
            roots: Arc::new(roots),
            in_place: Arc::default(),
            min_part_size: 0,
            downloads: Arc::new(downloads),
        }
        .with_public_url(DEFAULT_PUBLIC_URL))
    }

    /// The object and multipart directories (for `super::reconcile`).
    pub(super) fn dirs(&self) -> (PathBuf, PathBuf) {
        (self.roots.objects.clone(), self.roots.multipart.clone())
    }

    /// Download URLs start with `url` (`http://host:port`, optionally with a path prefix), the
    /// address under which clients reach the local server.
    pub fn with_public_url(mut self, url: &str) -> Self {
        let base = url.trim_end_matches('/').to_owned();
        let after_scheme = base.find("://").map_or(0, |i| i + 3);
        let base_path = base[after_scheme..]
            .find('/')
            .map_or_else(String::new, |i| base[after_scheme + i..].to_owned());
        self.downloads = Arc::new(Downloads {
            base,
            base_path,
            mac: self.downloads.mac.clone(),
        });
        self
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
    let invalid = |why: &str| StoreError::failure(format!("invalid object key {key:?}: {why}"));
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
    StoreError::backend(format!("{what} {}", path.display()), e)
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

/// Where a part's bytes are at completion.
enum Source {
    /// A part file of [`BlobStore::upload_part`].
    File(PathBuf),
    /// A range of the data file of [`BlobStore::upload_part_at`].
    InPlace { offset: u64, len: u64 },
}

/// Opens the data file of the multipart directory `dir` for writing, creating it (and making the
/// new entry durable) on first use.
fn open_data_file(dir: &Path, path: &Path) -> io::Result<File> {
    match OpenOptions::new().write(true).open(path) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // `owns` saw the directory; if it is gone now, the upload was aborted or completed.
            // Never truncate: a racing writer may have created it and written a part meanwhile.
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            sync_dir(dir)?;
            Ok(f)
        }
        Err(e) => Err(e),
    }
}

/// What a chunk read of [`read_chunk`] hands back: the file, the offset and the byte count that
/// remain after the chunk, the chunk, and the file's path (for errors).
type ChunkRead = StoreResult<(File, u64, u64, Bytes, Arc<PathBuf>)>;

/// Reads the next chunk (at most [`READ_CHUNK`] bytes) of the `remaining` bytes of `file` from
/// `at` on, in a blocking task.
fn read_chunk(
    file: File,
    at: u64,
    remaining: u64,
    path: Arc<PathBuf>,
) -> tokio::task::JoinHandle<ChunkRead> {
    tokio::task::spawn_blocking(move || {
        // At most READ_CHUNK, so it fits in usize.
        let want = remaining.min(READ_CHUNK) as usize;
        let mut buf = Vec::with_capacity(want);
        // Read into the spare capacity: no zeroing, no copy through another buffer.
        io::Seek::seek(&mut &file, io::SeekFrom::Start(at))
            .and_then(|_| io::Read::read_to_end(&mut io::Read::take(&file, want as u64), &mut buf))
            .map_err(|e| io_err("cannot read", &path, e))?;
        if buf.len() < want {
            return Err(StoreError::failure(format!(
                "{} ended before the requested range",
                path.display()
            )));
        }
        let n = buf.len() as u64;
        Ok((file, at + n, remaining - n, Bytes::from(buf), path))
    })
}

/// Bytes written in place by a streamed part between background syncs.
const BACKGROUND_SYNC: u64 = 32 * 1024 * 1024;

/// Waits for a background sync of `path`.
fn joined(sync: std::thread::JoinHandle<io::Result<()>>, path: &Path) -> StoreResult<()> {
    sync.join()
        .map_err(|_| StoreError::failure("a background sync failed"))?
        .map_err(|e| io_err("cannot sync", path, e))
}

/// Writes one piece of a streamed part (number `number`) at `first` in the data file, under the
/// upload's lock, as `upload_part_at` writes a part: refused with `Conflict` where a write of a
/// higher number already covers these bytes. Returns the open data file, unsynced.
fn write_piece(
    writes: &Mutex<Vec<Written>>,
    dir: &Path,
    path: &Path,
    number: u32,
    first: u64,
    piece: &[u8],
    multipart_id: &str,
) -> StoreResult<File> {
    let end = first
        .checked_add(piece.len() as u64)
        .ok_or_else(|| StoreError::failure("part extends past the largest offset"))?;
    let mut writes = writes.lock().unwrap_or_else(|e| e.into_inner());
    if writes
        .iter()
        .any(|w| w.number > number && w.first < end && first < w.end)
    {
        return Err(StoreError::Conflict);
    }
    // Opened by name under the lock each time: once a completion has renamed the data file
    // into place and removed the directory, a late piece finds it gone.
    let file = match open_data_file(dir, path).and_then(|file| {
        file.write_all_at(piece, first)?;
        Ok(file)
    }) {
        Ok(file) => file,
        Err(e) if is_absent(&e) => return Err(no_such_upload(multipart_id)),
        Err(e) => return Err(io_err("cannot write", path, e)),
    };
    // The part's extent grows with each piece, so that a write of a lower number over the bytes
    // written so far is refused.
    match writes
        .iter_mut()
        .find(|w| w.number == number && w.end == first)
    {
        Some(w) => w.end = end,
        None => writes.push(Written { first, end, number }),
    }
    Ok(file)
}

fn part_file_name(number: u32, etag: &str) -> String {
    format!("{number}.{etag}")
}

fn no_such_upload(multipart_id: &str) -> StoreError {
    StoreError::NotFound(format!("multipart upload {multipart_id}"))
}

/// Reads the download-URL key of the data directory, creating it on first use. Creation writes
/// a temporary file and links it into place, so concurrent first starts agree on one key and a
/// reader never sees a partly written one.
fn load_or_create_secret(dir: &Path) -> StoreResult<[u8; SECRET_LEN]> {
    let path = dir.join(SECRET_FILE);
    let parse = |bytes: Vec<u8>| {
        <[u8; SECRET_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
            StoreError::failure(format!(
                "{} is not a {SECRET_LEN}-byte key; remove it to make a new one (download URLs \
                 issued with the old one stop working)",
                path.display()
            ))
        })
    };
    match fs::read(&path) {
        Ok(bytes) => return parse(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("cannot read", &path, e)),
    }
    let mut secret = [0u8; SECRET_LEN];
    getrandom::fill(&mut secret)
        .map_err(|e| StoreError::backend("no randomness for the download URL key", e))?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let created = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(&secret)?;
        file.sync_all()?;
        drop(file);
        match fs::hard_link(&tmp, &path) {
            Ok(()) => sync_dir(dir),
            // Another process made it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&tmp);
    created.map_err(|e| io_err("cannot create", &path, e))?;
    let bytes = fs::read(&path).map_err(|e| io_err("cannot read", &path, e))?;
    parse(bytes)
}

/// The string a download URL's signature covers. The expiry comes last and is digits only, so
/// no key (which may hold any character but NUL) can make two URLs sign the same string.
fn canonical_download(key: &str, expires: u64) -> String {
    format!("ecr-download-v1\nGET\n{key}\n{expires}")
}

/// Percent-encodes every byte of `key` but unreserved characters and `/`.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`encode_key`] (and any other valid percent-encoding); `None` if malformed.
fn decode_key(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn now_secs() -> u64 {
    crate::domain::clock::now_ms() / 1000
}

impl Downloads {
    fn sign(&self, key: &str, expires: u64) -> Vec<u8> {
        let mut mac = self.mac.clone();
        mac.update(canonical_download(key, expires).as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn url(&self, key: &str, expires: u64) -> String {
        format!(
            "{}{DOWNLOAD_PATH}{}?{EXPIRES_PARAM}={expires}&{SIGNATURE_PARAM}={}",
            self.base,
            encode_key(key),
            hex::encode(self.sign(key, expires))
        )
    }

    /// The key a download URL names, if its signature is ours and it has not expired.
    fn resolve(
        &self,
        path: &str,
        query: Option<&str>,
        now: u64,
    ) -> Option<Result<String, DownloadRefused>> {
        // Behind a proxy that strips the public URL's path prefix, requests arrive without it.
        let encoded = path.strip_prefix(DOWNLOAD_PATH).or_else(|| {
            path.strip_prefix(self.base_path.as_str())?
                .strip_prefix(DOWNLOAD_PATH)
        })?;
        Some(self.check(encoded, query.unwrap_or(""), now))
    }

    fn check(&self, encoded: &str, query: &str, now: u64) -> Result<String, DownloadRefused> {
        let refused = DownloadRefused::BadSignature;
        let key = decode_key(encoded).ok_or(refused)?;
        let (mut expires, mut signature) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                EXPIRES_PARAM => &mut expires,
                SIGNATURE_PARAM => &mut signature,
                _ => continue,
            };
            // A repeated parameter would leave it open which one was checked.
            if slot.replace(value).is_some() {
                return Err(refused);
            }
        }
        let expires_text = expires.ok_or(refused)?;
        if expires_text.is_empty() || !expires_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refused);
        }
        let expires: u64 = expires_text.parse().map_err(|_| refused)?;
        let signature = hex::decode(signature.ok_or(refused)?).map_err(|_| refused)?;
        let mut mac = self.mac.clone();
        mac.update(canonical_download(&key, expires).as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&signature).map_err(|_| refused)?;
        if now > expires {
            return Err(DownloadRefused::Expired);
        }
        Ok(key)
    }
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
        let owned = key.to_owned();
        let (file, size, path) = blocking("read_object", move || {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if is_absent(&e) => return Err(StoreError::NotFound(owned)),
                Err(e) => return Err(io_err("cannot open", &path, e)),
            };
            let meta = file
                .metadata()
                .map_err(|e| io_err("cannot stat", &path, e))?;
            if !meta.is_file() {
                return Err(StoreError::NotFound(owned));
            }
            Ok((file, meta.len(), path))
        })
        .await?;
        let Some((first, last)) = resolve_range(size, range)? else {
            return Ok(Box::pin(futures_util::stream::empty()));
        };
        // The open file keeps the version it opened: a concurrent replace renames a new inode
        // over the name, so the stream never mixes two versions. Each chunk is read by a
        // blocking task started as the chunk before is handed out, so reading overlaps sending
        // with one chunk ahead.
        let path = Arc::new(path);
        let next = read_chunk(file, first, last - first + 1, Arc::clone(&path));
        let stream = futures_util::stream::try_unfold(Some(next), |pending| async move {
            let Some(pending) = pending else {
                return Ok(None);
            };
            let (file, at, remaining, chunk, path) = pending
                .await
                .map_err(|e| StoreError::backend("read_object: blocking task failed", e))??;
            let next = (remaining > 0).then(|| read_chunk(file, at, remaining, path));
            Ok(Some((chunk, next)))
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

    async fn upload_part_at(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        offset: u64,
        data: Bytes,
    ) -> StoreResult<String> {
        check_part_number(number)?;
        let dir = self.multipart_dir(multipart_id)?;
        let len = data.len() as u64;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| StoreError::failure("part extends past the largest offset"))?;
        let writes = self.in_place.upload(multipart_id);
        let (key, multipart_id) = (key.to_owned(), multipart_id.to_owned());
        blocking("upload_part_at", move || {
            if !owns(&dir, &key)? {
                return Err(no_such_upload(&multipart_id));
            }
            let mut writes = writes.lock().unwrap_or_else(|e| e.into_inner());
            // A write of a higher number over these bytes is the one that can be recorded: ours
            // lost and must not land over it.
            if writes
                .iter()
                .any(|w| w.number > number && w.first < end && offset < w.end)
            {
                return Err(StoreError::Conflict);
            }
            let path = dir.join(DATA_FILE);
            let written = open_data_file(&dir, &path).and_then(|file| {
                file.write_all_at(&data, offset)?;
                file.sync_data()
            });
            match written {
                Ok(()) => {}
                // Aborted or completed while we wrote.
                Err(e) if is_absent(&e) => return Err(no_such_upload(&multipart_id)),
                Err(e) => return Err(io_err("cannot write", &path, e)),
            }
            writes.push(Written {
                first: offset,
                end,
                number,
            });
            Ok(in_place_etag(number, offset, len))
        })
        .await
    }

    fn reads_one_stream_fast(&self) -> bool {
        true
    }

    fn streams_parts(&self) -> bool {
        true
    }

    async fn upload_part_stream(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        offset: u64,
        mut data: PartStream<'_>,
    ) -> StoreResult<(String, u64)> {
        check_part_number(number)?;
        let dir = self.multipart_dir(multipart_id)?;
        let writes = self.in_place.upload(multipart_id);
        {
            let (dir, key, multipart_id) = (dir.clone(), key.to_owned(), multipart_id.to_owned());
            blocking("upload_part_stream", move || {
                if owns(&dir, &key)? {
                    Ok(())
                } else {
                    Err(no_such_upload(&multipart_id))
                }
            })
            .await?;
        }
        let path = dir.join(DATA_FILE);
        let mut end = offset;
        let mut synced = offset;
        // At most one fdatasync runs beside the writes, so that the one before the answer
        // finds little left to flush.
        let mut syncing: Option<std::thread::JoinHandle<io::Result<()>>> = None;
        let mut last_file: Option<File> = None;
        let result = async {
            while let Some(piece) = data.next().await {
                if piece.is_empty() {
                    continue;
                }
                let first = end;
                let len = piece.len() as u64;
                let (writes, dir, at) = (Arc::clone(&writes), dir.clone(), path.clone());
                let multipart_id = multipart_id.to_owned();
                let file = blocking("upload_part_stream", move || {
                    write_piece(&writes, &dir, &at, number, first, &piece, &multipart_id)
                })
                .await?;
                end = first + len;
                if end - synced >= BACKGROUND_SYNC
                    && syncing.as_ref().is_none_or(|h| h.is_finished())
                {
                    if let Some(done) = syncing.take() {
                        joined(done, &path)?;
                    }
                    let clone = file
                        .try_clone()
                        .map_err(|e| io_err("cannot sync", &path, e))?;
                    syncing = Some(std::thread::spawn(move || clone.sync_data()));
                    synced = end;
                }
                last_file = Some(file);
            }
            Ok::<(), StoreError>(())
        }
        .await;
        let pending = syncing.take();
        let finish = blocking("upload_part_stream", {
            let path = path.clone();
            move || {
                if let Some(done) = pending {
                    joined(done, &path)?;
                }
                if let Some(file) = last_file {
                    file.sync_data()
                        .map_err(|e| io_err("cannot sync", &path, e))?;
                }
                Ok(())
            }
        })
        .await;
        result?;
        finish?;
        Ok((in_place_etag(number, offset, end - offset), end - offset))
    }

    async fn read_written(
        &self,
        key: &str,
        multipart_id: &str,
        offset: u64,
        len: u64,
    ) -> StoreResult<Option<Bytes>> {
        let dir = self.multipart_dir(multipart_id)?;
        let want = usize::try_from(len)
            .map_err(|_| StoreError::failure("range too large to read at once"))?;
        let (key, multipart_id) = (key.to_owned(), multipart_id.to_owned());
        blocking("read_written", move || {
            if !owns(&dir, &key)? {
                return Err(no_such_upload(&multipart_id));
            }
            let path = dir.join(DATA_FILE);
            let file = File::open(&path).map_err(|e| io_err("cannot open", &path, e))?;
            let mut buf = Vec::with_capacity(want);
            io::Seek::seek(&mut &file, io::SeekFrom::Start(offset))
                .and_then(|_| io::Read::read_to_end(&mut io::Read::take(&file, len), &mut buf))
                .map_err(|e| io_err("cannot read", &path, e))?;
            if buf.len() < want {
                return Err(StoreError::failure(format!(
                    "{} ended before the requested range",
                    path.display()
                )));
            }
            Ok(Some(Bytes::from(buf)))
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
        let writes = self.in_place.upload(multipart_id);
        let (key, multipart_id, parts) = (key.to_owned(), multipart_id.to_owned(), parts.to_vec());
        let in_place = Arc::clone(&self.in_place);
        blocking("complete_multipart", move || {
            let total: u64 = parts.iter().map(|p| p.len).sum();
            // Held to the end: no part write lands in the data file while it is checked and
            // renamed into place (one that comes after finds it gone).
            let known = writes.lock().unwrap_or_else(|e| e.into_inner());
            if !owns(&dir, &key)? {
                // A retry after a completion whose answer was lost: the object is already there.
                return match fs::metadata(&target) {
                    Ok(meta) if meta.is_file() && meta.len() == total => Ok(()),
                    _ => Err(no_such_upload(&multipart_id)),
                };
            }
            let mut sources = Vec::with_capacity(parts.len());
            let mut next = 0u64;
            for part in &parts {
                // An ETag that could not be one of ours cannot name a part (and must not name a
                // path outside the directory).
                if part.etag.is_empty() || !part.etag.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(StoreError::Conflict);
                }
                if part.etag == in_place_etag(part.number, part.offset, part.len) {
                    // Parts in place must tile the layer from its first byte, and no write of
                    // a higher number may have landed over them since start-up.
                    let end = part.offset + part.len;
                    let overwritten = known.iter().any(|w| {
                        w.number > part.number && w.first < end && part.offset < w.end
                    });
                    if part.offset != next || overwritten {
                        return Err(StoreError::Conflict);
                    }
                    sources.push(Source::InPlace {
                        offset: part.offset,
                        len: part.len,
                    });
                } else {
                    let path = dir.join(part_file_name(part.number, &part.etag));
                    if !path.is_file() {
                        return Err(StoreError::Conflict);
                    }
                    sources.push(Source::File(path));
                }
                next += part.len;
            }
            let data = dir.join(DATA_FILE);
            if sources.iter().all(|s| matches!(s, Source::InPlace { .. })) {
                // Every part is in the data file, in order from byte 0: it is the layer, once
                // cut to the layer's length (bytes past it belong to no recorded part).
                match OpenOptions::new().write(true).open(&data) {
                    Ok(file) => {
                        let len = file
                            .metadata()
                            .map_err(|e| io_err("cannot stat", &data, e))?
                            .len();
                        if len < total {
                            return Err(StoreError::Conflict);
                        }
                        if len > total {
                            file.set_len(total)
                                .and_then(|()| file.sync_all())
                                .map_err(|e| io_err("cannot truncate", &data, e))?;
                        }
                        drop(file);
                        let parent = target
                            .parent()
                            .ok_or_else(|| StoreError::failure("object key has no directory"))?;
                        create_dirs_durably(&roots.objects, parent)
                            .and_then(|()| fs::rename(&data, &target))
                            .and_then(|()| sync_dir(parent))
                            .and_then(|()| sync_dir(&dir))
                            .map_err(|e| io_err("cannot assemble", &target, e))?;
                    }
                    // A completion cut after the rename: the layer is in place already.
                    Err(e)
                        if is_absent(&e)
                            && fs::metadata(&target)
                                .is_ok_and(|m| m.is_file() && m.len() == total) => {}
                    Err(e) if is_absent(&e) => return Err(StoreError::Conflict),
                    Err(e) => return Err(io_err("cannot open", &data, e)),
                }
            } else {
                // io::copy streams through a fixed buffer (or copy_file_range), so memory stays
                // flat whatever the layer size.
                let assembled = write_atomic(&target, Some(&roots.objects), |out| {
                    let mut in_place = None;
                    for source in &sources {
                        match source {
                            Source::File(path) => {
                                io::copy(&mut File::open(path)?, out)?;
                            }
                            Source::InPlace { offset, len } => {
                                if in_place.is_none() {
                                    in_place = Some(File::open(&data)?);
                                }
                                let file = in_place.as_mut().ok_or_else(|| io::Error::other("data file"))?;
                                io::Seek::seek(file, io::SeekFrom::Start(*offset))?;
                                let copied = io::copy(&mut io::Read::take(&mut *file, *len), out)?;
                                if copied != *len {
                                    return Err(io::Error::new(
                                        io::ErrorKind::NotFound,
                                        "the data file ends before a part",
                                    ));
                                }
                            }
                        }
                    }
                    Ok(())
                });
                match assembled {
                    Ok(()) => {}
                    // A part was replaced between the check and the copy.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(StoreError::Conflict);
                    }
                    Err(e) => return Err(io_err("cannot assemble", &target, e)),
                }
            }
            in_place.forget(&multipart_id);
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
        let in_place = Arc::clone(&self.in_place);
        let multipart_id = multipart_id.to_owned();
        blocking("abort_multipart", move || {
            if !owns(&dir, &key)? {
                return Ok(());
            }
            in_place.forget(&multipart_id);
            match fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if is_absent(&e) => Ok(()),
                Err(e) => Err(io_err("cannot abort multipart upload", &dir, e)),
            }
        })
        .await
    }

    async fn download_url(&self, key: &str, expires_in_secs: u64) -> StoreResult<String> {
        // A key that names no file could never be served.
        self.object_path(key)?;
        let expires = now_secs().saturating_add(expires_in_secs);
        Ok(self.downloads.url(key, expires))
    }
}

impl SignedDownloads for LocalBlobs {
    fn resolve_download(
        &self,
        path: &str,
        query: Option<&str>,
    ) -> Option<Result<String, DownloadRefused>> {
        self.downloads.resolve(path, query, now_secs())
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

    fn downloads(base: &str) -> (LocalBlobs, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = LocalBlobs::open(dir.path()).unwrap().with_public_url(base);
        (blobs, dir)
    }

    /// The path and query of `url`, as the server receives them.
    fn split(url: &str) -> (String, String) {
        let after_scheme = &url[url.find("://").unwrap() + 3..];
        let path_and_query = &after_scheme[after_scheme.find('/').unwrap()..];
        let (path, query) = path_and_query.split_once('?').unwrap();
        (path.to_owned(), query.to_owned())
    }

    #[test]
    fn keys_round_trip_through_the_url_path() {
        for key in ["uploads/1f0c", "a b/c%d", "ünï/cødé", "x?y#z&w=1", "a+b"] {
            let encoded = encode_key(key);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'&' | b'+')),
                "{encoded}"
            );
            assert_eq!(decode_key(&encoded).as_deref(), Some(key));
        }
        for bad in ["%", "%4", "%zz", "%ff"] {
            assert_eq!(decode_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn issued_urls_resolve_until_they_expire() {
        let (blobs, _dir) = downloads("http://127.0.0.1:4567/");
        let d = &blobs.downloads;
        let url = d.url("uploads/a b", 1_000);
        assert!(
            url.starts_with(
                "http://127.0.0.1:4567/_download/uploads/a%20b?X-Ecr-Expires=1000&X-Ecr-Signature="
            ),
            "{url}"
        );
        let (path, query) = split(&url);
        assert_eq!(
            d.resolve(&path, Some(&query), 1_000),
            Some(Ok("uploads/a b".to_owned()))
        );
        assert_eq!(
            d.resolve(&path, Some(&query), 1_001),
            Some(Err(DownloadRefused::Expired))
        );
        // Parameters in another order, and unknown ones, are fine.
        let (expires, signature) = query.split_once('&').unwrap();
        let reordered = format!("x=1&{signature}&{expires}");
        assert_eq!(
            d.resolve(&path, Some(&reordered), 0),
            Some(Ok("uploads/a b".to_owned()))
        );
    }

    #[test]
    fn altered_urls_are_refused() {
        let (blobs, _dir) = downloads("http://127.0.0.1:4567");
        let d = &blobs.downloads;
        let (path, query) = split(&d.url("uploads/k", 1_000));
        let signature = query.split_once("X-Ecr-Signature=").unwrap().1;
        let mut flipped = signature.to_owned().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        let bad = DownloadRefused::BadSignature;
        for (path, query) in [
            ("/_download/uploads/other".to_owned(), query.clone()),
            (path.clone(), query.replace("Expires=1000", "Expires=2000")),
            (path.clone(), query.replace(signature, &flipped)),
            (path.clone(), query.replace(signature, &signature[..10])),
            (path.clone(), query.replace(signature, "zz")),
            (path.clone(), format!("{query}&X-Ecr-Expires=1000")),
            (path.clone(), "X-Ecr-Expires=1000".to_owned()),
            (path.clone(), format!("X-Ecr-Signature={signature}")),
            (path.clone(), query.replace("Expires=1000", "Expires=+1000")),
            (path.clone(), String::new()),
            ("/_download/%zz".to_owned(), query.clone()),
        ] {
            assert_eq!(
                d.resolve(&path, Some(&query), 0),
                Some(Err(bad)),
                "{path}?{query}"
            );
        }
        assert_eq!(d.resolve(&path, None, 0), Some(Err(bad)));
        // Another data directory has another key.
        let (other, _other_dir) = downloads("http://127.0.0.1:4567");
        assert_eq!(
            other.downloads.resolve(&path, Some(&query), 0),
            Some(Err(bad))
        );
    }

    #[test]
    fn other_paths_are_not_download_urls() {
        let (blobs, _dir) = downloads("http://127.0.0.1:4567/registry");
        let d = &blobs.downloads;
        for path in [
            "/",
            "",
            "/_download",
            "/x/_download/k",
            "/registryx/_download/k",
        ] {
            assert_eq!(d.resolve(path, Some("X-Ecr-Expires=1"), 0), None, "{path}");
        }
        // With a path prefix in the public URL, requests may arrive with or without it.
        let url = d.url("k", 5);
        assert!(
            url.starts_with("http://127.0.0.1:4567/registry/_download/k?"),
            "{url}"
        );
        let (path, query) = split(&url);
        assert_eq!(d.resolve(&path, Some(&query), 0), Some(Ok("k".into())));
        let stripped = path.strip_prefix("/registry").unwrap();
        assert_eq!(d.resolve(stripped, Some(&query), 0), Some(Ok("k".into())));
    }

    #[test]
    fn the_key_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(dir.path()).unwrap();
        let path = dir.path().join(SECRET_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_or_create_secret(dir.path()).unwrap(), first);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // URLs issued before a restart still resolve after it.
        let a = LocalBlobs::open(dir.path()).unwrap();
        let url = a.downloads.url("k", 5);
        let b = LocalBlobs::open(dir.path()).unwrap();
        let (p, q) = split(&url);
        assert_eq!(b.downloads.resolve(&p, Some(&q), 0), Some(Ok("k".into())));

        fs::write(&path, b"short").unwrap();
        assert!(
            LocalBlobs::open(dir.path()).is_err(),
            "a damaged key is reported"
        );
    }
}

//! [`KeyStore`] of the embedded backend: `<data dir>/keys.json`, mode 0600 (docs/security.md).
//!
//! A file of its own rather than a table in `state.redb`: redb holds its database locked by the
//! running server, and `ecr-layer-upload keys create|delete` must work while the server runs.
//! Every change rewrites the file whole (a temporary file of mode 0600, fsynced and renamed into
//! place) under an exclusive lock file, so a reader sees the old or the new set, never a torn one;
//! the server reads it through its key cache (at most a second old).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::blocking;
use crate::domain::error::StoreError;
use crate::ports::StoreResult;
use crate::ports::keys::{KeyFuture, KeyRecord, KeyStore};

/// The file name of the keys in the data directory.
pub const KEYS_FILE: &str = "keys.json";

/// The keys file of a data directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LocalKeys {
    path: PathBuf,
}

impl LocalKeys {
    /// The keys of data directory `dir` (the file is created by the first key).
    pub fn open(dir: &Path) -> Self {
        Self {
            path: dir.join(KEYS_FILE),
        }
    }

    /// Where the keys are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read(path: &Path) -> StoreResult<BTreeMap<String, KeyRecord>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(StoreError::backend(format!("read {}", path.display()), e)),
    };
    let keys: Vec<KeyRecord> = serde_json::from_slice(&text)
        .map_err(|e| StoreError::backend(format!("{} is not a list of keys", path.display()), e))?;
    Ok(keys
        .into_iter()
        .map(|k| (k.access_key_id.clone(), k))
        .collect())
}

#[cfg(unix)]
fn private(opts: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    opts.mode(0o600)
}

#[cfg(not(unix))]
fn private(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts
}

fn write(path: &Path, keys: &BTreeMap<String, KeyRecord>) -> StoreResult<()> {
    let list: Vec<&KeyRecord> = keys.values().collect();
    let text =
        serde_json::to_vec_pretty(&list).map_err(|e| StoreError::backend("encode the keys", e))?;
    let tmp = path.with_extension("json.tmp");
    let fail =
        |what: &str, e: std::io::Error| StoreError::backend(format!("{what} {}", tmp.display()), e);
    let _ = std::fs::remove_file(&tmp);
    let mut file = private(OpenOptions::new().write(true).create_new(true))
        .open(&tmp)
        .map_err(|e| fail("create", e))?;
    file.write_all(&text).map_err(|e| fail("write", e))?;
    file.sync_all().map_err(|e| fail("fsync", e))?;
    drop(file);
    std::fs::rename(&tmp, path)
        .map_err(|e| StoreError::backend(format!("rename into {}", path.display()), e))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Runs `change` on the keys under the lock file, and writes them back if it says so.
fn modify<T>(
    path: &Path,
    change: impl FnOnce(&mut BTreeMap<String, KeyRecord>) -> StoreResult<(T, bool)>,
) -> StoreResult<T> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::backend(format!("create {}", dir.display()), e))?;
    }
    let lock_path = path.with_extension("lock");
    let lock = private(OpenOptions::new().write(true).create(true).truncate(false))
        .open(&lock_path)
        .map_err(|e| StoreError::backend(format!("open {}", lock_path.display()), e))?;
    lock.lock()
        .map_err(|e| StoreError::backend(format!("lock {}", lock_path.display()), e))?;
    let mut keys = read(path)?;
    let (out, changed) = change(&mut keys)?;
    if changed {
        write(path, &keys)?;
    }
    drop(lock);
    Ok(out)
}

impl KeyStore for LocalKeys {
    fn create_key<'a>(&'a self, key: &'a KeyRecord) -> KeyFuture<'a, ()> {
        let path = self.path.clone();
        let key = key.clone();
        Box::pin(blocking("create key", move || {
            modify(&path, |keys| {
                if keys.contains_key(&key.access_key_id) {
                    return Err(StoreError::AlreadyExists);
                }
                keys.insert(key.access_key_id.clone(), key);
                Ok(((), true))
            })
        }))
    }

    fn get_key<'a>(&'a self, access_key_id: &'a str) -> KeyFuture<'a, Option<KeyRecord>> {
        let path = self.path.clone();
        let id = access_key_id.to_owned();
        Box::pin(blocking("read key", move || Ok(read(&path)?.remove(&id))))
    }

    fn list_keys(&self) -> KeyFuture<'_, Vec<KeyRecord>> {
        let path = self.path.clone();
        Box::pin(blocking("list keys", move || {
            Ok(read(&path)?.into_values().collect())
        }))
    }

    fn delete_key<'a>(&'a self, access_key_id: &'a str) -> KeyFuture<'a, bool> {
        let path = self.path.clone();
        let id = access_key_id.to_owned();
        Box::pin(blocking("delete key", move || {
            modify(&path, |keys| {
                let gone = keys.remove(&id).is_some();
                Ok((gone, gone))
            })
        }))
    }
}

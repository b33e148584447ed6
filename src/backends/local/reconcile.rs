//! Reconciles the blob directories with the state: removes what no record owns.
//!
//! First it deletes the layer records no image of their repository references that were
//! neither recorded nor marked referenced by a PutImage within the grace period
//! ([`LocalMetadata::unreferenced_layers`], then [`LocalMetadata::remove_unreferenced_layers`],
//! which deletes a layer only if its record and its count of marks are still as read and no
//! image references it, inside the deleting write transaction): a PutImage marks its layers
//! before it writes its image, so one racing the deletion either keeps the layer or fails with
//! `LayersNotFoundException` (docs/architecture.md, "Layers no image references"). Their bytes
//! then go below with the rest.
//!
//! The state is read first, in one snapshot ([`LocalMetadata`]'s `owned`), and the directories
//! are listed after it. A file is removed only if the snapshot owns nothing of it:
//!
//! - `.tmp-*` files (a write cut by a crash), anywhere;
//! - staging objects (`staging/...`) that are no staged segment of an upload (a part that lost
//!   its race, a segment already written as a multipart part, an upload gone);
//! - multipart directories of no upload (created before their upload row, or left by a cut
//!   completion or cleanup);
//! - layer bytes (`layers/<upload>`) that no layer record references and no unfinished upload
//!   is assembling (a deleted repository's layers, a completion that found the layer recorded);
//! - manifests kept outside their image record (`manifests/...`) that no image references.
//!
//! At start-up (`at_start`) nothing else uses the data directory, so the first three go whatever
//! their age. Otherwise, and always for layer and manifest bytes, only files older than the grace
//! period go. That is what keeps a file written after the snapshot (its mtime is later than the
//! snapshot), and what protects downloads in flight (URLs issued before a repository was deleted
//! stay valid for an hour). A PutImage racing the sweep cannot end with an image over removed
//! bytes: PutImage references only layers whose records it marked; a layer recorded after the
//! snapshot either belongs to an upload the snapshot saw unfinished (its bytes are kept), or to
//! one started after it (its bytes are younger than the grace period); and layer records are
//! removed only with their repository, whose images go with them, or by the first step above,
//! which no marked layer passes.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::blob::LocalBlobs;
use super::blocking;
use super::meta::{LocalMetadata, Owned};
use crate::domain::clock::Clock;
use crate::ports::StoreResult;

/// What one reconciliation removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub files: u64,
    pub bytes: u64,
    /// Layer records deleted because no image referenced them.
    pub layers: u64,
}

/// Removes from `blobs`' directories what `meta`'s state does not own (see the module comment).
/// `at_start`: nothing else uses the data directory now. `grace`: the age below which bytes
/// that may belong to a request in flight, or to a download, are kept, ages being taken at
/// `clock`'s time.
pub async fn reconcile(
    meta: &LocalMetadata,
    blobs: &LocalBlobs,
    at_start: bool,
    grace: Duration,
    clock: &dyn Clock,
) -> StoreResult<Reconciled> {
    let now_ms = clock.now_ms();
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
    // Layer records no image references go first, so that their bytes go below with the rest.
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    let unreferenced = meta.unreferenced_layers(now_ms, grace_ms).await?;
    let layers = meta.remove_unreferenced_layers(&unreferenced).await?;
    let owned = meta.owned().await?;
    let (objects, multipart) = blobs.dirs();
    blocking("reconcile", move || {
        let mut sweep = Sweep {
            owned: &owned,
            live_layers: owned
                .uploads
                .values()
                .filter(|(_, _, done)| !*done)
                .map(|(_, key, _)| key.clone())
                .collect(),
            multipart_ids: owned
                .uploads
                .values()
                .map(|(id, _, _)| id.clone())
                .collect(),
            now,
            at_start,
            grace,
            done: Reconciled {
                layers,
                ..Reconciled::default()
            },
        };
        sweep.objects(&objects);
        sweep.multipart(&multipart);
        Ok(sweep.done)
    })
    .await
}

struct Sweep<'a> {
    owned: &'a Owned,
    /// Blob keys of uploads not yet `Done`: their assembled bytes may be about to be recorded.
    live_layers: HashSet<String>,
    multipart_ids: HashSet<String>,
    now: SystemTime,
    at_start: bool,
    grace: Duration,
    done: Reconciled,
}

impl Sweep<'_> {
    /// Whether `path` was last modified at least the grace period ago.
    fn old(&self, path: &Path) -> bool {
        fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| self.now.duration_since(t).ok())
            .is_some_and(|age| age >= self.grace)
    }

    /// Removes a file, counting its bytes; a file already gone is fine.
    fn remove_file(&mut self, path: &Path) {
        let len = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
        if fs::remove_file(path).is_ok() {
            self.done.files += 1;
            self.done.bytes += len;
        }
    }

    fn objects(&mut self, root: &Path) {
        let mut files = Vec::new();
        walk(root, &mut files);
        for path in files {
            let Some(key) = key_of(root, &path) else {
                continue;
            };
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let remove = if name.starts_with(".tmp-") {
                self.at_start || self.old(&path)
            } else if key.starts_with("staging/") {
                !self.owned.segment_keys.contains(&key) && (self.at_start || self.old(&path))
            } else if key.starts_with("layers/") {
                !self.owned.layer_keys.contains(&key)
                    && !self.live_layers.contains(&key)
                    && self.old(&path)
            } else if key.starts_with("manifests/") {
                !self.owned.manifest_keys.contains(&key) && self.old(&path)
            } else {
                false
            };
            if remove {
                self.remove_file(&path);
                prune_empty_dirs(root, path.parent());
            }
        }
    }

    fn multipart(&mut self, root: &Path) {
        let Ok(entries) = fs::read_dir(root) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !dir.is_dir() {
                if name.starts_with(".tmp-") && (self.at_start || self.old(&dir)) {
                    self.remove_file(&dir);
                }
                continue;
            }
            let owned = self.multipart_ids.contains(&name);
            let mut files = Vec::new();
            walk(&dir, &mut files);
            if !owned && (self.at_start || self.old(&dir)) {
                for f in &files {
                    self.remove_file(f);
                }
                let _ = fs::remove_dir_all(&dir);
                continue;
            }
            for f in files {
                let temporary = f
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".tmp-"));
                if temporary && (self.at_start || self.old(&f)) {
                    self.remove_file(&f);
                }
            }
        }
    }
}

/// Every regular file under `dir`, depth first (symbolic links are not followed).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => out.push(entry.path()),
                _ => {}
            }
        }
    }
}

/// The object key of the file at `path` under `root`: its components joined by `/`.
fn key_of(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// Removes now-empty directories from `dir` up to (excluding) `root`.
fn prune_empty_dirs(root: &Path, dir: Option<&Path>) {
    let mut d = dir;
    while let Some(dir) = d {
        if dir == root || !dir.starts_with(root) || fs::remove_dir(dir).is_err() {
            break;
        }
        d = dir.parent();
    }
}

//! Unfinished uploads, saved so that a later run continues them instead of starting over.
//!
//! One JSON file maps `endpoint|registry|repository|digest` to the upload id, the next byte the
//! server expects and the part size it asked for. Each change re-reads the file and rewrites it
//! through a rename, so two pushes sharing the file lose nothing but, at worst, a few saved
//! offsets (a stale offset is corrected by the server's `InvalidLayerPartException`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(rename = "uploadId")]
    pub upload_id: String,
    #[serde(rename = "nextByte")]
    pub next_byte: u64,
    #[serde(rename = "partSize")]
    pub part_size: u64,
    /// Seconds since the epoch; entries older than ECR keeps an upload are dropped.
    #[serde(rename = "updatedAt")]
    pub updated_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    #[serde(default)]
    uploads: BTreeMap<String, Saved>,
}

/// ECR forgets an upload after a day without activity.
const MAX_AGE_SECS: u64 = 24 * 3600;

#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

pub fn key(endpoint: &str, registry: &str, repository: &str, digest: &str) -> String {
    format!("{endpoint}|{registry}|{repository}|{digest}")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `$XDG_STATE_HOME/ecr-layer-upload/uploads.json`, else `~/.local/state/ecr-layer-upload/...`.
pub fn default_path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = match env("XDG_STATE_HOME").filter(|v| Path::new(v).is_absolute()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env("HOME").filter(|h| !h.is_empty())?).join(".local/state"),
    };
    Some(base.join("ecr-layer-upload").join("uploads.json"))
}

impl StateFile {
    pub fn new(path: PathBuf) -> StateFile {
        StateFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<File, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("state file {} is not valid: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
            Err(e) => Err(format!(
                "cannot read state file {}: {e}",
                self.path.display()
            )),
        }
    }

    fn store(&self, file: &File) -> Result<(), String> {
        let fail =
            |e: std::io::Error| format!("cannot write state file {}: {e}", self.path.display());
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, bytes).map_err(fail)?;
        std::fs::rename(&tmp, &self.path).map_err(fail)
    }

    pub fn get(&self, key: &str) -> Result<Option<Saved>, String> {
        let file = self.load()?;
        Ok(file
            .uploads
            .get(key)
            .filter(|s| now().saturating_sub(s.updated_at) < MAX_AGE_SECS)
            .cloned())
    }

    pub fn put(
        &self,
        key: &str,
        upload_id: &str,
        next_byte: u64,
        part_size: u64,
    ) -> Result<(), String> {
        let mut file = self.load()?;
        let t = now();
        file.uploads
            .retain(|_, s| t.saturating_sub(s.updated_at) < MAX_AGE_SECS);
        file.uploads.insert(
            key.to_string(),
            Saved {
                upload_id: upload_id.to_string(),
                next_byte,
                part_size,
                updated_at: t,
            },
        );
        self.store(&file)
    }

    pub fn remove(&self, key: &str) -> Result<(), String> {
        let mut file = self.load()?;
        if file.uploads.remove(key).is_some() {
            self.store(&file)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_prefers_xdg_state_home() {
        let env = |k: &str| match k {
            "XDG_STATE_HOME" => Some("/s".to_string()),
            "HOME" => Some("/h".to_string()),
            _ => None,
        };
        assert_eq!(
            default_path(env).unwrap(),
            PathBuf::from("/s/ecr-layer-upload/uploads.json")
        );
        let env = |k: &str| (k == "HOME").then(|| "/h".to_string());
        assert_eq!(
            default_path(env).unwrap(),
            PathBuf::from("/h/.local/state/ecr-layer-upload/uploads.json")
        );
    }

    #[test]
    fn saved_uploads_survive_a_reload_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path().join("sub/uploads.json"));
        let k = key("http://e", "", "repo", "sha256:00");
        assert_eq!(state.get(&k).unwrap(), None);
        state.put(&k, "u-1", 42, 1024).unwrap();
        let saved = state.get(&k).unwrap().unwrap();
        assert_eq!(
            (saved.upload_id.as_str(), saved.next_byte, saved.part_size),
            ("u-1", 42, 1024)
        );
        state.remove(&k).unwrap();
        assert_eq!(state.get(&k).unwrap(), None);
    }
}

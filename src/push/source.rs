//! Where the image's files live: an OCI layout directory, or a tar (an OCI layout archive or a
//! `docker save` tar) read in place. A tar is indexed once (names → data offset and length, the
//! data itself skipped with seeks); every file is then a byte range of the tar that is streamed
//! from its offset, so nothing is ever extracted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// A file of the image as a byte range of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl Region {
    /// A blocking reader of exactly this range.
    pub fn open(&self) -> std::io::Result<std::io::Take<BufReader<File>>> {
        self.open_at(0)
    }

    /// A blocking reader of the range from its byte `pos` on.
    pub fn open_at(&self, pos: u64) -> std::io::Result<std::io::Take<BufReader<File>>> {
        let pos = pos.min(self.len);
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset + pos))?;
        Ok(BufReader::with_capacity(1 << 16, f).take(self.len - pos))
    }
}

#[derive(Debug)]
pub enum Source {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        entries: HashMap<String, Region>,
    },
}

/// Manifests, indexes and `manifest.json` are read whole; ECR caps a manifest at 4 MiB.
pub const MAX_SMALL_FILE: u64 = 4 * 1024 * 1024;

impl Source {
    pub fn open(path: &Path) -> Result<Source, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let entries =
            index_tar(path).map_err(|e| format!("{}: not a readable tar: {e}", path.display()))?;
        Ok(Source::Tar {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The file `name` (a relative path such as `blobs/sha256/<hex>`), if present.
    pub fn region(&self, name: &str) -> Result<Option<Region>, String> {
        let name = normalize(name).ok_or_else(|| format!("invalid path in the image: {name:?}"))?;
        match self {
            Source::Dir(dir) => {
                let path = dir.join(&name);
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => Ok(Some(Region {
                        path,
                        offset: 0,
                        len: m.len(),
                    })),
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(format!("{}: {e}", path.display())),
                }
            }
            Source::Tar { entries, .. } => Ok(entries.get(&name).cloned()),
        }
    }

    pub fn has(&self, name: &str) -> Result<bool, String> {
        Ok(self.region(name)?.is_some())
    }

    /// A small file (JSON), read whole.
    pub fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let Some(region) = self.region(name)? else {
            return Ok(None);
        };
        if region.len > MAX_SMALL_FILE {
            return Err(format!(
                "{name} is {} bytes, more than the {MAX_SMALL_FILE} a manifest may have",
                region.len
            ));
        }
        let mut buf = Vec::with_capacity(region.len as usize);
        region
            .open()
            .and_then(|mut r| r.read_to_end(&mut buf))
            .map_err(|e| format!("cannot read {name}: {e}"))?;
        if buf.len() as u64 != region.len {
            return Err(format!("{name} is truncated"));
        }
        Ok(Some(buf))
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Dir(p) | Source::Tar { path: p, .. } => p.display().to_string(),
        }
    }
}

/// `./a//b/../c` style paths as tar writers spell them, reduced to `a/c`; `None` for a path that
/// leaves the root.
fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

/// Names of the tar's regular files → their data ranges. Hard links and symbolic links (which
/// `docker save` writes for layers shared between images) resolve to their target's range.
fn index_tar(path: &Path) -> std::io::Result<HashMap<String, Region>> {
    let file = File::open(path)?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut entries = HashMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let Some(name) = normalize(&name) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_file() || kind.is_contiguous() {
            entries.insert(
                name,
                Region {
                    path: path.to_path_buf(),
                    offset: entry.raw_file_position(),
                    len: entry.size(),
                },
            );
        } else if kind.is_hard_link() || kind.is_symlink() {
            let Some(target) = entry.link_name()? else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            // A symlink is relative to its own directory; a hard link names a path in the archive.
            let resolved = if kind.is_symlink() && !target.starts_with('/') {
                match name.rsplit_once('/') {
                    Some((dir, _)) => format!("{dir}/{target}"),
                    None => target,
                }
            } else {
                target
            };
            if let Some(resolved) = normalize(&resolved) {
                links.push((name, resolved));
            }
        }
    }
    // Links may point at links; a few rounds settle any sane chain.
    for _ in 0..8 {
        let mut changed = false;
        for (name, target) in &links {
            if !entries.contains_key(name)
                && let Some(r) = entries.get(target).cloned()
            {
                entries.insert(name.clone(), r);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalize_reduces_tar_spellings() {
        assert_eq!(
            normalize("./blobs/sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize("a//b/../c").as_deref(), Some("a/c"));
        assert_eq!(normalize("/index.json").as_deref(), Some("index.json"));
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("."), None);
    }
}

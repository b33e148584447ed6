//! The service suite (`tests/service/suite.rs`, with the images of `tests/service/images.rs`) on
//! the in-memory adapters and on the embedded
//! backend (redb + files in a temporary directory), both holding multipart parts to S3's 5 MiB
//! minimum. The embedded backend lists its staging objects from its objects directory, so the
//! suite's "no orphans" checks run on it in full.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata};
use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};
use tempfile::TempDir;

use crate::common::temp_dir;
use crate::service_suite::{Backend, MIB};

/// Fresh in-memory adapters for every test.
pub struct Memory {
    meta: MemoryMetadata,
    blobs: MemoryBlobs,
}

impl Backend for Memory {
    type Metadata = MemoryMetadata;
    type Blobs = MemoryBlobs;

    async fn open() -> Self {
        Memory {
            meta: MemoryMetadata::new(),
            // The blob store refuses non-final multipart parts under 5 MiB, as S3 does.
            blobs: MemoryBlobs::new().with_min_part_size(5 * MIB),
        }
    }

    fn metadata(&self) -> MemoryMetadata {
        self.meta.clone()
    }

    fn blobs(&self) -> MemoryBlobs {
        self.blobs.clone()
    }
}

/// The embedded backend in a temporary directory of its own, removed with it.
pub struct Embedded {
    dir: TempDir,
    meta: LocalMetadata,
    blobs: LocalBlobs,
}

impl Backend for Embedded {
    type Metadata = LocalMetadata;
    type Blobs = LocalBlobs;

    async fn open() -> Self {
        let dir = temp_dir();
        let meta = LocalMetadata::open(dir.path()).expect("open local metadata");
        let blobs = LocalBlobs::open(dir.path())
            .expect("open local blobs")
            .with_min_part_size(5 * MIB);
        Embedded { dir, meta, blobs }
    }

    fn metadata(&self) -> LocalMetadata {
        self.meta.clone()
    }

    fn blobs(&self) -> LocalBlobs {
        self.blobs.clone()
    }

    /// The files under `blobs/objects/staging/<upload_id>/` (src/backends/local/blob.rs: one
    /// file per object, the key's components as directories; temporary files start with `.`).
    async fn staging_objects(&self, upload_id: &str) -> Option<BTreeMap<String, u64>> {
        let objects = self.dir.path().join("blobs").join("objects");
        let mut found = BTreeMap::new();
        let mut pending = vec![objects.join("staging").join(upload_id)];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry.expect("a directory entry");
                let meta = entry.metadata().expect("its metadata");
                let path: PathBuf = entry.path();
                if meta.is_dir() {
                    pending.push(path);
                } else if !entry.file_name().to_string_lossy().starts_with('.') {
                    found.insert(key_of(&objects, &path), meta.len());
                }
            }
        }
        Some(found)
    }
}

fn key_of(objects: &Path, path: &Path) -> String {
    let rel = path
        .strip_prefix(objects)
        .expect("under the objects directory");
    rel.components()
        .map(|c| c.as_os_str().to_str().expect("a UTF-8 key"))
        .collect::<Vec<_>>()
        .join("/")
}

mod memory {
    use crate::service_suite;
    service_suite::service_behaviours!(service_suite::service_tests!(service_suite, super::Memory));

    mod images {
        use crate::{service_images, service_suite};
        service_images::image_behaviours!(service_suite::service_tests!(
            service_images,
            super::super::Memory
        ));
    }
}

mod embedded {
    use crate::service_suite;
    service_suite::service_behaviours!(service_suite::service_tests!(
        service_suite,
        super::Embedded
    ));

    mod images {
        use crate::{service_images, service_suite};
        service_images::image_behaviours!(service_suite::service_tests!(
            service_images,
            super::super::Embedded
        ));
    }
}

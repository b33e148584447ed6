//! The embedded store's parts written in place (`BlobStore::upload_part_at`,
//! src/backends/local/blob.rs): one data file per multipart upload, each part at its offset;
//! completion renames that file into place (no copy), cut to the recorded parts' length; a write
//! overlapping one of a higher part number is refused, so the file holds the bytes of the part
//! the service records; a completion cut after its rename is finished by a retry.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bytes::Bytes;
use ecr_layer_upload::backends::local::LocalBlobs;
use ecr_layer_upload::domain::error::StoreError;
use ecr_layer_upload::ports::{BlobStore, FlushedPart};
use futures_util::TryStreamExt;

use crate::common::{noise, temp_dir};

const MIB: usize = 1024 * 1024;
const KEY: &str = "layers/in-place";

async fn read(blobs: &LocalBlobs, key: &str) -> Vec<u8> {
    let chunks: Vec<Bytes> = blobs
        .read_object(key, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

/// Every file under the multipart upload's directory, by name.
fn part_files(dir: &Path, id: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("blobs/multipart").join(id))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn put(blobs: &LocalBlobs, id: &str, number: u32, offset: usize, data: &[u8]) -> FlushedPart {
    let etag = blobs
        .upload_part_at(KEY, id, number, offset as u64, Bytes::copy_from_slice(data))
        .await
        .unwrap();
    FlushedPart {
        number,
        etag,
        offset: offset as u64,
        len: data.len() as u64,
    }
}

#[tokio::test]
async fn parts_land_in_one_file_that_becomes_the_layer_without_a_copy() {
    let dir = temp_dir();
    let blobs = LocalBlobs::open(dir.path()).unwrap();
    let id = blobs.create_multipart(KEY).await.unwrap();
    let data = noise(13 * MIB + 77, 1);
    let p1 = put(&blobs, &id, 1, 0, &data[..6 * MIB]).await;
    let p2 = put(&blobs, &id, 2, 6 * MIB, &data[6 * MIB..12 * MIB]).await;
    // A write that was never recorded (a lost race past the end) leaves bytes past the layer.
    put(&blobs, &id, 5, 13 * MIB + 77, &noise(MIB, 9)).await;
    let p3 = put(&blobs, &id, 3, 12 * MIB, &data[12 * MIB..]).await;
    assert_eq!(part_files(dir.path(), &id), ["data", "key"]);
    let inode = std::fs::metadata(dir.path().join("blobs/multipart").join(&id).join("data"))
        .unwrap()
        .ino();

    blobs
        .complete_multipart(KEY, &id, &[p1, p2, p3])
        .await
        .unwrap();
    assert_eq!(read(&blobs, KEY).await, data, "cut to the recorded parts");
    let layer = std::fs::metadata(dir.path().join("blobs/objects").join(KEY)).unwrap();
    assert_eq!(layer.ino(), inode, "the data file was renamed, not copied");
    assert!(!dir.path().join("blobs/multipart").join(&id).exists());
}

#[tokio::test]
async fn a_lower_number_never_lands_over_a_higher_one() {
    let dir = temp_dir();
    let blobs = LocalBlobs::open(dir.path()).unwrap();
    let id = blobs.create_multipart(KEY).await.unwrap();
    let (early, late) = (noise(6 * MIB, 2), noise(6 * MIB, 3));
    // The later claim (number 2) writes first; the earlier claim (1) for the same range comes
    // after it and is refused, also when it only overlaps.
    let winner = put(&blobs, &id, 2, 0, &late).await;
    for offset in [0u64, 3 * MIB as u64] {
        let refused = blobs
            .upload_part_at(KEY, &id, 1, offset, Bytes::copy_from_slice(&early))
            .await;
        assert!(
            matches!(refused, Err(StoreError::Conflict)),
            "at {offset}: {refused:?}"
        );
    }
    // The same number again (racing flushers write the same bytes) is fine.
    put(&blobs, &id, 2, 0, &late).await;
    blobs.complete_multipart(KEY, &id, &[winner]).await.unwrap();
    assert_eq!(read(&blobs, KEY).await, late);
}

#[tokio::test]
async fn a_higher_number_overwrites_and_the_lower_part_no_longer_completes() {
    let dir = temp_dir();
    let blobs = LocalBlobs::open(dir.path()).unwrap();
    let id = blobs.create_multipart(KEY).await.unwrap();
    let (early, late) = (noise(6 * MIB, 4), noise(6 * MIB, 5));
    let loser = put(&blobs, &id, 1, 0, &early).await;
    let winner = put(&blobs, &id, 2, 0, &late).await;
    let stale = blobs.complete_multipart(KEY, &id, &[loser]).await;
    assert!(matches!(stale, Err(StoreError::Conflict)), "{stale:?}");
    blobs.complete_multipart(KEY, &id, &[winner]).await.unwrap();
    assert_eq!(read(&blobs, KEY).await, late);
}

#[tokio::test]
async fn parts_that_do_not_tile_the_layer_do_not_complete() {
    let dir = temp_dir();
    let blobs = LocalBlobs::open(dir.path()).unwrap();
    let id = blobs.create_multipart(KEY).await.unwrap();
    let data = noise(2 * MIB, 6);
    let p1 = put(&blobs, &id, 1, 0, &data[..MIB]).await;
    let p2 = put(&blobs, &id, 2, MIB + 1, &data[MIB + 1..]).await;
    let gap = blobs.complete_multipart(KEY, &id, &[p1.clone(), p2]).await;
    assert!(matches!(gap, Err(StoreError::Conflict)), "{gap:?}");
    // An ETag naming another offset than the part's is no part of ours.
    let moved = FlushedPart { offset: 5, ..p1 };
    let wrong = blobs.complete_multipart(KEY, &id, &[moved]).await;
    assert!(matches!(wrong, Err(StoreError::Conflict)), "{wrong:?}");
}

#[tokio::test]
async fn a_completion_cut_after_its_rename_is_finished_by_a_retry_after_a_restart() {
    let dir = temp_dir();
    let data = noise(7 * MIB + 3, 7);
    let (id, parts) = {
        let blobs = LocalBlobs::open(dir.path()).unwrap();
        let id = blobs.create_multipart(KEY).await.unwrap();
        let p1 = put(&blobs, &id, 1, 0, &data[..6 * MIB]).await;
        let p2 = put(&blobs, &id, 2, 6 * MIB, &data[6 * MIB..]).await;
        (id, vec![p1, p2])
    };
    // The cut: the data file is in place, the multipart directory still there.
    let objects = dir.path().join("blobs/objects/layers");
    std::fs::create_dir_all(&objects).unwrap();
    std::fs::rename(
        dir.path().join("blobs/multipart").join(&id).join("data"),
        objects.join("in-place"),
    )
    .unwrap();
    let blobs = LocalBlobs::open(dir.path()).unwrap();
    blobs.complete_multipart(KEY, &id, &parts).await.unwrap();
    assert_eq!(read(&blobs, KEY).await, data);
    assert!(!dir.path().join("blobs/multipart").join(&id).exists());
    // And once more, as a client whose answer was lost would.
    blobs.complete_multipart(KEY, &id, &parts).await.unwrap();
}

#[tokio::test]
async fn writes_after_an_abort_find_no_upload() {
    let dir = temp_dir();
    let blobs = LocalBlobs::open(dir.path()).unwrap();
    let id = blobs.create_multipart(KEY).await.unwrap();
    put(&blobs, &id, 1, 0, &noise(MIB, 8)).await;
    blobs.abort_multipart(KEY, &id).await.unwrap();
    let late = blobs
        .upload_part_at(KEY, &id, 2, MIB as u64, Bytes::from(noise(MIB, 8)))
        .await;
    assert!(matches!(late, Err(StoreError::NotFound(_))), "{late:?}");
    assert!(!dir.path().join("blobs/multipart").join(&id).exists());
}

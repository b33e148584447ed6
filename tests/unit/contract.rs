//! The port contract (`tests/contract/suite.rs`) against the in-memory and the embedded
//! backends, plus what only the embedded backend promises: restarts keep state, keys cannot
//! leave the data directory.

use bytes::Bytes;
use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata};
use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};
use ecr_layer_upload::domain::error::StoreError;
use ecr_layer_upload::ports::{
    BlobStore, DownloadRefused, Finish, FlushedPart, ImageRecord, LayerRecord, MetadataStore,
    PutImageOutcome, RepositoryRecord, SideWrite, SignedDownloads, StagedSegment, UploadRecord,
    UploadState,
};
use tempfile::TempDir;

use crate::common::{open_upload, temp_dir};
use crate::suite;

async fn memory_metadata() -> (MemoryMetadata, ()) {
    (MemoryMetadata::default(), ())
}

async fn memory_blobs() -> (MemoryBlobs, ()) {
    (MemoryBlobs::default(), ())
}

async fn local_metadata() -> (LocalMetadata, TempDir) {
    let dir = temp_dir();
    let store = LocalMetadata::open(dir.path()).expect("open local metadata");
    (store, dir)
}

async fn local_blobs() -> (LocalBlobs, TempDir) {
    let dir = temp_dir();
    let store = LocalBlobs::open(dir.path()).expect("open local blobs");
    (store, dir)
}

mod memory_metadata {
    use crate::suite;
    suite::metadata_behaviours!(suite::metadata_tests!(super::memory_metadata));
}

mod memory_blobs {
    use crate::suite;
    suite::blob_behaviours!(suite::blob_tests!(super::memory_blobs));
}

mod local_metadata {
    use crate::suite;
    suite::metadata_behaviours!(suite::metadata_tests!(super::local_metadata));
}

mod local_blobs {
    use crate::suite;
    suite::blob_behaviours!(suite::blob_tests!(super::local_blobs));
}

#[tokio::test]
async fn local_blobs_resolve_their_signed_download_urls() {
    let (blobs, _dir) = local_blobs().await;
    suite::signed_download_url_resolves_to_the_key(&blobs).await;
}

/// The sequential runner that other test crates may use stays in working order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_on_memory_backends() {
    suite::run_all(&MemoryMetadata::default(), &MemoryBlobs::default()).await;
}

// ---------------------------------------------------------------------------------------------
// Embedded backend only.

fn upload(id: &str) -> UploadRecord {
    UploadRecord {
        version: 0,
        created_at_ms: 1,
        updated_at_ms: 1,
        expires_at: 1_000,
        ..open_upload(id, "app")
    }
}

fn repository() -> RepositoryRecord {
    RepositoryRecord {
        registry_id: "123456789012".into(),
        name: "app".into(),
        created_at_ms: 1,
        image_tag_mutability: ecr_layer_upload::domain::model::TagMutability::Mutable,
        scan_on_push: false,
        encryption_type: ecr_layer_upload::domain::model::EncryptionType::Aes256,
        kms_key: None,
        incarnation: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_state_survives_reopening_the_directory() {
    let dir = temp_dir();
    let repo = repository();
    let part_data = suite::pattern(7, suite::MIN_PART);
    let tail = Bytes::from_static(b"tail bytes");
    let (upload_v2, segment, part, layer, multipart_id) = {
        let meta = LocalMetadata::open(dir.path()).unwrap();
        let blobs = LocalBlobs::open(dir.path()).unwrap();
        meta.create_repository(&repo).await.unwrap();

        let mut u = upload("survivor");
        u.multipart_id = blobs.create_multipart(&u.blob_key).await.unwrap();
        meta.create_upload(&u).await.unwrap();
        let etag = blobs
            .upload_part(&u.blob_key, &u.multipart_id, 1, part_data.clone())
            .await
            .unwrap();
        let part = FlushedPart {
            number: 1,
            etag,
            offset: 0,
            len: part_data.len() as u64,
        };
        let v1 = UploadRecord {
            version: 1,
            next_byte: part.len,
            flushed_bytes: part.len,
            parts_flushed: 1,
            ..u.clone()
        };
        meta.update_upload(&v1, SideWrite::Part(part.clone()))
            .await
            .unwrap();

        let segment = StagedSegment {
            offset: part.len,
            len: tail.len() as u64,
            key: "staging/survivor/5242880".into(),
        };
        blobs.put_object(&segment.key, tail.clone()).await.unwrap();
        let v2 = UploadRecord {
            version: 2,
            next_byte: part.len + segment.len,
            ..v1
        };
        meta.update_upload(&v2, SideWrite::Segment(segment.clone()))
            .await
            .unwrap();

        let done = upload("finished");
        meta.create_upload(&done).await.unwrap();
        let layer = LayerRecord {
            registry_id: repo.registry_id.clone(),
            repository: repo.name.clone(),
            digest: format!("sha256:{}", "0".repeat(64)),
            blob_key: done.blob_key.clone(),
            size: 3,
            media_type: None,
            created_at_ms: 1,
        };
        let retired = UploadRecord {
            version: 1,
            state: UploadState::Done,
            ..done
        };
        assert_eq!(
            meta.finish_upload(&retired, &layer).await.unwrap(),
            Finish::Recorded
        );
        (v2, segment, part, layer, u.multipart_id)
        // Both stores are dropped here, closing the database.
    };

    let meta = LocalMetadata::open(dir.path()).expect("reopen metadata");
    let blobs = LocalBlobs::open(dir.path()).expect("reopen blobs");
    assert_eq!(
        meta.get_repository("123456789012", "app").await.unwrap(),
        Some(repo)
    );
    assert_eq!(
        meta.get_upload("survivor").await.unwrap(),
        Some(upload_v2.clone())
    );
    assert_eq!(
        meta.list_segments("survivor", 0).await.unwrap(),
        vec![segment.clone()]
    );
    assert_eq!(
        meta.list_parts("survivor").await.unwrap(),
        vec![part.clone()]
    );
    assert_eq!(
        meta.get_layer("123456789012", "app", &layer.digest)
            .await
            .unwrap(),
        Some(layer)
    );
    assert_eq!(
        meta.get_upload("finished").await.unwrap().map(|u| u.state),
        Some(UploadState::Done)
    );
    assert_eq!(
        meta.expired_uploads(1_001, 10).await.unwrap().len(),
        2,
        "the expiry index survives too"
    );
    assert_eq!(blobs.get_object(&segment.key).await.unwrap(), tail);

    // The multipart upload started before the restart can be completed after it.
    let tail_etag = blobs
        .upload_part(&upload_v2.blob_key, &multipart_id, 2, tail.clone())
        .await
        .unwrap();
    let parts = [
        part,
        FlushedPart {
            number: 2,
            etag: tail_etag,
            offset: segment.offset,
            len: segment.len,
        },
    ];
    blobs
        .complete_multipart(&upload_v2.blob_key, &multipart_id, &parts)
        .await
        .unwrap();
    let whole = blobs.get_object(&upload_v2.blob_key).await.unwrap();
    assert_eq!(whole.len(), part_data.len() + tail.len());
    assert!(whole[..part_data.len()] == part_data[..] && whole[part_data.len()..] == tail[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_metadata_refuses_a_second_open_of_the_same_directory() {
    let dir = temp_dir();
    let _held = LocalMetadata::open(dir.path()).unwrap();
    assert!(matches!(
        LocalMetadata::open(dir.path()),
        Err(StoreError::Backend { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_blob_keys_cannot_escape_the_data_directory() {
    let dir = temp_dir();
    let blobs = LocalBlobs::open(dir.path()).unwrap();
    let data = Bytes::from_static(b"x");
    for key in [
        "../x",
        "../../x",
        "a/../../x",
        "/tmp/x",
        "a//b",
        "a/",
        "",
        ".hidden",
        "a/./b",
    ] {
        assert!(
            blobs.put_object(key, data.clone()).await.is_err(),
            "put_object accepted {key:?}"
        );
        assert!(
            blobs.get_object(key).await.is_err(),
            "get_object accepted {key:?}"
        );
        assert!(
            blobs.read_object(key, None).await.is_err(),
            "read_object accepted {key:?}"
        );
        assert!(
            blobs.object_size(key).await.is_err(),
            "object_size accepted {key:?}"
        );
        assert!(
            blobs.delete_objects(&[key.to_owned()]).await.is_err(),
            "delete_objects accepted {key:?}"
        );
        assert!(
            blobs.create_multipart(key).await.is_err(),
            "create_multipart accepted {key:?}"
        );
    }
    assert!(!dir.path().join("blobs/x").exists());
    assert!(!dir.path().join("x").exists());

    // Multipart ids are names of directories: one that walks out is refused too.
    let key = "uploads/fine";
    for id in ["../objects", "..", "a/b", ""] {
        let res = blobs.upload_part(key, id, 1, data.clone()).await;
        assert!(res.is_err(), "upload_part accepted multipart id {id:?}");
        assert!(blobs.abort_multipart(key, id).await.is_ok());
    }
    assert!(
        dir.path().join("blobs/objects").is_dir(),
        "abort removed nothing it should not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_delete_objects_prunes_emptied_directories() {
    let dir = temp_dir();
    let blobs = LocalBlobs::open(dir.path()).unwrap();
    let keys: Vec<String> = (0..3).map(|i| format!("staging/up-1/{i}")).collect();
    for key in &keys {
        blobs
            .put_object(key, Bytes::from_static(b"abc"))
            .await
            .unwrap();
    }
    blobs
        .put_object("staging/up-2/0", Bytes::from_static(b"abc"))
        .await
        .unwrap();
    blobs.delete_objects(&keys).await.unwrap();
    let objects = dir.path().join("blobs/objects");
    assert!(
        !objects.join("staging/up-1").exists(),
        "one directory per upload would pile up"
    );
    assert!(objects.join("staging/up-2/0").is_file());
    // The emptied directory can be written into again.
    blobs
        .put_object(&keys[0], Bytes::from_static(b"again"))
        .await
        .unwrap();
    assert_eq!(
        blobs.get_object(&keys[0]).await.unwrap(),
        Bytes::from_static(b"again")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_concurrent_update_upload_from_many_tasks_has_one_winner() {
    let (meta, _dir) = local_metadata().await;
    let u = upload("contended");
    meta.create_upload(&u).await.unwrap();
    let tasks: Vec<_> = (1..=32u64)
        .map(|len| {
            let meta = meta.clone();
            let next = UploadRecord {
                version: 1,
                next_byte: len,
                ..u.clone()
            };
            tokio::spawn(async move { meta.update_upload(&next, SideWrite::None).await })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => wins += 1,
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(
        meta.get_upload("contended")
            .await
            .unwrap()
            .map(|u| u.version),
        Some(1)
    );
}

/// With S3's minimum switched on, both non-AWS blob stores refuse what S3 would refuse, so a
/// service test can pin that it never produces such an upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_part_size_refuses_small_non_final_parts() {
    let dir = temp_dir();
    let local = LocalBlobs::open(dir.path())
        .unwrap()
        .with_min_part_size(1000);
    let memory = MemoryBlobs::default().with_min_part_size(1000);
    refuses_small_non_final_part(&local).await;
    refuses_small_non_final_part(&memory).await;
}

async fn refuses_small_non_final_part<B: BlobStore>(b: &B) {
    let key = "uploads/small";
    let id = b.create_multipart(key).await.unwrap();
    let small = b
        .upload_part(key, &id, 1, Bytes::from(vec![1; 999]))
        .await
        .unwrap();
    let last = b
        .upload_part(key, &id, 2, Bytes::from(vec![2; 10]))
        .await
        .unwrap();
    let parts = [
        FlushedPart {
            number: 1,
            etag: small,
            offset: 0,
            len: 999,
        },
        FlushedPart {
            number: 2,
            etag: last,
            offset: 999,
            len: 10,
        },
    ];
    assert!(matches!(
        b.complete_multipart(key, &id, &parts).await,
        Err(StoreError::Backend { .. })
    ));
    assert_eq!(b.object_size(key).await.unwrap(), None);
    // A lone small part is the last one, which S3 accepts.
    let id = b.create_multipart(key).await.unwrap();
    let only = b
        .upload_part(key, &id, 1, Bytes::from(vec![3; 5]))
        .await
        .unwrap();
    b.complete_multipart(
        key,
        &id,
        &[FlushedPart {
            number: 1,
            etag: only,
            offset: 0,
            len: 5,
        }],
    )
    .await
    .unwrap();
    assert_eq!(b.object_size(key).await.unwrap(), Some(5));
}

// ---------------------------------------------------------------------------------------------
// Embedded backend only: images and download URLs.

fn local_image(digest: &str) -> ImageRecord {
    ImageRecord {
        registry_id: "123456789012".into(),
        repository: "app".into(),
        digest: digest.to_owned(),
        manifest: Some(r#"{"schemaVersion":2}"#.into()),
        manifest_key: None,
        media_type: ecr_layer_upload::domain::model::ManifestMediaType::OciManifest,
        artifact_media_type: None,
        size: 3,
        pushed_at_ms: 5,
        blobs: vec![format!("sha256:{}", "1".repeat(64))],
        manifests: Vec::new(),
        subject: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_images_and_tags_survive_reopening_the_directory() {
    let dir = temp_dir();
    let image = local_image(&format!("sha256:{}", "a".repeat(64)));
    {
        let meta = LocalMetadata::open(dir.path()).unwrap();
        assert_eq!(
            meta.put_image(&image, Some("latest"), true).await.unwrap(),
            PutImageOutcome::Stored
        );
    }
    let meta = LocalMetadata::open(dir.path()).unwrap();
    assert_eq!(
        meta.get_image("123456789012", "app", &image.digest)
            .await
            .unwrap(),
        Some(image.clone())
    );
    assert_eq!(
        meta.put_image(&image, Some("latest"), true).await.unwrap(),
        PutImageOutcome::AlreadyExists
    );
    assert_eq!(
        meta.list_tags("123456789012", "app").await.unwrap().len(),
        1
    );
}

/// A data directory written before images were stored (no image or tag tables) opens, keeps its
/// records, and takes images.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_metadata_opens_a_directory_from_before_images() {
    let dir = temp_dir();
    let repo = repository();
    {
        // The tables of schema version 1 as the first releases created them.
        use redb::{Database, TableDefinition};
        let meta: TableDefinition<&str, u64> = TableDefinition::new("meta");
        let repos: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("repositories");
        let db = Database::create(dir.path().join("state.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(meta)
            .unwrap()
            .insert("schema_version", 1)
            .unwrap();
        txn.open_table(repos)
            .unwrap()
            .insert(
                ("123456789012", "app"),
                serde_json::to_vec(&repo).unwrap().as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
    }
    let meta = LocalMetadata::open(dir.path()).expect("an older directory opens");
    assert_eq!(
        meta.get_repository("123456789012", "app").await.unwrap(),
        Some(repo)
    );
    assert!(
        meta.list_images("123456789012", "app")
            .await
            .unwrap()
            .is_empty()
    );
    let image = local_image(&format!("sha256:{}", "b".repeat(64)));
    assert_eq!(
        meta.put_image(&image, None, false).await.unwrap(),
        PutImageOutcome::Stored
    );
    assert!(meta.delete_repository("123456789012", "app").await.unwrap());
    assert!(
        meta.list_images("123456789012", "app")
            .await
            .unwrap()
            .is_empty()
    );
}

/// The path and query of a URL, as the server receives them.
fn path_and_query(url: &str) -> (String, Option<String>) {
    let rest = url.split_once("://").expect("absolute URL").1;
    let from_path = &rest[rest.find('/').expect("a path")..];
    match from_path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (from_path.to_owned(), None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_download_urls_are_signed_and_expire() {
    let dir = temp_dir();
    let blobs = LocalBlobs::open(dir.path())
        .unwrap()
        .with_public_url("http://registry.test:5000/");
    let key = "uploads/0b6a";
    let url = blobs.download_url(key, 3_600).await.unwrap();
    assert!(
        url.starts_with("http://registry.test:5000/_download/uploads/0b6a?X-Ecr-Expires="),
        "{url}"
    );
    let (path, query) = path_and_query(&url);
    let query = query.expect("a query");
    assert_eq!(
        blobs.resolve_download(&path, Some(&query)),
        Some(Ok(key.to_owned()))
    );

    let signature = query.split_once("X-Ecr-Signature=").unwrap().1.to_owned();
    let tampered = {
        let mut s = signature.clone().into_bytes();
        s[10] = if s[10] == b'a' { b'b' } else { b'a' };
        String::from_utf8(s).unwrap()
    };
    let expires: u64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("X-Ecr-Expires="))
        .unwrap()
        .parse()
        .unwrap();
    let bad = Some(Err(DownloadRefused::BadSignature));
    for (p, q) in [
        (path.clone(), query.replace(&signature, &tampered)),
        (
            path.clone(),
            query.replace(&expires.to_string(), &(expires + 1).to_string()),
        ),
        ("/_download/uploads/0b6b".to_owned(), query.clone()),
    ] {
        assert_eq!(blobs.resolve_download(&p, Some(&q)), bad, "{p}?{q}");
    }
    assert_eq!(blobs.resolve_download(&path, None), bad);

    // A URL valid for 0 seconds stops working once its second has passed.
    let (path0, query0) = path_and_query(&blobs.download_url(key, 0).await.unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match blobs.resolve_download(&path0, query0.as_deref()) {
            Some(Err(DownloadRefused::Expired)) => break,
            Some(Ok(k)) => assert_eq!(k, key),
            other => panic!("{other:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        blobs.resolve_download(&path, Some(&query)),
        Some(Ok(key.to_owned())),
        "the hour-long URL still works"
    );

    for other in [
        "/",
        "/v2/",
        "/_downloadx/uploads/0b6a",
        "/x/_download/uploads/0b6a",
    ] {
        assert_eq!(blobs.resolve_download(other, Some(&query)), None, "{other}");
    }
    // Keys that could not name an object get no URL.
    assert!(blobs.download_url("../escape", 60).await.is_err());
}

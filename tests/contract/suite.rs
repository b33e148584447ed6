//! The contract of the storage ports (`src/ports.rs`), written once and run against every
//! backend: `tests/unit/contract.rs` (in-memory and embedded) and `tests/aws/contract.rs`
//! (S3 + DynamoDB servers).
//!
//! Every behaviour is a `pub async fn` generic over the port. Each call uses fresh ids and keys
//! (uuid), cleans up what it created where the port allows, and asserts only about its own
//! records, so the suite can run any number of times, concurrently, against a persistent server.
//!
//! Two ways to run it:
//! - `run_metadata_suite` / `run_blob_suite` / `run_all`: every behaviour in one test.
//! - `metadata_behaviours!(my_tests!(fixture))` / `blob_behaviours!(...)`: hands the list of
//!   behaviour names to a macro of the test file, typically `metadata_tests!`/`blob_tests!` below,
//!   which make one `#[tokio::test]` per behaviour so a failure names the behaviour.

// Each test crate that includes this file uses a different subset of it.
#![allow(dead_code, unused_macros, unused_imports)]

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ecr_layer_upload::domain::error::StoreError;
use ecr_layer_upload::ports::{
    BlobStore, Finish, FlushedPart, ImageRecord, LayerRecord, MetadataStore, PartFingerprint,
    PutImageOutcome, RepositoryRecord, SideWrite, SignedDownloads, StagedSegment, TagRecord,
    UploadRecord, UploadState,
};
use futures_util::StreamExt;

/// S3's smallest non-final multipart part.
pub const MIN_PART: usize = 5 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The lists of behaviours, kept in one place for the runners and the test generators.

/// Calls `$callback!($($args)* ; name, name, ...)` with every metadata behaviour.
macro_rules! metadata_behaviours {
    ($($callback:ident)::+ ! ($($args:tt)*)) => {
        $($callback)::+! {
            $($args)* ;
            repository_create_get_delete,
            create_repository_twice_is_already_exists,
            list_repositories_sorts_by_name_within_registry,
            delete_repository_removes_its_layers_only,
            create_upload_then_get_returns_it,
            create_upload_twice_is_already_exists,
            update_upload_with_next_version_replaces_record,
            update_upload_with_stale_version_conflicts_and_writes_nothing,
            update_upload_of_missing_upload_conflicts,
            concurrent_update_upload_has_exactly_one_winner,
            segments_are_listed_in_offset_order_from_offset,
            delete_segments_forgets_only_those_offsets,
            parts_are_listed_in_number_order,
            finish_upload_records_layer_then_reports_existing_layer,
            finish_upload_with_stale_version_conflicts_and_records_nothing,
            layers_are_scoped_by_registry_and_repository,
            delete_upload_removes_upload_segments_and_parts,
            expired_uploads_returns_only_expired_within_limit,
            repository_uploads_lists_one_repositorys_uploads,
            finish_upload_records_nothing_in_a_deleted_or_recreated_repository,
            set_layer_media_type_updates_a_recorded_layer_only,
            put_image_stores_a_new_image_then_reports_it_exists,
            put_image_moves_a_mutable_tag_and_keeps_the_old_image,
            put_image_with_an_immutable_tag_on_another_image_writes_nothing,
            put_image_keeps_an_existing_image_record,
            images_round_trip_every_field,
            images_and_tags_are_sorted_and_scoped_by_registry_and_repository,
            delete_tag_only_when_it_names_the_digest,
            delete_image_removes_its_tags_and_only_its_tags,
            delete_repository_removes_its_images_and_tags,
            concurrent_put_image_under_one_immutable_tag_has_exactly_one_winner
        }
    };
}
pub(crate) use metadata_behaviours;

/// Calls `$callback!($($args)* ; name, name, ...)` with every blob behaviour.
macro_rules! blob_behaviours {
    ($($callback:ident)::+ ! ($($args:tt)*)) => {
        $($callback)::+! {
            $($args)* ;
            put_get_replace_delete_object,
            missing_object_is_not_found,
            delete_objects_ignores_absent_keys,
            read_object_streams_whole_object_and_ranges,
            multipart_assembles_parts_in_order,
            complete_multipart_with_stale_etag_conflicts,
            complete_multipart_retried_after_success_succeeds,
            abort_multipart_drops_the_upload,
            download_url_names_the_key
        }
    };
}
pub(crate) use blob_behaviours;

macro_rules! run_each {
    ($store:expr ; $($name:ident),* $(,)?) => {
        $(
            eprintln!("contract: {}", stringify!($name));
            $name($store).await;
        )*
    };
}

/// Every metadata behaviour in turn.
pub async fn run_metadata_suite<M: MetadataStore>(m: &M) {
    metadata_behaviours!(run_each!(m));
}

/// Every blob behaviour in turn.
pub async fn run_blob_suite<B: BlobStore>(b: &B) {
    blob_behaviours!(run_each!(b));
}

pub async fn run_all<M: MetadataStore, B: BlobStore>(m: &M, b: &B) {
    run_metadata_suite(m).await;
    run_blob_suite(b).await;
}

/// Makes one `#[tokio::test]` per metadata behaviour. `$fixture` is an async fn returning
/// `(store, guard)`; the guard (a temp dir, a server handle, `()`) lives as long as the test.
/// Use inside a module of a test crate that has `mod suite;` at its root:
/// `suite::metadata_behaviours!(suite::metadata_tests!(fixture));`
macro_rules! metadata_tests {
    ($fixture:path ; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, _guard) = $fixture().await;
                crate::suite::$name(&store).await;
            }
        )*
    };
}
pub(crate) use metadata_tests;

/// Like [`metadata_tests`], for a blob store fixture.
macro_rules! blob_tests {
    ($fixture:path ; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, _guard) = $fixture().await;
                crate::suite::$name(&store).await;
            }
        )*
    };
}
pub(crate) use blob_tests;

// ---------------------------------------------------------------------------------------------
// Record builders.

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn repository(registry_id: &str, name: &str) -> RepositoryRecord {
    RepositoryRecord {
        registry_id: registry_id.to_owned(),
        name: name.to_owned(),
        created_at_ms: 1_700_000_000_000,
        image_tag_mutability: ecr_layer_upload::domain::model::TagMutability::Mutable,
        scan_on_push: false,
        encryption_type: ecr_layer_upload::domain::model::EncryptionType::Aes256,
        kms_key: None,
        incarnation: String::new(),
    }
}

/// A fresh upload in a fresh registry, expiring a day from now.
fn upload() -> UploadRecord {
    let id = uuid::Uuid::new_v4().to_string();
    UploadRecord {
        upload_id: id.clone(),
        registry_id: unique("reg"),
        repository: "contract/repo".into(),
        repository_incarnation: String::new(),
        blob_key: format!("uploads/{id}"),
        multipart_id: unique("mp"),
        next_byte: 0,
        flushed_bytes: 0,
        parts_flushed: 0,
        part_numbers_used: 0,
        last_part: None,
        smallest_nonfinal_part: None,
        state: UploadState::Open,
        version: 0,
        created_at_ms: 1_700_000_000_000,
        updated_at_ms: 1_700_000_000_000,
        expires_at: now_secs() + 86_400,
        hash: None,
        part_checksums: false,
    }
}

/// `u` after accepting the bytes `[u.next_byte, u.next_byte + len)`: the next version.
fn advanced(u: &UploadRecord, len: u64) -> UploadRecord {
    let first = u.next_byte;
    UploadRecord {
        next_byte: first + len,
        last_part: Some(PartFingerprint {
            first,
            last: first + len - 1,
            checksum: "ab".repeat(8),
        }),
        version: u.version + 1,
        updated_at_ms: u.updated_at_ms + 1,
        ..u.clone()
    }
}

/// `u` retired: the next version, state `Done`.
fn retired(u: &UploadRecord) -> UploadRecord {
    UploadRecord {
        state: UploadState::Done,
        version: u.version + 1,
        ..u.clone()
    }
}

fn segment(upload_id: &str, offset: u64, len: u64) -> StagedSegment {
    StagedSegment {
        offset,
        len,
        key: format!("staging/{upload_id}/{offset}"),
    }
}

fn part(number: u32, offset: u64, len: u64) -> FlushedPart {
    FlushedPart {
        number,
        etag: format!("etag-{number}-{}", uuid::Uuid::new_v4().simple()),
        offset,
        len,
    }
}

fn layer_for(u: &UploadRecord, digest: &str, size: u64) -> LayerRecord {
    LayerRecord {
        registry_id: u.registry_id.clone(),
        repository: u.repository.clone(),
        digest: digest.to_owned(),
        blob_key: u.blob_key.clone(),
        size,
        media_type: Some("application/vnd.oci.image.layer.v1.tar+gzip".into()),
        created_at_ms: 1_700_000_000_000,
    }
}

fn random_digest() -> String {
    format!(
        "sha256:{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Creates the repository of upload `u` (its original incarnation, as `upload()` starts in):
/// `finish_upload` records layers only in an existing repository of the upload's incarnation.
async fn repository_of<M: MetadataStore>(m: &M, u: &UploadRecord) {
    m.create_repository(&repository(&u.registry_id, &u.repository))
        .await
        .unwrap();
}

fn is_conflict<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict))
}

/// Applies `n` successive updates without side writes, returning the last record written.
async fn bump<M: MetadataStore>(m: &M, u: &UploadRecord, n: usize) -> UploadRecord {
    let mut cur = u.clone();
    for _ in 0..n {
        let next = advanced(&cur, 1);
        m.update_upload(&next, SideWrite::None)
            .await
            .expect("update_upload with the next version");
        cur = next;
    }
    cur
}

// ---------------------------------------------------------------------------------------------
// Metadata behaviours.

pub async fn repository_create_get_delete<M: MetadataStore>(m: &M) {
    let registry = unique("reg");
    let repo = repository(&registry, "team/app");
    assert_eq!(m.get_repository(&registry, "team/app").await.unwrap(), None);
    m.create_repository(&repo).await.unwrap();
    assert_eq!(
        m.get_repository(&registry, "team/app").await.unwrap(),
        Some(repo.clone())
    );
    assert_eq!(
        m.get_repository(&registry, "team/other").await.unwrap(),
        None
    );
    assert!(m.delete_repository(&registry, "team/app").await.unwrap());
    assert_eq!(m.get_repository(&registry, "team/app").await.unwrap(), None);
    assert!(
        !m.delete_repository(&registry, "team/app").await.unwrap(),
        "deleting an absent repository answers false"
    );
}

pub async fn create_repository_twice_is_already_exists<M: MetadataStore>(m: &M) {
    let registry = unique("reg");
    let first = repository(&registry, "app");
    m.create_repository(&first).await.unwrap();
    let second = RepositoryRecord {
        image_tag_mutability: ecr_layer_upload::domain::model::TagMutability::Immutable,
        ..first.clone()
    };
    assert!(matches!(
        m.create_repository(&second).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(
        m.get_repository(&registry, "app").await.unwrap(),
        Some(first),
        "the losing create changed nothing"
    );
    m.delete_repository(&registry, "app").await.unwrap();
}

pub async fn list_repositories_sorts_by_name_within_registry<M: MetadataStore>(m: &M) {
    let registry = unique("reg");
    let other_registry = unique("reg");
    // Created out of order, with names where a prefix sorts before its extensions.
    let names = ["web", "api/v2", "api", "zeta", "api/v10"];
    for name in names {
        m.create_repository(&repository(&registry, name))
            .await
            .unwrap();
    }
    m.create_repository(&repository(&other_registry, "aaa"))
        .await
        .unwrap();

    let listed: Vec<String> = m
        .list_repositories(&registry)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.registry_id, registry);
            r.name
        })
        .collect();
    assert_eq!(listed, ["api", "api/v10", "api/v2", "web", "zeta"]);
    assert!(
        m.list_repositories(&unique("reg"))
            .await
            .unwrap()
            .is_empty()
    );

    for name in names {
        m.delete_repository(&registry, name).await.unwrap();
    }
    m.delete_repository(&other_registry, "aaa").await.unwrap();
}

pub async fn delete_repository_removes_its_layers_only<M: MetadataStore>(m: &M) {
    let u = upload();
    let (registry, name) = (u.registry_id.clone(), u.repository.clone());
    m.create_repository(&repository(&registry, &name))
        .await
        .unwrap();
    m.create_repository(&repository(&registry, "sibling"))
        .await
        .unwrap();
    let digest = random_digest();

    m.create_upload(&u).await.unwrap();
    let layer = layer_for(&u, &digest, 42);
    assert_eq!(
        m.finish_upload(&retired(&u), &layer).await.unwrap(),
        Finish::Recorded
    );
    // The same digest in a sibling repository must survive the deletion.
    let v = UploadRecord {
        registry_id: registry.clone(),
        repository: "sibling".into(),
        ..upload()
    };
    m.create_upload(&v).await.unwrap();
    let sibling_layer = layer_for(&v, &digest, 42);
    m.finish_upload(&retired(&v), &sibling_layer).await.unwrap();

    assert!(m.delete_repository(&registry, &name).await.unwrap());
    assert_eq!(m.get_repository(&registry, &name).await.unwrap(), None);
    assert_eq!(m.get_layer(&registry, &name, &digest).await.unwrap(), None);
    assert_eq!(
        m.get_layer(&registry, "sibling", &digest).await.unwrap(),
        Some(sibling_layer)
    );
    assert!(
        m.get_repository(&registry, "sibling")
            .await
            .unwrap()
            .is_some()
    );

    m.delete_repository(&registry, "sibling").await.unwrap();
    m.delete_upload(&u.upload_id).await.unwrap();
    m.delete_upload(&v.upload_id).await.unwrap();
}

pub async fn create_upload_then_get_returns_it<M: MetadataStore>(m: &M) {
    let u = upload();
    assert_eq!(m.get_upload(&u.upload_id).await.unwrap(), None);
    m.create_upload(&u).await.unwrap();
    assert_eq!(m.get_upload(&u.upload_id).await.unwrap(), Some(u.clone()));
    m.delete_upload(&u.upload_id).await.unwrap();
    assert_eq!(m.get_upload(&u.upload_id).await.unwrap(), None);
}

pub async fn create_upload_twice_is_already_exists<M: MetadataStore>(m: &M) {
    let u = upload();
    m.create_upload(&u).await.unwrap();
    let again = UploadRecord {
        next_byte: 99,
        ..u.clone()
    };
    assert!(matches!(
        m.create_upload(&again).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(m.get_upload(&u.upload_id).await.unwrap(), Some(u.clone()));
    m.delete_upload(&u.upload_id).await.unwrap();
}

pub async fn update_upload_with_next_version_replaces_record<M: MetadataStore>(m: &M) {
    let u = upload();
    m.create_upload(&u).await.unwrap();
    let mut next = advanced(&u, 1000);
    next.smallest_nonfinal_part = Some(1000);
    next.state = UploadState::Completing;
    next.expires_at = u.expires_at + 60;
    m.update_upload(&next, SideWrite::None).await.unwrap();
    assert_eq!(
        m.get_upload(&u.upload_id).await.unwrap(),
        Some(next.clone())
    );

    let after = advanced(&next, 5);
    m.update_upload(&after, SideWrite::None).await.unwrap();
    assert_eq!(m.get_upload(&u.upload_id).await.unwrap(), Some(after));
    m.delete_upload(&u.upload_id).await.unwrap();
}

pub async fn update_upload_with_stale_version_conflicts_and_writes_nothing<M: MetadataStore>(
    m: &M,
) {
    let u = upload();
    m.create_upload(&u).await.unwrap();
    let v1 = advanced(&u, 100);
    m.update_upload(&v1, SideWrite::Segment(segment(&u.upload_id, 0, 100)))
        .await
        .unwrap();

    // Derived from version 0 again (version 1), and one that skips a version (version 3).
    let stale = advanced(&u, 7);
    let skipping = UploadRecord {
        version: v1.version + 2,
        ..advanced(&v1, 7)
    };
    for bad in [&stale, &skipping] {
        let seg = segment(&u.upload_id, 5_000, 7);
        let res = m.update_upload(bad, SideWrite::Segment(seg)).await;
        assert!(is_conflict(&res), "version {} over 1: {res:?}", bad.version);
        let res = m.update_upload(bad, SideWrite::Part(part(1, 0, 7))).await;
        assert!(is_conflict(&res), "version {} over 1: {res:?}", bad.version);
    }

    assert_eq!(m.get_upload(&u.upload_id).await.unwrap(), Some(v1));
    assert_eq!(
        m.list_segments(&u.upload_id, 0).await.unwrap(),
        vec![segment(&u.upload_id, 0, 100)],
        "the losing writes' segments were not written"
    );
    assert!(
        m.list_parts(&u.upload_id).await.unwrap().is_empty(),
        "the losing writes' parts were not written"
    );
    m.delete_upload(&u.upload_id).await.unwrap();
}

pub async fn update_upload_of_missing_upload_conflicts<M: MetadataStore>(m: &M) {
    let u = upload();
    let res = m
        .update_upload(
            &advanced(&u, 1),
            SideWrite::Segment(segment(&u.upload_id, 0, 1)),
        )
        .await;
    assert!(is_conflict(&res), "{res:?}");
    assert_eq!(m.get_upload(&u.upload_id).await.unwrap(), None);
    assert!(m.list_segments(&u.upload_id, 0).await.unwrap().is_empty());
}

pub async fn concurrent_update_upload_has_exactly_one_winner<M: MetadataStore>(m: &M) {
    const WRITERS: u64 = 16;
    let u = upload();
    m.create_upload(&u).await.unwrap();
    // Every writer derives version 1 from version 0, each with a different length and segment.
    let candidates: Vec<UploadRecord> = (1..=WRITERS).map(|len| advanced(&u, len)).collect();
    let results = futures_util::future::join_all(candidates.iter().map(|c| {
        let seg = segment(&u.upload_id, 0, c.next_byte);
        m.update_upload(c, SideWrite::Segment(seg))
    }))
    .await;

    let winners: Vec<&UploadRecord> = candidates
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(c, _)| c)
        .collect();
    assert_eq!(winners.len(), 1, "results: {results:?}");
    for r in &results {
        assert!(
            r.is_ok() || is_conflict(r),
            "a loser answers Conflict: {r:?}"
        );
    }
    let winner = winners[0];
    assert_eq!(
        m.get_upload(&u.upload_id).await.unwrap().as_ref(),
        Some(winner)
    );
    assert_eq!(
        m.list_segments(&u.upload_id, 0).await.unwrap(),
        vec![segment(&u.upload_id, 0, winner.next_byte)],
        "only the winner's side write is stored"
    );
    m.delete_upload(&u.upload_id).await.unwrap();
}

pub async fn segments_are_listed_in_offset_order_from_offset<M: MetadataStore>(m: &M) {
    let u = upload();
    m.create_upload(&u).await.unwrap();
    // Written out of order, with offsets whose decimal strings sort differently from their
    // values, and one past 4 GiB.
    let offsets = [100u64, 9, 5_368_709_120, 0, 10];
    let mut cur = u.clone();
    for offset in offsets {
        let next = advanced(&cur, 1);
        m.update_upload(&next, SideWrite::Segment(segment(&u.upload_id, offset, 7)))
            .await
            .unwrap();
        cur = next;
    }
    let id = u.upload_id.as_str();
    let listed = |from| async move {
        m.list_segments(id, from)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.offset)
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(0).await, [0, 9, 10, 100, 5_368_709_120]);
    assert_eq!(listed(10).await, [10, 100, 5_368_709_120]);
    assert_eq!(listed(11).await, [100, 5_368_709_120]);
    assert_eq!(listed(5_368_709_121).await, Vec::<u64>::new());
    assert_eq!(
        m.list_segments(&u.upload_id, 9).await.unwrap()[0],
        segment(&u.upload_id, 9, 7),
        "segments come back as written"
    );
    // Another upload's segments are not listed.
    assert!(
        m.list_segments(&upload().upload_id, 0)
            .await
            .unwrap()
            .is_empty()
    );
    m.delete_upload(&u.upload_id).await.unwrap();
}

pub async fn delete_segments_forgets_only_those_offsets<M: MetadataStore>(m: &M) {
    let u = upload();
    m.create_upload(&u).await.unwrap();
    let mut cur = u.clone();
    for offset in [0u64, 10, 20, 30] {
        let next = advanced(&cur, 10);
        m.update_upload(&next, SideWrite::Segment(segment(&u.upload_id, offset, 10)))
            .await
            .unwrap();
        cur = next;
    }
    // 999 was never written: absent offsets are fine.
    m.delete_segments(&u.upload_id, &[0, 20, 999])
        .await
        .unwrap();
    let left: Vec<u64> = m
        .list_segments(&u.upload_id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.offset)
        .collect();
    assert_eq!(left, [10, 30]);
    assert_eq!(
        m.get_upload(&u.upload_id).await.unwrap(),
        Some(cur),
        "deleting segments leaves the upload alone"
    );
    m.delete_segments(&u.upload_id, &[]).await.unwrap();
    m.delete_upload(&u.upload_id).await.unwrap();
}

pub async fn parts_are_listed_in_number_order<M: MetadataStore>(m: &M) {
    let u = upload();
    m.create_upload(&u).await.unwrap();
    // Out of order, and numbers whose decimal strings sort differently from their values.
    let numbers = [10u32, 2, 1, 11, 10_000];
    let mut written = Vec::new();
    let mut cur = u.clone();
    for number in numbers {
        let p = part(
            number,
            u64::from(number - 1) * MIN_PART as u64,
            MIN_PART as u64,
        );
        let next = advanced(&cur, 1);
        m.update_upload(&next, SideWrite::Part(p.clone()))
            .await
            .unwrap();
        written.push(p);
        cur = next;
    }
    written.sort_by_key(|p| p.number);
    assert_eq!(m.list_parts(&u.upload_id).await.unwrap(), written);
    assert!(m.list_parts(&upload().upload_id).await.unwrap().is_empty());
    m.delete_upload(&u.upload_id).await.unwrap();
}

pub async fn finish_upload_records_layer_then_reports_existing_layer<M: MetadataStore>(m: &M) {
    let u = upload();
    repository_of(m, &u).await;
    m.create_upload(&u).await.unwrap();
    let u = bump(m, &u, 2).await;
    let digest = random_digest();
    assert_eq!(
        m.get_layer(&u.registry_id, &u.repository, &digest)
            .await
            .unwrap(),
        None
    );

    let layer = layer_for(&u, &digest, 1234);
    let done = retired(&u);
    assert_eq!(
        m.finish_upload(&done, &layer).await.unwrap(),
        Finish::Recorded
    );
    assert_eq!(m.get_upload(&u.upload_id).await.unwrap(), Some(done));
    assert_eq!(
        m.get_layer(&u.registry_id, &u.repository, &digest)
            .await
            .unwrap(),
        Some(layer.clone())
    );

    // A second upload of the same layer into the same repository.
    let second = UploadRecord {
        registry_id: u.registry_id.clone(),
        ..upload()
    };
    m.create_upload(&second).await.unwrap();
    let second_layer = layer_for(&second, &digest, 1234);
    assert_ne!(second_layer.blob_key, layer.blob_key);
    let second_done = retired(&second);
    assert_eq!(
        m.finish_upload(&second_done, &second_layer).await.unwrap(),
        Finish::LayerExists(layer.clone())
    );
    let stored = m.get_upload(&second.upload_id).await.unwrap();
    assert_eq!(stored.as_ref().map(|s| s.state), Some(UploadState::Done));
    assert_eq!(
        stored,
        Some(second_done),
        "the second upload is retired anyway"
    );
    assert_eq!(
        m.get_layer(&u.registry_id, &u.repository, &digest)
            .await
            .unwrap(),
        Some(layer),
        "the first layer record is kept"
    );

    m.delete_upload(&u.upload_id).await.unwrap();
    m.delete_upload(&second.upload_id).await.unwrap();
    m.delete_repository(&u.registry_id, &u.repository)
        .await
        .unwrap();
}

pub async fn finish_upload_with_stale_version_conflicts_and_records_nothing<M: MetadataStore>(
    m: &M,
) {
    let u = upload();
    repository_of(m, &u).await;
    m.create_upload(&u).await.unwrap();
    let current = bump(m, &u, 1).await;
    let digest = random_digest();
    // Retiring version 0 → 1, but the store is at version 1 already.
    let stale = retired(&u);
    let res = m.finish_upload(&stale, &layer_for(&u, &digest, 1)).await;
    assert!(is_conflict(&res), "{res:?}");
    assert_eq!(
        m.get_layer(&u.registry_id, &u.repository, &digest)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        m.get_upload(&u.upload_id).await.unwrap(),
        Some(current.clone())
    );

    // A finish of a missing upload conflicts too.
    let ghost = upload();
    repository_of(m, &ghost).await;
    let res = m
        .finish_upload(&retired(&ghost), &layer_for(&ghost, &digest, 1))
        .await;
    assert!(is_conflict(&res), "{res:?}");
    assert_eq!(
        m.get_layer(&ghost.registry_id, &ghost.repository, &digest)
            .await
            .unwrap(),
        None
    );
    m.delete_upload(&u.upload_id).await.unwrap();
    for x in [&u, &ghost] {
        m.delete_repository(&x.registry_id, &x.repository)
            .await
            .unwrap();
    }
}

pub async fn layers_are_scoped_by_registry_and_repository<M: MetadataStore>(m: &M) {
    let u = upload();
    repository_of(m, &u).await;
    m.create_upload(&u).await.unwrap();
    let digest = random_digest();
    let layer = layer_for(&u, &digest, 7);
    m.finish_upload(&retired(&u), &layer).await.unwrap();
    assert_eq!(
        m.get_layer(&u.registry_id, &u.repository, &digest)
            .await
            .unwrap(),
        Some(layer)
    );
    assert_eq!(
        m.get_layer(&u.registry_id, "other", &digest).await.unwrap(),
        None
    );
    assert_eq!(
        m.get_layer(&unique("reg"), &u.repository, &digest)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        m.get_layer(&u.registry_id, &u.repository, &random_digest())
            .await
            .unwrap(),
        None
    );
    m.delete_repository(&u.registry_id, &u.repository)
        .await
        .unwrap();
    m.delete_upload(&u.upload_id).await.unwrap();
}

pub async fn delete_upload_removes_upload_segments_and_parts<M: MetadataStore>(m: &M) {
    let u = upload();
    let keep = upload();
    for x in [&u, &keep] {
        m.create_upload(x).await.unwrap();
        let v1 = advanced(x, 10);
        m.update_upload(&v1, SideWrite::Segment(segment(&x.upload_id, 0, 10)))
            .await
            .unwrap();
        m.update_upload(&advanced(&v1, 10), SideWrite::Part(part(1, 0, 10)))
            .await
            .unwrap();
    }
    m.delete_upload(&u.upload_id).await.unwrap();
    assert_eq!(m.get_upload(&u.upload_id).await.unwrap(), None);
    assert!(m.list_segments(&u.upload_id, 0).await.unwrap().is_empty());
    assert!(m.list_parts(&u.upload_id).await.unwrap().is_empty());
    // Deleting again, or an upload that never existed, is fine.
    m.delete_upload(&u.upload_id).await.unwrap();
    m.delete_upload(&upload().upload_id).await.unwrap();

    assert!(m.get_upload(&keep.upload_id).await.unwrap().is_some());
    assert_eq!(m.list_segments(&keep.upload_id, 0).await.unwrap().len(), 1);
    assert_eq!(m.list_parts(&keep.upload_id).await.unwrap().len(), 1);
    m.delete_upload(&keep.upload_id).await.unwrap();
}

pub async fn expired_uploads_returns_only_expired_within_limit<M: MetadataStore>(m: &M) {
    // All times are a week ahead of the clock: a real TTL sweeper must not delete these uploads
    // while the test runs, and uploads left by other runs may be listed too, so the assertions
    // are about this run's uploads only.
    let base = now_secs() + 7 * 86_400;
    let query = base + 100;
    let at = |expires_at| UploadRecord {
        expires_at,
        ..upload()
    };
    let expired = [at(base + 10), at(base + 20)];
    let at_boundary = at(query);
    let live = at(base + 5_000);
    for u in expired.iter().chain([&at_boundary, &live]) {
        m.create_upload(u).await.unwrap();
    }
    // An upload whose expiry moved into the past by an update counts as expired too.
    let extended = at(base + 9_000);
    m.create_upload(&extended).await.unwrap();
    let moved = UploadRecord {
        expires_at: base + 30,
        ..advanced(&extended, 1)
    };
    m.update_upload(&moved, SideWrite::None).await.unwrap();

    let found = m.expired_uploads(query, 100_000).await.unwrap();
    for u in &found {
        assert!(
            u.expires_at < query,
            "{} expires at {}",
            u.upload_id,
            u.expires_at
        );
    }
    let ids: Vec<&str> = found.iter().map(|u| u.upload_id.as_str()).collect();
    for u in &expired {
        let listed = found.iter().find(|f| f.upload_id == u.upload_id);
        assert_eq!(listed, Some(u), "expired upload listed as stored");
    }
    assert!(ids.contains(&moved.upload_id.as_str()));
    assert!(
        !ids.contains(&at_boundary.upload_id.as_str()),
        "expires_at == now is not expired"
    );
    assert!(!ids.contains(&live.upload_id.as_str()));

    assert_eq!(m.expired_uploads(query, 1).await.unwrap().len(), 1);
    assert!(m.expired_uploads(query, 0).await.unwrap().is_empty());

    for u in expired.iter().chain([&at_boundary, &live, &extended]) {
        m.delete_upload(&u.upload_id).await.unwrap();
    }
    let found = m.expired_uploads(query, 100_000).await.unwrap();
    assert!(
        !found
            .iter()
            .any(|f| f.upload_id == expired[0].upload_id || f.upload_id == moved.upload_id),
        "deleted uploads are no longer listed"
    );
}

pub async fn repository_uploads_lists_one_repositorys_uploads<M: MetadataStore>(m: &M) {
    let a1 = UploadRecord {
        repository_incarnation: "first".into(),
        ..upload()
    };
    let registry = a1.registry_id.clone();
    let a2 = UploadRecord {
        registry_id: registry.clone(),
        repository_incarnation: "second".into(),
        ..upload()
    };
    let sibling = UploadRecord {
        registry_id: registry.clone(),
        repository: "contract/repo-sibling".into(),
        ..upload()
    };
    let elsewhere = upload();
    for u in [&a1, &a2, &sibling, &elsewhere] {
        m.create_upload(u).await.unwrap();
    }
    let a2 = bump(m, &a2, 1).await;
    let listed = |name: &'static str| {
        let registry = registry.clone();
        async move {
            let mut found = m.repository_uploads(&registry, name).await.unwrap();
            found.sort_by(|x, y| x.upload_id.cmp(&y.upload_id));
            found
        }
    };
    // Listed as stored, whatever their incarnation, with no repository record at all.
    let mut expected = vec![a1.clone(), a2.clone()];
    expected.sort_by(|x, y| x.upload_id.cmp(&y.upload_id));
    assert_eq!(listed("contract/repo").await, expected);
    assert_eq!(listed("contract/repo-sibling").await, vec![sibling.clone()]);
    assert!(listed("contract/rep").await.is_empty(), "names match whole");

    m.delete_upload(&a1.upload_id).await.unwrap();
    assert_eq!(listed("contract/repo").await, vec![a2.clone()]);
    for u in [&a2, &sibling, &elsewhere] {
        m.delete_upload(&u.upload_id).await.unwrap();
    }
    assert!(listed("contract/repo").await.is_empty());
}

pub async fn finish_upload_records_nothing_in_a_deleted_or_recreated_repository<
    M: MetadataStore,
>(
    m: &M,
) {
    let old = RepositoryRecord {
        incarnation: unique("inc"),
        ..repository(&unique("reg"), "contract/repo")
    };
    let (registry, name) = (old.registry_id.clone(), old.name.clone());
    m.create_repository(&old).await.unwrap();
    assert_eq!(
        m.get_repository(&registry, &name).await.unwrap(),
        Some(old.clone()),
        "the incarnation is kept"
    );
    let u = UploadRecord {
        registry_id: registry.clone(),
        repository_incarnation: old.incarnation.clone(),
        ..upload()
    };
    m.create_upload(&u).await.unwrap();
    let u = bump(m, &u, 1).await;
    let digest = random_digest();
    let layer = layer_for(&u, &digest, 5);

    // Deleted: nothing is recorded, and the upload is left as it was.
    assert!(m.delete_repository(&registry, &name).await.unwrap());
    assert_eq!(
        m.finish_upload(&retired(&u), &layer).await.unwrap(),
        Finish::RepositoryGone
    );
    assert_eq!(m.get_layer(&registry, &name, &digest).await.unwrap(), None);
    assert_eq!(m.get_upload(&u.upload_id).await.unwrap(), Some(u.clone()));

    // Created again under the same name: still nothing for the old incarnation's upload.
    let new = RepositoryRecord {
        incarnation: unique("inc"),
        ..old.clone()
    };
    m.create_repository(&new).await.unwrap();
    assert_eq!(
        m.finish_upload(&retired(&u), &layer).await.unwrap(),
        Finish::RepositoryGone
    );
    assert_eq!(m.get_layer(&registry, &name, &digest).await.unwrap(), None);
    // Also when its version is stale: the repository decides first.
    assert_eq!(
        m.finish_upload(&retired(&retired(&u)), &layer)
            .await
            .unwrap(),
        Finish::RepositoryGone
    );
    // An upload of the original incarnation (written before incarnations) is not the new one's.
    let legacy = UploadRecord {
        registry_id: registry.clone(),
        ..upload()
    };
    m.create_upload(&legacy).await.unwrap();
    assert_eq!(
        m.finish_upload(&retired(&legacy), &layer_for(&legacy, &digest, 5))
            .await
            .unwrap(),
        Finish::RepositoryGone
    );

    // The new incarnation's own upload records its layer.
    let v = UploadRecord {
        registry_id: registry.clone(),
        repository_incarnation: new.incarnation.clone(),
        ..upload()
    };
    m.create_upload(&v).await.unwrap();
    let v_layer = layer_for(&v, &digest, 5);
    assert_eq!(
        m.finish_upload(&retired(&v), &v_layer).await.unwrap(),
        Finish::Recorded
    );
    assert_eq!(
        m.get_layer(&registry, &name, &digest).await.unwrap(),
        Some(v_layer)
    );

    m.delete_repository(&registry, &name).await.unwrap();
    for x in [&u, &legacy, &v] {
        m.delete_upload(&x.upload_id).await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Image behaviours.

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// An image manifest in `registry`/`repository` with a fresh digest, pushed at `pushed_at_ms`.
fn image(registry_id: &str, repository: &str, pushed_at_ms: u64) -> ImageRecord {
    let (config, layer) = (random_digest(), random_digest());
    ImageRecord {
        registry_id: registry_id.to_owned(),
        repository: repository.to_owned(),
        digest: random_digest(),
        manifest: Some(format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{config}"}},"layers":[{{"digest":"{layer}"}}]}}"#
        )),
        manifest_key: None,
        media_type: ecr_layer_upload::domain::model::ManifestMediaType::OciManifest,
        artifact_media_type: Some("application/vnd.oci.image.config.v1+json".into()),
        size: 1234,
        pushed_at_ms,
        blobs: vec![config, layer],
        manifests: Vec::new(),
        subject: None,
    }
}

fn digests(images: &[ImageRecord]) -> Vec<String> {
    images.iter().map(|i| i.digest.clone()).collect()
}

fn tag_names(tags: &[TagRecord]) -> Vec<String> {
    tags.iter().map(|t| t.tag.clone()).collect()
}

async fn put<M: MetadataStore>(
    m: &M,
    image: &ImageRecord,
    tag: Option<&str>,
    immutable: bool,
) -> PutImageOutcome {
    m.put_image(image, tag, immutable)
        .await
        .expect("put_image answers an outcome")
}

async fn tag_digest<M: MetadataStore>(m: &M, i: &ImageRecord, tag: &str) -> Option<String> {
    m.get_tag(&i.registry_id, &i.repository, tag)
        .await
        .unwrap()
        .map(|t| t.digest)
}

async fn stored_image<M: MetadataStore>(m: &M, i: &ImageRecord) -> Option<ImageRecord> {
    m.get_image(&i.registry_id, &i.repository, &i.digest)
        .await
        .unwrap()
}

pub async fn set_layer_media_type_updates_a_recorded_layer_only<M: MetadataStore>(m: &M) {
    let u = upload();
    repository_of(m, &u).await;
    m.create_upload(&u).await.unwrap();
    let digest = random_digest();
    let layer = LayerRecord {
        media_type: None,
        ..layer_for(&u, &digest, 10)
    };
    m.finish_upload(&retired(&u), &layer).await.unwrap();
    let media_type = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    m.set_layer_media_type(&u.registry_id, &u.repository, &digest, media_type)
        .await
        .unwrap();
    let expected = LayerRecord {
        media_type: Some(media_type.into()),
        ..layer.clone()
    };
    assert_eq!(
        m.get_layer(&u.registry_id, &u.repository, &digest)
            .await
            .unwrap(),
        Some(expected.clone()),
        "only the media type changed"
    );
    // Setting it again, even to another type, replaces it.
    let other = "application/vnd.oci.image.layer.v1.tar+zstd";
    m.set_layer_media_type(&u.registry_id, &u.repository, &digest, other)
        .await
        .unwrap();
    assert_eq!(
        m.get_layer(&u.registry_id, &u.repository, &digest)
            .await
            .unwrap()
            .and_then(|l| l.media_type),
        Some(other.to_owned())
    );
    // An absent layer is fine, and is not created.
    let absent = random_digest();
    m.set_layer_media_type(&u.registry_id, &u.repository, &absent, media_type)
        .await
        .unwrap();
    assert_eq!(
        m.get_layer(&u.registry_id, &u.repository, &absent)
            .await
            .unwrap(),
        None
    );
    m.set_layer_media_type(&u.registry_id, "other", &digest, media_type)
        .await
        .unwrap();
    assert_eq!(
        m.get_layer(&u.registry_id, "other", &digest).await.unwrap(),
        None
    );
    m.delete_repository(&u.registry_id, &u.repository)
        .await
        .unwrap();
    m.delete_upload(&u.upload_id).await.unwrap();
}

pub async fn put_image_stores_a_new_image_then_reports_it_exists<M: MetadataStore>(m: &M) {
    let registry = unique("reg");
    let tagged = image(&registry, "app", 1_000);
    assert_eq!(
        put(m, &tagged, Some("v1"), false).await,
        PutImageOutcome::Stored
    );
    assert_eq!(stored_image(m, &tagged).await, Some(tagged.clone()));
    assert_eq!(
        m.get_tag(&registry, "app", "v1").await.unwrap(),
        Some(TagRecord {
            registry_id: registry.clone(),
            repository: "app".into(),
            tag: "v1".into(),
            digest: tagged.digest.clone(),
            updated_at_ms: 1_000,
        })
    );
    // The same image and tag again, mutable or not: nothing to do.
    for immutable in [false, true] {
        assert_eq!(
            put(m, &tagged, Some("v1"), immutable).await,
            PutImageOutcome::AlreadyExists
        );
    }
    // The image without a tag: it exists.
    assert_eq!(
        put(m, &tagged, None, false).await,
        PutImageOutcome::AlreadyExists
    );
    // A second tag for the existing image is a change.
    assert_eq!(
        put(m, &tagged, Some("stable"), true).await,
        PutImageOutcome::Stored
    );
    assert_eq!(
        tag_digest(m, &tagged, "stable").await,
        Some(tagged.digest.clone())
    );
    assert_eq!(
        tag_digest(m, &tagged, "v1").await,
        Some(tagged.digest.clone())
    );

    // A new image without a tag is stored, and tags nothing.
    let untagged = image(&registry, "app", 2_000);
    assert_eq!(
        put(m, &untagged, None, false).await,
        PutImageOutcome::Stored
    );
    assert_eq!(stored_image(m, &untagged).await, Some(untagged.clone()));
    assert_eq!(
        tag_names(&m.list_tags(&registry, "app").await.unwrap()),
        ["stable", "v1"]
    );
    assert_eq!(
        put(m, &untagged, None, true).await,
        PutImageOutcome::AlreadyExists
    );
    m.delete_repository(&registry, "app").await.unwrap();
}

pub async fn put_image_moves_a_mutable_tag_and_keeps_the_old_image<M: MetadataStore>(m: &M) {
    let registry = unique("reg");
    let old = image(&registry, "app", 1_000);
    let new = image(&registry, "app", 2_000);
    assert_eq!(
        put(m, &old, Some("latest"), false).await,
        PutImageOutcome::Stored
    );
    assert_eq!(
        put(m, &new, Some("latest"), false).await,
        PutImageOutcome::Stored
    );
    let tag = m
        .get_tag(&registry, "app", "latest")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tag.digest, new.digest, "the tag moved");
    assert_eq!(tag.updated_at_ms, 2_000, "the tag's time is the move's");
    assert_eq!(
        stored_image(m, &old).await,
        Some(old.clone()),
        "the old image keeps existing, untagged"
    );
    assert_eq!(stored_image(m, &new).await, Some(new.clone()));
    assert_eq!(m.list_tags(&registry, "app").await.unwrap().len(), 1);

    // And back to the old image, which exists already: the tag moves, nothing else changes.
    assert_eq!(
        put(m, &old, Some("latest"), false).await,
        PutImageOutcome::Stored
    );
    assert_eq!(
        tag_digest(m, &old, "latest").await,
        Some(old.digest.clone())
    );
    assert_eq!(m.list_images(&registry, "app").await.unwrap().len(), 2);
    m.delete_repository(&registry, "app").await.unwrap();
}

pub async fn put_image_with_an_immutable_tag_on_another_image_writes_nothing<M: MetadataStore>(
    m: &M,
) {
    let registry = unique("reg");
    let first = image(&registry, "app", 1_000);
    assert_eq!(
        put(m, &first, Some("v1"), true).await,
        PutImageOutcome::Stored
    );
    let second = image(&registry, "app", 2_000);
    assert_eq!(
        put(m, &second, Some("v1"), true).await,
        PutImageOutcome::TagImmutable {
            digest: first.digest.clone()
        }
    );
    assert_eq!(
        stored_image(m, &second).await,
        None,
        "the refused image was not recorded"
    );
    let tag = m.get_tag(&registry, "app", "v1").await.unwrap().unwrap();
    assert_eq!(
        (tag.digest.as_str(), tag.updated_at_ms),
        (first.digest.as_str(), 1_000)
    );
    // An image that exists already cannot take the tag either, and stays as it was.
    assert_eq!(put(m, &second, None, true).await, PutImageOutcome::Stored);
    assert_eq!(
        put(m, &second, Some("v1"), true).await,
        PutImageOutcome::TagImmutable {
            digest: first.digest.clone()
        }
    );
    assert_eq!(
        tag_digest(m, &first, "v1").await,
        Some(first.digest.clone())
    );
    assert_eq!(stored_image(m, &second).await, Some(second.clone()));
    // Immutability is about moving tags: a new tag is fine.
    assert_eq!(
        put(m, &second, Some("v2"), true).await,
        PutImageOutcome::Stored
    );
    assert_eq!(
        tag_names(&m.list_tags(&registry, "app").await.unwrap()),
        ["v1", "v2"]
    );
    m.delete_repository(&registry, "app").await.unwrap();
}

pub async fn put_image_keeps_an_existing_image_record<M: MetadataStore>(m: &M) {
    let registry = unique("reg");
    let first = image(&registry, "app", 1_000);
    assert_eq!(put(m, &first, None, false).await, PutImageOutcome::Stored);
    // The same digest again with other details (a later push time, another media type).
    let again = ImageRecord {
        pushed_at_ms: 9_000,
        media_type: ecr_layer_upload::domain::model::ManifestMediaType::DockerManifest,
        size: 1,
        ..first.clone()
    };
    assert_eq!(
        put(m, &again, Some("later"), false).await,
        PutImageOutcome::Stored
    );
    assert_eq!(
        stored_image(m, &first).await,
        Some(first.clone()),
        "the first record is kept as it was"
    );
    assert_eq!(
        tag_digest(m, &first, "later").await,
        Some(first.digest.clone())
    );
    assert_eq!(
        put(m, &again, None, false).await,
        PutImageOutcome::AlreadyExists
    );
    assert_eq!(stored_image(m, &first).await, Some(first.clone()));
    m.delete_repository(&registry, "app").await.unwrap();
}

pub async fn images_round_trip_every_field<M: MetadataStore>(m: &M) {
    let registry = unique("reg");
    let child = image(&registry, "app", 1_000);
    // An index kept as a blob, with a subject and no config: every optional field differs from
    // `image`'s.
    let index = ImageRecord {
        manifest: None,
        manifest_key: Some(format!("manifests/{}", uuid::Uuid::new_v4())),
        media_type: ecr_layer_upload::domain::model::ManifestMediaType::OciIndex,
        artifact_media_type: None,
        size: 5_368_709_120,
        blobs: Vec::new(),
        manifests: vec![child.digest.clone(), random_digest()],
        subject: Some(random_digest()),
        ..image(&registry, "app", 1_700_000_000_123)
    };
    // Text that JSON and attribute encodings have to carry through unchanged.
    let awkward = ImageRecord {
        manifest: Some(
            "{\n  \"schemaVersion\": 2, \"annotations\": {\"k\": \"é \\u00e9 \\\\ \\\"\"}\n}\n"
                .into(),
        ),
        ..image(&registry, "app", 2_000)
    };
    for i in [&child, &index, &awkward] {
        assert_eq!(put(m, i, None, false).await, PutImageOutcome::Stored);
        assert_eq!(stored_image(m, i).await.as_ref(), Some(i));
    }
    let mut expected = vec![child.clone(), index.clone(), awkward.clone()];
    expected.sort_by(|a, b| a.digest.cmp(&b.digest));
    assert_eq!(m.list_images(&registry, "app").await.unwrap(), expected);
    m.delete_repository(&registry, "app").await.unwrap();
}

pub async fn images_and_tags_are_sorted_and_scoped_by_registry_and_repository<M: MetadataStore>(
    m: &M,
) {
    let registry = unique("reg");
    let other_registry = unique("reg");
    // Repository names where one is a prefix of the other, in both registries.
    let scopes = [
        (registry.as_str(), "app"),
        (registry.as_str(), "app/sub"),
        (registry.as_str(), "ap"),
        (other_registry.as_str(), "app"),
    ];
    let mut made: Vec<Vec<ImageRecord>> = Vec::new();
    for (reg, repo) in scopes {
        let images: Vec<ImageRecord> = (0..4).map(|n| image(reg, repo, 1_000 + n)).collect();
        // Tags that sort differently as bytes than as numbers or by case.
        for (i, tag) in images.iter().zip(["v10", "v9", "V1", "latest"]) {
            assert_eq!(put(m, i, Some(tag), false).await, PutImageOutcome::Stored);
        }
        made.push(images);
    }
    for ((reg, repo), images) in scopes.iter().zip(&made) {
        let mut want = digests(images);
        want.sort();
        let listed = m.list_images(reg, repo).await.unwrap();
        assert_eq!(digests(&listed), want, "images of {reg}/{repo}");
        assert!(
            listed
                .iter()
                .all(|i| i.registry_id == *reg && i.repository == *repo)
        );
        let tags = m.list_tags(reg, repo).await.unwrap();
        assert_eq!(
            tag_names(&tags),
            ["V1", "latest", "v10", "v9"],
            "{reg}/{repo}"
        );
        for t in &tags {
            assert_eq!(
                (t.registry_id.as_str(), t.repository.as_str()),
                (*reg, *repo)
            );
            assert!(images.iter().any(|i| i.digest == t.digest));
        }
    }
    // An image or tag of one scope is not found in another.
    let first = &made[0][0];
    for (reg, repo) in [
        (registry.as_str(), "app/sub"),
        (registry.as_str(), "ap"),
        (other_registry.as_str(), "app"),
        (registry.as_str(), "nothing"),
    ] {
        assert_eq!(m.get_image(reg, repo, &first.digest).await.unwrap(), None);
        assert_ne!(
            m.get_tag(reg, repo, "v10").await.unwrap().map(|t| t.digest),
            Some(first.digest.clone())
        );
    }
    assert!(
        m.list_images(&registry, "nothing")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(m.list_tags(&registry, "nothing").await.unwrap().is_empty());
    assert_eq!(m.get_tag(&registry, "app", "absent").await.unwrap(), None);
    for (reg, repo) in scopes {
        m.delete_repository(reg, repo).await.unwrap();
    }
}

pub async fn delete_tag_only_when_it_names_the_digest<M: MetadataStore>(m: &M) {
    let registry = unique("reg");
    let a = image(&registry, "app", 1_000);
    let b = image(&registry, "app", 2_000);
    put(m, &a, Some("x"), false).await;
    put(m, &b, Some("y"), false).await;
    assert!(
        !m.delete_tag(&registry, "app", "x", &b.digest)
            .await
            .unwrap(),
        "x names another image"
    );
    assert_eq!(tag_digest(m, &a, "x").await, Some(a.digest.clone()));
    assert!(
        !m.delete_tag(&registry, "app", "absent", &a.digest)
            .await
            .unwrap()
    );
    assert!(
        !m.delete_tag(&registry, "other", "x", &a.digest)
            .await
            .unwrap()
    );
    assert!(
        m.delete_tag(&registry, "app", "x", &a.digest)
            .await
            .unwrap()
    );
    assert_eq!(tag_digest(m, &a, "x").await, None);
    assert!(
        !m.delete_tag(&registry, "app", "x", &a.digest)
            .await
            .unwrap()
    );
    assert_eq!(
        stored_image(m, &a).await,
        Some(a.clone()),
        "deleting a tag keeps the image"
    );
    assert_eq!(tag_digest(m, &b, "y").await, Some(b.digest.clone()));
    m.delete_repository(&registry, "app").await.unwrap();
}

pub async fn delete_image_removes_its_tags_and_only_its_tags<M: MetadataStore>(m: &M) {
    let registry = unique("reg");
    let doomed = image(&registry, "app", 1_000);
    let kept = image(&registry, "app", 2_000);
    for tag in ["a", "b", "c"] {
        put(m, &doomed, Some(tag), false).await;
    }
    put(m, &kept, Some("keep"), false).await;
    // The same digest and a tag of the same name in a sibling repository.
    let sibling = ImageRecord {
        repository: "app/sibling".into(),
        ..doomed.clone()
    };
    put(m, &sibling, Some("a"), false).await;

    assert!(
        m.delete_image(&registry, "app", &doomed.digest)
            .await
            .unwrap()
    );
    assert_eq!(stored_image(m, &doomed).await, None);
    assert_eq!(
        tag_names(&m.list_tags(&registry, "app").await.unwrap()),
        ["keep"]
    );
    assert_eq!(stored_image(m, &kept).await, Some(kept.clone()));
    assert_eq!(stored_image(m, &sibling).await, Some(sibling.clone()));
    assert_eq!(
        tag_digest(m, &sibling, "a").await,
        Some(doomed.digest.clone())
    );
    assert!(
        !m.delete_image(&registry, "app", &doomed.digest)
            .await
            .unwrap(),
        "deleting an absent image answers false"
    );
    for repo in ["app", "app/sibling"] {
        m.delete_repository(&registry, repo).await.unwrap();
    }
}

pub async fn delete_repository_removes_its_images_and_tags<M: MetadataStore>(m: &M) {
    let registry = unique("reg");
    m.create_repository(&repository(&registry, "app"))
        .await
        .unwrap();
    let images: Vec<ImageRecord> = (0..3).map(|n| image(&registry, "app", n)).collect();
    for (i, tag) in images.iter().zip(["one", "two", "three"]) {
        put(m, i, Some(tag), false).await;
    }
    let sibling = ImageRecord {
        repository: "app-sibling".into(),
        ..images[0].clone()
    };
    put(m, &sibling, Some("one"), false).await;

    assert!(m.delete_repository(&registry, "app").await.unwrap());
    assert!(m.list_images(&registry, "app").await.unwrap().is_empty());
    assert!(m.list_tags(&registry, "app").await.unwrap().is_empty());
    for i in &images {
        assert_eq!(stored_image(m, i).await, None);
    }
    assert_eq!(m.get_tag(&registry, "app", "one").await.unwrap(), None);
    assert_eq!(stored_image(m, &sibling).await, Some(sibling.clone()));
    assert_eq!(
        tag_digest(m, &sibling, "one").await,
        Some(sibling.digest.clone())
    );
    // A repository recreated under the name starts empty: the old tag can be taken again.
    let fresh = image(&registry, "app", 10);
    assert_eq!(
        put(m, &fresh, Some("one"), true).await,
        PutImageOutcome::Stored
    );
    m.delete_repository(&registry, "app").await.unwrap();
    m.delete_repository(&registry, "app-sibling").await.unwrap();
}

pub async fn concurrent_put_image_under_one_immutable_tag_has_exactly_one_winner<
    M: MetadataStore,
>(
    m: &M,
) {
    const WRITERS: u64 = 12;
    let registry = unique("reg");
    let candidates: Vec<ImageRecord> = (0..WRITERS)
        .map(|n| image(&registry, "app", 1_000 + n))
        .collect();
    let results = futures_util::future::join_all(
        candidates
            .iter()
            .map(|c| m.put_image(c, Some("release"), true)),
    )
    .await;
    let winners: Vec<&ImageRecord> = candidates
        .iter()
        .zip(&results)
        .filter(|(_, r)| matches!(r, Ok(PutImageOutcome::Stored)))
        .map(|(c, _)| c)
        .collect();
    assert_eq!(winners.len(), 1, "results: {results:?}");
    let winner = winners[0];
    for r in &results {
        match r {
            Ok(PutImageOutcome::Stored) => {}
            Ok(PutImageOutcome::TagImmutable { digest }) => assert_eq!(digest, &winner.digest),
            other => panic!("a loser answers TagImmutable naming the winner: {other:?}"),
        }
    }
    assert_eq!(
        tag_digest(m, winner, "release").await,
        Some(winner.digest.clone())
    );
    assert_eq!(
        m.list_images(&registry, "app").await.unwrap(),
        vec![winner.clone()],
        "the losers recorded nothing"
    );
    m.delete_repository(&registry, "app").await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Blob behaviours.

/// Deterministic bytes that differ per `seed` and per position (so a swapped or shifted chunk
/// shows), without a random-number dependency.
pub fn pattern(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

async fn read_all<B: BlobStore>(b: &B, key: &str, range: Option<(u64, u64)>) -> Vec<u8> {
    let mut stream = b.read_object(key, range).await.expect("read_object");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("read_object chunk"));
    }
    out
}

pub fn blob_key(kind: &str) -> String {
    format!("contract/{kind}/{}", uuid::Uuid::new_v4())
}

pub fn flushed(number: u32, etag: String, offset: u64, len: usize) -> FlushedPart {
    FlushedPart {
        number,
        etag,
        offset,
        len: len as u64,
    }
}

pub async fn put_get_replace_delete_object<B: BlobStore>(b: &B) {
    let key = blob_key("staging");
    let first = pattern(1, 1000);
    b.put_object(&key, first.clone()).await.unwrap();
    assert_eq!(b.get_object(&key).await.unwrap(), first);
    assert_eq!(b.object_size(&key).await.unwrap(), Some(1000));

    let second = pattern(2, 10);
    b.put_object(&key, second.clone()).await.unwrap();
    assert_eq!(b.get_object(&key).await.unwrap(), second, "put replaces");
    assert_eq!(b.object_size(&key).await.unwrap(), Some(10));

    let empty_key = blob_key("empty");
    b.put_object(&empty_key, Bytes::new()).await.unwrap();
    assert_eq!(b.get_object(&empty_key).await.unwrap(), Bytes::new());
    assert_eq!(b.object_size(&empty_key).await.unwrap(), Some(0));
    assert!(read_all(b, &empty_key, None).await.is_empty());

    b.delete_objects(&[key.clone(), empty_key.clone()])
        .await
        .unwrap();
    assert!(matches!(
        b.get_object(&key).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(b.object_size(&key).await.unwrap(), None);
    assert_eq!(b.object_size(&empty_key).await.unwrap(), None);
}

pub async fn missing_object_is_not_found<B: BlobStore>(b: &B) {
    let key = blob_key("missing");
    assert!(matches!(
        b.get_object(&key).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        b.read_object(&key, None).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        b.read_object(&key, Some((0, 0))).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(b.object_size(&key).await.unwrap(), None);
}

pub async fn delete_objects_ignores_absent_keys<B: BlobStore>(b: &B) {
    let present = blob_key("present");
    let sibling = blob_key("present");
    b.put_object(&present, pattern(3, 5)).await.unwrap();
    b.put_object(&sibling, pattern(4, 5)).await.unwrap();
    b.delete_objects(&[blob_key("absent"), present.clone(), blob_key("absent")])
        .await
        .unwrap();
    assert_eq!(b.object_size(&present).await.unwrap(), None);
    assert_eq!(
        b.object_size(&sibling).await.unwrap(),
        Some(5),
        "only the named keys go"
    );
    b.delete_objects(&[]).await.unwrap();
    b.delete_objects(&[sibling]).await.unwrap();
}

pub async fn read_object_streams_whole_object_and_ranges<B: BlobStore>(b: &B) {
    // Over 1 MiB, so a streaming reader yields several chunks.
    let len = 1024 * 1024 + 7;
    let data = pattern(5, len);
    let key = blob_key("layer");
    b.put_object(&key, data.clone()).await.unwrap();
    assert_eq!(b.object_size(&key).await.unwrap(), Some(len as u64));
    assert_eq!(read_all(b, &key, None).await, data);

    let last = len as u64 - 1;
    for (first, end) in [
        (0, 0),
        (0, 9),
        (1, 1),
        (300_000, 700_000),
        (last, last),
        (last - 100, last),
        (0, last),
    ] {
        let got = read_all(b, &key, Some((first, end))).await;
        assert_eq!(
            got,
            data[first as usize..=end as usize],
            "range {first}-{end} of {len}"
        );
    }
    b.delete_objects(&[key]).await.unwrap();
}

pub async fn multipart_assembles_parts_in_order<B: BlobStore>(b: &B) {
    let key = blob_key("uploads");
    let id = b.create_multipart(&key).await.unwrap();
    let (p1, p2, p3) = (
        pattern(11, MIN_PART),
        pattern(12, MIN_PART),
        pattern(13, 1234),
    );

    // Uploaded out of order; part 2 is first written with other bytes and then replaced.
    let e3 = b.upload_part(&key, &id, 3, p3.clone()).await.unwrap();
    let e2_old = b
        .upload_part(&key, &id, 2, pattern(99, MIN_PART))
        .await
        .unwrap();
    let e1 = b.upload_part(&key, &id, 1, p1.clone()).await.unwrap();
    let e2 = b.upload_part(&key, &id, 2, p2.clone()).await.unwrap();
    assert_ne!(e2, e2_old, "different bytes, different ETag");
    assert_eq!(
        b.object_size(&key).await.unwrap(),
        None,
        "nothing visible before completion"
    );

    let parts = [
        flushed(1, e1, 0, MIN_PART),
        flushed(2, e2, MIN_PART as u64, MIN_PART),
        flushed(3, e3, 2 * MIN_PART as u64, p3.len()),
    ];
    b.complete_multipart(&key, &id, &parts).await.unwrap();

    let total = 2 * MIN_PART + p3.len();
    assert_eq!(b.object_size(&key).await.unwrap(), Some(total as u64));
    let got = read_all(b, &key, None).await;
    let mut want = Vec::with_capacity(total);
    for p in [&p1, &p2, &p3] {
        want.extend_from_slice(p);
    }
    assert!(
        got == want,
        "completed object is the concatenation of parts 1, 2, 3"
    );
    // A range across the boundary of parts 1 and 2.
    let (first, last) = (MIN_PART as u64 - 3, MIN_PART as u64 + 2);
    assert_eq!(
        read_all(b, &key, Some((first, last))).await,
        want[first as usize..=last as usize]
    );
    b.delete_objects(&[key]).await.unwrap();
}

pub async fn complete_multipart_with_stale_etag_conflicts<B: BlobStore>(b: &B) {
    let key = blob_key("uploads");
    let id = b.create_multipart(&key).await.unwrap();
    let stale = b
        .upload_part(&key, &id, 1, pattern(21, MIN_PART))
        .await
        .unwrap();
    let p1 = pattern(22, MIN_PART);
    // A second writer replaced part 1 after its ETag was recorded.
    let fresh = b.upload_part(&key, &id, 1, p1.clone()).await.unwrap();
    let p2 = pattern(23, 10);
    let e2 = b.upload_part(&key, &id, 2, p2.clone()).await.unwrap();

    let with_stale = [
        flushed(1, stale, 0, MIN_PART),
        flushed(2, e2.clone(), MIN_PART as u64, 10),
    ];
    let res = b.complete_multipart(&key, &id, &with_stale).await;
    assert!(is_conflict(&res), "stale ETag: {res:?}");
    assert_eq!(
        b.object_size(&key).await.unwrap(),
        None,
        "nothing assembled"
    );

    // A part that was never uploaded conflicts as well (part 3 stands last, so S3's size rule
    // holds and only the missing part is wrong).
    let with_missing = [
        flushed(1, fresh.clone(), 0, MIN_PART),
        flushed(3, e2.clone(), MIN_PART as u64, 10),
    ];
    let res = b.complete_multipart(&key, &id, &with_missing).await;
    assert!(is_conflict(&res), "missing part: {res:?}");

    // The upload is still usable with the right ETags.
    let good = [
        flushed(1, fresh, 0, MIN_PART),
        flushed(2, e2, MIN_PART as u64, 10),
    ];
    b.complete_multipart(&key, &id, &good).await.unwrap();
    let got = read_all(b, &key, None).await;
    assert!(got.len() == MIN_PART + 10 && got[..MIN_PART] == p1[..] && got[MIN_PART..] == p2[..]);
    b.delete_objects(&[key]).await.unwrap();
}

pub async fn complete_multipart_retried_after_success_succeeds<B: BlobStore>(b: &B) {
    let key = blob_key("uploads");
    let id = b.create_multipart(&key).await.unwrap();
    let data = pattern(31, 4321);
    let etag = b.upload_part(&key, &id, 1, data.clone()).await.unwrap();
    let parts = [flushed(1, etag, 0, data.len())];
    b.complete_multipart(&key, &id, &parts).await.unwrap();
    b.complete_multipart(&key, &id, &parts)
        .await
        .expect("a retried completion of a completed upload succeeds");
    assert_eq!(b.get_object(&key).await.unwrap(), data);
    b.delete_objects(&[key]).await.unwrap();
}

pub async fn abort_multipart_drops_the_upload<B: BlobStore>(b: &B) {
    let key = blob_key("uploads");
    let id = b.create_multipart(&key).await.unwrap();
    let etag = b.upload_part(&key, &id, 1, pattern(41, 100)).await.unwrap();
    b.abort_multipart(&key, &id).await.unwrap();
    b.abort_multipart(&key, &id)
        .await
        .expect("aborting twice is fine");

    let res = b
        .complete_multipart(&key, &id, &[flushed(1, etag, 0, 100)])
        .await;
    assert!(
        res.is_err(),
        "an aborted upload cannot be completed: {res:?}"
    );
    assert_eq!(b.object_size(&key).await.unwrap(), None);
    let res = b.upload_part(&key, &id, 1, pattern(42, 100)).await;
    assert!(res.is_err(), "an aborted upload takes no parts: {res:?}");
}

pub async fn download_url_names_the_key<B: BlobStore>(b: &B) {
    let key = blob_key("download");
    b.put_object(&key, pattern(21, 100)).await.unwrap();
    let url = b.download_url(&key, 600).await.unwrap();
    assert!(url.contains(&key), "{url} names {key}");
    let other = b.download_url(&blob_key("download"), 600).await.unwrap();
    assert_ne!(url, other);
    b.delete_objects(&[key]).await.unwrap();
}

/// Stores that serve their URLs through the local server resolve them to the key.
pub async fn signed_download_url_resolves_to_the_key<B: BlobStore + SignedDownloads>(b: &B) {
    let key = blob_key("download");
    b.put_object(&key, pattern(21, 100)).await.unwrap();
    let url = b.download_url(&key, 600).await.unwrap();
    let path_and_query = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("/");
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    assert_eq!(
        b.resolve_download(path, query),
        Some(Ok(key.clone())),
        "{url}"
    );
    // The API's own paths are never download URLs.
    assert_eq!(b.resolve_download("/", None), None);
    assert_eq!(b.resolve_download("/", Some("X-Ecr-Expires=1")), None);
    b.delete_objects(&[key]).await.unwrap();
}

//! The upload state machine on the in-memory adapters: the properties of docs/architecture.md ("Properties") that do
//! not depend on a backend.

use std::sync::Arc;

use bytes::Bytes;
use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::domain::model::Page;
use ecr_layer_upload::ports::{BlobStore, MetadataStore};
use ecr_layer_upload::protocols::ecr::wire;
use ecr_layer_upload::service::types::*;
use ecr_layer_upload::service::{Service, Settings};
use futures_util::TryStreamExt;

use crate::common::digest;
use crate::common::service::small_parts;

const MIB: u64 = 1024 * 1024;
type Svc = Service<MemoryMetadata, MemoryBlobs>;

fn service(settings: Settings) -> Svc {
    // The blob store refuses non-final multipart parts under 5 MiB, as S3 does.
    Service::new(
        MemoryMetadata::new(),
        MemoryBlobs::new().with_min_part_size(5 * MIB),
        settings,
    )
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn repo(svc: &Svc, name: &str) {
    svc.create_repository(CreateRepositoryRequest::new(name.parse().unwrap()))
        .await
        .unwrap();
}

async fn initiate(svc: &Svc, name: &str) -> String {
    svc.initiate_layer_upload(InitiateLayerUploadRequest::new(name.parse().unwrap()))
        .await
        .unwrap()
        .upload_id
}

async fn part(
    svc: &Svc,
    name: &str,
    id: &str,
    first: u64,
    bytes: &[u8],
) -> Result<UploadLayerPartResponse, EcrError> {
    svc.upload_layer_part(UploadLayerPartRequest::new(
        name.parse().unwrap(),
        id.parse().unwrap(),
        first,
        Bytes::copy_from_slice(bytes),
    ))
    .await
}

async fn complete(
    svc: &Svc,
    name: &str,
    id: &str,
    digests: &[&str],
) -> Result<CompleteLayerUploadResponse, EcrError> {
    // Through the protocol's checks: some tests send digests the model refuses.
    let req = wire::CompleteLayerUploadRequest {
        registry_id: None,
        repository_name: Some(name.into()),
        upload_id: Some(id.into()),
        layer_digests: Some(digests.iter().map(|s| s.to_string()).collect()),
    };
    svc.complete_layer_upload(req.try_into()?).await
}

async fn push(svc: &Svc, name: &str, layer: &[u8], part_size: usize) -> Result<String, EcrError> {
    let id = initiate(svc, name).await;
    let mut first = 0u64;
    for chunk in layer.chunks(part_size) {
        part(svc, name, &id, first, chunk).await?;
        first += chunk.len() as u64;
    }
    Ok(complete(svc, name, &id, &[&digest(layer)])
        .await?
        .layer_digest)
}

async fn stored_bytes(svc: &Svc, name: &str, digest: &str) -> Vec<u8> {
    let layer = svc
        .metadata()
        .get_layer("123456789012", name, digest)
        .await
        .unwrap()
        .expect("layer recorded");
    let mut out = Vec::new();
    let mut s = svc
        .blobs()
        .read_object(&layer.blob_key, None)
        .await
        .unwrap();
    while let Some(chunk) = s.try_next().await.unwrap() {
        out.extend_from_slice(&chunk);
    }
    out
}

fn last_valid(err: &EcrError) -> u64 {
    match err {
        EcrError::InvalidLayerPart {
            last_valid_byte_received,
            ..
        } => *last_valid_byte_received,
        other => panic!("expected InvalidLayerPartException, got {other}"),
    }
}

#[tokio::test]
async fn upload_part_rejects_gap_with_last_valid_byte() {
    let svc = service(Settings::default());
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    let err = part(&svc, "app", &id, 10, b"abc").await.unwrap_err();
    assert_eq!(
        err.message(),
        "First byte of the layer part is 10 instead of 0"
    );
    assert_eq!(last_valid(&err), 0);
    part(&svc, "app", &id, 0, b"abcd").await.unwrap();
    let err = part(&svc, "app", &id, 5, b"x").await.unwrap_err();
    assert_eq!(
        err.message(),
        "First byte of the layer part is 5 instead of 4"
    );
    assert_eq!(last_valid(&err), 3);
    // An overlapping part is not contiguous either.
    let err = part(&svc, "app", &id, 2, b"xy").await.unwrap_err();
    assert_eq!(last_valid(&err), 3);
}

#[tokio::test]
async fn upload_part_rejects_length_mismatch() {
    let svc = service(Settings::default());
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    let err = svc
        .upload_layer_part(UploadLayerPartRequest {
            part_last_byte: 9,
            ..UploadLayerPartRequest::new(
                "app".parse().unwrap(),
                id.parse().unwrap(),
                0,
                Bytes::from_static(b"short"),
            )
        })
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidLayerPartException");
    let err = svc
        .upload_layer_part(UploadLayerPartRequest {
            part_last_byte: 4,
            ..UploadLayerPartRequest::new(
                "app".parse().unwrap(),
                id.parse().unwrap(),
                5,
                Bytes::new(),
            )
        })
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidLayerPartException");
}

#[tokio::test]
async fn identical_resend_is_accepted_once_and_different_bytes_are_not() {
    let svc = service(small_parts());
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    assert_eq!(
        part(&svc, "app", &id, 0, b"hello")
            .await
            .unwrap()
            .last_byte_received,
        4
    );
    assert_eq!(
        part(&svc, "app", &id, 0, b"hello")
            .await
            .unwrap()
            .last_byte_received,
        4
    );
    let err = part(&svc, "app", &id, 0, b"HELLO").await.unwrap_err();
    assert_eq!(last_valid(&err), 4);
    part(&svc, "app", &id, 5, b" world").await.unwrap();
    // Only the last accepted part may be re-sent.
    assert!(part(&svc, "app", &id, 0, b"hello").await.is_err());
    let d = complete(&svc, "app", &id, &[&digest(b"hello world")])
        .await
        .unwrap();
    assert_eq!(
        stored_bytes(&svc, "app", &d.layer_digest).await,
        b"hello world"
    );
}

#[tokio::test]
async fn concurrent_parts_for_one_range_have_exactly_one_winner() {
    let svc = Arc::new(service(small_parts()));
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    let mut tasks = Vec::new();
    for seed in 0..8u8 {
        let (svc, id) = (svc.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let bytes = data(1000, seed);
            (seed, part(&svc, "app", &id, 0, &bytes).await)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (seed, r) = t.await.unwrap();
        match r {
            Ok(_) => winners.push(seed),
            Err(e) => assert_eq!(last_valid(&e), 999),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let layer = data(1000, winners[0]);
    let d = complete(&svc, "app", &id, &[&digest(&layer)])
        .await
        .unwrap();
    assert_eq!(stored_bytes(&svc, "app", &d.layer_digest).await, layer);
}

#[tokio::test]
async fn small_nonfinal_parts_fail_completion_with_ecrs_message() {
    let svc = service(Settings::default());
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    part(&svc, "app", &id, 0, &data(1024, 1)).await.unwrap();
    part(&svc, "app", &id, 1024, &data(10, 2)).await.unwrap();
    let err = complete(&svc, "app", &id, &[&digest(b"x")])
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "LayerPartTooSmallException");
    assert_eq!(
        err.message(),
        "All layer parts except the last part should be at least 5MB"
    );
    // A small last part is fine.
    let id = initiate(&svc, "app").await;
    let layer = data(5 * MIB as usize + 3, 3);
    part(&svc, "app", &id, 0, &layer[..5 * MIB as usize])
        .await
        .unwrap();
    part(&svc, "app", &id, 5 * MIB, &layer[5 * MIB as usize..])
        .await
        .unwrap();
    complete(&svc, "app", &id, &[&digest(&layer)])
        .await
        .unwrap();
}

#[tokio::test]
async fn tiny_parts_coalesce_into_multipart_parts_of_at_least_5_mib() {
    let svc = service(small_parts());
    repo(&svc, "app").await;
    let layer = data(12 * MIB as usize + 12345, 7);
    let id = initiate(&svc, "app").await;
    let mut first = 0u64;
    // Odd sizes, from 1 KiB to a few hundred KiB.
    let mut sizes = [1024usize, 333_333, 65_537, 1, 200_000].iter().cycle();
    while (first as usize) < layer.len() {
        let len = (*sizes.next().unwrap()).min(layer.len() - first as usize);
        part(
            &svc,
            "app",
            &id,
            first,
            &layer[first as usize..first as usize + len],
        )
        .await
        .unwrap();
        first += len as u64;
    }
    let parts = svc.metadata().list_parts(&id).await.unwrap();
    assert_eq!(
        parts.len(),
        2,
        "12 MiB holds two full 5 MiB parts before completion"
    );
    assert!(parts.iter().all(|p| p.len >= 5 * MIB));
    let up = svc.metadata().get_upload(&id).await.unwrap().unwrap();
    assert_eq!(up.flushed_bytes, parts.iter().map(|p| p.len).sum::<u64>());
    assert!(up.next_byte - up.flushed_bytes < 5 * MIB + 333_333);
    let d = complete(&svc, "app", &id, &[&digest(&layer)])
        .await
        .unwrap();
    assert_eq!(d.layer_digest, digest(&layer));
    assert_eq!(stored_bytes(&svc, "app", &d.layer_digest).await, layer);
    // Nothing of the upload is left behind: no records, no staging objects.
    assert!(svc.metadata().get_upload(&id).await.unwrap().is_none());
    assert!(
        svc.metadata()
            .list_segments(&id, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn digest_list_rules() {
    let svc = service(small_parts());
    repo(&svc, "app").await;
    let layer = b"some layer";
    let good = digest(layer);
    let upper = format!("sha256:{}", good["sha256:".len()..].to_uppercase());
    // Upper-case hex matches; digests of other algorithms are ignored beside a sha256 one.
    for digests in [vec![upper.as_str()], vec!["sha512:abcd", good.as_str()]] {
        let svc = service(small_parts());
        repo(&svc, "app").await;
        let id = initiate(&svc, "app").await;
        part(&svc, "app", &id, 0, layer).await.unwrap();
        let d = complete(&svc, "app", &id, &digests).await.unwrap();
        assert_eq!(d.layer_digest, good);
    }
    let id = initiate(&svc, "app").await;
    part(&svc, "app", &id, 0, layer).await.unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = complete(&svc, "app", &id, &[&wrong, "sha512:ab"])
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidLayerException");
    assert!(
        svc.metadata()
            .get_layer("123456789012", "app", &good)
            .await
            .unwrap()
            .is_none()
    );
    // A list that names no sha256 digest cannot be verified: refused, the upload left as it is.
    let err = complete(&svc, "app", &id, &["sha512:abcd"])
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidParameterException");
    let err = complete(&svc, "app", &id, &["sha256"]).await.unwrap_err();
    assert_eq!(err.type_name(), "InvalidParameterException");
    // The upload failed verification but stays for a retry with the right digest.
    let d = complete(&svc, "app", &id, &[&good]).await.unwrap();
    assert_eq!(d.layer_digest, good);
}

#[tokio::test]
async fn layer_already_exists_is_per_repository_and_after_verification() {
    let svc = service(small_parts());
    repo(&svc, "one").await;
    repo(&svc, "two").await;
    let layer = b"shared layer";
    push(&svc, "one", layer, 5).await.unwrap();
    let err = push(&svc, "one", layer, 5).await.unwrap_err();
    assert_eq!(err.type_name(), "LayerAlreadyExistsException");
    assert!(err.message().contains(&digest(layer)));
    push(&svc, "two", layer, 5).await.unwrap();
    // A wrong digest is reported as such even when the bytes exist already.
    let id = initiate(&svc, "one").await;
    part(&svc, "one", &id, 0, layer).await.unwrap();
    let err = complete(&svc, "one", &id, &[&digest(b"other")])
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidLayerException");
    // The first copy is still intact.
    assert_eq!(stored_bytes(&svc, "one", &digest(layer)).await, layer);
}

#[tokio::test]
async fn uploads_are_bound_to_their_repository_and_registry() {
    let svc = service(small_parts());
    repo(&svc, "one").await;
    repo(&svc, "two").await;
    let id = initiate(&svc, "one").await;
    let err = part(&svc, "two", &id, 0, b"x").await.unwrap_err();
    assert_eq!(err.type_name(), "UploadNotFoundException");
    assert_eq!(
        err.message(),
        format!(
            "The upload with id '{id}' does not exist in the repository with name 'two' in the registry with id '123456789012'"
        )
    );
    let err = svc
        .initiate_layer_upload(InitiateLayerUploadRequest {
            registry_id: Some("210987654321".parse().unwrap()),
            ..InitiateLayerUploadRequest::new("one".parse().unwrap())
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "The repository with name 'one' does not exist in the registry with id '210987654321'"
    );
    let unknown = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    let err = complete(&svc, "one", unknown, &["sha256:00"])
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "UploadNotFoundException");
}

#[tokio::test]
async fn bad_input_gets_invalid_parameter() {
    let svc = service(small_parts());
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    // Constraints are checked where a request arrives: these go through the protocol's checks.
    let cases: Vec<(wire::UploadLayerPartRequest, &str)> = vec![
        (
            wire::UploadLayerPartRequest {
                repository_name: Some("app".into()),
                upload_id: Some(id.clone()),
                part_first_byte: Some(-1),
                part_last_byte: Some(0),
                layer_part_blob: Some(Bytes::from_static(b"x")),
                ..Default::default()
            },
            "Invalid parameter at 'partFirstByte' failed to satisfy constraint: 'must have value greater than or equal to 0'",
        ),
        (
            wire::UploadLayerPartRequest {
                repository_name: Some("app".into()),
                upload_id: Some(id.clone()),
                part_first_byte: Some(0),
                part_last_byte: Some(0),
                ..Default::default()
            },
            "Invalid parameter at 'layerPartBlob' failed to satisfy constraint: 'must not be null'",
        ),
        (
            wire::UploadLayerPartRequest {
                repository_name: Some("app".into()),
                upload_id: Some("not-a-uuid".into()),
                part_first_byte: Some(0),
                part_last_byte: Some(0),
                layer_part_blob: Some(Bytes::from_static(b"x")),
                ..Default::default()
            },
            "Invalid parameter at 'uploadId' failed to satisfy constraint: 'must satisfy regular expression pattern: [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}'",
        ),
        (
            wire::UploadLayerPartRequest {
                repository_name: Some("app".into()),
                upload_id: Some(id.clone()),
                part_first_byte: Some(0),
                part_last_byte: Some(20_971_520),
                layer_part_blob: Some(Bytes::from(vec![0u8; 20_971_521])),
                ..Default::default()
            },
            "Invalid parameter at 'layerPartBlob' failed to satisfy constraint: 'must have length less than or equal to 20971520'",
        ),
        (
            wire::UploadLayerPartRequest {
                registry_id: Some("12".into()),
                repository_name: Some("app".into()),
                ..Default::default()
            },
            "Invalid parameter at 'registryId' failed to satisfy constraint: 'must satisfy regular expression pattern: [0-9]{12}'",
        ),
    ];
    for (req, message) in cases {
        let err = match UploadLayerPartRequest::try_from(req) {
            Err(e) => e,
            Ok(req) => svc.upload_layer_part(req).await.unwrap_err(),
        };
        assert_eq!(err.type_name(), "InvalidParameterException");
        assert_eq!(err.message(), message);
    }
    let err = complete(&svc, "app", &id, &[]).await.unwrap_err();
    assert_eq!(
        err.message(),
        "Invalid parameter at 'layerDigests' failed to satisfy constraint: 'must have length greater than or equal to 1'"
    );
}

#[tokio::test]
async fn expired_uploads_are_absent_and_swept() {
    let svc = service(Settings {
        upload_ttl_secs: 0,
        ..small_parts()
    });
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let err = part(&svc, "app", &id, 0, b"x").await.unwrap_err();
    assert_eq!(err.type_name(), "UploadNotFoundException");
    assert_eq!(svc.sweep_expired(100).await.unwrap(), 1);
    assert!(svc.metadata().get_upload(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn repositories_page_and_delete() {
    let svc = service(small_parts());
    for name in ["c-repo", "a-repo", "b-repo"] {
        repo(&svc, name).await;
    }
    let page = svc
        .describe_repositories(DescribeRepositoriesRequest::new(RepositorySelection::Page(
            Page::first(2),
        )))
        .await
        .unwrap();
    let names: Vec<_> = page
        .repositories
        .iter()
        .map(|r| r.repository_name.as_str())
        .collect();
    assert_eq!(names, ["a-repo", "b-repo"]);
    let page = svc
        .describe_repositories(DescribeRepositoriesRequest::new(RepositorySelection::Page(
            Page {
                max_results: 2,
                after: page.next_token,
            },
        )))
        .await
        .unwrap();
    assert_eq!(page.repositories.len(), 1);
    assert!(page.next_token.is_none());
    svc.delete_repository(DeleteRepositoryRequest::new("a-repo".parse().unwrap()))
        .await
        .unwrap();
    let err = svc
        .delete_repository(DeleteRepositoryRequest::new("a-repo".parse().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "RepositoryNotFoundException");
}

#[tokio::test]
async fn parts_beyond_the_maximum_layer_size_are_refused() {
    let svc = service(small_parts());
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    // A part that continues the upload past the limit (contiguity is checked first): the
    // upload is moved to just below it, as no test sends 52,000 MiB.
    let mut up = svc.metadata().get_upload(&id).await.unwrap().unwrap();
    up.version += 1;
    up.next_byte = 52_000 * MIB - 1;
    svc.metadata()
        .update_upload(&up, ecr_layer_upload::ports::SideWrite::None)
        .await
        .unwrap();
    let err = part(&svc, "app", &id, 52_000 * MIB - 1, b"xy")
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "LimitExceededException");
}

#[tokio::test]
async fn batch_check_reports_available_unavailable_and_failures() {
    let svc = service(small_parts());
    repo(&svc, "app").await;
    let layer = b"checked layer";
    let d = push(&svc, "app", layer, 4).await.unwrap();
    let absent = format!("sha256:{}", "1".repeat(64));
    let out = svc
        .batch_check_layer_availability(
            wire::BatchCheckLayerAvailabilityRequest {
                registry_id: None,
                repository_name: Some("app".into()),
                layer_digests: Some(vec![
                    d.clone(),
                    absent.clone(),
                    "nope".into(),
                    String::new(),
                ]),
            }
            .try_into()
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(out.layers.len(), 2);
    assert_eq!(out.layers[0].layer_digest, d);
    assert_eq!(out.layers[0].layer_availability, "AVAILABLE");
    assert_eq!(out.layers[0].layer_size, Some(layer.len() as u64));
    assert_eq!(out.layers[1].layer_digest, absent);
    assert_eq!(out.layers[1].layer_availability, "UNAVAILABLE");
    assert_eq!(out.layers[1].layer_size, None);
    let codes: Vec<_> = out
        .failures
        .iter()
        .map(|f| f.failure_code.as_str())
        .collect();
    assert_eq!(codes, ["InvalidLayerDigest", "MissingLayerDigest"]);
    let err =
        BatchCheckLayerAvailabilityRequest::try_from(wire::BatchCheckLayerAvailabilityRequest {
            registry_id: None,
            repository_name: Some("app".into()),
            layer_digests: Some(vec![]),
        })
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidParameterException");
}

//! Images, written once and run on every backend like the service suite (`suite.rs` beside this
//! file): PutImage, BatchGetImage, ListImages, DescribeImages, BatchDeleteImage,
//! GetDownloadUrlForLayer and how they relate to layers. `tests/unit/service.rs` and
//! `tests/aws/backend.rs` instantiate it with
//! `image_behaviours!(service_tests!(service_images, Backend))`.

// Each test crate that includes this file uses a different subset of it.
#![allow(dead_code, unused_macros, unused_imports)]

use bytes::Bytes;
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::domain::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use ecr_layer_upload::domain::model::{
    ImageStatusFilter, Page, PageToken, RepositoryName, TagMutability, TagStatus,
};
use ecr_layer_upload::ports::{BlobStore, MetadataStore};
use ecr_layer_upload::protocols::ecr::wire;
use ecr_layer_upload::service::types::*;
use ecr_layer_upload::service::{INLINE_MANIFEST_MAX, ResponseLimit, Service, Settings};

use crate::common::digest;
use crate::service_suite::{Backend, Ctx, Svc};

/// Calls `$callback!($($args)* ; name, name, ...)` with every image behaviour.
macro_rules! image_behaviours {
    ($($callback:ident)::+ ! ($($args:tt)*)) => {
        $($callback)::+! {
            $($args)* ;
            put_image_digest_is_the_sha256_of_the_manifest_as_sent,
            put_image_twice_is_already_exists_and_a_new_tag_is_stored,
            a_tag_moves_in_a_mutable_repository_and_not_in_an_immutable_one,
            put_image_needs_every_blob_in_the_repository_with_its_size,
            put_image_checks_the_given_digest_the_tag_and_the_manifest,
            an_index_needs_its_manifests_in_the_repository,
            batch_get_image_reports_each_failure_with_ecrs_codes,
            list_images_pages_through_every_tag_and_untagged_image,
            describe_images_gives_details_and_missing_ids_fail_the_request,
            batch_delete_image_by_tag_keeps_the_image_until_its_last_tag_goes,
            a_layer_is_downloadable_once_an_image_references_it,
            a_large_manifest_is_kept_outside_the_record_and_read_back_exactly,
            delete_repository_with_images_needs_force,
            batch_get_image_refuses_a_response_larger_than_the_front_door_returns
        }
    };
}
pub(crate) use image_behaviours;

const REPO: &str = "team/app";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn repo() -> RepositoryName {
    REPO.parse().unwrap()
}

/// Image identifiers as a request sends them.
fn requested(ids: Vec<ImageIdentifier>) -> Vec<RequestedImage> {
    ids.into_iter().map(RequestedImage::new).collect()
}

/// A fresh backend with repository `REPO` of tag mutability `mutability`.
async fn service_with<F: Backend>(mutability: &str) -> (Ctx<F>, Svc<F>) {
    let ctx = Ctx::<F>::open().await;
    let svc = ctx.service(Settings {
        min_part_size: 0,
        ..Settings::default()
    });
    svc.create_repository(CreateRepositoryRequest {
        image_tag_mutability: TagMutability::from_wire(mutability).unwrap(),
        ..CreateRepositoryRequest::new(repo())
    })
    .await
    .unwrap();
    (ctx, svc)
}

async fn service<F: Backend>() -> (Ctx<F>, Svc<F>) {
    service_with::<F>("MUTABLE").await
}

/// Uploads `data` as a layer of `REPO` in one part; returns its digest.
async fn push_blob<M: MetadataStore, B: BlobStore>(svc: &Service<M, B>, data: &[u8]) -> String {
    let id = svc
        .initiate_layer_upload(InitiateLayerUploadRequest::new(repo()))
        .await
        .unwrap()
        .upload_id;
    svc.upload_layer_part(UploadLayerPartRequest::new(
        repo(),
        id.parse().unwrap(),
        0,
        Bytes::copy_from_slice(data),
    ))
    .await
    .unwrap();
    let done = svc
        .complete_layer_upload(CompleteLayerUploadRequest::new(
            repo(),
            id.parse().unwrap(),
            vec![digest(data).parse().unwrap()],
        ))
        .await;
    match done {
        Ok(out) => out.layer_digest,
        // Images share layers; clients count this as success.
        Err(EcrError::LayerAlreadyExists(_)) => digest(data),
        Err(e) => panic!("complete: {e}"),
    }
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#)
}

/// An OCI manifest for a config and layers given as (digest, size); `note` makes it unique.
fn manifest(config: (&str, usize), layers: &[(&str, usize)], note: &str) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(d, s)| descriptor(LAYER_TYPE, d, *s))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}],"annotations":{{"note":"{note}"}}}}"#,
        descriptor(CONFIG_TYPE, config.0, config.1),
        layers.join(",")
    )
}

/// A config and two layers pushed; returns a manifest over them.
async fn image<M: MetadataStore, B: BlobStore>(svc: &Service<M, B>, note: &str) -> String {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","note":"{note}"}}"#);
    let l1 = vec![1u8; 3000];
    let l2 = vec![2u8; 5000];
    let c = push_blob(svc, config.as_bytes()).await;
    let d1 = push_blob(svc, &l1).await;
    let d2 = push_blob(svc, &l2).await;
    manifest(
        (&c, config.len()),
        &[(&d1, l1.len()), (&d2, l2.len())],
        note,
    )
}

async fn put<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    manifest: &str,
    tag: Option<&str>,
) -> Result<PutImageResponse, EcrError> {
    svc.put_image(PutImageRequest {
        image_tag: tag.map(|t| t.parse().unwrap()),
        ..PutImageRequest::new(repo(), manifest.into())
    })
    .await
}

/// PutImage as the wire carries it, through the protocol's checks.
async fn put_sent<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    req: wire::PutImageRequest,
) -> Result<PutImageResponse, EcrError> {
    svc.put_image(req.try_into()?).await
}

fn by_tag(tag: &str) -> ImageIdentifier {
    ImageIdentifier {
        image_digest: None,
        image_tag: Some(tag.into()),
    }
}

fn by_digest(digest: &str) -> ImageIdentifier {
    ImageIdentifier {
        image_digest: Some(digest.into()),
        image_tag: None,
    }
}

async fn get<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    ids: Vec<ImageIdentifier>,
) -> BatchGetImageResponse {
    svc.batch_get_image(BatchGetImageRequest::new(repo(), requested(ids)))
        .await
        .unwrap()
}

async fn list<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    max: Option<usize>,
    token: Option<PageToken>,
) -> ListImagesResponse {
    svc.list_images(ListImagesRequest {
        page: Page {
            max_results: max.unwrap_or(100),
            after: token,
        },
        ..ListImagesRequest::new(repo())
    })
    .await
    .unwrap()
}

pub async fn put_image_digest_is_the_sha256_of_the_manifest_as_sent<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let m = image(&svc, "a").await;
    let out = put(&svc, &m, Some("v1")).await.unwrap();
    assert_eq!(
        out.image.image_id.image_digest.as_deref(),
        Some(digest(m.as_bytes()).as_str())
    );
    assert_eq!(out.image.image_id.image_tag.as_deref(), Some("v1"));
    assert_eq!(out.image.image_manifest, m);
    assert_eq!(out.image.image_manifest_media_type, OCI_MANIFEST);
    let got = get(&svc, vec![by_tag("v1")]).await;
    assert!(got.failures.is_empty());
    assert_eq!(got.images[0].image_manifest, m);
}

pub async fn put_image_twice_is_already_exists_and_a_new_tag_is_stored<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let m = image(&svc, "a").await;
    put(&svc, &m, Some("v1")).await.unwrap();
    let err = put(&svc, &m, Some("v1")).await.unwrap_err();
    assert_eq!(err.type_name(), "ImageAlreadyExistsException");
    assert!(err.message().contains("tag 'v1'"), "{}", err.message());
    put(&svc, &m, Some("v2")).await.unwrap();
    let err = put(&svc, &m, None).await.unwrap_err();
    assert_eq!(err.type_name(), "ImageAlreadyExistsException");
    let got = get(&svc, vec![by_tag("v1"), by_tag("v2")]).await;
    assert_eq!(got.images.len(), 2);
    assert_eq!(
        got.images[0].image_id.image_digest,
        got.images[1].image_id.image_digest
    );
}

pub async fn a_tag_moves_in_a_mutable_repository_and_not_in_an_immutable_one<F: Backend>() {
    for (mutability, moves) in [("MUTABLE", true), ("IMMUTABLE", false)] {
        let (_ctx, svc) = service_with::<F>(mutability).await;
        let a = image(&svc, "a").await;
        let b = image(&svc, "b").await;
        put(&svc, &a, Some("latest")).await.unwrap();
        let second = put(&svc, &b, Some("latest")).await;
        let got = get(&svc, vec![by_tag("latest")]).await;
        if moves {
            second.unwrap();
            assert_eq!(got.images[0].image_manifest, b);
            // The old image stays, untagged.
            let old = get(&svc, vec![by_digest(&digest(a.as_bytes()))]).await;
            assert_eq!(old.images.len(), 1);
        } else {
            let err = second.unwrap_err();
            assert_eq!(err.type_name(), "ImageTagAlreadyExistsException");
            assert_eq!(
                err.message(),
                "The image tag 'latest' already exists in the 'team/app' repository and cannot be overwritten because the repository is immutable."
            );
            assert_eq!(got.images[0].image_manifest, a);
            let b_image = get(&svc, vec![by_digest(&digest(b.as_bytes()))]).await;
            assert_eq!(b_image.failures[0].failure_code, "ImageNotFound");
        }
    }
}

pub async fn put_image_needs_every_blob_in_the_repository_with_its_size<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let config = b"{}";
    let c = push_blob(&svc, config).await;
    let absent = digest(b"never pushed");
    let err = put(&svc, &manifest((&c, 2), &[(&absent, 12)], "x"), Some("t"))
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "LayersNotFoundException");
    assert!(err.message().contains(&absent), "{}", err.message());
    let err = put(&svc, &manifest((&c, 3), &[], "x"), Some("t"))
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "InvalidParameterException");
    // Nothing was recorded by the failed attempts.
    assert_eq!(list(&svc, None, None).await.image_ids.len(), 0);
}

pub async fn put_image_checks_the_given_digest_the_tag_and_the_manifest<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let m = image(&svc, "a").await;
    let err = put_sent(
        &svc,
        wire::PutImageRequest {
            repository_name: Some(REPO.into()),
            image_manifest: Some(m.clone()),
            image_digest: Some(digest(b"other")),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.type_name(), "ImageDigestDoesNotMatchException");
    let ok = put_sent(
        &svc,
        wire::PutImageRequest {
            repository_name: Some(REPO.into()),
            image_manifest: Some(m.clone()),
            image_digest: Some(
                digest(m.as_bytes())
                    .to_uppercase()
                    .replace("SHA256", "sha256"),
            ),
            image_manifest_media_type: Some(OCI_MANIFEST.into()),
            ..Default::default()
        },
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    for (manifest, tag, member) in [
        (m.as_str(), Some("x".repeat(301)), "imageTag"),
        ("", None, "imageManifest"),
        ("{not json", None, "ImageManifest"),
    ] {
        let err = put_sent(
            &svc,
            wire::PutImageRequest {
                repository_name: Some(REPO.into()),
                image_manifest: Some(manifest.into()),
                image_tag: tag,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.type_name(), "InvalidParameterException");
        assert!(
            err.message().contains(&format!("'{member}'")),
            "{}",
            err.message()
        );
    }
    let err = put_sent(
        &svc,
        wire::PutImageRequest {
            repository_name: Some(REPO.into()),
            image_manifest: Some(m),
            image_manifest_media_type: Some(DOCKER_MANIFEST.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.type_name(), "InvalidParameterException");
}

pub async fn an_index_needs_its_manifests_in_the_repository<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let a = image(&svc, "a").await;
    let b = image(&svc, "b").await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{}]}}"#,
        descriptor(OCI_MANIFEST, &digest(a.as_bytes()), a.len()),
        descriptor(OCI_MANIFEST, &digest(b.as_bytes()), b.len()),
    );
    put(&svc, &a, None).await.unwrap();
    let err = put(&svc, &index, Some("multi")).await.unwrap_err();
    assert_eq!(err.type_name(), "ReferencedImagesNotFoundException");
    assert!(err.message().contains(&digest(b.as_bytes())));
    put(&svc, &b, None).await.unwrap();
    let out = put(&svc, &index, Some("multi")).await.unwrap();
    assert_eq!(out.image.image_manifest_media_type, OCI_INDEX);

    // A listed manifest cannot be deleted while the index stands.
    let del = svc
        .batch_delete_image(BatchDeleteImageRequest::new(
            repo(),
            requested(vec![by_digest(&digest(a.as_bytes()))]),
        ))
        .await
        .unwrap();
    assert_eq!(
        del.failures[0].failure_code,
        "ImageReferencedByManifestList"
    );
    let details = svc
        .describe_images(DescribeImagesRequest::new(
            repo(),
            ImageSelection::Ids(requested(vec![by_tag("multi")])),
        ))
        .await
        .unwrap();
    // An index is as large as its largest image: the layers of `b` (3000 + 5000 bytes).
    assert_eq!(details.image_details[0].image_size_in_bytes, 8000);
}

pub async fn batch_get_image_reports_each_failure_with_ecrs_codes<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let a = image(&svc, "a").await;
    let b = image(&svc, "b").await;
    put(&svc, &a, Some("a")).await.unwrap();
    put(&svc, &b, Some("b")).await.unwrap();
    let got = get(
        &svc,
        vec![
            by_digest(&digest(a.as_bytes())),
            ImageIdentifier::default(),
            by_digest("sha256:xyz"),
            by_tag("missing"),
            by_digest(&digest(b"absent")),
            ImageIdentifier {
                image_digest: Some(digest(a.as_bytes())),
                image_tag: Some("b".into()),
            },
            ImageIdentifier {
                image_digest: Some(digest(b.as_bytes())),
                image_tag: Some("b".into()),
            },
        ],
    )
    .await;
    assert_eq!(got.images.len(), 2);
    assert_eq!(got.images[0].image_manifest, a);
    assert_eq!(got.images[0].image_id.image_tag, None);
    assert_eq!(got.images[1].image_id.image_tag.as_deref(), Some("b"));
    let codes: Vec<&str> = got
        .failures
        .iter()
        .map(|f| f.failure_code.as_str())
        .collect();
    assert_eq!(
        codes,
        [
            "MissingDigestAndTag",
            "InvalidImageDigest",
            "ImageNotFound",
            "ImageNotFound",
            "ImageTagDoesNotMatchDigest"
        ]
    );
    let err = BatchGetImageRequest::try_from(wire::BatchGetImageRequest {
        repository_name: Some(REPO.into()),
        image_ids: Some(vec![]),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.type_name(), "InvalidParameterException");
}

pub async fn list_images_pages_through_every_tag_and_untagged_image<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let mut expected = Vec::new();
    for i in 0..5 {
        let m = image(&svc, &format!("img{i}")).await;
        let d = digest(m.as_bytes());
        match i {
            0 => {
                put(&svc, &m, None).await.unwrap();
                expected.push((d.clone(), None));
            }
            _ => {
                for tag in [format!("t{i}"), format!("u{i}")] {
                    put(&svc, &m, Some(&tag)).await.unwrap();
                    expected.push((d.clone(), Some(tag)));
                }
            }
        }
    }
    expected.sort();
    let mut seen = Vec::new();
    let mut token = None;
    for _ in 0..10 {
        let page = list(&svc, Some(2), token.take()).await;
        assert!(page.image_ids.len() <= 2);
        seen.extend(
            page.image_ids
                .into_iter()
                .map(|id| (id.image_digest.unwrap(), id.image_tag)),
        );
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, expected);

    let untagged = svc
        .list_images(ListImagesRequest {
            filter: ImageFilter {
                tag_status: TagStatus::Untagged,
                image_status: ImageStatusFilter::Any,
            },
            ..ListImagesRequest::new(repo())
        })
        .await
        .unwrap();
    assert_eq!(untagged.image_ids.len(), 1);
    assert_eq!(untagged.image_ids[0].image_tag, None);
    for bad in [Some(0), Some(1001)] {
        let err = ListImagesRequest::try_from(wire::ListImagesRequest {
            repository_name: Some(REPO.into()),
            max_results: bad,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.type_name(), "InvalidParameterException");
    }
}

pub async fn describe_images_gives_details_and_missing_ids_fail_the_request<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let a = image(&svc, "a").await;
    put(&svc, &a, Some("one")).await.unwrap();
    put(&svc, &a, Some("two")).await.unwrap();
    let b = image(&svc, "b").await;
    put(&svc, &b, None).await.unwrap();
    let all = svc
        .describe_images(DescribeImagesRequest::new(
            repo(),
            ImageSelection::Page(Page::first(100)),
        ))
        .await
        .unwrap();
    assert_eq!(all.image_details.len(), 2);
    let da = all
        .image_details
        .iter()
        .find(|d| d.image_digest == digest(a.as_bytes()))
        .unwrap();
    assert_eq!(da.image_tags, ["one", "two"]);
    assert_eq!(da.image_size_in_bytes, 8000);
    assert_eq!(da.image_manifest_media_type, OCI_MANIFEST);
    assert_eq!(da.artifact_media_type.as_deref(), Some(CONFIG_TYPE));
    assert_eq!(da.image_status, "ACTIVE");
    assert!(da.image_pushed_at > 1.6e9);

    let page = svc
        .describe_images(DescribeImagesRequest::new(
            repo(),
            ImageSelection::Page(Page::first(1)),
        ))
        .await
        .unwrap();
    assert_eq!(page.image_details.len(), 1);
    let rest = svc
        .describe_images(DescribeImagesRequest::new(
            repo(),
            ImageSelection::Page(Page {
                max_results: 100,
                after: page.next_token,
            }),
        ))
        .await
        .unwrap();
    assert_eq!(rest.image_details.len(), 1);
    assert_ne!(
        rest.image_details[0].image_digest,
        page.image_details[0].image_digest
    );
    assert_eq!(rest.next_token, None);

    let err = svc
        .describe_images(DescribeImagesRequest::new(
            repo(),
            ImageSelection::Ids(requested(vec![by_tag("one"), by_tag("nope")])),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "ImageNotFoundException");
    assert!(
        err.message().contains("imageTag:'nope'"),
        "{}",
        err.message()
    );
}

pub async fn batch_delete_image_by_tag_keeps_the_image_until_its_last_tag_goes<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let a = image(&svc, "a").await;
    let da = digest(a.as_bytes());
    put(&svc, &a, Some("one")).await.unwrap();
    put(&svc, &a, Some("two")).await.unwrap();
    let del = |ids| svc.batch_delete_image(BatchDeleteImageRequest::new(repo(), requested(ids)));
    let out = del(vec![by_tag("one")]).await.unwrap();
    assert_eq!(
        out.image_ids,
        [ImageIdentifier {
            image_digest: Some(da.clone()),
            image_tag: Some("one".into())
        }]
    );
    assert_eq!(get(&svc, vec![by_digest(&da)]).await.images.len(), 1);
    del(vec![by_tag("two")]).await.unwrap();
    assert_eq!(
        get(&svc, vec![by_digest(&da)]).await.failures[0].failure_code,
        "ImageNotFound"
    );

    let b = image(&svc, "b").await;
    let db = digest(b.as_bytes());
    put(&svc, &b, Some("x")).await.unwrap();
    put(&svc, &b, Some("y")).await.unwrap();
    let out = del(vec![by_digest(&db), by_tag("gone")]).await.unwrap();
    let tags: Vec<Option<String>> = out.image_ids.iter().map(|i| i.image_tag.clone()).collect();
    assert_eq!(tags, [Some("x".to_string()), Some("y".to_string())]);
    assert_eq!(out.failures[0].failure_code, "ImageNotFound");
    assert!(list(&svc, None, None).await.image_ids.is_empty());
}

pub async fn a_layer_is_downloadable_once_an_image_references_it<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let data = vec![7u8; 4096];
    let d = push_blob(&svc, &data).await;
    // Through the protocol's checks: one digest sent is not a digest at all.
    let shared = &svc;
    let url = |digest: &str| {
        let req = GetDownloadUrlForLayerRequest::try_from(wire::GetDownloadUrlForLayerRequest {
            repository_name: Some(REPO.into()),
            layer_digest: Some(digest.into()),
            ..Default::default()
        });
        async move { shared.get_download_url_for_layer(req?).await }
    };
    let check = |digest: &str| {
        let req = BatchCheckLayerAvailabilityRequest::try_from(
            wire::BatchCheckLayerAvailabilityRequest {
                repository_name: Some(REPO.into()),
                layer_digests: Some(vec![digest.into()]),
                ..Default::default()
            },
        );
        async move { shared.batch_check_layer_availability(req?).await }
    };
    assert_eq!(
        url(&d).await.unwrap_err().type_name(),
        "LayerInaccessibleException"
    );
    assert_eq!(check(&d).await.unwrap().layers[0].media_type, None);
    let err = url(&digest(b"absent")).await.unwrap_err();
    assert_eq!(err.type_name(), "LayersNotFoundException");
    assert!(
        err.message().starts_with("The layer with digest sha256:"),
        "{}",
        err.message()
    );
    assert_eq!(
        url("nope").await.unwrap_err().type_name(),
        "InvalidParameterException"
    );

    let config = b"{\"os\":\"linux\"}";
    let c = push_blob(&svc, config).await;
    put(
        &svc,
        &manifest((&c, config.len()), &[(&d, data.len())], "dl"),
        Some("t"),
    )
    .await
    .unwrap();
    let out = url(&d.to_uppercase().replace("SHA256", "sha256"))
        .await
        .unwrap();
    assert_eq!(out.layer_digest, d);
    assert!(out.download_url.contains("layers/"), "{}", out.download_url);
    let layer = &check(&d).await.unwrap().layers[0];
    assert_eq!(layer.media_type.as_deref(), Some(LAYER_TYPE));
    assert_eq!(layer.layer_size, Some(4096));
    assert_eq!(
        check(&c).await.unwrap().layers[0].media_type.as_deref(),
        Some(CONFIG_TYPE)
    );
}

pub async fn a_large_manifest_is_kept_outside_the_record_and_read_back_exactly<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let config = b"{}";
    let c = push_blob(&svc, config).await;
    let pad = "p".repeat(INLINE_MANIFEST_MAX + 10);
    let m = manifest((&c, 2), &[], &pad);
    put(&svc, &m, Some("big")).await.unwrap();
    let got = get(&svc, vec![by_tag("big")]).await;
    assert_eq!(got.images[0].image_manifest, m);
    svc.batch_delete_image(BatchDeleteImageRequest::new(
        repo(),
        requested(vec![by_tag("big")]),
    ))
    .await
    .unwrap();
    assert_eq!(get(&svc, vec![by_tag("big")]).await.failures.len(), 1);
}

pub async fn delete_repository_with_images_needs_force<F: Backend>() {
    let (_ctx, svc) = service::<F>().await;
    let m = image(&svc, "a").await;
    put(&svc, &m, Some("v1")).await.unwrap();
    let delete = |force: Option<bool>| {
        svc.delete_repository(DeleteRepositoryRequest {
            force: force.unwrap_or(false),
            ..DeleteRepositoryRequest::new(repo())
        })
    };
    let err = delete(None).await.unwrap_err();
    assert_eq!(err.type_name(), "RepositoryNotEmptyException");
    delete(Some(true)).await.unwrap();
    svc.create_repository(CreateRepositoryRequest::new(repo()))
        .await
        .unwrap();
    // The new repository of the same name starts empty.
    assert!(list(&svc, None, None).await.image_ids.is_empty());
    assert_eq!(
        get(&svc, vec![by_tag("v1")]).await.failures[0].failure_code,
        "ImageNotFound"
    );
}

pub async fn batch_get_image_refuses_a_response_larger_than_the_front_door_returns<F: Backend>() {
    let ctx = Ctx::<F>::open().await;
    let svc = ctx.service(Settings {
        min_part_size: 0,
        response_limit: Some(ResponseLimit {
            max_bytes: 64 * 1024,
            ..ecr_layer_upload::frontdoors::lambda::response_limit()
        }),
        ..Settings::default()
    });
    svc.create_repository(CreateRepositoryRequest::new(repo()))
        .await
        .unwrap();
    let config = b"{}";
    let c = push_blob(&svc, config).await;
    // 20,000 bytes of text, each escaped twice on its way out: about 20 KB in the response.
    let m = manifest((&c, 2), &[], &"n".repeat(20_000));
    put(&svc, &m, Some("a")).await.unwrap();
    put(&svc, &m, Some("b")).await.unwrap();
    let two = get(&svc, vec![by_tag("a"), by_tag("b")]).await;
    assert_eq!(two.images.len(), 2);
    let err = svc
        .batch_get_image(BatchGetImageRequest::new(
            repo(),
            requested(vec![by_tag("a"), by_tag("b"), by_tag("a"), by_tag("b")]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.type_name(), "LimitExceededException");
}

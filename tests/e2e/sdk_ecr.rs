//! The official Rust client, `aws-sdk-ecr`, against the running server: typed outputs and typed
//! errors, and a 256 MiB layer with the server's memory staying bounded.

use aws_sdk_ecr::operation::complete_layer_upload::CompleteLayerUploadError;
use aws_sdk_ecr::operation::create_repository::CreateRepositoryError;
use aws_sdk_ecr::operation::initiate_layer_upload::InitiateLayerUploadError;
use aws_sdk_ecr::operation::upload_layer_part::UploadLayerPartError;
use aws_sdk_ecr::primitives::Blob;
use sha2::{Digest, Sha256};

use crate::common::{Server, create_repository as create, digest, push_blob, unique};

#[tokio::test]
async fn typed_outputs_for_a_full_push() {
    let server = Server::start(&[]);
    let ecr = server.ecr_client();
    let name = unique("sdk/typed");
    let created = ecr
        .create_repository()
        .repository_name(&name)
        .send()
        .await
        .unwrap();
    let repo = created.repository().unwrap();
    assert_eq!(repo.repository_name(), Some(name.as_str()));
    assert_eq!(repo.registry_id(), Some("123456789012"));
    assert!(repo.created_at().is_some());
    assert_eq!(
        repo.image_tag_mutability(),
        Some(&aws_sdk_ecr::types::ImageTagMutability::Mutable)
    );

    let init = ecr
        .initiate_layer_upload()
        .repository_name(&name)
        .send()
        .await
        .unwrap();
    assert_eq!(init.part_size(), Some(10_485_760));
    let id = init.upload_id().unwrap().to_string();
    let layer: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
    let split = 5_242_880;
    let first = ecr
        .upload_layer_part()
        .repository_name(&name)
        .upload_id(&id)
        .part_first_byte(0)
        .part_last_byte(split as i64 - 1)
        .layer_part_blob(Blob::new(&layer[..split]))
        .send()
        .await
        .unwrap();
    assert_eq!(first.last_byte_received(), Some(split as i64 - 1));
    assert_eq!(first.upload_id(), Some(id.as_str()));
    let second = ecr
        .upload_layer_part()
        .repository_name(&name)
        .upload_id(&id)
        .part_first_byte(split as i64)
        .part_last_byte(layer.len() as i64 - 1)
        .layer_part_blob(Blob::new(&layer[split..]))
        .send()
        .await
        .unwrap();
    assert_eq!(second.last_byte_received(), Some(layer.len() as i64 - 1));
    let digest = digest(&layer);
    let done = ecr
        .complete_layer_upload()
        .repository_name(&name)
        .upload_id(&id)
        .layer_digests(&digest)
        .send()
        .await
        .unwrap();
    assert_eq!(done.layer_digest(), Some(digest.as_str()));
    assert_eq!(done.registry_id(), Some("123456789012"));

    let check = ecr
        .batch_check_layer_availability()
        .repository_name(&name)
        .layer_digests(&digest)
        .layer_digests(format!("sha256:{}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    let layers = check.layers();
    assert_eq!(
        layers[0].layer_availability(),
        Some(&aws_sdk_ecr::types::LayerAvailability::Available)
    );
    assert_eq!(layers[0].layer_size(), Some(layer.len() as i64));
    assert_eq!(
        layers[1].layer_availability(),
        Some(&aws_sdk_ecr::types::LayerAvailability::Unavailable)
    );
    assert!(check.failures().is_empty());

    let described = ecr
        .describe_repositories()
        .repository_names(&name)
        .send()
        .await
        .unwrap();
    assert_eq!(described.repositories().len(), 1);
    let deleted = ecr
        .delete_repository()
        .repository_name(&name)
        .send()
        .await
        .unwrap();
    assert_eq!(
        deleted.repository().unwrap().repository_name(),
        Some(name.as_str())
    );
}

#[tokio::test]
async fn typed_errors_reach_the_caller() {
    let server = Server::start(&[]);
    let ecr = server.ecr_client();
    let name = unique("sdk/errors");
    create(&ecr, &name).await;

    let err = ecr
        .create_repository()
        .repository_name(&name)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        CreateRepositoryError::RepositoryAlreadyExistsException(_)
    ));

    let err = ecr
        .initiate_layer_upload()
        .repository_name("no-such/repo")
        .send()
        .await
        .unwrap_err();
    match err.into_service_error() {
        InitiateLayerUploadError::RepositoryNotFoundException(e) => assert_eq!(
            e.message(),
            Some(
                "The repository with name 'no-such/repo' does not exist in the registry with id '123456789012'"
            )
        ),
        other => panic!("expected RepositoryNotFoundException, got {other:?}"),
    }
    let err = ecr
        .initiate_layer_upload()
        .repository_name("A")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        InitiateLayerUploadError::InvalidParameterException(_)
    ));

    let id = ecr
        .initiate_layer_upload()
        .repository_name(&name)
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let send = |first: i64, bytes: &'static [u8]| {
        ecr.upload_layer_part()
            .repository_name(&name)
            .upload_id(&id)
            .part_first_byte(first)
            .part_last_byte(first + bytes.len() as i64 - 1)
            .layer_part_blob(Blob::new(bytes))
            .send()
    };
    send(0, b"0123456789").await.unwrap();
    let err = send(20, b"abc").await.unwrap_err();
    match err.into_service_error() {
        UploadLayerPartError::InvalidLayerPartException(e) => {
            assert_eq!(e.last_valid_byte_received(), Some(9));
            assert_eq!(e.upload_id(), Some(id.as_str()));
            assert_eq!(e.repository_name(), Some(name.as_str()));
            assert_eq!(
                e.message(),
                Some("First byte of the layer part is 20 instead of 10")
            );
        }
        other => panic!("expected InvalidLayerPartException, got {other:?}"),
    }
    let err = ecr
        .complete_layer_upload()
        .repository_name(&name)
        .upload_id(&id)
        .layer_digests(format!("sha256:{}", "ab".repeat(32)))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        CompleteLayerUploadError::InvalidLayerException(_)
    ));
    let err = ecr
        .complete_layer_upload()
        .repository_name(&name)
        .upload_id(&id)
        .layer_digests(format!("sha256:{}", "ab".repeat(32)))
        .send()
        .await
        .unwrap_err();
    // The upload stays for a retry with the right digest.
    assert!(matches!(
        err.into_service_error(),
        CompleteLayerUploadError::InvalidLayerException(_)
    ));
    let done = ecr
        .complete_layer_upload()
        .repository_name(&name)
        .upload_id(&id)
        .layer_digests(digest(b"0123456789"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.layer_digest(), Some(digest(b"0123456789").as_str()));

    let empty = ecr
        .initiate_layer_upload()
        .repository_name(&name)
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let err = ecr
        .complete_layer_upload()
        .repository_name(&name)
        .upload_id(&empty)
        .layer_digests(format!("sha256:{}", "ab".repeat(32)))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(
        err.into_service_error(),
        CompleteLayerUploadError::EmptyUploadException(_)
    ));
}

#[tokio::test]
async fn a_256_mib_layer_is_pushed_and_verified_in_bounded_memory() {
    let server = Server::start(&[]);
    let ecr = server.ecr_client();
    let name = unique("sdk/big");
    create(&ecr, &name).await;
    let init = ecr
        .initiate_layer_upload()
        .repository_name(&name)
        .send()
        .await
        .unwrap();
    let id = init.upload_id().unwrap().to_string();
    let part_size = init.part_size().unwrap() as usize;
    const TOTAL: usize = 256 * 1024 * 1024;
    let mut hasher = Sha256::new();
    let mut part = vec![0u8; part_size];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut sent = 0usize;
    while sent < TOTAL {
        let len = part_size.min(TOTAL - sent);
        // Cheap pseudo-random bytes, so the layer is not all zeros.
        for chunk in part[..len].chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        hasher.update(&part[..len]);
        let out = ecr
            .upload_layer_part()
            .repository_name(&name)
            .upload_id(&id)
            .part_first_byte(sent as i64)
            .part_last_byte((sent + len) as i64 - 1)
            .layer_part_blob(Blob::new(&part[..len]))
            .send()
            .await
            .unwrap();
        sent += len;
        assert_eq!(out.last_byte_received(), Some(sent as i64 - 1));
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    let done = ecr
        .complete_layer_upload()
        .repository_name(&name)
        .upload_id(&id)
        .layer_digests(&digest)
        .send()
        .await
        .unwrap();
    assert_eq!(done.layer_digest(), Some(digest.as_str()));
    // Memory is bounded by a few parts in flight (each ~14 MiB as base64 JSON, 10 MiB decoded,
    // plus one multipart part being assembled), not by the 256 MiB layer.
    let peak = server.peak_rss();
    assert!(
        peak < 160 * 1024 * 1024,
        "server peak RSS {} MiB",
        peak >> 20
    );
    eprintln!("server peak RSS for a 256 MiB layer: {} MiB", peak >> 20);
}

fn oci_manifest(config: (&str, usize), layer: (&str, usize), note: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}],"annotations":{{"note":"{note}"}}}}"#,
        config.0, config.1, layer.0, layer.1
    )
}

#[tokio::test]
async fn images_have_typed_outputs_and_errors() {
    use aws_sdk_ecr::operation::delete_repository::DeleteRepositoryError;
    use aws_sdk_ecr::operation::describe_images::DescribeImagesError;
    use aws_sdk_ecr::operation::get_download_url_for_layer::GetDownloadUrlForLayerError;
    use aws_sdk_ecr::operation::put_image::PutImageError;
    use aws_sdk_ecr::types::{ImageIdentifier, ImageTagMutability};

    let server = Server::start(&[]);
    let ecr = server.ecr_client();
    let name = unique("sdk/images");
    ecr.create_repository()
        .repository_name(&name)
        .image_tag_mutability(ImageTagMutability::Immutable)
        .send()
        .await
        .unwrap();
    let config = br#"{"os":"linux","architecture":"amd64"}"#;
    let layer: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let c = push_blob(&ecr, &name, config).await;
    let l = push_blob(&ecr, &name, &layer).await;

    let err = ecr
        .get_download_url_for_layer()
        .repository_name(&name)
        .layer_digest(&l)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(
            err,
            GetDownloadUrlForLayerError::LayerInaccessibleException(_)
        ),
        "{err:?}"
    );

    let m1 = oci_manifest((&c, config.len()), (&l, layer.len()), "one");
    let put = ecr
        .put_image()
        .repository_name(&name)
        .image_manifest(&m1)
        .image_tag("v1")
        .send()
        .await
        .unwrap();
    let image = put.image().unwrap();
    let d1 = digest(m1.as_bytes());
    let id = image.image_id().unwrap();
    assert_eq!(id.image_digest(), Some(d1.as_str()));
    assert_eq!(id.image_tag(), Some("v1"));
    assert_eq!(
        image.image_manifest_media_type(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );

    let err = ecr
        .put_image()
        .repository_name(&name)
        .image_manifest(&m1)
        .image_tag("v1")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, PutImageError::ImageAlreadyExistsException(_)),
        "{err:?}"
    );
    let m2 = oci_manifest((&c, config.len()), (&l, layer.len()), "two");
    let err = ecr
        .put_image()
        .repository_name(&name)
        .image_manifest(&m2)
        .image_tag("v1")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, PutImageError::ImageTagAlreadyExistsException(_)),
        "{err:?}"
    );
    let err = ecr
        .put_image()
        .repository_name(&name)
        .image_manifest(&m2)
        .image_digest(format!("sha256:{}", "0".repeat(64)))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, PutImageError::ImageDigestDoesNotMatchException(_)),
        "{err:?}"
    );
    let absent = format!("sha256:{}", "1".repeat(64));
    let err = ecr
        .put_image()
        .repository_name(&name)
        .image_manifest(oci_manifest((&c, config.len()), (&absent, 5), "three"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, PutImageError::LayersNotFoundException(_)),
        "{err:?}"
    );

    let got = ecr
        .batch_get_image()
        .repository_name(&name)
        .image_ids(ImageIdentifier::builder().image_tag("v1").build())
        .image_ids(ImageIdentifier::builder().image_tag("missing").build())
        .send()
        .await
        .unwrap();
    assert_eq!(got.images()[0].image_manifest(), Some(m1.as_str()));
    assert_eq!(
        got.failures()[0].failure_code(),
        Some(&aws_sdk_ecr::types::ImageFailureCode::ImageNotFound)
    );

    let details = ecr
        .describe_images()
        .repository_name(&name)
        .send()
        .await
        .unwrap();
    let detail = &details.image_details()[0];
    assert_eq!(detail.image_digest(), Some(d1.as_str()));
    assert_eq!(detail.image_tags(), ["v1"]);
    assert_eq!(detail.image_size_in_bytes(), Some(layer.len() as i64));
    assert!(
        detail
            .image_pushed_at()
            .is_some_and(|t| t.secs() > 1_600_000_000)
    );
    let err = ecr
        .describe_images()
        .repository_name(&name)
        .image_ids(ImageIdentifier::builder().image_tag("nope").build())
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, DescribeImagesError::ImageNotFoundException(_)),
        "{err:?}"
    );

    let url = ecr
        .get_download_url_for_layer()
        .repository_name(&name)
        .layer_digest(&l)
        .send()
        .await
        .unwrap();
    assert_eq!(url.layer_digest(), Some(l.as_str()));
    assert!(url.download_url().is_some_and(|u| u.starts_with("http")));
    let listed = ecr
        .list_images()
        .repository_name(&name)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.image_ids().len(), 1);

    let err = ecr
        .delete_repository()
        .repository_name(&name)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        matches!(err, DeleteRepositoryError::RepositoryNotEmptyException(_)),
        "{err:?}"
    );
    ecr.delete_repository()
        .repository_name(&name)
        .force(true)
        .send()
        .await
        .unwrap();
}

//! The service on the AWS backend (S3 + DynamoDB), driven in-process against the local S3
//! (SeaweedFS) and DynamoDB (dynoxide) servers of `scripts/services.sh`:
//!
//! - the service suite (`tests/service/suite.rs` and `tests/service/images.rs`), with S3's own view as its inspection hooks:
//!   staging objects listed by ListObjectsV2, open multipart parts by ListParts, the parts of a
//!   completed object by HeadObject. So the coalescing of small ECR parts into S3 multipart parts
//!   of at least 5 MiB, abandoned uploads and their cleanup, and same-offset races decided by
//!   DynamoDB's conditional writes are checked against what S3 itself reports;
//! - what only this backend has: images whose manifest is too big for a DynamoDB item, layer
//!   downloads from presigned S3 URLs, and the template's lifecycle rules and role grants.
//!
//! Run with `make test-aws-backend` (starts the servers and exports their environment). Without
//! that environment these tests fail, they do not pass vacuously.

use std::collections::BTreeMap;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use ecr_layer_upload::backends::aws::{DynamoMetadata, S3Blobs};
use ecr_layer_upload::ports::{BlobStore, MetadataStore};
use ecr_layer_upload::service::types::*;
use ecr_layer_upload::service::{Service, Settings, staging_key};

use crate::common::service::{complete, create_repository as repo, initiate, part, small_parts};
use crate::common::{self, REGISTRY, aws, digest, noise};
use crate::service_suite::{Backend, ListedPart};

const MIB: u64 = 1024 * 1024;
type Svc = Service<DynamoMetadata, S3Blobs>;

// ---------------------------------------------------------------------------------------------
// The service suite on S3 + DynamoDB, with S3's own view of staging objects and parts.

/// Clients of the shared servers; every test serves a registry of its own.
pub struct Aws {
    meta: DynamoMetadata,
    blobs: S3Blobs,
}

impl Backend for Aws {
    type Metadata = DynamoMetadata;
    type Blobs = S3Blobs;

    const SHARED: bool = true;

    async fn open() -> Self {
        let (meta, blobs) = aws::adapters().await;
        Aws { meta, blobs }
    }

    fn metadata(&self) -> DynamoMetadata {
        self.meta.clone()
    }

    fn blobs(&self) -> S3Blobs {
        self.blobs.clone()
    }

    async fn staging_objects(&self, upload_id: &str) -> Option<BTreeMap<String, u64>> {
        Some(staging_objects(&self.blobs, upload_id).await)
    }

    async fn multipart_parts(
        &self,
        key: &str,
        multipart_id: &str,
    ) -> Option<Result<Vec<ListedPart>, String>> {
        Some(s3_parts(&self.blobs, key, multipart_id).await)
    }

    async fn completed_part_sizes(&self, key: &str) -> Option<Vec<u64>> {
        Some(s3_completed_part_sizes(&self.blobs, key).await)
    }
}

mod service {
    use crate::service_suite;
    service_suite::service_behaviours!(service_suite::service_tests!(service_suite, super::Aws));

    mod images {
        use crate::{service_images, service_suite};
        service_images::image_behaviours!(service_suite::service_tests!(
            service_images,
            super::super::Aws
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers of the AWS-only tests.

async fn service(settings: Settings) -> Svc {
    let (meta, blobs) = aws::adapters().await;
    Service::new(meta, blobs, settings)
}

/// A repository name of its own for every test and run: the bucket and table are shared.
fn repo_name(kind: &str) -> String {
    format!("aws-backend/{kind}-{}", uuid::Uuid::new_v4().simple())
}

/// Removes what a test left in the shared bucket and table: the layer objects and the
/// repository (with its layer items).
async fn cleanup(svc: &Svc, name: &str, blob_keys: &[String]) {
    svc.blobs().delete_objects(blob_keys).await.unwrap();
    svc.delete_repository(DeleteRepositoryRequest::new(name.parse().unwrap()))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// What S3 itself says.

/// The objects under `staging/<uploadId>/` (ListObjectsV2, every page): key → size.
async fn staging_objects(b: &S3Blobs, upload_id: &str) -> BTreeMap<String, u64> {
    let prefix = format!("staging/{upload_id}/");
    let mut found = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let out = b
            .client()
            .list_objects_v2()
            .bucket(b.bucket())
            .prefix(&prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .expect("ListObjectsV2");
        for o in out.contents() {
            let key = o.key().expect("a listed key").to_owned();
            found.insert(key, o.size().unwrap_or(-1) as u64);
        }
        token = out.next_continuation_token().map(str::to_owned);
        if !out.is_truncated().unwrap_or(false) || token.is_none() {
            return found;
        }
    }
}

/// ListParts of multipart upload `multipart_id` of `key`, every page; `Err(code)` if S3 refuses.
async fn s3_parts(b: &S3Blobs, key: &str, multipart_id: &str) -> Result<Vec<ListedPart>, String> {
    let mut parts = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = b
            .client()
            .list_parts()
            .bucket(b.bucket())
            .key(key)
            .upload_id(multipart_id)
            .set_part_number_marker(marker.take())
            .send()
            .await
            .map_err(|e| {
                e.as_service_error()
                    .and_then(|se| se.code())
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{e:?}"))
            })?;
        for p in out.parts() {
            parts.push(ListedPart {
                number: p.part_number().expect("a part number") as u32,
                etag: p.e_tag().expect("an ETag").to_owned(),
                size: p.size().expect("a size") as u64,
            });
        }
        marker = out.next_part_number_marker().map(str::to_owned);
        if !out.is_truncated().unwrap_or(false) || marker.is_none() {
            return Ok(parts);
        }
    }
}

/// HeadObject of part `number` of the completed object at `key`.
async fn head_part(b: &S3Blobs, key: &str, number: u32) -> HeadObjectOutput {
    b.client()
        .head_object()
        .bucket(b.bucket())
        .key(key)
        .part_number(number as i32)
        .send()
        .await
        .unwrap_or_else(|e| panic!("HeadObject partNumber={number} of {key}: {e:?}"))
}

/// The sizes of the parts the completed object at `key` was assembled from, in order.
/// HeadObject with `partNumber=1` answers the count (`x-amz-mp-parts-count`; a multipart ETag
/// ends in `-<count>` as well, and where both are given they must agree); HeadObject of each
/// part number answers that part's length.
async fn s3_completed_part_sizes(b: &S3Blobs, key: &str) -> Vec<u64> {
    let first = head_part(b, key, 1).await;
    let etag = first
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned();
    let from_etag: Option<u32> = etag.rsplit_once('-').and_then(|(_, n)| n.parse().ok());
    let count = match (first.parts_count(), from_etag) {
        (Some(n), Some(m)) => {
            assert_eq!(n as u32, m, "parts count {n} and ETag {etag:?} disagree");
            m
        }
        (Some(n), None) => n as u32,
        (None, Some(m)) => m,
        (None, None) => panic!(
            "the layer object {key} reports neither a parts count nor a multipart ETag ({etag:?})"
        ),
    };
    let mut sizes = vec![first.content_length().expect("a part length") as u64];
    for number in 2..=count {
        let head = head_part(b, key, number).await;
        sizes.push(head.content_length().expect("a part length") as u64);
    }
    sizes
}

// ---------------------------------------------------------------------------------------------
// Abandoned uploads in the deployment.

/// The deployed counterpart of the sweep: the bucket's lifecycle rules in template.yaml abort
/// incomplete multipart uploads and expire the staging prefix the service writes under.
#[test]
fn template_lifecycle_rules_clean_up_abandoned_uploads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml");
    let text = std::fs::read_to_string(path).expect("template.yaml");
    let start = text
        .find("LifecycleConfiguration:")
        .expect("the bucket has a LifecycleConfiguration");
    let indent = |line: &str| line.len() - line.trim_start().len();
    // The block: the lines after the key that are indented deeper than it.
    let key_line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let key_indent = indent(&text[key_line_start..]);
    let block: Vec<&str> = text[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim().is_empty() || indent(l) > key_indent)
        .collect();
    // Its rules, one per `- ` item.
    let mut rules: Vec<String> = Vec::new();
    for line in &block {
        let t = line.trim();
        if t.starts_with("- ") {
            rules.push(String::new());
        }
        if let Some(r) = rules.last_mut() {
            r.push_str(t);
            r.push('\n');
        }
    }
    let enabled = |r: &&String| r.contains("Status: Enabled");
    assert!(
        rules
            .iter()
            .filter(enabled)
            .any(|r| r.contains("AbortIncompleteMultipartUpload:")
                && r.contains("DaysAfterInitiation:")),
        "an enabled rule aborts incomplete multipart uploads: {rules:#?}"
    );
    assert!(
        rules.iter().filter(enabled).any(|r| {
            r.lines().any(|l| {
                let l = l.trim_start_matches("- ");
                l == "Prefix: staging/" || l == "Prefix: \"staging/\"" || l == "Prefix: 'staging/'"
            }) && r.contains("ExpirationInDays:")
        }),
        "an enabled rule expires the staging/ prefix: {rules:#?}"
    );
    // That prefix is where the service stages bytes.
    assert!(staging_key("id", 0).unwrap().starts_with("staging/id/"));
}

// ---------------------------------------------------------------------------------------------
// Images: a manifest too big for a DynamoDB item, and layer downloads straight from S3.

/// Pushes `data` as one layer; returns its digest and where S3 holds it.
async fn push_blob(svc: &Svc, name: &str, data: &[u8]) -> (String, String) {
    let id = initiate(svc, name).await;
    let out = part(svc, name, &id, 0, data).await.unwrap();
    assert_eq!(out.last_byte_received, data.len() as u64 - 1);
    let d = digest(data);
    complete(svc, name, &id, &[&d]).await.unwrap();
    let layer = svc
        .metadata()
        .get_layer(REGISTRY, name, &d)
        .await
        .unwrap()
        .expect("the layer item");
    (d, layer.blob_key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_manifests_live_in_s3_and_layers_download_from_presigned_urls() {
    let svc = service(small_parts()).await;
    let name = repo_name("images");
    repo(&svc, &name).await;
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = noise(6 * MIB as usize + 333, 51);
    let (config_digest, config_key) = push_blob(&svc, &name, config).await;
    let (layer_digest, layer_key) = push_blob(&svc, &name, &layer).await;

    // Over the 256 KiB the service keeps in the image item.
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{}}}],"annotations":{{"pad":"{}"}}}}"#,
        config.len(),
        layer.len(),
        "p".repeat(300 * 1024)
    );
    let image_digest = digest(manifest.as_bytes());
    svc.put_image(PutImageRequest {
        image_tag: Some("big".parse().unwrap()),
        ..PutImageRequest::new(name.parse().unwrap(), manifest.clone())
    })
    .await
    .unwrap();
    let record = svc
        .metadata()
        .get_image(REGISTRY, &name, &image_digest)
        .await
        .unwrap()
        .expect("the image item");
    assert_eq!(record.manifest, None, "too big for the item");
    let manifest_key = record.manifest_key.clone().expect("kept in S3");
    assert_eq!(
        svc.blobs().object_size(&manifest_key).await.unwrap(),
        Some(manifest.len() as u64)
    );
    // The function role may write, read and delete there (template.yaml).
    let prefix = &manifest_key[..manifest_key.find('/').expect("a prefix") + 1];
    assert_role_grants_objects(prefix, &["s3:PutObject", "s3:GetObject", "s3:DeleteObject"]);
    assert_role_grants_objects("layers/", &["s3:GetObject"]);
    assert!(layer_key.starts_with("layers/"), "{layer_key}");

    let got = svc
        .batch_get_image(BatchGetImageRequest::new(
            name.parse().unwrap(),
            vec![RequestedImage::new(ImageIdentifier {
                image_digest: None,
                image_tag: Some("big".into()),
            })],
        ))
        .await
        .unwrap();
    assert!(got.failures.is_empty());
    assert_eq!(got.images.len(), 1);
    assert!(
        got.images[0].image_manifest == manifest,
        "the manifest, byte for byte"
    );

    // The layer, by a URL any HTTP client can fetch without credentials.
    let url = svc
        .get_download_url_for_layer(GetDownloadUrlForLayerRequest::new(
            name.parse().unwrap(),
            layer_digest
                .parse::<ecr_layer_upload::domain::model::Digest>()
                .unwrap()
                .into(),
        ))
        .await
        .unwrap()
        .download_url;
    let (status, body) = common::http_get(&url).await;
    assert_eq!(status, 200);
    assert!(body == layer, "the whole layer");
    let range = format!("bytes={}-{}", 5 * MIB - 7, 5 * MIB + 7);
    let (status, _, body) = common::http_request(&url, &[("Range", &range)]).await;
    assert_eq!(status, 206);
    assert!(body == layer[5 * MIB as usize - 7..=5 * MIB as usize + 7]);

    let deleted = svc
        .batch_delete_image(BatchDeleteImageRequest::new(
            name.parse().unwrap(),
            vec![RequestedImage::new(ImageIdentifier {
                image_digest: Some(image_digest.clone()),
                image_tag: None,
            })],
        ))
        .await
        .unwrap();
    assert!(deleted.failures.is_empty());
    assert_eq!(
        svc.blobs().object_size(&manifest_key).await.unwrap(),
        None,
        "the manifest object goes with its image"
    );
    assert_eq!(
        svc.metadata()
            .get_tag(REGISTRY, &name, "big")
            .await
            .unwrap(),
        None
    );
    cleanup(&svc, &name, &[config_key, layer_key]).await;
}

/// The function role in template.yaml allows `actions` on objects under `prefix`.
fn assert_role_grants_objects(prefix: &str, actions: &[&str]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml");
    let text = std::fs::read_to_string(path).expect("template.yaml");
    let resource = format!("${{Bucket.Arn}}/{prefix}*");
    // Statements are the `- Sid:` items of the role's policy.
    let granted = text.split("- Sid: ").any(|statement| {
        statement.contains("Effect: Allow")
            && statement.contains(&resource)
            && actions
                .iter()
                .all(|a| statement.contains(&format!("- {a}\n")))
    });
    assert!(granted, "template.yaml grants {actions:?} on {resource}");
}

//! The OCI Distribution API (`/v2/`, src/protocols/oci.rs) through its handler, written once and
//! run on every backend: `tests/unit/oci.rs` (in-memory and embedded) and `tests/aws/oci.rs`
//! (S3 + DynamoDB servers). The scenarios follow the workflows of the distribution-spec
//! conformance suite (push, pull, content discovery, content management) and check what it
//! checks: status codes, `Location`, `Range`, `Docker-Content-Digest`, `Content-Type`,
//! `OCI-Subject`, `Link`, and the error document's codes. Each scenario also reads what it wrote
//! through ECR's operations, or the reverse: one state behind both APIs.

// Each test crate that includes this file uses a different subset of it.
#![allow(dead_code, unused_imports)]

use bytes::Bytes;
use ecr_layer_upload::domain::model::{LayerAvailability, Sent};
use ecr_layer_upload::ports::{BlobStore, MetadataStore};
use ecr_layer_upload::protocols::oci::{self, BodyStream, Delivery, Payload};
use ecr_layer_upload::service::Service;
use ecr_layer_upload::service::types::*;
use futures_util::TryStreamExt;
use http::{HeaderMap, Method, Request};
use serde_json::{Value, json};

use crate::common::service::{complete, create_repository, initiate, part};
use crate::common::{digest, noise, unique};

pub const MIB: usize = 1024 * 1024;
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An answer of the handler, its body read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The first code of an error document.
    pub fn code(&self) -> String {
        let doc = self.json();
        let errors = doc["errors"].as_array().expect("an errors list");
        assert!(errors[0]["message"].is_string());
        errors[0]["code"].as_str().unwrap().to_string()
    }
}

/// A body that arrives in pieces of 64 KiB, as from a connection.
fn pieces(body: Vec<u8>) -> BodyStream {
    let body = Bytes::from(body);
    let chunks: Vec<Result<Bytes, oci::BodyError>> = (0..body.len())
        .step_by(64 * 1024)
        .map(|at| Ok(body.slice(at..(at + 64 * 1024).min(body.len()))))
        .collect();
    Box::pin(futures_util::stream::iter(chunks))
}

pub async fn call_with<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    delivery: Delivery,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(pieces(body)).unwrap();
    // Boxed: the handler's future over the AWS SDK's is too large for a test thread's stack.
    let resp = Box::pin(oci::handle(svc, None, delivery, req)).await;
    let (parts, payload) = resp.into_parts();
    let body = match payload {
        Payload::Full(b) => b.to_vec(),
        Payload::Blob(stream) => {
            let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
            chunks.concat()
        }
    };
    assert_eq!(
        parts
            .headers
            .get("docker-distribution-api-version")
            .unwrap(),
        "registry/2.0"
    );
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub async fn call<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    call_with(svc, Delivery::Serve, method, uri, headers, body).await
}

/// Pushes `data` as a blob of `name` monolithically (POST with `?digest=`).
pub async fn push_blob<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &str,
    data: &[u8],
) -> String {
    let d = digest(data);
    let a = call(
        svc,
        Method::POST,
        &format!("/v2/{name}/blobs/uploads/?digest={d}"),
        &[("content-type", "application/octet-stream")],
        data.to_vec(),
    )
    .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("location"), format!("/v2/{name}/blobs/{d}"));
    assert_eq!(a.header("docker-content-digest"), d);
    d
}

/// An OCI image manifest of `config` and `layers` (data, media type).
pub fn image_manifest(config: &[u8], layers: &[&[u8]], extra: Value) -> String {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": config.len()},
        "layers": layers.iter().map(|l| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(l), "size": l.len()})).collect::<Vec<_>>(),
    });
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_string(&m).unwrap()
}

pub async fn put_manifest<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &str,
    reference: &str,
    media_type: &str,
    text: &str,
) -> Answer {
    call(
        svc,
        Method::PUT,
        &format!("/v2/{name}/manifests/{reference}"),
        &[("content-type", media_type)],
        text.as_bytes().to_vec(),
    )
    .await
}

/// `GET /v2/` answers 200 with the API version; an unknown route 404.
pub async fn base_route<M: MetadataStore, B: BlobStore>(svc: Service<M, B>) {
    let a = call(&svc, Method::GET, "/v2/", &[], vec![]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json(), json!({}));
    let a = call(&svc, Method::GET, "/v2/x/nowhere", &[], vec![]).await;
    assert_eq!((a.status, a.code().as_str()), (404, "UNSUPPORTED"));
}

/// The push workflows of the conformance suite: streamed, monolithic (POST and PUT), chunked
/// with an out-of-order chunk, and every error on the way; then pull with `Range`.
pub async fn push_and_pull_blobs<M: MetadataStore, B: BlobStore>(svc: Service<M, B>) {
    let name = unique("oci/push");
    create_repository(&svc, &name).await;

    // GET of a blob not there.
    let missing = digest(b"nothing");
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/blobs/{missing}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UNKNOWN"));
    let a = call(
        &svc,
        Method::HEAD,
        &format!("/v2/{name}/blobs/{missing}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 404);
    assert!(a.body.is_empty());

    // Streamed: POST, PATCH with the whole blob, PUT with the digest.
    let blob_a = noise(300_000, 1);
    let a = call(
        &svc,
        Method::POST,
        &format!("/v2/{name}/blobs/uploads/"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 202);
    let location = a.header("location").to_string();
    assert!(location.starts_with(&format!("/v2/{name}/blobs/uploads/")));
    let a = call(
        &svc,
        Method::PATCH,
        &location,
        &[("content-type", "application/octet-stream")],
        blob_a.clone(),
    )
    .await;
    assert_eq!(a.status, 202);
    assert_eq!(a.header("range"), format!("0-{}", blob_a.len() - 1));
    // Upload status.
    let a = call(&svc, Method::GET, &location, &[], vec![]).await;
    assert_eq!(a.status, 204);
    assert_eq!(a.header("range"), format!("0-{}", blob_a.len() - 1));
    let location = a.header("location").to_string();
    let a = call(
        &svc,
        Method::PUT,
        &format!("{location}?digest={}", digest(&blob_a)),
        &[("content-length", "0")],
        vec![],
    )
    .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("docker-content-digest"), digest(&blob_a));
    // The session is gone once complete.
    let a = call(&svc, Method::GET, &location, &[], vec![]).await;
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));

    // Monolithic POST, and monolithic PUT after an empty POST.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    push_blob(&svc, &name, &config).await;
    let blob_b = noise(1000, 2);
    let a = call(
        &svc,
        Method::POST,
        &format!("/v2/{name}/blobs/uploads/"),
        &[],
        vec![],
    )
    .await;
    let a = call(
        &svc,
        Method::PUT,
        &format!("{}?digest={}", a.header("location"), digest(&blob_b)),
        &[("content-type", "application/octet-stream")],
        blob_b.clone(),
    )
    .await;
    assert_eq!(a.status, 201);

    // Chunked: an out-of-order chunk is 416; then two chunks, the last one with the PUT.
    let blob_c = noise(12 * MIB + 5, 3);
    let (c1, c2) = blob_c.split_at(7 * MIB + 1);
    let a = call(
        &svc,
        Method::POST,
        &format!("/v2/{name}/blobs/uploads/"),
        &[("content-length", "0")],
        vec![],
    )
    .await;
    let location = a.header("location").to_string();
    let range2 = format!("{}-{}", c1.len(), blob_c.len() - 1);
    let a = call(
        &svc,
        Method::PATCH,
        &location,
        &[
            ("content-range", &range2),
            ("content-length", &c2.len().to_string()),
        ],
        c2.to_vec(),
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (416, "BLOB_UPLOAD_INVALID"));
    assert_eq!(a.header("range"), "0-0");
    let range1 = format!("0-{}", c1.len() - 1);
    let a = call(
        &svc,
        Method::PATCH,
        &location,
        &[
            ("content-range", &range1),
            ("content-length", &c1.len().to_string()),
        ],
        c1.to_vec(),
    )
    .await;
    assert_eq!(a.status, 202);
    assert_eq!(a.header("range"), range1);
    // The same chunk again no longer fits.
    let a = call(
        &svc,
        Method::PATCH,
        &location,
        &[("content-range", &range1)],
        c1.to_vec(),
    )
    .await;
    assert_eq!(a.status, 416);
    assert_eq!(a.header("range"), range1);
    let a = call(
        &svc,
        Method::PUT,
        &format!("{location}?digest={}", digest(&blob_c)),
        &[
            ("content-range", &range2),
            ("content-length", &c2.len().to_string()),
        ],
        c2.to_vec(),
    )
    .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));

    // Pull: whole, HEAD, ranges.
    for blob in [&blob_a, &blob_b, &blob_c, &config] {
        let url = format!("/v2/{name}/blobs/{}", digest(blob));
        let a = call(&svc, Method::GET, &url, &[], vec![]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("docker-content-digest"), digest(blob));
        assert_eq!(a.header("content-length"), blob.len().to_string());
        assert!(a.body == *blob, "blob bytes differ");
        let a = call(&svc, Method::HEAD, &url, &[], vec![]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-length"), blob.len().to_string());
        assert!(a.body.is_empty());
    }
    let url = format!("/v2/{name}/blobs/{}", digest(&blob_c));
    let a = call(&svc, Method::GET, &url, &[("range", "bytes=10-19")], vec![]).await;
    assert_eq!(a.status, 206);
    assert_eq!(
        a.header("content-range"),
        format!("bytes 10-19/{}", blob_c.len())
    );
    assert_eq!(a.body, &blob_c[10..20]);
    let a = call(&svc, Method::GET, &url, &[("range", "bytes=-4")], vec![]).await;
    assert_eq!(a.body, &blob_c[blob_c.len() - 4..]);
    let a = call(
        &svc,
        Method::GET,
        &url,
        &[("range", &format!("bytes={}-", blob_c.len()))],
        vec![],
    )
    .await;
    assert_eq!(a.status, 416);
    assert_eq!(
        a.header("content-range"),
        format!("bytes */{}", blob_c.len())
    );

    // What /v2/ pushed is a layer of the ECR API.
    let out = svc
        .batch_check_layer_availability(BatchCheckLayerAvailabilityRequest::new(
            name.parse().unwrap(),
            vec![Sent {
                text: digest(&blob_c),
                value: Ok(digest(&blob_c).parse().unwrap()),
            }],
        ))
        .await
        .unwrap();
    assert_eq!(
        out.layers[0].layer_availability,
        LayerAvailability::Available
    );
    assert_eq!(out.layers[0].layer_size, Some(blob_c.len() as u64));
}

/// Errors of uploads: a wrong digest, a missing or malformed digest, an unknown or cancelled
/// session, a repository that does not exist, an invalid name.
pub async fn upload_errors<M: MetadataStore, B: BlobStore>(svc: Service<M, B>) {
    let name = unique("oci/errors");
    create_repository(&svc, &name).await;
    let uploads = format!("/v2/{name}/blobs/uploads/");
    let data = noise(5000, 4);

    let a = call(
        &svc,
        Method::POST,
        &format!("{uploads}?digest={}", digest(b"other")),
        &[],
        data.clone(),
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));
    let a = call(
        &svc,
        Method::POST,
        &format!("{uploads}?digest=sha256:xyz"),
        &[],
        data.clone(),
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));

    let a = call(&svc, Method::POST, &uploads, &[], vec![]).await;
    let location = a.header("location").to_string();
    let a = call(&svc, Method::PUT, &location, &[], data.clone()).await;
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));
    let a = call(&svc, Method::DELETE, &location, &[], vec![]).await;
    assert_eq!(a.status, 204);
    let a = call(&svc, Method::PATCH, &location, &[], data.clone()).await;
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let a = call(
        &svc,
        Method::GET,
        &format!("{uploads}not-an-id"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));

    let a = call(
        &svc,
        Method::POST,
        "/v2/oci/never-created/blobs/uploads/",
        &[],
        vec![],
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (404, "NAME_UNKNOWN"));
    let a = call(&svc, Method::GET, "/v2/Bad_Name/tags/list", &[], vec![]).await;
    assert_eq!((a.status, a.code().as_str()), (400, "NAME_INVALID"));

    // The empty blob.
    let empty = digest(b"");
    let a = call(
        &svc,
        Method::POST,
        &format!("{uploads}?digest={empty}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/blobs/{empty}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((a.status, a.body.len()), (200, 0));

    // A blob pushed twice is simply there.
    push_blob(&svc, &name, &data).await;
    push_blob(&svc, &name, &data).await;
}

/// Manifests by tag and by digest, of the four media types; tags listed with paging;
/// manifests and tags deleted; and the same images read through ECR's operations.
pub async fn manifests_and_tags<M: MetadataStore, B: BlobStore>(svc: Service<M, B>) {
    let name = unique("oci/manifests");
    create_repository(&svc, &name).await;
    let config = br#"{"os":"linux"}"#.to_vec();
    let layer = noise(4096, 5);
    push_blob(&svc, &name, &config).await;
    push_blob(&svc, &name, &layer).await;

    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/manifests/nope"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (404, "MANIFEST_UNKNOWN"));

    let text = image_manifest(&config, &[&layer], json!({}));
    let d = digest(text.as_bytes());
    for i in 0..4 {
        let a = put_manifest(&svc, &name, &format!("test{i}"), OCI_MANIFEST, &text).await;
        assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.header("location"), format!("/v2/{name}/manifests/{d}"));
        assert_eq!(a.header("docker-content-digest"), d);
    }
    // Again under the same tag: nothing changes, still 201.
    assert_eq!(
        put_manifest(&svc, &name, "test0", OCI_MANIFEST, &text)
            .await
            .status,
        201
    );
    for reference in ["test0", d.as_str()] {
        let url = format!("/v2/{name}/manifests/{reference}");
        let a = call(&svc, Method::GET, &url, &[("accept", OCI_MANIFEST)], vec![]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), OCI_MANIFEST);
        assert_eq!(a.header("docker-content-digest"), d);
        assert_eq!(a.body, text.as_bytes());
        let a = call(&svc, Method::HEAD, &url, &[], vec![]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-length"), text.len().to_string());
        assert!(a.body.is_empty());
    }

    // A manifest whose blob is missing, one that is no manifest, one under a wrong digest.
    let missing = image_manifest(&config, &[b"not pushed"], json!({}));
    let a = put_manifest(&svc, &name, "broken", OCI_MANIFEST, &missing).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );
    let a = put_manifest(&svc, &name, "broken", OCI_MANIFEST, "{not json").await;
    assert_eq!((a.status, a.code().as_str()), (400, "MANIFEST_INVALID"));
    let a = put_manifest(&svc, &name, &digest(b"x"), OCI_MANIFEST, &text).await;
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));

    // Docker schema 2 and a manifest list; an OCI index by digest.
    let docker = text.replace(OCI_MANIFEST, DOCKER_MANIFEST);
    let a = put_manifest(&svc, &name, "docker", DOCKER_MANIFEST, &docker).await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let list = serde_json::to_string(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": digest(docker.as_bytes()), "size": docker.len(), "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    assert_eq!(
        put_manifest(&svc, &name, "list", DOCKER_LIST, &list)
            .await
            .status,
        201
    );
    let index = serde_json::to_string(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": d, "size": text.len(), "platform": {"architecture": "arm64", "os": "linux"}}],
    }))
    .unwrap();
    let index_digest = digest(index.as_bytes());
    assert_eq!(
        put_manifest(&svc, &name, &index_digest, OCI_INDEX, &index)
            .await
            .status,
        201
    );
    for (reference, media_type) in [
        ("docker", DOCKER_MANIFEST),
        ("list", DOCKER_LIST),
        (index_digest.as_str(), OCI_INDEX),
    ] {
        let a = call(
            &svc,
            Method::GET,
            &format!("/v2/{name}/manifests/{reference}"),
            &[],
            vec![],
        )
        .await;
        assert_eq!((a.status, a.header("content-type")), (200, media_type));
    }

    // Tags, a page at a time.
    let all = ["docker", "list", "test0", "test1", "test2", "test3"];
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/tags/list"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.json(), json!({"name": name, "tags": all}));
    assert_eq!(a.header("link"), "");
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/tags/list?n=3"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.json()["tags"], json!(all[..3]));
    assert_eq!(
        a.header("link"),
        format!("</v2/{name}/tags/list?n=3&last=test0>; rel=\"next\"")
    );
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/tags/list?n=3&last=test0"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.json()["tags"], json!(all[3..]));
    assert_eq!(a.header("link"), "");
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/tags/list?n=x"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 400);

    // The ECR API sees the same images and tags.
    let got = svc
        .batch_get_image(BatchGetImageRequest::new(
            name.parse().unwrap(),
            vec![RequestedImage::new(ImageIdentifier {
                image_digest: None,
                image_tag: Some("test2".into()),
            })],
        ))
        .await
        .unwrap();
    assert_eq!(got.images[0].image_manifest, text);
    assert_eq!(
        got.images[0].image_id.image_digest.as_deref(),
        Some(d.as_str())
    );

    // Deleting a tag keeps the image for its other tags; deleting by digest takes it and its
    // tags, unless an index lists it.
    let a = call(
        &svc,
        Method::DELETE,
        &format!("/v2/{name}/manifests/test3"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 202);
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/manifests/test3"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 404);
    let a = call(
        &svc,
        Method::DELETE,
        &format!("/v2/{name}/manifests/{d}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 400, "an index lists it");
    let a = call(
        &svc,
        Method::DELETE,
        &format!("/v2/{name}/manifests/{index_digest}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 202);
    let a = call(
        &svc,
        Method::DELETE,
        &format!("/v2/{name}/manifests/{d}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 202);
    for reference in [d.as_str(), "test0", "test1"] {
        let a = call(
            &svc,
            Method::GET,
            &format!("/v2/{name}/manifests/{reference}"),
            &[],
            vec![],
        )
        .await;
        assert_eq!((a.status, a.code().as_str()), (404, "MANIFEST_UNKNOWN"));
    }
    let a = call(
        &svc,
        Method::DELETE,
        &format!("/v2/{name}/manifests/{d}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/tags/list"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.json()["tags"], json!(["docker", "list"]));
}

/// The referrers API: artifacts with a `subject` (before and after the subject exists), their
/// `OCI-Subject`, annotations and artifact types, and the `artifactType` filter.
pub async fn referrers<M: MetadataStore, B: BlobStore>(svc: Service<M, B>) {
    let name = unique("oci/referrers");
    create_repository(&svc, &name).await;
    let empty_json = b"{}".to_vec();
    let config = br#"{"os":"linux","n":1}"#.to_vec();
    let layer = noise(2048, 6);
    for blob in [&empty_json, &config, &layer] {
        push_blob(&svc, &name, blob).await;
    }
    let subject = image_manifest(&config, &[&layer], json!({}));
    let subject_digest = digest(subject.as_bytes());
    let descriptor =
        json!({"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject.len()});
    let artifact = |kind: &str, note: &str| {
        serde_json::to_string(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": kind,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(b"{}"), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(b"{}"), "size": 2}],
            "subject": descriptor,
            "annotations": {"org.example.note": note},
        }))
        .unwrap()
    };
    let sig = artifact("application/vnd.example.sig", "a");
    let sbom = artifact("application/vnd.example.sbom", "b");
    // A referrer pushed before its subject.
    let a = put_manifest(&svc, &name, &digest(sig.as_bytes()), OCI_MANIFEST, &sig).await;
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.header("oci-subject"), subject_digest);
    assert_eq!(
        put_manifest(&svc, &name, "v1", OCI_MANIFEST, &subject)
            .await
            .header("oci-subject"),
        ""
    );
    let a = put_manifest(&svc, &name, &digest(sbom.as_bytes()), OCI_MANIFEST, &sbom).await;
    assert_eq!(a.header("oci-subject"), subject_digest);

    let url = format!("/v2/{name}/referrers/{subject_digest}");
    let a = call(&svc, Method::GET, &url, &[], vec![]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), OCI_INDEX);
    let index = a.json();
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for m in listed {
        let text = if m["digest"] == digest(sig.as_bytes()) {
            &sig
        } else {
            &sbom
        };
        assert_eq!(m["size"], text.len());
        assert_eq!(m["mediaType"], OCI_MANIFEST);
        let note = if text == &sig { "a" } else { "b" };
        assert_eq!(m["annotations"], json!({"org.example.note": note}));
    }
    let a = call(
        &svc,
        Method::GET,
        &format!("{url}?artifactType=application/vnd.example.sbom"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.header("oci-filters-applied"), "artifactType");
    let listed = a.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["digest"], digest(sbom.as_bytes()));
    assert_eq!(listed[0]["artifactType"], "application/vnd.example.sbom");

    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/referrers/{}", digest(b"none")),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["manifests"], json!([]));
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/referrers/bad"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));
}

/// Cross-repository mount, with the fallback to a plain upload; the catalog with paging.
pub async fn mount_and_catalog<M: MetadataStore, B: BlobStore>(svc: Service<M, B>) {
    let (from, to) = (unique("oci/mount-a"), unique("oci/mount-b"));
    create_repository(&svc, &from).await;
    create_repository(&svc, &to).await;
    let data = noise(70_000, 7);
    let d = push_blob(&svc, &from, &data).await;
    let a = call(
        &svc,
        Method::POST,
        &format!("/v2/{to}/blobs/uploads/?mount={d}&from={from}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.header("location"), format!("/v2/{to}/blobs/{d}"));
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{to}/blobs/{d}"),
        &[],
        vec![],
    )
    .await;
    assert!(a.status == 200 && a.body == data);
    // Mounted again: still 201.
    let a = call(
        &svc,
        Method::POST,
        &format!("/v2/{to}/blobs/uploads/?mount={d}&from={from}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 201);
    // Not mountable (unknown blob, unknown repository, no `from`): a plain upload session.
    let other = digest(b"unknown");
    for query in [
        format!("mount={other}&from={from}"),
        format!("mount={d}&from=oci/none"),
        format!("mount={d}"),
    ] {
        let a = call(
            &svc,
            Method::POST,
            &format!("/v2/{to}/blobs/uploads/?{query}"),
            &[],
            vec![],
        )
        .await;
        assert_eq!(a.status, 202, "{query}");
        assert!(a.header("location").contains("/blobs/uploads/"));
    }

    let a = call(&svc, Method::GET, "/v2/_catalog", &[], vec![]).await;
    assert_eq!(a.status, 200);
    let all: Vec<String> = serde_json::from_value(a.json()["repositories"].clone()).unwrap();
    assert!(all.contains(&from) && all.contains(&to));
    let a = call(&svc, Method::GET, "/v2/_catalog?n=1", &[], vec![]).await;
    let first: Vec<String> = serde_json::from_value(a.json()["repositories"].clone()).unwrap();
    assert_eq!(first, all[..1]);
    assert_eq!(
        a.header("link"),
        format!(
            "</v2/_catalog?n=1&last={}>; rel=\"next\"",
            first[0].replace('/', "%2F")
        )
    );
}

/// An image pushed through ECR's operations is pulled through `/v2/`.
pub async fn ecr_push_oci_pull<M: MetadataStore, B: BlobStore>(svc: Service<M, B>) {
    let name = unique("oci/cross");
    create_repository(&svc, &name).await;
    let config = br#"{"os":"linux","via":"ecr"}"#.to_vec();
    let layer = noise(3 * MIB + 17, 8);
    for blob in [&config, &layer] {
        let id = initiate(&svc, &name).await;
        part(&svc, &name, &id, 0, blob).await.unwrap();
        complete(&svc, &name, &id, &[&digest(blob)]).await.unwrap();
    }
    let text = image_manifest(&config, &[&layer], json!({}));
    let mut req = PutImageRequest::new(name.parse().unwrap(), text.clone());
    req.image_tag = Some("v1".parse().unwrap());
    svc.put_image(req).await.unwrap();
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/manifests/v1"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, text.as_bytes());
    assert_eq!(a.header("docker-content-digest"), digest(text.as_bytes()));
    let a = call(
        &svc,
        Method::GET,
        &format!("/v2/{name}/blobs/{}", digest(&layer)),
        &[],
        vec![],
    )
    .await;
    assert!(a.status == 200 && a.body == layer);
}

/// Behind Lambda: a blob GET is a 307 to the blob store's URL (HEAD still answers itself), and
/// a request over the payload cap is refused naming the limit and the push client.
pub async fn lambda_delivery<M: MetadataStore, B: BlobStore>(svc: Service<M, B>) {
    let name = unique("oci/lambda");
    create_repository(&svc, &name).await;
    let data = noise(10_000, 9);
    let d = push_blob(&svc, &name, &data).await;
    let lambda = Delivery::Redirect {
        max_request: 6_291_456,
    };
    let url = format!("/v2/{name}/blobs/{d}");
    let a = call_with(&svc, lambda, Method::GET, &url, &[], vec![]).await;
    assert_eq!(a.status, 307);
    assert!(!a.header("location").is_empty());
    assert_eq!(a.header("docker-content-digest"), d);
    let a = call_with(&svc, lambda, Method::HEAD, &url, &[], vec![]).await;
    assert_eq!((a.status, a.header("content-length")), (200, "10000"));
    let a = call_with(
        &svc,
        lambda,
        Method::PATCH,
        &format!("/v2/{name}/blobs/uploads/00000000-0000-0000-0000-000000000000"),
        &[("content-length", "7000000")],
        vec![],
    )
    .await;
    assert_eq!((a.status, a.code().as_str()), (413, "SIZE_INVALID"));
    let message = a.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("6291456") && message.contains("ecr-layer-upload push"),
        "{message}"
    );
}

/// Pushes to a repository that does not exist create it when the setting says so.
pub async fn create_on_push<M: MetadataStore, B: BlobStore>(svc: Service<M, B>) {
    assert!(svc.settings().create_on_push);
    let name = unique("oci/created");
    let config = b"{}".to_vec();
    push_blob(&svc, &name, &config).await;
    let layer = noise(100, 10);
    push_blob(&svc, &name, &layer).await;
    let text = image_manifest(&config, &[&layer], json!({}));
    assert_eq!(
        put_manifest(&svc, &name, "v1", OCI_MANIFEST, &text)
            .await
            .status,
        201
    );
    let out = svc
        .describe_repositories(DescribeRepositoriesRequest::new(
            RepositorySelection::Named(vec![name.parse().unwrap()]),
        ))
        .await
        .unwrap();
    assert_eq!(out.repositories[0].repository_name, name);
    // Reads never create.
    let a = call(&svc, Method::GET, "/v2/oci/not-here/tags/list", &[], vec![]).await;
    assert_eq!((a.status, a.code().as_str()), (404, "NAME_UNKNOWN"));
}

/// One `#[tokio::test]` per scenario, on the service that `$make` builds (an expression of
/// `Settings`).
#[macro_export]
macro_rules! oci_scenarios {
    ($make:expr) => {
        #[tokio::test]
        async fn base_route() {
            Box::pin(oci_suite::base_route($make(Settings::default()).await)).await
        }
        #[tokio::test]
        async fn push_and_pull_blobs() {
            Box::pin(oci_suite::push_and_pull_blobs(
                $make(Settings::default()).await,
            ))
            .await
        }
        #[tokio::test]
        async fn upload_errors() {
            Box::pin(oci_suite::upload_errors($make(Settings::default()).await)).await
        }
        #[tokio::test]
        async fn manifests_and_tags() {
            Box::pin(oci_suite::manifests_and_tags(
                $make(Settings::default()).await,
            ))
            .await
        }
        #[tokio::test]
        async fn referrers() {
            Box::pin(oci_suite::referrers($make(Settings::default()).await)).await
        }
        #[tokio::test]
        async fn mount_and_catalog() {
            Box::pin(oci_suite::mount_and_catalog(
                $make(Settings::default()).await,
            ))
            .await
        }
        #[tokio::test]
        async fn ecr_push_oci_pull() {
            Box::pin(oci_suite::ecr_push_oci_pull(
                $make(Settings::default()).await,
            ))
            .await
        }
        #[tokio::test]
        async fn lambda_delivery() {
            Box::pin(oci_suite::lambda_delivery($make(Settings::default()).await)).await
        }
        #[tokio::test]
        async fn create_on_push() {
            let settings = Settings {
                create_on_push: true,
                ..Settings::default()
            };
            Box::pin(oci_suite::create_on_push($make(settings).await)).await
        }
    };
}

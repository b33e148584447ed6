//! Every fixture in events/ goes through the Lambda handler in-process, as the Lambda runtime
//! delivers it (`lambda_http::request::from_str`), and the answer is what a client must see.

use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};
use ecr_layer_upload::frontdoors::lambda;
use ecr_layer_upload::ports::{BlobStore, MetadataStore, UploadRecord, UploadState};
use ecr_layer_upload::service::{Service, Settings};
use lambda_http::{Body, IntoResponse};
use serde_json::Value;

const UPLOAD_ID: &str = "0b7a3b1e-5c1d-4a4e-9a52-3f6c2d9e8f10";
const CONFIG_UPLOAD_ID: &str = "6d2f0c4a-8b3e-4f71-a2c5-9e1b7d3f5a60";
const PART: &[u8] = b"layer bytes of a tiny example layer\n";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

type Svc = Service<MemoryMetadata, MemoryBlobs>;

fn service() -> Svc {
    Service::new(
        MemoryMetadata::new(),
        MemoryBlobs::new(),
        Settings::default(),
    )
}

fn fixture(name: &str) -> String {
    let path = format!("{}/events/{name}.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The JSON request a fixture carries, decoded as the handler decodes it.
fn request_of(name: &str) -> Value {
    let event: Value = serde_json::from_str(&fixture(name)).unwrap();
    let body = event["body"].as_str().unwrap();
    let raw = if event["isBase64Encoded"] == true {
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap()
    } else {
        body.as_bytes().to_vec()
    };
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn sha256(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data))
    )
}

/// Runs a fixture through the handler and the runtime's response conversion; returns the
/// status and the JSON body, after checking the headers every answer carries.
async fn invoke(svc: &Svc, name: &str) -> (u16, Value) {
    let (status, json, _) = invoke_raw(svc, name).await;
    (status, json)
}

/// Every answer of [`every_fixture_gets_the_modelled_answer`], in order, as a client receives
/// it (see [`answer_record`]): the golden record in tests/fixtures/answers.txt pins them.
static ANSWERS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// One answer as text: fixture, status, the headers a client reads (not the per-request id) and
/// the body byte for byte, with the values that differ on every run (fresh upload ids,
/// timestamps, the download URL's expiry) replaced by placeholders.
fn answer_record(name: &str, status: u16, headers: &http::HeaderMap, body: &str) -> String {
    let mut keys: Vec<&str> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| *k != "x-amzn-requestid")
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut out = format!("{name} {status}\n");
    for k in keys {
        for v in headers.get_all(k) {
            out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
        }
    }
    let mut body = body.to_string();
    for member in ["createdAt", "imagePushedAt"] {
        body = replace_member_value(&body, member, "<time>");
    }
    if name == "initiate-layer-upload" {
        body = replace_member_value(&body, "uploadId", "<uuid>");
    }
    if let Some(at) = body.find("?expires=") {
        let end = body[at..].find('"').map_or(body.len(), |e| at + e);
        body.replace_range(at..end, "?expires=<secs>");
    }
    out.push_str(&body);
    out.push('\n');
    out
}

/// `"member":<value>` with the (number or string) value replaced, everywhere in `text`.
fn replace_member_value(text: &str, member: &str, with: &str) -> String {
    let needle = format!("\"{member}\":");
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(&needle) {
        let start = at + needle.len();
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let len = if let Some(s) = tail.strip_prefix('"') {
            s.find('"').map_or(tail.len(), |e| e + 2)
        } else {
            tail.find([',', '}']).unwrap_or(tail.len())
        };
        out.push_str(with);
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

async fn invoke_raw(svc: &Svc, name: &str) -> (u16, Value, String) {
    let req = lambda_http::request::from_str(&fixture(name)).expect("fixture parses as an event");
    let resp = lambda::handle(svc, req).await;
    // What the Lambda runtime does before serializing the response for the front door.
    let resp = resp.into_response().await;
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()["content-type"],
        "application/x-amz-json-1.1",
        "{name}"
    );
    let request_id = resp.headers()["x-amzn-requestid"].to_str().unwrap();
    assert_eq!(request_id.len(), 36, "{name}: request id {request_id}");
    let text = match resp.body() {
        Body::Text(t) => t.clone(),
        other => panic!("{name}: body must reach the client as text, got {other:?}"),
    };
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
    if status != 200 {
        assert_eq!(
            resp.headers()["x-amzn-errortype"].to_str().unwrap(),
            json["__type"].as_str().unwrap(),
            "{name}"
        );
    }
    let record = answer_record(name, status, resp.headers(), &text);
    ANSWERS.lock().unwrap().push(record.clone());
    (status, json, record)
}

async fn expect_error(svc: &Svc, name: &str, error: &str) -> Value {
    let (status, json) = invoke(svc, name).await;
    assert_eq!(status, 400, "{name}: {json}");
    assert_eq!(json["__type"], error, "{name}: {json}");
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{name}: {json}"
    );
    json
}

/// Puts an upload the fixtures name in place, as InitiateLayerUpload would with that id; `key`
/// is where its blob goes (InitiateLayerUpload gives every upload a key of its own).
async fn seed_upload(svc: &Svc, upload_id: &str, key: &str) {
    let key = key.to_string();
    let multipart_id = svc.blobs().create_multipart(&key).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let record = UploadRecord {
        upload_id: upload_id.into(),
        registry_id: "123456789012".into(),
        repository: "sample/app".into(),
        blob_key: key,
        multipart_id,
        next_byte: 0,
        flushed_bytes: 0,
        parts_flushed: 0,
        last_part: None,
        smallest_nonfinal_part: None,
        state: UploadState::Open,
        version: 1,
        created_at_ms: now.as_millis() as u64,
        updated_at_ms: now.as_millis() as u64,
        expires_at: now.as_secs() + 3600,
    };
    svc.metadata().create_upload(&record).await.unwrap();
}

/// The image fixtures, in the order a push goes: config blob, PutImage, reads, deletion. Runs
/// after complete-layer-upload (the layer PART is in the repository) and before
/// delete-repository.
async fn image_fixtures(svc: &Svc, run: &mut impl FnMut(&'static str) -> &'static str) {
    let layer = sha256(PART);
    let config_req = request_of("upload-config-part");
    let config = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        config_req["layerPartBlob"].as_str().unwrap(),
    )
    .unwrap();
    let config_digest = sha256(&config);
    let put_req = request_of("put-image");
    let manifest = put_req["imageManifest"].as_str().unwrap();
    let image = sha256(manifest.as_bytes());
    let absent_manifest = request_of("error-layers-not-found")["imageManifest"]
        .as_str()
        .unwrap()
        .to_string();
    let absent: Value = serde_json::from_str(&absent_manifest).unwrap();
    let absent = absent["layers"][0]["digest"].as_str().unwrap().to_string();

    // The config blob, through an upload of its own.
    seed_upload(svc, CONFIG_UPLOAD_ID, &format!("layers/{CONFIG_UPLOAD_ID}")).await;
    let (status, json) = invoke(svc, run("upload-config-part")).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["uploadId"], CONFIG_UPLOAD_ID);
    assert_eq!(json["lastByteReceived"], config.len() - 1);
    let (status, json) = invoke(svc, run("complete-config-upload")).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["layerDigest"], config_digest);

    // Pushed, not yet referenced: available without a media type, and not served.
    let (status, json) = invoke(svc, run("batch-check-layer-availability")).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["failures"], serde_json::json!([]), "{json}");
    let layers = json["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{json}");
    assert_eq!(layers[0]["layerDigest"], layer);
    assert_eq!(layers[0]["layerAvailability"], "AVAILABLE");
    assert_eq!(layers[0]["layerSize"], PART.len());
    assert!(layers[0].get("mediaType").is_none(), "{json}");
    assert_eq!(layers[1]["layerDigest"], config_digest);
    assert_eq!(layers[1]["layerAvailability"], "AVAILABLE");
    assert_eq!(layers[1]["layerSize"], config.len());
    assert_eq!(layers[2]["layerDigest"], absent);
    assert_eq!(layers[2]["layerAvailability"], "UNAVAILABLE");
    assert!(layers[2].get("layerSize").is_none(), "{json}");
    let json = expect_error(
        svc,
        run("error-layer-inaccessible"),
        "LayerInaccessibleException",
    )
    .await;
    assert!(json["message"].as_str().unwrap().contains(&layer), "{json}");

    // A manifest naming a blob the repository lacks: only the absent one is reported.
    let json = expect_error(
        svc,
        run("error-layers-not-found"),
        "LayersNotFoundException",
    )
    .await;
    let message = json["message"].as_str().unwrap();
    assert!(message.contains(&absent), "{json}");
    assert!(!message.contains(&config_digest), "{json}");

    let (status, json) = invoke(svc, run("put-image")).await;
    assert_eq!(status, 200, "{json}");
    let put = &json["image"];
    assert_eq!(put["imageId"]["imageDigest"], image);
    assert_eq!(put["imageId"]["imageTag"], "v1");
    // Byte for byte what was sent: clients check the digest against this text.
    assert_eq!(put["imageManifest"].as_str().unwrap(), manifest);
    assert_eq!(put["imageManifestMediaType"], OCI_MANIFEST);
    assert_eq!(put["repositoryName"], "sample/app");
    assert_eq!(put["registryId"], "123456789012");
    let json = expect_error(
        svc,
        run("error-image-already-exists"),
        "ImageAlreadyExistsException",
    )
    .await;
    assert_eq!(
        json["message"],
        format!(
            "Image with digest '{image}' and tag 'v1' already exists in the repository with name 'sample/app' in registry with id '123456789012'"
        )
    );
    let (status, json) = invoke(svc, run("put-image-tag-latest")).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["image"]["imageId"]["imageDigest"], image);
    assert_eq!(json["image"]["imageId"]["imageTag"], "latest");

    // Referenced now: each blob carries the media type its descriptor gave.
    let (status, json) = invoke(svc, "batch-check-layer-availability").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["layers"][0]["mediaType"], LAYER_TYPE, "{json}");
    assert_eq!(json["layers"][1]["mediaType"], CONFIG_TYPE, "{json}");
    assert!(json["layers"][2].get("mediaType").is_none(), "{json}");

    let (status, json) = invoke(svc, run("batch-get-image")).await;
    assert_eq!(status, 200, "{json}");
    let images = json["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{json}");
    for got in images {
        assert_eq!(got["imageId"]["imageDigest"], image);
        assert_eq!(got["imageManifest"].as_str().unwrap(), manifest);
        assert_eq!(got["imageManifestMediaType"], OCI_MANIFEST);
        assert_eq!(got["repositoryName"], "sample/app");
    }
    assert_eq!(images[0]["imageId"]["imageTag"], "v1");
    assert!(images[1]["imageId"].get("imageTag").is_none(), "{json}");
    let failures = json["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{json}");
    assert_eq!(
        failures[0]["imageId"],
        serde_json::json!({"imageTag": "nope"})
    );
    assert_eq!(failures[0]["failureCode"], "ImageNotFound");
    assert_eq!(failures[0]["failureReason"], "Requested image not found");

    // maxResults 1 of two entries (one per tag): a page and a token for the next one.
    let (status, json) = invoke(svc, run("list-images")).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        json["imageIds"],
        serde_json::json!([{"imageDigest": image, "imageTag": "latest"}])
    );
    assert!(
        json["nextToken"].as_str().is_some_and(|t| !t.is_empty()),
        "{json}"
    );

    // Everything on one page: no token.
    let (status, json) = invoke(svc, run("describe-images")).await;
    assert_eq!(status, 200, "{json}");
    assert!(json.get("nextToken").is_none(), "{json}");
    let details = json["imageDetails"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{json}");
    let d = &details[0];
    assert_eq!(d["imageDigest"], image);
    assert_eq!(d["imageTags"], serde_json::json!(["latest", "v1"]));
    assert_eq!(d["imageSizeInBytes"], PART.len());
    assert_eq!(d["imageManifestMediaType"], OCI_MANIFEST);
    assert_eq!(d["artifactMediaType"], CONFIG_TYPE);
    assert_eq!(d["imageStatus"], "ACTIVE");
    assert_eq!(d["registryId"], "123456789012");
    assert_eq!(d["repositoryName"], "sample/app");
    assert!(d["imagePushedAt"].is_number(), "{json}");

    let (status, json) = invoke(svc, run("get-download-url-for-layer")).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["layerDigest"], layer);
    // In-memory blobs answer `memory:///<key>?expires=<secs>`; the key must hold the layer.
    let url = json["downloadUrl"].as_str().unwrap();
    let key = url
        .strip_prefix("memory:///")
        .and_then(|rest| rest.split('?').next())
        .unwrap_or_else(|| panic!("download URL {url}"));
    assert_eq!(svc.blobs().get_object(key).await.unwrap().as_ref(), PART);

    let json = expect_error(
        svc,
        run("error-repository-not-empty"),
        "RepositoryNotEmptyException",
    )
    .await;
    assert_eq!(
        json["message"],
        "The repository with name 'sample/app' in registry with id '123456789012' cannot be deleted because it still contains images"
    );

    // By digest: the image and both its tags go; the unknown tag is a failure.
    let (status, json) = invoke(svc, run("batch-delete-image")).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        json["imageIds"],
        serde_json::json!([
            {"imageDigest": image, "imageTag": "latest"},
            {"imageDigest": image, "imageTag": "v1"},
        ])
    );
    let failures = json["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{json}");
    assert_eq!(
        failures[0]["imageId"],
        serde_json::json!({"imageTag": "nope"})
    );
    assert_eq!(failures[0]["failureCode"], "ImageNotFound");
    let (status, json) = invoke(svc, "list-images").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["imageIds"], serde_json::json!([]));
    assert!(json.get("nextToken").is_none(), "{json}");
    // Gone by tag and by digest alike.
    let (status, json) = invoke(svc, "batch-get-image").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["images"], serde_json::json!([]));
    let failures = json["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{json}");
    assert!(
        failures.iter().all(|f| f["failureCode"] == "ImageNotFound"),
        "{json}"
    );
}

#[tokio::test]
async fn every_fixture_gets_the_modelled_answer() {
    let svc = service();
    let names: Vec<String> = std::fs::read_dir(format!("{}/events", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".json")
                .to_string()
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut run = |name: &'static str| {
        assert!(names.iter().any(|n| n == name), "fixture {name} is missing");
        seen.insert(name);
        name
    };

    expect_error(
        &svc,
        run("error-repository-not-found"),
        "RepositoryNotFoundException",
    )
    .await;
    let (status, json) = invoke(&svc, run("create-repository")).await;
    assert_eq!(status, 200, "{json}");
    let repo = &json["repository"];
    assert_eq!(repo["repositoryName"], "sample/app");
    assert_eq!(repo["registryId"], "123456789012");
    assert_eq!(
        repo["repositoryArn"],
        "arn:aws:ecr:us-east-1:123456789012:repository/sample/app"
    );
    assert_eq!(
        repo["repositoryUri"],
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/sample/app"
    );
    assert!(repo["createdAt"].is_number());
    let json = expect_error(
        &svc,
        run("error-repository-already-exists"),
        "RepositoryAlreadyExistsException",
    )
    .await;
    assert_eq!(
        json["message"],
        "The repository with name 'sample/app' already exists in the registry with id '123456789012'"
    );

    let (status, json) = invoke(&svc, run("describe-repositories")).await;
    assert_eq!(status, 200);
    assert_eq!(json["repositories"].as_array().unwrap().len(), 1);

    let (status, json) = invoke(&svc, run("initiate-layer-upload")).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["partSize"], 10_485_760);
    assert_eq!(json["uploadId"].as_str().unwrap().len(), 36);

    seed_upload(&svc, UPLOAD_ID, &format!("layers/{UPLOAD_ID}")).await;
    let json = expect_error(&svc, run("error-empty-upload"), "EmptyUploadException").await;
    assert_eq!(
        json["message"],
        format!(
            "The upload with id '{UPLOAD_ID}' in the repository with name 'sample/app' in registry with id '123456789012' cannot be completed because it does not have any parts"
        )
    );
    let json = expect_error(
        &svc,
        run("error-invalid-layer-part"),
        "InvalidLayerPartException",
    )
    .await;
    assert_eq!(
        json["message"],
        "First byte of the layer part is 100 instead of 0"
    );
    assert_eq!(json["lastValidByteReceived"], 0);
    assert_eq!(json["uploadId"], UPLOAD_ID);
    assert_eq!(json["repositoryName"], "sample/app");
    assert_eq!(json["registryId"], "123456789012");
    let json = expect_error(
        &svc,
        run("error-part-length-mismatch"),
        "InvalidLayerPartException",
    )
    .await;
    assert_eq!(json["lastValidByteReceived"], 0);

    // The base64-encoded body, as a Function URL delivers it.
    let (status, json) = invoke(&svc, run("upload-layer-part")).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["lastByteReceived"], PART.len() - 1);
    assert_eq!(json["uploadId"], UPLOAD_ID);
    // The same part as a plain-text body: a byte-identical re-send, answered with success.
    let (status, json) = invoke(&svc, run("upload-layer-part-text-body")).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["lastByteReceived"], PART.len() - 1);
    let json = expect_error(
        &svc,
        run("error-invalid-layer-part"),
        "InvalidLayerPartException",
    )
    .await;
    assert_eq!(
        json["message"],
        format!(
            "First byte of the layer part is 100 instead of {}",
            PART.len()
        )
    );
    assert_eq!(json["lastValidByteReceived"], PART.len() - 1);

    let (status, json) = invoke(&svc, run("complete-layer-upload")).await;
    assert_eq!(status, 200, "{json}");
    let digest = sha256(PART);
    assert_eq!(json["layerDigest"], digest);
    // Completed: the id is retired.
    expect_error(&svc, "complete-layer-upload", "UploadNotFoundException").await;
    expect_error(&svc, "upload-layer-part", "UploadNotFoundException").await;

    // Same id again, wrong digest at completion.
    seed_upload(&svc, UPLOAD_ID, &format!("layers/{UPLOAD_ID}-again")).await;
    invoke(&svc, "upload-layer-part").await;
    let json = expect_error(
        &svc,
        run("error-invalid-layer-digest"),
        "InvalidLayerException",
    )
    .await;
    assert_eq!(
        json["message"],
        "None of the provided layer digests match the calculated layer digest"
    );

    image_fixtures(&svc, &mut run).await;

    expect_error(
        &svc,
        run("error-upload-not-found"),
        "UploadNotFoundException",
    )
    .await;
    expect_error(
        &svc,
        run("error-unknown-operation"),
        "UnknownOperationException",
    )
    .await;
    expect_error(
        &svc,
        run("error-missing-target"),
        "UnknownOperationException",
    )
    .await;
    expect_error(&svc, run("error-serialization"), "SerializationException").await;
    expect_error(
        &svc,
        run("error-wrong-member-type"),
        "SerializationException",
    )
    .await;
    let json = expect_error(
        &svc,
        run("error-invalid-repository-name"),
        "InvalidParameterException",
    )
    .await;
    assert_eq!(
        json["message"],
        "Invalid parameter at 'repositoryName' failed to satisfy constraint: 'must have length greater than or equal to 2'"
    );
    let json = expect_error(
        &svc,
        run("error-registry-mismatch"),
        "RepositoryNotFoundException",
    )
    .await;
    assert_eq!(
        json["message"],
        "The repository with name 'sample/app' does not exist in the registry with id '999999999999'"
    );

    let (status, json) = invoke(&svc, run("delete-repository")).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["repository"]["repositoryName"], "sample/app");
    expect_error(&svc, "describe-repositories", "RepositoryNotFoundException").await;

    let unvisited: Vec<&String> = names
        .iter()
        .filter(|n| !seen.contains(n.as_str()))
        .collect();
    assert!(
        unvisited.is_empty(),
        "fixtures without a check: {unvisited:?}"
    );

    // Byte for byte what the handler answered when the record was made; `ECR_UPDATE_GOLDEN=1`
    // rewrites it (only for an intended change of the wire answers).
    let answers = ANSWERS.lock().unwrap().concat();
    let path = format!("{}/tests/fixtures/answers.txt", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("ECR_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"))).unwrap();
        std::fs::write(&path, &answers).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (got, want) in answers.lines().zip(golden.lines()) {
        assert_eq!(
            got, want,
            "an answer differs from tests/fixtures/answers.txt"
        );
    }
    assert_eq!(
        answers.lines().count(),
        golden.lines().count(),
        "number of answer lines"
    );
}

#[tokio::test]
async fn lambda_http_would_base64_our_content_type_without_the_text_hint() {
    // Pins the lambda_http behaviour the handler's text hint works around.
    let mut resp = http::Response::new(Body::Text("{}".into()));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    let converted = resp.into_response().await;
    assert!(matches!(converted.body(), Body::Binary(_)));
}

#[tokio::test]
async fn payload_ignores_our_content_type_so_the_handler_reads_bytes() {
    // lambda_http's `payload()` only parses application/json; the body must still be read.
    use lambda_http::RequestPayloadExt;
    let req = lambda_http::request::from_str(&fixture("create-repository")).unwrap();
    let parsed: Option<Value> = req.payload().unwrap_or(None);
    assert!(parsed.is_none());
    let svc = service();
    let resp = lambda::handle(&svc, req).await;
    assert_eq!(resp.status(), 200);
}

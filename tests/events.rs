//! Every fixture in events/ goes through the Lambda handler in-process, as the Lambda runtime
//! delivers it (`lambda_http::request::from_str`), and the answer is what a client must see.

use ecr_layer_upload::backend::memory::{MemoryBlobs, MemoryMetadata};
use ecr_layer_upload::ports::{BlobStore, MetadataStore, UploadRecord, UploadState};
use ecr_layer_upload::protocol;
use ecr_layer_upload::service::{Service, Settings};
use lambda_http::{Body, IntoResponse};
use serde_json::Value;

const UPLOAD_ID: &str = "0b7a3b1e-5c1d-4a4e-9a52-3f6c2d9e8f10";
const PART: &[u8] = b"layer bytes of a tiny example layer\n";

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

/// Runs a fixture through the handler and the runtime's response conversion; returns the
/// status and the JSON body, after checking the headers every answer carries.
async fn invoke(svc: &Svc, name: &str) -> (u16, Value) {
    let req = lambda_http::request::from_str(&fixture(name)).expect("fixture parses as an event");
    let resp = protocol::handle(svc, req).await;
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
    (status, json)
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

/// Puts the upload the fixtures name in place, as InitiateLayerUpload would with that id.
async fn seed_upload(svc: &Svc) {
    let key = format!("layers/{UPLOAD_ID}");
    let multipart_id = svc.blobs().create_multipart(&key).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let record = UploadRecord {
        upload_id: UPLOAD_ID.into(),
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

    seed_upload(&svc).await;
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
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(PART))
    );
    assert_eq!(json["layerDigest"], digest);
    // Completed: the id is retired.
    expect_error(&svc, "complete-layer-upload", "UploadNotFoundException").await;
    expect_error(&svc, "upload-layer-part", "UploadNotFoundException").await;

    // Same id again, wrong digest at completion.
    seed_upload(&svc).await;
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
    let resp = protocol::handle(&svc, req).await;
    assert_eq!(resp.status(), 200);
}

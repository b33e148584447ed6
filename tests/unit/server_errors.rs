//! A failure underneath the API: the client reads ECR's generic `ServerException`, and the
//! request's single log line carries the request id and the failure's whole chain of causes.

use std::error::Error;
use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ecr_layer_upload::backends::memory::MemoryMetadata;
use ecr_layer_upload::domain::error::{EcrError, StoreError, chain};
use ecr_layer_upload::ports::{BlobStore, ByteStream, FlushedPart, StoreResult};
use ecr_layer_upload::protocols::ecr::{TARGET_PREFIX, handle};
use ecr_layer_upload::service::{Service, Settings};
use tracing_subscriber::fmt::MakeWriter;

/// The root cause, as a transport would report it.
#[derive(Debug)]
struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection refused by 127.0.0.1:1")
    }
}

impl Error for Refused {}

/// The error a client library wraps it in, as an SDK's dispatch failure does.
#[derive(Debug)]
struct Dispatch(Refused);

impl fmt::Display for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dispatch failure")
    }
}

impl Error for Dispatch {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

/// A blob store whose every call fails the way an unreachable backend does.
struct UnreachableBlobs;

fn unreachable<T>(op: &str, key: &str) -> StoreResult<T> {
    Err(StoreError::backend(
        format!("{op} {key}"),
        Dispatch(Refused),
    ))
}

impl BlobStore for UnreachableBlobs {
    async fn put_object(&self, key: &str, _data: Bytes) -> StoreResult<()> {
        unreachable("put_object", key)
    }
    async fn get_object(&self, key: &str) -> StoreResult<Bytes> {
        unreachable("get_object", key)
    }
    async fn read_object(&self, key: &str, _range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        unreachable("read_object", key)
    }
    async fn object_size(&self, key: &str) -> StoreResult<Option<u64>> {
        unreachable("object_size", key)
    }
    async fn delete_objects(&self, keys: &[String]) -> StoreResult<()> {
        unreachable("delete_objects", keys.first().map_or("", String::as_str))
    }
    async fn create_multipart(&self, key: &str) -> StoreResult<String> {
        unreachable("create_multipart", key)
    }
    async fn upload_part(
        &self,
        key: &str,
        _multipart_id: &str,
        _number: u32,
        _data: Bytes,
    ) -> StoreResult<String> {
        unreachable("upload_part", key)
    }
    async fn complete_multipart(
        &self,
        key: &str,
        _multipart_id: &str,
        _parts: &[FlushedPart],
    ) -> StoreResult<()> {
        unreachable("complete_multipart", key)
    }
    async fn abort_multipart(&self, key: &str, _multipart_id: &str) -> StoreResult<()> {
        unreachable("abort_multipart", key)
    }
    async fn download_url(&self, key: &str, _expires_in_secs: u64) -> StoreResult<String> {
        unreachable("download_url", key)
    }
}

/// Log output, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn request(operation: &str, body: &str) -> http::Request<Bytes> {
    http::Request::builder()
        .method("POST")
        .uri("/")
        .header("x-amz-target", format!("{TARGET_PREFIX}{operation}"))
        .header("content-type", "application/x-amz-json-1.1")
        .body(Bytes::from(body.to_owned()))
        .unwrap()
}

const GENERIC: &str = "An internal error occurred in the registry backend; retry the request";

#[test]
fn the_chain_shows_every_cause_once() {
    let store = StoreError::backend("create_multipart uploads/u1", Dispatch(Refused));
    assert_eq!(
        chain(&store).to_string(),
        "backend failure: create_multipart uploads/u1: dispatch failure: \
         connection refused by 127.0.0.1:1"
    );
    let err = EcrError::from(store);
    assert_eq!(err.type_name(), "ServerException");
    assert_eq!(err.status(), 500);
    assert_eq!(err.message(), GENERIC);
    assert_eq!(
        chain(&err).to_string(),
        format!(
            "ServerException: {GENERIC}: backend failure: create_multipart uploads/u1: \
             dispatch failure: connection refused by 127.0.0.1:1"
        )
    );
    // An error that already shows its source's text does not repeat it.
    let io = std::io::Error::other(Dispatch(Refused));
    let store = StoreError::backend("put_object k", io);
    assert_eq!(
        chain(&store).to_string(),
        "backend failure: put_object k: dispatch failure: connection refused by 127.0.0.1:1"
    );
    // Outcomes have no cause.
    assert_eq!(
        chain(&StoreError::Conflict).to_string(),
        "conditional write lost"
    );
    assert!(StoreError::failure("refused").source().is_none());
}

#[tokio::test]
async fn a_backend_failure_is_logged_once_with_its_chain_and_the_request_id() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // A current-thread runtime: the whole request runs on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let svc = Service::new(MemoryMetadata::new(), UnreachableBlobs, Settings::default());
    let created = handle(
        &svc,
        request("CreateRepository", r#"{"repositoryName":"app"}"#),
    )
    .await;
    assert_eq!(created.status(), 200);

    let resp = handle(
        &svc,
        request("InitiateLayerUpload", r#"{"repositoryName":"app"}"#),
    )
    .await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["x-amzn-errortype"], "ServerException");
    let body = std::str::from_utf8(resp.body()).unwrap();
    assert_eq!(
        body,
        format!(r#"{{"__type":"ServerException","message":"{GENERIC}"}}"#)
    );
    assert!(!body.contains("refused") && !body.contains("create_multipart"));
    let request_id = resp.headers()["x-amzn-requestid"].to_str().unwrap();

    let text = logs.text();
    let failures: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(failures.len(), 1, "one error line per failure:\n{text}");
    let line = failures[0];
    assert!(line.contains("request failed"), "{line}");
    assert!(line.contains(request_id), "{line}");
    assert!(line.contains("InitiateLayerUpload"), "{line}");
    for cause in [
        "backend failure: create_multipart",
        "dispatch failure",
        "connection refused by 127.0.0.1:1",
    ] {
        assert!(line.contains(cause), "{cause} missing from {line}");
    }
    assert_eq!(
        text.matches("connection refused").count(),
        1,
        "the cause is logged once:\n{text}"
    );
}

//! The Lambda front door: the runtime loop of `lambda_http`, each event handed to the protocol as
//! a plain `http::Request<Bytes>`, and everything that follows from Lambda's limits.
//!
//! A synchronous invocation carries at most [`PAYLOAD_LIMIT`] bytes of event and as many of
//! response. A Function URL hands a body whose content type is not text-like
//! (`application/x-amz-json-1.1` is not) to the function base64-encoded; `lambda_http` decodes it.
//! An `UploadLayerPart` body holds the part base64-encoded inside JSON, so a part grows by 4/3
//! twice on its way in: [`part_size`] is the largest part that still fits.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use lambda_http::request::RequestContext;
use lambda_http::{Body, LambdaEvent, Request, Response};

use crate::ports::{BlobStore, MetadataStore};
use crate::protocols::auth::Auth;
use crate::protocols::{ecr, oci};
use crate::service::{ResponseLimit, Service};

/// The synchronous invocation payload limit of AWS Lambda (request and response).
pub const PAYLOAD_LIMIT: u64 = 6_291_456;

/// Room left in a Lambda event for everything that is not the request body: the Function URL
/// envelope (`requestContext`, a SigV4 `authorization` header, user agent, SDK headers). A
/// realistic event from the Rust, JS or Python SDKs carries 2 to 3 KiB; 16 KiB leaves room for
/// long session tokens and proxies' extra headers.
pub const ENVELOPE_MARGIN: u64 = 16 * 1024;

/// Room left in a Lambda response for what is not the body: the status, our few headers and the
/// runtime's envelope around them.
pub const RESPONSE_ENVELOPE_MARGIN: u64 = 4 * 1024;

/// Longest JSON an `UploadLayerPart` request carries besides the blob's base64 text: member
/// names, quotes, a 12-digit registry id, a 256-character repository name (escaped at worst as
/// `\u002f` per `/`: 85 of them), a UUID and two 20-digit offsets.
pub const UPLOAD_PART_JSON_OVERHEAD: u64 = 1024;

/// The smallest non-final part accepted behind Lambda: ECR's 5 MiB parts cannot arrive here.
pub const MIN_PART_SIZE: u64 = 1024 * 1024;

/// Bytes an `Image` or an `ImageFailure` of BatchGetImage adds to the response besides a manifest:
/// member names, the registry id, a 256-character repository name, the digest, a 300-character
/// tag and a media type or a failure reason, each escaped twice at worst.
const IMAGE_ENTRY_OVERHEAD: u64 = 2048;

/// Tells lambda_http to hand our JSON to the front door as text rather than base64 (it would
/// otherwise encode every content type it does not know).
const TEXT_BODY_HINT: &str = "x-lambda-http-content-encoding";

fn base64_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

/// The largest part whose `UploadLayerPart` request, delivered by a Function URL as a base64
/// body (the part itself base64 inside JSON, then the whole body base64 once more), fits a
/// synchronous invocation with [`ENVELOPE_MARGIN`] to spare. Rounded down to 64 KiB.
pub fn part_size() -> u64 {
    let fits = |part: u64| {
        let json = UPLOAD_PART_JSON_OVERHEAD + base64_len(part);
        base64_len(json) + ENVELOPE_MARGIN <= PAYLOAD_LIMIT
    };
    // Largest fitting size by bisection over [0, limit].
    let (mut lo, mut hi) = (0u64, PAYLOAD_LIMIT);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo / (64 * 1024) * (64 * 1024)
}

/// What a function may answer: a manifest travels as a JSON string inside our JSON body, and that
/// body as a JSON string inside the runtime's response envelope.
pub fn response_limit() -> ResponseLimit {
    ResponseLimit {
        max_bytes: PAYLOAD_LIMIT - RESPONSE_ENVELOPE_MARGIN,
        entry_overhead: IMAGE_ENTRY_OVERHEAD,
        manifest_cost: twice_escaped_len,
    }
}

/// Length of `s` once written as a JSON string inside a JSON document that is itself written as a
/// JSON string: a manifest in our response body, and that body in the Lambda runtime's response
/// envelope. Follows serde_json's escaping (quotes, backslashes and control characters; all else
/// as UTF-8).
fn twice_escaped_len(s: &str) -> u64 {
    s.chars()
        .map(|c| match c {
            // `"` → `\"` → `\\\"`: a backslash and a quote, each escaped again.
            '"' | '\\' => 4,
            // `\n` → `\\n`.
            '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 3,
            // `\u001f` → `\\u001f`.
            c if (c as u32) < 0x20 => 7,
            c => c.len_utf8() as u64,
        })
        .sum()
}

/// Handles one event: its body (decoded from base64 by `lambda_http` when the front door encoded
/// it) goes to the protocol as bytes, and the JSON answer goes back as text.
pub async fn handle<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    req: Request,
) -> Response<Body> {
    handle_with(svc, None, req).await
}

/// [`handle`], with the request checked by `auth` when given (`ECR_AUTH=sigv4`). The request's
/// URI is the Function URL's host and raw path, as the client signed them; under
/// `cargo lambda watch` the emulator's `/lambda-url/<function>` prefix is put back first
/// ([`emulated_url_prefix`]).
pub async fn handle_with<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    auth: Option<&Auth>,
    req: Request,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let body = match body {
        Body::Text(t) => Bytes::from(t),
        Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    if oci::wire::is_oci_path(parts.uri.path()) {
        return oci_event(svc, auth, http::Request::from_parts(parts, body)).await;
    }
    if let Some(prefix) = emulated_url_prefix(&parts) {
        restore_prefix(&mut parts, &prefix);
    }
    let (mut parts, body) = ecr::handle_with(svc, auth, http::Request::from_parts(parts, body))
        .await
        .into_parts();
    parts
        .headers
        .insert(TEXT_BODY_HINT, HeaderValue::from_static("text"));
    let body = match String::from_utf8(Vec::from(body)) {
        Ok(text) => Body::Text(text),
        Err(e) => Body::Binary(e.into_bytes()),
    };
    Response::from_parts(parts, body)
}

/// The emulator's default function, reached at the watcher's root rather than under
/// `/lambda-url/<function>/` (nothing was stripped from the path then).
const EMULATOR_DEFAULT_FUNCTION: &str = "_";

/// The path prefix `cargo lambda watch` stripped from the address the client called, when the
/// event comes from that emulator's Function URL (`http://127.0.0.1:<port>/lambda-url/<function>/`):
/// it hands the function the client's `host` header but a `rawPath` without
/// `/lambda-url/<function>`, and marks its events with the request context's `domainName`
/// `localhost` and the function's name as `domainPrefix`. A real Function URL passes the client's
/// host and path unchanged and its `domainName` is always `<url-id>.lambda-url.<region>.on.aws`,
/// set by Lambda rather than the caller; so the prefix is put back only for such an event whose
/// host is also a loopback address, and a deployed function verifies exactly what it received.
pub fn emulated_url_prefix(parts: &http::request::Parts) -> Option<String> {
    let Some(RequestContext::ApiGatewayV2(ctx)) = parts.extensions.get::<RequestContext>() else {
        return None;
    };
    if ctx.domain_name.as_deref() != Some("localhost") {
        return None;
    }
    let host = parts.headers.get(http::header::HOST)?.to_str().ok()?;
    if !is_loopback_host(host) {
        return None;
    }
    let function = ctx.domain_prefix.as_deref()?;
    let valid = !function.is_empty()
        && function != EMULATOR_DEFAULT_FUNCTION
        && function.len() <= 64
        && function
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then(|| format!("/lambda-url/{function}"))
}

/// Whether a `host` header (with or without its port) names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Puts `prefix` back in front of the request's path, as the client called (and signed) it.
fn restore_prefix(parts: &mut http::request::Parts, prefix: &str) {
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut uri = http::uri::Builder::new();
    if let Some(scheme) = parts.uri.scheme() {
        uri = uri.scheme(scheme.clone());
    }
    if let Some(authority) = parts.uri.authority() {
        uri = uri.authority(authority.clone());
    }
    match uri
        .path_and_query(format!("{prefix}{path_and_query}"))
        .build()
    {
        Ok(restored) => parts.uri = restored,
        // Left as it came: the signature check then refuses it as any other mismatch.
        Err(_) => tracing::debug!("the emulator's path prefix could not be restored"),
    }
}

/// The largest `/v2/` request body a Function URL delivers: a blob chunk is not text, so it
/// arrives base64-encoded in the event, which must fit [`PAYLOAD_LIMIT`] with
/// [`ENVELOPE_MARGIN`] to spare.
pub fn oci_body_limit() -> u64 {
    (PAYLOAD_LIMIT - ENVELOPE_MARGIN) / 4 * 3
}

/// Handles a request of the OCI API (src/protocols/oci.rs): blobs are answered with a redirect
/// to the blob store, since an answer is capped at [`PAYLOAD_LIMIT`] bytes.
async fn oci_event<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    auth: Option<&Auth>,
    req: http::Request<Bytes>,
) -> Response<Body> {
    let delivery = oci::Delivery::Redirect {
        max_request: oci_body_limit(),
    };
    let req = req.map(oci::whole_body);
    let (parts, payload) = oci::handle(svc, auth, delivery, req).await.into_parts();
    let body = match payload {
        oci::Payload::Full(bytes) if bytes.is_empty() => Body::Empty,
        oci::Payload::Full(bytes) => Body::Binary(bytes.to_vec()),
        // Never under `Redirect`: blobs are not answered with their bytes.
        oci::Payload::Blob(_) => {
            tracing::error!("a blob answer reached the Lambda front door");
            let mut resp = Response::new(Body::Empty);
            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            return resp;
        }
    };
    Response::from_parts(parts, body)
}

/// What a scheduled invocation runs (composed at start-up: one bounded collection of what no
/// record owns, src/backends/aws/gc.rs); its answer is a one-line summary.
pub type Scheduled =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Whether `event` is EventBridge's scheduled event (template.yaml's `GcSchedule`), not an HTTP
/// request: its `source` is `aws.events` and its `detail-type` `Scheduled Event`.
pub fn is_scheduled(event: &serde_json::Value) -> bool {
    event.get("source").and_then(serde_json::Value::as_str) == Some("aws.events")
        && event.get("detail-type").and_then(serde_json::Value::as_str) == Some("Scheduled Event")
}

/// Answers one event as the runtime loop does: a scheduled event runs `scheduled` and answers
/// `{"collected": <its summary>}`; every other event is an HTTP request (Function URL, API
/// Gateway, ALB), served and answered as `lambda_http` does.
pub async fn dispatch<M: MetadataStore, B: BlobStore>(
    svc: Arc<Service<M, B>>,
    auth: Option<Arc<Auth>>,
    scheduled: &Scheduled,
    event: LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, lambda_http::Error> {
    use lambda_http::Service as _;
    let LambdaEvent { payload, context } = event;
    if is_scheduled(&payload) {
        let summary = scheduled().await;
        return Ok(serde_json::json!({ "collected": summary }));
    }
    let request: lambda_http::request::LambdaRequest = serde_json::from_value(payload)?;
    let mut adapter = lambda_http::Adapter::from(lambda_http::service_fn(move |req| {
        let (svc, auth) = (svc.clone(), auth.clone());
        async move { Ok::<_, lambda_http::Error>(handle_with(&svc, auth.as_deref(), req).await) }
    }));
    let response = adapter.call(LambdaEvent::new(request, context)).await?;
    Ok(serde_json::to_value(response)?)
}

/// Runs the Lambda runtime loop until the runtime ends it, each event answered by [`dispatch`].
pub async fn run<M: MetadataStore, B: BlobStore>(
    svc: Arc<Service<M, B>>,
    auth: Option<Arc<Auth>>,
    scheduled: Scheduled,
) -> Result<(), lambda_http::Error> {
    let handler = lambda_http::service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let (svc, auth, scheduled) = (svc.clone(), auth.clone(), scheduled.clone());
        async move { dispatch(svc, auth, &scheduled, event).await }
    });
    lambda_http::lambda_runtime::run(handler).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twice_escaped_lengths_follow_json_escaping() {
        assert_eq!(twice_escaped_len("ab"), 2);
        assert_eq!(twice_escaped_len("\""), 4);
        assert_eq!(twice_escaped_len("\\"), 4);
        assert_eq!(twice_escaped_len("\n"), 3);
        assert_eq!(twice_escaped_len("\u{1}"), 7);
        assert_eq!(twice_escaped_len("é"), 2);
    }

    #[test]
    fn only_eventbridge_schedules_are_scheduled_events() {
        let scheduled = serde_json::json!({
            "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
            "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/gc"], "detail": {}
        });
        assert!(is_scheduled(&scheduled));
        let http = serde_json::json!({
            "version": "2.0", "routeKey": "$default", "rawPath": "/", "headers": {},
            "requestContext": {"http": {"method": "POST"}}, "body": "{}"
        });
        assert!(!is_scheduled(&http));
        assert!(!is_scheduled(&serde_json::json!({"source": "aws.events"})));
    }
}

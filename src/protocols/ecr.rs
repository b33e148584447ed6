//! Amazon ECR's wire protocol, AWS JSON 1.1: `POST /` with `X-Amz-Target:
//! AmazonEC2ContainerRegistry_V20150921.<Operation>`, JSON bodies ⇄ typed requests and
//! responses, errors → `{"__type", "message", ...}` with `x-amzn-ErrorType`.
//!
//! [`handle`] is the one request handler: the Lambda adapter and the local HTTP server both call
//! it with a plain `http::Request<Bytes>`, so every test of it tests both front doors. It never
//! fails: every outcome is a response.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::PAD;
use base64::engine::simd::Simd;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::domain::error::EcrError;
use crate::ports::{BlobStore, MetadataStore};
use crate::protocols::auth::{Action, Auth, AuthError, Principal};
use crate::service::Service;

pub mod wire;

pub const TARGET_PREFIX: &str = "AmazonEC2ContainerRegistry_V20150921.";
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

static BASE64: LazyLock<Simd> = LazyLock::new(|| Simd::standard(PAD));

/// The operations served, parsed once from `X-Amz-Target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    InitiateLayerUpload,
    UploadLayerPart,
    CompleteLayerUpload,
    CreateRepository,
    DescribeRepositories,
    DeleteRepository,
    BatchCheckLayerAvailability,
    PutImage,
    BatchGetImage,
    ListImages,
    DescribeImages,
    BatchDeleteImage,
    GetDownloadUrlForLayer,
    GetAuthorizationToken,
}

impl Operation {
    pub fn from_target(target: &str) -> Option<Self> {
        Some(match target.strip_prefix(TARGET_PREFIX)? {
            "InitiateLayerUpload" => Self::InitiateLayerUpload,
            "UploadLayerPart" => Self::UploadLayerPart,
            "CompleteLayerUpload" => Self::CompleteLayerUpload,
            "CreateRepository" => Self::CreateRepository,
            "DescribeRepositories" => Self::DescribeRepositories,
            "DeleteRepository" => Self::DeleteRepository,
            "BatchCheckLayerAvailability" => Self::BatchCheckLayerAvailability,
            "PutImage" => Self::PutImage,
            "BatchGetImage" => Self::BatchGetImage,
            "ListImages" => Self::ListImages,
            "DescribeImages" => Self::DescribeImages,
            "BatchDeleteImage" => Self::BatchDeleteImage,
            "GetDownloadUrlForLayer" => Self::GetDownloadUrlForLayer,
            "GetAuthorizationToken" => Self::GetAuthorizationToken,
            _ => return None,
        })
    }
}

/// Largest request body the protocol reads: a 20 MiB blob in base64 plus room for the other
/// members, and some slack so that a slightly oversized blob still gets the modelled answer.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

/// Largest request body of every operation but UploadLayerPart and PutImage. ECR's model bounds
/// all their members: the largest legitimate one, CreateRepository with 200 tags of the longest
/// keys and values or BatchCheckLayerAvailability with 100 digests of 1000 characters, stays
/// under 1.3 MB even with every character written as a JSON `\u` escape of a surrogate pair
/// (12 bytes); this leaves margin over that.
pub const MAX_SMALL_BODY: usize = 2 * 1024 * 1024;

fn target_of(headers: &http::HeaderMap) -> Option<Operation> {
    headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(Operation::from_target)
}

/// The largest body read for `op`: [`MAX_BODY`] for the two operations that carry blobs and
/// manifests, [`MAX_SMALL_BODY`] for the others and for targets not served.
pub fn op_body_limit(op: Option<Operation>) -> usize {
    match op {
        Some(Operation::UploadLayerPart | Operation::PutImage) => MAX_BODY,
        _ => MAX_SMALL_BODY,
    }
}

/// The largest body read for the request with these headers (see [`op_body_limit`]).
pub fn body_limit(headers: &http::HeaderMap) -> usize {
    op_body_limit(target_of(headers))
}

/// The refusal of a body over its operation's limit.
fn too_large(op: Option<Operation>, target: &str) -> EcrError {
    match op {
        None => unknown_operation(target),
        // The blob is what makes these large.
        Some(Operation::UploadLayerPart | Operation::PutImage) => crate::domain::invalid(
            "layerPartBlob",
            format_args!(
                "must have length less than or equal to {}",
                crate::domain::limits::MAX_LAYER_PART
            ),
        ),
        Some(op) => EcrError::InvalidParameter(format!(
            "The request body is larger than the {MAX_SMALL_BODY} bytes {op:?} accepts"
        )),
    }
}

fn unknown_operation(target: &str) -> EcrError {
    EcrError::UnknownOperation(if target.is_empty() {
        "Missing X-Amz-Target header".into()
    } else {
        format!("Unknown operation {target}")
    })
}

/// The answer to a request whose body is over its operation's limit, left unread: the modelled
/// error, and `Connection: close`.
pub fn body_too_large(headers: &http::HeaderMap) -> Response<Bytes> {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    closing(&too_large(Operation::from_target(target), target))
}

/// The answer to a request the server has no room to buffer now: `LimitExceededException`, which
/// SDKs retry after a pause, and `Connection: close`, since the body is left unread.
pub fn no_room_for_body() -> Response<Bytes> {
    tracing::warn!("request refused: the buffered-bytes limit is reached");
    closing(&EcrError::LimitExceeded(
        "The server holds as many request bytes as it may at once; retry the request".into(),
    ))
}

/// The answer to a request not answered within the local server's request time limit.
pub fn request_timed_out(after: std::time::Duration) -> Response<Bytes> {
    tracing::warn!(secs = after.as_secs(), "request timed out");
    closing(&EcrError::Server(format!(
        "The request was not answered within {} s; retry it",
        after.as_secs()
    )))
}

fn closing(err: &EcrError) -> Response<Bytes> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = respond(
        StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST),
        error_body(err),
        Some(err.type_name()),
        &request_id,
    );
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Handles one request of any front door, with no authentication (`ECR_AUTH=none`).
pub async fn handle<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    req: Request<Bytes>,
) -> Response<Bytes> {
    handle_with(svc, None, req).await
}

/// Handles one request of any front door; with `auth`, the request is verified and its key's
/// permission checked before the service is called (`ECR_AUTH=sigv4`, src/protocols/auth.rs).
pub async fn handle_with<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    auth: Option<&Auth>,
    req: Request<Bytes>,
) -> Response<Bytes> {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: &[u8] = req.body();
    let op = Operation::from_target(&target);
    let result = match op {
        None => Err(unknown_operation(&target)),
        // A front door that read the body whole already (Lambda's) gets the same bound.
        Some(_) if body.len() > op_body_limit(op) => Err(too_large(op, &target)),
        Some(op) => match authorized(auth, op, &req).await {
            Err(refused) => {
                tracing::info!(
                    request_id,
                    target,
                    status = refused.status(),
                    error = refused.type_name(),
                    ms = started.elapsed().as_millis() as u64,
                    "request refused"
                );
                return auth_refusal(&refused, &request_id);
            }
            Ok(principal) if op == Operation::GetAuthorizationToken => {
                authorization_token(auth, principal.as_ref(), &req).await
            }
            Ok(_) => dispatch(svc, op, body).await,
        },
    };
    let status = match &result {
        Ok(_) => 200,
        Err(e) => e.status(),
    };
    match &result {
        // The one log line of a failure of ours: the whole chain of causes, which the client
        // never sees.
        Err(e) if e.status() >= 500 => tracing::error!(
            request_id,
            target,
            status,
            error = %crate::domain::error::chain(e),
            ms = started.elapsed().as_millis() as u64,
            "request failed"
        ),
        Err(e) => tracing::info!(
            request_id,
            target,
            status,
            error = e.type_name(),
            ms = started.elapsed().as_millis() as u64,
            "request"
        ),
        Ok(_) => tracing::info!(
            request_id,
            target,
            status,
            ms = started.elapsed().as_millis() as u64,
            "request"
        ),
    }
    match result {
        Ok(json) => respond(StatusCode::OK, json, None, &request_id),
        Err(e) => respond(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            error_body(&e),
            Some(e.type_name()),
            &request_id,
        ),
    }
}

/// The answer to a request whose body could not be read whole (larger than [`MAX_BODY`], or cut):
/// the modelled error, and `Connection: close`, since the rest of the body is left unread.
pub fn unreadable_body(too_large: bool, cause: &dyn std::fmt::Display) -> Response<Bytes> {
    let err = if too_large {
        crate::domain::invalid(
            "layerPartBlob",
            format_args!(
                "must have length less than or equal to {}",
                crate::domain::limits::MAX_LAYER_PART
            ),
        )
    } else {
        EcrError::Serialization(format!("could not read the request body: {cause}"))
    };
    closing(&err)
}

/// An answer of the protocol: the JSON body, its content type, the request id and, for errors,
/// `x-amzn-ErrorType` (which the SDKs read before the body's `__type`).
pub fn respond(
    status: StatusCode,
    json: String,
    error_type: Option<&'static str>,
    request_id: &str,
) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(json));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    if let Some(t) = error_type {
        h.insert("x-amzn-errortype", HeaderValue::from_static(t));
    }
    resp
}

/// The JSON error document: `__type`, `message`, and the shape's extra members.
pub fn error_body(e: &EcrError) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ErrorDoc<'a> {
        #[serde(rename = "__type")]
        kind: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        registry_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        repository_name: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        upload_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_valid_byte_received: Option<u64>,
    }
    let mut doc = ErrorDoc {
        kind: e.type_name(),
        message: e.message(),
        registry_id: None,
        repository_name: None,
        upload_id: None,
        last_valid_byte_received: None,
    };
    if let EcrError::InvalidLayerPart {
        registry_id,
        repository_name,
        upload_id,
        last_valid_byte_received,
        ..
    } = e
    {
        doc.registry_id = Some(registry_id);
        doc.repository_name = Some(repository_name);
        doc.upload_id = Some(upload_id);
        doc.last_valid_byte_received = Some(*last_valid_byte_received);
    }
    serde_json::to_string(&doc).unwrap_or_else(|_| {
        r#"{"__type":"ServerException","message":"could not render an error"}"#.into()
    })
}

fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, EcrError> {
    let body = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}".as_slice(),
        Some(b'{') => body,
        // serde would read a JSON array into a struct by position.
        Some(_) => {
            return Err(EcrError::Serialization(
                "The request body must be a JSON object".into(),
            ));
        }
    };
    serde_json::from_slice(body)
        .map_err(|e| EcrError::Serialization(format!("The request body could not be read: {e}")))
}

fn encode<T: Serialize>(out: Result<T, EcrError>) -> Result<String, EcrError> {
    serde_json::to_string(&out?).map_err(|e| EcrError::Server(format!("could not encode: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawUploadLayerPart<'a> {
    registry_id: Option<String>,
    repository_name: Option<String>,
    upload_id: Option<String>,
    part_first_byte: Option<i64>,
    part_last_byte: Option<i64>,
    #[serde(borrow)]
    layer_part_blob: Option<Cow<'a, str>>,
}

/// A request of the wire shape `W`, checked into the service's typed request `T`.
fn request<'a, W, T>(body: &'a [u8]) -> Result<T, EcrError>
where
    W: Deserialize<'a>,
    T: TryFrom<W, Error = EcrError>,
{
    T::try_from(decode::<W>(body)?)
}

/// UploadLayerPart's body is almost all one base64 string. Read by serde_json alone, every byte
/// of it is scanned for escapes and checked as UTF-8 before the base64 decoder reads it again.
/// Base64 never needs an escape, so when the blob's value is a plain string it is found with a
/// vectorised search instead and decoded straight from the body, while serde reads the rest of
/// the request (a few hundred bytes) with the blob's value emptied. Anything unusual (the key
/// written with an escape or more than once, an escape or a non-base64 byte in the value, a
/// `layerPartBlob` that is not the top-level member) takes the general path, so both paths give
/// the same answer for every body (tested below).
fn decode_upload_part(body: &[u8]) -> Result<wire::UploadLayerPartRequest, EcrError> {
    decode_upload_part_fast(body).map_or_else(|| decode_upload_part_general(body), Ok)
}

fn decode_upload_part_fast(body: &[u8]) -> Option<wire::UploadLayerPartRequest> {
    const KEY: &[u8] = b"\"layerPartBlob\"";
    let is_blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let mut found = memchr::memmem::find_iter(body, KEY);
    let at = found.next()?;
    if found.next().is_some() {
        return None;
    }
    // A member name starts after `{` or `,`: anywhere else (a value, or inside a string, whose
    // quotes would be escaped) this is not the key, and the general path decides.
    if !matches!(
        body[..at].iter().rev().find(|b| !is_blank(b)),
        Some(b'{' | b',')
    ) {
        return None;
    }
    let mut i = at + KEY.len();
    let mut expect = |want: u8| -> Option<()> {
        while body.get(i).is_some_and(is_blank) {
            i += 1;
        }
        (body.get(i) == Some(&want)).then(|| i += 1)
    };
    expect(b':')?;
    expect(b'"')?;
    let start = i;
    let end = start + memchr::memchr2(b'"', b'\\', &body[start..])?;
    if body[end] != b'"' {
        return None;
    }
    let text = &body[start..end];
    if text.len() > (crate::domain::limits::MAX_LAYER_PART as usize).div_ceil(3) * 4 {
        return None;
    }
    let blob = BASE64.decode(text).ok()?;
    let mut rest = Vec::with_capacity(body.len() - text.len());
    rest.extend_from_slice(&body[..start]);
    rest.extend_from_slice(&body[end..]);
    let raw: RawUploadLayerPart = decode(&rest).ok()?;
    // The emptied value must be the request's own member (not one of a nested object).
    if raw.layer_part_blob.as_deref() != Some("") {
        return None;
    }
    Some(wire::UploadLayerPartRequest {
        registry_id: raw.registry_id,
        repository_name: raw.repository_name,
        upload_id: raw.upload_id,
        part_first_byte: raw.part_first_byte,
        part_last_byte: raw.part_last_byte,
        layer_part_blob: Some(Bytes::from(blob)),
    })
}

fn decode_upload_part_general(body: &[u8]) -> Result<wire::UploadLayerPartRequest, EcrError> {
    let raw: RawUploadLayerPart = decode(body)?;
    let blob = match raw.layer_part_blob {
        None => None,
        Some(text) => {
            let max_encoded = (crate::domain::limits::MAX_LAYER_PART as usize).div_ceil(3) * 4;
            if text.len() > max_encoded {
                return Err(crate::domain::invalid(
                    "layerPartBlob",
                    format_args!(
                        "must have length less than or equal to {}",
                        crate::domain::limits::MAX_LAYER_PART
                    ),
                ));
            }
            let bytes = BASE64.decode(text.as_bytes()).map_err(|e| {
                EcrError::Serialization(format!("layerPartBlob is not valid base64: {e}"))
            })?;
            Some(Bytes::from(bytes))
        }
    };
    Ok(wire::UploadLayerPartRequest {
        registry_id: raw.registry_id,
        repository_name: raw.repository_name,
        upload_id: raw.upload_id,
        part_first_byte: raw.part_first_byte,
        part_last_byte: raw.part_last_byte,
        layer_part_blob: blob,
    })
}

async fn dispatch<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    op: Operation,
    body: &[u8],
) -> Result<String, EcrError> {
    use wire::*;
    match op {
        Operation::InitiateLayerUpload => encode(
            svc.initiate_layer_upload(request::<InitiateLayerUploadRequest, _>(body)?)
                .await,
        ),
        Operation::UploadLayerPart => {
            let req = decode_upload_part(body)?.try_into()?;
            encode(svc.upload_layer_part(req).await)
        }
        Operation::CompleteLayerUpload => encode(
            svc.complete_layer_upload(request::<CompleteLayerUploadRequest, _>(body)?)
                .await,
        ),
        Operation::CreateRepository => encode(
            svc.create_repository(request::<CreateRepositoryRequest, _>(body)?)
                .await,
        ),
        Operation::DescribeRepositories => encode(
            svc.describe_repositories(request::<DescribeRepositoriesRequest, _>(body)?)
                .await,
        ),
        Operation::DeleteRepository => encode(
            svc.delete_repository(request::<DeleteRepositoryRequest, _>(body)?)
                .await,
        ),
        Operation::BatchCheckLayerAvailability => encode(
            svc.batch_check_layer_availability(request::<BatchCheckLayerAvailabilityRequest, _>(
                body,
            )?)
            .await,
        ),
        Operation::PutImage => encode(svc.put_image(request::<PutImageRequest, _>(body)?).await),
        Operation::BatchGetImage => encode(
            svc.batch_get_image(request::<BatchGetImageRequest, _>(body)?)
                .await,
        ),
        Operation::ListImages => encode(
            svc.list_images(request::<ListImagesRequest, _>(body)?)
                .await,
        ),
        Operation::DescribeImages => encode(
            svc.describe_images(request::<DescribeImagesRequest, _>(body)?)
                .await,
        ),
        Operation::BatchDeleteImage => encode(
            svc.batch_delete_image(request::<BatchDeleteImageRequest, _>(body)?)
                .await,
        ),
        Operation::GetDownloadUrlForLayer => encode(
            svc.get_download_url_for_layer(request::<GetDownloadUrlForLayerRequest, _>(body)?)
                .await,
        ),
        // Answered by `authorization_token`, which needs the principal.
        Operation::GetAuthorizationToken => Err(EcrError::Server(
            crate::domain::error::INTERNAL_MESSAGE.into(),
        )),
    }
}

impl Operation {
    /// The `ecr:` action a key needs for this operation.
    pub fn action(self) -> Action {
        match self {
            Operation::InitiateLayerUpload => Action::InitiateLayerUpload,
            Operation::UploadLayerPart => Action::UploadLayerPart,
            Operation::CompleteLayerUpload => Action::CompleteLayerUpload,
            Operation::CreateRepository => Action::CreateRepository,
            Operation::DescribeRepositories => Action::DescribeRepositories,
            Operation::DeleteRepository => Action::DeleteRepository,
            Operation::BatchCheckLayerAvailability => Action::BatchCheckLayerAvailability,
            Operation::PutImage => Action::PutImage,
            Operation::BatchGetImage => Action::BatchGetImage,
            Operation::ListImages => Action::ListImages,
            Operation::DescribeImages => Action::DescribeImages,
            Operation::BatchDeleteImage => Action::BatchDeleteImage,
            Operation::GetDownloadUrlForLayer => Action::GetDownloadUrlForLayer,
            Operation::GetAuthorizationToken => Action::GetAuthorizationToken,
        }
    }
}

/// The request's signer, allowed to do `op` on the repositories it names; `None` without
/// authentication.
async fn authorized(
    auth: Option<&Auth>,
    op: Operation,
    req: &Request<Bytes>,
) -> Result<Option<Principal>, AuthError> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    let principal = auth.authenticate(req).await?;
    auth.authorize(&principal, op.action(), req.body())?;
    Ok(Some(principal))
}

fn auth_refusal(refused: &AuthError, request_id: &str) -> Response<Bytes> {
    if let AuthError::Store(e) = refused {
        tracing::error!(request_id, error = %crate::domain::error::chain(e), "key store failed");
    }
    #[derive(Serialize)]
    struct Doc<'a> {
        #[serde(rename = "__type")]
        kind: &'a str,
        message: &'a str,
    }
    let json = serde_json::to_string(&Doc {
        kind: refused.type_name(),
        message: refused.message(),
    })
    .unwrap_or_default();
    respond(
        StatusCode::from_u16(refused.status()).unwrap_or(StatusCode::BAD_REQUEST),
        json,
        Some(refused.type_name()),
        request_id,
    )
}

/// GetAuthorizationToken: `authorizationToken` is base64 of `AWS:<password>`, the password a
/// registry password of [`Auth::issue_registry_password`] (`anonymous` without authentication),
/// valid 12 hours; `proxyEndpoint` is the URL the client reached.
async fn authorization_token(
    auth: Option<&Auth>,
    principal: Option<&Principal>,
    req: &Request<Bytes>,
) -> Result<String, EcrError> {
    let (password, expires) = match (auth, principal) {
        (Some(auth), Some(p)) => auth.issue_registry_password(p).await.map_err(|e| {
            EcrError::Server(format!(
                "could not issue a registry password: {}",
                e.message()
            ))
        })?,
        _ => (
            "anonymous".to_owned(),
            crate::domain::clock::now_secs() + crate::protocols::auth::REGISTRY_TOKEN_TTL_SECS,
        ),
    };
    let headers = req.headers();
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().scheme_str())
        .unwrap_or("http");
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        authorization_token: String,
        expires_at: f64,
        proxy_endpoint: String,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        authorization_data: [Data; 1],
    }
    encode(Ok(Answer {
        authorization_data: [Data {
            authorization_token: base64::engine::general_purpose::STANDARD
                .encode(format!("AWS:{password}")),
            expires_at: expires as f64,
            proxy_endpoint: format!("{scheme}://{host}"),
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a decoded request says, blob included, or the error's text.
    fn outcome(r: Result<wire::UploadLayerPartRequest, EcrError>) -> String {
        match r {
            Ok(w) => format!(
                "{:?} {:?} {:?} {:?} {:?} {:?}",
                w.registry_id,
                w.repository_name,
                w.upload_id,
                w.part_first_byte,
                w.part_last_byte,
                w.layer_part_blob
            ),
            Err(e) => format!("error {e:?}"),
        }
    }

    fn same(body: &str) -> bool {
        let fast = decode_upload_part(body.as_bytes());
        let general = decode_upload_part_general(body.as_bytes());
        assert_eq!(outcome(fast), outcome(general), "body {body:?}");
        decode_upload_part_fast(body.as_bytes()).is_some()
    }

    #[test]
    fn the_fast_path_reads_plain_bodies() {
        assert!(same(
            r#"{"repositoryName":"r","uploadId":"u","partFirstByte":0,"partLastByte":2,"layerPartBlob":"YWJj"}"#
        ));
        assert!(same(
            "{ \"layerPartBlob\" :\n \"YWJj\" , \"repositoryName\":\"r\" }"
        ));
        assert!(same(r#"{"layerPartBlob":""}"#));
    }

    #[test]
    fn unusual_bodies_take_the_general_path_with_the_same_answer() {
        for body in [
            // an escaped '/' is valid JSON and valid base64 once read
            r#"{"layerPartBlob":"a\/8="}"#,
            r#"{"layerPartBl\u006fb":"YWJj"}"#,
            r#"{"layerPartBlob":"YWJj","layerPartBlob":"YWJj"}"#,
            r#"{"x":{"layerPartBlob":"YWJj"}}"#,
            r#"{"x":{"layerPartBlob":"YWJj"},"layerPartBlob":"YQ=="}"#,
            r#"{"uploadId":"\"layerPartBlob\":\"YWJj\""}"#,
            r#"{"uploadId":"x,"layerPartBlob":"YWJj"}"#,
            r#"["layerPartBlob","YWJj"]"#,
            r#"{"layerPartBlob":"YWJ"}"#,
            r#"{"layerPartBlob":"YW Jj"}"#,
            r#"{"layerPartBlob":12}"#,
            r#"{"layerPartBlob":"YWJj"#,
            r#"{"layerPartBlob":"YWJj"} x"#,
            r#"{"layerPartBlob":"YWJj",}"#,
            r#"{"layerPartBlob""YWJj"}"#,
            r#"{"partFirstByte":"0","layerPartBlob":"YWJj"}"#,
        ] {
            assert!(!same(body), "{body} should not take the fast path");
        }
    }

    proptest! {
        /// Bodies stitched from JSON fragments, valid or not: both paths always agree.
        #[test]
        fn both_paths_agree(parts in proptest::collection::vec(prop_oneof![
            Just("{"), Just("}"), Just(","), Just(":"), Just(" "), Just("\""), Just("\\"),
            Just("\"layerPartBlob\""), Just("\"uploadId\""), Just("\"partFirstByte\""),
            Just("\"YWJj\""), Just("\"YQ==\""), Just("YWJj"), Just("12"), Just("null"),
            Just("[") , Just("]"), Just("\"u\""), Just("\\/"),
        ], 0..14)) {
            let body: String = parts.concat();
            same(&body);
        }

        /// Well-formed requests with any blob always take the fast path and decode it exactly.
        #[test]
        fn any_blob_round_trips(blob in proptest::collection::vec(any::<u8>(), 0..300),
                                ws in "[ \t\r\n]{0,3}") {
            let text = BASE64.encode(&blob);
            let body = format!(
                "{{{ws}\"uploadId\"{ws}:{ws}\"u\",{ws}\"layerPartBlob\"{ws}:{ws}\"{text}\"{ws}}}"
            );
            prop_assert!(same(&body));
            let got = decode_upload_part(body.as_bytes()).unwrap().layer_part_blob.unwrap();
            prop_assert_eq!(got.as_ref(), blob.as_slice());
        }
    }
}

//! The OCI Distribution Specification v1.1 (`/v2/...`), beside ECR's JSON API at the same
//! address, on the same service and state: an upload session is an upload of InitiateLayerUpload's
//! state machine (its chunks are UploadLayerPart's parts, its end CompleteLayerUpload's
//! verification), a manifest PUT is a PutImage, a blob GET serves the layer GetDownloadUrlForLayer
//! serves, a manifest DELETE is a BatchDeleteImage.
//!
//! [`handle`] serves both front doors: the local server hands it the request body as a stream
//! and streams blobs back ([`Delivery::Serve`]); Lambda hands it the whole body and answers a
//! blob GET with a `307` to the blob store's presigned URL ([`Delivery::Redirect`]), as ECR does.
//! A body is written as it arrives (as one part, with a blob store that streams parts; else cut
//! into parts of `s3_part_size`), so a layer pushed in one `PATCH` is never held whole.

pub mod wire;

use std::pin::Pin;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::domain::error::EcrError;
use crate::domain::model::{Digest, ImageTag, RepositoryName, Sent, UploadId};
use crate::ports::{BlobStore, ByteStream, MetadataStore};
use crate::protocols::auth::{Action, Auth, AuthError};
use crate::service::types::{InitiateLayerUploadRequest, PutImageRequest, UploadLayerPartRequest};
use crate::service::{Reference, Service, StreamFailure, Streamed};
use wire::{Context, OciError, Route, Wanted};

/// An answer's body: whole, or a blob's bytes streamed from the store.
pub enum Payload {
    Full(Bytes),
    Blob(ByteStream),
}

impl Payload {
    fn empty() -> Self {
        Payload::Full(Bytes::new())
    }
}

/// Why a request body could not be read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError(pub String);

impl BodyError {
    /// The server holds as many request bytes as it may (the local server's
    /// `ECR_MAX_BUFFERED_BYTES`): answered 429 `TOOMANYREQUESTS`, which clients retry.
    pub fn no_room() -> Self {
        BodyError(NO_ROOM.to_owned())
    }

    fn is_no_room(&self) -> bool {
        self.0 == NO_ROOM
    }
}

const NO_ROOM: &str = "the server holds as many request bytes as it may at once; retry the request";

/// The size of the pieces a front door hands a request body over in. With a blob store that
/// streams parts, small ones ([`STREAM_PIECE`]): each is written as it comes. Otherwise the size
/// of the parts an upload's body is cut into ([`Settings::s3_part_size`], within ECR's part
/// limit): a piece of exactly this size (the last one shorter) is written as it is, without a
/// copy.
///
/// [`Settings::s3_part_size`]: crate::service::Settings::s3_part_size
pub fn piece_size<M: MetadataStore, B: BlobStore>(svc: &Service<M, B>) -> usize {
    if svc.streams_parts() {
        return STREAM_PIECE;
    }
    usize::try_from(svc.settings().s3_part_size)
        .unwrap_or(usize::MAX)
        .clamp(1, crate::domain::limits::MAX_LAYER_PART as usize)
}

/// The pieces a body is handed over in when the blob store streams parts.
pub const STREAM_PIECE: usize = 1024 * 1024;

/// A request body as it arrives.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// A body already read whole, as a stream.
pub fn whole_body(bytes: Bytes) -> BodyStream {
    Box::pin(futures_util::stream::once(async move { Ok(bytes) }))
}

/// How a blob GET is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// With the bytes (the local server), honouring `Range`.
    Serve,
    /// With a `307` to the blob store's URL for them (Lambda, whose answers are capped).
    Redirect {
        /// The largest request body the front door can deliver, named in the refusal of a
        /// larger one.
        max_request: u64,
    },
}

/// The largest manifest accepted: ECR's bound on `imageManifest`.
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;

/// The API version header every answer carries.
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// What a request may do: each is checked as the `ecr:` action ECR's registry checks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `GET /v2/`: any valid credentials (what `docker login` tries).
    Login,
    /// Reads of a repository (`ecr:BatchGetImage`) or, with no repository, the catalog
    /// (`ecr:DescribeRepositories`, on every repository).
    Pull,
    /// Uploads and manifest writes (`ecr:PutImage`).
    Push,
    /// Manifest deletes (`ecr:BatchDeleteImage`).
    Delete,
}

impl Access {
    fn action(self, repository: Option<&str>) -> Action {
        match (self, repository) {
            (Access::Login, _) => Action::GetAuthorizationToken,
            (Access::Pull, None) => Action::DescribeRepositories,
            (Access::Pull, Some(_)) => Action::BatchGetImage,
            (Access::Push, _) => Action::PutImage,
            (Access::Delete, _) => Action::BatchDeleteImage,
        }
    }
}

/// Checks a `/v2/` request before anything is read or written. Without `auth`
/// (`ECR_AUTH=none`) everyone may do everything. With it, as ECR's registry: HTTP Basic
/// credentials `AWS:<password>`, the password a registry password GetAuthorizationToken issued
/// (401 with a `WWW-Authenticate: Basic` challenge otherwise), and the key's permission for the
/// access on the repository (403 `DENIED` otherwise).
async fn authorize(
    auth: Option<&Auth>,
    headers: &HeaderMap,
    name: Option<&str>,
    access: Access,
) -> Result<(), OciError> {
    let Some(auth) = auth else {
        return Ok(());
    };
    let challenge = || {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
            .unwrap_or("localhost");
        format!("Basic realm=\"https://{host}/\",service=\"ecr.amazonaws.com\"")
    };
    let unauthorized = |message: &str| {
        OciError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message).with_challenge(challenge())
    };
    let Some(password) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(basic_password)
    else {
        return Err(unauthorized(
            "authentication required: Basic credentials AWS:<password> from GetAuthorizationToken",
        ));
    };
    let principal = match auth.verify_registry_password(&password).await {
        Ok(principal) => principal,
        Err(AuthError::Store(e)) => {
            return Err(wire::from_ecr(
                &EcrError::Internal(Box::new(e)),
                Context::Listing,
            ));
        }
        Err(e) => return Err(unauthorized(e.message())),
    };
    let action = access.action(name);
    if principal.allows(action, name) {
        return Ok(());
    }
    let resource = format!(
        "arn:aws:ecr:{}:{}:repository/{}",
        auth.region(),
        principal.registry_id,
        name.unwrap_or("*")
    );
    let action = action.iam_name();
    Err(OciError::new(
        StatusCode::FORBIDDEN,
        "DENIED",
        format!(
            "User: {} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action",
            principal.arn()
        ),
    ))
}

/// The password of an `Authorization: Basic` header whose user is `AWS`, as ECR's registry takes.
fn basic_password(value: &str) -> Option<String> {
    use base64::Engine as _;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    (user == "AWS").then(|| password.to_owned())
}

/// Handles one `/v2/` request of any front door. Never fails: every outcome is an answer.
pub async fn handle<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    auth: Option<&Auth>,
    delivery: Delivery,
    req: Request<BodyStream>,
) -> Response<Payload> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match answer(svc, auth, delivery, req).await {
        Ok(resp) => resp,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(%method, %path, code = e.code, message = %e.message, "request failed");
            }
            let mut resp = e.response();
            if method == Method::HEAD {
                *resp.body_mut() = Payload::empty();
            }
            resp
        }
    };
    tracing::info!(
        %method,
        %path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "oci request"
    );
    let mut resp = resp;
    resp.headers_mut()
        .insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    resp
}

fn name_of(name: &str) -> Result<RepositoryName, OciError> {
    name.parse::<RepositoryName>()
        .map_err(|_| OciError::name_invalid(format!("invalid repository name: {name}")))
}

fn digest_of(text: &str) -> Result<Digest, OciError> {
    Digest::try_parse(text)
        .ok_or_else(|| OciError::digest_invalid(format!("invalid digest: {text}")))
}

async fn answer<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    auth: Option<&Auth>,
    delivery: Delivery,
    req: Request<BodyStream>,
) -> Result<Response<Payload>, OciError> {
    let method = req.method().clone();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let Some(route) = wire::route(path) else {
        // One of the specification's codes: no such operation here.
        return Err(OciError::new(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            format!("no such route: {path}"),
        ));
    };
    let query = parts.uri.query().map(str::to_string);
    let query = query.as_deref();
    let headers = &parts.headers;
    let not_allowed = || OciError::unsupported(format!("{method} is not supported here"));
    match route {
        Route::Base => {
            authorize(auth, headers, None, Access::Login).await?;
            match method {
                Method::GET | Method::HEAD => Ok(json(StatusCode::OK, b"{}".to_vec())),
                _ => Err(not_allowed()),
            }
        }
        Route::Catalog => {
            authorize(auth, headers, None, Access::Pull).await?;
            if method != Method::GET {
                return Err(not_allowed());
            }
            catalog(svc, query).await
        }
        Route::Tags(name) => {
            authorize(auth, headers, Some(name), Access::Pull).await?;
            if method != Method::GET {
                return Err(not_allowed());
            }
            tags(svc, &name_of(name)?, query).await
        }
        Route::Blob(name, digest) => match method {
            Method::GET | Method::HEAD => {
                authorize(auth, headers, Some(name), Access::Pull).await?;
                let head = method == Method::HEAD;
                get_blob(svc, delivery, &name_of(name)?, digest, headers, head).await
            }
            Method::DELETE => {
                authorize(auth, headers, Some(name), Access::Delete).await?;
                name_of(name)?;
                Err(OciError::unsupported(
                    "blobs are not deleted one by one; they go with their repository",
                ))
            }
            _ => Err(not_allowed()),
        },
        Route::Upload(name, None) => {
            authorize(auth, headers, Some(name), Access::Push).await?;
            if method != Method::POST {
                return Err(not_allowed());
            }
            // A mount reads the source repository: without the right to pull from it, the
            // request falls back to a plain upload, as the specification allows.
            let may_mount = match wire::query_param(query, "from") {
                Some(from) => authorize(auth, headers, Some(&from), Access::Pull)
                    .await
                    .is_ok(),
                None => true,
            };
            start_upload(
                svc,
                delivery,
                &name_of(name)?,
                query,
                may_mount,
                headers,
                body,
            )
            .await
        }
        Route::Upload(name, Some(id)) => {
            let name = name_of(name)?;
            let upload_id = id
                .parse::<UploadId>()
                .map_err(|_| OciError::upload_unknown(id))?;
            match method {
                Method::GET => {
                    authorize(auth, headers, Some(name.as_str()), Access::Push).await?;
                    let held = svc
                        .upload_progress(&name, &upload_id)
                        .await
                        .map_err(|e| wire::from_ecr(&e, Context::Upload))?;
                    Ok(upload_answer(
                        StatusCode::NO_CONTENT,
                        &name,
                        &upload_id,
                        held,
                    ))
                }
                Method::PATCH => {
                    authorize(auth, headers, Some(name.as_str()), Access::Push).await?;
                    patch_upload(svc, delivery, &name, &upload_id, headers, body).await
                }
                Method::PUT => {
                    authorize(auth, headers, Some(name.as_str()), Access::Push).await?;
                    finish_upload(svc, delivery, &name, &upload_id, query, headers, body).await
                }
                Method::DELETE => {
                    authorize(auth, headers, Some(name.as_str()), Access::Push).await?;
                    svc.cancel_upload(&name, &upload_id)
                        .await
                        .map_err(|e| wire::from_ecr(&e, Context::Upload))?;
                    Ok(empty(StatusCode::NO_CONTENT))
                }
                _ => Err(not_allowed()),
            }
        }
        Route::Manifest(name, reference) => match method {
            Method::GET | Method::HEAD => {
                authorize(auth, headers, Some(name), Access::Pull).await?;
                get_manifest(svc, &name_of(name)?, reference, method == Method::HEAD).await
            }
            Method::PUT => {
                authorize(auth, headers, Some(name), Access::Push).await?;
                put_manifest(svc, delivery, &name_of(name)?, reference, headers, body).await
            }
            Method::DELETE => {
                authorize(auth, headers, Some(name), Access::Delete).await?;
                delete_manifest(svc, &name_of(name)?, reference).await
            }
            _ => Err(not_allowed()),
        },
        Route::Referrers(name, digest) => {
            authorize(auth, headers, Some(name), Access::Pull).await?;
            if method != Method::GET {
                return Err(not_allowed());
            }
            referrers(svc, &name_of(name)?, digest, query).await
        }
    }
}

fn set(headers: &mut HeaderMap, name: header::HeaderName, value: impl AsRef<str>) {
    if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
        headers.insert(name, v);
    }
}

fn empty(status: StatusCode) -> Response<Payload> {
    let mut resp = Response::new(Payload::empty());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Payload> {
    typed(status, "application/json", body)
}

fn typed(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Payload> {
    let len = body.len();
    let mut resp = Response::new(Payload::Full(Bytes::from(body)));
    *resp.status_mut() = status;
    set(resp.headers_mut(), header::CONTENT_TYPE, content_type);
    set(resp.headers_mut(), header::CONTENT_LENGTH, len.to_string());
    resp
}

fn digest_header() -> header::HeaderName {
    header::HeaderName::from_static("docker-content-digest")
}

/// The answer to a request that leaves an upload open: where it continues and what it holds.
fn upload_answer(
    status: StatusCode,
    name: &RepositoryName,
    upload_id: &UploadId,
    held: u64,
) -> Response<Payload> {
    let mut resp = empty(status);
    let h = resp.headers_mut();
    set(
        h,
        header::LOCATION,
        format!("/v2/{name}/blobs/uploads/{upload_id}"),
    );
    set(h, header::RANGE, wire::held_range(held));
    set(
        h,
        header::HeaderName::from_static("docker-upload-uuid"),
        upload_id.as_str(),
    );
    resp
}

/// The answer to a blob now held: where it is, and its digest.
fn blob_created(name: &RepositoryName, digest: &str) -> Response<Payload> {
    let mut resp = empty(StatusCode::CREATED);
    let h = resp.headers_mut();
    set(h, header::LOCATION, format!("/v2/{name}/blobs/{digest}"));
    set(h, digest_header(), digest);
    resp
}

/// The repository a push writes to: created first under `create_on_push`.
async fn push_target<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &RepositoryName,
) -> Result<(), OciError> {
    let found = if svc.settings().create_on_push {
        svc.oci_repository_or_create(name).await
    } else {
        svc.oci_repository(name).await
    };
    found
        .map(|_| ())
        .map_err(|e| wire::from_ecr(&e, Context::Upload))
}

async fn get_blob<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    delivery: Delivery,
    name: &RepositoryName,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Payload>, OciError> {
    let parsed = digest_of(digest)?;
    let blob = svc
        .blob(name, &parsed)
        .await
        .map_err(|e| wire::from_ecr(&e, Context::Blob))?
        .ok_or_else(|| OciError::blob_unknown(digest))?;
    if let (Delivery::Redirect { .. }, false) = (delivery, head) {
        let url = svc
            .blob_url(&blob)
            .await
            .map_err(|e| wire::from_ecr(&e, Context::Blob))?;
        let mut resp = empty(StatusCode::TEMPORARY_REDIRECT);
        set(resp.headers_mut(), header::LOCATION, url);
        set(resp.headers_mut(), digest_header(), &blob.digest);
        return Ok(resp);
    }
    let range = match wire::requested_range(headers.get(header::RANGE), blob.size) {
        Wanted::Whole => None,
        Wanted::Range(a, b) => Some((a, b)),
        Wanted::Unsatisfiable => {
            let mut resp = empty(StatusCode::RANGE_NOT_SATISFIABLE);
            set(
                resp.headers_mut(),
                header::CONTENT_RANGE,
                format!("bytes */{}", blob.size),
            );
            return Ok(resp);
        }
    };
    let body = if head || blob.size == 0 {
        Payload::empty()
    } else {
        Payload::Blob(
            svc.read_blob(&blob, range)
                .await
                .map_err(|e| wire::from_ecr(&e, Context::Blob))?,
        )
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    set(h, header::ACCEPT_RANGES, "bytes");
    set(h, digest_header(), &blob.digest);
    let len = match range {
        Some((a, b)) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(
                resp.headers_mut(),
                header::CONTENT_RANGE,
                format!("bytes {a}-{b}/{}", blob.size),
            );
            b - a + 1
        }
        None => blob.size,
    };
    set(resp.headers_mut(), header::CONTENT_LENGTH, len.to_string());
    Ok(resp)
}

/// The refusal of a body larger than the front door delivers.
fn over_cap(max_request: u64) -> OciError {
    OciError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "SIZE_INVALID",
        format!(
            "a request to this registry carries a body of at most {max_request} bytes (AWS Lambda's request payload limit); send the blob in chunks of at most that size (PATCH with Content-Range), or push with `ecr-layer-upload push`, which uses the ECR API"
        ),
    )
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn check_cap(delivery: Delivery, headers: &HeaderMap) -> Result<(), OciError> {
    if let Delivery::Redirect { max_request } = delivery
        && declared_length(headers).is_some_and(|n| n > max_request)
    {
        return Err(over_cap(max_request));
    }
    Ok(())
}

/// The OCI error for a body that could not be read to its end.
fn unreadable(e: BodyError) -> OciError {
    if e.is_no_room() {
        OciError::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", e.0)
    } else {
        OciError::new(
            StatusCode::BAD_REQUEST,
            "BLOB_UPLOAD_INVALID",
            format!("the request body could not be read: {}", e.0),
        )
    }
}

/// Writes `body` into the upload from byte `start` on; returns the bytes the upload holds after
/// it. With a blob store that streams parts, a body of at least the service's
/// `stream_threshold` is written as it arrives, as one part (src/service/stream.rs); otherwise,
/// and for a shorter body, it is cut into parts of `s3_part_size`.
async fn write_body<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &RepositoryName,
    upload_id: &UploadId,
    start: u64,
    mut body: BodyStream,
) -> Result<u64, OciError> {
    if !svc.streams_parts() {
        return write_parts(svc, name, upload_id, start, body).await;
    }
    let threshold = svc.stream_threshold();
    let mut head = Vec::new();
    let mut gathered = 0u64;
    let mut ended = false;
    while gathered < threshold {
        let Some(piece) = body.next().await else {
            ended = true;
            break;
        };
        let piece = piece.map_err(unreadable)?;
        gathered += piece.len() as u64;
        head.push(piece);
    }
    if !ended {
        match svc
            .upload_layer_stream(name, upload_id, start, head, &mut body)
            .await
        {
            Ok(Streamed::Written(held)) => return Ok(held),
            Ok(Streamed::NotDirect(given)) => head = given,
            Err(StreamFailure::Body(e)) => return Err(unreadable(e)),
            Err(StreamFailure::Upload(e)) => return Err(wire::from_ecr(&e, Context::Upload)),
        }
    }
    let head = futures_util::stream::iter(head.into_iter().map(Ok));
    if ended {
        // A body stream is not polled again once it has ended.
        return write_parts(svc, name, upload_id, start, Box::pin(head)).await;
    }
    write_parts(svc, name, upload_id, start, Box::pin(head.chain(body))).await
}

/// Writes `body` into the upload from byte `start` on, in parts of the service's
/// `s3_part_size`; returns the bytes the upload holds after it.
async fn write_parts<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &RepositoryName,
    upload_id: &UploadId,
    start: u64,
    mut body: BodyStream,
) -> Result<u64, OciError> {
    let chunk = usize::try_from(svc.settings().s3_part_size)
        .unwrap_or(usize::MAX)
        .clamp(1, crate::domain::limits::MAX_LAYER_PART as usize);
    let mut next = start;
    let mut buf = BytesMut::new();
    let send = |next: u64, part: Bytes| async move {
        let len = part.len() as u64;
        svc.upload_layer_part(UploadLayerPartRequest::new(
            name.clone(),
            upload_id.clone(),
            next,
            part,
        ))
        .await
        .map_err(|e| wire::from_ecr(&e, Context::Upload))?;
        Ok::<u64, OciError>(next + len)
    };
    while let Some(piece) = body.next().await {
        let mut piece = piece.map_err(unreadable)?;
        while !piece.is_empty() {
            if buf.is_empty() && piece.len() >= chunk {
                // A whole part in one piece: written as it is, with no copy.
                next = send(next, piece.split_to(chunk)).await?;
                continue;
            }
            if buf.capacity() == 0 {
                // One allocation per part, filled once: no growing and moving.
                buf = BytesMut::with_capacity(chunk);
            }
            let take = (chunk - buf.len()).min(piece.len());
            buf.extend_from_slice(&piece.split_to(take));
            if buf.len() == chunk {
                next = send(next, std::mem::take(&mut buf).freeze()).await?;
            }
        }
    }
    if !buf.is_empty() {
        next = send(next, buf.freeze()).await?;
    }
    Ok(next)
}

/// Checks a chunk's `Content-Range` against what the upload holds: a chunk that does not start
/// there is answered 416 with the upload's state.
fn check_chunk(
    headers: &HeaderMap,
    name: &RepositoryName,
    upload_id: &UploadId,
    held: u64,
) -> Result<(), Box<Response<Payload>>> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(());
    };
    let bad = |message: String| {
        let mut resp = OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            message,
        )
        .response();
        let h = resp.headers_mut();
        set(
            h,
            header::LOCATION,
            format!("/v2/{name}/blobs/uploads/{upload_id}"),
        );
        set(h, header::RANGE, wire::held_range(held));
        Box::new(resp)
    };
    let Some((first, last)) = wire::content_range(value) else {
        return Err(bad("Content-Range must be <start>-<end>".into()));
    };
    if first != held {
        return Err(bad(format!(
            "the chunk starts at byte {first}; the upload holds {held} bytes"
        )));
    }
    if let Some(len) = declared_length(headers)
        && len != last - first + 1
    {
        return Err(bad(format!(
            "Content-Range {first}-{last} is not the {len} bytes of the body"
        )));
    }
    Ok(())
}

async fn start_upload<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    delivery: Delivery,
    name: &RepositoryName,
    query: Option<&str>,
    may_mount: bool,
    headers: &HeaderMap,
    body: BodyStream,
) -> Result<Response<Payload>, OciError> {
    check_cap(delivery, headers)?;
    push_target(svc, name).await?;
    let ctx = Context::Upload;
    if may_mount
        && let Some(mount) = wire::query_param(query, "mount")
        && let Some(from) = wire::query_param(query, "from")
        && let (Some(digest), Ok(from)) =
            (Digest::try_parse(&mount), from.parse::<RepositoryName>())
        && svc
            .mount_blob(name, &from, &digest)
            .await
            .map_err(|e| wire::from_ecr(&e, ctx))?
    {
        return Ok(blob_created(name, &digest.to_string()));
    }
    let digest = wire::query_param(query, "digest")
        .map(|d| digest_of(&d))
        .transpose()?;
    let started = svc
        .initiate_layer_upload(InitiateLayerUploadRequest::new(name.clone()))
        .await
        .map_err(|e| wire::from_ecr(&e, ctx))?;
    let upload_id = started
        .upload_id
        .parse::<UploadId>()
        .map_err(|e| wire::from_ecr(&e, ctx))?;
    match digest {
        // Monolithic: the body is the whole blob.
        Some(digest) => {
            write_body(svc, name, &upload_id, 0, body).await?;
            let done = svc
                .complete_blob_upload(name, &upload_id, digest)
                .await
                .map_err(|e| wire::from_ecr(&e, ctx))?;
            Ok(blob_created(name, &done))
        }
        None => Ok(upload_answer(StatusCode::ACCEPTED, name, &upload_id, 0)),
    }
}

async fn patch_upload<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    delivery: Delivery,
    name: &RepositoryName,
    upload_id: &UploadId,
    headers: &HeaderMap,
    body: BodyStream,
) -> Result<Response<Payload>, OciError> {
    check_cap(delivery, headers)?;
    let held = svc
        .upload_progress(name, upload_id)
        .await
        .map_err(|e| wire::from_ecr(&e, Context::Upload))?;
    if let Err(resp) = check_chunk(headers, name, upload_id, held) {
        return Ok(*resp);
    }
    let held = write_body(svc, name, upload_id, held, body).await?;
    Ok(upload_answer(StatusCode::ACCEPTED, name, upload_id, held))
}

async fn finish_upload<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    delivery: Delivery,
    name: &RepositoryName,
    upload_id: &UploadId,
    query: Option<&str>,
    headers: &HeaderMap,
    body: BodyStream,
) -> Result<Response<Payload>, OciError> {
    check_cap(delivery, headers)?;
    let ctx = Context::Upload;
    let digest = wire::query_param(query, "digest")
        .ok_or_else(|| OciError::digest_invalid("the digest query parameter is required"))?;
    let digest = digest_of(&digest)?;
    let held = svc
        .upload_progress(name, upload_id)
        .await
        .map_err(|e| wire::from_ecr(&e, ctx))?;
    if let Err(resp) = check_chunk(headers, name, upload_id, held) {
        return Ok(*resp);
    }
    write_body(svc, name, upload_id, held, body).await?;
    let done = svc
        .complete_blob_upload(name, upload_id, digest)
        .await
        .map_err(|e| wire::from_ecr(&e, ctx))?;
    Ok(blob_created(name, &done))
}

/// A manifest reference: a digest (with `:`) or a tag.
fn reference_of(reference: &str) -> Result<Reference, OciError> {
    if reference.contains(':') {
        return digest_of(reference).map(Reference::Digest);
    }
    if !wire::is_tag(reference) {
        return Err(OciError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            format!("invalid tag: {reference}"),
        ));
    }
    reference
        .parse::<ImageTag>()
        .map(Reference::Tag)
        .map_err(|e| wire::from_ecr(&e, Context::Manifest))
}

async fn get_manifest<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &RepositoryName,
    reference: &str,
    head: bool,
) -> Result<Response<Payload>, OciError> {
    let parsed = reference_of(reference).map_err(|_| OciError::manifest_unknown(reference))?;
    let manifest = svc
        .manifest(name, &parsed)
        .await
        .map_err(|e| wire::from_ecr(&e, Context::Manifest))?
        .ok_or_else(|| OciError::manifest_unknown(reference))?;
    let len = manifest.text.len();
    let mut resp = typed(
        StatusCode::OK,
        &manifest.media_type,
        if head {
            Vec::new()
        } else {
            manifest.text.into_bytes()
        },
    );
    set(resp.headers_mut(), header::CONTENT_LENGTH, len.to_string());
    set(resp.headers_mut(), digest_header(), &manifest.digest);
    Ok(resp)
}

/// Reads a whole body of at most `max` bytes; `None` if it is longer.
async fn read_all(mut body: BodyStream, max: usize) -> Result<Option<Bytes>, OciError> {
    let mut buf = BytesMut::new();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| {
            if e.is_no_room() {
                OciError::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", e.0)
            } else {
                OciError::new(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_INVALID",
                    format!("the request body could not be read: {}", e.0),
                )
            }
        })?;
        if buf.len() + piece.len() > max {
            return Ok(None);
        }
        buf.extend_from_slice(&piece);
    }
    Ok(Some(buf.freeze()))
}

/// The `subject` digest a manifest names, if any.
fn subject_of(text: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_str(text).ok()?;
    doc.get("subject")?
        .get("digest")?
        .as_str()
        .map(str::to_string)
}

async fn put_manifest<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    delivery: Delivery,
    name: &RepositoryName,
    reference: &str,
    headers: &HeaderMap,
    body: BodyStream,
) -> Result<Response<Payload>, OciError> {
    let ctx = Context::Manifest;
    check_cap(delivery, headers)?;
    let parsed = reference_of(reference)?;
    let Some(bytes) = read_all(body, MAX_MANIFEST).await? else {
        return Err(OciError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MANIFEST_INVALID",
            format!("a manifest has at most {MAX_MANIFEST} bytes"),
        ));
    };
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
        OciError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            "the manifest is not UTF-8 text",
        )
    })?;
    if text.is_empty() {
        return Err(OciError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            "the manifest is empty",
        ));
    }
    push_target(svc, name).await?;
    let digest = Digest::sha256(&Sha256::digest(text.as_bytes())).to_string();
    let subject = subject_of(&text);
    let mut req = PutImageRequest::new(name.clone(), text);
    req.image_manifest_media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .filter(|v| crate::domain::model::ManifestMediaType::from_wire(v).is_some());
    match &parsed {
        Reference::Tag(tag) => req.image_tag = Some(tag.clone()),
        Reference::Digest(d) => {
            req.image_digest = Some(Sent {
                text: reference.to_string(),
                value: Some(d.clone()),
            })
        }
    }
    match svc.put_image(req).await {
        // The same manifest under the same reference again: nothing to change.
        Ok(_) | Err(EcrError::ImageAlreadyExists(_)) => {}
        Err(e) => return Err(wire::from_ecr(&e, ctx)),
    }
    let mut resp = empty(StatusCode::CREATED);
    let h = resp.headers_mut();
    set(
        h,
        header::LOCATION,
        format!("/v2/{name}/manifests/{digest}"),
    );
    set(h, digest_header(), &digest);
    if let Some(subject) = subject {
        set(h, header::HeaderName::from_static("oci-subject"), subject);
    }
    Ok(resp)
}

async fn delete_manifest<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &RepositoryName,
    reference: &str,
) -> Result<Response<Payload>, OciError> {
    let parsed = reference_of(reference).map_err(|_| OciError::manifest_unknown(reference))?;
    let deleted = svc
        .delete_manifest(name, &parsed)
        .await
        .map_err(|e| wire::from_ecr(&e, Context::Manifest))?;
    if !deleted {
        return Err(OciError::manifest_unknown(reference));
    }
    Ok(empty(StatusCode::ACCEPTED))
}

/// `n` and `last` of a listing.
fn paging(query: Option<&str>) -> Result<(Option<usize>, Option<String>), OciError> {
    let n = match wire::query_param(query, "n") {
        None => None,
        Some(n) if n.is_empty() => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                format!("n must be a number of 0 or more, not '{n}'"),
            )
        })?),
    };
    Ok((
        n,
        wire::query_param(query, "last").filter(|l| !l.is_empty()),
    ))
}

/// A listing's answer, with `Link` to the next page when more follow.
fn listing(body: Vec<u8>, path: &str, n: Option<usize>, more: Option<&str>) -> Response<Payload> {
    let mut resp = json(StatusCode::OK, body);
    if let (Some(n), Some(last)) = (n, more) {
        set(
            resp.headers_mut(),
            header::LINK,
            format!(
                "<{path}?n={n}&last={}>; rel=\"next\"",
                wire::percent_encode(last)
            ),
        );
    }
    resp
}

async fn tags<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &RepositoryName,
    query: Option<&str>,
) -> Result<Response<Payload>, OciError> {
    let (n, last) = paging(query)?;
    let (repo, tags, more) = svc
        .tag_page(name, n, last.as_deref())
        .await
        .map_err(|e| wire::from_ecr(&e, Context::Listing))?;
    #[derive(Serialize)]
    struct TagList<'a> {
        name: &'a str,
        tags: &'a [String],
    }
    let body = serde_json::to_vec(&TagList {
        name: &repo,
        tags: &tags,
    })
    .unwrap_or_default();
    let next = more.then(|| tags.last().map(String::as_str)).flatten();
    let path = format!("/v2/{repo}/tags/list");
    Ok(listing(
        body,
        &path,
        n,
        next.or(more.then_some(last.as_deref().unwrap_or(""))),
    ))
}

async fn catalog<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    query: Option<&str>,
) -> Result<Response<Payload>, OciError> {
    let (n, last) = paging(query)?;
    let (repos, more) = svc
        .repository_page(n, last.as_deref())
        .await
        .map_err(|e| wire::from_ecr(&e, Context::Listing))?;
    #[derive(Serialize)]
    struct Catalog<'a> {
        repositories: &'a [String],
    }
    let body = serde_json::to_vec(&Catalog {
        repositories: &repos,
    })
    .unwrap_or_default();
    let next = more.then(|| repos.last().map(String::as_str)).flatten();
    Ok(listing(
        body,
        "/v2/_catalog",
        n,
        next.or(more.then_some(last.as_deref().unwrap_or(""))),
    ))
}

async fn referrers<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &RepositoryName,
    digest: &str,
    query: Option<&str>,
) -> Result<Response<Payload>, OciError> {
    let subject = digest_of(digest)?;
    let filter = wire::query_param(query, "artifactType").filter(|t| !t.is_empty());
    let found = svc
        .referrers(name, &subject)
        .await
        .map_err(|e| wire::from_ecr(&e, Context::Listing))?;
    let mut manifests = Vec::new();
    for (image, text) in found {
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let artifact_type = doc
            .get("artifactType")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .or(image.artifact_media_type.clone());
        if filter.is_some() && artifact_type != filter {
            continue;
        }
        let mut entry = serde_json::json!({
            "mediaType": image.media_type.to_string(),
            "digest": image.digest,
            "size": text.len(),
        });
        if let Some(t) = artifact_type {
            entry["artifactType"] = serde_json::Value::String(t);
        }
        if let Some(a) = doc.get("annotations").filter(|a| a.is_object()) {
            entry["annotations"] = a.clone();
        }
        manifests.push(entry);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::domain::manifest::OCI_INDEX,
        "manifests": manifests,
    });
    let mut resp = typed(
        StatusCode::OK,
        crate::domain::manifest::OCI_INDEX,
        serde_json::to_vec(&index).unwrap_or_default(),
    );
    if filter.is_some() {
        set(
            resp.headers_mut(),
            header::HeaderName::from_static("oci-filters-applied"),
            "artifactType",
        );
    }
    Ok(resp)
}

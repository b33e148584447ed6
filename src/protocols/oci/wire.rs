//! The OCI Distribution API's wire pieces: routes, the error document, `Range` and
//! `Content-Range`, and the mapping of the service's errors onto the specification's codes.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use super::Payload;
use crate::domain::error::{EcrError, INTERNAL_MESSAGE};

/// One of the specification's error codes with its status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// A `WWW-Authenticate` challenge sent with the answer (401).
    pub challenge: Option<String>,
}

impl OciError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        OciError {
            status,
            code,
            message: message.into(),
            challenge: None,
        }
    }

    /// The same error, answered with a `WWW-Authenticate: <challenge>` header.
    pub fn with_challenge(mut self, challenge: String) -> Self {
        self.challenge = Some(challenge);
        self
    }

    pub fn name_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "NAME_INVALID", message)
    }

    pub fn digest_invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
    }

    pub fn blob_unknown(digest: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob unknown to registry: {digest}"),
        )
    }

    pub fn manifest_unknown(reference: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("manifest unknown: {reference}"),
        )
    }

    pub fn upload_unknown(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            format!("blob upload unknown to registry: {id}"),
        )
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
    }

    /// The error document `{"errors":[{"code","message","detail"}]}`.
    pub fn response(&self) -> Response<Payload> {
        #[derive(Serialize)]
        struct Entry<'a> {
            code: &'a str,
            message: &'a str,
            detail: serde_json::Value,
        }
        #[derive(Serialize)]
        struct Doc<'a> {
            errors: [Entry<'a>; 1],
        }
        let doc = Doc {
            errors: [Entry {
                code: self.code,
                message: &self.message,
                detail: serde_json::Value::Null,
            }],
        };
        let body = serde_json::to_vec(&doc).unwrap_or_default();
        let mut resp = Response::new(Payload::Full(Bytes::from(body)));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(value) = self
            .challenge
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        resp
    }
}

/// Which kind of request met an error: it decides the code of errors that several kinds share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Blob,
    Upload,
    Manifest,
    Listing,
}

/// The specification's answer to an error of the service.
pub fn from_ecr(e: &EcrError, ctx: Context) -> OciError {
    use StatusCode as S;
    let message = e.message().to_string();
    let bad = |code| OciError::new(S::BAD_REQUEST, code, message.clone());
    match e {
        EcrError::RepositoryNotFound(_) => OciError::new(S::NOT_FOUND, "NAME_UNKNOWN", message),
        EcrError::UploadNotFound(_) => OciError::new(S::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", message),
        EcrError::InvalidLayerPart { .. } => {
            OciError::new(S::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID", message)
        }
        EcrError::InvalidLayer(_) | EcrError::ImageDigestDoesNotMatch(_) => bad("DIGEST_INVALID"),
        EcrError::LayerPartTooSmall(_) | EcrError::EmptyUpload(_) => bad("BLOB_UPLOAD_INVALID"),
        EcrError::LayersNotFound(_) | EcrError::ReferencedImagesNotFound(_) => match ctx {
            Context::Manifest => bad("MANIFEST_BLOB_UNKNOWN"),
            _ => OciError::new(S::NOT_FOUND, "BLOB_UNKNOWN", message),
        },
        EcrError::LayerInaccessible(_) => OciError::new(S::NOT_FOUND, "BLOB_UNKNOWN", message),
        EcrError::ImageNotFound(_) => OciError::new(S::NOT_FOUND, "MANIFEST_UNKNOWN", message),
        // As ECR's registry answers a push over an immutable tag.
        EcrError::ImageTagAlreadyExists(_) => bad("TAG_INVALID"),
        EcrError::InvalidParameter(_)
        | EcrError::LimitExceeded(_)
        | EcrError::Serialization(_)
        | EcrError::UnknownOperation(_) => bad(match ctx {
            Context::Manifest => "MANIFEST_INVALID",
            Context::Upload => "BLOB_UPLOAD_INVALID",
            Context::Blob => "DIGEST_INVALID",
            Context::Listing => "UNSUPPORTED",
        }),
        EcrError::RepositoryAlreadyExists(_)
        | EcrError::RepositoryNotEmpty(_)
        | EcrError::LayerAlreadyExists(_)
        | EcrError::ImageAlreadyExists(_) => OciError::new(S::CONFLICT, "DENIED", message),
        EcrError::Server(_) => OciError::new(S::INTERNAL_SERVER_ERROR, "UNKNOWN", message),
        EcrError::Internal(_) => {
            OciError::new(S::INTERNAL_SERVER_ERROR, "UNKNOWN", INTERNAL_MESSAGE)
        }
    }
}

/// What a request addresses under `/v2/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/`: the API version check.
    Base,
    Catalog,
    Tags(&'a str),
    /// `/v2/<name>/blobs/uploads/` (`None`) or `/v2/<name>/blobs/uploads/<id>`.
    Upload(&'a str, Option<&'a str>),
    Blob(&'a str, &'a str),
    Manifest(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

/// Whether `path` is the OCI API's.
pub fn is_oci_path(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// The route of `path`, if it is one of the API's.
pub fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some((name, tail)) = rest.rsplit_once("/blobs/uploads") {
        match tail {
            "" | "/" => return Some(Route::Upload(name, None)),
            _ => {
                if let Some(id) = tail.strip_prefix('/')
                    && !id.contains('/')
                {
                    return Some(Route::Upload(name, Some(id)));
                }
            }
        }
    }
    let last_segment = |marker: &str| {
        rest.rsplit_once(marker)
            .filter(|(_, last)| !last.is_empty() && !last.contains('/'))
    };
    if let Some((name, digest)) = last_segment("/blobs/") {
        return Some(Route::Blob(name, digest));
    }
    if let Some((name, reference)) = last_segment("/manifests/") {
        return Some(Route::Manifest(name, reference));
    }
    if let Some((name, digest)) = last_segment("/referrers/") {
        return Some(Route::Referrers(name, digest));
    }
    None
}

/// What a request's `Range` header asks of a blob of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// No header, or one that is malformed or asks for several ranges: the whole blob.
    Whole,
    /// The inclusive byte range, within the blob.
    Range(u64, u64),
    Unsatisfiable,
}

/// Reads a single byte range (RFC 9110 §14.1.2), clamped to the blob. The local server's
/// download URLs (src/frontdoors/http.rs) read theirs with it too.
///
/// Ranges: `bytes=0-9`, `bytes=5-` (to the end), `bytes=-3` (the last 3), `bytes=2-999` (clamped).
/// Unsatisfiable: a first byte at or past the end, `bytes=-0`, any range of an empty object.
/// Ignored: `bytes=0-1,4-5` (several ranges), `bytes=5-2`, `bytes=a-b`, `bytes=-`, `items=0-1`.
pub fn requested_range(value: Option<&HeaderValue>, size: u64) -> Wanted {
    let Some(text) = value.and_then(|v| v.to_str().ok()).map(str::trim) else {
        return Wanted::Whole;
    };
    let spec = match text.split_at_checked(6) {
        Some((unit, spec)) if unit.eq_ignore_ascii_case("bytes=") => spec,
        _ => return Wanted::Whole,
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Wanted::Whole;
    };
    // Digits only; a number too large for u64 is past any end.
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (number(first), number(last)) {
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || size == 0 {
                Wanted::Unsatisfiable
            } else {
                Wanted::Range(size - suffix.min(size), size - 1)
            }
        }
        (Some(first), None) if last.is_empty() => {
            if first >= size {
                Wanted::Unsatisfiable
            } else {
                Wanted::Range(first, size - 1)
            }
        }
        (Some(first), Some(last)) if first <= last => {
            if first >= size {
                Wanted::Unsatisfiable
            } else {
                Wanted::Range(first, last.min(size - 1))
            }
        }
        _ => Wanted::Whole,
    }
}

/// A chunk's `Content-Range: <start>-<end>` (inclusive; a `bytes ` prefix is tolerated).
/// `None` for a header that is no such range.
pub fn content_range(value: &HeaderValue) -> Option<(u64, u64)> {
    let text = value.to_str().ok()?.trim();
    let text = text.strip_prefix("bytes ").unwrap_or(text);
    let text = text.split('/').next().unwrap_or(text);
    let (a, b) = text.split_once('-')?;
    let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
    (a <= b).then_some((a, b))
}

/// An upload's `Range` header for `held` bytes received: `0-<last byte>` (`0-0` when empty, as
/// the reference registry answers).
pub fn held_range(held: u64) -> String {
    format!("0-{}", held.saturating_sub(1))
}

/// A tag as the specification allows it: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The value of query parameter `key`, percent-decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_at_the_last_marker() {
        assert_eq!(route("/v2/"), Some(Route::Base));
        assert_eq!(route("/v2"), Some(Route::Base));
        assert_eq!(route("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(route("/v2/a/b/tags/list"), Some(Route::Tags("a/b")));
        assert_eq!(
            route("/v2/a/blobs/uploads/"),
            Some(Route::Upload("a", None))
        );
        assert_eq!(
            route("/v2/a/blobs/uploads/x-1"),
            Some(Route::Upload("a", Some("x-1")))
        );
        assert_eq!(
            route("/v2/blobs/blobs/sha256:ab"),
            Some(Route::Blob("blobs", "sha256:ab"))
        );
        assert_eq!(
            route("/v2/a/manifests/v1"),
            Some(Route::Manifest("a", "v1"))
        );
        assert_eq!(
            route("/v2/a/referrers/sha256:00"),
            Some(Route::Referrers("a", "sha256:00"))
        );
        assert_eq!(route("/v2/a/other"), None);
        assert_eq!(route("/v2/a/manifests/"), None);
    }

    #[test]
    fn content_ranges_and_queries() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(content_range(&v("0-9")), Some((0, 9)));
        assert_eq!(content_range(&v("bytes 10-19/*")), Some((10, 19)));
        assert_eq!(content_range(&v("9-0")), None);
        assert_eq!(content_range(&v("x")), None);
        assert_eq!(
            query_param(Some("n=2&last=a%2Fb"), "last").as_deref(),
            Some("a/b")
        );
        assert_eq!(query_param(Some("n=2"), "last"), None);
        assert_eq!(query_param(Some("a=%"), "a").as_deref(), Some("%"));
        assert_eq!(percent_encode("a/b:c"), "a%2Fb%3Ac");
        assert!(is_tag("v1.0_rc-1") && !is_tag("-x") && !is_tag("a/b") && !is_tag(""));
    }
}

//! The local front door: the protocol handler served over HTTP/1.1 with hyper, plus the embedded
//! backend's download URLs (`GET`/`HEAD` of a URL the blob store signed), whose objects are
//! streamed from the store with `Range` support.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::domain::error::{StoreError, chain};
use crate::ports::{BlobStore, DownloadRefused, MetadataStore, SignedDownloads};
use crate::protocols::ecr::{self, MAX_BODY};
use crate::service::Service;

/// The download URLs this server answers itself, if the blob store issues any.
pub type Downloads = Option<Arc<dyn SignedDownloads>>;

/// Serves until `shutdown` resolves; connections in flight are then dropped (every state change
/// is a single atomic write, so a cut request leaves nothing half-done).
pub async fn serve<M: MetadataStore, B: BlobStore>(
    svc: Arc<Service<M, B>>,
    downloads: Downloads,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let svc = svc.clone();
        let downloads = downloads.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let svc = svc.clone();
                let downloads = downloads.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        respond(&svc, downloads.as_deref(), req).await,
                    )
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Body of the local server's answers: API answers in one piece, downloads streamed.
pub type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Answers one request. An API request runs to its end in a task of its own once its body is
/// read: a client that disconnects or times out (hyper then drops this future) does not cut a
/// CompleteLayerUpload halfway, and the client's retry finds the finished upload.
async fn respond<M: MetadataStore, B: BlobStore>(
    svc: &Arc<Service<M, B>>,
    downloads: Option<&dyn SignedDownloads>,
    req: http::Request<Incoming>,
) -> http::Response<ResponseBody> {
    // The API is POST only, so GET and HEAD are free for download URLs; any other request, at
    // any path, is the API's.
    if matches!(*req.method(), Method::GET | Method::HEAD)
        && let Some(resolved) =
            downloads.and_then(|d| d.resolve_download(req.uri().path(), req.uri().query()))
    {
        let head = req.method() == Method::HEAD;
        return download(svc.blobs(), head, req.headers(), resolved).await;
    }
    let (parts, body) = req.into_parts();
    let response = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            let req = http::Request::from_parts(parts, collected.to_bytes());
            let svc = svc.clone();
            match tokio::spawn(async move { ecr::handle(&svc, req).await }).await {
                Ok(response) => response,
                // A panic in the handler: the client gets ServerException, which it retries.
                Err(e) => {
                    tracing::error!(error = %e, "request handler failed");
                    let err = crate::domain::error::EcrError::Server(
                        crate::domain::error::INTERNAL_MESSAGE.into(),
                    );
                    ecr::respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        ecr::error_body(&err),
                        Some(err.type_name()),
                        &uuid::Uuid::new_v4().to_string(),
                    )
                }
            }
        }
        Err(e) => ecr::unreadable_body(e.is::<http_body_util::LengthLimitError>(), &e),
    };
    response.map(full)
}

/// Answers a download URL: 403 if refused, 404 if the object is gone, else the object or the
/// one range asked for (206), or 416 for a range past its end.
async fn download<B: BlobStore>(
    blobs: &B,
    head: bool,
    headers: &HeaderMap,
    resolved: Result<String, DownloadRefused>,
) -> http::Response<ResponseBody> {
    let key = match resolved {
        Ok(key) => key,
        Err(DownloadRefused::BadSignature) => {
            return plain(
                StatusCode::FORBIDDEN,
                "the download URL's signature does not match\n",
            );
        }
        Err(DownloadRefused::Expired) => {
            return plain(StatusCode::FORBIDDEN, "the download URL has expired\n");
        }
    };
    let size = match blobs.object_size(&key).await {
        Ok(Some(size)) => size,
        Ok(None) => return not_found(),
        Err(e) => return internal(&key, &e),
    };
    let wanted = requested_range(headers.get(header::RANGE), size);
    let range = match wanted {
        Wanted::Whole => None,
        Wanted::Range(first, last) => Some((first, last)),
        Wanted::Unsatisfiable => {
            let mut resp = plain(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "the requested range is not within the object\n",
            );
            insert(
                resp.headers_mut(),
                header::CONTENT_RANGE,
                format!("bytes */{size}"),
            );
            return resp;
        }
    };
    let body = if head || size == 0 {
        empty()
    } else {
        match blobs.read_object(&key, range).await {
            // A read error midway can only cut the connection: the status is already sent, and
            // the Content-Length left unmet tells the client the body is incomplete.
            Ok(stream) => {
                let key = key.clone();
                StreamBody::new(stream.map_ok(Frame::data).map_err(move |e| {
                    tracing::error!(%key, error = %chain(&e), "download cut");
                    std::io::Error::other(e)
                }))
                .boxed_unsync()
            }
            Err(StoreError::NotFound(_)) => return not_found(),
            Err(e) => return internal(&key, &e),
        }
    };
    let mut resp = http::Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let len = match range {
        Some((first, last)) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            insert(
                resp.headers_mut(),
                header::CONTENT_RANGE,
                format!("bytes {first}-{last}/{size}"),
            );
            last - first + 1
        }
        None => size,
    };
    insert(resp.headers_mut(), header::CONTENT_LENGTH, len.to_string());
    resp
}

/// What a request's `Range` header asks of an object of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// No header, or one that is malformed or asks for several ranges: the whole object.
    Whole,
    /// The inclusive byte range, within the object.
    Range(u64, u64),
    Unsatisfiable,
}

/// Reads a single byte range (RFC 9110 §14.1.2), clamped to the object.
///
/// Ranges: `bytes=0-9`, `bytes=5-` (to the end), `bytes=-3` (the last 3), `bytes=2-999` (clamped).
/// Unsatisfiable: a first byte at or past the end, `bytes=-0`, any range of an empty object.
/// Ignored: `bytes=0-1,4-5` (several ranges), `bytes=5-2`, `bytes=a-b`, `bytes=-`, `items=0-1`.
fn requested_range(value: Option<&HeaderValue>, size: u64) -> Wanted {
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

fn insert(headers: &mut HeaderMap, name: header::HeaderName, value: String) {
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name, v);
    }
}

fn plain(status: StatusCode, text: &'static str) -> http::Response<ResponseBody> {
    let mut resp = http::Response::new(full(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn not_found() -> http::Response<ResponseBody> {
    plain(StatusCode::NOT_FOUND, "no such object\n")
}

/// A failure of ours: logged here, once, with its chain of causes; the client reads a generic
/// answer.
fn internal(key: &str, e: &StoreError) -> http::Response<ResponseBody> {
    tracing::error!(%key, error = %chain(e), "download failed");
    plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str, size: u64) -> Wanted {
        requested_range(Some(&HeaderValue::from_str(text).unwrap()), size)
    }

    #[test]
    fn single_ranges_are_clamped_to_the_object() {
        assert_eq!(requested_range(None, 10), Wanted::Whole);
        assert_eq!(range("bytes=0-9", 10), Wanted::Range(0, 9));
        assert_eq!(range("bytes=2-4", 10), Wanted::Range(2, 4));
        assert_eq!(range("bytes=2-999", 10), Wanted::Range(2, 9));
        assert_eq!(range("bytes=5-", 10), Wanted::Range(5, 9));
        assert_eq!(range("bytes=-3", 10), Wanted::Range(7, 9));
        assert_eq!(range("bytes=-30", 10), Wanted::Range(0, 9));
        assert_eq!(range("Bytes=9-9", 10), Wanted::Range(9, 9));
        assert_eq!(
            range("bytes=0-99999999999999999999999", 10),
            Wanted::Range(0, 9)
        );
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        assert_eq!(range("bytes=10-", 10), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=10-20", 10), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=-0", 10), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=0-0", 0), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=-1", 0), Wanted::Unsatisfiable);
        assert_eq!(
            range("bytes=99999999999999999999999-", 10),
            Wanted::Unsatisfiable
        );
    }

    #[test]
    fn malformed_or_multiple_ranges_are_ignored() {
        for text in [
            "bytes=0-1,4-5",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=-",
            "bytes=",
            "bytes=1",
            "bytes= 1-2",
            "bytes=+1-2",
            "items=0-1",
            "0-1",
        ] {
            assert_eq!(range(text, 10), Wanted::Whole, "{text}");
        }
    }
}

//! The local front door: the same handler as under Lambda, served over HTTP/1.1 with hyper.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::error::EcrError;
use crate::ports::{BlobStore, MetadataStore};
use crate::protocol::{self, MAX_BODY};
use crate::service::Service;

/// Serves until `shutdown` resolves; connections in flight are then dropped (every state change
/// is a single atomic write, so a cut request leaves nothing half-done).
pub async fn serve<M: MetadataStore, B: BlobStore>(
    svc: Arc<Service<M, B>>,
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
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let svc = svc.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&svc, req).await) }
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

async fn respond<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let response = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            let body = if bytes.is_empty() {
                lambda_http::Body::Empty
            } else {
                lambda_http::Body::Binary(Vec::from(bytes))
            };
            protocol::handle(svc, http::Request::from_parts(parts, body)).await
        }
        Err(e) => {
            let err = if e.is::<http_body_util::LengthLimitError>() {
                crate::domain::invalid(
                    "layerPartBlob",
                    format_args!(
                        "must have length less than or equal to {}",
                        crate::config::MAX_LAYER_PART
                    ),
                )
            } else {
                EcrError::Serialization(format!("could not read the request body: {e}"))
            };
            error_response(&err)
        }
    };
    let (mut parts, body) = response.into_parts();
    parts.headers.remove("x-lambda-http-content-encoding");
    let bytes = match body {
        lambda_http::Body::Text(t) => Bytes::from(t),
        lambda_http::Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    http::Response::from_parts(parts, Full::new(bytes))
}

fn error_response(err: &EcrError) -> http::Response<lambda_http::Body> {
    let mut resp = http::Response::new(lambda_http::Body::Text(protocol::error_body(err)));
    *resp.status_mut() =
        http::StatusCode::from_u16(err.status()).unwrap_or(http::StatusCode::BAD_REQUEST);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(protocol::CONTENT_TYPE),
    );
    h.insert(
        "x-amzn-errortype",
        http::HeaderValue::from_static(err.type_name()),
    );
    if let Ok(v) = http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("x-amzn-requestid", v);
    }
    // The rest of an oversized body is not read: close the connection after answering.
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

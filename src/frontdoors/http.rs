//! The local front door: the protocol handler served over HTTP/1.1 with hyper, plus the embedded
//! backend's download URLs (`GET`/`HEAD` of a URL the blob store signed), whose objects are
//! streamed from the store with `Range` support.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::domain::error::{StoreError, chain};
use crate::ports::{BlobStore, DownloadRefused, MetadataStore, SignedDownloads};
use crate::protocols::auth::Auth;
use crate::protocols::oci::wire::{Wanted, requested_range};
use crate::protocols::{ecr, oci};
use crate::service::Service;

/// The download URLs this server answers itself, if the blob store issues any.
pub type Downloads = Option<Arc<dyn SignedDownloads>>;

/// The local server's bounds on time, connections and buffered request bytes (see README's
/// Configuration: `--header-timeout-secs` and the settings after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A request's head must arrive whole within this long of the server starting to wait for it
    /// (on a new connection, or after the previous answer on a kept-alive one).
    pub header_timeout: Duration,
    /// The longest silence in the middle of a request body.
    pub idle_timeout: Duration,
    /// A whole request body must arrive within this long.
    pub body_timeout: Duration,
    /// The answer's head must be ready within this long of the request's head.
    pub request_timeout: Duration,
    /// Connections open at once; beyond it the connection that has waited longest without a
    /// request in progress is closed to make room, or, if every one is busy, new connections
    /// wait in the listen backlog.
    pub max_connections: usize,
    /// Request body bytes held at once across all requests; a request that cannot get room for
    /// its next bytes within [`BUFFER_WAIT`] is answered `LimitExceededException`, which SDKs
    /// retry.
    pub max_buffered_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(900),
            max_connections: 512,
            max_buffered_bytes: 256 * 1024 * 1024,
        }
    }
}

/// How long a request waits for room under [`Limits::max_buffered_bytes`] before it is refused.
pub const BUFFER_WAIT: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves; connections in flight are then dropped (every state change
/// is a single atomic write, so a cut request leaves nothing half-done).
pub async fn serve<M: MetadataStore, B: BlobStore>(
    svc: Arc<Service<M, B>>,
    downloads: Downloads,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with_auth(svc, downloads, None, listener, limits, shutdown).await
}

/// [`serve`], with every API request checked by `auth` when given (`ECR_AUTH=sigv4`).
pub async fn serve_with_auth<M: MetadataStore, B: BlobStore>(
    svc: Arc<Service<M, B>>,
    downloads: Downloads,
    auth: Option<Arc<Auth>>,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let limits = Arc::new(limits);
    let budget = Arc::new(Semaphore::new(
        limits.max_buffered_bytes.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let conns = Arc::new(Connections::default());
    let mut accept_errors = RateLimitedLog::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning, and log
                    // a burst once rather than once per failure.
                    accept_errors.warn(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        // Full: close the connection that has waited longest without a request, and take its
        // slot (or any other) once free; if every one is busy, new connections wait in the
        // listen backlog meanwhile.
        let slot = loop {
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                break slot;
            }
            let evicted = conns.evict_oldest_idle();
            if !evicted {
                tracing::debug!(%peer, "every connection is busy; waiting for a slot");
            }
            let recheck = Duration::from_millis(if evicted { 100 } else { 1000 });
            tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => break slot,
                    Err(_) => return Ok(()),
                },
                () = tokio::time::sleep(recheck) => {}
                () = &mut shutdown => return Ok(()),
            }
        };
        let svc = svc.clone();
        let downloads = downloads.clone();
        let auth = auth.clone();
        let limits = limits.clone();
        let budget = budget.clone();
        let (id, conn) = conns.open();
        let conns = conns.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let busy_conn = conn.clone();
            let request_timeout = limits.request_timeout;
            let header_timeout = limits.header_timeout;
            let service = service_fn(move |req| {
                let svc = svc.clone();
                let downloads = downloads.clone();
                let auth = auth.clone();
                let limits = limits.clone();
                let budget = budget.clone();
                let busy = Busy::start(&busy_conn);
                async move {
                    let reading = Reading {
                        limits: &limits,
                        budget: &budget,
                    };
                    let resp = match tokio::time::timeout(
                        request_timeout,
                        respond(&svc, downloads.as_deref(), auth, &reading, req),
                    )
                    .await
                    {
                        Ok(resp) => resp,
                        Err(_) => ecr::request_timed_out(request_timeout).map(full),
                    };
                    Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked {
                        inner: body,
                        _busy: busy,
                    }))
                }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(served);
            loop {
                tokio::select! {
                    ended = served.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = conn.evict.notified() => {
                        if conn.busy.load(Ordering::SeqCst) == 0 {
                            tracing::debug!(%peer, "idle connection closed to make room");
                            break;
                        }
                    }
                }
            }
            conns.close(id);
        });
    }
}

/// One open connection: how many of its requests are in progress, and the signal to close it
/// if it has none.
#[derive(Default)]
struct Connection {
    busy: AtomicUsize,
    evict: Notify,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Connections {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
}

impl Connections {
    fn open(&self) -> (u64, Arc<Connection>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Connection::default());
        self.lock().insert(id, conn.clone());
        (id, conn)
    }

    fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Asks the oldest connection with no request in progress to close; false if there is none.
    fn evict_oldest_idle(&self) -> bool {
        let open = self.lock();
        match open.values().find(|c| c.busy.load(Ordering::SeqCst) == 0) {
            Some(conn) => {
                conn.evict.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request in progress on its connection, from its head until its answer is sent or dropped.
struct Busy(Arc<Connection>);

impl Busy {
    fn start(conn: &Arc<Connection>) -> Busy {
        conn.busy.fetch_add(1, Ordering::SeqCst);
        Busy(conn.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer's body that keeps its request counted as in progress until it is sent.
struct Tracked {
    inner: ResponseBody,
    _busy: Busy,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A warning logged at most once per [`RateLimitedLog::EVERY`], with the count of those left out.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    const EVERY: Duration = Duration::from_secs(5);

    fn warn(&mut self, e: &std::io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(error = %e, suppressed = self.suppressed, "accept failed");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// What reading a request body is bounded by.
struct Reading<'a> {
    limits: &'a Limits,
    budget: &'a Arc<Semaphore>,
}

/// A request body held whole, with its bytes' share of the buffered-bytes budget, returned when
/// the last reference to the bytes is dropped.
struct Held {
    bytes: Vec<u8>,
    _room: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Why a request body was not read whole.
enum Unread {
    TooLarge,
    NoRoom,
    TimedOut(Duration),
    Cut(hyper::Error),
}

/// Reads a body of at most `limit` bytes within the time limits, taking room from the budget
/// for each piece as it arrives.
async fn read_body(
    reading: &Reading<'_>,
    headers: &HeaderMap,
    mut body: Incoming,
    limit: usize,
) -> Result<Bytes, Unread> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Unread::TooLarge);
    }
    let limits = reading.limits;
    let deadline = tokio::time::Instant::now() + limits.body_timeout;
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut room: Option<OwnedSemaphorePermit> = None;
    loop {
        let next = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + limits.idle_timeout),
            body.frame(),
        )
        .await;
        let frame = match next {
            Err(_) => {
                let waited = if tokio::time::Instant::now() >= deadline {
                    limits.body_timeout
                } else {
                    limits.idle_timeout
                };
                return Err(Unread::TimedOut(waited));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(Unread::Cut(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > limit {
            return Err(Unread::TooLarge);
        }
        if !data.is_empty() {
            let more = take_room(reading.budget, data.len()).await?;
            match &mut room {
                Some(r) => r.merge(more),
                None => room = Some(more),
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from_owner(Held {
        bytes: buf,
        _room: room,
    }))
}

/// Room for `n` more body bytes in the buffered-bytes budget, waiting at most [`BUFFER_WAIT`].
async fn take_room(budget: &Arc<Semaphore>, n: usize) -> Result<OwnedSemaphorePermit, Unread> {
    let n = u32::try_from(n).map_err(|_| Unread::TooLarge)?;
    match budget.clone().try_acquire_many_owned(n) {
        Ok(p) => Ok(p),
        Err(_) => {
            match tokio::time::timeout(BUFFER_WAIT, budget.clone().acquire_many_owned(n)).await {
                Ok(Ok(p)) => Ok(p),
                _ => Err(Unread::NoRoom),
            }
        }
    }
}

/// An OCI request body as it is read: frames gathered into pieces of [`oci::piece_size`]
/// bytes, each holding its room in the buffered-bytes budget.
struct Gathering {
    body: Incoming,
    idle: Duration,
    budget: Arc<Semaphore>,
    piece: usize,
    /// The rest of a frame that filled the previous piece.
    rest: Bytes,
    ended: bool,
}

impl Gathering {
    /// The next piece: `piece` bytes (fewer at the end of the body), holding their room in the
    /// budget until the last reference to them is dropped, that is until the service has
    /// written them.
    async fn next(&mut self) -> Option<Result<Bytes, oci::BodyError>> {
        let mut buf: Vec<u8> = Vec::new();
        let mut room: Option<OwnedSemaphorePermit> = None;
        while buf.len() < self.piece {
            if self.rest.is_empty() {
                if self.ended {
                    break;
                }
                match tokio::time::timeout(self.idle, self.body.frame()).await {
                    Err(_) => {
                        self.ended = true;
                        let e = oci::BodyError(format!("no data for {} s", self.idle.as_secs()));
                        return Some(Err(e));
                    }
                    Ok(None) => {
                        self.ended = true;
                        break;
                    }
                    Ok(Some(Err(e))) => {
                        self.ended = true;
                        return Some(Err(oci::BodyError(e.to_string())));
                    }
                    Ok(Some(Ok(frame))) => {
                        // Trailers carry no data.
                        self.rest = frame.into_data().unwrap_or_default();
                        continue;
                    }
                }
            }
            let take = (self.piece - buf.len()).min(self.rest.len());
            let data = self.rest.split_to(take);
            let Ok(more) = take_room(&self.budget, data.len()).await else {
                self.ended = true;
                self.rest = Bytes::new();
                return Some(Err(oci::BodyError::no_room()));
            };
            match &mut room {
                Some(r) => r.merge(more),
                None => {
                    room = Some(more);
                    buf.reserve_exact(self.piece);
                }
            }
            buf.extend_from_slice(&data);
        }
        if buf.is_empty() {
            return None;
        }
        Some(Ok(Bytes::from_owner(Held {
            bytes: buf,
            _room: room,
        })))
    }

    /// Reads and drops what is left of the body, at most `limit` bytes within `within`: whether
    /// it ended (the connection can then carry the next request).
    async fn drain(&mut self, limit: usize, within: Duration) -> bool {
        let mut left = limit.saturating_sub(std::mem::take(&mut self.rest).len());
        let deadline = tokio::time::Instant::now() + within;
        while !self.ended {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(None) => self.ended = true,
                Ok(Some(Ok(frame))) => {
                    let n = frame.data_ref().map_or(0, |d| d.len());
                    if n > left {
                        return false;
                    }
                    left -= n;
                }
                Ok(Some(Err(_))) | Err(_) => return false,
            }
        }
        true
    }
}

/// What of a request body its answer left unread the server reads and drops, within
/// [`DRAIN_TIME`], so that the connection stays open for the next request (as Go's server
/// does); past that, the answer says `Connection: close`.
const DRAIN_LIMIT: usize = 256 * 1024;
const DRAIN_TIME: Duration = Duration::from_millis(500);

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
    auth: Option<Arc<Auth>>,
    reading: &Reading<'_>,
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
    if oci::wire::is_oci_path(req.uri().path()) {
        return oci_request(svc, auth, reading, req).await;
    }
    let (parts, body) = req.into_parts();
    let limit = ecr::body_limit(&parts.headers);
    let response = match read_body(reading, &parts.headers, body, limit).await {
        Ok(bytes) => {
            // Detached from the connection: a client that goes away does not cut the request
            // (a cut CompleteLayerUpload would otherwise hold its upload).
            let req = http::Request::from_parts(parts, bytes);
            let svc = svc.clone();
            match tokio::spawn(async move { ecr::handle_with(&svc, auth.as_deref(), req).await })
                .await
            {
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
        Err(unread) => {
            let mut refused = match unread {
                Unread::TooLarge => ecr::body_too_large(&parts.headers),
                Unread::NoRoom => ecr::no_room_for_body(),
                Unread::TimedOut(after) => ecr::unreadable_body(
                    false,
                    &format_args!("no complete body within {} s", after.as_secs()),
                ),
                Unread::Cut(e) => ecr::unreadable_body(false, &e),
            };
            // The rest of the body is not read: the connection cannot carry another request,
            // and the answer says so.
            refused
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            refused
        }
    };
    response.map(full)
}

/// Answers a request of the OCI API (src/protocols/oci.rs): its body is handed over as it
/// arrives, in pieces of one part each (a layer pushed in one request is written part by part,
/// never held whole) counted in the buffered-bytes budget until written, and a blob is streamed
/// back. Like an API request, it runs in a task of its own.
async fn oci_request<M: MetadataStore, B: BlobStore>(
    svc: &Arc<Service<M, B>>,
    auth: Option<Arc<Auth>>,
    reading: &Reading<'_>,
    req: http::Request<Incoming>,
) -> http::Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let gathering = Gathering {
        body,
        idle: reading.limits.idle_timeout,
        budget: Arc::clone(reading.budget),
        piece: oci::piece_size(svc),
        rest: Bytes::new(),
        ended: false,
    };
    // The next piece is read while the service writes the one before (a reader task a piece
    // ahead, no further: it takes a slot in the channel before it reads on), so a body streams
    // in while the parts are written. The reader ends when the request does (its receiver goes).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(async move {
        let mut g = gathering;
        while let Ok(slot) = tx.reserve().await {
            let Some(piece) = g.next().await else {
                return true;
            };
            slot.send(piece);
        }
        // The answer is ready and left the body unread (a GET sent with a body, a chunk
        // refused before its end): hyper would close the connection without saying so, and a
        // client that sends its next request on it would find it gone.
        g.drain(DRAIN_LIMIT, DRAIN_TIME).await
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let piece = rx.recv().await?;
        Some((piece, rx))
    });
    let req = http::Request::from_parts(parts, Box::pin(stream) as oci::BodyStream);
    let svc = svc.clone();
    let answer =
        tokio::spawn(
            async move { oci::handle(&svc, auth.as_deref(), oci::Delivery::Serve, req).await },
        );
    let answer = answer.await;
    // The handler has dropped the request, so the reader ends: at once if the body was read to
    // its end, after the drain otherwise.
    let read_whole = matches!(
        tokio::time::timeout(DRAIN_TIME * 2, reader).await,
        Ok(Ok(true))
    );
    match answer {
        Ok(mut resp) => {
            if !read_whole {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp.map(|payload| match payload {
                oci::Payload::Full(bytes) => full(bytes),
                oci::Payload::Blob(stream) => {
                    StreamBody::new(stream.map_ok(Frame::data).map_err(|e| {
                        tracing::error!(error = %chain(&e), "blob download cut");
                        std::io::Error::other(e)
                    }))
                    .boxed_unsync()
                }
            })
        }
        Err(e) => {
            tracing::error!(error = %e, "request handler failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
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

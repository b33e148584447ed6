//! The service on the embedded backend (redb state + files): small Lambda-style parts are
//! accepted and coalesced, an upload in progress survives a restart, and the local server
//! serves the backend's signed download URLs.

use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata};
use ecr_layer_upload::ports::MetadataStore;
use ecr_layer_upload::service::Service;

use crate::common::service::{complete, create_repository, initiate, part, small_parts};
use crate::common::{digest, noise, temp_dir};

const MIB: u64 = 1024 * 1024;

fn open(dir: &std::path::Path) -> Service<LocalMetadata, LocalBlobs> {
    Service::new(
        LocalMetadata::open(dir).unwrap(),
        LocalBlobs::open(dir).unwrap().with_min_part_size(5 * MIB),
        small_parts(),
    )
}

/// Sends `bytes` as the part of upload `id` of local/app that starts at byte `first`.
async fn send(svc: &Service<LocalMetadata, LocalBlobs>, id: &str, first: usize, bytes: &[u8]) {
    part(svc, "local/app", id, first as u64, bytes)
        .await
        .unwrap();
}

#[tokio::test]
async fn small_parts_and_a_restart_mid_upload() {
    let dir = temp_dir();
    let data = noise(11 * MIB as usize + 4321, 1);
    let sizes = [1024usize, 4097, 333_333, MIB as usize + 7, 1];
    let mut sizes = sizes.iter().cycle();
    let (id, mut sent) = {
        let svc = open(dir.path());
        create_repository(&svc, "local/app").await;
        let id = initiate(&svc, "local/app").await;
        let mut sent = 0usize;
        while sent < 7 * MIB as usize {
            let len = *sizes.next().unwrap();
            send(&svc, &id, sent, &data[sent..sent + len]).await;
            sent += len;
        }
        (id, sent)
        // The service, its database and files are closed here, as at a process exit.
    };
    let svc = open(dir.path());
    let up = svc.metadata().get_upload(&id).await.unwrap().unwrap();
    assert_eq!(
        up.next_byte, sent as u64,
        "acknowledged bytes survive the restart"
    );
    assert_eq!(up.parts_flushed, 1);
    while sent < data.len() {
        let len = (*sizes.next().unwrap()).min(data.len() - sent);
        send(&svc, &id, sent, &data[sent..sent + len]).await;
        sent += len;
    }
    let digest = digest(&data);
    let done = complete(&svc, "local/app", &id, &[&digest]).await.unwrap();
    assert_eq!(done.layer_digest, digest);
    let recorded = svc
        .metadata()
        .get_layer("123456789012", "local/app", &digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded.size, data.len() as u64);
    // Only the layer's file is left: no staging files.
    let staging = dir.path().join("blobs/objects/staging");
    let leftovers = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        leftovers,
        0,
        "staging objects left in {}",
        staging.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Download URLs served by the local server.

mod downloads {
    use std::sync::Arc;

    use bytes::Bytes;
    use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata};
    use ecr_layer_upload::frontdoors::http as server;
    use ecr_layer_upload::ports::BlobStore;
    use ecr_layer_upload::service::Service;
    use http::{HeaderMap, Method, StatusCode, header};
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;

    /// The server on a loopback port of its own, with the data directory and the blob store
    /// it serves; it stops when the returned sender is dropped.
    struct Running {
        blobs: LocalBlobs,
        _stop: tokio::sync::oneshot::Sender<()>,
        _dir: tempfile::TempDir,
    }

    async fn start() -> Running {
        let dir = crate::common::temp_dir();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let blobs = LocalBlobs::open(dir.path()).unwrap().with_public_url(&base);
        let svc = Arc::new(Service::new(
            LocalMetadata::open(dir.path()).unwrap(),
            blobs.clone(),
            crate::common::service::small_parts(),
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::serve(
            svc,
            Some(Arc::new(blobs.clone())),
            listener,
            server::Limits::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        Running {
            blobs,
            _stop: stop,
            _dir: dir,
        }
    }

    pub(crate) struct Answer {
        pub(crate) status: StatusCode,
        headers: HeaderMap,
        pub(crate) body: Vec<u8>,
    }

    impl Answer {
        fn header(&self, name: header::HeaderName) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }
    }

    /// One request over a fresh HTTP/1.1 connection.
    async fn fetch(method: Method, url: &str, headers: &[(header::HeaderName, &str)]) -> Answer {
        let uri: http::Uri = url.parse().unwrap();
        let authority = uri.authority().unwrap().to_string();
        let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(uri.path_and_query().unwrap().as_str())
            .header(header::HOST, authority);
        for (name, value) in headers {
            req = req.header(name, *value);
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub(crate) async fn get(url: &str, range: Option<&str>) -> Answer {
        let headers: Vec<_> = range.map(|r| (header::RANGE, r)).into_iter().collect();
        fetch(Method::GET, url, &headers).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_download_url_serves_the_object_whole_and_in_ranges() {
        let server = start().await;
        // Several of the store's read chunks, so the answer is streamed in pieces.
        let data = crate::common::noise(3 * 1024 * 1024 + 17, 2);
        let size = data.len();
        let key = "uploads/served";
        server
            .blobs
            .put_object(key, Bytes::from(data.clone()))
            .await
            .unwrap();
        let url = server.blobs.download_url(key, 600).await.unwrap();

        let whole = get(&url, None).await;
        assert_eq!(whole.status, StatusCode::OK);
        assert!(whole.body == data, "whole object");
        assert_eq!(
            whole.header(header::CONTENT_LENGTH),
            Some(size.to_string().as_str())
        );
        assert_eq!(whole.header(header::ACCEPT_RANGES), Some("bytes"));
        assert_eq!(
            whole.header(header::CONTENT_TYPE),
            Some("application/octet-stream")
        );
        assert_eq!(whole.header(header::CONTENT_RANGE), None);

        let last = size - 1;
        for (range, first, end) in [
            ("bytes=0-0".to_owned(), 0, 0),
            ("bytes=10-1000009".to_owned(), 10, 1_000_009),
            (format!("bytes={}-", size - 300), size - 300, last),
            ("bytes=-7".to_owned(), size - 7, last),
            (format!("bytes=5-{}", size * 2), 5, last),
            (format!("bytes=-{}", size + 5), 0, last),
        ] {
            let part = get(&url, Some(&range)).await;
            assert_eq!(part.status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert!(part.body == data[first..=end], "{range}: wrong bytes");
            assert_eq!(
                part.header(header::CONTENT_RANGE),
                Some(format!("bytes {first}-{end}/{size}").as_str()),
                "{range}"
            );
            assert_eq!(
                part.header(header::CONTENT_LENGTH),
                Some((end - first + 1).to_string().as_str()),
                "{range}"
            );
            assert_eq!(part.header(header::ACCEPT_RANGES), Some("bytes"));
        }

        for range in [
            format!("bytes={size}-"),
            format!("bytes={size}-{}", size + 9),
            "bytes=-0".into(),
        ] {
            let refused = get(&url, Some(&range)).await;
            assert_eq!(refused.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
            assert_eq!(
                refused.header(header::CONTENT_RANGE),
                Some(format!("bytes */{size}").as_str()),
                "{range}"
            );
        }

        // Malformed and multi-range headers are ignored: the whole object.
        for range in ["bytes=0-1,5-6", "bytes=9-3", "bytes=x-", "pages=1-2"] {
            let ignored = get(&url, Some(range)).await;
            assert_eq!(ignored.status, StatusCode::OK, "{range}");
            assert!(ignored.body == data, "{range}: whole object");
        }

        // HEAD: the GET's headers, no body.
        let head = fetch(Method::HEAD, &url, &[]).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(
            head.header(header::CONTENT_LENGTH),
            Some(size.to_string().as_str())
        );
        assert_eq!(head.header(header::ACCEPT_RANGES), Some("bytes"));
        assert!(head.body.is_empty());
        let head_range = fetch(Method::HEAD, &url, &[(header::RANGE, "bytes=-7")]).await;
        assert_eq!(head_range.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(head_range.header(header::CONTENT_LENGTH), Some("7"));
        assert!(head_range.body.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forged_expired_and_dangling_download_urls_are_refused() {
        let server = start().await;
        let key = "uploads/guarded";
        server
            .blobs
            .put_object(key, Bytes::from_static(b"secret layer"))
            .await
            .unwrap();
        let url = server.blobs.download_url(key, 600).await.unwrap();
        let (_, signature) = url.split_once("X-Ecr-Signature=").unwrap();

        let forged = [
            url.replace(signature, &"0".repeat(signature.len())),
            url.replace("uploads/guarded", "uploads/other"),
            url.split_once('?').unwrap().0.to_owned(),
        ];
        for forged in &forged {
            let answer = get(forged, None).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{forged}");
            assert!(
                String::from_utf8_lossy(&answer.body).contains("signature"),
                "a short reason"
            );
            assert!(!answer.body.windows(6).any(|w| w == b"secret"));
        }

        let expired = server.blobs.download_url(key, 0).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let answer = loop {
            let answer = get(&expired, None).await;
            if answer.status != StatusCode::OK || std::time::Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert!(String::from_utf8_lossy(&answer.body).contains("expired"));

        // A valid URL of an object that is gone.
        server
            .blobs
            .delete_objects(&[key.to_owned()])
            .await
            .unwrap();
        assert_eq!(get(&url, None).await.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_requests_still_reach_the_api() {
        let server = start().await;
        let key = "uploads/api";
        server
            .blobs
            .put_object(key, Bytes::from_static(b"bytes"))
            .await
            .unwrap();
        let url = server.blobs.download_url(key, 600).await.unwrap();
        // POST at a download URL's path is an API request, as POST at any path is.
        let post = fetch(Method::POST, &url, &[]).await;
        assert!(post.status.is_client_error(), "{}", post.status);
        assert_ne!(post.body, b"bytes");
        assert_eq!(
            post.header(header::CONTENT_TYPE),
            Some("application/x-amz-json-1.1")
        );
        // And a GET that is not a download URL is answered by the API as before.
        let base = url.split("/_download/").next().unwrap();
        let plain_get = get(&format!("{base}/"), None).await;
        assert_eq!(
            plain_get.header(header::CONTENT_TYPE),
            Some("application/x-amz-json-1.1")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The binary: download URLs name the address it bound, or ECR_PUBLIC_URL.

mod binary {
    use http::StatusCode;

    use crate::common::{Server, push_blob};
    use crate::local_backend::downloads;

    /// Pushes a one-layer image to a fresh server started with `env` and returns the server,
    /// the layer's bytes and its download URL.
    async fn layer_url(env: &[(&str, &str)]) -> (Server, Vec<u8>, String) {
        let server = Server::start(env);
        let ecr = server.ecr_client();
        ecr.create_repository()
            .repository_name("dl/app")
            .send()
            .await
            .unwrap();
        let config = br#"{"os":"linux","architecture":"amd64"}"#;
        let layer = crate::common::noise(700_001, 3);
        let c = push_blob(&ecr, "dl/app", config).await;
        let l = push_blob(&ecr, "dl/app", &layer).await;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        );
        ecr.put_image()
            .repository_name("dl/app")
            .image_manifest(manifest)
            .image_tag("v1")
            .send()
            .await
            .unwrap();
        let url = ecr
            .get_download_url_for_layer()
            .repository_name("dl/app")
            .layer_digest(&l)
            .send()
            .await
            .unwrap()
            .download_url
            .unwrap();
        (server, layer, url)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn download_urls_name_the_port_the_server_bound() {
        // `--listen 127.0.0.1:0`: only the bound listener knows the port.
        let (server, layer, url) = layer_url(&[("ECR_BACKEND", "local")]).await;
        assert!(
            url.starts_with(&format!("{}/_download/", server.endpoint)),
            "{url} is under {}",
            server.endpoint
        );
        let whole = downloads::get(&url, None).await;
        assert_eq!(whole.status, StatusCode::OK);
        assert!(whole.body == layer, "the layer's bytes");
        let tail = downloads::get(&url, Some("bytes=-100")).await;
        assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
        assert!(tail.body == layer[layer.len() - 100..]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn download_urls_start_with_the_public_url_when_set() {
        let public = "http://registry.example:5443/mirror";
        let (server, layer, url) = layer_url(&[
            ("ECR_BACKEND", "local"),
            ("ECR_PUBLIC_URL", "http://registry.example:5443/mirror/"),
        ])
        .await;
        let rest = url
            .strip_prefix(public)
            .unwrap_or_else(|| panic!("{url} starts with {public}"));
        assert!(rest.starts_with("/_download/"), "{url}");
        // As a proxy that strips the prefix would forward it, and as sent with it.
        for path in [rest.to_owned(), format!("/mirror{rest}")] {
            let got = downloads::get(&format!("{}{path}", server.endpoint), None).await;
            assert_eq!(got.status, StatusCode::OK, "{path}");
            assert!(got.body == layer);
        }
    }
}

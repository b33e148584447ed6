//! The OCI Distribution API through its handler on the in-memory and embedded backends: the
//! scenarios of tests/oci/suite.rs.

use ecr_layer_upload::service::Settings;

use crate::oci_suite;

mod memory {
    use super::*;
    use crate::common::service::memory_service;

    async fn make(settings: Settings) -> crate::common::service::MemoryService {
        memory_service(settings)
    }

    crate::oci_scenarios!(make);
}

mod embedded {
    use super::*;
    use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata};
    use ecr_layer_upload::service::Service;

    /// The service on a fresh data directory, which lives as long as the process (a temporary
    /// directory under the system's, removed by the OS).
    async fn make(settings: Settings) -> Service<LocalMetadata, LocalBlobs> {
        let dir = crate::common::temp_dir().keep();
        Service::new(
            LocalMetadata::open(&dir).unwrap(),
            LocalBlobs::open(&dir)
                .unwrap()
                .with_min_part_size(5 * 1024 * 1024),
            settings,
        )
    }

    crate::oci_scenarios!(make);
}

/// The Lambda front door routes `/v2/` to the OCI API: a blob pushed in one request, its GET a
/// 307 to the blob store's URL, and the ECR API beside it unchanged.
#[tokio::test]
async fn lambda_front_door_serves_v2() {
    use ecr_layer_upload::frontdoors::lambda;
    use lambda_http::Body;

    let svc = crate::common::service::memory_service(Settings::default());
    crate::common::service::create_repository(&svc, "oci/lambda").await;
    let data = crate::common::noise(200_000, 12);
    let d = crate::common::digest(&data);
    let event = |method: &str, uri: &str, body: Body| {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .unwrap()
    };
    let resp = lambda::handle(
        &svc,
        event(
            "POST",
            &format!("/v2/oci/lambda/blobs/uploads/?digest={d}"),
            Body::Binary(data.clone()),
        ),
    )
    .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["docker-content-digest"], d.as_str());
    let resp = lambda::handle(
        &svc,
        event("GET", &format!("/v2/oci/lambda/blobs/{d}"), Body::Empty),
    )
    .await;
    assert_eq!(resp.status(), 307);
    assert!(
        resp.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("memory:///layers/")
    );
    // A body over what a Function URL delivers is refused, naming the limit and the push client.
    let limit = lambda::oci_body_limit();
    assert_eq!(limit, (6_291_456 - 16 * 1024) / 4 * 3);
    let mut req = event(
        "PATCH",
        "/v2/oci/lambda/blobs/uploads/00000000-0000-0000-0000-000000000000",
        Body::Empty,
    );
    req.headers_mut()
        .insert("content-length", (limit + 1).to_string().parse().unwrap());
    let resp = lambda::handle(&svc, req).await;
    assert_eq!(resp.status(), 413);
    let Body::Binary(b) = resp.body() else {
        panic!("a JSON error document")
    };
    let text = String::from_utf8_lossy(b);
    assert!(
        text.contains(&limit.to_string()) && text.contains("ecr-layer-upload push"),
        "{text}"
    );
    let resp = lambda::handle(&svc, event("GET", "/v2/", Body::Empty)).await;
    assert_eq!(resp.status(), 200);
    let resp = lambda::handle(&svc, event("GET", "/v2/oci/lambda/tags/list", Body::Empty)).await;
    match resp.body() {
        Body::Binary(b) => assert_eq!(b.as_slice(), br#"{"name":"oci/lambda","tags":[]}"#),
        other => panic!("unexpected body {other:?}"),
    }
}

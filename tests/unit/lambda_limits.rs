//! The advertised Lambda `partSize` fits a synchronous invocation (6,291,456 bytes) once the part
//! is base64 inside JSON and the JSON is base64 again in a Function URL event, with realistic
//! headers; one more MiB would not. And a response, which Lambda caps at the same size, either
//! fits once the runtime wraps it or is refused with a modelled error.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ecr_layer_upload::frontdoors::lambda;
use ecr_layer_upload::frontdoors::lambda::{
    PAYLOAD_LIMIT as LAMBDA_PAYLOAD_LIMIT, part_size as lambda_part_size, response_limit,
};
use ecr_layer_upload::service::Settings;
use ecr_layer_upload::service::types::PutImageRequest;
use serde_json::{Value, json};

use crate::common::service::{create_repository, initiate, memory_service, push_blob};

/// A Function URL (payload 2.0) event carrying an UploadLayerPart request for a part of `len`
/// bytes, as the front door would build it for a signed request with a session token.
fn upload_part_event(repo: &str, upload_id: &str, first: u64, len: usize) -> String {
    let blob = STANDARD.encode(vec![0xa5u8; len]);
    let body = json!({
        "registryId": "123456789012",
        "repositoryName": repo,
        "uploadId": upload_id,
        "partFirstByte": first,
        "partLastByte": first + len as u64 - 1,
        "layerPartBlob": blob,
    })
    .to_string();
    let host = "b2nqkvgpr6cw3tqcgjzjqxk4da0hxwxe.lambda-url.eu-central-1.on.aws";
    // STS session tokens run to about 1 KiB; SigV4 headers, SDK user agents and tracing headers
    // make up the rest.
    let token = "IQoJb3JpZ2luX2VjE".to_string() + &"A".repeat(1100);
    let agent = "aws-sdk-rust/1.3.9 ua/2.1 api/ecr/1.138.0 os/linux lang/rust/1.95.0 m/E,b md/http#hyper-1.x cfg/retry-mode#standard";
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {
            "content-type": "application/x-amz-json-1.1",
            "content-length": body.len().to_string(),
            "host": host,
            "user-agent": agent,
            "x-amz-user-agent": agent,
            "x-amz-target": "AmazonEC2ContainerRegistry_V20150921.UploadLayerPart",
            "x-amz-date": "20261122T063000Z",
            "x-amz-security-token": token,
            "x-amz-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "authorization": "AWS4-HMAC-SHA256 Credential=ASIAIOSFODNN7EXAMPLE/20261122/eu-central-1/lambda/aws4_request, SignedHeaders=amz-sdk-invocation-id;amz-sdk-request;content-length;content-type;host;x-amz-date;x-amz-security-token;x-amz-target;x-amz-user-agent, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
            "amz-sdk-invocation-id": "5b1a3c7e-6d0f-4e53-9a2b-8c4d1e2f3a4b",
            "amz-sdk-request": "attempt=1; max=3",
            "x-amzn-trace-id": "Root=1-6740257c-0f0e5a2b3c4d5e6f7a8b9c0d",
            "x-forwarded-for": "203.0.113.10",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https"
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "b2nqkvgpr6cw3tqcgjzjqxk4da0hxwxe",
            "authorizer": {"iam": {
                "accessKey": "ASIAIOSFODNN7EXAMPLE",
                "accountId": "123456789012",
                "callerId": "AROAEXAMPLEID:ci-session",
                "userArn": "arn:aws:sts::123456789012:assumed-role/ci-pusher/ci-session",
                "userId": "AROAEXAMPLEID:ci-session"
            }},
            "domainName": host,
            "domainPrefix": "b2nqkvgpr6cw3tqcgjzjqxk4da0hxwxe",
            "http": {"method": "POST", "path": "/", "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.10", "userAgent": agent},
            "requestId": "c3a0f6a2-9a0e-4b8e-8f55-6a1f0d2b7e41",
            "routeKey": "$default",
            "stage": "$default",
            "time": "22/Nov/2026:06:30:00 +0000",
            "timeEpoch": 1795329000000u64
        },
        "body": STANDARD.encode(body.as_bytes()),
        "isBase64Encoded": true
    });
    event.to_string()
}

const LONGEST_REPO: usize = 256;

#[test]
fn a_part_of_exactly_part_size_fits_a_function_url_invocation() {
    let part = lambda_part_size() as usize;
    assert!(
        part >= 3 * 1024 * 1024,
        "part size {part} is needlessly small"
    );
    let event = upload_part_event(
        &"a".repeat(LONGEST_REPO),
        "0b7a3b1e-5c1d-4a4e-9a52-3f6c2d9e8f10",
        52_000 * 1024 * 1024,
        part,
    );
    assert!(
        event.len() as u64 <= LAMBDA_PAYLOAD_LIMIT,
        "{} bytes exceed the invocation limit",
        event.len()
    );
}

#[test]
fn one_more_mib_would_not_fit() {
    let part = lambda_part_size() as usize + 1024 * 1024;
    let event = upload_part_event("ab", "0b7a3b1e-5c1d-4a4e-9a52-3f6c2d9e8f10", 0, part);
    assert!(event.len() as u64 > LAMBDA_PAYLOAD_LIMIT);
}

#[tokio::test]
async fn the_largest_event_is_accepted_by_the_handler() {
    let svc = memory_service(Settings {
        part_size: lambda_part_size(),
        min_part_size: 1024 * 1024,
        ..Settings::default()
    });
    let repo = "a".repeat(LONGEST_REPO);
    create_repository(&svc, &repo).await;
    // `initiate` checks that the advertised part size is the one set.
    let upload_id = initiate(&svc, &repo).await;
    let len = lambda_part_size() as usize;
    let event = upload_part_event(&repo, &upload_id, 0, len);
    let req = lambda_http::request::from_str(&event).unwrap();
    let resp = lambda::handle(&svc, req).await;
    let lambda_http::Body::Text(text) = resp.body() else {
        panic!("text body expected");
    };
    assert_eq!(resp.status(), 200, "{text}");
    let out: Value = serde_json::from_str(text).unwrap();
    assert_eq!(out["lastByteReceived"], len - 1);
}

/// The payload the Lambda runtime returns for a Function URL (payload 2.0) answer: the response
/// in the API Gateway v2 envelope, serialized as JSON.
async fn lambda_response_payload(resp: http::Response<lambda_http::Body>) -> (u16, String, usize) {
    use lambda_http::IntoResponse;
    use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse;
    let resp = resp.into_response().await;
    let status = resp.status().as_u16();
    let lambda_http::Body::Text(text) = resp.body().clone() else {
        panic!("text body expected");
    };
    let mut envelope = ApiGatewayV2httpResponse::default();
    envelope.status_code = i64::from(status);
    envelope.headers = resp.headers().clone();
    envelope.body = Some(lambda_http::Body::Text(text.clone()));
    let payload = serde_json::to_string(&envelope).unwrap();
    (status, text, payload.len())
}

fn batch_get_image(repo: &str, tags: &[&str]) -> lambda_http::Request {
    let ids: Vec<Value> = tags.iter().map(|t| json!({"imageTag": t})).collect();
    let body = json!({"repositoryName": repo, "imageIds": ids}).to_string();
    http::Request::builder()
        .method("POST")
        .uri("/")
        .header("content-type", "application/x-amz-json-1.1")
        .header(
            "x-amz-target",
            "AmazonEC2ContainerRegistry_V20150921.BatchGetImage",
        )
        .body(lambda_http::Body::Text(body))
        .unwrap()
}

#[tokio::test]
async fn a_batch_get_image_answer_fits_the_lambda_response_limit_or_is_refused() {
    let svc = memory_service(Settings {
        min_part_size: 0,
        response_limit: Some(response_limit()),
        ..Settings::default()
    });
    let repo = "a".repeat(LONGEST_REPO);
    create_repository(&svc, &repo).await;
    let config_digest = push_blob(&svc, &repo, b"{}").await;
    // Escaped quotes are the worst case: each `\"` of the manifest takes 8 bytes in the payload.
    let note = "\\\"".repeat(700_000);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":2}},"layers":[],"annotations":{{"note":"{note}"}}}}"#
    );
    svc.put_image(PutImageRequest {
        image_tag: Some("t".repeat(300).parse().unwrap()),
        ..PutImageRequest::new(repo.parse().unwrap(), manifest.clone())
    })
    .await
    .unwrap();

    let tag = "t".repeat(300);
    let resp = lambda::handle(&svc, batch_get_image(&repo, &[&tag])).await;
    let (status, text, payload) = lambda_response_payload(resp).await;
    assert_eq!(status, 200, "{}", &text[..200.min(text.len())]);
    let out: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(out["images"][0]["imageManifest"], manifest);
    assert!(
        payload as u64 <= LAMBDA_PAYLOAD_LIMIT,
        "a {payload}-byte payload exceeds Lambda's limit"
    );
    assert!(
        payload > 5_000_000,
        "the case is not near the limit: {payload}"
    );

    let resp = lambda::handle(&svc, batch_get_image(&repo, &[&tag, &tag])).await;
    let (status, text, payload) = lambda_response_payload(resp).await;
    assert_eq!(status, 400);
    let out: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(out["__type"], "LimitExceededException");
    assert!(payload < 4096);
}

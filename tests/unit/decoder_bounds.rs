//! The request decoder's bounds: list members read no further than their model's bound (and
//! refused with the same answer as before), and the body caps of src/protocols/ecr.rs, through
//! `protocols::ecr::handle` on the in-memory backend.

use bytes::Bytes;
use ecr_layer_upload::protocols::ecr::{
    MAX_BODY, MAX_SMALL_BODY, TARGET_PREFIX, body_limit, handle,
};
use ecr_layer_upload::service::Settings;

use crate::common::service::memory_service;

fn request(operation: &str, body: Vec<u8>) -> http::Request<Bytes> {
    http::Request::builder()
        .method("POST")
        .uri("/")
        .header("x-amz-target", format!("{TARGET_PREFIX}{operation}"))
        .body(Bytes::from(body))
        .unwrap()
}

async fn answer(operation: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let svc = memory_service(Settings::default());
    let resp = handle(&svc, request(operation, body)).await;
    let json = serde_json::from_slice(resp.body()).unwrap();
    (resp.status().as_u16(), json)
}

/// `{"repositoryName":"app","<member>":[<element> × n]}`
fn list_body(member: &str, element: &str, n: usize) -> Vec<u8> {
    let mut body = format!(r#"{{"repositoryName":"app","{member}":["#).into_bytes();
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(element.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

#[tokio::test]
async fn long_lists_get_the_modelled_length_error() {
    for (op, member, element, max) in [
        ("BatchGetImage", "imageIds", "{}", 100),
        ("BatchDeleteImage", "imageIds", "{}", 100),
        ("DescribeImages", "imageIds", r#"{"imageTag":"a"}"#, 100),
        ("BatchCheckLayerAvailability", "layerDigests", r#""x""#, 100),
        ("DescribeRepositories", "repositoryNames", r#""r""#, 100),
        (
            "CreateRepository",
            "tags",
            r#"{"Key":"k","Value":"v"}"#,
            200,
        ),
    ] {
        // Just over the bound, and as many as fit under the body cap.
        let many = (MAX_SMALL_BODY - 100) / (element.len() + 1);
        for n in [max + 1, many] {
            let (status, json) = answer(op, list_body(member, element, n)).await;
            assert_eq!(status, 400, "{op} {n}");
            assert_eq!(json["__type"], "InvalidParameterException", "{op} {n}");
            let message = json["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("'{member}'"))
                    && message.ends_with(&format!("must have length less than or equal to {max}'")),
                "{op} {n}: {message}"
            );
        }
    }
}

#[tokio::test]
async fn a_list_at_its_bound_is_read_whole() {
    let (status, json) = answer(
        "BatchGetImage",
        list_body("imageIds", r#"{"imageTag":"t"}"#, 100),
    )
    .await;
    // Past decoding: the repository is missing.
    assert_eq!(status, 400);
    assert_eq!(json["__type"], "RepositoryNotFoundException");
}

#[tokio::test]
async fn earlier_members_and_malformed_elements_keep_their_precedence() {
    // registryId is checked before imageIds, as before.
    let mut body = list_body("imageIds", "{}", 500);
    body.splice(1..1, br#""registryId":"nope","#.iter().copied());
    let (_, json) = answer("BatchGetImage", body).await;
    assert!(
        json["message"].as_str().unwrap().contains("'registryId'"),
        "{json}"
    );
    // An element of the wrong type past the bound is still a serialization error.
    let mut body = list_body("imageIds", "{}", 500);
    let end = body.len() - 2;
    body.splice(end..end, br#",{"imageTag":5}"#.iter().copied());
    let (status, json) = answer("BatchGetImage", body).await;
    assert_eq!(status, 400);
    assert_eq!(json["__type"], "SerializationException", "{json}");
}

#[tokio::test]
async fn bodies_over_the_cap_of_their_operation_are_refused() {
    let headers = |op: &str| {
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-amz-target",
            format!("{TARGET_PREFIX}{op}").parse().unwrap(),
        );
        h
    };
    assert_eq!(body_limit(&headers("UploadLayerPart")), MAX_BODY);
    assert_eq!(body_limit(&headers("PutImage")), MAX_BODY);
    assert_eq!(body_limit(&headers("BatchGetImage")), MAX_SMALL_BODY);
    assert_eq!(body_limit(&http::HeaderMap::new()), MAX_SMALL_BODY);

    let mut big = br#"{"repositoryName":"app","nextToken":""#.to_vec();
    big.resize(MAX_SMALL_BODY + 1, b'a');
    big.extend_from_slice(br#""}"#);
    for op in ["ListImages", "DescribeRepositories", "CreateRepository"] {
        let (status, json) = answer(op, big.clone()).await;
        assert_eq!(status, 400, "{op}");
        assert_eq!(json["__type"], "InvalidParameterException", "{op}");
    }
    // An unknown target keeps its own answer.
    let (status, json) = answer("Nope", big).await;
    assert_eq!(status, 400);
    assert_eq!(json["__type"], "UnknownOperationException");
}

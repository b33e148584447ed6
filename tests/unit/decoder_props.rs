//! Property test of the request decoder: arbitrary bodies, targets and numbers through
//! `protocols::ecr::handle` on the in-memory backend never panic, and every refusal is a modelled
//! 4xx (400 with a known `__type`), never a 5xx.

use bytes::Bytes;
use ecr_layer_upload::protocols::ecr::{TARGET_PREFIX, handle};
use ecr_layer_upload::service::Settings;
use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::common::service::{MemoryService, memory_service};

const OPERATIONS: &[&str] = &[
    "InitiateLayerUpload",
    "UploadLayerPart",
    "CompleteLayerUpload",
    "CreateRepository",
    "DescribeRepositories",
    "DeleteRepository",
    "BatchCheckLayerAvailability",
    "PutImage",
    "BatchGetImage",
    "ListImages",
    "DescribeImages",
    "BatchDeleteImage",
    "GetDownloadUrlForLayer",
];

const MEMBERS: &[&str] = &[
    "registryId",
    "repositoryName",
    "uploadId",
    "partFirstByte",
    "partLastByte",
    "layerPartBlob",
    "layerDigests",
    "layerDigest",
    "imageIds",
    "imageDigest",
    "imageTag",
    "imageManifest",
    "imageManifestMediaType",
    "acceptedMediaTypes",
    "maxResults",
    "nextToken",
    "filter",
    "tagStatus",
    "imageStatus",
    "force",
    "tags",
    "Key",
    "Value",
    "repositoryNames",
    "imageTagMutability",
    "imageScanningConfiguration",
    "scanOnPush",
    "encryptionConfiguration",
    "encryptionType",
    "kmsKey",
];

const KNOWN_TYPES: &[&str] = &[
    "InvalidParameterException",
    "RepositoryNotFoundException",
    "RepositoryAlreadyExistsException",
    "RepositoryNotEmptyException",
    "UploadNotFoundException",
    "InvalidLayerPartException",
    "InvalidLayerException",
    "LayerPartTooSmallException",
    "LayerAlreadyExistsException",
    "EmptyUploadException",
    "LayersNotFoundException",
    "LayerInaccessibleException",
    "ImageAlreadyExistsException",
    "ImageNotFoundException",
    "ImageDigestDoesNotMatchException",
    "ImageTagAlreadyExistsException",
    "ReferencedImagesNotFoundException",
    "LimitExceededException",
    "UnknownOperationException",
    "SerializationException",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("app".to_owned()),
        Just("123456789012".to_owned()),
        Just(format!("sha256:{}", "a".repeat(64))),
        Just("AAAA".to_owned()),
        Just("latest".to_owned()),
        Just("TAGGED".to_owned()),
        Just("IMMUTABLE".to_owned()),
        Just("KMS".to_owned()),
        Just(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#
                .to_owned()
        ),
        ".{0,40}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3i64..1200).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 40, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(MEMBERS), inner), 0..6).prop_map(
                |members| {
                    Value::Object(
                        members
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect::<Map<_, _>>(),
                    )
                }
            ),
        ]
    })
}

/// A request body: an object of known members, or any JSON, or any bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let object =
        prop::collection::vec((prop::sample::select(MEMBERS), value()), 0..8).prop_map(|members| {
            let map: Map<String, Value> = members
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            serde_json::to_vec(&Value::Object(map)).unwrap()
        });
    prop_oneof![
        6 => object,
        1 => value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        // Numbers as text that JSON allows but no integer holds.
        1 => (prop::sample::select(&["partFirstByte", "partLastByte", "maxResults"][..]),
              prop::sample::select(&["1e400", "-0", "18446744073709551616", "1.5", "-1"][..]))
            .prop_map(|(m, n)| format!(r#"{{"repositoryName":"app","{m}":{n}}}"#).into_bytes()),
    ]
}

/// The `X-Amz-Target` header: a served operation, another name, or none.
fn target() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => prop::sample::select(OPERATIONS).prop_map(|op| Some(format!("{TARGET_PREFIX}{op}"))),
        1 => ".{0,30}".prop_map(Some),
        1 => "[A-Za-z]{1,20}".prop_map(|op| Some(format!("{TARGET_PREFIX}{op}"))),
        1 => Just(None),
    ]
}

fn check(
    rt: &tokio::runtime::Runtime,
    svc: &MemoryService,
    target: Option<String>,
    body: Vec<u8>,
) -> Result<(), TestCaseError> {
    let mut req = http::Request::builder().method("POST").uri("/");
    if let Some(t) = &target
        && let Ok(v) = http::HeaderValue::from_str(t)
    {
        req = req.header("x-amz-target", v);
    }
    let resp = rt.block_on(handle(svc, req.body(Bytes::from(body)).unwrap()));
    let status = resp.status().as_u16();
    prop_assert!(
        status == 200 || status == 400,
        "status {status} for {target:?}"
    );
    if status == 400 {
        let json: Value = serde_json::from_slice(resp.body()).unwrap();
        let kind = json["__type"].as_str().unwrap_or("");
        prop_assert!(KNOWN_TYPES.contains(&kind), "__type {kind:?}");
        prop_assert_eq!(
            resp.headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok()),
            Some(kind)
        );
    }
    Ok(())
}

#[test]
fn any_request_is_answered_with_a_modelled_answer() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let svc = memory_service(Settings::default());
    // A repository, so that requests naming it go past the lookup.
    let created = rt.block_on(handle(
        &svc,
        http::Request::builder()
            .method("POST")
            .uri("/")
            .header("x-amz-target", format!("{TARGET_PREFIX}CreateRepository"))
            .body(Bytes::from_static(br#"{"repositoryName":"app"}"#))
            .unwrap(),
    ));
    assert_eq!(created.status(), 200);
    let config = ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(target in target(), body in body())| {
        check(&rt, &svc, target, body)?;
    });
}

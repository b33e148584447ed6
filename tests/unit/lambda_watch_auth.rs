//! `ECR_AUTH=sigv4` under `cargo lambda watch`: its Function URL emulation at
//! `http://127.0.0.1:<port>/lambda-url/<function>/` hands the function the client's `host` header
//! but a `rawPath` without `/lambda-url/<function>`, in an event whose request context says
//! `domainName: localhost` and `domainPrefix: <function>`. The Lambda front door puts the prefix
//! back for such events only (src/frontdoors/lambda.rs, `emulated_url_prefix`); an event of a
//! real Function URL is verified on exactly the host and raw path it carries.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use ecr_layer_upload::backends::memory_keys::MemoryKeys;
use ecr_layer_upload::domain::clock::ManualClock;
use ecr_layer_upload::frontdoors::lambda;
use ecr_layer_upload::ports::keys::{KeyRecord, KeyStore, Permission};
use ecr_layer_upload::protocols::auth::Auth;
use ecr_layer_upload::service::Settings;
use lambda_http::Body;
use serde_json::{Value, json};

use crate::common::service::memory_service;

const KEY_ID: &str = "AKELWATCHTEST0000000";
const SECRET: &str = "watch-test-secret-not-used-anywhere-else";
/// 2026-11-22T06:30:00Z, the `x-amz-date` of events/create-repository.json.
const T0: u64 = 1_795_329_000;
const WATCHER: &str = "127.0.0.1:9000";
const URL_PATH: &str = "/lambda-url/ecr-layer-upload/";

/// events/create-repository.json as `cargo lambda watch` hands it over when a client calls
/// `http://{host}{called_path}`, signed by the client for `signed_host` and `signed_path`.
fn event(host: &str, domain_name: &str, signed_host: &str, signed_path: &str) -> String {
    let text = std::fs::read_to_string(format!(
        "{}/events/create-repository.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut event: Value = serde_json::from_str(&text).unwrap();
    let body = base64::engine::general_purpose::STANDARD
        .decode(event["body"].as_str().unwrap())
        .unwrap();
    event["headers"]["host"] = json!(host);
    event["rawPath"] = json!("/");
    event["requestContext"]["http"]["path"] = json!("/");
    event["requestContext"]["domainName"] = json!(domain_name);
    event["requestContext"]["domainPrefix"] = json!("ecr-layer-upload");
    let headers = event["headers"].as_object().unwrap().clone();
    let signed: Vec<(&str, &str)> = ["content-type", "x-amz-target"]
        .iter()
        .map(|&h| (h, headers[h].as_str().unwrap()))
        .chain([("host", signed_host)])
        .collect();
    let identity: Identity = Credentials::new(KEY_ID, SECRET, None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("ecr")
        .time(UNIX_EPOCH + Duration::from_secs(T0))
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        format!("http://{signed_host}{signed_path}"),
        signed.into_iter(),
        SignableBody::Bytes(&body),
    )
    .unwrap();
    let (_, signature) = sign(signable, &params).unwrap().into_parts();
    event["headers"]["authorization"] = json!(format!(
        "AWS4-HMAC-SHA256 Credential={KEY_ID}/20261122/us-east-1/ecr/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={signature}"
    ));
    event.to_string()
}

async fn invoke(text: &str) -> (u16, Value) {
    let keys = MemoryKeys::new();
    keys.create_key(&KeyRecord {
        access_key_id: KEY_ID.into(),
        secret_access_key: SECRET.into(),
        name: "watch".into(),
        permission: Permission::Admin,
        repositories: Vec::new(),
        created_at_ms: 0,
    })
    .await
    .unwrap();
    let auth = Auth::new(
        Arc::new(keys),
        "us-east-1",
        "123456789012",
        Duration::from_secs(1),
    )
    .with_clock(Arc::new(ManualClock::at_ms(T0 * 1000)));
    let svc = memory_service(Settings::default());
    let req = lambda_http::request::from_str(text).expect("an event");
    let resp = lambda::handle_with(&svc, Some(&auth), req).await;
    let status = resp.status().as_u16();
    let json = match resp.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("not text: {other:?}"),
    };
    (status, json)
}

fn refused(answer: (u16, Value)) -> (u16, String) {
    (
        answer.0,
        answer.1["__type"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn the_watchers_url_prefix_is_verified_as_the_client_signed_it() {
    let (status, json) = invoke(&event(WATCHER, "localhost", WATCHER, URL_PATH)).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["repository"]["repositoryName"], "sample/app");

    // `localhost` as the client's host works the same.
    let (status, json) = invoke(&event(
        "localhost:9000",
        "localhost",
        "localhost:9000",
        URL_PATH,
    ))
    .await;
    assert_eq!(status, 200, "{json}");
}

#[tokio::test]
async fn the_prefix_is_put_back_for_the_emulators_events_only() {
    let mismatch = (400, "InvalidSignatureException".to_owned());
    // Under the watcher the prefix is restored: a signature over the stripped path is wrong.
    assert_eq!(
        refused(invoke(&event(WATCHER, "localhost", WATCHER, "/")).await),
        mismatch
    );
    // A real Function URL's domain: the raw path is verified as it came.
    let real = "b2nqkvgpr6cw3tqcgjzjqxk4da0hxwxe.lambda-url.us-east-1.on.aws";
    assert_eq!(
        refused(invoke(&event(WATCHER, real, WATCHER, URL_PATH)).await),
        mismatch
    );
    // The emulator's mark with a host that is not a loopback address: nothing restored either.
    assert_eq!(
        refused(
            invoke(&event(
                "registry.example.com",
                "localhost",
                "registry.example.com",
                URL_PATH
            ))
            .await
        ),
        mismatch
    );
    let (status, json) = invoke(&event(real, real, real, "/")).await;
    assert_eq!(
        status, 200,
        "a real Function URL's event still verifies: {json}"
    );
}

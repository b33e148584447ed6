//! `ECR_AUTH=sigv4` behind the Function URL, through the Lambda front door: what is verified is
//! the host and raw path the client signed (the Function URL's `host` header and `rawPath`).
//!
//! The signed and unsigned fixtures of events/auth/ are Function URL events derived from
//! events/create-repository.json: `signed-create-repository.json` signed with the test key below
//! at the fixture's own date (2026-11-22T06:30:00Z; the checker runs on a manual clock set to
//! it), `unsigned-create-repository.json` without an `authorization` header. They are written by
//! this test when absent or when `ECR_UPDATE_GOLDEN=1`, and checked byte for byte otherwise.

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
use serde_json::Value;

use crate::common::service::memory_service;

/// The test key of the signed fixtures.
pub const FIXTURE_KEY_ID: &str = "AKELFIXTURE000000000";
pub const FIXTURE_SECRET: &str = "fixture-secret-not-used-anywhere-else-0000";
/// 2026-11-22T06:30:00Z, the `x-amz-date` of the fixtures.
const T0: u64 = 1_795_329_000;

fn path(name: &str) -> String {
    format!("{}/events/auth/{name}.json", env!("CARGO_MANIFEST_DIR"))
}

/// The event of events/`base`.json signed for its own host, path, headers and body.
fn signed_event(base: &str, host_signed: Option<&str>) -> Value {
    let text =
        std::fs::read_to_string(format!("{}/events/{base}.json", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    let mut event: Value = serde_json::from_str(&text).unwrap();
    let body = base64::engine::general_purpose::STANDARD
        .decode(event["body"].as_str().unwrap())
        .unwrap();
    let headers = event["headers"].as_object().unwrap().clone();
    let host = host_signed.unwrap_or_else(|| headers["host"].as_str().unwrap());
    let date = headers["x-amz-date"].as_str().unwrap();
    assert_eq!(date, "20261122T063000Z");
    let signed: Vec<(&str, &str)> = ["content-type", "x-amz-target"]
        .iter()
        .map(|&h| (h, headers[h].as_str().unwrap()))
        .chain([("host", host)])
        .collect();
    let identity: Identity =
        Credentials::new(FIXTURE_KEY_ID, FIXTURE_SECRET, None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("ecr")
        .time(UNIX_EPOCH + Duration::from_secs(T0))
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let raw_path = event["rawPath"].as_str().unwrap().to_owned();
    let signable = SignableRequest::new(
        "POST",
        format!("https://{host}{raw_path}"),
        signed.into_iter(),
        SignableBody::Bytes(&body),
    )
    .unwrap();
    let (_, signature) = sign(signable, &params).unwrap().into_parts();
    event["headers"]["authorization"] = Value::String(format!(
        "AWS4-HMAC-SHA256 Credential={FIXTURE_KEY_ID}/20261122/us-east-1/ecr/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={signature}"
    ));
    event
}

/// `event` pretty-printed, checked against (or written to) events/auth/`name`.json.
fn pinned(name: &str, event: &Value) -> String {
    let text = serde_json::to_string_pretty(event).unwrap() + "\n";
    let file = path(name);
    let update = std::env::var("ECR_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    match std::fs::read_to_string(&file) {
        Ok(stored) if !update => assert_eq!(stored, text, "{file} differs from its generation"),
        _ => {
            std::fs::create_dir_all(std::path::Path::new(&file).parent().unwrap()).unwrap();
            std::fs::write(&file, &text).unwrap();
        }
    }
    text
}

async fn invoke(text: &str, auth: &Auth) -> (u16, Value) {
    let svc = memory_service(Settings::default());
    let req = lambda_http::request::from_str(text).expect("an event");
    let resp = lambda::handle_with(&svc, Some(auth), req).await;
    let status = resp.status().as_u16();
    let json = match resp.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap(),
        other => panic!("not text: {other:?}"),
    };
    (status, json)
}

async fn checker() -> Auth {
    let keys = MemoryKeys::new();
    keys.create_key(&KeyRecord {
        access_key_id: FIXTURE_KEY_ID.into(),
        secret_access_key: FIXTURE_SECRET.into(),
        name: "fixture".into(),
        permission: Permission::Admin,
        repositories: Vec::new(),
        created_at_ms: 0,
    })
    .await
    .unwrap();
    Auth::new(
        Arc::new(keys),
        "us-east-1",
        "123456789012",
        Duration::from_secs(1),
    )
    .with_clock(Arc::new(ManualClock::at_ms(T0 * 1000)))
}

#[tokio::test]
async fn a_signed_function_url_event_is_verified_on_its_host_and_raw_path() {
    let auth = checker().await;
    let signed = pinned(
        "signed-create-repository",
        &signed_event("create-repository", None),
    );
    let (status, json) = invoke(&signed, &auth).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["repository"]["repositoryName"], "sample/app");

    let mut unsigned = signed_event("create-repository", None);
    unsigned["headers"]
        .as_object_mut()
        .unwrap()
        .remove("authorization");
    let unsigned = pinned("unsigned-create-repository", &unsigned);
    let (status, json) = invoke(&unsigned, &auth).await;
    assert_eq!(
        (status, json["__type"].as_str().unwrap()),
        (403, "MissingAuthenticationTokenException")
    );

    // Signed for another host (the watcher's, say) than the one the event arrives on.
    let elsewhere = signed_event("create-repository", Some("127.0.0.1:9000")).to_string();
    let (status, json) = invoke(&elsewhere, &auth).await;
    assert_eq!(
        (status, json["__type"].as_str().unwrap()),
        (400, "InvalidSignatureException")
    );

    // The same signed event an hour later.
    let late = checker()
        .await
        .with_clock(Arc::new(ManualClock::at_ms((T0 + 3600) * 1000)));
    let (_, json) = invoke(&signed, &late).await;
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .starts_with("Signature expired: 20261122T063000Z is now earlier than"),
        "{json}"
    );
}

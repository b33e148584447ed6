//! `ECR_AUTH=sigv4` in-process: requests signed as AWS clients sign them (aws-sigv4 with its
//! default settings, as the SDKs use it), through `protocols::ecr::handle_with` on the in-memory
//! backend, and aws-sdk-ecr against the local server with the same checker. Covers every
//! refusal of issue criteria 1 and 2, the whole permission matrix, and registry passwords.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use bytes::Bytes;
use ecr_layer_upload::backends::memory_keys::MemoryKeys;
use ecr_layer_upload::domain::clock::ManualClock;
use ecr_layer_upload::ports::keys::{KeyRecord, KeyStore, Permission};
use ecr_layer_upload::protocols::auth::{Action, Auth, format_amz_date};
use ecr_layer_upload::protocols::ecr::{Operation, TARGET_PREFIX, handle_with};
use ecr_layer_upload::service::Settings;

use crate::common::service::{MemoryService, memory_service};

const HOST: &str = "registry.example.test";
/// 2026-11-22T06:30:00Z.
const T0: u64 = 1_795_329_000;

fn key(id: &str, permission: Permission, repositories: &[&str]) -> KeyRecord {
    KeyRecord {
        access_key_id: id.into(),
        secret_access_key: format!("secret-of-{id}"),
        name: format!("{id}-name"),
        permission,
        repositories: repositories.iter().map(|s| s.to_string()).collect(),
        created_at_ms: 0,
    }
}

struct World {
    svc: MemoryService,
    keys: MemoryKeys,
    auth: Auth,
    clock: Arc<ManualClock>,
}

async fn world(cache: Duration) -> World {
    let keys = MemoryKeys::new();
    for k in [
        key("AKADMIN", Permission::Admin, &[]),
        key("AKPUSH", Permission::Push, &[]),
        key("AKPULL", Permission::Pull, &[]),
        key("AKTEAM", Permission::Admin, &["team/*"]),
    ] {
        keys.create_key(&k).await.unwrap();
    }
    let clock = Arc::new(ManualClock::at_ms(T0 * 1000));
    let auth = Auth::new(Arc::new(keys.clone()), "us-east-1", "123456789012", cache)
        .with_clock(clock.clone());
    World {
        svc: memory_service(Settings::default()),
        keys,
        auth,
        clock,
    }
}

/// A request of `operation` signed as an AWS SDK signs it (`SigningSettings::default()`:
/// user-agent and trace ids left out), at `at`, with `id`/`secret`, for `region` and `service`.
fn signed_with(
    operation: &str,
    body: &str,
    id: &str,
    secret: &str,
    at: u64,
    region: &str,
    service: &str,
) -> http::Request<Bytes> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/")
        .header("host", HOST)
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("{TARGET_PREFIX}{operation}"))
        .header("user-agent", "test/1.0")
        .header("content-length", body.len().to_string())
        .body(Bytes::from(body.to_owned()))
        .unwrap();
    let identity: Identity = Credentials::new(id, secret, None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(UNIX_EPOCH + Duration::from_secs(at))
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        "https://registry.example.test/",
        req.headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap())),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(&mut req);
    req
}

fn signed(operation: &str, body: &str, id: &str, at: u64) -> http::Request<Bytes> {
    signed_with(
        operation,
        body,
        id,
        &format!("secret-of-{id}"),
        at,
        "us-east-1",
        "ecr",
    )
}

async fn call(w: &World, req: http::Request<Bytes>) -> (u16, serde_json::Value) {
    let resp = handle_with(&w.svc, Some(&w.auth), req).await;
    let json = serde_json::from_slice(resp.body()).unwrap_or(serde_json::Value::Null);
    (resp.status().as_u16(), json)
}

fn error_type(json: &serde_json::Value) -> &str {
    json["__type"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_valid_signature_is_served() {
    let w = world(Duration::from_secs(1)).await;
    let (status, json) = call(
        &w,
        signed(
            "CreateRepository",
            r#"{"repositoryName":"app"}"#,
            "AKADMIN",
            T0,
        ),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["repository"]["repositoryName"], "app");
}

#[tokio::test]
async fn every_refusal_is_answered_as_aws_answers_it() {
    let w = world(Duration::from_secs(1)).await;
    let body = r#"{"repositoryName":"app"}"#;
    let op = "DescribeRepositories";

    // No Authorization at all.
    let mut req = signed(op, body, "AKADMIN", T0);
    req.headers_mut().remove("authorization");
    let (status, json) = call(&w, req).await;
    assert_eq!(
        (status, error_type(&json)),
        (403, "MissingAuthenticationTokenException")
    );
    assert_eq!(json["message"], "Missing Authentication Token");

    // Malformed: no Signature.
    let mut req = signed(op, body, "AKADMIN", T0);
    let value = req.headers()["authorization"].to_str().unwrap().to_owned();
    let cut = value.split(", Signature=").next().unwrap().to_owned();
    req.headers_mut()
        .insert("authorization", cut.parse().unwrap());
    let (status, json) = call(&w, req).await;
    assert_eq!(
        (status, error_type(&json)),
        (400, "IncompleteSignatureException")
    );
    assert!(
        json["message"].as_str().unwrap().contains("'Signature'"),
        "{json}"
    );

    // No X-Amz-Date.
    let mut req = signed(op, body, "AKADMIN", T0);
    req.headers_mut().remove("x-amz-date");
    let (status, json) = call(&w, req).await;
    assert_eq!(
        (status, error_type(&json)),
        (400, "IncompleteSignatureException")
    );

    // Unknown access key.
    let (status, json) = call(&w, signed(op, body, "AKNOBODY", T0)).await;
    assert_eq!(
        (status, error_type(&json)),
        (400, "UnrecognizedClientException")
    );
    assert_eq!(
        json["message"],
        "The security token included in the request is invalid."
    );

    // Wrong secret.
    let req = signed_with(op, body, "AKADMIN", "wrong", T0, "us-east-1", "ecr");
    let (status, json) = call(&w, req).await;
    assert_eq!(
        (status, error_type(&json)),
        (400, "InvalidSignatureException")
    );
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .starts_with("The request signature we calculated does not match"),
        "{json}"
    );

    // A body changed after signing, and a signed header changed after signing.
    let mut req = signed(op, body, "AKADMIN", T0);
    *req.body_mut() = Bytes::from_static(br#"{"repositoryName":"other"}"#);
    let (_, json) = call(&w, req).await;
    assert_eq!(error_type(&json), "InvalidSignatureException");
    let mut req = signed(op, body, "AKADMIN", T0);
    req.headers_mut()
        .insert("host", "elsewhere.example.test".parse().unwrap());
    let (_, json) = call(&w, req).await;
    assert_eq!(error_type(&json), "InvalidSignatureException");

    // Signed for another service or region.
    let secret = "secret-of-AKADMIN";
    let req = signed_with(op, body, "AKADMIN", secret, T0, "us-east-1", "lambda");
    let (_, json) = call(&w, req).await;
    assert_eq!(error_type(&json), "InvalidSignatureException");
    assert!(
        json["message"].as_str().unwrap().contains("'ecr'"),
        "{json}"
    );
    let req = signed_with(op, body, "AKADMIN", secret, T0, "eu-west-1", "ecr");
    let (_, json) = call(&w, req).await;
    assert_eq!(error_type(&json), "InvalidSignatureException");
    assert!(
        json["message"].as_str().unwrap().contains("eu-west-1"),
        "{json}"
    );
}

#[tokio::test]
async fn the_clock_may_differ_by_fifteen_minutes_and_no_more() {
    let w = world(Duration::from_secs(1)).await;
    let body = r#"{}"#;
    let op = "DescribeRepositories";
    let (status, _) = call(&w, signed(op, body, "AKADMIN", T0 - 14 * 60)).await;
    assert_eq!(status, 200);
    let (status, _) = call(&w, signed(op, body, "AKADMIN", T0 + 14 * 60)).await;
    assert_eq!(status, 200);

    let (status, json) = call(&w, signed(op, body, "AKADMIN", T0 - 16 * 60)).await;
    assert_eq!(
        (status, error_type(&json)),
        (400, "InvalidSignatureException")
    );
    let expected = format!(
        "Signature expired: {} is now earlier than {} ({} - 15 min.)",
        format_amz_date(T0 - 16 * 60),
        format_amz_date(T0 - 15 * 60),
        format_amz_date(T0)
    );
    assert_eq!(json["message"], expected.as_str());

    let (_, json) = call(&w, signed(op, body, "AKADMIN", T0 + 16 * 60)).await;
    assert_eq!(error_type(&json), "InvalidSignatureException");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .starts_with("Signature not yet current:"),
        "{json}"
    );

    // The same signed request, replayed after the window.
    let req = signed(op, body, "AKADMIN", T0);
    w.clock.advance_secs(16 * 60);
    let (_, json) = call(&w, req).await;
    assert_eq!(error_type(&json), "InvalidSignatureException");
}

/// Every operation, for every kind of key, on a repository inside and outside `team/*`.
#[tokio::test]
async fn the_permission_matrix() {
    let w = world(Duration::from_secs(1)).await;
    let operations = [
        ("BatchCheckLayerAvailability", Permission::Pull),
        ("BatchGetImage", Permission::Pull),
        ("GetDownloadUrlForLayer", Permission::Pull),
        ("DescribeRepositories", Permission::Pull),
        ("DescribeImages", Permission::Pull),
        ("ListImages", Permission::Pull),
        ("GetAuthorizationToken", Permission::Pull),
        ("InitiateLayerUpload", Permission::Push),
        ("UploadLayerPart", Permission::Push),
        ("CompleteLayerUpload", Permission::Push),
        ("PutImage", Permission::Push),
        ("CreateRepository", Permission::Admin),
        ("DeleteRepository", Permission::Admin),
        ("BatchDeleteImage", Permission::Admin),
    ];
    // Every served operation is in the matrix, with the action named after it.
    for (name, needs) in operations {
        let op = Operation::from_target(&format!("{TARGET_PREFIX}{name}")).unwrap();
        assert_eq!(op.action().iam_name(), format!("ecr:{name}"));
        assert_eq!(op.action().needs(), needs, "{name}");
    }
    assert_eq!(Action::ALL.len(), operations.len());

    let keys = [
        ("AKPULL", Permission::Pull, false),
        ("AKPUSH", Permission::Push, false),
        ("AKADMIN", Permission::Admin, false),
        ("AKTEAM", Permission::Admin, true),
    ];
    for (name, needs) in operations {
        for repo in ["team/app", "other/app"] {
            let body = format!(r#"{{"repositoryName":"{repo}"}}"#);
            for (id, has, limited) in keys {
                let registry_wide = name == "GetAuthorizationToken";
                let allowed =
                    has >= needs && (!limited || registry_wide || repo.starts_with("team/"));
                let (status, json) = call(&w, signed(name, &body, id, T0)).await;
                let denied = error_type(&json) == "AccessDeniedException";
                assert_eq!(!denied, allowed, "{id} {name} on {repo}: {status} {json}");
                if denied {
                    assert_eq!(status, 400);
                    let resource = if registry_wide {
                        "*".to_owned()
                    } else {
                        format!("arn:aws:ecr:us-east-1:123456789012:repository/{repo}")
                    };
                    assert_eq!(
                        json["message"],
                        format!(
                            "User: arn:aws:iam::123456789012:user/{id}-name is not authorized to \
                             perform: ecr:{name} on resource: {resource} because no \
                             identity-based policy allows the ecr:{name} action"
                        )
                        .as_str()
                    );
                }
            }
        }
    }

    // A limited key listing every repository is refused; naming only its own, it is served.
    let (_, json) = call(&w, signed("DescribeRepositories", "{}", "AKTEAM", T0)).await;
    assert_eq!(error_type(&json), "AccessDeniedException");
    let body = r#"{"repositoryNames":["team/a","other/b"]}"#;
    let (_, json) = call(&w, signed("DescribeRepositories", body, "AKTEAM", T0)).await;
    assert!(
        json["message"].as_str().unwrap().ends_with(
            "repository/other/b because no identity-based policy allows the ecr:DescribeRepositories action"
        ),
        "{json}"
    );
    let body = r#"{"repositoryNames":["team/a"]}"#;
    let (_, json) = call(&w, signed("DescribeRepositories", body, "AKTEAM", T0)).await;
    assert_ne!(error_type(&json), "AccessDeniedException");
}

#[tokio::test]
async fn a_refused_request_touches_no_storage() {
    let w = world(Duration::from_secs(1)).await;
    let body = r#"{"repositoryName":"app"}"#;
    let (_, json) = call(&w, signed("CreateRepository", body, "AKPUSH", T0)).await;
    assert_eq!(error_type(&json), "AccessDeniedException");
    let wrong = signed_with(
        "CreateRepository",
        body,
        "AKADMIN",
        "x",
        T0,
        "us-east-1",
        "ecr",
    );
    let (_, json) = call(&w, wrong).await;
    assert_eq!(error_type(&json), "InvalidSignatureException");
    let (status, json) = call(&w, signed("DescribeRepositories", "{}", "AKADMIN", T0)).await;
    assert_eq!(status, 200);
    assert_eq!(json["repositories"], serde_json::json!([]));
}

#[tokio::test]
async fn a_deleted_key_is_refused_once_the_cache_lets_go() {
    let w = world(Duration::from_millis(200)).await;
    let op = "DescribeRepositories";
    let (status, _) = call(&w, signed(op, "{}", "AKPUSH", T0)).await;
    assert_eq!(status, 200);
    assert!(w.keys.delete_key("AKPUSH").await.unwrap());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, json) = call(&w, signed(op, "{}", "AKPUSH", T0)).await;
    assert_eq!(
        (status, error_type(&json)),
        (400, "UnrecognizedClientException")
    );
    // And a key created meanwhile is known as soon (an unknown id is not remembered longer).
    let (_, json) = call(&w, signed(op, "{}", "AKLATE", T0)).await;
    assert_eq!(error_type(&json), "UnrecognizedClientException");
    w.keys
        .create_key(&key("AKLATE", Permission::Pull, &[]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, _) = call(&w, signed(op, "{}", "AKLATE", T0)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn get_authorization_token_issues_a_password_the_service_verifies() {
    let w = world(Duration::from_millis(100)).await;
    let (status, json) = call(&w, signed("GetAuthorizationToken", "{}", "AKTEAM", T0)).await;
    assert_eq!(status, 200, "{json}");
    let data = &json["authorizationData"][0];
    assert_eq!(data["proxyEndpoint"], format!("http://{HOST}").as_str());
    assert_eq!(data["expiresAt"].as_f64().unwrap() as u64, T0 + 12 * 3600);
    let token = base64::engine::general_purpose::STANDARD
        .decode(data["authorizationToken"].as_str().unwrap())
        .unwrap();
    let token = String::from_utf8(token).unwrap();
    let password = token.strip_prefix("AWS:").expect("AWS:<password>");

    let who = w.auth.verify_registry_password(password).await.unwrap();
    assert_eq!(who.access_key_id, "AKTEAM");
    assert!(who.allows(Action::PutImage, Some("team/x")));
    assert!(!who.allows(Action::PutImage, Some("other/x")));

    // Forged, altered and expired passwords are refused; so is one whose key was deleted.
    let mut forged = password.to_owned();
    forged.pop();
    forged.push(if password.ends_with('A') { 'B' } else { 'A' });
    assert!(w.auth.verify_registry_password(&forged).await.is_err());
    assert!(
        w.auth
            .verify_registry_password("elu1.e30.AAAA")
            .await
            .is_err()
    );
    assert!(w.auth.verify_registry_password("").await.is_err());
    w.clock.advance_secs(12 * 3600 + 1);
    assert!(w.auth.verify_registry_password(password).await.is_err());
    w.clock.set_ms(T0 * 1000);
    assert!(w.auth.verify_registry_password(password).await.is_ok());
    w.keys.delete_key("AKTEAM").await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(w.auth.verify_registry_password(password).await.is_err());
}

/// aws-sdk-ecr against the local server with the checker: a push and a pull with a push key;
/// the same client with a wrong secret refused.
#[tokio::test]
async fn aws_sdk_ecr_through_the_local_server() {
    use ecr_layer_upload::frontdoors::http as server;
    let keys = MemoryKeys::new();
    keys.create_key(&key("AKSDK", Permission::Admin, &[]))
        .await
        .unwrap();
    let auth = Arc::new(Auth::new(
        Arc::new(keys.clone()),
        "us-east-1",
        "123456789012",
        Duration::from_secs(1),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let svc = Arc::new(memory_service(Settings::default()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve_with_auth(
        svc,
        None,
        Some(auth),
        listener,
        server::Limits::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = |secret: &str| {
        use aws_sdk_ecr::config::{BehaviorVersion, Credentials, Region};
        let conf = aws_sdk_ecr::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKSDK", secret, None, None, "test"))
            .build();
        aws_sdk_ecr::Client::from_conf(conf)
    };
    let ecr = client("secret-of-AKSDK");
    ecr.create_repository()
        .repository_name("team/app")
        .send()
        .await
        .unwrap();
    let data = crate::common::noise(100_000, 7);
    let id = ecr
        .initiate_layer_upload()
        .repository_name("team/app")
        .send()
        .await
        .unwrap()
        .upload_id
        .unwrap();
    ecr.upload_layer_part()
        .repository_name("team/app")
        .upload_id(&id)
        .part_first_byte(0)
        .part_last_byte(data.len() as i64 - 1)
        .layer_part_blob(aws_sdk_ecr::primitives::Blob::new(data.clone()))
        .send()
        .await
        .unwrap();
    ecr.complete_layer_upload()
        .repository_name("team/app")
        .upload_id(&id)
        .layer_digests(crate::common::digest(&data))
        .send()
        .await
        .unwrap();
    let token = ecr.get_authorization_token().send().await.unwrap();
    let data = &token.authorization_data()[0];
    assert_eq!(data.proxy_endpoint(), Some(endpoint.as_str()));
    assert!(data.expires_at().is_some());

    let err = client("wrong")
        .describe_repositories()
        .send()
        .await
        .unwrap_err();
    let err = err.into_service_error();
    assert_eq!(
        aws_sdk_ecr::error::ProvideErrorMetadata::code(&err),
        Some("InvalidSignatureException")
    );
    let _ = stop.send(());
}

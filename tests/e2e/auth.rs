//! `ECR_AUTH=sigv4` on the real binary, on the backend `ECR_TEST_BACKEND` names: keys made with
//! `ecr-layer-upload keys create`, then aws-sdk-ecr and `ecr-layer-upload push` with a valid
//! key (a whole push and pull), a wrong secret, an unknown key, no credentials, a skewed clock,
//! a pull-only key pushing, a `team/*` key touching another repository, a key deleted with
//! `keys delete` while the server runs, and GetAuthorizationToken's password decoded.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ecr::error::ProvideErrorMetadata;
use aws_sdk_ecr::types::ImageIdentifier;
use base64::Engine;

use crate::common::{digest, noise, temp_dir, unique};

pub(crate) fn backend() -> String {
    std::env::var("ECR_TEST_BACKEND").unwrap_or_else(|_| "local".into())
}

/// `ecr-layer-upload keys <args>` on `data` (or the AWS backend of the environment).
pub(crate) fn keys(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ecr-layer-upload"))
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("ECR_BACKEND", backend())
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .output()
        .expect("run keys");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A key made by `keys create`: (access key id, secret).
pub(crate) fn create_key(data: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = keys(data, &all);
    assert!(ok, "keys create failed: {stderr}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let id = json["accessKeyId"].as_str().unwrap().to_owned();
    let secret = json["secretAccessKey"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 40, "{stdout}");
    (id, secret)
}

pub(crate) struct Authed {
    child: Child,
    pub(crate) endpoint: String,
    pub(crate) data: tempfile::TempDir,
}

impl Drop for Authed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server with `ECR_AUTH=sigv4` on a loopback port; `None` if it exited at start, with
/// what it said on stderr.
pub(crate) fn start(data: tempfile::TempDir) -> Result<Authed, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecr-layer-upload"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("ECR_BACKEND", backend())
        .env("ECR_AUTH", "sigv4")
        .env("RUST_LOG", "info")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ecr-layer-upload");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let (false, Some(addr)) = (sent, line.split("addr=").nth(1)) {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
                sent = true;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(addr) = rx.recv_timeout(Duration::from_millis(100)) {
            return Ok(Authed {
                child,
                endpoint: format!("http://{addr}"),
                data,
            });
        }
        if let Ok(Some(_)) = child.try_wait() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return Err(err);
        }
        assert!(
            Instant::now() < deadline,
            "the server did not start in 30 s"
        );
    }
}

pub(crate) fn client(endpoint: &str, id: &str, secret: &str) -> aws_sdk_ecr::Client {
    use aws_sdk_ecr::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_ecr::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(id, secret, None, None, "test"))
        .build();
    aws_sdk_ecr::Client::from_conf(conf)
}

/// The error code and HTTP status of a failed call.
fn refusal<E, R>(err: aws_sdk_ecr::error::SdkError<E, R>) -> (String, String)
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    (
        err.code().unwrap_or("").to_owned(),
        err.message().unwrap_or("").to_owned(),
    )
}

/// A POST with no Authorization header at all: (status, body).
fn unsigned_post(endpoint: &str) -> (u16, String) {
    let addr = endpoint.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = "{}";
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.DescribeRepositories\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[test]
fn sigv4_refuses_to_start_without_a_key_and_says_how_to_make_one() {
    if backend() != "local" {
        // The shared table of the AWS backend may hold other tests' keys.
        return;
    }
    let Err(said) = start(temp_dir()) else {
        panic!("started with no key")
    };
    assert!(said.contains("keys create"), "{said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn authenticated_clients_push_and_pull_and_everyone_else_is_refused() {
    let data = temp_dir();
    let team = unique("team");
    let (admin_id, admin_secret) = create_key(data.path(), &["--allow", "admin", "--name", "ops"]);
    let (pull_id, pull_secret) = create_key(data.path(), &["--allow", "pull"]);
    let pattern = format!("{team}/*");
    let (team_id, team_secret) = create_key(
        data.path(),
        &[
            "--allow",
            "push",
            "--repository",
            &pattern,
            "--name",
            "team-ci",
        ],
    );
    let server = start(data).expect("start");
    let e = server.endpoint.clone();

    // The embedded backend's secrets are readable by their owner only.
    #[cfg(unix)]
    if backend() == "local" {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(server.data.path().join("keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // `keys list` shows ids, names, permissions and patterns, never a secret.
    let (ok, listed, _) = keys(server.data.path(), &["list"]);
    assert!(ok);
    assert!(listed.contains(&team_id) && listed.contains("team-ci") && listed.contains(&pattern));
    for secret in [&admin_secret, &pull_secret, &team_secret] {
        assert!(
            !listed.contains(secret.as_str()),
            "keys list shows a secret"
        );
    }

    // A whole push and pull with valid keys.
    let admin = client(&e, &admin_id, &admin_secret);
    let repo = format!("{team}/app");
    admin
        .create_repository()
        .repository_name(&repo)
        .send()
        .await
        .unwrap();
    let team_client = client(&e, &team_id, &team_secret);
    let layer = noise(300_000, 11);
    let layer_digest = crate::common::push_blob(&team_client, &repo, &layer).await;
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    crate::common::push_blob(&team_client, &repo, &config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    team_client
        .put_image()
        .repository_name(&repo)
        .image_manifest(&manifest)
        .image_tag("v1")
        .send()
        .await
        .unwrap();
    let puller = client(&e, &pull_id, &pull_secret);
    let got = puller
        .batch_get_image()
        .repository_name(&repo)
        .image_ids(ImageIdentifier::builder().image_tag("v1").build())
        .send()
        .await
        .unwrap();
    assert_eq!(got.images()[0].image_manifest(), Some(manifest.as_str()));
    let url = puller
        .get_download_url_for_layer()
        .repository_name(&repo)
        .layer_digest(&layer_digest)
        .send()
        .await
        .unwrap()
        .download_url
        .unwrap();
    assert!(!url.is_empty());

    // A pull-only key pushing.
    let (code, message) = refusal(
        puller
            .initiate_layer_upload()
            .repository_name(&repo)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "AccessDeniedException");
    assert!(
        message.contains("is not authorized to perform: ecr:InitiateLayerUpload on resource: arn:aws:ecr:us-east-1:123456789012:repository/"),
        "{message}"
    );

    // A `team/*` key touching another repository, and creating one (push does not allow it).
    let other = unique("other");
    admin
        .create_repository()
        .repository_name(&other)
        .send()
        .await
        .unwrap();
    let (code, message) = refusal(
        team_client
            .initiate_layer_upload()
            .repository_name(&other)
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "AccessDeniedException");
    assert!(
        message.contains(&format!("repository/{other} ")),
        "{message}"
    );
    assert!(message.contains("user/team-ci"), "{message}");

    // A wrong secret, an unknown key, no credentials.
    let (code, _) = refusal(
        client(&e, &admin_id, "wrong-secret")
            .describe_repositories()
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "InvalidSignatureException");
    let (code, _) = refusal(
        client(&e, "AKELNOSUCHKEY0000000", &admin_secret)
            .describe_repositories()
            .send()
            .await
            .unwrap_err(),
    );
    assert_eq!(code, "UnrecognizedClientException");
    let (status, body) = unsigned_post(&e);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("MissingAuthenticationTokenException"),
        "{body}"
    );

    // GetAuthorizationToken: base64 of AWS:<password>, 12 hours, the URL reached.
    let token = puller.get_authorization_token().send().await.unwrap();
    let d = &token.authorization_data()[0];
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(d.authorization_token().unwrap())
        .unwrap();
    let decoded = String::from_utf8(decoded).unwrap();
    assert!(decoded.starts_with("AWS:elu1."), "{decoded}");
    assert_eq!(d.proxy_endpoint(), Some(e.as_str()));
    let expires = d.expires_at().unwrap().secs();
    let now = crate::common::now().0 as i64;
    assert!(
        (expires - now - 12 * 3600).abs() < 120,
        "{expires} vs {now}"
    );

    // A key deleted while the server runs is refused within a second or so.
    let (ok, _, stderr) = keys(server.data.path(), &["delete", &pull_id]);
    assert!(ok, "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match puller.describe_repositories().send().await {
            Err(err) => {
                assert_eq!(refusal(err).0, "UnrecognizedClientException");
                break;
            }
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "a deleted key still works after 3 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let (ok, _, stderr) = keys(server.data.path(), &["delete", &pull_id]);
    assert!(!ok && stderr.contains("no access key"), "{stderr}");
}

/// `ecr-layer-upload push` signs with the usual AWS credential chain (here the environment) and
/// works unchanged against an authenticated server; without a valid key it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_push_command_works_against_an_authenticated_server() {
    let data = temp_dir();
    let (admin_id, admin_secret) = create_key(data.path(), &["--allow", "admin"]);
    let (push_id, push_secret) = create_key(data.path(), &["--allow", "push"]);
    let server = start(data).expect("start");
    let repo = unique("auth/push");
    client(&server.endpoint, &admin_id, &admin_secret)
        .create_repository()
        .repository_name(&repo)
        .send()
        .await
        .unwrap();

    // A one-layer OCI layout.
    let tmp = temp_dir();
    let layout = tmp.path().join("layout");
    let blobs_dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs_dir).unwrap();
    let layer = noise(200_000, 5);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    for blob in [&layer, &config, &manifest] {
        let d = digest(blob);
        std::fs::write(blobs_dir.join(d.strip_prefix("sha256:").unwrap()), blob).unwrap();
    }
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest(&manifest), "size": manifest.len()}]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();

    let push = |id: &str, secret: &str| {
        Command::new(env!("CARGO_BIN_EXE_ecr-layer-upload"))
            .arg("push")
            .arg(&layout)
            .args(["--repository", &repo, "--tag", "v1"])
            .args(["--endpoint-url", &server.endpoint])
            .arg("--state-file")
            .arg(tmp.path().join("state.json"))
            .env("AWS_ACCESS_KEY_ID", id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_ENDPOINT_URL_ECR")
            .env("AWS_CONFIG_FILE", tmp.path().join("no-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                tmp.path().join("no-credentials"),
            )
            .output()
            .expect("run push")
    };
    let refused = push(&push_id, "wrong-secret");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("InvalidSignatureException"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let out = push(&push_id, &push_secret);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        digest(&manifest)
    );
    let got = client(&server.endpoint, &push_id, &push_secret)
        .batch_get_image()
        .repository_name(&repo)
        .image_ids(ImageIdentifier::builder().image_tag("v1").build())
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.images()[0].image_manifest().map(str::as_bytes),
        Some(manifest.as_slice())
    );
}

//! CompleteLayerUpload of a 256 MiB layer cut on the real binary: the client times out and
//! disconnects, or the server is killed (SIGKILL) and started again on the same state. Either
//! way a retry of the same upload with the right digest succeeds, after at most retryable
//! errors (ServerException), within 30 s; never UploadNotFoundException.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ecr::config::retry::RetryConfig;
use aws_sdk_ecr::config::timeout::TimeoutConfig;
use aws_sdk_ecr::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ecr::error::ProvideErrorMetadata;
use aws_sdk_ecr::primitives::Blob;

use crate::common::{Server, create_repository, digest, noise, temp_dir, unique};

const MIB: usize = 1024 * 1024;
/// Big enough that completion (assembling and hashing it) takes a noticeable time.
const LAYER: usize = 256 * MIB;

/// A client that makes one attempt per call (so that every answer is seen), with `timeout` for
/// the whole call if given.
fn client(endpoint: &str, timeout: Option<Duration>) -> aws_sdk_ecr::Client {
    let mut timeouts = TimeoutConfig::builder();
    if let Some(t) = timeout {
        timeouts = timeouts.operation_timeout(t);
    }
    let conf = aws_sdk_ecr::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts.build())
        .build();
    aws_sdk_ecr::Client::from_conf(conf)
}

/// Sends `layer` to a new upload of `repo` in 16 MiB parts; returns the upload id.
async fn upload(ecr: &aws_sdk_ecr::Client, repo: &str, layer: &[u8]) -> String {
    let id = ecr
        .initiate_layer_upload()
        .repository_name(repo)
        .send()
        .await
        .unwrap()
        .upload_id
        .unwrap();
    let mut first = 0usize;
    for chunk in layer.chunks(16 * MIB) {
        ecr.upload_layer_part()
            .repository_name(repo)
            .upload_id(&id)
            .part_first_byte(first as i64)
            .part_last_byte((first + chunk.len() - 1) as i64)
            .layer_part_blob(Blob::new(chunk))
            .send()
            .await
            .unwrap();
        first += chunk.len();
    }
    id
}

/// One CompleteLayerUpload: the layer digest answered, or the error code.
async fn complete(
    ecr: &aws_sdk_ecr::Client,
    repo: &str,
    id: &str,
    digest: &str,
) -> Result<String, String> {
    match ecr
        .complete_layer_upload()
        .repository_name(repo)
        .upload_id(id)
        .layer_digests(digest)
        .send()
        .await
    {
        Ok(out) => Ok(out.layer_digest.unwrap_or_default()),
        Err(e) => Err(e
            .as_service_error()
            .and_then(|s| s.code())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{e:?}"))),
    }
}

/// Retries CompleteLayerUpload until it succeeds, allowing only ServerException meanwhile and
/// at most 30 s in all.
async fn retry_until_completed(ecr: &aws_sdk_ecr::Client, repo: &str, id: &str, d: &str) {
    let started = Instant::now();
    loop {
        match complete(ecr, repo, id, d).await {
            Ok(answered) => {
                assert_eq!(answered, d);
                break;
            }
            Err(code) => assert_eq!(
                code, "ServerException",
                "a retried CompleteLayerUpload must succeed or be retryable"
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the retried CompleteLayerUpload did not succeed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The layer is there, and a later retry gets the same answer.
    let check = ecr
        .batch_check_layer_availability()
        .repository_name(repo)
        .layer_digests(d)
        .send()
        .await
        .unwrap();
    assert_eq!(
        check.layers()[0].layer_availability(),
        Some(&aws_sdk_ecr::types::LayerAvailability::Available)
    );
    assert_eq!(check.layers()[0].layer_size(), Some(LAYER as i64));
    assert_eq!(complete(ecr, repo, id, d).await.as_deref(), Ok(d));
}

#[tokio::test]
async fn a_complete_whose_client_timed_out_can_be_retried() {
    let server = Server::start(&[]);
    let ecr = client(&server.endpoint, None);
    let repo = unique("cuts/timeout");
    create_repository(&ecr, &repo).await;
    let layer = noise(LAYER, 11);
    let d = digest(&layer);
    let id = upload(&ecr, &repo, &layer).await;
    // The client gives up (and closes the connection) long before the completion ends.
    let impatient = client(&server.endpoint, Some(Duration::from_millis(200)));
    let cut = complete(&impatient, &repo, &id, &d).await;
    assert!(cut.is_err(), "the completion ended within 200 ms: {cut:?}");
    retry_until_completed(&ecr, &repo, &id, &d).await;
}

/// The binary on the embedded backend with its state in `data`, on a loopback port; stopped by
/// its own PID when dropped. tests/e2e/startup_reconcile.rs uses it too.
pub(crate) struct Process {
    child: Child,
    pub(crate) endpoint: String,
}

impl Process {
    pub(crate) fn start(data: &Path) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ecr-layer-upload"))
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data)
            .env("ECR_BACKEND", "local")
            .env("RUST_LOG", "info")
            .env_remove("AWS_LAMBDA_RUNTIME_API")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ecr-layer-upload");
        let stdout = child.stdout.take().expect("stdout");
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
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ecr-layer-upload did not start in 30 s");
        Process {
            child,
            endpoint: format!("http://{addr}"),
        }
    }

    /// SIGKILL, and wait until the process is gone.
    pub(crate) fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_complete_killed_with_its_server_can_be_retried_after_a_restart() {
    let data = temp_dir();
    let server = Process::start(data.path());
    let ecr = client(&server.endpoint, None);
    let repo = unique("cuts/kill");
    create_repository(&ecr, &repo).await;
    let layer = noise(LAYER, 12);
    let d = digest(&layer);
    let id = upload(&ecr, &repo, &layer).await;
    let running = tokio::spawn({
        let (ecr, repo, id, d) = (ecr.clone(), repo.clone(), id.clone(), d.clone());
        async move { complete(&ecr, &repo, &id, &d).await }
    });
    // Land the kill inside the completion: a second CompleteLayerUpload that is refused shows
    // that the first holds the upload (and has not finished).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probe = complete(&ecr, &repo, &id, &d).await;
    assert!(
        matches!(
            probe.as_ref().map_err(String::as_str),
            Err("ServerException" | "UploadNotFoundException")
        ),
        "the completion was not under way before the kill: {probe:?}"
    );
    server.kill();
    assert!(running.await.unwrap().is_err());

    let server = Process::start(data.path());
    let ecr = client(&server.endpoint, None);
    retry_until_completed(&ecr, &repo, &id, &d).await;
}

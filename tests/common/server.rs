//! Starts the real binary on a loopback port for tests that drive it with real clients.
//!
//! The backend follows `ECR_TEST_BACKEND` (`local` by default; `aws` uses the S3 and DynamoDB
//! servers whose environment `scripts/services.sh env` prints and `make test` exports).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub endpoint: String,
    _data: tempfile::TempDir,
    /// The server's log lines (its stdout) so far, the first [`KEPT_LOG_LINES`] of them.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// How many log lines a [`Server`] keeps for [`Server::log_lines`].
const KEPT_LOG_LINES: usize = 100_000;

impl Server {
    pub fn start(extra_env: &[(&str, &str)]) -> Server {
        let data = super::temp_dir();
        let backend = std::env::var("ECR_TEST_BACKEND").unwrap_or_else(|_| "local".into());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ecr-layer-upload"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data.path())
            .env("ECR_BACKEND", &backend)
            .env("RUST_LOG", "info")
            .env_remove("AWS_LAMBDA_RUNTIME_API")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if backend == "aws" {
            for key in [
                "ECR_BUCKET",
                "ECR_TABLE",
                "AWS_ENDPOINT_URL_S3",
                "AWS_ENDPOINT_URL_DYNAMODB",
            ] {
                assert!(
                    std::env::var(key).is_ok(),
                    "ECR_TEST_BACKEND=aws needs {key}: run the tests through `make test`"
                );
            }
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start ecr-layer-upload");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut kept) = kept.lock()
                    && kept.len() < KEPT_LOG_LINES
                {
                    kept.push(line.clone());
                }
                if let (false, Some(addr)) = (sent, line.split("addr=").nth(1)) {
                    let addr = addr.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
                // Keep draining so the server never blocks on a full pipe.
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(100)) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("ecr-layer-upload exited at start: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ecr-layer-upload did not start in 30 s");
            }
        };
        Server {
            child,
            endpoint: format!("http://{addr}"),
            _data: data,
            log,
        }
    }

    /// The official Rust client, pointed at this server with test credentials.
    pub fn ecr_client(&self) -> aws_sdk_ecr::Client {
        use aws_sdk_ecr::config::{BehaviorVersion, Credentials, Region};
        let conf = aws_sdk_ecr::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
            .build();
        aws_sdk_ecr::Client::from_conf(conf)
    }

    /// The log lines the server has written so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the server process so far, in bytes (Linux `VmHWM`).
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Uploads `data` to repository `repo` as one part with aws-sdk-ecr; returns its digest.
pub async fn push_blob(ecr: &aws_sdk_ecr::Client, repo: &str, data: &[u8]) -> String {
    let id = ecr
        .initiate_layer_upload()
        .repository_name(repo)
        .send()
        .await
        .unwrap()
        .upload_id
        .unwrap();
    ecr.upload_layer_part()
        .repository_name(repo)
        .upload_id(&id)
        .part_first_byte(0)
        .part_last_byte(data.len() as i64 - 1)
        .layer_part_blob(aws_sdk_ecr::primitives::Blob::new(data))
        .send()
        .await
        .unwrap();
    let digest = super::digest(data);
    ecr.complete_layer_upload()
        .repository_name(repo)
        .upload_id(&id)
        .layer_digests(&digest)
        .send()
        .await
        .unwrap();
    digest
}

/// Creates repository `name` with aws-sdk-ecr.
pub async fn create_repository(ecr: &aws_sdk_ecr::Client, name: &str) {
    ecr.create_repository()
        .repository_name(name)
        .send()
        .await
        .unwrap();
}

//! `make bench`: one random layer pushed, side by side in interleaved rounds,
//!
//! - (a) straight to S3 as a multipart upload (aws-sdk-s3, 10 MiB parts),
//! - (b) through the service on the AWS backend, 10 MiB parts,
//! - (c) through the service on the AWS backend, Lambda-sized parts,
//! - (d) through the service on the embedded backend, 10 MiB parts,
//!
//! and (e) read back from S3 with one GET and hashed. Each push runs against a fresh service
//! process (the release binary), so that its peak RSS (`VmHWM`) and CPU seconds are its own; the
//! S3 server's CPU seconds are read from `/proc` too. The service's requests are encoded before the
//! clock starts (a client that costs nothing), so that what is timed is the service's work.
//! Prints the medians and the ratios of issue 13's acceptance criteria (README, "Performance").
//!
//! Then (criterion 7 of issue 13) a 4-layer image of the same total size, written as an OCI
//! layout, is pushed by the `ecr-layer-upload push` command on each backend, one blob at a time
//! (`--max-concurrent-uploads 1`) and with the default concurrency, interleaved in each round.
//!
//! And (criterion 5, opt-in half) CompleteLayerUpload's time with `ECR_VERIFY=incremental` beside
//! the default streaming verification, for a 16 MiB layer and one of the bench size, on both
//! backends.
//!
//! Last (criterion 6), the service's peak RSS for one push per path of a 16 MiB, a 256 MiB and a
//! 1 GiB layer (`BENCH_RSS_SIZES_MIB`).
//!
//! Environment: `BENCH_SIZE_MIB` (256), `BENCH_ROUNDS` (3), `BENCH_ONLY` (`layer` for the one-layer
//! comparison, `completion` for the verification modes, `image` for the 4-layer push, `rss` for
//! peak memory by layer size; all when unset; a comma-separated list for several), and the lines of
//! `scripts/services.sh env` (the Makefile's `bench` target starts the servers and sets them).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::RequestChecksumCalculation;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use bytes::Bytes;
use ecr_layer_upload::frontdoors::lambda::part_size as lambda_part_size;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;
const PART: usize = 10 * MIB;

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 12 and 13 here, in clock ticks.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

fn s3_pid() -> u32 {
    let dir = std::env::var("ECR_SERVICES_DIR").expect("ECR_SERVICES_DIR: run `make bench`");
    std::fs::read_to_string(format!("{dir}/s3.pid"))
        .expect("the S3 server's PID file")
        .trim()
        .parse()
        .expect("PID")
}

/// The service binary on a loopback port with the given backend and settings.
struct Service {
    child: Child,
    addr: String,
    _data: tempfile::TempDir,
}

impl Service {
    fn start(backend: &str, part_size: usize, min_part: usize, verify: &str) -> Service {
        let data = common::temp_dir();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ecr-layer-upload"))
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data.path())
            .env("ECR_BACKEND", backend)
            .env("ECR_PART_SIZE", part_size.to_string())
            .env("ECR_MIN_PART_SIZE", min_part.to_string())
            .env("ECR_VERIFY", verify)
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
        Service {
            child,
            addr,
            _data: data,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 connection to the service, sending pre-encoded AWS JSON 1.1 requests.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Conn { send }
    }

    async fn call(&mut self, op: &str, body: Bytes) -> serde_json::Value {
        let req = http::Request::post("/")
            .header("host", "bench")
            .header("content-type", "application/x-amz-json-1.1")
            .header(
                "x-amz-target",
                format!("AmazonEC2ContainerRegistry_V20150921.{op}"),
            )
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/us-east-1/ecr/aws4_request, SignedHeaders=host, Signature=00",
            )
            .body(Full::new(body))
            .unwrap();
        self.send.ready().await.expect("connection ready");
        let res = self.send.send_request(req).await.expect("request");
        let status = res.status();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        assert!(
            status.is_success(),
            "{op}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).expect("JSON answer")
    }
}

#[derive(Default, Clone, Copy)]
struct Run {
    /// Parts and completion, seconds.
    seconds: f64,
    complete_seconds: f64,
    /// CPU seconds of the service during the parts, and in all.
    service_part_cpu: f64,
    service_cpu: f64,
    /// CPU seconds of the S3 server during the parts, and in all (with the completion's read).
    s3_part_cpu: f64,
    s3_cpu: f64,
    peak_rss: u64,
}

async fn push_service(
    backend: &str,
    part: usize,
    min_part: usize,
    layer: &Bytes,
    digest: &str,
) -> Run {
    push_verified(backend, part, min_part, layer, digest, "stream").await
}

/// [`push_service`] with the service's `ECR_VERIFY` set to `verify`.
async fn push_verified(
    backend: &str,
    part: usize,
    min_part: usize,
    layer: &Bytes,
    digest: &str,
    verify: &str,
) -> Run {
    let svc = Service::start(backend, part, min_part, verify);
    let mut conn = Conn::open(&svc.addr).await;
    let repo = format!("bench/{}", &uuid::Uuid::new_v4().to_string()[..8]);
    conn.call(
        "CreateRepository",
        Bytes::from(format!(r#"{{"repositoryName":"{repo}"}}"#)),
    )
    .await;
    let init = conn
        .call(
            "InitiateLayerUpload",
            Bytes::from(format!(r#"{{"repositoryName":"{repo}"}}"#)),
        )
        .await;
    let id = init["uploadId"].as_str().expect("uploadId").to_string();
    assert_eq!(init["partSize"].as_u64(), Some(part as u64));
    let b64 = base64::engine::general_purpose::STANDARD;
    let bodies: Vec<Bytes> = layer
        .chunks(part)
        .enumerate()
        .map(|(i, chunk)| {
            let first = i * part;
            let last = first + chunk.len() - 1;
            Bytes::from(format!(
                r#"{{"repositoryName":"{repo}","uploadId":"{id}","partFirstByte":{first},"partLastByte":{last},"layerPartBlob":"{}"}}"#,
                b64.encode(chunk)
            ))
        })
        .collect();
    let complete = Bytes::from(format!(
        r#"{{"repositoryName":"{repo}","uploadId":"{id}","layerDigests":["{digest}"]}}"#
    ));
    let s3 = s3_pid();
    let (svc0, s30) = (cpu_seconds(svc.pid()), cpu_seconds(s3));
    let started = Instant::now();
    for body in bodies {
        conn.call("UploadLayerPart", body).await;
    }
    let svc_parts = cpu_seconds(svc.pid());
    let s3_parts = cpu_seconds(s3);
    let completing = Instant::now();
    let done = conn.call("CompleteLayerUpload", complete).await;
    let complete_seconds = completing.elapsed().as_secs_f64();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(done["layerDigest"].as_str(), Some(digest));
    Run {
        seconds,
        complete_seconds,
        service_part_cpu: svc_parts - svc0,
        service_cpu: cpu_seconds(svc.pid()) - svc0,
        s3_part_cpu: s3_parts - s30,
        s3_cpu: cpu_seconds(s3) - s30,
        peak_rss: peak_rss(svc.pid()),
    }
}

fn s3_client() -> aws_sdk_s3::Client {
    let base = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(
            std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
        ))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            std::env::var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID"),
            std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "bench",
        ))
        .endpoint_url(std::env::var("AWS_ENDPOINT_URL_S3").expect("AWS_ENDPOINT_URL_S3"))
        .force_path_style(true)
        // As the SDKs do over HTTPS: no payload hash for the signature, no checksum unless asked.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
    aws_sdk_s3::Client::from_conf(base.build())
}

/// (a) The layer as an S3 multipart upload in `PART` parts, the client signing no payload (the
/// SDKs' default over HTTPS), and (e) a GET + sha256 of the result. Returns the push and the
/// read's seconds.
async fn push_direct(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    layer: &Bytes,
    digest: &str,
) -> (Run, f64) {
    let key = format!("bench/{}", uuid::Uuid::new_v4());
    let created = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key(&key)
        .send()
        .await
        .expect("create multipart");
    let id = created.upload_id().unwrap().to_string();
    let pid = s3_pid();
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let mut parts = Vec::new();
    for (i, offset) in (0..layer.len()).step_by(PART).enumerate() {
        let chunk = layer.slice(offset..(offset + PART).min(layer.len()));
        let out = s3
            .upload_part()
            .bucket(bucket)
            .key(&key)
            .upload_id(&id)
            .part_number(i as i32 + 1)
            .body(ByteStream::from(chunk))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .expect("upload part");
        parts.push(
            CompletedPart::builder()
                .part_number(i as i32 + 1)
                .e_tag(out.e_tag().unwrap())
                .build(),
        );
    }
    let s3_part_cpu = cpu_seconds(pid) - cpu0;
    let completing = Instant::now();
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(&key)
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete multipart");
    let complete_seconds = completing.elapsed().as_secs_f64();
    let seconds = started.elapsed().as_secs_f64();
    let s3_cpu = cpu_seconds(pid) - cpu0;

    let reading = Instant::now();
    let mut body = s3
        .get_object()
        .bucket(bucket)
        .key(&key)
        .send()
        .await
        .expect("get")
        .body;
    let mut hasher = Sha256::new();
    while let Some(chunk) = body.try_next().await.expect("read") {
        hasher.update(&chunk);
    }
    let read_seconds = reading.elapsed().as_secs_f64();
    assert_eq!(format!("sha256:{}", hex::encode(hasher.finalize())), digest);
    let _ = s3.delete_object().bucket(bucket).key(&key).send().await;
    (
        Run {
            seconds,
            complete_seconds,
            s3_part_cpu,
            s3_cpu,
            ..Run::default()
        },
        read_seconds,
    )
}

/// A 4-layer image as an OCI layout in `dir`: four random layers of `size / 4` bytes and a config.
fn write_image(dir: &std::path::Path, size: usize) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout directory");
    let write = |data: &[u8]| -> serde_json::Value {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::write(blobs.join(&hex), data).expect("write blob");
        serde_json::json!({"digest": format!("sha256:{hex}"), "size": data.len()})
    };
    let mut layers = Vec::new();
    for i in 0..4u64 {
        let mut d = write(&common::noise(size / 4, 70 + i));
        d["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
        layers.push(d);
    }
    let mut config = write(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}"#);
    config["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    }))
    .unwrap();
    let mut m = write(&manifest);
    m["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    m["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "bench"});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [m]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[derive(Default, Clone, Copy)]
struct ImagePush {
    seconds: f64,
    /// The push command's peak RSS (`VmHWM`, sampled while it runs).
    client_rss: u64,
}

/// The image in `layout` pushed by `ecr-layer-upload push` to a fresh service on `backend` (10 MiB
/// parts), `concurrency` blobs at once (`None`: the command's default).
async fn push_image(
    backend: &str,
    layout: &std::path::Path,
    concurrency: Option<u16>,
) -> ImagePush {
    let svc = Service::start(backend, PART, 5 * MIB, "stream");
    let mut conn = Conn::open(&svc.addr).await;
    let repo = format!("bench/image-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    conn.call(
        "CreateRepository",
        Bytes::from(format!(r#"{{"repositoryName":"{repo}"}}"#)),
    )
    .await;
    let state = common::temp_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ecr-layer-upload"));
    cmd.arg("push")
        .arg(layout)
        .args(["--repository", &repo, "--tag", "v1"])
        .args(["--endpoint-url", &format!("http://{}", svc.addr)])
        .arg("--state-file")
        .arg(state.path().join("uploads.json"))
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_ECR")
        .env_remove("ECR_PUSH_STOP_AFTER_PARTS")
        .env("AWS_CONFIG_FILE", state.path().join("no-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            state.path().join("no-credentials"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(n) = concurrency {
        cmd.args(["--max-concurrent-uploads", &n.to_string()]);
    }
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start ecr-layer-upload push");
        let stderr = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
            text
        });
        let mut client_rss = 0;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for push") {
                break status;
            }
            let hwm = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                });
            client_rss = client_rss.max(hwm.unwrap_or(0) * 1024);
            std::thread::sleep(Duration::from_millis(20));
        };
        let seconds = started.elapsed().as_secs_f64();
        let text = reader.join().unwrap_or_default();
        assert!(status.success(), "push failed: {text}");
        assert!(text.contains("5 blobs uploaded"), "{text}");
        drop(svc);
        ImagePush {
            seconds,
            client_rss,
        }
    })
    .await
    .expect("push task")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn med(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    median(runs.iter().map(f).collect())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024 / 1024);
    format!("{model}, {cores} cores, {mem} GiB RAM")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let size_mib: usize = std::env::var("BENCH_SIZE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let size = size_mib * MIB;
    let bucket = std::env::var("ECR_BUCKET").expect("ECR_BUCKET: run `make bench`");
    let lambda_part = lambda_part_size() as usize;

    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wants = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    if wants("layer") {
        compare_layer(size, size_mib, rounds, &bucket, lambda_part).await;
    }
    if wants("completion") {
        compare_completion(size, size_mib, rounds).await;
    }
    if wants("image") {
        compare_image(size, size_mib, rounds).await;
    }
    if wants("rss") {
        compare_rss(lambda_part).await;
    }
}

/// Criterion 6: the service's peak RSS against 64 MiB + 2 x part, one push per path and layer
/// size (`BENCH_RSS_SIZES_MIB`, "16,256,1024"), each against a fresh process: the figure must not
/// grow with the layer.
async fn compare_rss(lambda_part: usize) {
    let sizes: Vec<usize> = std::env::var("BENCH_RSS_SIZES_MIB")
        .unwrap_or_else(|_| "16,256,1024".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let paths = [
        ("AWS, 10 MiB parts", "aws", PART, 5 * MIB),
        ("AWS, Lambda parts", "aws", lambda_part, MIB),
        ("embedded, 10 MiB parts", "local", PART, 5 * MIB),
    ];
    let mut peaks = vec![Vec::new(); paths.len()];
    for &mib in &sizes {
        eprintln!("peak RSS: {mib} MiB layer");
        let layer = Bytes::from(common::noise(mib * MIB, 17));
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
        for (i, (_, backend, part, min_part)) in paths.iter().enumerate() {
            let run = push_service(backend, *part, *min_part, &layer, &digest).await;
            peaks[i].push(run.peak_rss as f64 / MIB as f64);
        }
    }
    println!();
    println!(
        "Service peak RSS MiB by layer size, one push each; {}",
        machine()
    );
    println!();
    let head: Vec<String> = sizes.iter().map(|m| format!("{m} MiB")).collect();
    println!(
        "| path | {} | bound (64 MiB + 2 x part) | largest / bound | largest / smallest |",
        head.join(" | ")
    );
    println!("|{}", " --- |".repeat(sizes.len() + 4));
    let mut summary = Vec::new();
    for ((name, _, part, _), peak) in paths.iter().zip(&peaks) {
        let bound = (64 * MIB + 2 * part) as f64 / MIB as f64;
        let max = peak.iter().copied().fold(0.0, f64::max);
        let min = peak.iter().copied().fold(f64::INFINITY, f64::min);
        let cells: Vec<String> = peak.iter().map(|p| format!("{p:.0}")).collect();
        println!(
            "| {name} | {} | {bound:.0} | {:.2} | {:.2} |",
            cells.join(" | "),
            max / bound,
            max / min
        );
        summary.push(format!(
            "{name} {:.2} of the bound, {:.2} x from smallest to largest",
            max / bound,
            max / min
        ));
    }
    println!();
    println!("- 6. peak RSS over layer sizes: {}", summary.join("; "));
}

/// A push of [`compare_completion`]: backend, layer MiB, `ECR_VERIFY`.
type Case = (&'static str, usize, &'static str);

/// Criterion 5's opt-in half: CompleteLayerUpload's time with `ECR_VERIFY=incremental` beside
/// the default streaming verification, for a 16 MiB layer and one of the bench size, on both
/// backends (10 MiB parts), and what the incremental state costs on the part path.
async fn compare_completion(size: usize, size_mib: usize, rounds: usize) {
    const SMALL_MIB: usize = 16;
    let layers: Vec<(usize, Bytes, String)> = [SMALL_MIB, size_mib]
        .into_iter()
        .map(|mib| {
            let layer = Bytes::from(common::noise(mib * MIB, 17 + mib as u64));
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
            (mib, layer, digest)
        })
        .collect();
    let mut runs: Vec<(Case, Vec<Run>)> = Vec::new();
    for backend in ["aws", "local"] {
        for (mib, _, _) in &layers {
            for verify in ["stream", "incremental"] {
                runs.push(((backend, *mib, verify), Vec::new()));
            }
        }
    }
    for round in 1..=rounds {
        eprintln!(
            "round {round} of {rounds}: completion, stream vs incremental, {SMALL_MIB} and {size_mib} MiB"
        );
        for ((backend, mib, verify), out) in &mut runs {
            let (_, layer, digest) = layers
                .iter()
                .find(|(m, _, _)| m == mib)
                .expect("layer of that size");
            out.push(push_verified(backend, PART, 5 * MIB, layer, digest, verify).await);
        }
    }
    let find = |backend: &str, mib: usize, verify: &str| -> &[Run] {
        &runs
            .iter()
            .find(|((b, m, v), _)| *b == backend && *m == mib && *v == verify)
            .expect("measured")
            .1
    };
    println!();
    println!(
        "CompleteLayerUpload by verification mode (`ECR_VERIFY`), 10 MiB parts, medians of {rounds} interleaved rounds; {}",
        machine()
    );
    println!();
    println!(
        "| backend | layer | completion s, stream | completion s, incremental | service CPU s on the part path, stream / incremental |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let mut line = Vec::new();
    for (backend, name) in [("aws", "AWS"), ("local", "embedded")] {
        for (mib, _, _) in &layers {
            let (s, i) = (
                find(backend, *mib, "stream"),
                find(backend, *mib, "incremental"),
            );
            let inc = med(i, |r| r.complete_seconds);
            println!(
                "| {name} | {mib} MiB | {:.3} | {inc:.3} | {:.2} / {:.2} |",
                med(s, |r| r.complete_seconds),
                med(s, |r| r.service_part_cpu),
                med(i, |r| r.service_part_cpu),
            );
            line.push(format!("{name} {mib} MiB {:.0} ms", inc * 1000.0));
        }
    }
    println!();
    println!(
        "- 5. incremental completion (< 100 ms whatever the size): {}",
        line.join(", ")
    );
    let _ = size;
}

/// Criterion 7: the 4-layer image pushed by the `push` command, one blob at a time and with its
/// default concurrency, on both backends.
async fn compare_image(size: usize, size_mib: usize, rounds: usize) {
    let dir = common::temp_dir();
    write_image(dir.path(), size);
    let default = ecr_layer_upload::push::upload::DEFAULT_CONCURRENT_UPLOADS;
    let mut runs: Vec<(&str, Vec<ImagePush>, Vec<ImagePush>)> =
        vec![("AWS", vec![], vec![]), ("embedded", vec![], vec![])];
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}: 4-layer image, {size_mib} MiB in all");
        for (name, one, many) in &mut runs {
            let backend = if *name == "AWS" { "aws" } else { "local" };
            one.push(push_image(backend, dir.path(), Some(1)).await);
            many.push(push_image(backend, dir.path(), None).await);
        }
    }
    let secs = |r: &[ImagePush]| median(r.iter().map(|p| p.seconds).collect());
    let rss =
        |r: &[ImagePush]| median(r.iter().map(|p| p.client_rss as f64).collect()) / MIB as f64;
    println!();
    println!(
        "4-layer image (4 x {} MiB + config) pushed by `ecr-layer-upload push`, 10 MiB parts, medians of {rounds} interleaved rounds; {}",
        size_mib / 4,
        machine()
    );
    println!();
    println!(
        "| backend | one blob at a time | {default} at once (default) | speed-up | push command peak RSS MiB (1 / {default}) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let mb = size as f64 / 1e6;
    let mut speedups = Vec::new();
    for (name, one, many) in &runs {
        let (a, b) = (secs(one), secs(many));
        speedups.push(format!("{name} {:.2} x", a / b));
        println!(
            "| {name} | {a:.2} s ({:.0} MB/s) | {b:.2} s ({:.0} MB/s) | {:.2} | {:.0} / {:.0} |",
            mb / a,
            mb / b,
            a / b,
            rss(one),
            rss(many)
        );
    }
    println!();
    println!(
        "- 7. push command, 4-layer image: {default} blobs at once vs one at a time: {}",
        speedups.join(", ")
    );
}

/// Criteria 1 to 6: one layer, direct to S3 and through the service.
async fn compare_layer(
    size: usize,
    size_mib: usize,
    rounds: usize,
    bucket: &str,
    lambda_part: usize,
) {
    let layer = Bytes::from(common::noise(size, 13));
    let hashing = Instant::now();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let hash_seconds = hashing.elapsed().as_secs_f64();
    let s3 = s3_client();

    let (mut direct, mut aws10, mut awsl, mut local) = (vec![], vec![], vec![], vec![]);
    let mut reads = vec![];
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}: {size_mib} MiB");
        let (run, read) = push_direct(&s3, bucket, &layer, &digest).await;
        direct.push(run);
        reads.push(read);
        aws10.push(push_service("aws", PART, 5 * MIB, &layer, &digest).await);
        awsl.push(push_service("aws", lambda_part, MIB, &layer, &digest).await);
        local.push(push_service("local", PART, 5 * MIB, &layer, &digest).await);
    }

    let gb = size as f64 / 1e9;
    let mbs = |runs: &[Run]| size as f64 / 1e6 / med(runs, |r| r.seconds);
    let direct_mbs = mbs(&direct);
    let direct_cpu = med(&direct, |r| r.s3_cpu);
    let direct_part_cpu = med(&direct, |r| r.s3_part_cpu);
    let read = median(reads);
    println!();
    println!(
        "{size_mib} MiB random layer, medians of {rounds} interleaved rounds; {}",
        machine()
    );
    println!();
    println!(
        "| path | throughput | vs direct | S3 CPU s (parts / all) | vs direct (parts / all) | service CPU s (parts / all) | GB per service CPU s (parts) | completion s | peak RSS MiB | RSS bound MiB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| (a) direct S3 multipart, 10 MiB parts | {direct_mbs:.0} MB/s | 1.00 | {direct_part_cpu:.2} / {direct_cpu:.2} | 1.00 / 1.00 | — | — | {:.3} | — | — |",
        med(&direct, |r| r.complete_seconds)
    );
    for (name, runs, part) in [
        ("(b) service, AWS, 10 MiB parts", &aws10, PART),
        ("(c) service, AWS, Lambda parts", &awsl, lambda_part),
        ("(d) service, embedded, 10 MiB parts", &local, PART),
    ] {
        let aws = !name.contains("embedded");
        let s3_cpu = med(runs, |r| r.s3_cpu);
        let s3_part_cpu = med(runs, |r| r.s3_part_cpu);
        println!(
            "| {name} ({part} B) | {:.0} MB/s | {} | {} | {} | {:.2} / {:.2} | {:.2} | {:.3} | {:.0} | {:.0} |",
            mbs(runs),
            if aws {
                format!("{:.2}", mbs(runs) / direct_mbs)
            } else {
                "—".into()
            },
            if aws {
                format!("{s3_part_cpu:.2} / {s3_cpu:.2}")
            } else {
                "—".into()
            },
            if aws {
                format!(
                    "{:.2} / {:.2}",
                    s3_part_cpu / direct_part_cpu,
                    s3_cpu / direct_cpu
                )
            } else {
                "—".into()
            },
            med(runs, |r| r.service_part_cpu),
            med(runs, |r| r.service_cpu),
            gb / med(runs, |r| r.service_part_cpu),
            med(runs, |r| r.complete_seconds),
            med(runs, |r| r.peak_rss as f64) / MIB as f64,
            (64 * MIB + 2 * part) as f64 / MIB as f64,
        );
    }
    println!(
        "| (e) GET + sha256 from S3 | {:.0} MB/s | | | | | | {read:.3} | | |",
        size as f64 / 1e6 / read
    );
    println!();
    println!("Ratios (issue 13's criteria):");
    println!(
        "- 2. AWS 10 MiB parts: throughput {:.2} x direct (>= 0.8), S3 CPU {:.2} x direct (<= 1.2; writing the parts alone {:.2} x)",
        mbs(&aws10) / direct_mbs,
        med(&aws10, |r| r.s3_cpu) / direct_cpu,
        med(&aws10, |r| r.s3_part_cpu) / direct_part_cpu
    );
    println!(
        "- 3. AWS Lambda parts: throughput {:.2} x direct (>= 0.45), S3 CPU {:.2} x direct (writing the parts alone {:.2} x)",
        mbs(&awsl) / direct_mbs,
        med(&awsl, |r| r.s3_cpu) / direct_cpu,
        med(&awsl, |r| r.s3_part_cpu) / direct_part_cpu
    );
    println!(
        "- 4. service GB per CPU-second on the part path: AWS {:.2}, Lambda parts {:.2}, embedded {:.2} (>= 0.5)",
        gb / med(&aws10, |r| r.service_part_cpu),
        gb / med(&awsl, |r| r.service_part_cpu),
        gb / med(&local, |r| r.service_part_cpu)
    );
    println!(
        "- 5. completion vs GET + sha256 ({read:.3} s): AWS {:.2} x, Lambda parts {:.2} x (<= 1.1); embedded {:.3} s vs hashing once {hash_seconds:.3} s = {:.2} x (<= 1.0)",
        med(&aws10, |r| r.complete_seconds) / read,
        med(&awsl, |r| r.complete_seconds) / read,
        med(&local, |r| r.complete_seconds),
        med(&local, |r| r.complete_seconds) / hash_seconds
    );
    println!(
        "- 6. peak RSS vs 64 MiB + 2 x part: AWS {:.2}, Lambda parts {:.2}, embedded {:.2} (<= 1.0)",
        med(&aws10, |r| r.peak_rss as f64) / (64 * MIB + 2 * PART) as f64,
        med(&awsl, |r| r.peak_rss as f64) / (64 * MIB + 2 * lambda_part) as f64,
        med(&local, |r| r.peak_rss as f64) / (64 * MIB + 2 * PART) as f64
    );
}

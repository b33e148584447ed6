//! The binary starts itself again with glibc's mmap threshold fixed (src/main.rs), unless the
//! environment already sets one: the serving process, with the PID it was started with, carries
//! the setting.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const VAR: &str = "MALLOC_MMAP_THRESHOLD_";

/// Starts `serve` with `threshold` as the variable (`None`: unset), and returns what the
/// process's environment holds for it once it serves, and the answer to `GET /v2/`.
fn serving_threshold(threshold: Option<&str>) -> (Option<String>, String) {
    let data = crate::common::temp_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ecr-layer-upload"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("ECR_BACKEND", "local")
        .env("RUST_LOG", "info")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .env_remove(VAR)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(v) = threshold {
        cmd.env(VAR, v);
    }
    let mut child = cmd.spawn().expect("start ecr-layer-upload");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("addr=").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30));
    let environ = std::fs::read(format!("/proc/{}/environ", child.id()));
    let answer = addr.as_ref().ok().map(|addr| {
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer
    });
    let _ = child.kill();
    let _ = child.wait();
    addr.expect("the server did not start in 30 s");
    let environ = environ.expect("the server's environment");
    let value = environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(&format!("{VAR}=")).map(str::to_owned));
    (value, answer.unwrap_or_default())
}

#[test]
fn the_serving_process_has_the_mmap_threshold_fixed() {
    let (value, answer) = serving_threshold(None);
    assert_eq!(value.as_deref(), Some("1048576"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_threshold_the_environment_sets_is_kept() {
    let (value, answer) = serving_threshold(Some("262144"));
    assert_eq!(value.as_deref(), Some("262144"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

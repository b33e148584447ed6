//! The local server's per-request time limit, and its log under a storm of failed accepts (out of
//! file descriptors): logged at a bounded rate, with a count of the failures left out.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::Server;

const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.";

fn addr(server: &Server) -> String {
    server.endpoint.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection or `within` passes; the bytes read.
fn read_answer(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A ListImages whose body trickles in, a byte every 300 ms: well within the idle and body
/// timeouts (30 s, 60 s), so only the per-request limit (2 s) can end it. The answer is a
/// `ServerException` (retryable) saying so, within a few seconds, and the server goes on
/// serving.
#[test]
fn a_request_not_answered_in_time_gets_a_retryable_error() {
    let server = Server::start(&[
        ("ECR_REQUEST_TIMEOUT_SECS", "2"),
        ("ECR_IDLE_TIMEOUT_SECS", "30"),
        ("ECR_BODY_TIMEOUT_SECS", "60"),
    ]);
    let body = br#"{"repositoryName":"app"}"#;
    let mut stream = TcpStream::connect(addr(&server)).unwrap();
    stream
        .write_all(
            format!(
                "POST / HTTP/1.1\r\nHost: {}\r\nX-Amz-Target: {TARGET}ListImages\r\n\
                 Content-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n",
                addr(&server),
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let started = Instant::now();
    let mut writer = stream.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        for b in body {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let answer = read_answer(&mut stream, Duration::from_secs(15));
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 500"), "{text}");
    assert!(text.contains("ServerException"), "{text}");
    assert!(
        text.contains("not answered within 2 s"),
        "the answer names the limit: {text}"
    );
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(6),
        "answered after {elapsed:?}"
    );
    trickler.join().unwrap();

    // Still serving, and a request answered in time is not touched by the limit (the backend's
    // store may be shared with other tests: only the answer's success is checked).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ecr = server.ecr_client();
    rt.block_on(async {
        ecr.describe_repositories().send().await.unwrap();
    });
}

/// Out of file descriptors (`ulimit -n 64` with room for 1000 connections), every accept fails
/// and is retried every 50 ms: about a hundred failures in six seconds are logged as at most two
/// warnings, the later one with the count of those left out.
#[test]
fn accept_failures_are_logged_at_a_bounded_rate() {
    let server = Server::start(&[("ECR_MAX_CONNECTIONS", "1000")]);
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", server.pid()))
        .arg("--nofile=64:64")
        .status()
        .expect("run prlimit");
    assert!(status.success());
    // More connections than descriptors: the ones past the limit wait in the backlog, and the
    // server's accepts fail for as long as they are held.
    let mut held = Vec::new();
    for _ in 0..120 {
        held.push(TcpStream::connect(addr(&server)).unwrap());
    }
    std::thread::sleep(Duration::from_secs(6));
    let warnings: Vec<String> = server
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("accept failed"))
        .collect();
    drop(held);
    assert!(
        !warnings.is_empty(),
        "no accept failed: the descriptor limit did not bite"
    );
    assert!(
        warnings.len() <= 2,
        "{} warnings in 6 s: {warnings:#?}",
        warnings.len()
    );
    let suppressed: Vec<u64> = warnings
        .iter()
        .filter_map(|l| {
            l.split("suppressed=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(suppressed.len(), warnings.len(), "{warnings:#?}");
    if let [_, later] = suppressed[..] {
        assert!(
            later >= 10,
            "the later warning counts the failures left out: {warnings:#?}"
        );
    }
}

//! The local server under cuts and abuse: held-open and trickling connections, a descriptor
//! limit, and oversized list bodies, with the real binary's peak memory measured.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::{Server, unique};

const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.";

fn addr(server: &Server) -> String {
    server.endpoint.trim_start_matches("http://").to_owned()
}

fn head(server: &Server, op: &str, length: Option<usize>) -> String {
    let length = match length {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".to_owned(),
    };
    format!(
        "POST / HTTP/1.1\r\nHost: {}\r\nX-Amz-Target: {TARGET}{op}\r\n\
         Content-Type: application/x-amz-json-1.1\r\n{length}\r\n",
        addr(server)
    )
}

/// Reads until the server closes the connection (or `within` passes); the bytes read, and
/// whether it was closed in time.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (got, false);
            }
            // Reset: closed.
            // Reset: closed.
            Err(_) => return (got, true),
        }
    }
}

fn error_type(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    text.split("\"__type\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
        .to_owned()
}

#[test]
fn silent_and_trickling_connections_are_closed() {
    let server = Server::start(&[
        ("ECR_HEADER_TIMEOUT_SECS", "1"),
        ("ECR_IDLE_TIMEOUT_SECS", "1"),
        ("ECR_BODY_TIMEOUT_SECS", "3"),
    ]);
    let started = Instant::now();
    // Silent: closed by the header timeout, without an answer.
    let mut silent = TcpStream::connect(addr(&server)).unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(5));
    assert!(closed, "a silent connection stays open");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A head trickled a byte at a time never completes in time.
    let mut trickle = TcpStream::connect(addr(&server)).unwrap();
    let trickled_head = head(&server, "ListImages", Some(2));
    let trickled = std::thread::spawn(move || {
        let started = Instant::now();
        for b in trickled_head.bytes() {
            if trickle.write_all(&[b]).is_err() || started.elapsed() > Duration::from_secs(8) {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the whole head was accepted");
    });
    assert!(trickled.join().unwrap() < Duration::from_secs(8));

    // A body that stops: answered 400 once it has been silent for the idle timeout.
    let mut stalled = TcpStream::connect(addr(&server)).unwrap();
    stalled
        .write_all(head(&server, "ListImages", Some(100)).as_bytes())
        .unwrap();
    stalled.write_all(b"{\"repositoryName\"").unwrap();
    let (answer, closed) = read_until_closed(&mut stalled, Duration::from_secs(5));
    assert!(closed);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(error_type(&answer), "SerializationException");

    // A body trickled faster than the idle timeout still ends at the body timeout.
    let mut slow = TcpStream::connect(addr(&server)).unwrap();
    slow.write_all(head(&server, "ListImages", Some(100)).as_bytes())
        .unwrap();
    let started = Instant::now();
    let mut writer = slow.try_clone().unwrap();
    std::thread::spawn(move || {
        for _ in 0..100 {
            if writer.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(400));
        }
    });
    let (answer, closed) = read_until_closed(&mut slow, Duration::from_secs(8));
    assert!(closed);
    assert!(started.elapsed() >= Duration::from_millis(2900));
    assert_eq!(error_type(&answer), "SerializationException");
}

/// Runs `n` requests through aws-sdk-ecr, each within 10 s.
fn served(server: &Server, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ecr = server.ecr_client();
    rt.block_on(async {
        let name = unique("limits/served");
        let step = Duration::from_secs(10);
        tokio::time::timeout(step, ecr.create_repository().repository_name(&name).send())
            .await
            .expect("CreateRepository in time")
            .unwrap();
        for _ in 0..n {
            let out = tokio::time::timeout(
                step,
                ecr.describe_repositories().repository_names(&name).send(),
            )
            .await
            .expect("DescribeRepositories in time")
            .unwrap();
            assert_eq!(out.repositories().len(), 1);
        }
    });
}

#[test]
fn hundreds_of_held_sockets_under_a_small_descriptor_limit_lock_nobody_out() {
    let server = Server::start(&[("ECR_MAX_CONNECTIONS", "64")]);
    // As if started under `ulimit -n 128`.
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", server.pid()))
        .arg("--nofile=128:128")
        .status()
        .expect("run prlimit");
    assert!(status.success());
    served(&server, 1);
    // 300 sockets: most silent, some with half a head.
    let mut held = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(addr(&server)).unwrap();
        if i % 3 == 0 {
            let _ = s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n");
        }
        held.push(s);
    }
    let started = Instant::now();
    served(&server, 20);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // And again, with those still held and more arriving.
    for _ in 0..100 {
        held.push(TcpStream::connect(addr(&server)).unwrap());
    }
    served(&server, 5);
    drop(held);
}

/// Sends a BatchGetImage of `elements` empty image ids (`{}`) in one body, declared or chunked,
/// with `Connection: close` so that the answer ends the connection; returns the answer's bytes
/// (empty if the server cut the connection first).
fn send_list(server: &Server, elements: usize, declared: bool) -> Vec<u8> {
    let prefix = br#"{"repositoryName":"app","imageIds":["#;
    let mut body = Vec::with_capacity(prefix.len() + elements * 3 + 2);
    body.extend_from_slice(prefix);
    for i in 0..elements {
        body.extend_from_slice(if i == 0 { b"{}" } else { b",{}" });
    }
    body.extend_from_slice(b"]}");
    let mut stream = TcpStream::connect(addr(server)).unwrap();
    stream
        .write_all(
            head(server, "BatchGetImage", declared.then_some(body.len()))
                .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let answer =
        std::thread::spawn(move || read_until_closed(&mut reader, Duration::from_secs(60)).0);
    // The server may answer and close before all is sent.
    let _ = if declared {
        stream.write_all(&body)
    } else {
        body.chunks(64 * 1024)
            .try_for_each(|chunk| {
                write!(stream, "{:x}\r\n", chunk.len())?;
                stream.write_all(chunk)?;
                stream.write_all(b"\r\n")
            })
            .and_then(|()| stream.write_all(b"0\r\n\r\n"))
    };
    answer.join().unwrap()
}

const LIST_31_MIB: usize = 31 * 1024 * 1024 / 3;

#[test]
fn oversized_list_bodies_stay_within_memory() {
    let server = Server::start(&[]);
    // Declared: refused from its Content-Length, unread.
    let answer = send_list(&server, LIST_31_MIB, true);
    if !answer.is_empty() {
        assert!(answer.starts_with(b"HTTP/1.1 400"));
        assert_eq!(error_type(&answer), "InvalidParameterException");
    }
    // Chunked: read until it passes the operation's cap.
    let answer = send_list(&server, LIST_31_MIB, false);
    if !answer.is_empty() {
        assert_eq!(error_type(&answer), "InvalidParameterException");
    }
    // Under the cap: decoded no further than the list's bound.
    let answer = send_list(&server, 600_000, true);
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains(
            "'imageIds' failed to satisfy constraint: 'must have length less than or equal to 100'"
        ),
        "{text}"
    );
    let one = server.peak_rss();
    eprintln!(
        "server peak RSS after one 31 MiB list body: {} MiB",
        one >> 20
    );
    assert!(one < 200 * 1024 * 1024, "peak RSS {} MiB", one >> 20);

    std::thread::scope(|scope| {
        for i in 0..4 {
            let server = &server;
            scope.spawn(move || {
                for (elements, declared) in [(LIST_31_MIB, i % 2 == 0), (600_000, true)] {
                    send_list(server, elements, declared);
                }
            });
        }
    });
    let peak = server.peak_rss();
    eprintln!("server peak RSS after four at once: {} MiB", peak >> 20);
    assert!(peak < 300 * 1024 * 1024, "peak RSS {} MiB", peak >> 20);
    served(&server, 1);
}

#[test]
fn requests_beyond_the_buffered_bytes_budget_are_told_to_retry() {
    let server = Server::start(&[
        ("ECR_MAX_BUFFERED_BYTES", "33554432"),
        ("ECR_IDLE_TIMEOUT_SECS", "20"),
    ]);
    // Holds 31 MiB of the 32 MiB budget: a part body sent all but its last byte.
    let mut holder = TcpStream::connect(addr(&server)).unwrap();
    let size = 31 * 1024 * 1024;
    holder
        .write_all(head(&server, "UploadLayerPart", Some(size + 1)).as_bytes())
        .unwrap();
    holder.write_all(&vec![b' '; size]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The next 2 MiB find no room: LimitExceededException (an SDK retries it) after a short wait.
    let mut late = TcpStream::connect(addr(&server)).unwrap();
    let body = vec![b' '; 2 * 1024 * 1024];
    late.write_all(head(&server, "UploadLayerPart", Some(body.len())).as_bytes())
        .unwrap();
    let mut writer = late.try_clone().unwrap();
    std::thread::spawn(move || writer.write_all(&body));
    let (answer, _) = read_until_closed(&mut late, Duration::from_secs(15));
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(error_type(&answer), "LimitExceededException");
    // Once the holder is gone, its room is back.
    drop(holder);
    std::thread::sleep(Duration::from_millis(500));
    served(&server, 1);
    let answer = send_list(&server, 1000, true);
    assert_eq!(error_type(&answer), "InvalidParameterException");
}

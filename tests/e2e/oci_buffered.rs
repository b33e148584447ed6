//! `/v2/` request bodies share the local server's buffered-bytes budget
//! (`ECR_MAX_BUFFERED_BYTES`) with the ECR API's: a blob chunk in flight holds room (for its
//! pieces not yet written) that an ECR part cannot take, an ECR part in flight holds room that a
//! blob chunk cannot take (429 `TOOMANYREQUESTS`), and the room comes back when the holder goes;
//! a chunk larger than the whole budget streams through it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::Server;

const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.";
const MIB: usize = 1024 * 1024;

fn addr(server: &Server) -> String {
    server.endpoint.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection or `within` passes.
fn read_answer(stream: &mut TcpStream, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends a request head (and `body`, if any) on a new connection that closes after the answer.
fn send(server: &Server, head: &str, body: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(addr(server)).unwrap();
    let head = head.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    conn
}

fn ecr_head(server: &Server, op: &str, length: usize) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: {}\r\nX-Amz-Target: {TARGET}{op}\r\n\
         Content-Type: application/x-amz-json-1.1\r\nContent-Length: {length}\r\n\r\n",
        addr(server)
    )
}

/// Starts a `/v2/` upload in repository `name`: the path its chunks go to.
fn start_upload(server: &Server, name: &str) -> String {
    let head = format!(
        "POST /v2/{name}/blobs/uploads/ HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
        addr(server)
    );
    let answer = read_answer(&mut send(server, &head, b""), Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let location = answer
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("location:")
                .then(|| l["location:".len()..].trim().to_owned())
        })
        .expect("a Location");
    location
        .strip_prefix(&server.endpoint)
        .map_or(location.clone(), str::to_owned)
}

fn patch_head(server: &Server, path: &str, length: usize) -> String {
    format!(
        "PATCH {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {length}\r\n\r\n",
        addr(server)
    )
}

#[test]
fn v2_bodies_count_in_the_buffered_bytes_budget() {
    // Parts of 20 MiB, a budget of 32 MiB. The embedded store streams a chunk once its first
    // 6 MiB (the least a direct part holds) have arrived, holding them until then.
    let server = Server::start(&[
        ("ECR_MAX_BUFFERED_BYTES", "33554432"),
        ("ECR_S3_PART_SIZE", "20971520"),
        ("ECR_IDLE_TIMEOUT_SECS", "30"),
    ]);
    let create = br#"{"repositoryName":"buffered"}"#;
    let answer = read_answer(
        &mut send(
            &server,
            &ecr_head(&server, "CreateRepository", create.len()),
            create,
        ),
        Duration::from_secs(10),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A blob chunk of which 5 MiB were sent holds them ...
    let path = start_upload(&server, "buffered");
    let holder = send(
        &server,
        &patch_head(&server, &path, 20 * MIB),
        &vec![7u8; 5 * MIB],
    );
    std::thread::sleep(Duration::from_millis(500));
    // ... so an ECR part of 28 MiB finds no room: LimitExceededException, which SDKs retry.
    let body = vec![b' '; 28 * MIB];
    let mut late = send(
        &server,
        &ecr_head(&server, "UploadLayerPart", body.len()),
        b"",
    );
    let mut writer = late.try_clone().unwrap();
    std::thread::spawn(move || writer.write_all(&body));
    let answer = read_answer(&mut late, Duration::from_secs(15));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("LimitExceededException"), "{answer}");
    drop(holder);
    std::thread::sleep(Duration::from_millis(500));

    // An ECR part body sent all but its last byte holds 31.5 MiB ...
    let size = 31 * MIB + MIB / 2;
    let holder = send(
        &server,
        &ecr_head(&server, "UploadLayerPart", size + 1),
        &vec![b' '; size],
    );
    std::thread::sleep(Duration::from_millis(500));
    // ... so a blob chunk of 2 MiB finds no room for its first 1 MiB piece: 429 TOOMANYREQUESTS, which clients retry.
    let path = start_upload(&server, "buffered");
    let chunk = vec![9u8; 2 * MIB];
    let mut late = send(&server, &patch_head(&server, &path, chunk.len()), b"");
    let mut writer = late.try_clone().unwrap();
    std::thread::spawn(move || writer.write_all(&chunk));
    let answer = read_answer(&mut late, Duration::from_secs(15));
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("TOOMANYREQUESTS"), "{answer}");
    drop(holder);
    std::thread::sleep(Duration::from_millis(500));

    // With the holders gone, the room is back: a 40 MiB blob chunk, larger than the budget,
    // streams through it.
    let path = start_upload(&server, "buffered");
    let chunk = vec![5u8; 40 * MIB];
    let mut conn = send(&server, &patch_head(&server, &path, chunk.len()), &chunk);
    let answer = read_answer(&mut conn, Duration::from_secs(30));
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let range = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("range:"))
        .unwrap_or_default()
        .to_owned();
    assert!(range.ends_with(&format!("0-{}", 40 * MIB - 1)), "{answer}");
}

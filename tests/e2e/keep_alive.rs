//! A kept-alive connection after an answer that did not need the request's body: the server
//! reads a small unread body to its end, so the connection carries the next request (a client
//! reuses it without asking); a body too large to read on gets `Connection: close`, so the
//! client knows not to reuse it. The OCI conformance suite sends `GET …/manifests/<bad digest>`
//! with a chunked body and then a `DELETE` on the same connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::Server;

fn addr(server: &Server) -> String {
    server.endpoint.trim_start_matches("http://").to_owned()
}

/// One answer read from `stream`: its status line and headers (lower-cased), its body.
fn answer(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = got[head_end..].to_vec();
    while body.len() < len {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    Some((head, body))
}

#[test]
fn a_small_body_the_answer_did_not_need_leaves_the_connection_open() {
    let server = Server::start(&[("ECR_AUTH", "none")]);
    let host = addr(&server);
    for round in 0..20 {
        let mut stream = TcpStream::connect(&host).unwrap();
        stream.set_nodelay(true).unwrap();
        // The head, then (as Go's client writes it) the chunked body in a write of its own.
        stream
            .write_all(
                format!(
                    "GET /v2/app/manifests/sha256:totallywrong HTTP/1.1\r\nHost: {host}\r\n\
                     Transfer-Encoding: chunked\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
        if round % 2 == 1 {
            std::thread::sleep(Duration::from_millis(2));
        }
        stream
            .write_all(b"10\r\n{\"not\":\"needed\"}\r\n0\r\n\r\n")
            .unwrap();
        let (head, _) = answer(&mut stream).expect("an answer");
        assert!(head.starts_with("http/1.1 404"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");

        stream
            .write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .unwrap();
        let (head, _) = answer(&mut stream)
            .unwrap_or_else(|| panic!("round {round}: the connection was closed unannounced"));
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
}

#[test]
fn a_large_unread_body_gets_connection_close() {
    let server = Server::start(&[("ECR_AUTH", "none")]);
    let host = addr(&server);
    let mut stream = TcpStream::connect(&host).unwrap();
    let body = vec![7u8; 4 * 1024 * 1024];
    stream
        .write_all(
            format!(
                "PATCH /v2/app/blobs/uploads/no-such-upload HTTP/1.1\r\nHost: {host}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    // Part of the body only: the server answers without it.
    stream.write_all(&body[..64 * 1024]).unwrap();
    let (head, body) = answer(&mut stream).expect("an answer");
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("UNKNOWN"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(head.contains("connection: close"), "{head}");
}

//! `make bench` (with benches/push.rs): the CPU cost of verifying a signed 10 MiB UploadLayerPart
//! (SigV4 recomputed, the 13.3 MiB JSON body hashed, the permission checked, for a key with and
//! without repository patterns) against the rest of the part's handling (decoding, hashing and
//! storing the part, on the in-memory backend), each the median of several runs on one thread.

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use bytes::Bytes;
use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};
use ecr_layer_upload::backends::memory_keys::MemoryKeys;
use ecr_layer_upload::ports::keys::{KeyRecord, KeyStore, Permission};
use ecr_layer_upload::protocols::auth::{Auth, now_ms};
use ecr_layer_upload::protocols::ecr::{TARGET_PREFIX, handle};
use ecr_layer_upload::service::{Service, Settings};

const MIB: usize = 1024 * 1024;
const RUNS: usize = 9;

fn request(target: &str, body: Vec<u8>, key: Option<(&str, &str)>) -> http::Request<Bytes> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/")
        .header("host", "127.0.0.1:8080")
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("{TARGET_PREFIX}{target}"))
        .body(Bytes::from(body))
        .unwrap();
    if let Some((id, secret)) = key {
        let identity: Identity = Credentials::new(id, secret, None, None, "bench").into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("ecr")
            .time(UNIX_EPOCH + Duration::from_millis(now_ms()))
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let signable = SignableRequest::new(
            "POST",
            "http://127.0.0.1:8080/",
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            SignableBody::Bytes(req.body()),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        instructions.apply_to_request_http1x(&mut req);
    }
    req
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let keys = MemoryKeys::new();
    for (id, patterns) in [
        ("AKBENCH", vec![]),
        ("AKBENCHTEAM", vec!["bench/*".to_owned()]),
    ] {
        keys.create_key(&KeyRecord {
            access_key_id: id.into(),
            secret_access_key: format!("secret-{id}"),
            name: String::new(),
            permission: Permission::Push,
            repositories: patterns,
            created_at_ms: 0,
        })
        .await
        .unwrap();
    }
    let auth = Auth::new(
        Arc::new(keys),
        "us-east-1",
        "123456789012",
        Duration::from_secs(60),
    );
    let svc = Service::new(
        MemoryMetadata::new(),
        MemoryBlobs::new(),
        Settings {
            part_size: 10 * MIB as u64,
            ..Settings::default()
        },
    );
    let create = handle(
        &svc,
        request(
            "CreateRepository",
            br#"{"repositoryName":"bench/app"}"#.to_vec(),
            None,
        ),
    )
    .await;
    assert_eq!(create.status(), 200);

    let part: Vec<u8> = (0..10 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    let blob = base64::engine::general_purpose::STANDARD.encode(&part);
    let (mut verify, mut verify_limited, mut hash_only, mut rest) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let init = handle(
            &svc,
            request(
                "InitiateLayerUpload",
                br#"{"repositoryName":"bench/app"}"#.to_vec(),
                None,
            ),
        )
        .await;
        let init: serde_json::Value = serde_json::from_slice(init.body()).unwrap();
        let upload = init["uploadId"].as_str().unwrap();
        let body = format!(
            r#"{{"repositoryName":"bench/app","uploadId":"{upload}","partFirstByte":0,"partLastByte":{},"layerPartBlob":"{blob}"}}"#,
            part.len() - 1
        )
        .into_bytes();

        for (id, out) in [
            ("AKBENCH", &mut verify),
            ("AKBENCHTEAM", &mut verify_limited),
        ] {
            let signed = request(
                "UploadLayerPart",
                body.clone(),
                Some((id, &format!("secret-{id}"))),
            );
            let started = Instant::now();
            let principal = auth.authenticate(&signed).await.expect("verified");
            auth.authorize(
                &principal,
                ecr_layer_upload::protocols::auth::Action::UploadLayerPart,
                signed.body(),
            )
            .expect("allowed");
            out.push(started.elapsed());
        }

        let started = Instant::now();
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&body);
        std::hint::black_box(digest);
        hash_only.push(started.elapsed());

        let unsigned = request("UploadLayerPart", body, None);
        let started = Instant::now();
        let resp = handle(&svc, unsigned).await;
        rest.push(started.elapsed());
        assert_eq!(resp.status(), 200, "{:?}", resp.body());
    }
    let (v, vl, h, r) = (
        median(verify),
        median(verify_limited),
        median(hash_only),
        median(rest),
    );
    println!("verifying a signed 10 MiB UploadLayerPart (13.3 MiB body), median of {RUNS}:");
    println!("| step | time | share of the part's handling |");
    println!("| --- | --- | --- |");
    println!(
        "| SigV4 verification + permission (key without patterns) | {:.1} ms | {:.0}% |",
        ms(v),
        100.0 * ms(v) / (ms(v) + ms(r))
    );
    println!(
        "| SigV4 verification + permission (key with `bench/*`) | {:.1} ms | {:.0}% |",
        ms(vl),
        100.0 * ms(vl) / (ms(vl) + ms(r))
    );
    println!("| of which: SHA-256 of the body | {:.1} ms | |", ms(h));
    println!(
        "| the rest of the part's handling (in-memory backend) | {:.1} ms | |",
        ms(r)
    );
}

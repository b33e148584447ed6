//! `make bench`: pushes layers through the real binary (release build) with aws-sdk-ecr in
//! Lambda-sized parts, and reports throughput and the server's peak RSS per layer size. Peak memory
//! must not grow with the layer: the run fails if the 1 GiB figure is more than 10% above the
//! 64 MiB one. `ECR_TEST_BACKEND=aws` measures the S3 + DynamoDB backend (servers from
//! `make services-up`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use aws_sdk_ecr::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ecr::primitives::Blob;
use common::Server;
use ecr_layer_upload::frontdoors::lambda::part_size as lambda_part_size;
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

struct Run {
    size: usize,
    part: usize,
    seconds: f64,
    peak_rss: u64,
}

async fn push_one(size: usize) -> Run {
    let part_size = lambda_part_size().to_string();
    let server = Server::start(&[
        ("ECR_PART_SIZE", part_size.as_str()),
        ("ECR_MIN_PART_SIZE", "1048576"),
    ]);
    let conf = aws_sdk_ecr::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&server.endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "bench"))
        .build();
    let ecr = aws_sdk_ecr::Client::from_conf(conf);
    let name = format!("bench/{}", &uuid::Uuid::new_v4().to_string()[..8]);
    ecr.create_repository()
        .repository_name(&name)
        .send()
        .await
        .expect("create");
    let started = Instant::now();
    let init = ecr
        .initiate_layer_upload()
        .repository_name(&name)
        .send()
        .await
        .expect("initiate");
    let id = init.upload_id().expect("upload id").to_string();
    let part = init.part_size().expect("part size") as usize;
    let mut buf = vec![0u8; part];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut hasher = Sha256::new();
    let mut sent = 0usize;
    while sent < size {
        let len = part.min(size - sent);
        for chunk in buf[..len].chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        hasher.update(&buf[..len]);
        ecr.upload_layer_part()
            .repository_name(&name)
            .upload_id(&id)
            .part_first_byte(sent as i64)
            .part_last_byte((sent + len) as i64 - 1)
            .layer_part_blob(Blob::new(&buf[..len]))
            .send()
            .await
            .expect("upload part");
        sent += len;
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    let done = ecr
        .complete_layer_upload()
        .repository_name(&name)
        .upload_id(&id)
        .layer_digests(&digest)
        .send()
        .await
        .expect("complete");
    assert_eq!(done.layer_digest(), Some(digest.as_str()));
    Run {
        size,
        part,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss: server.peak_rss(),
    }
}

#[tokio::main]
async fn main() {
    let backend = std::env::var("ECR_TEST_BACKEND").unwrap_or_else(|_| "local".into());
    let mut runs = Vec::new();
    for size in [64 * MIB, 1024 * MIB] {
        runs.push(push_one(size).await);
    }
    println!("backend: {backend}");
    println!("| layer | part size | parts | time | throughput | server peak RSS |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in &runs {
        println!(
            "| {} MiB | {} | {} | {:.1} s | {:.0} MiB/s | {:.1} MiB |",
            r.size / MIB,
            r.part,
            r.size.div_ceil(r.part),
            r.seconds,
            r.size as f64 / MIB as f64 / r.seconds,
            r.peak_rss as f64 / MIB as f64
        );
    }
    let ratio = runs[1].peak_rss as f64 / runs[0].peak_rss as f64;
    println!("peak RSS 1 GiB / 64 MiB: {ratio:.3}");
    if ratio > 1.10 {
        eprintln!("peak memory grows with layer size ({ratio:.3} > 1.10)");
        std::process::exit(1);
    }
}

//! The soak run on S3 + DynamoDB with faults injected into both clients (tests/common/soak.rs,
//! tests/common/faults.rs); `make soak` runs it, `make test` does not.

use std::sync::Arc;

use ecr_layer_upload::ports::{MetadataStore, UploadState};
use ecr_layer_upload::service::Service;

use crate::common::aws;
use crate::common::faults::{Faults, faulty_adapters};
use crate::common::service::small_parts;
use crate::common::soak::{Counts, SoakConfig, report, run, verify};
use crate::common::unique;

/// Staging objects and multipart uploads in the bucket whose upload is gone or done: left behind.
async fn orphans(meta: &impl MetadataStore, s3: &aws_sdk_s3::Client, bucket: &str) -> (u64, u64) {
    let owner_gone = |id: String| async move {
        match meta.get_upload(&id).await.unwrap() {
            None => true,
            Some(u) => u.state == UploadState::Done,
        }
    };
    let (mut files, mut bytes) = (0, 0);
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix("staging/")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for o in page.unwrap().contents() {
            let key = o.key().unwrap_or_default();
            let id = key.split('/').nth(1).unwrap_or_default().to_owned();
            if owner_gone(id).await {
                files += 1;
                bytes += o.size().unwrap_or(0) as u64;
            }
        }
    }
    let mut marker: Option<(String, String)> = None;
    loop {
        let mut req = s3.list_multipart_uploads().bucket(bucket).prefix("layers/");
        if let Some((k, u)) = &marker {
            req = req.key_marker(k).upload_id_marker(u);
        }
        let out = req.send().await.unwrap();
        for u in out.uploads() {
            let id = u
                .key()
                .unwrap_or_default()
                .trim_start_matches("layers/")
                .to_owned();
            if owner_gone(id).await {
                files += 1;
            }
        }
        match (
            out.is_truncated(),
            out.next_key_marker(),
            out.next_upload_id_marker(),
        ) {
            (Some(true), Some(k), Some(u)) => marker = Some((k.to_owned(), u.to_owned())),
            _ => break,
        }
    }
    (files, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a soak run: `make soak`"]
async fn soak_aws_with_faults() {
    let cfg = SoakConfig::from_env();
    let faults = Faults::default();
    faults.random(20);
    let (meta, blobs) = faulty_adapters(&faults).await;
    let svc = Arc::new(Service::new(meta, blobs, small_parts()));
    let counts = Arc::new(Counts::default());
    let name = unique("soak/aws");
    let layers = run(svc, &name, &cfg, counts.clone()).await;
    faults.clear();
    let (vm, vb) = aws::adapters().await;
    let bad = verify(&vm, &vb, &layers).await;
    let (bucket, _) = aws::names();
    let left = orphans(&vm, vb.client(), &bucket).await;
    println!(
        "{}",
        report("aws+faults", &counts, faults.injected(), bad, left)
    );
    assert_eq!(bad, 0, "every layer reported complete reads back whole");
    assert!(!layers.is_empty());
}

//! Faults at every step of a push on the AWS backend (tests/common/faults.rs): each SDK call of
//! InitiateLayerUpload, UploadLayerPart and CompleteLayerUpload in turn fails before it is sent,
//! or loses its answer after S3 or DynamoDB applied it. The client's retries always converge to
//! a layer whose stored bytes hash to its digest, and no success ever names other bytes.

use std::sync::Arc;

use ecr_layer_upload::domain::clock::ManualClock;
use ecr_layer_upload::service::Service;
use ecr_layer_upload::service::types::DeleteRepositoryRequest;

use crate::common::faults::{Fault, Faults, faulty_adapters, push_with_retries};
use crate::common::service::{create_repository, small_parts};
use crate::common::{aws, noise, unique};

/// One push without faults to count its calls, then one push per (call, fault).
async fn every_call_faulted(len: usize, part_size: usize, seed: u64) {
    let faults = Faults::default();
    let (meta, blobs) = faulty_adapters(&faults).await;
    // Clients back off between retries: the service's time moves on while they wait (a
    // completion whose last write failed holds its lease until it goes stale).
    let clock = Arc::new(ManualClock::starting_now());
    let svc = Service::new(meta, blobs, small_parts()).with_clock(clock.clone());
    let (vm, vb) = aws::adapters().await;
    let name = unique("aws-faults/each");
    create_repository(&svc, &name).await;

    faults.clear();
    let clean = noise(len, seed);
    let p = push_with_retries(&svc, Some(&clock), (&vm, &vb), &name, &clean, part_size, 20).await;
    assert_eq!((p.retried, p.restarts), (0, 0), "no fault, no retry");
    let calls = faults.calls();
    assert!(calls >= 8, "a push makes {calls} calls");

    let (mut retried, mut restarts, mut runs) = (0, 0, 0);
    for fault in [Fault::Fail, Fault::LoseAnswer] {
        for n in 0..calls {
            let data = noise(len, seed + 1 + runs);
            let before = faults.injected();
            faults.at(n, fault);
            let p = push_with_retries(&svc, Some(&clock), (&vm, &vb), &name, &data, part_size, 60)
                .await;
            assert_eq!(faults.injected(), before + 1, "call {n} got {fault:?}");
            retried += p.retried;
            restarts += p.restarts;
            runs += 1;
        }
    }
    faults.clear();
    eprintln!(
        "faults: {runs} pushes of {len} bytes, one fault each over {calls} calls: {retried} requests retried, {restarts} uploads started over"
    );
    assert!(retried > 0, "the faults were felt");
    svc.delete_repository(DeleteRepositoryRequest {
        force: true,
        ..DeleteRepositoryRequest::new(name.parse().unwrap())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_of_a_small_push_faulted_converges_to_a_verified_layer() {
    every_call_faulted(3000, 1024, 100).await;
}

/// Six MiB in parts of two: the third part writes an S3 multipart part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_of_a_multipart_push_faulted_converges_to_a_verified_layer() {
    every_call_faulted(6 << 20, 2 << 20, 500).await;
}

//! Parts written straight as multipart parts (`src/service/direct.rs`), on every backend of the
//! service suite (`tests/service/suite.rs` has the backends and the generator):
//! `direct_behaviours!(service_suite::service_tests!(service_direct, Backend))`.
//!
//! An ECR part of at least `s3_part_size` (or 6 MiB) with nothing staged before it is written once, as a
//! multipart part, with no staging object; racing writers of one range leave exactly one part
//! recorded, and a completion never assembles bytes other than the ones accepted.

#![allow(dead_code, unused_macros, unused_imports)]

use std::sync::Arc;

use ecr_layer_upload::domain::limits::S3_MIN_PART_SIZE;
use ecr_layer_upload::ports::{BlobStore, MetadataStore};
use ecr_layer_upload::service::{DIRECT_MIN_PART, Settings};
use futures_util::TryStreamExt;

use crate::common::service::{complete, create_repository as repo, initiate, part, small_parts};
use crate::common::{digest, noise};
use crate::service_suite::{Backend, Ctx, Svc};

const MIB: usize = 1024 * 1024;

/// Calls `$callback!($($args)* ; name, ...)` with every behaviour of this file.
macro_rules! direct_behaviours {
    ($($callback:ident)::+ ! ($($args:tt)*)) => {
        $($callback)::+! {
            $($args)* ;
            big_parts_are_written_once_as_multipart_parts,
            a_last_part_of_six_mib_is_written_once_under_larger_s3_parts,
            a_staged_prefix_then_big_parts_make_ascending_parts,
            concurrent_big_parts_for_one_range_record_exactly_the_winner,
            bytes_written_under_a_recorded_number_later_are_never_assembled
        }
    };
}
pub(crate) use direct_behaviours;

async fn open<F: Backend>() -> (Ctx<F>, Svc<F>) {
    let ctx = Ctx::<F>::open().await;
    // Multipart parts of S3's 5 MiB minimum: a 6 MiB ECR part can be one on its own.
    let svc = ctx.service(small_parts());
    assert_eq!(svc.settings().s3_part_size, S3_MIN_PART_SIZE);
    (ctx, svc)
}

async fn read_all<F: Backend>(svc: &Svc<F>, key: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = svc.blobs().read_object(key, None).await.unwrap();
    while let Some(chunk) = s.try_next().await.unwrap() {
        out.extend_from_slice(&chunk);
    }
    out
}

/// Staging objects of upload `id`, as the store lists them (or as its segment records name them).
async fn staged<F: Backend>(ctx: &Ctx<F>, svc: &Svc<F>, id: &str) -> usize {
    if let Some(listed) = ctx.backend.staging_objects(id).await {
        return listed.len();
    }
    svc.metadata().list_segments(id, 0).await.unwrap().len()
}

pub async fn big_parts_are_written_once_as_multipart_parts<F: Backend>() {
    let (ctx, svc) = open::<F>().await;
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    let layer = noise(3 * 6 * MIB + 1000, 1);
    let mut first = 0usize;
    for (i, len) in [6 * MIB, 6 * MIB, 6 * MIB].into_iter().enumerate() {
        let out = part(&svc, "app", &id, first as u64, &layer[first..first + len])
            .await
            .unwrap();
        assert_eq!(out.last_byte_received, (first + len - 1) as u64);
        first += len;
        assert_eq!(staged(&ctx, &svc, &id).await, 0, "nothing staged");
        let parts = svc.metadata().list_parts(&id).await.unwrap();
        assert_eq!(parts.len(), i + 1, "one multipart part per ECR part");
        let up = svc.metadata().get_upload(&id).await.unwrap().unwrap();
        assert_eq!(up.flushed_bytes, first as u64);
        assert_eq!(up.parts_flushed as usize, i + 1);
    }
    // The 1000-byte tail is staged and flushed at completion.
    part(&svc, "app", &id, first as u64, &layer[first..])
        .await
        .unwrap();
    assert_eq!(staged(&ctx, &svc, &id).await, 1);
    let parts = svc.metadata().list_parts(&id).await.unwrap();
    let got: Vec<(u32, u64, u64)> = parts.iter().map(|p| (p.number, p.offset, p.len)).collect();
    let m = 6 * MIB as u64;
    assert_eq!(got, vec![(1, 0, m), (2, m, m), (3, 2 * m, m)]);
    let d = digest(&layer);
    let done = complete(&svc, "app", &id, &[&d]).await.unwrap();
    assert_eq!(done.layer_digest, d);
    let record = svc
        .metadata()
        .get_layer(&svc.settings().registry_id, "app", &d)
        .await
        .unwrap()
        .expect("layer recorded");
    assert_eq!(read_all::<F>(&svc, &record.blob_key).await, layer);
    assert_eq!(staged(&ctx, &svc, &id).await, 0, "staging dropped");
}

/// With the default `s3_part_size` (8 MiB), 10 MiB ECR parts go direct, and so does a last part
/// of 6 MiB ([`DIRECT_MIN_PART`]): nothing is staged, so completion neither copies nor flushes.
/// A part of less than 6 MiB is still staged.
pub async fn a_last_part_of_six_mib_is_written_once_under_larger_s3_parts<F: Backend>() {
    let ctx = Ctx::<F>::open().await;
    let svc = ctx.service(Settings {
        min_part_size: 0,
        ..Settings::default()
    });
    assert!(svc.settings().s3_part_size > DIRECT_MIN_PART);
    repo(&svc, "app").await;
    let (ten, six) = (10 * MIB, DIRECT_MIN_PART as usize);

    // 10, 10 and 6 MiB: three multipart parts, nothing staged at any point.
    let id = initiate(&svc, "app").await;
    let layer = noise(2 * ten + six, 7);
    let mut first = 0usize;
    for len in [ten, ten, six] {
        part(&svc, "app", &id, first as u64, &layer[first..first + len])
            .await
            .unwrap();
        first += len;
        assert_eq!(staged(&ctx, &svc, &id).await, 0, "nothing staged");
    }
    let parts = svc.metadata().list_parts(&id).await.unwrap();
    let got: Vec<(u32, u64, u64)> = parts.iter().map(|p| (p.number, p.offset, p.len)).collect();
    let (t, s) = (ten as u64, six as u64);
    assert_eq!(got, vec![(1, 0, t), (2, t, t), (3, 2 * t, s)]);
    let d = digest(&layer);
    assert_eq!(
        complete(&svc, "app", &id, &[&d])
            .await
            .unwrap()
            .layer_digest,
        d
    );
    let record = svc
        .metadata()
        .get_layer(&svc.settings().registry_id, "app", &d)
        .await
        .unwrap()
        .expect("layer recorded");
    assert_eq!(read_all::<F>(&svc, &record.blob_key).await, layer);

    // One byte short of 6 MiB: staged, and flushed at completion.
    let id = initiate(&svc, "app").await;
    let layer = noise(ten + six - 1, 8);
    part(&svc, "app", &id, 0, &layer[..ten]).await.unwrap();
    part(&svc, "app", &id, ten as u64, &layer[ten..])
        .await
        .unwrap();
    assert_eq!(
        staged(&ctx, &svc, &id).await,
        1,
        "the short last part is staged"
    );
    assert_eq!(svc.metadata().list_parts(&id).await.unwrap().len(), 1);
    let d = digest(&layer);
    assert_eq!(
        complete(&svc, "app", &id, &[&d])
            .await
            .unwrap()
            .layer_digest,
        d
    );
}

pub async fn a_staged_prefix_then_big_parts_make_ascending_parts<F: Backend>() {
    let (_ctx, svc) = open::<F>().await;
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    // 1 MiB staged, then 6 MiB (staged with it: 7 MiB flushed as part 1), then two 6 MiB parts
    // straight as parts 2 and 3, then a 2 MiB tail.
    let sizes = [MIB, 6 * MIB, 6 * MIB, 6 * MIB, 2 * MIB];
    let layer = noise(sizes.iter().sum(), 2);
    let mut first = 0usize;
    for len in sizes {
        part(&svc, "app", &id, first as u64, &layer[first..first + len])
            .await
            .unwrap();
        first += len;
    }
    let parts = svc.metadata().list_parts(&id).await.unwrap();
    let got: Vec<(u32, u64, u64)> = parts.iter().map(|p| (p.number, p.offset, p.len)).collect();
    let m = MIB as u64;
    assert_eq!(
        got,
        vec![(1, 0, 7 * m), (2, 7 * m, 6 * m), (3, 13 * m, 6 * m)]
    );
    let d = digest(&layer);
    assert_eq!(
        complete(&svc, "app", &id, &[&d])
            .await
            .unwrap()
            .layer_digest,
        d
    );
}

pub async fn concurrent_big_parts_for_one_range_record_exactly_the_winner<F: Backend>() {
    let (_ctx, svc) = open::<F>().await;
    let svc = Arc::new(svc);
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    let mut tasks = Vec::new();
    for seed in 0..4u64 {
        let (svc, id) = (svc.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let bytes = noise(6 * MIB, 100 + seed);
            let out = part(&svc, "app", &id, 0, &bytes).await;
            (bytes, out)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (bytes, out) = t.await.unwrap();
        match out {
            Ok(out) => {
                assert_eq!(out.last_byte_received, 6 * MIB as u64 - 1);
                winners.push(bytes);
            }
            Err(e) => {
                // A loser is told where the upload stands (or to retry), never accepted.
                let text = e.to_string();
                assert!(
                    text.contains("First byte of the layer part")
                        || text.contains("retry the request"),
                    "unexpected answer to a losing part: {text}"
                );
            }
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of the parts for [0, 6 MiB) wins"
    );
    let winner = winners.pop().unwrap();
    let parts = svc.metadata().list_parts(&id).await.unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!((parts[0].offset, parts[0].len), (0, 6 * MIB as u64));
    let d = digest(&winner);
    assert_eq!(
        complete(&svc, "app", &id, &[&d])
            .await
            .unwrap()
            .layer_digest,
        d
    );
    let record = svc
        .metadata()
        .get_layer(&svc.settings().registry_id, "app", &d)
        .await
        .unwrap()
        .expect("layer recorded");
    assert_eq!(read_all::<F>(&svc, &record.blob_key).await, winner);
}

pub async fn bytes_written_under_a_recorded_number_later_are_never_assembled<F: Backend>() {
    let (_ctx, svc) = open::<F>().await;
    repo(&svc, "app").await;
    let id = initiate(&svc, "app").await;
    let accepted = noise(6 * MIB, 7);
    part(&svc, "app", &id, 0, &accepted).await.unwrap();
    let up = svc.metadata().get_upload(&id).await.unwrap().unwrap();
    let recorded = svc.metadata().list_parts(&id).await.unwrap();
    assert_eq!(recorded.len(), 1);
    // A writer that never won writes other bytes under the recorded part's number (the claims
    // make this impossible for the service's own writers; a stray one must still not matter).
    let other = noise(6 * MIB, 8);
    svc.blobs()
        .upload_part(
            &up.blob_key,
            &up.multipart_id,
            recorded[0].number,
            other.clone().into(),
        )
        .await
        .unwrap();
    // The stray bytes never complete the layer ...
    let stray = complete(&svc, "app", &id, &[&digest(&other)]).await;
    assert!(stray.is_err(), "a layer of bytes never accepted: {stray:?}");
    // ... and the accepted ones either do, or the completion fails loudly.
    let d = digest(&accepted);
    if let Ok(done) = complete(&svc, "app", &id, &[&d]).await {
        assert_eq!(done.layer_digest, d);
        let record = svc
            .metadata()
            .get_layer(&svc.settings().registry_id, "app", &d)
            .await
            .unwrap()
            .expect("layer recorded");
        assert_eq!(read_all::<F>(&svc, &record.blob_key).await, accepted);
    }
}

//! Nothing left behind on the AWS backend: after a run of crashed, raced, expired, abandoned and
//! deleted uploads, the expiry sweep and the collector of src/backends/aws/gc.rs (first within,
//! then past the grace period) leave in the bucket exactly the objects and multipart uploads that
//! live records own, and those read back whole. The suites share one bucket and table, so this
//! test creates a bucket and a table of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
};
use bytes::Bytes;
use ecr_layer_upload::backends::aws::{DynamoMetadata, GcLimits, S3Blobs, collect};
use ecr_layer_upload::domain::clock::ManualClock;
use ecr_layer_upload::ports::{BlobStore, MetadataStore};
use ecr_layer_upload::service::types::*;
use ecr_layer_upload::service::{Service, Settings};
use futures_util::TryStreamExt;

use crate::common::service::{complete, create_repository, initiate, part, push_blob, small_parts};
use crate::common::{REGISTRY, aws, digest, noise};

const GRACE: Duration = Duration::from_secs(3600);
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A bucket and a table of this test's own, with the layout scripts/services.sh gives the shared ones.
pub(crate) async fn own_adapters() -> (DynamoMetadata, S3Blobs) {
    aws::names(); // fails with instructions when the servers' environment is missing
    let config = aws::sdk_config().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (bucket, table) = (format!("gc-{}", &id[..12]), format!("gc-{}", &id[..12]));
    let blobs = S3Blobs::new(&config, &bucket);
    blobs
        .client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let meta = DynamoMetadata::new(&config, &table);
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    meta.client()
        .create_table()
        .table_name(&table)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    (meta, blobs)
}

/// Every object of the bucket with its size, and every multipart upload (key → ids).
pub(crate) async fn bucket_state(
    blobs: &S3Blobs,
) -> (BTreeMap<String, u64>, BTreeSet<(String, String)>) {
    let c = blobs.client();
    let mut objects = BTreeMap::new();
    let mut token = None;
    for _ in 0..100 {
        let out = c
            .list_objects_v2()
            .bucket(blobs.bucket())
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        for o in out.contents() {
            objects.insert(
                o.key().unwrap().to_owned(),
                o.size().unwrap_or(0).try_into().unwrap(),
            );
        }
        token = out.next_continuation_token().map(str::to_owned);
        if out.is_truncated() != Some(true) {
            break;
        }
    }
    let out = c
        .list_multipart_uploads()
        .bucket(blobs.bucket())
        .send()
        .await
        .unwrap();
    assert_ne!(out.is_truncated(), Some(true));
    let uploads = out
        .uploads()
        .iter()
        .map(|u| {
            (
                u.key().unwrap().to_owned(),
                u.upload_id().unwrap().to_owned(),
            )
        })
        .collect();
    (objects, uploads)
}

async fn push_image<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &str,
    layer: &[u8],
) -> (String, String) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let c = push_blob(svc, name, config).await;
    let l = push_blob(svc, name, layer).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    svc.put_image(PutImageRequest {
        image_tag: Some("v1".parse().unwrap()),
        ..PutImageRequest::new(name.parse().unwrap(), manifest)
    })
    .await
    .unwrap();
    (c, l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_live_objects_remain_in_the_bucket_after_cuts_crashes_races_and_deletions() {
    let (meta, blobs) = own_adapters().await;
    let clock = Arc::new(ManualClock::starting_now());
    let settings = Settings {
        upload_ttl_secs: 600,
        ..small_parts()
    };
    let svc =
        Arc::new(Service::new(meta.clone(), blobs.clone(), settings).with_clock(clock.clone()));

    // Live: an image over a layer, a layer no image references yet, and an open upload with a
    // part staged (after two writers raced for it).
    create_repository(&*svc, "keep").await;
    let (config_digest, layer_digest) = push_image(&*svc, "keep", &noise(7000, 1)).await;
    // Pushed late enough to be within the grace period at the collection below: a push in
    // flight, which an image may reference any moment (an older unreferenced layer would be
    // collected, tests/aws/layer_gc.rs).
    clock.advance_secs(GRACE.as_secs());
    let pending_digest = push_blob(&*svc, "keep", &noise(3000, 2)).await;
    // Abandoned: an upload with a part staged whose client went away; it expires and the
    // expiry sweep ends it.
    let abandoned = initiate(&*svc, "keep").await;
    part(&*svc, "keep", &abandoned, 0, &noise(2500, 6))
        .await
        .unwrap();
    clock.advance_secs(601);
    assert!(svc.sweep_expired(100).await.unwrap() >= 1);
    assert_eq!(svc.metadata().get_upload(&abandoned).await.unwrap(), None);
    // Expired without a sweep: DynamoDB's TTL removed the records, its multipart upload and
    // staged part stay in the bucket.
    let expired = initiate(&*svc, "keep").await;
    part(&*svc, "keep", &expired, 0, &noise(2600, 7))
        .await
        .unwrap();
    meta.delete_upload(&expired).await.unwrap();

    let open = initiate(&*svc, "keep").await;
    let (a, b) = (noise(1500, 3), noise(1500, 4));
    let racers = [a.clone(), b.clone()].map(|bytes| {
        let (svc, open) = (svc.clone(), open.clone());
        tokio::spawn(async move { part(&*svc, "keep", &open, 0, &bytes).await.is_ok() })
    });
    let mut won = 0;
    for r in racers {
        won += usize::from(r.await.unwrap());
    }
    assert_eq!(won, 1, "exactly one of two racing parts is accepted");

    // Deleted: a repository with an image, deleted with force, and an upload still open in it.
    create_repository(&*svc, "gone").await;
    push_image(&*svc, "gone", &noise(9000, 5)).await;
    let cut = initiate(&*svc, "gone").await;
    part(&*svc, "gone", &cut, 0, &noise(2700, 8)).await.unwrap();
    svc.delete_repository(DeleteRepositoryRequest {
        force: true,
        ..DeleteRepositoryRequest::new("gone".parse().unwrap())
    })
    .await
    .unwrap();

    // Crashed: a multipart upload whose Initiate was cut before its record (with a part in it),
    // the staging object of a part whose record was never written, and one of no upload.
    let ghost = blobs.create_multipart("layers/ghost").await.unwrap();
    blobs
        .upload_part("layers/ghost", &ghost, 1, Bytes::from(vec![7u8; 1200]))
        .await
        .unwrap();
    blobs
        .put_object(
            &format!("staging/{open}/00000000000000001500-deadbeefdeadbeef"),
            Bytes::from(vec![7u8; 1400]),
        )
        .await
        .unwrap();
    blobs
        .put_object(
            "staging/no-such-upload/00000000000000000000-deadbeefdeadbeef",
            Bytes::from(vec![7u8; 1500]),
        )
        .await
        .unwrap();

    // Within the grace period nothing goes: any of it could be a request in flight.
    let (objects_before, uploads_before) = bucket_state(&blobs).await;
    let gc_clock = ManualClock::starting_now();
    let limits = GcLimits::default();
    let first = collect(&meta, &blobs, GRACE, &gc_clock, limits)
        .await
        .unwrap();
    assert!(first.complete, "{first:?}");
    assert_eq!(
        (first.objects, first.multipart_aborted),
        (0, 0),
        "{first:?}"
    );
    assert_eq!(
        bucket_state(&blobs).await,
        (objects_before.clone(), uploads_before.clone())
    );

    // Past the grace period what no record owns goes.
    gc_clock.advance_secs(GRACE.as_secs() + 1);
    let second = collect(&meta, &blobs, GRACE, &gc_clock, limits)
        .await
        .unwrap();
    assert!(second.complete, "{second:?}");
    let (objects_after, uploads_after) = bucket_state(&blobs).await;

    // What is left is exactly what live records own.
    let m = svc.metadata();
    let mut owned = BTreeMap::new();
    for d in [&config_digest, &layer_digest, &pending_digest] {
        let l = m.get_layer(REGISTRY, "keep", d).await.unwrap().unwrap();
        owned.insert(l.blob_key, l.size);
    }
    let segments = m.list_segments(&open, 0).await.unwrap();
    assert_eq!(segments.len(), 1);
    owned.insert(segments[0].key.clone(), segments[0].len);
    let up = m.get_upload(&open).await.unwrap().unwrap();
    assert_eq!(objects_after, owned, "only live objects remain");
    assert_eq!(
        uploads_after,
        BTreeSet::from([(up.blob_key.clone(), up.multipart_id.clone())]),
        "only the open upload's multipart upload remains"
    );
    let removed_bytes: u64 =
        objects_before.values().sum::<u64>() - objects_after.values().sum::<u64>();
    assert_eq!(second.bytes, removed_bytes, "{second:?}");
    assert_eq!(
        second.objects as usize,
        objects_before.len() - objects_after.len()
    );
    assert_eq!(
        second.multipart_aborted as usize,
        uploads_before.len() - uploads_after.len()
    );
    assert!(
        second.objects >= 5 && second.multipart_aborted >= 2,
        "{second:?}"
    );
    eprintln!(
        "gc: before {} objects / {} bytes / {} multipart uploads; after {} / {} / {}",
        objects_before.len(),
        objects_before.values().sum::<u64>(),
        uploads_before.len(),
        objects_after.len(),
        objects_after.values().sum::<u64>(),
        uploads_after.len()
    );

    // Nothing more goes on a later run.
    let third = collect(&meta, &blobs, GRACE, &gc_clock, limits)
        .await
        .unwrap();
    assert_eq!((third.objects, third.multipart_aborted), (0, 0));

    // The live data is whole: the image's layer reads back, the open upload completes with the
    // part that won.
    let layer = m
        .get_layer(REGISTRY, "keep", &layer_digest)
        .await
        .unwrap()
        .unwrap();
    let read: Vec<Bytes> = blobs
        .read_object(&layer.blob_key, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(digest(&read.concat()), layer_digest);
    let staged = if digest(&a) == digest(&blobs.get_object(&segments[0].key).await.unwrap()) {
        a
    } else {
        b
    };
    let done = complete(&*svc, "keep", &open, &[&digest(&staged)])
        .await
        .unwrap();
    assert_eq!(done.layer_digest, digest(&staged));
}

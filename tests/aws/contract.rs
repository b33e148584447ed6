//! The port contract (`tests/contract/suite.rs`) against the AWS backend, on the local S3
//! (SeaweedFS) and DynamoDB (dynoxide) servers of `scripts/services.sh`, plus what only the AWS
//! backend has: the S3 multipart state itself, CompleteMultipartUpload's error mapping (including
//! S3's "200 with an error body"), the DynamoDB items' TTL attribute, batch and transaction
//! limits, item sizes and query pages of image records, tags under concurrent writers, presigned
//! URLs fetched by a plain HTTP client.
//!
//! Run with `make test-aws-contract` (starts the servers and exports their environment).

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use bytes::Bytes;
use ecr_layer_upload::backends::aws::{DynamoMetadata, S3Blobs};
use ecr_layer_upload::domain::error::{StoreError, chain};
use ecr_layer_upload::domain::manifest::MAX_REFERENCES;
use ecr_layer_upload::ports::{
    BlobStore, Finish, FlushedPart, ImageRecord, LayerRecord, MetadataStore, PutImageOutcome,
    SideWrite, StagedSegment, UploadRecord, UploadState,
};
use ecr_layer_upload::service::INLINE_MANIFEST_MAX;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::{aws, http_get, http_request, open_upload};
use crate::suite::{self, blob_key, flushed};

const MIN_PART: usize = suite::MIN_PART;

async fn aws_metadata() -> (DynamoMetadata, ()) {
    (aws::metadata().await, ())
}

async fn aws_blobs() -> (S3Blobs, ()) {
    (aws::blobs().await, ())
}

mod aws_metadata {
    use crate::suite;
    suite::metadata_behaviours!(suite::metadata_tests!(super::aws_metadata));
}

/// The suite's blob behaviours run here, all but [`BLOB_EXCEPTIONS`].
mod aws_blobs {
    use crate::suite;
    suite::blob_tests!(super::aws_blobs ;
        put_get_replace_delete_object,
        missing_object_is_not_found,
        delete_objects_ignores_absent_keys,
        read_object_streams_whole_object_and_ranges,
        multipart_assembles_parts_in_order,
        complete_multipart_retried_after_success_succeeds,
        abort_multipart_drops_the_upload,
        download_url_names_the_key
    );
}

/// Suite behaviours that encode an S3 trait the local S3 server lacks, each with a replacement
/// below. `complete_multipart_with_stale_etag_conflicts` expects a replaced part's old ETag to
/// be refused, as S3 does (a part number holds one part). SeaweedFS 4.48 keeps every upload of
/// a part number and assembles the one the ETag names, so the old ETag completes, with exactly
/// the bytes it names. The property the service relies on (never assemble bytes other than the
/// recorded ones) holds on both: `a_stale_etag_never_assembles_other_bytes` checks that.
const BLOB_EXCEPTIONS: &[&str] = &["complete_multipart_with_stale_etag_conflicts"];

macro_rules! behaviour_names {
    ( ; $($name:ident),* $(,)?) => {
        &[$(stringify!($name)),*]
    };
}

#[test]
fn every_suite_blob_behaviour_runs_or_is_a_listed_exception() {
    let all: &[&str] = suite::blob_behaviours!(behaviour_names!());
    let run: &[&str] = &[
        "put_get_replace_delete_object",
        "missing_object_is_not_found",
        "delete_objects_ignores_absent_keys",
        "read_object_streams_whole_object_and_ranges",
        "multipart_assembles_parts_in_order",
        "complete_multipart_retried_after_success_succeeds",
        "abort_multipart_drops_the_upload",
        "download_url_names_the_key",
    ];
    for name in all {
        assert!(
            run.contains(name) != BLOB_EXCEPTIONS.contains(name),
            "suite behaviour {name} must be run by mod aws_blobs or listed in BLOB_EXCEPTIONS"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn upload() -> UploadRecord {
    let id = uuid::Uuid::new_v4().to_string();
    UploadRecord {
        multipart_id: "mp".into(),
        ..open_upload(&id, "contract-aws/app")
    }
}

fn next(u: &UploadRecord) -> UploadRecord {
    UploadRecord {
        next_byte: u.next_byte + 1,
        version: u.version + 1,
        ..u.clone()
    }
}

fn number(v: Option<&AttributeValue>) -> Option<u64> {
    v.and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// S3.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_parts_shows_the_parts_written() {
    let (b, ()) = aws_blobs().await;
    let key = blob_key("uploads");
    let id = b.create_multipart(&key).await.unwrap();
    let e1 = b
        .upload_part(&key, &id, 1, suite::pattern(1, MIN_PART))
        .await
        .unwrap();
    let e2 = b
        .upload_part(&key, &id, 2, suite::pattern(2, 777))
        .await
        .unwrap();

    let listed = b
        .client()
        .list_parts()
        .bucket(b.bucket())
        .key(&key)
        .upload_id(&id)
        .send()
        .await
        .expect("ListParts");
    let parts: Vec<(Option<i32>, Option<&str>, Option<i64>)> = listed
        .parts()
        .iter()
        .map(|p| (p.part_number(), p.e_tag(), p.size()))
        .collect();
    assert_eq!(
        parts,
        [
            (Some(1), Some(e1.as_str()), Some(MIN_PART as i64)),
            (Some(2), Some(e2.as_str()), Some(777)),
        ]
    );

    b.abort_multipart(&key, &id).await.unwrap();
    let after = b
        .client()
        .list_parts()
        .bucket(b.bucket())
        .key(&key)
        .upload_id(&id)
        .send()
        .await;
    assert!(after.is_err(), "an aborted upload has no parts to list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_with_a_wrong_etag_conflicts() {
    let (b, ()) = aws_blobs().await;
    let key = blob_key("uploads");
    let id = b.create_multipart(&key).await.unwrap();
    let data = suite::pattern(3, 100);
    let etag = b.upload_part(&key, &id, 1, data.clone()).await.unwrap();

    let wrong = "\"0123456789abcdef0123456789abcdef\"".to_owned();
    let res = b
        .complete_multipart(&key, &id, &[flushed(1, wrong, 0, data.len())])
        .await;
    assert!(matches!(res, Err(StoreError::Conflict)), "{res:?}");
    assert_eq!(b.object_size(&key).await.unwrap(), None);

    // A completion of an aborted upload, with no object behind it, is no success either.
    b.abort_multipart(&key, &id).await.unwrap();
    let res = b
        .complete_multipart(&key, &id, &[flushed(1, etag, 0, data.len())])
        .await;
    assert!(matches!(res, Err(StoreError::Conflict)), "{res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_of_a_gone_upload_succeeds_only_over_an_object_of_its_size() {
    let (b, ()) = aws_blobs().await;
    let key = blob_key("uploads");
    let id = b.create_multipart(&key).await.unwrap();
    let data = suite::pattern(4, 300);
    let etag = b.upload_part(&key, &id, 1, data.clone()).await.unwrap();
    b.complete_multipart(&key, &id, &[flushed(1, etag.clone(), 0, 300)])
        .await
        .unwrap();
    // S3 answers NoSuchUpload to a completion retried after its upload was completed (some
    // servers answer success again); an unknown id gets NoSuchUpload everywhere.
    let gone = format!("gone-{}", uuid::Uuid::new_v4().simple());
    b.complete_multipart(&key, &gone, &[flushed(1, etag.clone(), 0, 300)])
        .await
        .expect("the object is there with the parts' size: a retry after success");
    let res = b
        .complete_multipart(&key, &gone, &[flushed(1, etag.clone(), 0, 301)])
        .await;
    assert!(matches!(res, Err(StoreError::Conflict)), "{res:?}");
    let res = b
        .complete_multipart(&blob_key("absent"), &gone, &[flushed(1, etag, 0, 300)])
        .await;
    assert!(matches!(res, Err(StoreError::Conflict)), "{res:?}");
    b.delete_objects(&[key]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_etag_never_assembles_other_bytes() {
    let (b, ()) = aws_blobs().await;
    let key = blob_key("uploads");
    let id = b.create_multipart(&key).await.unwrap();
    let stale_data = suite::pattern(6, MIN_PART);
    let stale = b
        .upload_part(&key, &id, 1, stale_data.clone())
        .await
        .unwrap();
    let fresh_data = suite::pattern(7, MIN_PART);
    let fresh = b
        .upload_part(&key, &id, 1, fresh_data.clone())
        .await
        .unwrap();
    let tail = suite::pattern(8, 10);
    let e2 = b.upload_part(&key, &id, 2, tail.clone()).await.unwrap();

    // A part that was never uploaded conflicts everywhere.
    let missing = [
        flushed(1, fresh.clone(), 0, MIN_PART),
        flushed(3, e2.clone(), MIN_PART as u64, 10),
    ];
    let res = b.complete_multipart(&key, &id, &missing).await;
    assert!(matches!(res, Err(StoreError::Conflict)), "{res:?}");

    let with_stale = [
        flushed(1, stale, 0, MIN_PART),
        flushed(2, e2.clone(), MIN_PART as u64, 10),
    ];
    match b.complete_multipart(&key, &id, &with_stale).await {
        // S3: the replaced part is gone. The upload still completes with the current ETags.
        Err(StoreError::Conflict) => {
            assert_eq!(b.object_size(&key).await.unwrap(), None);
            let good = [
                flushed(1, fresh, 0, MIN_PART),
                flushed(2, e2, MIN_PART as u64, 10),
            ];
            b.complete_multipart(&key, &id, &good).await.unwrap();
            let got = b.get_object(&key).await.unwrap();
            assert!(got[..MIN_PART] == fresh_data[..] && got[MIN_PART..] == tail[..]);
        }
        // A server that keeps both: the assembled bytes are exactly those the ETags name.
        Ok(()) => {
            let got = b.get_object(&key).await.unwrap();
            assert!(
                got.len() == MIN_PART + 10
                    && got[..MIN_PART] == stale_data[..]
                    && got[MIN_PART..] == tail[..],
                "a completion assembles the bytes of the recorded ETags, never others"
            );
        }
        Err(e) => panic!("{e:?}"),
    }
    b.delete_objects(&[key]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_objects_spans_batches_of_1000() {
    let (b, ()) = aws_blobs().await;
    let keys: Vec<String> = (0..1001).map(|_| blob_key("batch")).collect();
    // The first and the last key fall into different DeleteObjects requests.
    for k in [&keys[0], &keys[1000]] {
        b.put_object(k, Bytes::from_static(b"x")).await.unwrap();
    }
    b.delete_objects(&keys).await.unwrap();
    assert_eq!(b.object_size(&keys[0]).await.unwrap(), None);
    assert_eq!(b.object_size(&keys[1000]).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_get_serves_the_object_and_is_bounded() {
    let (b, ()) = aws_blobs().await;
    let key = blob_key("layer");
    let data = suite::pattern(5, 4096);
    b.put_object(&key, data.clone()).await.unwrap();

    let url = b.presign_get(&key, Duration::from_secs(600)).await.unwrap();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(url.contains("X-Amz-Expires=600"), "{url}");
    let (status, body) = http_get(&url).await;
    assert_eq!(status, 200);
    assert!(body == data[..], "the presigned GET returns the object");

    // A tampered signature is refused: the server does check it.
    let tampered = url.replace("X-Amz-Expires=600", "X-Amz-Expires=601");
    let (status, _) = http_get(&tampered).await;
    assert_eq!(status, 403);

    for bad in [Duration::ZERO, Duration::from_secs(3601)] {
        assert!(b.presign_get(&key, bad).await.is_err(), "{bad:?}");
    }
    b.delete_objects(&[key]).await.unwrap();
}

/// What a client does with a GetDownloadUrlForLayer answer: a plain GET, whole or in ranges,
/// with no AWS credentials of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_url_serves_whole_and_ranges_until_it_expires() {
    let (b, ()) = aws_blobs().await;
    let key = format!("layers/{}", uuid::Uuid::new_v4());
    let data = suite::pattern(9, MIN_PART + 1_048_593);
    // Layers are multipart objects: a part of at least 5 MiB and a tail.
    let id = b.create_multipart(&key).await.unwrap();
    let e1 = b
        .upload_part(&key, &id, 1, data.slice(..MIN_PART))
        .await
        .unwrap();
    let e2 = b
        .upload_part(&key, &id, 2, data.slice(MIN_PART..))
        .await
        .unwrap();
    let parts = [
        flushed(1, e1, 0, MIN_PART),
        flushed(2, e2, MIN_PART as u64, data.len() - MIN_PART),
    ];
    b.complete_multipart(&key, &id, &parts).await.unwrap();

    let url = b.download_url(&key, 3600).await.unwrap();
    assert!(url.contains("X-Amz-Expires=3600"), "{url}");
    let (status, head, body) = http_request(&url, &[]).await;
    assert_eq!(status, 200, "{head}");
    assert!(body == data[..], "the whole layer");

    let (status, head, body) = http_request(&url, &[("Range", "bytes=5242870-6291460")]).await;
    assert_eq!(status, 206, "{head}");
    assert!(
        body == data[5_242_870..=6_291_460],
        "exactly the range asked for"
    );
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "content-range: bytes 5242870-6291460/{}",
            data.len()
        )),
        "{head}"
    );
    let (status, _, body) = http_request(&url, &[("Range", "bytes=-10")]).await;
    assert_eq!(status, 206);
    assert!(body == data[data.len() - 10..], "a suffix range");

    // More than an hour is refused, as ECR's own URLs last an hour.
    assert!(b.download_url(&key, 3601).await.is_err());

    // And not after: a URL whose validity has passed is refused by S3.
    let short = b.download_url(&key, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, head, _) = http_request(&short, &[]).await;
    assert_eq!(status, 403, "{head}");
    b.delete_objects(&[key]).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// S3's "200 OK with an error body" on CompleteMultipartUpload, from a stand-in server: real S3
// does this when the assembly fails after the response has started, and no local server can be
// made to do it on demand.

/// Answers every request with `200 OK` and `body`; returns its endpoint.
async fn serve_200_with(body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head and its body (Content-Length), then answer.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

async fn blobs_at(endpoint: &str) -> S3Blobs {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "stand-in", "stand-in", None, None, "test",
        ))
        // One attempt: the SDK would retry an InternalError, with the same answer.
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .load()
        .await;
    S3Blobs::new(&config, "bucket")
}

const ERROR_200_INTERNAL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\
    <Code>InternalError</Code><Message>We encountered an internal error. Please try again.\
    </Message><RequestId>656c76696e6727732072657175657374</RequestId>\
    <HostId>Uuag1LuByRx9e6j5Onimru9pO4ZVKnJ2Qz7/C1NPcfTWAtRPfTaOFg==</HostId></Error>";

const ERROR_200_INVALID_PART: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\
    <Code>InvalidPart</Code><Message>One or more of the specified parts could not be found.\
    </Message><RequestId>656c76696e6727732072657175657374</RequestId></Error>";

const COMPLETE_OK: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
    <Location>http://127.0.0.1/bucket/k</Location><Bucket>bucket</Bucket><Key>k</Key>\
    <ETag>\"3858f62230ac3c915f300c664312c11f-1\"</ETag></CompleteMultipartUploadResult>";

fn one_part() -> [FlushedPart; 1] {
    [flushed(1, "\"etag\"".into(), 0, 10)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_answered_200_with_internal_error_is_a_backend_failure() {
    let b = blobs_at(&serve_200_with(ERROR_200_INTERNAL).await).await;
    let res = b.complete_multipart("k", "mp", &one_part()).await;
    match res {
        Err(e @ StoreError::Backend { .. }) => {
            let msg = chain(&e).to_string();
            assert!(msg.contains("InternalError"), "{msg}");
        }
        other => panic!("a 200 with an error body is no success: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_answered_200_with_invalid_part_conflicts() {
    let b = blobs_at(&serve_200_with(ERROR_200_INVALID_PART).await).await;
    let res = b.complete_multipart("k", "mp", &one_part()).await;
    assert!(matches!(res, Err(StoreError::Conflict)), "{res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_answered_200_with_a_result_succeeds() {
    // The stand-in itself is sound: a real result body is a success.
    let b = blobs_at(&serve_200_with(COMPLETE_OK).await).await;
    b.complete_multipart("k", "mp", &one_part()).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// DynamoDB.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_carry_expires_at_for_ttl() {
    let (m, ()) = aws_metadata().await;
    let u = upload();
    m.create_upload(&u).await.unwrap();
    let v2 = UploadRecord {
        expires_at: u.expires_at + 100,
        ..next(&u)
    };
    let seg = StagedSegment {
        offset: 0,
        len: 1,
        key: format!("staging/{}/0", u.upload_id),
    };
    m.update_upload(&v2, SideWrite::Segment(seg)).await.unwrap();

    let pk = AttributeValue::S(format!("UPLOAD#{}", u.upload_id));
    let item = |sk: &str| {
        m.client()
            .get_item()
            .table_name(m.table())
            .key("pk", pk.clone())
            .key("sk", AttributeValue::S(sk.to_owned()))
            .consistent_read(true)
            .send()
    };
    let up = item("UPLOAD").await.unwrap().item.expect("the upload item");
    assert_eq!(number(up.get("expiresAt")), Some(v2.expires_at));
    assert_eq!(number(up.get("version")), Some(v2.version));
    let seg = item(&format!("SEG#{:020}", 0))
        .await
        .unwrap()
        .item
        .expect("the segment item");
    let seg_ttl = number(seg.get("expiresAt")).expect("segment items carry expiresAt");
    assert!(
        seg_ttl >= v2.expires_at,
        "a segment outlives its upload's expiry"
    );
    m.delete_upload(&u.upload_id).await.unwrap();

    // The table has TTL on that attribute (scripts/services.sh sets it up as template.yaml does).
    let ttl = m
        .client()
        .describe_time_to_live()
        .table_name(m.table())
        .send()
        .await
        .unwrap();
    let desc = ttl.time_to_live_description().expect("a TTL description");
    assert_eq!(desc.attribute_name(), Some("expiresAt"));
    assert!(matches!(
        desc.time_to_live_status(),
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_upload_spans_batches_of_25() {
    let (m, ()) = aws_metadata().await;
    let u = upload();
    m.create_upload(&u).await.unwrap();
    let mut cur = u.clone();
    for i in 0..40u64 {
        let v = next(&cur);
        let side = if i % 2 == 0 {
            SideWrite::Segment(StagedSegment {
                offset: i,
                len: 1,
                key: format!("staging/{}/{i}", u.upload_id),
            })
        } else {
            SideWrite::Part(FlushedPart {
                number: u32::try_from(i).unwrap() + 1,
                etag: format!("\"{i}\""),
                offset: i,
                len: 1,
            })
        };
        m.update_upload(&v, side).await.unwrap();
        cur = v;
    }
    assert_eq!(m.list_segments(&u.upload_id, 0).await.unwrap().len(), 20);
    assert_eq!(m.list_parts(&u.upload_id).await.unwrap().len(), 20);
    let offsets: Vec<u64> = (0..40).step_by(2).collect();
    m.delete_segments(&u.upload_id, &offsets).await.unwrap();
    assert!(m.list_segments(&u.upload_id, 0).await.unwrap().is_empty());

    m.delete_upload(&u.upload_id).await.unwrap();
    assert_eq!(m.get_upload(&u.upload_id).await.unwrap(), None);
    assert!(m.list_parts(&u.upload_id).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_of_the_same_record_is_not_already_exists() {
    // What an SDK retry after a lost answer looks like to the store: the same put again.
    let (m, ()) = aws_metadata().await;
    let u = upload();
    m.create_upload(&u).await.unwrap();
    m.create_upload(&u).await.unwrap();
    let other = UploadRecord {
        next_byte: 1,
        ..u.clone()
    };
    assert!(matches!(
        m.create_upload(&other).await,
        Err(StoreError::AlreadyExists)
    ));
    // Likewise a conditional update that already went through.
    let v2 = next(&u);
    m.update_upload(&v2, SideWrite::None).await.unwrap();
    m.update_upload(&v2, SideWrite::None).await.unwrap();
    let different = UploadRecord {
        next_byte: 99,
        ..v2.clone()
    };
    assert!(matches!(
        m.update_upload(&different, SideWrite::None).await,
        Err(StoreError::Conflict)
    ));
    m.delete_upload(&u.upload_id).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Images and tags on DynamoDB: the conditions of the single-table model, its limits (item size,
// transaction size, query pages) and its behaviour under concurrent writers.

const REGISTRY: &str = "123456789012";

/// A repository name of its own, so that listings see only this test's records.
fn repo_name() -> String {
    format!("contract-aws/img-{}", uuid::Uuid::new_v4().simple())
}

fn fake_digest(seed: &str) -> String {
    crate::common::digest(seed.as_bytes())
}

fn image(repo: &str, seed: &str, manifest: String) -> ImageRecord {
    ImageRecord {
        registry_id: REGISTRY.into(),
        repository: repo.into(),
        digest: fake_digest(seed),
        manifest: Some(manifest),
        manifest_key: None,
        media_type: ecr_layer_upload::domain::model::ManifestMediaType::OciManifest,
        artifact_media_type: Some("application/vnd.oci.image.config.v1+json".into()),
        size: 1234,
        pushed_at_ms: 1_700_000_000_000,
        blobs: vec![fake_digest(&format!("{seed}-config"))],
        manifests: Vec::new(),
        subject: None,
    }
}

fn small_image(repo: &str, seed: &str) -> ImageRecord {
    image(
        repo,
        seed,
        format!("{{\"schemaVersion\":2,\"seed\":\"{seed}\"}}"),
    )
}

/// The largest record the service hands over: a manifest of the most it keeps inline
/// (`INLINE_MANIFEST_MAX`) referencing the most blobs it accepts (`MAX_REFERENCES`), padded with
/// quotes, which a JSON string would have to escape.
fn largest_inline_image(repo: &str, seed: &str) -> ImageRecord {
    let mut img = image(repo, seed, String::new());
    img.blobs.clear();
    let mut text = String::from("{\"schemaVersion\":2,\"layers\":[");
    for i in 0..MAX_REFERENCES {
        let d = fake_digest(&format!("{seed}-{i}"));
        text.push_str(&format!("{{\"digest\":\"{d}\",\"size\":1}},"));
        img.blobs.push(d);
    }
    text.push_str("\"\"");
    while text.len() < INLINE_MANIFEST_MAX - 10 {
        text.push_str(",\"\"");
    }
    text.push_str("]}");
    assert!(text.len() <= INLINE_MANIFEST_MAX);
    img.manifest = Some(text);
    img
}

async fn tag_of(m: &DynamoMetadata, repo: &str, tag: &str) -> Option<String> {
    m.get_tag(REGISTRY, repo, tag)
        .await
        .unwrap()
        .map(|t| t.digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_image_is_stored_once() {
    let (m, ()) = aws_metadata().await;
    let repo = repo_name();
    let img = small_image(&repo, "a");
    assert_eq!(
        m.put_image(&img, None, false).await.unwrap(),
        PutImageOutcome::Stored
    );
    assert_eq!(
        m.put_image(&img, None, true).await.unwrap(),
        PutImageOutcome::AlreadyExists
    );
    let later = ImageRecord {
        pushed_at_ms: img.pushed_at_ms + 5,
        ..img.clone()
    };
    assert_eq!(
        m.put_image(&later, None, false).await.unwrap(),
        PutImageOutcome::AlreadyExists
    );
    assert_eq!(
        m.get_image(REGISTRY, &repo, &img.digest).await.unwrap(),
        Some(img.clone())
    );
    assert_eq!(
        m.get_image(REGISTRY, &repo, &fake_digest("none"))
            .await
            .unwrap(),
        None
    );
    assert!(m.delete_repository(REGISTRY, &repo).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_move_unless_immutable_and_never_overwrite_the_image() {
    let (m, ()) = aws_metadata().await;
    let repo = repo_name();
    let a = small_image(&repo, "a");
    let b = small_image(&repo, "b");
    let put = |img: &ImageRecord, tag: &'static str, immutable: bool| {
        let (m, img) = (m.clone(), img.clone());
        async move { m.put_image(&img, Some(tag), immutable).await.unwrap() }
    };
    assert_eq!(put(&a, "v1", false).await, PutImageOutcome::Stored);
    assert_eq!(put(&a, "v1", false).await, PutImageOutcome::AlreadyExists);
    assert_eq!(put(&a, "v1", true).await, PutImageOutcome::AlreadyExists);
    // A second tag on an existing image: the record stays the one first pushed.
    let a_later = ImageRecord {
        pushed_at_ms: a.pushed_at_ms + 1000,
        ..a.clone()
    };
    assert_eq!(put(&a_later, "v2", false).await, PutImageOutcome::Stored);
    assert_eq!(
        m.get_image(REGISTRY, &repo, &a.digest).await.unwrap(),
        Some(a.clone()),
        "an existing image item is never overwritten"
    );
    let v2 = m.get_tag(REGISTRY, &repo, "v2").await.unwrap().unwrap();
    assert_eq!(v2.updated_at_ms, a_later.pushed_at_ms);

    // Immutable: the stored digest comes back, nothing is written (b is not created).
    assert_eq!(
        put(&b, "v1", true).await,
        PutImageOutcome::TagImmutable {
            digest: a.digest.clone()
        }
    );
    assert_eq!(m.get_image(REGISTRY, &repo, &b.digest).await.unwrap(), None);
    assert_eq!(tag_of(&m, &repo, "v1").await, Some(a.digest.clone()));
    // Immutable tags still allow a new tag.
    assert_eq!(put(&b, "v3", true).await, PutImageOutcome::Stored);
    assert_eq!(
        put(&a, "v3", true).await,
        PutImageOutcome::TagImmutable {
            digest: b.digest.clone()
        }
    );

    // Mutable: the tag moves.
    assert_eq!(put(&b, "v1", false).await, PutImageOutcome::Stored);
    assert_eq!(tag_of(&m, &repo, "v1").await, Some(b.digest.clone()));
    assert_eq!(put(&b, "v1", false).await, PutImageOutcome::AlreadyExists);

    let tags: Vec<(String, String)> = m
        .list_tags(REGISTRY, &repo)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.tag, t.digest))
        .collect();
    assert_eq!(
        tags,
        [
            ("v1".into(), b.digest.clone()),
            ("v2".into(), a.digest.clone()),
            ("v3".into(), b.digest.clone()),
        ]
    );
    let mut digests = vec![a.digest.clone(), b.digest.clone()];
    digests.sort();
    let listed: Vec<String> = m
        .list_images(REGISTRY, &repo)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect();
    assert_eq!(listed, digests);
    assert!(m.delete_repository(REGISTRY, &repo).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tag_only_while_it_names_the_digest() {
    let (m, ()) = aws_metadata().await;
    let repo = repo_name();
    let a = small_image(&repo, "a");
    m.put_image(&a, Some("t"), false).await.unwrap();
    assert!(
        !m.delete_tag(REGISTRY, &repo, "t", &fake_digest("other"))
            .await
            .unwrap()
    );
    assert_eq!(tag_of(&m, &repo, "t").await, Some(a.digest.clone()));
    assert!(m.delete_tag(REGISTRY, &repo, "t", &a.digest).await.unwrap());
    assert!(!m.delete_tag(REGISTRY, &repo, "t", &a.digest).await.unwrap());
    assert_eq!(tag_of(&m, &repo, "t").await, None);
    assert!(
        m.get_image(REGISTRY, &repo, &a.digest)
            .await
            .unwrap()
            .is_some()
    );
    assert!(m.delete_repository(REGISTRY, &repo).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_image_takes_its_tags_only() {
    let (m, ()) = aws_metadata().await;
    let repo = repo_name();
    let a = small_image(&repo, "a");
    let b = small_image(&repo, "b");
    m.put_image(&a, Some("a1"), false).await.unwrap();
    m.put_image(&a, Some("a2"), false).await.unwrap();
    m.put_image(&b, Some("b1"), false).await.unwrap();
    assert!(m.delete_image(REGISTRY, &repo, &a.digest).await.unwrap());
    assert!(!m.delete_image(REGISTRY, &repo, &a.digest).await.unwrap());
    assert_eq!(m.get_image(REGISTRY, &repo, &a.digest).await.unwrap(), None);
    let tags: Vec<String> = m
        .list_tags(REGISTRY, &repo)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.tag)
        .collect();
    assert_eq!(tags, ["b1"]);
    assert!(
        m.get_image(REGISTRY, &repo, &b.digest)
            .await
            .unwrap()
            .is_some()
    );
    assert!(m.delete_repository(REGISTRY, &repo).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_image_with_more_tags_than_a_transaction_holds() {
    let (m, ()) = aws_metadata().await;
    let repo = repo_name();
    let a = small_image(&repo, "a");
    for i in 0..130 {
        let tag = format!("t{i:03}");
        m.put_image(&a, Some(&tag), false).await.unwrap();
    }
    assert_eq!(m.list_tags(REGISTRY, &repo).await.unwrap().len(), 130);
    assert!(m.delete_image(REGISTRY, &repo, &a.digest).await.unwrap());
    assert!(m.list_tags(REGISTRY, &repo).await.unwrap().is_empty());
    assert!(m.list_images(REGISTRY, &repo).await.unwrap().is_empty());
    assert!(m.delete_repository(REGISTRY, &repo).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_inline_manifests_fit_and_listings_follow_pages() {
    let (m, ()) = aws_metadata().await;
    let repo = repo_name();
    // Five ~256 KiB images pass DynamoDB's 1 MB query page: the listing needs several pages.
    let mut images: Vec<ImageRecord> = (0..5)
        .map(|i| largest_inline_image(&repo, &format!("big{i}")))
        .collect();
    for img in &images {
        assert_eq!(
            m.put_image(img, Some(&img.digest[7..20]), false)
                .await
                .unwrap(),
            PutImageOutcome::Stored
        );
    }
    images.sort_by(|a, b| a.digest.cmp(&b.digest));
    let listed = m.list_images(REGISTRY, &repo).await.unwrap();
    assert_eq!(listed.len(), images.len());
    assert!(listed == images, "every image back, whole, in digest order");
    assert_eq!(
        m.get_image(REGISTRY, &repo, &images[0].digest)
            .await
            .unwrap()
            .as_ref(),
        Some(&images[0])
    );
    assert!(m.delete_repository(REGISTRY, &repo).await.is_ok());
    assert!(m.list_images(REGISTRY, &repo).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_never_names_a_deleted_image_under_races() {
    let (m, ()) = aws_metadata().await;
    let repo = repo_name();
    for round in 0..12 {
        let img = small_image(&repo, &format!("race{round}"));
        m.put_image(&img, Some(&format!("base{round}")), false)
            .await
            .unwrap();
        let tag = format!("r{round}");
        let (m1, m2, i1, t1) = (m.clone(), m.clone(), img.clone(), tag.clone());
        let (r2, d2) = (repo.clone(), img.digest.clone());
        let put = tokio::spawn(async move { m1.put_image(&i1, Some(&t1), false).await });
        let del = tokio::spawn(async move { m2.delete_image(REGISTRY, &r2, &d2).await });
        put.await.unwrap().unwrap();
        del.await.unwrap().unwrap();
        let named = tag_of(&m, &repo, &tag).await;
        let exists = m
            .get_image(REGISTRY, &repo, &img.digest)
            .await
            .unwrap()
            .is_some();
        assert!(
            named.is_none() || exists,
            "round {round}: tag {tag} names {named:?} but the image is gone"
        );
    }
    assert!(m.delete_repository(REGISTRY, &repo).await.is_ok());
}

/// A layer recorded the way the service records one: through a finished upload.
async fn record_layer(m: &DynamoMetadata, repo: &str, seed: &str) -> LayerRecord {
    let u = UploadRecord {
        repository: repo.into(),
        ..upload()
    };
    // finish_upload records a layer only in an existing repository of the upload's
    // incarnation: one is created for it, and its item alone removed after (callers want the
    // layer without a repository item).
    m.create_repository(&suite::repository(REGISTRY, repo))
        .await
        .unwrap();
    m.create_upload(&u).await.unwrap();
    let layer = LayerRecord {
        registry_id: REGISTRY.into(),
        repository: repo.into(),
        digest: fake_digest(seed),
        blob_key: u.blob_key.clone(),
        size: 10,
        media_type: None,
        created_at_ms: u.created_at_ms,
    };
    let done = UploadRecord {
        state: UploadState::Done,
        ..next(&u)
    };
    assert_eq!(
        m.finish_upload(&done, &layer).await.unwrap(),
        Finish::Recorded
    );
    m.delete_upload(&u.upload_id).await.unwrap();
    m.client()
        .delete_item()
        .table_name(m.table())
        .key("pk", AttributeValue::S(format!("REPO#{REGISTRY}")))
        .key("sk", AttributeValue::S(repo.to_owned()))
        .send()
        .await
        .unwrap();
    layer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_layer_media_type_updates_recorded_layers_only() {
    let (m, ()) = aws_metadata().await;
    let repo = repo_name();
    let layer = record_layer(&m, &repo, "layer").await;
    let mt = "application/vnd.oci.image.layer.v1.tar+gzip";
    m.set_layer_media_type(REGISTRY, &repo, &layer.digest, mt)
        .await
        .unwrap();
    let got = m
        .get_layer(REGISTRY, &repo, &layer.digest)
        .await
        .unwrap()
        .expect("the layer");
    assert_eq!(got.media_type.as_deref(), Some(mt));
    assert_eq!(
        got,
        LayerRecord {
            media_type: Some(mt.into()),
            ..layer.clone()
        }
    );

    // An absent layer: fine, and no stub item appears.
    let absent = fake_digest("absent-layer");
    m.set_layer_media_type(REGISTRY, &repo, &absent, mt)
        .await
        .unwrap();
    assert_eq!(m.get_layer(REGISTRY, &repo, &absent).await.unwrap(), None);
    let raw = m
        .client()
        .get_item()
        .table_name(m.table())
        .key("pk", AttributeValue::S(format!("LAYER#{REGISTRY}#{repo}")))
        .key("sk", AttributeValue::S(absent))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert!(raw.item.is_none_or(|i| i.is_empty()));
    assert!(m.delete_repository(REGISTRY, &repo).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_repository_removes_its_images_and_tags_only() {
    let (m, ()) = aws_metadata().await;
    let (repo, other) = (repo_name(), repo_name());
    let a = small_image(&repo, "a");
    let o = small_image(&other, "a");
    m.put_image(&a, Some("latest"), false).await.unwrap();
    m.put_image(&o, Some("latest"), false).await.unwrap();
    let layer = record_layer(&m, &repo, "layer").await;
    // No repository item was ever created: what an interrupted delete leaves goes too.
    assert!(!m.delete_repository(REGISTRY, &repo).await.unwrap());
    assert!(m.list_images(REGISTRY, &repo).await.unwrap().is_empty());
    assert!(m.list_tags(REGISTRY, &repo).await.unwrap().is_empty());
    assert_eq!(
        m.get_layer(REGISTRY, &repo, &layer.digest).await.unwrap(),
        None
    );
    assert_eq!(
        m.list_images(REGISTRY, &other).await.unwrap(),
        std::slice::from_ref(&o)
    );
    assert_eq!(tag_of(&m, &other, "latest").await, Some(o.digest.clone()));
    assert!(m.delete_repository(REGISTRY, &other).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_item_without_a_version_can_still_be_deleted() {
    let (m, ()) = aws_metadata().await;
    let repo = repo_name();
    let a = small_image(&repo, "a");
    m.put_image(&a, Some("t"), false).await.unwrap();
    // As an item written by other means would be: no `version` attribute.
    m.client()
        .update_item()
        .table_name(m.table())
        .key("pk", AttributeValue::S(format!("IMAGE#{REGISTRY}#{repo}")))
        .key("sk", AttributeValue::S(a.digest.clone()))
        .update_expression("REMOVE version")
        .send()
        .await
        .unwrap();
    assert!(m.delete_image(REGISTRY, &repo, &a.digest).await.unwrap());
    assert_eq!(m.get_image(REGISTRY, &repo, &a.digest).await.unwrap(), None);
    assert_eq!(tag_of(&m, &repo, "t").await, None);
}

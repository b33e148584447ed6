//! Incremental verification on S3 + DynamoDB: the behaviours of `tests/service/incremental.rs`,
//! and S3 itself checking what the service hands it: a multipart upload created with a
//! full-object CRC-64/NVME refuses a part whose checksum is not its bytes', and an assembly
//! whose bytes are not the CRC-64 given, which the store reports as a failure (never success).

use bytes::Bytes;
use ecr_layer_upload::backends::aws::S3Blobs;
use ecr_layer_upload::ports::{BlobStore, FlushedPart};
use ecr_layer_upload::service::part_crc;

use crate::common::{aws, noise};

mod service {
    use crate::{service_incremental, service_suite};
    service_incremental::incremental_behaviours!(service_suite::service_tests!(
        service_incremental,
        crate::backend::Aws
    ));
}

const MIB: usize = 1024 * 1024;

async fn blobs() -> S3Blobs {
    aws::adapters().await.1
}

fn key() -> String {
    format!("layers/incremental-{}", uuid::Uuid::new_v4().simple())
}

/// Two parts (5 MiB and a short last one) written with their CRC-64s.
async fn two_parts(b: &S3Blobs, key: &str, id: &str, layer: &[u8]) -> Vec<FlushedPart> {
    let mut parts = Vec::new();
    let mut offset = 0usize;
    for (i, chunk) in layer.chunks(5 * MIB).enumerate() {
        let number = i as u32 + 1;
        let etag = b
            .upload_part_checksummed(
                key,
                id,
                number,
                offset as u64,
                Bytes::copy_from_slice(chunk),
                part_crc(chunk),
            )
            .await
            .unwrap_or_else(|e| panic!("part {number}: {e}"));
        parts.push(FlushedPart {
            number,
            etag,
            offset: offset as u64,
            len: chunk.len() as u64,
        });
        offset += chunk.len();
    }
    parts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_assembles_only_with_the_crc64_of_the_accepted_bytes() {
    let b = blobs().await;
    let key = key();
    let layer = noise(5 * MIB + 4321, 31);
    let id = b.create_multipart_checksummed(&key).await.unwrap();
    let parts = two_parts(&b, &key, &id, &layer).await;

    let mut wrong = layer.clone();
    wrong[7] ^= 1;
    let refused = b
        .complete_multipart_checksummed(&key, &id, &parts, Some(part_crc(&wrong)))
        .await;
    let err = refused.expect_err("S3 must refuse an assembly whose CRC-64 is not the one given");
    // SeaweedFS answers BadDigest, as S3 does; the store says so.
    let said = ecr_layer_upload::domain::error::chain(&err).to_string();
    assert!(said.contains("CRC-64"), "{said}");
    assert_eq!(
        b.object_size(&key).await.unwrap(),
        None,
        "nothing assembled"
    );

    b.complete_multipart_checksummed(&key, &id, &parts, Some(part_crc(&layer)))
        .await
        .expect("the right CRC-64 assembles the object");
    let head = b
        .client()
        .head_object()
        .bucket(b.bucket())
        .key(&key)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(layer.len() as i64));
    if let Some(crc) = head.checksum_crc64_nvme() {
        assert_eq!(
            crc,
            ecr_layer_upload::backends::aws::crc64_header(part_crc(&layer))
        );
    }
    b.delete_objects(&[key]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_refuses_a_part_whose_crc64_is_not_its_bytes() {
    let b = blobs().await;
    let key = key();
    let id = b.create_multipart_checksummed(&key).await.unwrap();
    let data = noise(MIB, 32);
    let refused = b
        .upload_part_checksummed(
            &key,
            &id,
            1,
            0,
            Bytes::from(data.clone()),
            part_crc(&data) ^ 1,
        )
        .await;
    let err = refused.expect_err("a part with a wrong CRC-64");
    let said = ecr_layer_upload::domain::error::chain(&err).to_string();
    assert!(said.contains("CRC-64"), "{said}");
    b.abort_multipart(&key, &id).await.unwrap();
}

//! CompleteLayerUpload's verification reads the assembled layer as consecutive ranges, several
//! at once (src/service/verify.rs): layers around the range size hash to their digest, and an
//! assembled object longer than the bytes accepted is refused, never recorded.

use bytes::Bytes;
use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::ports::{BlobStore, ByteStream, FlushedPart, PartStream, StoreResult};
use ecr_layer_upload::service::Service;
use futures_util::StreamExt;

use crate::common::service::{complete, create_repository, initiate, part, small_parts};
use crate::common::{digest, noise};

const MIB: usize = 1024 * 1024;

/// Uploads `data` in parts of `part_len` bytes; the upload id.
async fn upload<B: BlobStore>(
    svc: &Service<MemoryMetadata, B>,
    data: &[u8],
    part_len: usize,
) -> String {
    let id = initiate(svc, "app").await;
    for (i, chunk) in data.chunks(part_len).enumerate() {
        part(svc, "app", &id, (i * part_len) as u64, chunk)
            .await
            .unwrap();
    }
    id
}

#[tokio::test]
async fn layers_around_the_range_size_verify_to_their_digest() {
    let svc = Service::new(MemoryMetadata::new(), MemoryBlobs::new(), small_parts());
    create_repository(&svc, "app").await;
    for (seed, len) in [1, 4 * MIB - 1, 4 * MIB, 4 * MIB + 1, 8 * MIB, 17 * MIB + 3]
        .into_iter()
        .enumerate()
    {
        let data = noise(len, seed as u64 + 100);
        let id = upload(&svc, &data, 5 * MIB).await;
        let wrong = digest(&data[..len - 1]);
        let err = complete(&svc, "app", &id, &[&wrong]).await.unwrap_err();
        assert!(
            matches!(err, EcrError::InvalidLayer(_)),
            "{len} bytes: {err}"
        );
        let out = complete(&svc, "app", &id, &[&digest(&data)])
            .await
            .unwrap_or_else(|e| panic!("{len} bytes: {e}"));
        assert_eq!(out.layer_digest, digest(&data), "{len} bytes");
    }
}

/// Serves every object with one byte more than it holds.
struct Longer(MemoryBlobs);

impl BlobStore for Longer {
    async fn put_object(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.0.put_object(key, data).await
    }
    async fn get_object(&self, key: &str) -> StoreResult<Bytes> {
        self.0.get_object(key).await
    }
    async fn read_object(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        let size = self.0.object_size(key).await?.unwrap_or(0);
        let inner = self.0.read_object(key, range).await?;
        if range.is_none_or(|(_, last)| last >= size) {
            let extra = futures_util::stream::iter([Ok(Bytes::from_static(b"x"))]);
            Ok(Box::pin(inner.chain(extra)))
        } else {
            Ok(inner)
        }
    }
    async fn object_size(&self, key: &str) -> StoreResult<Option<u64>> {
        Ok(self.0.object_size(key).await?.map(|n| n + 1))
    }
    async fn delete_objects(&self, keys: &[String]) -> StoreResult<()> {
        self.0.delete_objects(keys).await
    }
    async fn create_multipart(&self, key: &str) -> StoreResult<String> {
        self.0.create_multipart(key).await
    }
    async fn upload_part(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        data: Bytes,
    ) -> StoreResult<String> {
        self.0.upload_part(key, multipart_id, number, data).await
    }
    async fn upload_part_at(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        offset: u64,
        data: Bytes,
    ) -> StoreResult<String> {
        self.0
            .upload_part_at(key, multipart_id, number, offset, data)
            .await
    }
    fn reads_one_stream_fast(&self) -> bool {
        self.0.reads_one_stream_fast()
    }
    fn streams_parts(&self) -> bool {
        self.0.streams_parts()
    }
    async fn upload_part_stream(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        offset: u64,
        data: PartStream<'_>,
    ) -> StoreResult<(String, u64)> {
        self.0
            .upload_part_stream(key, multipart_id, number, offset, data)
            .await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        multipart_id: &str,
        parts: &[FlushedPart],
    ) -> StoreResult<()> {
        self.0.complete_multipart(key, multipart_id, parts).await
    }
    async fn abort_multipart(&self, key: &str, multipart_id: &str) -> StoreResult<()> {
        self.0.abort_multipart(key, multipart_id).await
    }
    async fn download_url(&self, key: &str, expires_in_secs: u64) -> StoreResult<String> {
        self.0.download_url(key, expires_in_secs).await
    }
}

#[tokio::test]
async fn an_assembled_object_longer_than_the_upload_is_refused() {
    let svc = Service::new(
        MemoryMetadata::new(),
        Longer(MemoryBlobs::new()),
        small_parts(),
    );
    create_repository(&svc, "app").await;
    for len in [4 * MIB, 9 * MIB + 7] {
        let data = noise(len, 7);
        let id = upload(&svc, &data, 5 * MIB).await;
        let err = complete(&svc, "app", &id, &[&digest(&data)])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(&format!("expected {len}")),
            "{len} bytes: {err}"
        );
    }
}

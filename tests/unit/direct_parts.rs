//! The direct-part behaviours (`tests/service/direct.rs`) on the in-memory and embedded backends.

mod memory {
    use crate::{service_direct, service_suite};
    service_direct::direct_behaviours!(service_suite::service_tests!(
        service_direct,
        crate::service::Memory
    ));
}

mod embedded {
    use crate::{service_direct, service_suite};
    service_direct::direct_behaviours!(service_suite::service_tests!(
        service_direct,
        crate::service::Embedded
    ));
}

/// How many bytes each path writes, counted at the blob store.
mod written {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};
    use ecr_layer_upload::frontdoors::lambda::part_size as lambda_part_size;
    use ecr_layer_upload::ports::{
        BlobStore, ByteStream, FlushedPart, MetadataStore, PartStream, StoreResult,
    };
    use ecr_layer_upload::service::{Service, Settings};

    use crate::common::service::{complete, create_repository, initiate, part};
    use crate::common::{digest, noise};

    const MIB: usize = 1024 * 1024;

    /// The in-memory store, counting the bytes of staging objects and of multipart parts.
    #[derive(Clone)]
    struct Counting {
        inner: MemoryBlobs,
        staged: Arc<AtomicU64>,
        parts: Arc<AtomicU64>,
        /// Bytes of staging objects read back.
        read_back: Arc<AtomicU64>,
    }

    impl BlobStore for Counting {
        async fn put_object(&self, key: &str, data: Bytes) -> StoreResult<()> {
            self.staged.fetch_add(data.len() as u64, Ordering::SeqCst);
            self.inner.put_object(key, data).await
        }
        async fn get_object(&self, key: &str) -> StoreResult<Bytes> {
            let bytes = self.inner.get_object(key).await?;
            self.read_back
                .fetch_add(bytes.len() as u64, Ordering::SeqCst);
            Ok(bytes)
        }
        async fn read_object(
            &self,
            key: &str,
            range: Option<(u64, u64)>,
        ) -> StoreResult<ByteStream> {
            self.inner.read_object(key, range).await
        }
        async fn object_size(&self, key: &str) -> StoreResult<Option<u64>> {
            self.inner.object_size(key).await
        }
        async fn delete_objects(&self, keys: &[String]) -> StoreResult<()> {
            self.inner.delete_objects(keys).await
        }
        async fn create_multipart(&self, key: &str) -> StoreResult<String> {
            self.inner.create_multipart(key).await
        }
        async fn upload_part(
            &self,
            key: &str,
            multipart_id: &str,
            number: u32,
            data: Bytes,
        ) -> StoreResult<String> {
            self.parts.fetch_add(data.len() as u64, Ordering::SeqCst);
            self.inner
                .upload_part(key, multipart_id, number, data)
                .await
        }
        async fn upload_part_at(
            &self,
            key: &str,
            multipart_id: &str,
            number: u32,
            offset: u64,
            data: Bytes,
        ) -> StoreResult<String> {
            self.parts.fetch_add(data.len() as u64, Ordering::SeqCst);
            self.inner
                .upload_part_at(key, multipart_id, number, offset, data)
                .await
        }
        fn reads_one_stream_fast(&self) -> bool {
            self.inner.reads_one_stream_fast()
        }
        fn streams_parts(&self) -> bool {
            self.inner.streams_parts()
        }
        async fn upload_part_stream(
            &self,
            key: &str,
            multipart_id: &str,
            number: u32,
            offset: u64,
            data: PartStream<'_>,
        ) -> StoreResult<(String, u64)> {
            let parts = &self.parts;
            self.inner
                .upload_part_stream(
                    key,
                    multipart_id,
                    number,
                    offset,
                    Box::pin(futures_util::StreamExt::inspect(data, move |b| {
                        parts.fetch_add(b.len() as u64, Ordering::SeqCst);
                    })),
                )
                .await
        }
        async fn complete_multipart(
            &self,
            key: &str,
            multipart_id: &str,
            parts: &[FlushedPart],
        ) -> StoreResult<()> {
            self.inner
                .complete_multipart(key, multipart_id, parts)
                .await
        }
        async fn abort_multipart(&self, key: &str, multipart_id: &str) -> StoreResult<()> {
            self.inner.abort_multipart(key, multipart_id).await
        }
        async fn download_url(&self, key: &str, expires_in_secs: u64) -> StoreResult<String> {
            self.inner.download_url(key, expires_in_secs).await
        }
    }

    /// Pushes `len` bytes in parts of `part_size` with the default settings (but the smallest
    /// non-final ECR part at 1 MiB, as behind Lambda); returns the bytes staged, the bytes
    /// written as parts, and the part lengths recorded before the completion.
    async fn push(len: usize, part_size: usize) -> (u64, u64, Vec<u64>) {
        let (staged, parts, recorded, _) = push_through(len, part_size, 1).await;
        (staged, parts, recorded)
    }

    /// [`push`] through `processes` services on the same stores, taking the parts in turn (as
    /// Lambda instances may); also returns the bytes of staging objects read back.
    async fn push_through(
        len: usize,
        part_size: usize,
        processes: usize,
    ) -> (u64, u64, Vec<u64>, u64) {
        let blobs = Counting {
            inner: MemoryBlobs::new().with_min_part_size(5 * MIB as u64),
            staged: Arc::default(),
            parts: Arc::default(),
            read_back: Arc::default(),
        };
        let settings = Settings {
            min_part_size: MIB as u64,
            ..Settings::default()
        };
        let meta = MemoryMetadata::new();
        let services: Vec<_> = (0..processes)
            .map(|_| Service::new(meta.clone(), blobs.clone(), settings.clone()))
            .collect();
        let svc = &services[0];
        create_repository(svc, "app").await;
        let id = initiate(svc, "app").await;
        let layer = noise(len, 5);
        let mut first = 0usize;
        for (i, chunk) in layer.chunks(part_size).enumerate() {
            let svc = &services[i % processes];
            part(svc, "app", &id, first as u64, chunk).await.unwrap();
            first += chunk.len();
        }
        let parts: Vec<u64> = svc
            .metadata()
            .list_parts(&id)
            .await
            .unwrap()
            .iter()
            .map(|p| p.len)
            .collect();
        let d = digest(&layer);
        complete(svc, "app", &id, &[&d]).await.unwrap();
        (
            blobs.staged.load(Ordering::SeqCst),
            blobs.parts.load(Ordering::SeqCst),
            parts,
            blobs.read_back.load(Ordering::SeqCst),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_mib_parts_are_written_once_and_only_the_tail_is_staged() {
        let len = 3 * 10 * MIB + 3 * MIB;
        let (staged, parts, recorded) = push(len, 10 * MIB).await;
        assert_eq!(staged, 3 * MIB as u64, "only the 3 MiB tail is staged");
        assert_eq!(parts, len as u64, "every byte is written as a part once");
        assert_eq!(recorded, vec![10 * MIB as u64; 3], "before the completion");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lambda_parts_are_written_at_most_twice_in_parts_of_at_least_8_mib() {
        let len = 40 * MIB + 12345;
        let (staged, parts, recorded) = push(len, lambda_part_size() as usize).await;
        assert_eq!(staged, len as u64, "each Lambda-sized part is staged once");
        assert_eq!(parts, len as u64, "and written into a part once");
        assert!(!recorded.is_empty());
        for p in &recorded {
            assert!(*p >= 8 * MIB as u64, "a non-final part of {p} bytes");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn staged_parts_are_not_read_back_by_the_process_that_staged_them() {
        let len = 40 * MIB + 12345;
        let (staged, parts, _, read_back) = push_through(len, lambda_part_size() as usize, 1).await;
        assert_eq!((staged, parts), (len as u64, len as u64));
        assert_eq!(read_back, 0, "every segment's bytes were at hand");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn staged_parts_another_process_wrote_are_read_from_the_store() {
        // Two services on the same stores take the parts in turn: each reads back the segments
        // the other staged, and the layer is still assembled right (`complete` checks its
        // digest).
        let len = 40 * MIB + 12345;
        let (staged, parts, recorded, read_back) =
            push_through(len, lambda_part_size() as usize, 2).await;
        assert_eq!((staged, parts), (len as u64, len as u64));
        assert!(read_back > 0, "segments staged by the other process");
        assert!(
            read_back < len as u64,
            "not those staged by the flushing process"
        );
        for p in &recorded {
            assert!(*p >= 8 * MIB as u64, "a non-final part of {p} bytes");
        }
    }
}

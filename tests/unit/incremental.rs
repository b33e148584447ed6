//! Incremental verification (`tests/service/incremental.rs`) on the in-memory and embedded
//! backends, and what only a counting store shows: an incremental completion reads nothing of
//! the layer back, a fallback and the default mode read it all.

mod memory {
    use crate::{service_incremental, service_suite};
    service_incremental::incremental_behaviours!(service_suite::service_tests!(
        service_incremental,
        crate::service::Memory
    ));
}

mod embedded {
    use crate::{service_incremental, service_suite};
    service_incremental::incremental_behaviours!(service_suite::service_tests!(
        service_incremental,
        crate::service::Embedded
    ));
}

/// Bytes read back through `read_object`, counted at the blob store.
mod read_back {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata};
    use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};
    use ecr_layer_upload::ports::{
        BlobStore, ByteStream, FlushedPart, MetadataStore, SideWrite, StoreResult, UploadRecord,
    };
    use ecr_layer_upload::service::{Service, Settings, VerifyMode};
    use futures_util::TryStreamExt;

    use crate::common::service::{complete, create_repository, initiate, part, small_parts};
    use crate::common::{digest, noise, temp_dir};

    const MIB: usize = 1024 * 1024;

    /// A store counting the bytes its `read_object` streams yield.
    #[derive(Clone)]
    struct Reads<B> {
        inner: B,
        read: Arc<AtomicU64>,
    }

    impl<B: BlobStore + Clone> BlobStore for Reads<B> {
        async fn put_object(&self, key: &str, data: Bytes) -> StoreResult<()> {
            self.inner.put_object(key, data).await
        }
        async fn get_object(&self, key: &str) -> StoreResult<Bytes> {
            self.inner.get_object(key).await
        }
        async fn read_object(
            &self,
            key: &str,
            range: Option<(u64, u64)>,
        ) -> StoreResult<ByteStream> {
            let read = Arc::clone(&self.read);
            let stream = self.inner.read_object(key, range).await?;
            Ok(Box::pin(stream.inspect_ok(move |chunk| {
                read.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            })))
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
            self.inner
                .upload_part_at(key, multipart_id, number, offset, data)
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

    /// Pushes a 13 MiB layer (6 MiB direct parts and a staged tail) in `verify` mode, dropping
    /// the upload's hash state before completion if `lose_state`; returns the bytes completion
    /// read back.
    async fn pushed<M: MetadataStore + Clone, B: BlobStore + Clone>(
        meta: M,
        blobs: B,
        verify: VerifyMode,
        lose_state: bool,
    ) -> u64 {
        let read = Arc::new(AtomicU64::new(0));
        let svc = Service::new(
            meta,
            Reads {
                inner: blobs,
                read: Arc::clone(&read),
            },
            Settings {
                verify,
                ..small_parts()
            },
        );
        create_repository(&svc, "app").await;
        let id = initiate(&svc, "app").await;
        let layer = noise(13 * MIB + 5, 21);
        let mut first = 0;
        for chunk in layer.chunks(6 * MIB) {
            part(&svc, "app", &id, first as u64, chunk).await.unwrap();
            first += chunk.len();
        }
        if lose_state {
            let up = svc.metadata().get_upload(&id).await.unwrap().unwrap();
            assert!(up.hash.is_some());
            let lost = UploadRecord {
                version: up.version + 1,
                hash: None,
                ..up
            };
            svc.metadata()
                .update_upload(&lost, SideWrite::None)
                .await
                .unwrap();
        }
        let before = read.load(Ordering::SeqCst);
        let done = complete(&svc, "app", &id, &[&digest(&layer)])
            .await
            .unwrap();
        assert_eq!(done.layer_digest, digest(&layer));
        read.load(Ordering::SeqCst) - before
    }

    const LAYER: u64 = 13 * MIB as u64 + 5;

    #[tokio::test]
    async fn memory_incremental_completion_reads_nothing_back_and_fallbacks_read_it_all() {
        let open = || (MemoryMetadata::new(), MemoryBlobs::new());
        let (m, b) = open();
        assert_eq!(pushed(m, b, VerifyMode::Incremental, false).await, 0);
        let (m, b) = open();
        assert!(pushed(m, b, VerifyMode::Incremental, true).await >= LAYER);
        let (m, b) = open();
        assert!(pushed(m, b, VerifyMode::Stream, false).await >= LAYER);
    }

    #[tokio::test]
    async fn embedded_incremental_completion_reads_nothing_back_and_fallbacks_read_it_all() {
        for (verify, lose, reads_all) in [
            (VerifyMode::Incremental, false, false),
            (VerifyMode::Incremental, true, true),
            (VerifyMode::Stream, false, true),
        ] {
            let dir = temp_dir();
            let meta = LocalMetadata::open(dir.path()).unwrap();
            let blobs = LocalBlobs::open(dir.path()).unwrap();
            let read = pushed(meta, blobs, verify, lose).await;
            if reads_all {
                assert!(read >= LAYER, "{verify:?} lose {lose}: read {read}");
            } else {
                assert_eq!(read, 0, "{verify:?}");
            }
        }
    }
}

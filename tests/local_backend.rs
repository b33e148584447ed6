//! The service on the embedded backend (redb state + files): small Lambda-style parts are
//! accepted and coalesced, and an upload in progress survives a restart.

use bytes::Bytes;
use ecr_layer_upload::backend::local::{LocalBlobs, LocalMetadata};
use ecr_layer_upload::ports::MetadataStore;
use ecr_layer_upload::service::types::*;
use ecr_layer_upload::service::{Service, Settings};
use sha2::{Digest, Sha256};

const MIB: u64 = 1024 * 1024;

fn settings() -> Settings {
    Settings {
        min_part_size: 0,
        s3_part_size: 5 * MIB,
        ..Settings::default()
    }
}

fn open(dir: &std::path::Path) -> Service<LocalMetadata, LocalBlobs> {
    Service::new(
        LocalMetadata::open(dir).unwrap(),
        LocalBlobs::open(dir).unwrap().with_min_part_size(5 * MIB),
        settings(),
    )
}

fn layer(len: usize) -> Vec<u8> {
    let mut state = 0x1234_5678_9abc_def1u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

async fn send(
    svc: &Service<LocalMetadata, LocalBlobs>,
    id: &str,
    first: usize,
    bytes: &[u8],
) -> UploadLayerPartResponse {
    svc.upload_layer_part(UploadLayerPartRequest {
        repository_name: Some("local/app".into()),
        upload_id: Some(id.into()),
        part_first_byte: Some(first as i64),
        part_last_byte: Some((first + bytes.len()) as i64 - 1),
        layer_part_blob: Some(Bytes::copy_from_slice(bytes)),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn small_parts_and_a_restart_mid_upload() {
    let dir = tempfile::tempdir().unwrap();
    let data = layer(11 * MIB as usize + 4321);
    let sizes = [1024usize, 4097, 333_333, MIB as usize + 7, 1];
    let mut sizes = sizes.iter().cycle();
    let (id, mut sent) = {
        let svc = open(dir.path());
        svc.create_repository(CreateRepositoryRequest {
            repository_name: Some("local/app".into()),
            ..Default::default()
        })
        .await
        .unwrap();
        let id = svc
            .initiate_layer_upload(InitiateLayerUploadRequest {
                registry_id: None,
                repository_name: Some("local/app".into()),
            })
            .await
            .unwrap()
            .upload_id;
        let mut sent = 0usize;
        while sent < 7 * MIB as usize {
            let len = *sizes.next().unwrap();
            send(&svc, &id, sent, &data[sent..sent + len]).await;
            sent += len;
        }
        (id, sent)
        // The service, its database and files are closed here, as at a process exit.
    };
    let svc = open(dir.path());
    let up = svc.metadata().get_upload(&id).await.unwrap().unwrap();
    assert_eq!(
        up.next_byte, sent as u64,
        "acknowledged bytes survive the restart"
    );
    assert_eq!(up.parts_flushed, 1);
    while sent < data.len() {
        let len = (*sizes.next().unwrap()).min(data.len() - sent);
        send(&svc, &id, sent, &data[sent..sent + len]).await;
        sent += len;
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    let done = svc
        .complete_layer_upload(CompleteLayerUploadRequest {
            registry_id: None,
            repository_name: Some("local/app".into()),
            upload_id: Some(id),
            layer_digests: Some(vec![digest.clone()]),
        })
        .await
        .unwrap();
    assert_eq!(done.layer_digest, digest);
    let recorded = svc
        .metadata()
        .get_layer("123456789012", "local/app", &digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded.size, data.len() as u64);
    // Only the layer's file is left: no staging files.
    let staging = dir.path().join("blobs/objects/staging");
    let leftovers = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        leftovers,
        0,
        "staging objects left in {}",
        staging.display()
    );
}

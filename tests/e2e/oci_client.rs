//! The `oci-client` crate, a registry client of the OCI Distribution API, against the running
//! server's `/v2/`: an image of several layers (one of 64 MiB) pushed in the client's 4 MiB
//! chunks and pulled back with every digest compared, a multi-platform index, tags, the catalog
//! and referrers; and the same images through the ECR API. `make test` runs it on both backends.

use aws_sdk_ecr::types::ImageIdentifier;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageIndex;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::json;

use crate::common::{Server, create_repository, digest, noise, unique};

const MIB: usize = 1024 * 1024;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

fn client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

fn reference(server: &Server, repo: &str, tag: &str) -> Reference {
    let host = server.endpoint.trim_start_matches("http://");
    format!("{host}/{repo}:{tag}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_client_pushes_and_pulls() {
    let server = Server::start(&[]);
    let ecr = server.ecr_client();
    let repo = unique("oci/client");
    create_repository(&ecr, &repo).await;
    let client = client();
    let auth = RegistryAuth::Anonymous;

    // An image of three layers, one of 64 MiB, pushed in the client's 4 MiB chunks.
    let layers: Vec<Vec<u8>> = vec![
        noise(64 * MIB + 1, 21),
        noise(5 * MIB, 22),
        b"tiny".to_vec(),
    ];
    let image_layers: Vec<ImageLayer> = layers
        .iter()
        .map(|l| ImageLayer::new(l.clone(), OCI_LAYER.to_string(), None))
        .collect();
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest(l)).collect::<Vec<_>>()}})).unwrap();
    let v1 = reference(&server, &repo, "v1");
    let pushed = client
        .push(
            &v1,
            &image_layers,
            Config::new(config.clone(), OCI_CONFIG.to_string(), None),
            &auth,
            None,
        )
        .await
        .unwrap();
    assert!(
        pushed.manifest_url.contains(&repo),
        "{}",
        pushed.manifest_url
    );

    let pulled = client.pull(&v1, &auth, vec![OCI_LAYER]).await.unwrap();
    // The client fetches layers concurrently and keeps them in arrival order.
    let mut got: Vec<String> = pulled.layers.iter().map(|l| digest(&l.data)).collect();
    let mut want: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(digest(&pulled.config.data), digest(&config));
    let (manifest, manifest_digest) = client.pull_image_manifest(&v1, &auth).await.unwrap();
    assert_eq!(manifest.layers.len(), 3);

    // The ECR API reads the same image.
    let out = ecr
        .batch_get_image()
        .repository_name(&repo)
        .image_ids(ImageIdentifier::builder().image_tag("v1").build())
        .send()
        .await
        .unwrap();
    let text = out.images()[0].image_manifest().unwrap();
    assert_eq!(digest(text.as_bytes()), manifest_digest);

    // A two-platform index over that image and a second one.
    let arm_layer = noise(MIB + 3, 23);
    let arm_config = br#"{"architecture":"arm64","os":"linux"}"#.to_vec();
    let arm = reference(&server, &repo, "arm64");
    client
        .push(
            &arm,
            &[ImageLayer::new(
                arm_layer.clone(),
                OCI_LAYER.to_string(),
                None,
            )],
            Config::new(arm_config, OCI_CONFIG.to_string(), None),
            &auth,
            None,
        )
        .await
        .unwrap();
    let (arm_manifest, arm_digest) = client.pull_image_manifest(&arm, &auth).await.unwrap();
    let (raw_v1, _) = client
        .pull_manifest_raw(&v1, &auth, &[OCI_MANIFEST])
        .await
        .unwrap();
    let (raw_arm, _) = client
        .pull_manifest_raw(&arm, &auth, &[OCI_MANIFEST])
        .await
        .unwrap();
    let index: OciImageIndex = serde_json::from_value(json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": raw_v1.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm_digest, "size": raw_arm.len(), "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }))
    .unwrap();
    let multi = reference(&server, &repo, "multi");
    client
        .push_manifest_list(&multi, &auth, index)
        .await
        .unwrap();
    let (raw_index, _) = client
        .pull_manifest_raw(&multi, &auth, &["application/vnd.oci.image.index.v1+json"])
        .await
        .unwrap();
    let pulled_index: serde_json::Value = serde_json::from_slice(&raw_index).unwrap();
    assert_eq!(pulled_index["manifests"][1]["digest"], arm_digest);
    let mut blob = Vec::new();
    client
        .pull_blob(&arm, &arm_manifest.layers[0], &mut blob)
        .await
        .unwrap();
    assert_eq!(digest(&blob), digest(&arm_layer));

    // Tags, a page at a time, and the catalog.
    let tags = client.list_tags(&v1, &auth, None, None).await.unwrap();
    assert_eq!(tags.tags, ["arm64", "multi", "v1"]);
    let page = client
        .list_tags(&v1, &auth, Some(1), Some("arm64"))
        .await
        .unwrap();
    assert_eq!(page.tags, ["multi"]);
    let catalog = client.catalog(&v1, &auth, None, None).await.unwrap();
    assert!(catalog.repositories.contains(&repo));

    // An artifact whose subject is the image, listed among its referrers.
    let host = server.endpoint.trim_start_matches("http://");
    let by_digest: Reference = format!("{host}/{repo}@{manifest_digest}").parse().unwrap();
    assert!(
        client
            .pull_referrers(&by_digest, None)
            .await
            .unwrap()
            .manifests
            .is_empty()
    );
    let empty = b"{}".to_vec();
    client
        .push_blob(&v1, empty.clone(), &digest(&empty))
        .await
        .unwrap();
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(&empty), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(&empty), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": raw_v1.len()},
    }))
    .unwrap();
    let artifact_ref: Reference = format!("{host}/{repo}@{}", digest(&artifact))
        .parse()
        .unwrap();
    client
        .push_manifest_raw(
            &artifact_ref,
            artifact.clone(),
            OCI_MANIFEST.parse().unwrap(),
        )
        .await
        .unwrap();
    let referrers = client
        .pull_referrers(&by_digest, Some("application/vnd.example.sig"))
        .await
        .unwrap();
    assert_eq!(referrers.manifests.len(), 1);
    assert_eq!(referrers.manifests[0].digest, digest(&artifact));
}

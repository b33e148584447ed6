//! Real registry clients against the running server's OCI Distribution API (`/v2/`): skopeo
//! pushes an image of several layers (one of 64 MiB) and a multi-platform index, pulls them back
//! and every digest is compared; the same images are read through the ECR API (aws-sdk-ecr),
//! and an image pushed through the ECR API is pulled by skopeo. `make test` runs this file on
//! both backends (ECR_TEST_BACKEND).

use std::path::Path;
use std::process::Command;

use aws_sdk_ecr::types::ImageIdentifier;
use serde_json::{Value, json};

use crate::common::{Server, create_repository, digest, noise, push_blob, temp_dir, unique};

const MIB: usize = 1024 * 1024;
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// skopeo, when it is on PATH (`make test` installs it and requires it).
pub(crate) fn skopeo() -> bool {
    let found = Command::new("skopeo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("ECR_TEST_REQUIRE_SKOPEO").is_none(),
            "ECR_TEST_REQUIRE_SKOPEO is set but skopeo is not on PATH (scripts/tools.sh system)"
        );
        eprintln!("skopeo is not installed: skipping the /v2/ client tests");
    }
    found
}

fn run_skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(data), "size": data.len()})
}

/// Writes `data` as a blob of an OCI layout.
fn write_blob(layout: &Path, data: &[u8]) {
    let hex = digest(data)["sha256:".len()..].to_string();
    std::fs::write(layout.join("blobs/sha256").join(hex), data).unwrap();
}

/// A single-platform image: its manifest's bytes, written with its blobs into `layout`.
pub(crate) fn write_image(layout: &Path, arch: &str, layers: &[Vec<u8>]) -> Vec<u8> {
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest(l)).collect::<Vec<_>>()},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
    }))
    .unwrap();
    write_blob(layout, &config);
    for l in layers {
        write_blob(layout, l);
    }
    write_blob(layout, &manifest);
    manifest
}

/// An OCI layout whose index.json names `top` (of `media_type`) as `tag`.
pub(crate) fn write_layout_index(layout: &Path, top: &[u8], media_type: &str, tag: &str) {
    let mut d = descriptor(media_type, top);
    d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [d]})).unwrap(),
    )
    .unwrap();
}

pub(crate) fn new_layout(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Every blob a pulled layout holds is named by its content, and `expected` are all there.
fn assert_layout_holds(layout: &Path, expected: &[String]) {
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let data = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            digest(&data),
            format!("sha256:{}", entry.file_name().to_string_lossy()),
            "a pulled blob's content is not its name"
        );
    }
    for d in expected {
        let path = layout.join("blobs/sha256").join(&d["sha256:".len()..]);
        assert!(path.exists(), "the pulled layout lacks {d}");
    }
}

fn host(server: &Server) -> String {
    server.endpoint.trim_start_matches("http://").to_string()
}

async fn ecr_manifest(ecr: &aws_sdk_ecr::Client, repo: &str, tag: &str) -> String {
    let out = ecr
        .batch_get_image()
        .repository_name(repo)
        .image_ids(ImageIdentifier::builder().image_tag(tag).build())
        .send()
        .await
        .unwrap();
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    out.images()[0].image_manifest().unwrap().to_string()
}

/// skopeo pushes an image of four layers (one of 64 MiB) and a two-platform index through
/// `/v2/`, pulls both back, and every digest matches; the ECR API reads the same manifests.
#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pushes_and_pulls_images_and_indexes() {
    if !skopeo() {
        return;
    }
    let server = Server::start(&[]);
    let ecr = server.ecr_client();
    let repo = unique("oci/skopeo");
    create_repository(&ecr, &repo).await;
    let tmp = temp_dir();
    let layout = tmp.path().join("src");
    new_layout(&layout);
    let layers = vec![
        noise(64 * MIB + 123, 1),
        noise(3 * MIB, 2),
        b"small layer".to_vec(),
        noise(9 * MIB + 7, 3),
    ];
    let manifest = write_image(&layout, "amd64", &layers);
    write_layout_index(&layout, &manifest, OCI_MANIFEST, "v1");
    let dest = format!("docker://{}/{repo}", host(&server));
    run_skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("{dest}:v1"),
    ]);
    // The ECR API holds the very manifest skopeo pushed.
    assert!(ecr_manifest(&ecr, &repo, "v1").await.as_bytes() == manifest);

    // The multi-platform index, copied whole.
    let arm = write_image(&layout, "arm64", &[noise(2 * MIB, 4), layers[2].clone()]);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest(&manifest), "size": manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": digest(&arm), "size": arm.len(), "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }))
    .unwrap();
    write_blob(&layout, &index);
    write_layout_index(&layout, &index, OCI_INDEX, "multi");
    run_skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", layout.display()),
        &format!("{dest}:multi"),
    ]);
    assert!(ecr_manifest(&ecr, &repo, "multi").await.as_bytes() == index);

    // Pulled back: the same manifests and every blob.
    let raw = run_skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("{dest}:v1"),
    ]);
    assert!(raw.as_bytes() == manifest);
    let pulled = tmp.path().join("pulled");
    run_skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--all",
        "--src-tls-verify=false",
        &format!("{dest}:multi"),
        &format!("oci:{}:multi", pulled.display()),
    ]);
    let mut expected: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    expected.extend([digest(&manifest), digest(&arm), digest(&index)]);
    assert_layout_holds(&pulled, &expected);
    let pulled_index: Value =
        serde_json::from_slice(&std::fs::read(pulled.join("index.json")).unwrap()).unwrap();
    assert_eq!(pulled_index["manifests"][0]["digest"], digest(&index));
    // Tags as the API lists them.
    let tags = run_skopeo(&["list-tags", "--tls-verify=false", &dest]);
    let tags: Value = serde_json::from_str(&tags).unwrap();
    assert_eq!(tags["Tags"], json!(["multi", "v1"]));
}

/// An image pushed through the ECR API is pulled by skopeo through `/v2/`.
#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_what_the_ecr_api_pushed() {
    if !skopeo() {
        return;
    }
    let server = Server::start(&[]);
    let ecr = server.ecr_client();
    let repo = unique("oci/from-ecr");
    create_repository(&ecr, &repo).await;
    let layer = noise(5 * MIB + 3, 5);
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]}})).unwrap();
    push_blob(&ecr, &repo, &layer).await;
    push_blob(&ecr, &repo, &config).await;
    let manifest = serde_json::to_string(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config),
        "layers": [descriptor(OCI_LAYER, &layer)],
    }))
    .unwrap();
    ecr.put_image()
        .repository_name(&repo)
        .image_manifest(&manifest)
        .image_tag("v1")
        .send()
        .await
        .unwrap();
    let tmp = temp_dir();
    let pulled = tmp.path().join("pulled");
    run_skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{}/{repo}:v1", host(&server)),
        &format!("oci:{}:v1", pulled.display()),
    ]);
    assert_layout_holds(
        &pulled,
        &[digest(&layer), digest(&config), digest(manifest.as_bytes())],
    );
}

/// A push to a repository that does not exist is refused with NAME_UNKNOWN, unless
/// ECR_CREATE_ON_PUSH is on; `repositoryUri` names the server's address, so it can be pushed to.
#[tokio::test(flavor = "multi_thread")]
async fn missing_repositories_and_repository_uris() {
    if !skopeo() {
        return;
    }
    let tmp = temp_dir();
    let layout = tmp.path().join("src");
    new_layout(&layout);
    let manifest = write_image(&layout, "amd64", &[noise(1000, 6)]);
    write_layout_index(&layout, &manifest, OCI_MANIFEST, "v1");
    let source = format!("oci:{}:v1", layout.display());

    let server = Server::start(&[]);
    let repo = unique("oci/absent");
    let dest = format!("docker://{}/{repo}:v1", host(&server));
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &source,
            &dest,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("name unknown") || stderr.contains("NAME_UNKNOWN"),
        "{stderr}"
    );
    // The repository URI is where to push.
    let ecr = server.ecr_client();
    let created = ecr
        .create_repository()
        .repository_name(&repo)
        .send()
        .await
        .unwrap();
    let uri = created.repository().unwrap().repository_uri().unwrap();
    assert_eq!(uri, format!("{}/{repo}", host(&server)));
    run_skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &source,
        &format!("docker://{uri}:v1"),
    ]);

    let server = Server::start(&[("ECR_CREATE_ON_PUSH", "true")]);
    let dest = format!("docker://{}/{repo}:v1", host(&server));
    run_skopeo(&[
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &source,
        &dest,
    ]);
    assert_eq!(
        ecr_manifest(&server.ecr_client(), &repo, "v1")
            .await
            .as_bytes(),
        manifest
    );
}

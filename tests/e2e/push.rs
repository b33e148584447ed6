//! `ecr-layer-upload push` against the running server, checked with `aws-sdk-ecr`: an OCI
//! layout (directory and tar), a legacy `docker save` tar, a nested index, a second push that
//! skips everything, resuming an interrupted upload, and corrupt or ambiguous inputs.
//!
//! The server advertises 1 MiB parts so that the larger layer spans several parts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_sdk_ecr::types::{ImageIdentifier, LayerAvailability};

use crate::common::{self, Server, create_repository as create, digest, noise, temp_dir, unique};

pub(crate) const MIB: usize = 1024 * 1024;
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub(crate) fn server() -> Server {
    Server::start(&[
        ("ECR_PART_SIZE", "1048576"),
        ("ECR_MIN_PART_SIZE", "1048576"),
    ])
}

/// An image written as files: the manifest (or index) pushed last and every blob.
pub(crate) struct Image {
    pub(crate) manifest: Vec<u8>,
    pub(crate) media_type: &'static str,
    pub(crate) blobs: Vec<(String, Vec<u8>)>,
}

impl Image {
    pub(crate) fn digest(&self) -> String {
        digest(&self.manifest)
    }
}

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest(data), "size": data.len()})
}

/// Config and layers → an OCI manifest, its blobs (manifest included) keyed by digest.
pub(crate) fn oci_image(layers: &[Vec<u8>], note: &str) -> Image {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Labels": {"note": note}},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest(l)).collect::<Vec<_>>()},
    }))
    .unwrap();
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
    }))
    .unwrap();
    let mut blobs = vec![(digest(&config), config)];
    blobs.extend(layers.iter().map(|l| (digest(l), l.clone())));
    Image {
        manifest,
        media_type: OCI_MANIFEST,
        blobs,
    }
}

/// Writes an OCI image layout whose index.json lists `entries` (descriptor bytes and media
/// type, optional ref name); `blobs` are every blob, manifests included.
fn write_layout(dir: &Path, entries: &[(&[u8], &str, Option<&str>)], blobs: &[(String, Vec<u8>)]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for (d, data) in blobs {
        let hex = d.strip_prefix("sha256:").unwrap();
        std::fs::write(dir.join("blobs/sha256").join(hex), data).unwrap();
    }
    let manifests: Vec<_> = entries
        .iter()
        .map(|(bytes, mt, name)| {
            let mut d = descriptor(mt, bytes);
            if let Some(n) = name {
                d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": n});
            }
            d
        })
        .collect();
    let index =
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A single-image layout tagged `tag`; its blobs include the manifest.
pub(crate) fn write_single(dir: &Path, image: &Image, tag: Option<&str>) {
    let mut blobs = image.blobs.clone();
    blobs.push((image.digest(), image.manifest.clone()));
    write_layout(dir, &[(&image.manifest, image.media_type, tag)], &blobs);
}

/// Tars a directory's files (relative names, as `docker save` and `skopeo` write them).
fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

pub(crate) struct Run {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

pub(crate) fn push_with(
    server: &Server,
    input: &Path,
    repo: &str,
    extra: &[&str],
    state: &Path,
    env: &[(&str, &str)],
) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ecr-layer-upload"));
    cmd.arg("push")
        .arg(input)
        .args(["--repository", repo])
        .arg("--state-file")
        .arg(state)
        .args(extra)
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_ECR")
        .env_remove("ECR_PUSH_STOP_AFTER_PARTS")
        // No shared config files: credentials and region come from the variables above.
        .env("AWS_CONFIG_FILE", state.with_extension("no-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            state.with_extension("no-credentials"),
        );
    if !env.iter().any(|(k, _)| *k == "AWS_ENDPOINT_URL_ECR") {
        cmd.args(["--endpoint-url", &server.endpoint]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run ecr-layer-upload push");
    let run = Run {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    eprintln!("--- push stderr ---\n{}", run.stderr);
    run
}

pub(crate) fn push(server: &Server, input: &Path, repo: &str, extra: &[&str], state: &Path) -> Run {
    push_with(server, input, repo, extra, state, &[])
}

async fn manifest_by(
    ecr: &aws_sdk_ecr::Client,
    repo: &str,
    id: ImageIdentifier,
    media_type: &str,
) -> String {
    let out = ecr
        .batch_get_image()
        .repository_name(repo)
        .image_ids(id)
        .accepted_media_types(media_type)
        .send()
        .await
        .unwrap();
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    let image = &out.images()[0];
    image.image_manifest().unwrap().to_string()
}

pub(crate) async fn manifest_by_tag(
    ecr: &aws_sdk_ecr::Client,
    repo: &str,
    tag: &str,
    mt: &str,
) -> String {
    manifest_by(
        ecr,
        repo,
        ImageIdentifier::builder().image_tag(tag).build(),
        mt,
    )
    .await
}

/// Every blob is AVAILABLE with its size, and downloads byte for byte.
pub(crate) async fn assert_blobs(
    ecr: &aws_sdk_ecr::Client,
    repo: &str,
    blobs: &[(String, Vec<u8>)],
) {
    for (d, data) in blobs {
        let out = ecr
            .batch_check_layer_availability()
            .repository_name(repo)
            .layer_digests(d)
            .send()
            .await
            .unwrap();
        assert!(out.failures().is_empty(), "{:?}", out.failures());
        let layer = &out.layers()[0];
        assert_eq!(
            layer.layer_availability(),
            Some(&LayerAvailability::Available),
            "{d}"
        );
        assert_eq!(layer.layer_size(), Some(data.len() as i64), "{d}");
        let url = ecr
            .get_download_url_for_layer()
            .repository_name(repo)
            .layer_digest(d)
            .send()
            .await
            .unwrap()
            .download_url()
            .unwrap()
            .to_string();
        let got = http_get(&url).await;
        assert!(got == *data, "downloaded bytes of {d} differ");
    }
}

/// A download URL's bytes, which must be served with 200.
async fn http_get(url: &str) -> Vec<u8> {
    let (status, body) = common::http_get(url).await;
    assert_eq!(status, 200, "GET {url}");
    body
}

pub(crate) fn read_state(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The one saved upload: its key, upload id and next byte.
fn saved_upload(path: &Path) -> (String, String, u64) {
    let state = read_state(path);
    let uploads = state["uploads"].as_object().unwrap();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    let (k, v) = uploads.iter().next().unwrap();
    (
        k.clone(),
        v["uploadId"].as_str().unwrap().to_string(),
        v["nextByte"].as_u64().unwrap(),
    )
}

/// One blob at a time, for the tests that count parts in the order a sequential push sends them.
const SEQUENTIAL: [&str; 2] = ["--max-concurrent-uploads", "1"];

fn two_layers(seed: u64) -> Vec<Vec<u8>> {
    // The first layer spans four 1 MiB parts, the last one short.
    vec![noise(3 * MIB + 123_457, seed), noise(200_000, seed + 1)]
}

#[tokio::test(flavor = "multi_thread")]
async fn push_an_oci_layout_directory() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/oci-dir");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let image = oci_image(&two_layers(1), "dir");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));

    let run = push(
        &server,
        &layout,
        &repo,
        &["--tag", "v1"],
        &tmp.path().join("s.json"),
    );
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), image.digest());
    assert!(run.stderr.contains("3 blobs uploaded"), "{}", run.stderr);

    let stored = manifest_by_tag(&ecr, &repo, "v1", OCI_MANIFEST).await;
    assert_eq!(stored.as_bytes(), image.manifest.as_slice());
    assert_blobs(&ecr, &repo, &image.blobs).await;
    // Nothing is left to resume.
    let state = read_state(&tmp.path().join("s.json"));
    assert!(state["uploads"].as_object().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_push_of_the_same_image_skips_every_blob() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/again");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let image = oci_image(&two_layers(2), "again");
    let layout = tmp.path().join("layout");
    // The tag comes from the layout's ref name when --tag is not given.
    write_single(&layout, &image, Some("latest"));
    let state = tmp.path().join("s.json");

    let first = push(&server, &layout, &repo, &[], &state);
    assert!(first.ok, "{}", first.stderr);
    let second = push(&server, &layout, &repo, &[], &state);
    assert!(second.ok, "{}", second.stderr);
    assert_eq!(second.stdout.trim(), image.digest());
    assert!(
        second.stderr.contains("0 blobs uploaded") && second.stderr.contains("3 already present"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("already present:"),
        "{}",
        second.stderr
    );
    for (d, _) in &image.blobs {
        assert!(
            second.stderr.contains(&format!("exists {d}")),
            "{}",
            second.stderr
        );
    }
    let stored = manifest_by_tag(&ecr, &repo, "latest", OCI_MANIFEST).await;
    assert_eq!(stored.as_bytes(), image.manifest.as_slice());
}

#[tokio::test(flavor = "multi_thread")]
async fn push_an_oci_layout_tar_with_the_endpoint_from_the_environment() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/oci-tar");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let image = oci_image(&two_layers(3), "tar");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v2"));
    let archive = tmp.path().join("image.tar");
    tar_dir(&layout, &archive);

    let run = push_with(
        &server,
        &archive,
        &repo,
        &["--tag", "v2"],
        &tmp.path().join("s.json"),
        &[("AWS_ENDPOINT_URL_ECR", &server.endpoint)],
    );
    assert!(run.ok, "{}", run.stderr);
    let stored = manifest_by_tag(&ecr, &repo, "v2", OCI_MANIFEST).await;
    assert_eq!(stored.as_bytes(), image.manifest.as_slice());
    assert_blobs(&ecr, &repo, &image.blobs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn push_a_legacy_docker_save_tar() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/docker-save");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let layers = two_layers(4);
    let config =
        serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux"})).unwrap();
    let config_name = format!("{}.json", &digest(&config)[7..]);
    let dir = tmp.path().join("save");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&config_name), &config).unwrap();
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let id = format!("{:064x}", i + 1);
        std::fs::create_dir_all(dir.join(&id)).unwrap();
        if i == 0 {
            std::fs::write(dir.join(&id).join("layer.tar"), l).unwrap();
        } else {
            // As `docker save` stores a layer shared with another image: a link to its file.
            std::fs::create_dir_all(dir.join("shared")).unwrap();
            std::fs::write(dir.join("shared/layer.tar"), l).unwrap();
            std::os::unix::fs::symlink("../shared/layer.tar", dir.join(&id).join("layer.tar"))
                .unwrap();
        }
        names.push(format!("{id}/layer.tar"));
    }
    let manifest_json = serde_json::json!([{
        "Config": config_name, "RepoTags": ["example.com:5000/app:v3"], "Layers": names,
    }]);
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest_json).unwrap(),
    )
    .unwrap();
    let archive = tmp.path().join("save.tar");
    tar_dir(&dir, &archive);

    // The tag comes from RepoTags.
    let run = push(&server, &archive, &repo, &[], &tmp.path().join("s.json"));
    assert!(run.ok, "{}", run.stderr);
    let stored = manifest_by_tag(&ecr, &repo, "v3", DOCKER_MANIFEST).await;
    assert_eq!(run.stdout.trim(), digest(stored.as_bytes()));
    let m: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], DOCKER_MANIFEST);
    assert_eq!(m["config"]["digest"], digest(&config));
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    for (got, want) in m["layers"].as_array().unwrap().iter().zip(&layers) {
        assert_eq!(
            got["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar"
        );
        assert_eq!(got["digest"], digest(want));
        assert_eq!(got["size"], want.len());
    }
    let mut blobs = vec![(digest(&config), config)];
    blobs.extend(layers.iter().map(|l| (digest(l), l.clone())));
    assert_blobs(&ecr, &repo, &blobs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nested_index_pushes_its_manifests_by_digest_and_tags_the_index() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/index");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let amd = oci_image(&[noise(1_500_000, 5)], "amd64");
    let arm = oci_image(&[noise(700_000, 6)], "arm64");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": amd.digest(), "size": amd.manifest.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": arm.digest(), "size": arm.manifest.len(),
             "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    }))
    .unwrap();
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    for img in [&amd, &arm] {
        blobs.extend(img.blobs.iter().cloned());
        blobs.push((img.digest(), img.manifest.clone()));
    }
    blobs.push((digest(&index), index.clone()));
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[(&index, OCI_INDEX, Some("multi"))], &blobs);

    let run = push(
        &server,
        &layout,
        &repo,
        &["--tag", "multi"],
        &tmp.path().join("s.json"),
    );
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), digest(&index));
    let stored = manifest_by_tag(&ecr, &repo, "multi", OCI_INDEX).await;
    assert_eq!(stored.as_bytes(), index.as_slice());
    for img in [&amd, &arm] {
        let id = ImageIdentifier::builder()
            .image_digest(img.digest())
            .build();
        let child = manifest_by(&ecr, &repo, id, OCI_MANIFEST).await;
        assert_eq!(child.as_bytes(), img.manifest.as_slice());
        assert_blobs(&ecr, &repo, &img.blobs).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_push_resumes_the_same_upload_from_its_offset() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/resume");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let layers = two_layers(7);
    let image = oci_image(&layers, "resume");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));
    let state = tmp.path().join("s.json");

    // The config is one part; the second part is the big layer's first MiB (blobs one at a
    // time, so that the parts are counted in this order).
    let stopped = push_with(
        &server,
        &layout,
        &repo,
        &SEQUENTIAL,
        &state,
        &[("ECR_PUSH_STOP_AFTER_PARTS", "2")],
    );
    assert!(!stopped.ok);
    assert!(
        stopped.stderr.contains("UploadLayerPart"),
        "{}",
        stopped.stderr
    );
    let big = digest(&layers[0]);
    let (key, upload_id, next) = saved_upload(&state);
    assert!(key.ends_with(&format!("|{repo}|{big}")), "{key}");
    assert!(key.starts_with(&server.endpoint), "{key}");
    assert_eq!(next, MIB as u64);

    let resumed = push(&server, &layout, &repo, &[], &state);
    assert!(resumed.ok, "{}", resumed.stderr);
    assert!(
        resumed.stderr.contains(&format!(
            "resuming {big} at byte {MIB} of upload {upload_id}"
        )),
        "{}",
        resumed.stderr
    );
    // The config was already complete; the big layer finished its upload, the small one is new.
    assert!(
        resumed.stderr.contains("2 blobs uploaded"),
        "{}",
        resumed.stderr
    );
    assert!(
        resumed.stderr.contains("1 already present"),
        "{}",
        resumed.stderr
    );
    let stored = manifest_by_tag(&ecr, &repo, "v1", OCI_MANIFEST).await;
    assert_eq!(stored.as_bytes(), image.manifest.as_slice());
    assert_blobs(&ecr, &repo, &image.blobs).await;
    assert!(
        read_state(&state)["uploads"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}

/// Rewrites the one saved upload's fields.
fn edit_saved(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut state = read_state(path);
    let uploads = state["uploads"].as_object_mut().unwrap();
    let entry = uploads.values_mut().next().unwrap();
    f(entry);
    std::fs::write(path, serde_json::to_vec(&state).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_saved_offset_is_corrected_by_the_server() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/stale");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let layers = two_layers(8);
    let image = oci_image(&layers, "stale");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));
    let state = tmp.path().join("s.json");
    let stopped = push_with(
        &server,
        &layout,
        &repo,
        &SEQUENTIAL,
        &state,
        &[("ECR_PUSH_STOP_AFTER_PARTS", "3")],
    );
    assert!(!stopped.ok);
    let (_, upload_id, next) = saved_upload(&state);
    assert_eq!(next, 2 * MIB as u64);
    let big = digest(&layers[0]);
    let stop_after_one = [("ECR_PUSH_STOP_AFTER_PARTS", "1")];

    // Saved offset ahead of the server (the part's answer was lost before it was stored).
    edit_saved(&state, |e| e["nextByte"] = (3 * MIB as u64).into());
    let run = push_with(
        &server,
        &layout,
        &repo,
        &SEQUENTIAL,
        &state,
        &stop_after_one,
    );
    assert!(!run.ok, "the seam stops after one more part");
    let want = format!("resuming {big} at byte {} of upload {upload_id}", 2 * MIB);
    assert!(run.stderr.contains(&want), "{}", run.stderr);
    let (_, id, next) = saved_upload(&state);
    assert_eq!((id.as_str(), next), (upload_id.as_str(), 3 * MIB as u64));

    // Saved offset behind the server (an older copy of the state file).
    edit_saved(&state, |e| e["nextByte"] = (MIB as u64).into());
    let run = push(&server, &layout, &repo, &[], &state);
    assert!(run.ok, "{}", run.stderr);
    let want = format!("resuming {big} at byte {} of upload {upload_id}", 3 * MIB);
    assert!(run.stderr.contains(&want), "{}", run.stderr);
    assert_blobs(&ecr, &repo, &image.blobs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_the_server_forgot_starts_over() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/forgot");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let image = oci_image(&two_layers(9), "forgot");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));
    let state = tmp.path().join("s.json");
    let stopped = push_with(
        &server,
        &layout,
        &repo,
        &SEQUENTIAL,
        &state,
        &[("ECR_PUSH_STOP_AFTER_PARTS", "2")],
    );
    assert!(!stopped.ok);
    let unknown = uuid::Uuid::new_v4().to_string();
    edit_saved(&state, |e| e["uploadId"] = unknown.clone().into());
    let run = push(&server, &layout, &repo, &[], &state);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("upload {unknown}")) && run.stderr.contains("starting over"),
        "{}",
        run.stderr
    );
    assert_blobs(&ecr, &repo, &image.blobs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_blob_stops_the_push_before_completion() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/corrupt");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let layers = two_layers(10);
    let image = oci_image(&layers, "corrupt");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));
    let big = digest(&layers[0]);
    let path: PathBuf = layout.join("blobs/sha256").join(&big[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * MIB + 5] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let run = push(&server, &layout, &repo, &[], &tmp.path().join("s.json"));
    assert!(!run.ok);
    let last = run.stderr.lines().last().unwrap_or("");
    assert!(
        last.contains("corrupt layout") && last.contains(&big),
        "{}",
        run.stderr
    );
    let out = ecr
        .batch_check_layer_availability()
        .repository_name(&repo)
        .layer_digests(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(
        out.layers()[0].layer_availability(),
        Some(&LayerAvailability::Unavailable)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layout_with_several_images_needs_a_tag_naming_one() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/choose");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let a = oci_image(&[noise(10_000, 11)], "a");
    let b = oci_image(&[noise(10_000, 12)], "b");
    let mut blobs = Vec::new();
    for img in [&a, &b] {
        blobs.extend(img.blobs.iter().cloned());
        blobs.push((img.digest(), img.manifest.clone()));
    }
    let layout = tmp.path().join("layout");
    write_layout(
        &layout,
        &[
            (&a.manifest, OCI_MANIFEST, Some("alpha")),
            (&b.manifest, OCI_MANIFEST, Some("beta")),
        ],
        &blobs,
    );
    let state = tmp.path().join("s.json");
    let run = push(&server, &layout, &repo, &["--tag", "gamma"], &state);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("alpha") && run.stderr.contains("beta") && run.stderr.contains("gamma"),
        "{}",
        run.stderr
    );
    let run = push(&server, &layout, &repo, &["--tag", "beta"], &state);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), b.digest());
    let stored = manifest_by_tag(&ecr, &repo, "beta", OCI_MANIFEST).await;
    assert_eq!(stored.as_bytes(), b.manifest.as_slice());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_repository_fails_naming_the_step() {
    let server = server();
    let tmp = temp_dir();
    let image = oci_image(&[noise(1000, 13)], "missing");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));
    let run = push(
        &server,
        &layout,
        "push/absent",
        &[],
        &tmp.path().join("s.json"),
    );
    assert!(!run.ok);
    let last = run.stderr.lines().last().unwrap_or("");
    assert!(
        last.contains("BatchCheckLayerAvailability")
            && last.contains("RepositoryNotFoundException"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_state_file_costs_resuming_not_the_push() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/no-state");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let image = oci_image(&two_layers(14), "no-state");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));
    // The state file's directory would have to be inside a regular file.
    let blocker = tmp.path().join("plain-file");
    std::fs::write(&blocker, b"x").unwrap();
    let run = push(&server, &layout, &repo, &[], &blocker.join("s.json"));
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stderr.matches("warning:").count(), 1, "{}", run.stderr);
    let stored = manifest_by_tag(&ecr, &repo, "v1", OCI_MANIFEST).await;
    assert_eq!(stored.as_bytes(), image.manifest.as_slice());
}

/// Sends a request of the ECR API (`POST /`, `headers`, `body`) to the server at `target` on a
/// connection of its own; its answer's head and whole body. The test proxies' way through.
pub(crate) async fn forward(
    target: &str,
    headers: http::HeaderMap,
    body: bytes::Bytes,
) -> (http::response::Parts, bytes::Bytes) {
    use http_body_util::{BodyExt, Full};
    let uri: http::Uri = target.parse().unwrap();
    let stream = tokio::net::TcpStream::connect((uri.host().unwrap(), uri.port_u16().unwrap()))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut fwd = http::Request::post("/").body(Full::new(body)).unwrap();
    *fwd.headers_mut() = headers;
    let resp = sender.send_request(fwd).await.unwrap();
    let (head, body) = resp.into_parts();
    (head, body.collect().await.unwrap().to_bytes())
}

/// A proxy in front of the server that passes every request on but answers `ServerException`
/// (HTTP 500) for UploadLayerPart requests number `fail_from..=fail_to`: parts that the server
/// stored while the client saw an error, as a Lambda timeout would do.
async fn flaky_proxy(target: String, fail_from: u64, fail_to: u64) -> String {
    use http_body_util::{BodyExt, Full};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let parts = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (target, parts) = (target.clone(), parts.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (target, parts) = (target.clone(), parts.clone());
                        async move {
                            let is_part = req
                                .headers()
                                .get("x-amz-target")
                                .is_some_and(|t| t.as_bytes().ends_with(b".UploadLayerPart"));
                            let n = if is_part {
                                parts.fetch_add(1, Ordering::SeqCst) + 1
                            } else {
                                0
                            };
                            let (head, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let (rhead, rbody) = forward(&target, head.headers, body).await;
                            if (fail_from..=fail_to).contains(&n) {
                                let err = r#"{"__type":"ServerException","message":"injected"}"#;
                                return Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .status(500)
                                        .header("content-type", "application/x-amz-json-1.1")
                                        .header("x-amzn-errortype", "ServerException")
                                        .body(Full::new(bytes::Bytes::from_static(err.as_bytes())))
                                        .unwrap(),
                                );
                            }
                            Ok(http::Response::from_parts(rhead, Full::new(rbody)))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_part_that_fails_after_the_sdk_retries_is_sent_again() {
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/flaky");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let image = oci_image(&two_layers(15), "flaky");
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));
    // Part 3 (the big layer's second MiB) and the SDK's two retries of it all see an error
    // (blobs one at a time, so that the proxy counts the parts in this order).
    let proxy = flaky_proxy(server.endpoint.clone(), 3, 5).await;
    let run = push_with(
        &server,
        &layout,
        &repo,
        &SEQUENTIAL,
        &tmp.path().join("s.json"),
        &[("AWS_ENDPOINT_URL_ECR", &proxy)],
    );
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains("ServerException: injected); retrying"),
        "{}",
        run.stderr
    );
    let stored = manifest_by_tag(&ecr, &repo, "v1", OCI_MANIFEST).await;
    assert_eq!(stored.as_bytes(), image.manifest.as_slice());
    assert_blobs(&ecr, &repo, &image.blobs).await;
}

/// skopeo, when it is on PATH. `make test` installs it and sets `ECR_TEST_REQUIRE_SKOPEO=1`, so
/// there the archive test below always runs; elsewhere it is skipped with a note.
fn skopeo() -> Option<&'static str> {
    let found = Command::new("skopeo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("ECR_TEST_REQUIRE_SKOPEO").is_none(),
            "ECR_TEST_REQUIRE_SKOPEO is set but skopeo is not on PATH (scripts/tools.sh system)"
        );
        eprintln!("skopeo is not installed: skipping the test of archives it writes");
        return None;
    }
    Some("skopeo")
}

/// A tar holding one file, as an image layer.
fn tar_layer(name: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    b.append_data(&mut header, name, content).unwrap();
    b.into_inner().unwrap()
}

/// Pulls `tag` as a client would: the manifest by tag, then every blob it names through its
/// download URL, each checked against the descriptor's digest and size. Returns the image digest
/// and the manifest.
async fn assert_pullable(
    ecr: &aws_sdk_ecr::Client,
    repo: &str,
    tag: &str,
) -> (String, serde_json::Value) {
    let out = ecr
        .batch_get_image()
        .repository_name(repo)
        .image_ids(ImageIdentifier::builder().image_tag(tag).build())
        .send()
        .await
        .unwrap();
    assert!(out.failures().is_empty(), "{:?}", out.failures());
    let text = out.images()[0].image_manifest().unwrap();
    assert_eq!(
        out.images()[0].image_id().unwrap().image_digest(),
        Some(digest(text.as_bytes()).as_str())
    );
    let manifest: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut descriptors = vec![manifest["config"].clone()];
    descriptors.extend(manifest["layers"].as_array().unwrap().iter().cloned());
    for d in descriptors {
        let want = d["digest"].as_str().unwrap();
        let url = ecr
            .get_download_url_for_layer()
            .repository_name(repo)
            .layer_digest(want)
            .send()
            .await
            .unwrap();
        let data = http_get(url.download_url().unwrap()).await;
        assert_eq!(digest(&data), want);
        assert_eq!(data.len() as u64, d["size"].as_u64().unwrap(), "{want}");
    }
    (digest(text.as_bytes()), manifest)
}

/// The archives real tools write, not only the ones these tests build: skopeo turns an OCI
/// layout into a `docker save` archive and an OCI archive, and each is pushed and pulled back.
#[tokio::test(flavor = "multi_thread")]
async fn archives_written_by_skopeo_push_and_pull_back() {
    let Some(skopeo) = skopeo() else {
        return;
    };
    let server = server();
    let ecr = server.ecr_client();
    let repo = unique("push/skopeo");
    create(&ecr, &repo).await;
    let tmp = temp_dir();
    let layers = [
        tar_layer("etc/hello", b"hello\n"),
        tar_layer("data/blob", &noise(2 * MIB + 4321, 7)),
    ];
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest(l)).collect::<Vec<_>>()},
    }))
    .unwrap();
    let layer_type = "application/vnd.oci.image.layer.v1.tar";
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": layers.iter().map(|l| descriptor(layer_type, l)).collect::<Vec<_>>(),
    }))
    .unwrap();
    let mut blobs = vec![(digest(&config), config)];
    blobs.extend(layers.iter().map(|l| (digest(l), l.clone())));
    let image = Image {
        manifest,
        media_type: OCI_MANIFEST,
        blobs,
    };
    let layout = tmp.path().join("layout");
    write_single(&layout, &image, Some("v1"));

    let source = format!("oci:{}:v1", layout.display());
    for (name, dest) in [
        ("docker.tar", format!("docker-archive:{{}}:{repo}:v1")),
        ("oci.tar", "oci-archive:{}:v1".to_string()),
    ] {
        let path = tmp.path().join(name);
        let out = Command::new(skopeo)
            .args([
                "copy",
                "--quiet",
                &source,
                &dest.replace("{}", path.to_str().unwrap()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy to {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tag = name.replace(".tar", "");
        let run = push(
            &server,
            &path,
            &repo,
            &["--tag", &tag],
            &tmp.path().join("s.json"),
        );
        assert!(run.ok, "{}", run.stderr);
        let (image_digest, pulled) = assert_pullable(&ecr, &repo, &tag).await;
        assert_eq!(run.stdout.trim(), image_digest, "{name}");
        let layer_digests: Vec<&str> = pulled["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap())
            .collect();
        assert_eq!(layer_digests.len(), 2, "{name}");
        if name == "docker.tar" {
            // A docker save archive keeps uncompressed layers as they are (skopeo compresses
            // them when it writes an OCI archive).
            assert_eq!(layer_digests, [digest(&layers[0]), digest(&layers[1])]);
        }
    }
}

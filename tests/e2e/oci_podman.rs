//! podman (rootful, vfs storage, from Debian's packages: scripts/tools.sh system) against the
//! running server's `/v2/`: an image of three layers (one of 64 MiB) is pushed from podman's
//! storage and pulled back into a fresh one, and every digest is compared; a two-platform
//! manifest list is pushed with `podman manifest push --all` and read back. `make test` runs
//! this file on both backends (ECR_TEST_BACKEND) and requires podman when it runs as root
//! (ECR_TEST_REQUIRE_PODMAN); without root podman would need user namespaces, and it is skipped.
//! skopeo (installed with it) puts the test's OCI layouts into podman's storage.

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_ecr::types::ImageIdentifier;
use serde_json::Value;

use crate::common::{Server, create_repository, digest, noise, temp_dir, unique};
use crate::oci_clients::{OCI_MANIFEST, new_layout, write_image, write_layout_index};

const MIB: usize = 1024 * 1024;

/// podman, when it is on PATH and this process runs as root.
fn podman() -> bool {
    let found = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !(found && root) {
        assert!(
            std::env::var_os("ECR_TEST_REQUIRE_PODMAN").is_none(),
            "ECR_TEST_REQUIRE_PODMAN is set but podman is not on PATH or this is not root \
             (scripts/tools.sh system)"
        );
        eprintln!("podman is not installed or this is not root: skipping the podman tests");
    }
    found && root
}

/// One podman storage (vfs) of its own under `dir`: never the machine's.
struct Podman {
    root: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        Podman {
            root: dir.to_path_buf(),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("podman")
            .arg("--root")
            .arg(self.root.join("root"))
            .arg("--runroot")
            .arg(self.root.join("run"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "none"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Copies the image `tag` of an OCI layout into this storage as `localhost/<name>` (podman
    /// would name it after the layout's path, which temporary directories spell in capitals).
    fn load(&self, layout: &Path, tag: &str, name: &str) {
        let dest = format!(
            "containers-storage:[vfs@{}+{}]localhost/{name}",
            self.root.join("root").display(),
            self.root.join("run").display()
        );
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--preserve-digests"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(dest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy into podman's storage: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn inspect(&self, image: &str) -> Value {
        let out = self.run(&["image", "inspect", image]);
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    }
}

/// A layer podman can unpack: an uncompressed tar holding one file of `len` bytes.
pub(crate) fn tar_layer(name: &str, len: usize, seed: u64) -> Vec<u8> {
    let data = noise(len, seed);
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_data(&mut header, name, data.as_slice())
        .unwrap();
    builder.into_inner().unwrap()
}

fn manifest_digest(ecr_manifest: &str) -> String {
    digest(ecr_manifest.as_bytes())
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

/// podman pushes an image of three layers (one of 64 MiB) from its storage, pulls it back into a
/// fresh storage: the same image id (config digest), the same layer contents (diff ids), the
/// manifest digest the push reported; the ECR API reads the same manifest.
#[tokio::test(flavor = "multi_thread")]
async fn podman_pushes_and_pulls_an_image_of_several_layers() {
    if !podman() {
        return;
    }
    let server = Server::start(&[]);
    let host = server.endpoint.trim_start_matches("http://").to_string();
    let ecr = server.ecr_client();
    let repo = unique("oci/podman");
    create_repository(&ecr, &repo).await;
    let tmp = temp_dir();
    let layout = tmp.path().join("src");
    new_layout(&layout);
    let layers = vec![
        tar_layer("big", 64 * MIB + 123, 11),
        tar_layer("medium", 3 * MIB, 12),
        tar_layer("small", 1000, 13),
    ];
    let manifest = write_image(&layout, "amd64", &layers);
    write_layout_index(&layout, &manifest, OCI_MANIFEST, "v1");
    let config: Value = serde_json::from_slice(&manifest).unwrap();
    let config = config["config"]["digest"].as_str().unwrap().to_string();
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();

    let pusher = Podman::new(&tmp.path().join("pusher"));
    pusher.load(&layout, "v1", "src:v1");
    let image = format!("{host}/{repo}:v1");
    let digest_file = tmp.path().join("pushed-digest");
    pusher.run(&[
        "push",
        "--quiet",
        "--tls-verify=false",
        "--digestfile",
        digest_file.to_str().unwrap(),
        &config["sha256:".len()..],
        &image,
    ]);
    let pushed = std::fs::read_to_string(&digest_file).unwrap();
    assert!(pushed.starts_with("sha256:"), "digest file: {pushed:?}");
    // The ECR API holds the manifest podman pushed, under its digest.
    let stored = ecr_manifest(&ecr, &repo, "v1").await;
    assert_eq!(manifest_digest(&stored), pushed.trim());
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["config"]["digest"], config.as_str());
    assert_eq!(stored["layers"].as_array().unwrap().len(), layers.len());

    // Pulled into a storage that has never seen the image.
    let puller = Podman::new(&tmp.path().join("puller"));
    puller.run(&["pull", "--quiet", "--tls-verify=false", &image]);
    let pulled = puller.inspect(&image);
    assert_eq!(format!("sha256:{}", pulled["Id"].as_str().unwrap()), config);
    assert_eq!(pulled["Digest"], pushed.trim());
    let got: Vec<&str> = pulled["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(got, diff_ids, "the pulled layers' contents differ");
}

/// `podman manifest push --all` pushes a two-platform manifest list; the registry answers it
/// as pushed, and podman pulls the platform it asks for.
#[tokio::test(flavor = "multi_thread")]
async fn podman_pushes_and_pulls_a_manifest_list() {
    if !podman() {
        return;
    }
    let server = Server::start(&[]);
    let host = server.endpoint.trim_start_matches("http://").to_string();
    let ecr = server.ecr_client();
    let repo = unique("oci/podman-list");
    create_repository(&ecr, &repo).await;
    let tmp = temp_dir();
    let podman = Podman::new(&tmp.path().join("storage"));
    let mut configs = Vec::new();
    for (arch, seed) in [("amd64", 21), ("arm64", 22)] {
        let layout = tmp.path().join(arch);
        new_layout(&layout);
        let layers = vec![tar_layer(arch, MIB, seed), tar_layer("common", 1000, 23)];
        let manifest = write_image(&layout, arch, &layers);
        write_layout_index(&layout, &manifest, OCI_MANIFEST, arch);
        let m: Value = serde_json::from_slice(&manifest).unwrap();
        configs.push((arch, m["config"]["digest"].as_str().unwrap().to_string()));
        podman.load(&layout, arch, &format!("src:{arch}"));
    }
    podman.run(&["manifest", "create", "localhost/list"]);
    for (_, config) in &configs {
        podman.run(&[
            "manifest",
            "add",
            "localhost/list",
            &format!("containers-storage:{}", &config["sha256:".len()..]),
        ]);
    }
    let list = format!("{host}/{repo}:multi");
    podman.run(&[
        "manifest",
        "push",
        "--all",
        "--tls-verify=false",
        "localhost/list",
        &format!("docker://{list}"),
    ]);
    let stored: Value = serde_json::from_str(&ecr_manifest(&ecr, &repo, "multi").await).unwrap();
    let platforms: Vec<&str> = stored["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"]);

    let puller = Podman::new(&tmp.path().join("puller"));
    puller.run(&[
        "pull",
        "--quiet",
        "--tls-verify=false",
        "--arch",
        "arm64",
        &list,
    ]);
    let pulled = puller.inspect(&list);
    assert_eq!(
        format!("sha256:{}", pulled["Id"].as_str().unwrap()),
        configs[1].1,
        "podman did not pull the arm64 image of the list"
    );
}

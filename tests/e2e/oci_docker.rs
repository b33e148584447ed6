//! The docker CLI against a dockerd of the test's own, pushing to and pulling from the running
//! server's `/v2/`: an image of three layers (one of 64 MiB) is loaded into docker without a build
//! (skopeo writes it as a `docker load` archive), pushed, removed, pulled back, and every digest is
//! compared; a two-platform manifest list is pushed with `docker manifest` and pulled by digest for
//! the platform asked; with `ECR_AUTH=sigv4`, `aws ecr get-login-password | docker login` lets a
//! key push, and a pull-only key's password pulls but cannot push.
//!
//! The daemon is Debian's (scripts/tools.sh system: docker.io and containerd), run as root with
//! its own data, exec and containerd state in a temporary directory, vfs storage, no iptables, no
//! bridge and its own containerd, and stopped by PID; the CLI keeps its configuration (logins,
//! manifest lists) in a temporary DOCKER_CONFIG, never the user's. `make test` runs this file on
//! both backends (ECR_TEST_BACKEND) and, as root, requires docker (ECR_TEST_REQUIRE_DOCKER): the
//! tests are skipped, with the reason, only where the binaries are missing, this is not root, or
//! the daemon cannot start on the machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ecr::types::ImageIdentifier;
use serde_json::Value;

use crate::auth::{client, create_key, start};
use crate::common::{Server, create_repository, digest, http_get, temp_dir, unique};
use crate::oci_clients::{OCI_MANIFEST, new_layout, skopeo, write_image, write_layout_index};
use crate::oci_podman::tar_layer;

const MIB: usize = 1024 * 1024;
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// How long the daemons get to answer after they start, and to exit when asked.
const START_WAIT: Duration = Duration::from_secs(60);
const STOP_WAIT: Duration = Duration::from_secs(20);

/// Debian's path of a program (scripts/tools.sh system installs it there), else the first on PATH:
/// another docker client earlier on PATH is not the one the daemon was installed with.
fn program(debian: &str) -> Option<PathBuf> {
    let debian = Path::new(debian);
    if debian.is_file() {
        return Some(debian.to_path_buf());
    }
    let name = debian.file_name()?;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The last lines of a daemon's log: the reason it did not start.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Asks `child` to exit (SIGTERM), waits a bounded time, then kills it.
fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `ready` until it holds, `child` exits (an error with its log) or [`START_WAIT`] passes.
fn wait_ready(
    what: &str,
    child: &mut Child,
    log: &Path,
    ready: impl Fn() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited at start ({status}): {}",
                log_tail(log)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not answer in {} s: {}",
                START_WAIT.as_secs(),
                log_tail(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Why there is no daemon: the machine lacks what it needs (required by `make test` as root), or
/// the daemon did not start on it.
enum Unavailable {
    Missing(String),
    WontRun(String),
}

/// A containerd of its own (root, state, sockets, `opt` under `dir`; its CRI plugin off): the one
/// [`Dockerd`] runs with, and what `ctr` talks to.
struct Containerd {
    child: Child,
    ctr: PathBuf,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Result<Containerd, Unavailable> {
        if !is_root() {
            return Err(Unavailable::Missing("this is not root".into()));
        }
        let containerd = program("/usr/bin/containerd")
            .ok_or_else(|| Unavailable::Missing("containerd is not installed".into()))?;
        let ctr = program("/usr/bin/ctr")
            .ok_or_else(|| Unavailable::Missing("ctr is not installed".into()))?;
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {socket:?}\n[ttrpc]\n  address = {ttrpc:?}\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt:?}\n",
                root = dir.join("root"),
                state = dir.join("state"),
                ttrpc = dir.join("containerd.sock.ttrpc"),
                opt = dir.join("opt"),
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let mut child = Command::new(containerd)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .map_err(|e| Unavailable::WontRun(format!("containerd: {e}")))?;
        let ready = || {
            Command::new(&ctr)
                .arg("--address")
                .arg(&socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if let Err(e) = wait_ready("containerd", &mut child, &log, ready) {
            stop(&mut child);
            return Err(Unavailable::WontRun(e));
        }
        Ok(Containerd { child, ctr, socket })
    }

    /// `ctr --namespace test <args>` against this containerd, which must succeed: its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "test"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A dockerd of the test's own and the docker CLI pointed at it; stopped (then its containerd)
/// by PID when dropped, and its state removed with its directory.
pub(crate) struct Dockerd {
    child: Child,
    docker: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    _containerd: Containerd,
    // Last: removed after both daemons have stopped.
    _dir: tempfile::TempDir,
}

impl Dockerd {
    fn start() -> Result<Dockerd, Unavailable> {
        if !is_root() {
            return Err(Unavailable::Missing("this is not root".into()));
        }
        let dockerd = program("/usr/sbin/dockerd")
            .ok_or_else(|| Unavailable::Missing("dockerd is not installed".into()))?;
        let docker = program("/usr/bin/docker")
            .ok_or_else(|| Unavailable::Missing("docker is not installed".into()))?;
        let dir = temp_dir();
        let containerd = Containerd::start(&dir.path().join("containerd"))?;
        let socket = dir.path().join("docker.sock");
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        // No daemon.json of the machine's: an empty one of its own.
        let daemon_json = dir.path().join("daemon.json");
        std::fs::write(&daemon_json, "{}").unwrap();
        let log = dir.path().join("dockerd.log");
        let mut child = Command::new(dockerd)
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("--config-file")
            .arg(&daemon_json)
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--containerd")
            .arg(&containerd.socket)
            .args(["--storage-driver", "vfs"])
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
            ])
            .args(["--ip-masq=false", "--bridge=none", "--userland-proxy=false"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .map_err(|e| Unavailable::WontRun(format!("dockerd: {e}")))?;
        let ready = || {
            Command::new(&docker)
                .arg("--host")
                .arg(format!("unix://{}", socket.display()))
                .arg("version")
                .env("DOCKER_CONFIG", &config)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if let Err(e) = wait_ready("dockerd", &mut child, &log, ready) {
            stop(&mut child);
            return Err(Unavailable::WontRun(e));
        }
        Ok(Dockerd {
            child,
            docker,
            socket,
            config,
            _containerd: containerd,
            _dir: dir,
        })
    }

    /// `docker <args>` against this daemon, with this test's DOCKER_CONFIG.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.docker);
        cmd.arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", &self.config)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        cmd
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `docker <args>`, which must succeed: its stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker login --username AWS --password-stdin <host>` with `password`.
    fn login(&self, host: &str, password: &str) -> Output {
        let mut child = self
            .command(&["login", "--username", "AWS", "--password-stdin", host])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.trim().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn inspect(&self, image: &str) -> Value {
        let out = self.run(&["image", "inspect", image]);
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    }

    /// Loads the image `tag` of an OCI layout as `localhost/src:<tag>` (skopeo writes the
    /// archive `docker load` reads); returns its image id.
    fn load(&self, layout: &Path, tag: &str, work: &Path) -> String {
        let archive = work.join(format!("{tag}.tar"));
        let out = Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!(
                "docker-archive:{}:localhost/src:{tag}",
                archive.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy to a docker archive: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.run(&["load", "--quiet", "--input", archive.to_str().unwrap()]);
        std::fs::remove_file(&archive).unwrap();
        self.inspect(&format!("localhost/src:{tag}"))["Id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `docker push <image>`: the manifest digest it reports.
    fn push(&self, image: &str) -> String {
        let out = self.run(&["push", image]);
        out.lines()
            .find_map(|l| l.split("digest: ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no digest in docker push's output: {out}"))
            .to_string()
    }

    /// No image left in this daemon.
    fn remove_all(&self) {
        let ids = self.run(&["images", "--quiet", "--no-trunc"]);
        let mut ids: Vec<&str> = ids.split_whitespace().collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            let mut args = vec!["rmi", "--force"];
            args.extend(ids);
            self.run(&args);
        }
        assert_eq!(self.run(&["images", "--quiet"]).trim(), "", "images left");
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A daemon, or None (the reason printed) where the machine cannot run one; with
/// ECR_TEST_REQUIRE_DOCKER (`make test` as root) a missing docker or containerd fails.
fn available<T>(daemon: Result<T, Unavailable>) -> Option<T> {
    match daemon {
        Ok(d) => Some(d),
        Err(Unavailable::Missing(reason)) => {
            assert!(
                std::env::var_os("ECR_TEST_REQUIRE_DOCKER").is_none(),
                "ECR_TEST_REQUIRE_DOCKER is set but {reason} (scripts/tools.sh system)"
            );
            eprintln!("skipping the docker and containerd tests: {reason}");
            None
        }
        Err(Unavailable::WontRun(reason)) => {
            eprintln!(
                "skipping the docker and containerd tests: the daemon cannot run on this \
                 machine: {reason}"
            );
            None
        }
    }
}

/// A dockerd of this test's own (skopeo writes the archives it loads).
fn dockerd() -> Option<Dockerd> {
    if !skopeo() {
        return None;
    }
    available(Dockerd::start())
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

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// docker pushes an image of three layers (one of 64 MiB), and pulls it back into a daemon that
/// no longer holds it: the manifest digest docker reported is the one the registry serves and
/// the ECR API reads, every layer the manifest names is served with its digest, and the pulled
/// image has the pushed image's id (config digest) and layer contents (diff ids).
#[tokio::test(flavor = "multi_thread")]
async fn docker_pushes_and_pulls_an_image_of_several_layers() {
    let Some(docker) = dockerd() else {
        return;
    };
    let server = Server::start(&[]);
    let host = server.endpoint.trim_start_matches("http://").to_string();
    let ecr = server.ecr_client();
    let repo = unique("oci/docker");
    create_repository(&ecr, &repo).await;
    let tmp = temp_dir();
    let layout = tmp.path().join("src");
    new_layout(&layout);
    let layers = vec![
        tar_layer("big", 64 * MIB + 321, 31),
        tar_layer("medium", 2 * MIB, 32),
        tar_layer("small", 1000, 33),
    ];
    let manifest = write_image(&layout, "amd64", &layers);
    write_layout_index(&layout, &manifest, OCI_MANIFEST, "v1");
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    let id = docker.load(&layout, "v1", tmp.path());
    assert_eq!(strings(&docker.inspect(&id)["RootFS"]["Layers"]), diff_ids);

    let image = format!("{host}/{repo}:v1");
    docker.run(&["tag", "localhost/src:v1", &image]);
    let pushed = docker.push(&image);

    // The registry holds the manifest docker pushed, under the digest docker reported.
    let stored = ecr_manifest(&ecr, &repo, "v1").await;
    assert_eq!(digest(stored.as_bytes()), pushed);
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["mediaType"], DOCKER_MANIFEST);
    assert_eq!(stored["config"]["digest"], id.as_str());
    let blobs: Vec<String> = stored["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(blobs.len(), layers.len());
    for blob in blobs.iter().chain([&id]) {
        let (status, body) = http_get(&format!("{}/v2/{repo}/blobs/{blob}", server.endpoint)).await;
        assert_eq!(status, 200, "GET blob {blob}");
        assert_eq!(&digest(&body), blob, "the registry serves other bytes");
    }

    // Pulled into a daemon that holds none of it.
    docker.remove_all();
    docker.run(&["pull", "--quiet", &image]);
    let pulled = docker.inspect(&image);
    assert_eq!(pulled["Id"], id.as_str(), "the pulled image id differs");
    assert_eq!(
        strings(&pulled["RepoDigests"]),
        [format!("{host}/{repo}@{pushed}")]
    );
    assert_eq!(
        strings(&pulled["RootFS"]["Layers"]),
        diff_ids,
        "the pulled layers' contents differ"
    );
    // And by digest.
    docker.remove_all();
    docker.run(&["pull", "--quiet", &format!("{host}/{repo}@{pushed}")]);
    let pulled = docker.inspect(&format!("{host}/{repo}@{pushed}"));
    assert_eq!(pulled["Id"], id.as_str());
}

/// `docker manifest create` + `push` of a two-platform manifest list: the registry holds the
/// list docker pushed, naming the two images docker pushed; `docker manifest inspect` reads it
/// back, and `docker pull --platform linux/arm64 <repo>@<list digest>` pulls the arm64 image.
#[tokio::test(flavor = "multi_thread")]
async fn docker_pushes_and_pulls_a_manifest_list() {
    let Some(docker) = dockerd() else {
        return;
    };
    let server = Server::start(&[]);
    let host = server.endpoint.trim_start_matches("http://").to_string();
    let ecr = server.ecr_client();
    let repo = unique("oci/docker-list");
    create_repository(&ecr, &repo).await;
    let tmp = temp_dir();
    let mut images = Vec::new();
    for (arch, seed) in [("amd64", 41), ("arm64", 42)] {
        let layout = tmp.path().join(arch);
        new_layout(&layout);
        let layers = vec![tar_layer(arch, MIB, seed), tar_layer("common", 1000, 43)];
        let manifest = write_image(&layout, arch, &layers);
        write_layout_index(&layout, &manifest, OCI_MANIFEST, arch);
        let id = docker.load(&layout, arch, tmp.path());
        let image = format!("{host}/{repo}:{arch}");
        docker.run(&["tag", &format!("localhost/src:{arch}"), &image]);
        let pushed = docker.push(&image);
        images.push((arch, id, pushed));
    }
    let list = format!("{host}/{repo}:multi");
    let mut create = vec!["manifest", "create", "--insecure", &list];
    let refs: Vec<String> = images
        .iter()
        .map(|(arch, _, _)| format!("{host}/{repo}:{arch}"))
        .collect();
    create.extend(refs.iter().map(String::as_str));
    docker.run(&create);
    let out = docker.run(&["manifest", "push", "--insecure", &list]);
    let list_digest = out
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in docker manifest push's output: {out}"))
        .to_string();

    let stored = ecr_manifest(&ecr, &repo, "multi").await;
    assert_eq!(digest(stored.as_bytes()), list_digest);
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["mediaType"], DOCKER_LIST);
    let mut named: Vec<(String, String)> = stored["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    named.sort();
    let expected: Vec<(String, String)> = images
        .iter()
        .map(|(arch, _, pushed)| (arch.to_string(), pushed.clone()))
        .collect();
    assert_eq!(named, expected);
    let inspected: Value =
        serde_json::from_str(&docker.run(&["manifest", "inspect", "--insecure", &list])).unwrap();
    assert_eq!(inspected["manifests"].as_array().unwrap().len(), 2);

    docker.remove_all();
    let by_digest = format!("{host}/{repo}@{list_digest}");
    docker.run(&["pull", "--quiet", "--platform", "linux/arm64", &by_digest]);
    let pulled = docker.inspect(&by_digest);
    assert_eq!(pulled["Architecture"], "arm64");
    assert_eq!(
        pulled["Id"], images[1].1,
        "docker did not pull the arm64 image of the list"
    );
}

/// The registry password of a key: `aws ecr get-login-password` when the aws CLI is on PATH
/// (`make test` puts it there), else GetAuthorizationToken through aws-sdk-ecr.
async fn login_password(endpoint: &str, id: &str, secret: &str) -> String {
    if let Some(aws) = program("/usr/bin/aws") {
        let out = Command::new(aws)
            .args(["ecr", "get-login-password", "--endpoint-url", endpoint])
            .args(["--region", "us-east-1"])
            .env("AWS_ACCESS_KEY_ID", id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "aws ecr get-login-password: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return String::from_utf8(out.stdout).unwrap().trim().to_string();
    }
    use base64::Engine;
    let out = client(endpoint, id, secret)
        .get_authorization_token()
        .send()
        .await
        .unwrap();
    let token = out.authorization_data()[0].authorization_token().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .unwrap();
    String::from_utf8(decoded)
        .unwrap()
        .strip_prefix("AWS:")
        .unwrap()
        .to_string()
}

/// With `ECR_AUTH=sigv4`: docker is refused without a login; `aws ecr get-login-password |
/// docker login --username AWS --password-stdin` with a pushing key lets docker push; a
/// pull-only key's login pulls that image but cannot push.
#[tokio::test(flavor = "multi_thread")]
async fn docker_logs_in_with_a_keys_password_and_its_permissions_apply() {
    let Some(docker) = dockerd() else {
        return;
    };
    let data = temp_dir();
    let (push_id, push_secret) = create_key(data.path(), &["--allow", "admin"]);
    let (pull_id, pull_secret) = create_key(data.path(), &["--allow", "pull"]);
    let server = start(data).expect("start with sigv4");
    let e = server.endpoint.clone();
    let host = e.trim_start_matches("http://").to_string();
    let repo = unique("oci/docker-auth");
    client(&e, &push_id, &push_secret)
        .create_repository()
        .repository_name(&repo)
        .send()
        .await
        .unwrap();
    let tmp = temp_dir();
    let layout = tmp.path().join("src");
    new_layout(&layout);
    let layers = vec![tar_layer("data", MIB, 51)];
    let manifest = write_image(&layout, "amd64", &layers);
    write_layout_index(&layout, &manifest, OCI_MANIFEST, "v1");
    let id = docker.load(&layout, "v1", tmp.path());
    let image = format!("{host}/{repo}:v1");
    docker.run(&["tag", "localhost/src:v1", &image]);

    // Without a login: refused.
    let out = docker.output(&["push", &image]);
    assert!(!out.status.success(), "an anonymous docker push succeeded");

    // A wrong password: no login.
    let out = docker.login(&host, "elu1.bm90.aXQ");
    assert!(!out.status.success(), "docker login took a wrong password");

    let push_pw = login_password(&e, &push_id, &push_secret).await;
    let out = docker.login(&host, &push_pw);
    assert!(
        out.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = docker.push(&image);

    // The pull-only key: pulls the image, cannot push another tag.
    docker.run(&["logout", &host]);
    let pull_pw = login_password(&e, &pull_id, &pull_secret).await;
    let out = docker.login(&host, &pull_pw);
    assert!(
        out.status.success(),
        "docker login with the pull key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = format!("{host}/{repo}:v2");
    docker.run(&["tag", "localhost/src:v1", &other]);
    let out = docker.output(&["push", &other]);
    assert!(!out.status.success(), "a pull-only key pushed");
    let tags = client(&e, &push_id, &push_secret)
        .list_images()
        .repository_name(&repo)
        .send()
        .await
        .unwrap();
    let tags: Vec<&str> = tags
        .image_ids()
        .iter()
        .filter_map(|i| i.image_tag())
        .collect();
    assert_eq!(tags, ["v1"], "the pull-only key's push left a tag");
    docker.remove_all();
    docker.run(&["pull", "--quiet", &image]);
    let pulled = docker.inspect(&image);
    assert_eq!(pulled["Id"], id.as_str());
    assert_eq!(
        strings(&pulled["RepoDigests"]),
        [format!("{host}/{repo}@{pushed}")]
    );

    // Logged out, the pull is refused too.
    docker.run(&["logout", &host]);
    docker.remove_all();
    let out = docker.output(&["pull", "--quiet", &image]);
    assert!(!out.status.success(), "an anonymous docker pull succeeded");
}

/// containerd's `ctr` pulls an image skopeo pushed (every blob checked, the layers unpacked into
/// the native snapshotter) and pushes it again under another tag: the image ctr names has the
/// pushed manifest's digest, its content store holds every pushed blob, and the tag ctr pushed
/// names the same manifest in the ECR API.
#[tokio::test(flavor = "multi_thread")]
async fn ctr_pulls_and_pushes_an_image() {
    if !skopeo() {
        return;
    }
    let tmp = temp_dir();
    let Some(ctr) = available(Containerd::start(&tmp.path().join("containerd"))) else {
        return;
    };
    let server = Server::start(&[]);
    let host = server.endpoint.trim_start_matches("http://").to_string();
    let ecr = server.ecr_client();
    let repo = unique("oci/ctr");
    create_repository(&ecr, &repo).await;
    let layout = tmp.path().join("src");
    new_layout(&layout);
    let layers = vec![tar_layer("a", 3 * MIB, 61), tar_layer("b", 1000, 62)];
    let manifest = write_image(&layout, "amd64", &layers);
    write_layout_index(&layout, &manifest, OCI_MANIFEST, "v1");
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    let mut expected = vec![
        digest(&manifest),
        m["config"]["digest"].as_str().unwrap().to_string(),
    ];
    expected.extend(layers.iter().map(|l| digest(l)));
    let image = format!("{host}/{repo}:v1");
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    ctr.run(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "native",
        &image,
    ]);
    let listed = ctr.run(&["images", "ls"]);
    let line = listed
        .lines()
        .find(|l| l.split_whitespace().next() == Some(image.as_str()))
        .unwrap_or_else(|| panic!("ctr lists no {image}: {listed}"));
    assert_eq!(line.split_whitespace().nth(2), Some(expected[0].as_str()));
    let content = ctr.run(&["content", "ls", "--quiet"]);
    let held: Vec<&str> = content.split_whitespace().collect();
    for d in &expected {
        assert!(held.contains(&d.as_str()), "ctr's content store lacks {d}");
    }

    let again = format!("{host}/{repo}:v2");
    ctr.run(&["images", "tag", &image, &again]);
    ctr.run(&["images", "push", "--plain-http", &again]);
    let stored = ecr_manifest(&ecr, &repo, "v2").await;
    assert_eq!(digest(stored.as_bytes()), expected[0]);
}

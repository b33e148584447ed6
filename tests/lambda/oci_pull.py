"""Real registry clients through the Lambda front door: run by invoke_fixtures.py on its watcher.

`cargo lambda watch` serves the function's URL at its root, so a registry client reaches `/v2/`
at http://127.0.0.1:<port>/ as it would a Function URL. On the AWS backend (the local S3 and
DynamoDB servers):

- skopeo pushes a two-platform index whose images have three layers each (every blob fits a
  request under the 6 MB cap) and pulls it back with `--all`;
- `ecr-layer-upload push` pushes an image with a 12 MiB layer through the ECR API of the same
  function (parts sized to the cap), which no function answer could carry whole;
- a blob GET is answered 307 with a presigned URL of the S3 server, and skopeo (and podman,
  rootful with vfs storage, and containerd's ctr against a containerd of its own, when they are
  installed and this runs as root) pulls that image by following it: no function answer could
  carry the 12 MiB layer itself;
- every pulled blob is named by its content and every pushed digest is among them.

Python 3.11 standard library; needs skopeo (scripts/tools.sh system) and the test build's binary
(ECR_BIN, else target/debug/ecr-layer-upload); podman and containerd (same packages) are required
where ECR_TEST_REQUIRE_PODMAN and ECR_TEST_REQUIRE_DOCKER say so.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
CLIENT_TIMEOUT_SECS = 600
# How long a containerd of the test's own gets to answer after it starts, and to exit when asked.
DAEMON_WAIT_SECS = 60
# Debian's paths (scripts/tools.sh system), before any other on PATH.
CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
ROOT = Path(__file__).resolve().parents[2]


def compact(doc) -> bytes:
    """JSON as registry clients write it (skopeo re-encodes other spellings when it copies)."""
    return json.dumps(doc, separators=(",", ":")).encode()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data)}


def tar_layer(size: int) -> bytes:
    """A layer podman can unpack: an uncompressed tar holding one file of `size` random bytes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("data")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return out.getvalue()


def new_layout(path: Path) -> None:
    (path / "blobs" / "sha256").mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def write_blob(layout: Path, data: bytes) -> None:
    (layout / "blobs" / "sha256" / digest(data)[len("sha256:"):]).write_bytes(data)


def write_image(layout: Path, arch: str, layers: list[bytes]) -> bytes:
    """A single-platform image written into `layout`; returns its manifest."""
    config = compact({"architecture": arch, "os": "linux", "config": {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [digest(l) for l in layers]}})
    manifest = compact({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": descriptor(OCI_CONFIG, config),
                        "layers": [descriptor(OCI_LAYER, l) for l in layers]})
    for blob in [config, *layers, manifest]:
        write_blob(layout, blob)
    return manifest


def name_top(layout: Path, top: bytes, media_type: str, tag: str) -> None:
    d = descriptor(media_type, top)
    d["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [d]}))


def blobs_of(layout: Path) -> set[str]:
    """The digests a pulled layout holds, each checked against its content."""
    held = set()
    for f in (layout / "blobs" / "sha256").iterdir():
        d = digest(f.read_bytes())
        assert d == "sha256:" + f.name, f"pulled blob {f.name} holds {d}"
        held.add(d)
    return held


def run(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT_SECS)
    assert proc.returncode == 0, \
        f"{' '.join(cmd)} exited {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}"
    return proc.stdout


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002 - the 3xx is the answer
        return None


def skopeo_found() -> bool:
    """skopeo on PATH; without it the steps are skipped, unless ECR_TEST_REQUIRE_SKOPEO is set
    (`make test` sets it and installs skopeo)."""
    if shutil.which("skopeo"):
        return True
    assert not os.environ.get("ECR_TEST_REQUIRE_SKOPEO"), \
        "ECR_TEST_REQUIRE_SKOPEO is set but skopeo is not on PATH (scripts/tools.sh system)"
    return False


def podman_found() -> bool:
    """podman on PATH and root (rootful podman; tests/e2e/oci_podman.rs says why); required
    when ECR_TEST_REQUIRE_PODMAN is set."""
    if shutil.which("podman") and os.geteuid() == 0:
        return True
    assert not os.environ.get("ECR_TEST_REQUIRE_PODMAN"), \
        "ECR_TEST_REQUIRE_PODMAN is set but podman is not on PATH or this is not root"
    return False


def debian_or_path(path: str) -> str | None:
    return path if os.access(path, os.X_OK) else shutil.which(Path(path).name)


def containerd_found() -> bool:
    """containerd and ctr installed and root (containerd's snapshots need it); required when
    ECR_TEST_REQUIRE_DOCKER is set (`make test` as root; tests/e2e/oci_docker.rs)."""
    if debian_or_path(CONTAINERD) and debian_or_path(CTR) and os.geteuid() == 0:
        return True
    assert not os.environ.get("ECR_TEST_REQUIRE_DOCKER"), \
        "ECR_TEST_REQUIRE_DOCKER is set but containerd or ctr is not installed or this is not root"
    return False


class Containerd:
    """A containerd of its own under `dir` (root, state, sockets, `opt`; no CRI plugin), stopped
    by PID and its directory removed on exit; `ctr(...)` runs ctr against it."""

    def __init__(self, dir: Path, env: dict[str, str]):
        self.dir = dir
        self.env = env
        self.socket = dir / "containerd.sock"
        self.proc: subprocess.Popen | None = None
        self.log = dir / "containerd.log"

    def __enter__(self) -> "Containerd":
        self.dir.mkdir(parents=True)
        config = self.dir / "config.toml"
        config.write_text(
            "version = 2\n"
            f"root = {json.dumps(str(self.dir / 'root'))}\n"
            f"state = {json.dumps(str(self.dir / 'state'))}\n"
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f"[grpc]\n  address = {json.dumps(str(self.socket))}\n"
            f"[ttrpc]\n  address = {json.dumps(str(self.socket) + '.ttrpc')}\n"
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f"  path = {json.dumps(str(self.dir / 'opt'))}\n")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([debian_or_path(CONTAINERD), "--config", str(config)],
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + DAEMON_WAIT_SECS
        while subprocess.run(self.command("version"), capture_output=True,
                             timeout=DAEMON_WAIT_SECS).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace").splitlines()[-8:]
                self.__exit__()
                raise AssertionError("containerd did not start: " + "\n".join(tail))
            time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(DAEMON_WAIT_SECS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def command(self, *args: str) -> list[str]:
        return [debian_or_path(CTR), "--address", str(self.socket), "--namespace", "test", *args]

    def ctr(self, *args: str) -> str:
        return run(self.command(*args), self.env)


class OciThroughLambda:
    """The steps; `step(label, fn)` is the caller's way of counting passes and failures."""

    def __init__(self, port: int, env: dict[str, str], tmp: Path, s3_endpoint: str):
        self.port = port
        self.env = env
        self.tmp = tmp
        self.s3 = s3_endpoint.rstrip("/")
        self.base = f"http://{HOST}:{port}"
        self.registry = f"{HOST}:{port}"
        self.repo = f"oci/lambda-{secrets.token_hex(4)}"
        self.bin = os.environ.get("ECR_BIN") or str(ROOT / "target" / "debug" / "ecr-layer-upload")
        # Incompressible, as layers are; each blob under the cap of a request through Lambda.
        self.platforms = {arch: [tar_layer(1024), tar_layer(1024 * 1024),
                                 tar_layer(4 * 1024 * 1024)]
                          for arch in ("amd64", "arm64")}
        self.big_layers = [tar_layer(12 * 1024 * 1024), tar_layer(64 * 1024)]
        self.pushed: dict[str, set[str]] = {}
        self.big_manifest = ""

    def steps(self):
        yield "/v2/ CreateRepository through the function URL", self.create_repository
        yield "/v2/ skopeo pushes a two-platform index through Lambda", self.skopeo_push_index
        yield "/v2/ skopeo pulls the index back with --all", self.skopeo_pull_index
        yield "/v2/ ecr-layer-upload push: an image with a 12 MiB layer", self.push_big
        yield "/v2/ a blob GET answers 307 to the S3 server's presigned URL", self.redirect
        yield "/v2/ skopeo pulls the 12 MiB layer by following the 307", self.skopeo_pull_big
        if podman_found():
            yield "/v2/ podman pulls the 12 MiB layer by following the 307", self.podman_pull_big
        if containerd_found():
            yield "/v2/ ctr pulls the 12 MiB layer by following the 307", self.ctr_pull_big

    def create_repository(self) -> None:
        req = urllib.request.Request(
            self.base + "/", method="POST",
            data=json.dumps({"repositoryName": self.repo}).encode(),
            headers={"content-type": "application/x-amz-json-1.1",
                     "x-amz-target": "AmazonEC2ContainerRegistry_V20150921.CreateRepository"})
        with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT_SECS) as r:
            doc = json.loads(r.read())
        assert doc["repository"]["repositoryName"] == self.repo, doc

    def skopeo_push_index(self) -> None:
        layout = self.tmp / "oci-push-index"
        new_layout(layout)
        manifests = []
        expected = set()
        for arch, layers in self.platforms.items():
            m = write_image(layout, arch, layers)
            d = descriptor(OCI_MANIFEST, m)
            d["platform"] = {"architecture": arch, "os": "linux"}
            manifests.append(d)
            expected |= {digest(m), *(digest(l) for l in layers)}
            expected.add(json.loads(m)["config"]["digest"])
        index = compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        write_blob(layout, index)
        name_top(layout, index, OCI_INDEX, "multi")
        expected.add(digest(index))
        self.pushed["multi"] = expected
        run(["skopeo", "copy", "--quiet", "--preserve-digests", "--all",
             "--dest-tls-verify=false", f"oci:{layout}:multi",
             f"docker://{self.registry}/{self.repo}:multi"], self.env)
        raw = run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                   f"docker://{self.registry}/{self.repo}:multi"], self.env)
        assert digest(raw.encode()) == digest(index), "the index read back is not the pushed one"

    def skopeo_pull_index(self) -> None:
        out = self.tmp / "oci-pull-index"
        run(["skopeo", "copy", "--quiet", "--preserve-digests", "--all",
             "--src-tls-verify=false", f"docker://{self.registry}/{self.repo}:multi", f"oci:{out}:multi"], self.env)
        missing = self.pushed["multi"] - blobs_of(out)
        assert not missing, f"the pulled layout lacks {sorted(missing)}"

    def push_big(self) -> None:
        assert Path(self.bin).is_file(), \
            f"{self.bin} is missing: `cargo build` first (or set ECR_BIN)"
        layout = self.tmp / "oci-push-big"
        new_layout(layout)
        manifest = write_image(layout, "amd64", self.big_layers)
        name_top(layout, manifest, OCI_MANIFEST, "big")
        run([self.bin, "push", "--endpoint-url", self.base, "--repository", self.repo,
             "--tag", "big", "--state-file", str(self.tmp / "push-state.json"), str(layout)],
            self.env)
        m = json.loads(manifest)
        self.big_manifest = digest(manifest)
        self.pushed["big"] = {digest(manifest), m["config"]["digest"],
                              *(l["digest"] for l in m["layers"])}

    def redirect(self) -> None:
        layer = digest(self.big_layers[0])
        opener = urllib.request.build_opener(NoRedirect)
        try:
            opener.open(f"{self.base}/v2/{self.repo}/blobs/{layer}", timeout=CLIENT_TIMEOUT_SECS)
            raise AssertionError("the blob GET was not redirected")
        except urllib.error.HTTPError as e:
            assert e.code == 307, f"blob GET answered {e.code}, expected 307"
            location = e.headers.get("location", "")
        assert location.startswith(self.s3 + "/"), f"Location {location[:200]!r} is not on {self.s3}"
        with urllib.request.urlopen(location, timeout=CLIENT_TIMEOUT_SECS) as r:
            assert digest(r.read()) == layer, "the presigned URL does not serve the layer"

    def skopeo_pull_big(self) -> None:
        out = self.tmp / "oci-pull-big"
        run(["skopeo", "copy", "--quiet", "--preserve-digests",
             "--src-tls-verify=false", f"docker://{self.registry}/{self.repo}:big", f"oci:{out}:big"], self.env)
        missing = self.pushed["big"] - blobs_of(out)
        assert not missing, f"the pulled layout lacks {sorted(missing)}"

    def podman_pull_big(self) -> None:
        """podman (rootful, vfs) pulls the image through the 307 and reports its digest."""
        storage = self.tmp / "podman"
        podman = ["podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
                  "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                  "--events-backend", "none"]
        ref = f"{self.registry}/{self.repo}:big"
        run(podman + ["pull", "--tls-verify=false", ref], self.env)
        got = run(podman + ["image", "inspect", "--format", "{{.Digest}}", ref], self.env).strip()
        assert got == self.big_manifest, f"podman reports digest {got!r}, pushed {self.big_manifest}"
        run(podman + ["rmi", "--force", ref], self.env)
        shutil.rmtree(storage, ignore_errors=True)

    def ctr_pull_big(self) -> None:
        """containerd's ctr, against a containerd of its own, pulls the image through the 307
        (and unpacks it into the native snapshotter): the image it names has the pushed
        manifest's digest, and its content store holds every pushed blob."""
        ref = f"{self.registry}/{self.repo}:big"
        with Containerd(self.tmp / "containerd", self.env) as containerd:
            containerd.ctr("images", "pull", "--plain-http", "--snapshotter", "native", ref)
            listed = [l.split() for l in containerd.ctr("images", "ls").splitlines()]
            digests = [cols[2] for cols in listed if cols and cols[0] == ref]
            assert digests == [self.big_manifest], \
                f"ctr lists {ref} as {digests}, pushed {self.big_manifest}"
            held = set(containerd.ctr("content", "ls", "--quiet").split())
            missing = self.pushed["big"] - held
            assert not missing, f"ctr's content store lacks {sorted(missing)}"

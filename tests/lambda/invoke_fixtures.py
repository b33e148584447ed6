#!/usr/bin/env python3
"""Every fixture in events/ through `cargo lambda watch` + `cargo lambda invoke`, answers checked.

The Lambda build of the function (AWS_LAMBDA_RUNTIME_API set by the watcher) runs with the AWS
backend against the local S3 and DynamoDB servers, which must already be up:

    make services-up && make test-lambda
    # or, with the tools venv first on PATH:
    scripts/services.sh up && python3 tests/lambda/invoke_fixtures.py

What it does:
- reads the servers' environment from `scripts/services.sh env`, adds ECR_BACKEND=aws and
  RUST_LOG=info, and starts `cargo lambda watch -A 127.0.0.1 -P <port> --ignore-changes` in a
  process group of its own (port: LAMBDA_PORT, else the first free one from 39500; log:
  target/lambda-invoke/watch-<port>.log);
- waits, bounded by LAMBDA_READY_SECS (default 900), until the function answers a harmless probe
  (the watcher compiles the crate in debug on the first invocation);
- sends the fixtures in the order of tests/events.rs. DynamoDB persists between runs, so each run
  uses a repository of its own (`sample/app-<unique>`, `no/such-repo-<unique>`) and the uploadId
  that InitiateLayerUpload returned: the event body is decoded (base64 when isBase64Encoded),
  rewritten and re-encoded into a temporary file for `cargo lambda invoke --data-file`;
- checks each answer: statusCode, content-type and x-amzn-requestid headers, isBase64Encoded
  false, the error's `__type` (also in x-amzn-errortype) or the success members; the URL that
  GetDownloadUrlForLayer answers is fetched (whole and with a Range) and must serve the layer;
- fails if a fixture in events/ is not exercised; stops the watcher (SIGTERM to its process group,
  bounded wait, SIGKILL) in every case, and the function's own process group with it.

Python 3.11 standard library only. Ends with the line `N passed, N failed`; exits 1 on a failure,
2 when it cannot run (servers down, port taken, build failed or too slow).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
FUNCTION = "ecr-layer-upload"
HOST = "127.0.0.1"
CONTENT_TYPE = "application/x-amz-json-1.1"

# What the fixtures name (scripts/gen_events.py).
FIXTURE_REPO = "sample/app"
FIXTURE_MISSING_REPO = "no/such-repo"
FIXTURE_UPLOAD_ID = "0b7a3b1e-5c1d-4a4e-9a52-3f6c2d9e8f10"
FIXTURE_CONFIG_UPLOAD_ID = "6d2f0c4a-8b3e-4f71-a2c5-9e1b7d3f5a60"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
DOWNLOAD_TIMEOUT_SECS = 30

# InitiateLayerUpload's partSize inside Lambda (src/config.rs lambda_part_size(); README.md).
LAMBDA_PART_SIZE = 3_473_408

DEFAULT_PORT = 39500
READY_SECS = float(os.environ.get("LAMBDA_READY_SECS", "900"))
INVOKE_TIMEOUT_SECS = float(os.environ.get("LAMBDA_INVOKE_TIMEOUT_SECS", "180"))
STOP_SECS = 15
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def log(msg: str) -> None:
    print(msg, flush=True)


class Fatal(Exception):
    """The run cannot go on (servers down, watcher dead, build failed or too slow)."""


# ------------------------------------------------------------------------------------------------
# environment, port, tools


def services_env() -> dict[str, str]:
    script = ROOT / "scripts" / "services.sh"
    status = subprocess.run([str(script), "status"], cwd=ROOT, capture_output=True, text=True)
    if status.returncode != 0:
        raise Fatal("the local S3/DynamoDB servers are not running "
                    "(`make services-up` or `scripts/services.sh up` first):\n"
                    + status.stdout.strip())
    out = subprocess.run([str(script), "env"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    env = {}
    for line in out.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key] = value
    return env


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the watcher binds (SO_REUSEADDR): connections of an earlier run in TIME_WAIT do not
        # make the port busy, a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def choose_port() -> int:
    wanted = os.environ.get("LAMBDA_PORT", "").strip()
    if wanted:
        port = int(wanted)
        if not port_free(port):
            raise Fatal(f"LAMBDA_PORT={port} is taken on {HOST} (a `make watch` running?); "
                        "choose another port")
        return port
    for port in range(DEFAULT_PORT, DEFAULT_PORT + 100):
        if port_free(port):
            return port
    raise Fatal(f"no free port in {DEFAULT_PORT}..{DEFAULT_PORT + 99}; set LAMBDA_PORT")


def tools_path(env: dict[str, str]) -> None:
    """Puts the tools venv (cargo-lambda) first on PATH unless cargo-lambda is already found."""
    if shutil.which("cargo-lambda", path=env.get("PATH")):
        return
    bin_dir = subprocess.run([str(ROOT / "scripts" / "tools.sh"), "path"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
    if not Path(bin_dir, "cargo-lambda").exists():
        raise Fatal("cargo-lambda not found: run `make tools` (scripts/tools.sh install)")
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")


# ------------------------------------------------------------------------------------------------
# the watcher


def _die_with_parent() -> None:
    """In the watcher, before exec: SIGTERM it should this script die without cleaning up
    (SIGKILL), so that it stops its function instance itself. Linux only; best effort."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - not on Linux: the try/finally still stops it
        pass


class Watcher:
    """`cargo lambda watch` in a process group of its own, stopped by that group."""

    def __init__(self, port: int, env: dict[str, str], env_file: Path, log_path: Path):
        self.port = port
        self.log_path = log_path
        cargo = env.get("CARGO", "cargo")
        cmd = [cargo, "lambda", "watch", "-A", HOST, "-P", str(port),
               # Built once for the run: edits made meanwhile must not restart the function.
               "--ignore-changes", "--env-file", str(env_file)]
        log(f"starting: {' '.join(cmd)}  (log: {log_path.relative_to(ROOT)})")
        self.log_file = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self.pgid = self.proc.pid  # start_new_session: the watcher leads its own group

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40, width: int = 400) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return "\n".join("    | " + (ln if len(ln) <= width else ln[:width] + " ...") for ln in tail)

    def function_pgids(self) -> list[int]:
        # cargo-lambda runs each function instance (`cargo run`, then the binary) in a process
        # group of its own and logs it.
        return [int(m) for m in re.findall(r"process group spawned pgid=(\d+)", self.log_text())]

    def instances(self) -> int:
        return len(re.findall(r"spawning function instance", self.log_text()))

    def _ours(self, pid: int) -> bool:
        """True when pid runs with this watcher's runtime API (never signal anything else)."""
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        marker = f"AWS_LAMBDA_RUNTIME_API=http://{HOST}:{self.port}/".encode()
        return any(e.startswith(marker) for e in environ)

    def _group_members(self, pgid: int) -> list[int]:
        members = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) == pgid and self._ours(int(entry.name)):
                    members.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
        return members

    def _stop_group(self, pgid: int, what: str) -> None:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_SECS
        while time.monotonic() < deadline and self._group_members(pgid):
            time.sleep(0.2)
        if self._group_members(pgid):
            log(f"{what} (process group {pgid}) ignored SIGTERM for {STOP_SECS} s: SIGKILL")
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(STOP_SECS)
            except subprocess.TimeoutExpired:
                log(f"watcher (pid {self.pgid}) ignored SIGTERM for {STOP_SECS} s: SIGKILL")
                try:
                    os.killpg(self.pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        # The watcher stops its function instances on SIGTERM; a SIGKILLed one cannot.
        for pgid in self.function_pgids():
            if self._group_members(pgid):
                self._stop_group(pgid, "function instance")
        self.log_file.close()

    def wait_ready(self, probe_event: bytes) -> float:
        """Waits until the watcher listens and the function answers a probe; returns seconds."""
        started = time.monotonic()
        deadline = started + READY_SECS
        # 1. The emulator's port (seconds at most).
        while True:
            if not self.alive():
                raise Fatal(f"cargo lambda watch exited ({self.proc.returncode}):\n"
                            + self.log_tail())
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise Fatal(f"cargo lambda watch did not listen on {HOST}:{self.port} "
                            f"in {READY_SECS:.0f} s")
            time.sleep(0.25)
        # 2. One probe invocation: the watcher compiles the function first, so it blocks until
        # the build is done. It runs in a thread; this loop only checks the watcher, the log and
        # the clock once a second.
        url = f"http://{HOST}:{self.port}/2015-03-31/functions/{FUNCTION}/invocations"
        result: dict = {}

        def probe():
            req = urllib.request.Request(url, data=probe_event, method="POST",
                                         headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=max(deadline - time.monotonic(), 1)) as r:
                    result["status"], result["body"] = r.status, r.read()
            except Exception as e:  # noqa: BLE001 - reported below
                result["error"] = e

        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        last_note = time.monotonic()
        while thread.is_alive():
            thread.join(1)
            if not self.alive():
                raise Fatal(f"cargo lambda watch exited ({self.proc.returncode}) while "
                            "starting the function:\n" + self.log_tail())
            text = self.log_text()
            if "error: could not compile" in text or re.search(r"^error(\[E\d+\])?:", text, re.M):
                raise Fatal("the function did not compile:\n" + self.log_tail(60))
            now = time.monotonic()
            if now > deadline:
                raise Fatal(f"the function did not answer within {READY_SECS:.0f} s "
                            "(LAMBDA_READY_SECS); watcher log:\n" + self.log_tail())
            if now - last_note >= 30:
                last_note = now
                log(f"  ... waiting for the function to build and start ({now - started:.0f} s)")
        if "error" in result:
            raise Fatal(f"probe invocation failed: {result['error']}\n" + self.log_tail())
        try:
            answer = json.loads(result["body"])
            ok = result["status"] == 200 and isinstance(answer.get("statusCode"), int)
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise Fatal(f"probe invocation answered HTTP {result.get('status')}: "
                        f"{result.get('body')!r}\n" + self.log_tail())
        return time.monotonic() - started


# ------------------------------------------------------------------------------------------------
# fixtures


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A plain GET, as a client fetches a download URL (no credentials of its own)."""
    req = urllib.request.Request(url, headers=headers or {}, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_SECS) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        raise AssertionError(f"GET of the download URL answered {e.code}: {e.read()[:500]!r}")


def load_fixture(name: str) -> dict:
    return json.loads((EVENTS / f"{name}.json").read_text())


def event_body(event: dict) -> bytes:
    body = event.get("body") or ""
    return base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()


def rewrite_event(event: dict, repo: str, missing_repo: str, upload_id: str | None) -> dict:
    """The event with this run's repository names and uploadId in its JSON body (only the values
    the fixtures use for them: invalid names and unknown ids stay as they are)."""
    event = json.loads(json.dumps(event))
    raw = event_body(event)
    try:
        doc = json.loads(raw)
    except ValueError:
        return event
    if not isinstance(doc, dict):
        return event  # error-serialization: a JSON array, sent as is
    if doc.get("repositoryName") == FIXTURE_REPO:
        doc["repositoryName"] = repo
    elif doc.get("repositoryName") == FIXTURE_MISSING_REPO:
        doc["repositoryName"] = missing_repo
    if isinstance(doc.get("repositoryNames"), list):
        doc["repositoryNames"] = [repo if n == FIXTURE_REPO else n for n in doc["repositoryNames"]]
    if upload_id is not None and doc.get("uploadId") in (FIXTURE_UPLOAD_ID,
                                                         FIXTURE_CONFIG_UPLOAD_ID):
        doc["uploadId"] = upload_id
    raw = json.dumps(doc, separators=(",", ":")).encode()
    event["body"] = base64.b64encode(raw).decode() if event.get("isBase64Encoded") else raw.decode()
    headers = event.get("headers") or {}
    if "content-length" in headers:
        headers["content-length"] = str(len(raw))
    return event


class Run:
    def __init__(self, port: int, env: dict[str, str], tmp: Path, fixture_names: list[str]):
        self.port = port
        self.env = env
        self.tmp = tmp
        self.available = set(fixture_names)
        self.exercised: set[str] = set()
        self.passed = 0
        self.failed = 0
        self.calls = 0
        suffix = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"
        self.repo = f"{FIXTURE_REPO}-{suffix}"
        self.missing_repo = f"{FIXTURE_MISSING_REPO}-{suffix}"
        self.upload_id: str | None = None
        self.registry = env.get("ECR_REGISTRY_ID") or "123456789012"
        self.region = (env.get("ECR_REGION") or env.get("AWS_REGION")
                       or env.get("AWS_DEFAULT_REGION") or "us-east-1")
        self.part_size = int(env.get("ECR_PART_SIZE") or LAMBDA_PART_SIZE)
        part_doc = json.loads(event_body(load_fixture("upload-layer-part")))
        self.part = base64.b64decode(part_doc["layerPartBlob"])
        self.digest = sha256(self.part)
        config_doc = json.loads(event_body(load_fixture("upload-config-part")))
        self.config = base64.b64decode(config_doc["layerPartBlob"])
        self.config_digest = sha256(self.config)
        self.manifest = json.loads(event_body(load_fixture("put-image")))["imageManifest"]
        self.image = sha256(self.manifest.encode())
        absent = json.loads(json.loads(event_body(load_fixture("error-layers-not-found")))
                            ["imageManifest"])
        self.absent = absent["layers"][0]["digest"]

    # -- one invocation

    def invoke(self, name: str, upload_id: str | None) -> dict:
        event = rewrite_event(load_fixture(name), self.repo, self.missing_repo, upload_id)
        self.calls += 1
        path = self.tmp / f"{self.calls:02d}-{name}.json"
        path.write_text(json.dumps(event))
        cmd = [self.env.get("CARGO", "cargo"), "lambda", "invoke", "-A", HOST, "-P",
               str(self.port), FUNCTION, "--data-file", str(path)]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  timeout=INVOKE_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"cargo lambda invoke did not return in {INVOKE_TIMEOUT_SECS:.0f} s")
        if proc.returncode != 0:
            raise AssertionError(f"cargo lambda invoke exited {proc.returncode}: "
                                 f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"the answer is not JSON: {proc.stdout[-2000:]!r}")

    def check_envelope(self, resp: dict, status: int) -> dict:
        """The Lambda response (payload 2.0) around the body; returns the body's JSON."""
        assert resp.get("statusCode") == status, \
            f"statusCode {resp.get('statusCode')}, expected {status}"
        headers = {k.lower(): v for k, v in (resp.get("headers") or {}).items()}
        assert headers.get("content-type") == CONTENT_TYPE, \
            f"content-type {headers.get('content-type')!r}"
        rid = headers.get("x-amzn-requestid", "")
        assert UUID_RE.match(rid), f"x-amzn-requestid {rid!r} is not a UUID"
        assert resp.get("isBase64Encoded") is False, \
            f"isBase64Encoded {resp.get('isBase64Encoded')!r}"
        body = resp.get("body")
        assert isinstance(body, str), f"body {body!r}"
        try:
            doc = json.loads(body)
        except ValueError:
            raise AssertionError(f"body is not JSON: {body!r}")
        assert isinstance(doc, dict), f"body {doc!r}"
        if status != 200:
            assert headers.get("x-amzn-errortype") == doc.get("__type"), \
                f"x-amzn-errortype {headers.get('x-amzn-errortype')!r} != __type {doc.get('__type')!r}"
        else:
            assert "__type" not in doc, f"success with __type: {doc}"
        return doc

    def step(self, label: str, name: str, status: int, check=None, error: str | None = None,
             message: str | None = None, counts: bool = True, upload_id: str | None = None,
             needs_upload: bool = False):
        """Sends fixture `name` and checks the answer; `counts` marks the fixture exercised."""
        if name not in self.available:
            self.fail(label, f"fixture events/{name}.json is missing")
            return None
        if counts:
            self.exercised.add(name)
        resp = None
        try:
            uid = upload_id if upload_id is not None else self.upload_id
            if needs_upload and uid is None:
                raise AssertionError("no uploadId (InitiateLayerUpload failed earlier)")
            resp = self.invoke(name, uid)
            doc = self.check_envelope(resp, status)
            if error is not None:
                assert doc.get("__type") == error, f"__type {doc.get('__type')!r}, expected {error!r}"
                assert isinstance(doc.get("message"), str) and doc["message"], \
                    f"no message: {doc}"
                if message is not None:
                    assert doc["message"] == message, \
                        f"message {doc['message']!r}, expected {message!r}"
            if check is not None:
                check(doc)
        except AssertionError as e:
            detail = f"{e}"
            if resp is not None:
                detail += f"\n      answer: {json.dumps(resp)[:1500]}"
            self.fail(label, detail)
            return None
        except Exception as e:  # noqa: BLE001 - a broken step is a failed step
            self.fail(label, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            return None
        self.passed += 1
        log(f"ok   {label}")
        return doc

    def fail(self, label: str, detail: str) -> None:
        self.failed += 1
        log(f"FAIL {label}: {detail}")

    # -- the script: tests/events.rs's order, on the AWS backend with this run's names

    def images(self) -> None:
        """tests/events.rs's image_fixtures: config blob, PutImage, the reads, deletion."""
        repo, reg = self.repo, self.registry
        image, layer, config = self.image, self.digest, self.config_digest

        def initiated(doc):
            assert UUID_RE.match(doc.get("uploadId", "")), doc
            self.upload_id = doc["uploadId"]
        self.upload_id = None
        self.step("initiate-layer-upload (config blob)", "initiate-layer-upload", 200, initiated,
                  counts=False)
        uid = self.upload_id

        def config_part(doc):
            assert doc["lastByteReceived"] == len(self.config) - 1, doc
            assert doc["uploadId"] == uid, doc
        self.step("upload-config-part", "upload-config-part", 200, config_part, needs_upload=True)

        def config_done(doc):
            assert doc["layerDigest"] == config, \
                f"layerDigest {doc['layerDigest']}, expected {config}"
            assert doc["uploadId"] == uid, doc
        self.step("complete-config-upload", "complete-config-upload", 200, config_done,
                  needs_upload=True)

        def availability(referenced):
            def check(doc):
                assert doc["failures"] == [], doc
                got = doc["layers"]
                assert [x["layerDigest"] for x in got] == [layer, config, self.absent], got
                assert [x["layerAvailability"] for x in got] == \
                    ["AVAILABLE", "AVAILABLE", "UNAVAILABLE"], got
                assert got[0]["layerSize"] == len(self.part), got
                assert got[1]["layerSize"] == len(self.config), got
                assert "layerSize" not in got[2] and "mediaType" not in got[2], got
                if referenced:
                    assert got[0].get("mediaType") == LAYER_TYPE, got
                    assert got[1].get("mediaType") == CONFIG_TYPE, got
                else:
                    assert "mediaType" not in got[0] and "mediaType" not in got[1], got
            return check
        self.step("batch-check-layer-availability (not referenced)",
                  "batch-check-layer-availability", 200, availability(False))

        def names_layer(doc):
            assert layer in doc["message"], doc
        self.step("error-layer-inaccessible", "error-layer-inaccessible", 400, names_layer,
                  error="LayerInaccessibleException")

        def names_absent(doc):
            assert self.absent in doc["message"], doc
            assert config not in doc["message"], doc
        self.step("error-layers-not-found", "error-layers-not-found", 400, names_absent,
                  error="LayersNotFoundException")

        def put(tag):
            def check(doc):
                img = doc["image"]
                assert img["imageId"] == {"imageDigest": image, "imageTag": tag}, img["imageId"]
                # Byte for byte what was sent: clients check the digest against this text.
                assert img["imageManifest"] == self.manifest, img["imageManifest"]
                assert img["imageManifestMediaType"] == OCI_MANIFEST, img
                assert img["repositoryName"] == repo and img["registryId"] == reg, img
            return check
        self.step("put-image", "put-image", 200, put("v1"))
        self.step("error-image-already-exists", "error-image-already-exists", 400,
                  error="ImageAlreadyExistsException",
                  message=f"Image with digest '{image}' and tag 'v1' already exists in the "
                          f"repository with name '{repo}' in registry with id '{reg}'")
        self.step("put-image-tag-latest", "put-image-tag-latest", 200, put("latest"))
        self.step("batch-check-layer-availability (referenced)", "batch-check-layer-availability",
                  200, availability(True), counts=False)

        def got_image(doc):
            images = doc["images"]
            assert len(images) == 2, images
            for img in images:
                assert img["imageId"]["imageDigest"] == image, img["imageId"]
                assert img["imageManifest"] == self.manifest, img["imageManifest"]
                assert img["imageManifestMediaType"] == OCI_MANIFEST, img
                assert img["repositoryName"] == repo, img
            assert images[0]["imageId"].get("imageTag") == "v1", images[0]["imageId"]
            assert "imageTag" not in images[1]["imageId"], images[1]["imageId"]
            failures = doc["failures"]
            assert len(failures) == 1, failures
            assert failures[0]["imageId"] == {"imageTag": "nope"}, failures
            assert failures[0]["failureCode"] == "ImageNotFound", failures
            assert failures[0]["failureReason"] == "Requested image not found", failures
        self.step("batch-get-image", "batch-get-image", 200, got_image)

        def first_page(doc):
            # maxResults 1 of two entries (one per tag): a page and a token for the next one.
            assert doc["imageIds"] == [{"imageDigest": image, "imageTag": "latest"}], doc
            assert isinstance(doc.get("nextToken"), str) and doc["nextToken"], doc
        self.step("list-images", "list-images", 200, first_page)

        def described(doc):
            assert "nextToken" not in doc, doc
            details = doc["imageDetails"]
            assert len(details) == 1, details
            d = details[0]
            assert d["imageDigest"] == image, d
            assert d["imageTags"] == ["latest", "v1"], d
            assert d["imageSizeInBytes"] == len(self.part), d
            assert d["imageManifestMediaType"] == OCI_MANIFEST, d
            assert d["artifactMediaType"] == CONFIG_TYPE, d
            assert d["imageStatus"] == "ACTIVE", d
            assert d["registryId"] == reg and d["repositoryName"] == repo, d
            assert isinstance(d["imagePushedAt"], (int, float)), d
        self.step("describe-images", "describe-images", 200, described)

        def download(doc):
            assert doc["layerDigest"] == layer, doc
            url = doc["downloadUrl"]
            assert url.startswith(("http://", "https://")), url
            status, data = fetch(url)
            assert status == 200, f"GET {status}"
            assert data == self.part, f"GET returned {len(data)} bytes, not the layer's"
            status, data = fetch(url, {"Range": "bytes=7-11"})
            assert status == 206, f"ranged GET {status}"
            assert data == self.part[7:12], f"ranged GET returned {data!r}"
        self.step("get-download-url-for-layer (and GET the URL)", "get-download-url-for-layer",
                  200, download)

        self.step("error-repository-not-empty", "error-repository-not-empty", 400,
                  error="RepositoryNotEmptyException",
                  message=f"The repository with name '{repo}' in registry with id '{reg}' cannot "
                          "be deleted because it still contains images")

        def deleted(doc):
            # By digest: the image and both its tags go; the unknown tag is a failure.
            assert doc["imageIds"] == [{"imageDigest": image, "imageTag": "latest"},
                                       {"imageDigest": image, "imageTag": "v1"}], doc
            assert len(doc["failures"]) == 1, doc
            assert doc["failures"][0]["imageId"] == {"imageTag": "nope"}, doc
            assert doc["failures"][0]["failureCode"] == "ImageNotFound", doc
        self.step("batch-delete-image", "batch-delete-image", 200, deleted)

        def empty(doc):
            assert doc["imageIds"] == [] and "nextToken" not in doc, doc
        self.step("list-images after delete", "list-images", 200, empty, counts=False)

        def gone(doc):
            assert doc["images"] == [], doc
            assert [f["failureCode"] for f in doc["failures"]] == ["ImageNotFound"] * 3, doc
        self.step("batch-get-image after delete", "batch-get-image", 200, gone, counts=False)

    def run(self) -> None:
        repo, reg, region = self.repo, self.registry, self.region
        last = len(self.part) - 1
        log(f"repository {repo}, registry {reg}, region {region}")

        self.step("error-repository-not-found", "error-repository-not-found", 400,
                  error="RepositoryNotFoundException")

        def created(doc):
            r = doc["repository"]
            assert r["repositoryName"] == repo, r
            assert r["registryId"] == reg, r
            assert r["repositoryArn"] == f"arn:aws:ecr:{region}:{reg}:repository/{repo}", r
            assert r["repositoryUri"] == f"{reg}.dkr.ecr.{region}.amazonaws.com/{repo}", r
            assert isinstance(r["createdAt"], (int, float)), r
        self.step("create-repository", "create-repository", 200, created)
        self.step("error-repository-already-exists", "error-repository-already-exists", 400,
                  error="RepositoryAlreadyExistsException",
                  message=f"The repository with name '{repo}' already exists in the registry "
                          f"with id '{reg}'")

        def described(doc):
            repos = doc["repositories"]
            assert [r["repositoryName"] for r in repos] == [repo], repos
        self.step("describe-repositories", "describe-repositories", 200, described)

        def initiated(doc):
            assert UUID_RE.match(doc.get("uploadId", "")), doc
            self.upload_id = doc["uploadId"]
            assert doc["partSize"] == self.part_size, \
                f"partSize {doc['partSize']}, expected {self.part_size}"
        self.step("initiate-layer-upload", "initiate-layer-upload", 200, initiated)
        uid = self.upload_id

        self.step("error-empty-upload", "error-empty-upload", 400, error="EmptyUploadException",
                  message=f"The upload with id '{uid}' in the repository with name '{repo}' in "
                          f"registry with id '{reg}' cannot be completed because it does not "
                          "have any parts", needs_upload=True)

        def invalid_part(valid):
            def check(doc):
                assert doc.get("lastValidByteReceived") == valid, doc
                assert doc.get("uploadId") == uid, doc
                assert doc.get("repositoryName") == repo, doc
                assert doc.get("registryId") == reg, doc
            return check
        self.step("error-invalid-layer-part (nothing received)", "error-invalid-layer-part", 400,
                  invalid_part(0), error="InvalidLayerPartException",
                  message="First byte of the layer part is 100 instead of 0", needs_upload=True)
        self.step("error-part-length-mismatch", "error-part-length-mismatch", 400,
                  invalid_part(0), error="InvalidLayerPartException", needs_upload=True)

        def part_accepted(doc):
            assert doc["lastByteReceived"] == last, doc
            assert doc["uploadId"] == uid, doc
            assert doc["repositoryName"] == repo, doc
            assert doc["registryId"] == reg, doc
        # The base64-encoded body, as a Function URL delivers it.
        self.step("upload-layer-part", "upload-layer-part", 200, part_accepted, needs_upload=True)
        # The same part as a plain-text body: a byte-identical re-send, answered with success.
        self.step("upload-layer-part-text-body (identical re-send)", "upload-layer-part-text-body",
                  200, part_accepted, needs_upload=True)
        self.step("error-invalid-layer-part (after one part)", "error-invalid-layer-part", 400,
                  invalid_part(last), error="InvalidLayerPartException",
                  message=f"First byte of the layer part is 100 instead of {len(self.part)}",
                  needs_upload=True)

        def completed(doc):
            assert doc["layerDigest"] == self.digest, \
                f"layerDigest {doc['layerDigest']}, expected {self.digest}"
            assert doc["uploadId"] == uid, doc
            assert doc["repositoryName"] == repo, doc
            assert doc["registryId"] == reg, doc
        self.step("complete-layer-upload", "complete-layer-upload", 200, completed,
                  needs_upload=True)
        # Completed: the id is retired.
        self.step("complete-layer-upload again (id retired)", "complete-layer-upload", 400,
                  error="UploadNotFoundException", counts=False, needs_upload=True)
        self.step("upload-layer-part again (id retired)", "upload-layer-part", 400,
                  error="UploadNotFoundException", counts=False, needs_upload=True)

        # A second upload with one part, then the wrong digest at completion.
        first_upload, self.upload_id = self.upload_id, None
        self.step("initiate-layer-upload (second upload)", "initiate-layer-upload", 200,
                  initiated, counts=False)
        if self.upload_id is not None and self.upload_id == first_upload:
            self.fail("second upload", "InitiateLayerUpload returned the same uploadId twice")
        uid = self.upload_id
        self.step("upload-layer-part (second upload)", "upload-layer-part", 200, part_accepted,
                  counts=False, needs_upload=True)
        self.step("error-invalid-layer-digest", "error-invalid-layer-digest", 400,
                  error="InvalidLayerException",
                  message="None of the provided layer digests match the calculated layer digest",
                  needs_upload=True)

        self.images()

        self.step("error-upload-not-found", "error-upload-not-found", 400,
                  error="UploadNotFoundException")
        self.step("error-unknown-operation", "error-unknown-operation", 400,
                  error="UnknownOperationException")
        self.step("error-missing-target", "error-missing-target", 400,
                  error="UnknownOperationException")
        self.step("error-serialization", "error-serialization", 400,
                  error="SerializationException")
        self.step("error-wrong-member-type", "error-wrong-member-type", 400,
                  error="SerializationException")
        self.step("error-invalid-repository-name", "error-invalid-repository-name", 400,
                  error="InvalidParameterException",
                  message="Invalid parameter at 'repositoryName' failed to satisfy constraint: "
                          "'must have length greater than or equal to 2'")
        self.step("error-registry-mismatch", "error-registry-mismatch", 400,
                  error="RepositoryNotFoundException",
                  message=f"The repository with name '{repo}' does not exist in the registry "
                          "with id '999999999999'")

        def deleted(doc):
            assert doc["repository"]["repositoryName"] == repo, doc
            assert doc["repository"]["registryId"] == reg, doc
        self.step("delete-repository", "delete-repository", 200, deleted)
        self.step("describe-repositories after delete", "describe-repositories", 400,
                  error="RepositoryNotFoundException", counts=False)

        unvisited = sorted(self.available - self.exercised)
        if unvisited:
            self.fail("every fixture exercised", f"fixtures without a check: {unvisited}")
        else:
            self.passed += 1
            log(f"ok   every fixture exercised ({len(self.available)} in events/)")


# ------------------------------------------------------------------------------------------------


def main() -> int:
    started = time.monotonic()
    names = sorted(p.stem for p in EVENTS.glob("*.json"))
    if not names:
        log("no fixtures in events/")
        log("0 passed, 1 failed")
        return 1

    # SIGTERM (make interrupted, CI timeout) unwinds like Ctrl-C, so the watcher is stopped.
    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    watcher = None
    run = None
    fatal = None
    try:
        senv = services_env()
        port = choose_port()
        env = dict(os.environ)
        env.update(senv)
        env.update({"ECR_BACKEND": "aws", "RUST_LOG": "info"})
        tools_path(env)
        logdir = ROOT / "target" / "lambda-invoke"
        logdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ecr-lambda-invoke-") as tmp:
            tmp = Path(tmp)
            env_file = tmp / "watch.env"
            env_file.write_text("".join(f"{k}={v}\n" for k, v in
                                        {**senv, "ECR_BACKEND": "aws", "RUST_LOG": "info"}.items()))
            watcher = Watcher(port, env, env_file, logdir / f"watch-{port}.log")
            ready = watcher.wait_ready((EVENTS / "error-missing-target.json").read_bytes())
            log(f"function answering on {HOST}:{port} after {ready:.1f} s")
            t0 = time.monotonic()
            run = Run(port, env, tmp, names)
            run.run()
            log(f"fixtures: {run.calls} invocations in {time.monotonic() - t0:.1f} s; "
                f"function instances started: {watcher.instances()}")
    except Fatal as e:
        fatal = str(e)
    except KeyboardInterrupt as e:
        fatal = f"interrupted ({e})" if str(e) else "interrupted"
    finally:
        # Cleanup is bounded (about 2 x STOP_SECS): a second Ctrl-C or SIGTERM must not cut it
        # short and leave the watcher running.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if watcher is not None:
            watcher.stop()
            log(f"watcher stopped (log: {watcher.log_path.relative_to(ROOT)})")

    passed = run.passed if run else 0
    failed = run.failed if run else 0
    if fatal is not None:
        log(f"FAIL {fatal}")
        failed += 1
    log(f"total time {time.monotonic() - started:.1f} s")
    log(f"{passed} passed, {failed} failed")
    if fatal is not None and run is None:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

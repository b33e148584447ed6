#!/usr/bin/env python3
"""Every fixture in events/ through `cargo lambda watch` + `cargo lambda invoke`, answers checked.

The Lambda build of the function (AWS_LAMBDA_RUNTIME_API set by the watcher) runs with the AWS
backend against the local S3 and DynamoDB servers, which must already be up:

    make services-up && make test-lambda
    # or, with the tools venv first on PATH:
    scripts/services.sh up && python3 tests/lambda/invoke_fixtures.py

What it does:
- reads the servers' environment from `scripts/services.sh env`, adds ECR_BACKEND=aws,
  ECR_AUTH=none (the fixtures are signed with a key no store holds) and RUST_LOG=info, and
  starts `cargo lambda watch -A 127.0.0.1 -P <port> --ignore-changes` in a
  process group of its own (port: LAMBDA_PORT, else the first free one from 39500; log:
  target/lambda-invoke/watch-<port>.log);
- waits, bounded by LAMBDA_READY_SECS (default 900), until the function answers a harmless probe
  (the watcher compiles the crate in debug on the first invocation);
- sends the fixtures step by step as tests/fixtures/expected.json lists them (the in-process test,
  tests/unit/events.rs, reads the same file). DynamoDB persists between runs, so each run uses a
  repository of its own (`sample/app-<unique>`, `no/such-repo-<unique>`) and the uploadIds that
  InitiateLayerUpload returned (a step that starts an upload without a fixture sends
  initiate-layer-upload): the event body is decoded (base64 when isBase64Encoded), rewritten and
  re-encoded into a temporary file for `cargo lambda invoke --data-file`;
- checks each answer: statusCode, content-type and x-amzn-requestid headers, isBase64Encoded
  false, no `__type` on success; then what expected.json says: the error's `__type` (also in
  x-amzn-errortype) and message, the members, and that the URL of GetDownloadUrlForLayer serves
  the layer (fetched whole and with a Range);
- then registry clients through the same function URL (tests/lambda/oci_pull.py): skopeo pushes
  and pulls an index, and pulls an image with a 12 MiB layer by following the blob GET's 307 to
  S3, and podman and containerd's ctr (as root) pull it too (skipped without skopeo unless
  ECR_TEST_REQUIRE_SKOPEO is set);
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

# The steps, in order, and what each answer must be; the names the fixtures use.
EXPECTED = ROOT / "tests" / "fixtures" / "expected.json"
DOWNLOAD_TIMEOUT_SECS = 30

# InitiateLayerUpload's partSize inside Lambda (frontdoors::lambda::part_size() in src/frontdoors/lambda.rs; README.md).
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
        # The watcher builds what is deployed, without the push client (Cargo.toml's
        # package.metadata.lambda). LAMBDA_WATCH_FEATURES=default builds it with the features of the
        # test build instead, so that `make test` reuses that build rather than compiling again:
        # the function's code is the same, only the push subcommand is added.
        features = env.get("LAMBDA_WATCH_FEATURES", "").strip()
        if features:
            cmd += ["--features", features]
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
# fixtures and what they must be answered (tests/fixtures/expected.json)


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


def request_of(name: str) -> dict:
    return json.loads(event_body(load_fixture(name)))


def rewrite_event(event: dict, names: dict[str, str], uploads: dict[str, str]) -> dict:
    """The event with this run's repository names (`names`: fixture's name -> this run's) and
    uploadIds (`uploads`: fixture's id -> the one InitiateLayerUpload answered) in its JSON body
    (only the values the fixtures use for them: invalid names and unknown ids stay as they are)."""
    event = json.loads(json.dumps(event))
    raw = event_body(event)
    try:
        doc = json.loads(raw)
    except ValueError:
        return event
    if not isinstance(doc, dict):
        return event  # error-serialization: a JSON array, sent as is
    if doc.get("repositoryName") in names:
        doc["repositoryName"] = names[doc["repositoryName"]]
    if isinstance(doc.get("repositoryNames"), list):
        doc["repositoryNames"] = [names.get(n, n) for n in doc["repositoryNames"]]
    if doc.get("uploadId") in uploads:
        doc["uploadId"] = uploads[doc["uploadId"]]
    raw = json.dumps(doc, separators=(",", ":")).encode()
    event["body"] = base64.b64encode(raw).decode() if event.get("isBase64Encoded") else raw.decode()
    headers = event.get("headers") or {}
    if "content-length" in headers:
        headers["content-length"] = str(len(raw))
    return event


def resolve(pattern, values: dict):
    """`pattern` with its placeholders replaced: a string that is only `{name}` becomes the value
    (of its own type), other strings have each `{name}` replaced by its text."""
    if isinstance(pattern, str):
        if pattern.startswith("{") and pattern.endswith("}") and pattern[1:-1] in values:
            return values[pattern[1:-1]]
        for name, value in values.items():
            text = value if isinstance(value, str) else json.dumps(value)
            pattern = pattern.replace("{" + name + "}", text)
        return pattern
    if isinstance(pattern, list):
        return [resolve(p, values) for p in pattern]
    if isinstance(pattern, dict):
        return {k: resolve(p, values) for k, p in pattern.items()}
    return pattern


MISSING = object()


def matches(got, want, at: str) -> None:
    """`got` (MISSING: absent) against a resolved `members` pattern of expected.json (its "about"
    says what the patterns mean); raises AssertionError naming the place."""
    if isinstance(want, dict) and any(k.startswith("$") for k in want):
        for op, arg in want.items():
            if op == "$absent":
                ok = got is MISSING
            elif op == "$eq":
                ok = got is not MISSING and got == arg
            elif op == "$type":
                ok = {"number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                      "uuid": lambda v: isinstance(v, str) and bool(UUID_RE.match(v)),
                      "nonempty-string": lambda v: isinstance(v, str) and v != ""}[arg](got)
            elif op in ("$contains", "$excludes"):
                ok = isinstance(got, str) and all((n in got) == (op == "$contains") for n in arg)
            else:
                raise ValueError(f"{at}: unknown operator {op}")
            if not ok:
                shown = "absent" if got is MISSING else json.dumps(got)[:500]
                raise AssertionError(f"{at}: {shown} is not {op} {json.dumps(arg)}")
        return
    if got is MISSING:
        raise AssertionError(f"{at}: missing, expected {json.dumps(want)[:500]}")
    if isinstance(want, dict):
        for name, w in want.items():
            matches(got.get(name, MISSING) if isinstance(got, dict) else MISSING, w,
                    f"{at}.{name}")
    elif isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            raise AssertionError(f"{at}: {json.dumps(got)[:500]}, expected {len(want)} elements")
        for i, (g, w) in enumerate(zip(got, want)):
            matches(g, w, f"{at}[{i}]")
    elif got != want or isinstance(got, bool) != isinstance(want, bool):
        raise AssertionError(f"{at}: {json.dumps(got)[:500]}, expected {json.dumps(want)[:500]}")


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
        self.expected = json.loads(EXPECTED.read_text())
        fixtures = self.expected["fixtures"]
        suffix = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"
        self.repo = f"{fixtures['repository']}-{suffix}"
        self.names = {fixtures["repository"]: self.repo,
                      fixtures["missing_repository"]: f"{fixtures['missing_repository']}-{suffix}"}
        # The fixtures' upload ids and the ones InitiateLayerUpload answered for them.
        self.fixture_upload_ids = set(fixtures["upload_ids"])
        self.uploads: dict[str, str] = {}
        self.upload_ids_seen: set[str] = set()
        self.registry = env.get("ECR_REGISTRY_ID") or "123456789012"
        self.region = (env.get("ECR_REGION") or env.get("AWS_REGION")
                       or env.get("AWS_DEFAULT_REGION") or "us-east-1")
        self.part = base64.b64decode(request_of("upload-layer-part")["layerPartBlob"])
        config = base64.b64decode(request_of("upload-config-part")["layerPartBlob"])
        manifest = request_of("put-image")["imageManifest"]
        absent = json.loads(request_of("error-layers-not-found")["imageManifest"])
        # What the placeholders of expected.json stand for in this run.
        self.values = {
            "repo": self.repo,
            "registry": self.registry,
            "region": self.region,
            "part_size": int(env.get("ECR_PART_SIZE") or LAMBDA_PART_SIZE),
            "layer": sha256(self.part),
            "layer_size": len(self.part),
            "layer_last": len(self.part) - 1,
            "config": sha256(config),
            "config_size": len(config),
            "config_last": len(config) - 1,
            "image": sha256(manifest.encode()),
            "manifest": manifest,
            "absent": absent["layers"][0]["digest"],
        }

    # -- one invocation

    def invoke(self, name: str) -> dict:
        event = load_fixture(name)
        try:
            named = json.loads(event_body(event)).get("uploadId")
        except (ValueError, AttributeError):
            named = None
        if named in self.fixture_upload_ids and named not in self.uploads:
            raise AssertionError("no uploadId (InitiateLayerUpload failed earlier)")
        event = rewrite_event(event, self.names, self.uploads)
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

    def check_answer(self, step: dict, doc: dict) -> None:
        """The body against a resolved step of expected.json: error type and message, members."""
        if step["status"] != 200:
            want = step["__type"]
            assert doc.get("__type") == want, f"__type {doc.get('__type')!r}, expected {want!r}"
            assert isinstance(doc.get("message"), str) and doc["message"], f"no message: {doc}"
            if "message" in step:
                assert doc["message"] == step["message"], \
                    f"message {doc['message']!r}, expected {step['message']!r}"
        if "members" in step:
            matches(doc, step["members"], "answer")
        if step.get("serves_layer"):
            url = doc["downloadUrl"]
            assert url.startswith(("http://", "https://")), url
            status, data = fetch(url)
            assert status == 200, f"GET {status}"
            assert data == self.part, f"GET returned {len(data)} bytes, not the layer's"
            status, data = fetch(url, {"Range": "bytes=7-11"})
            assert status == 206, f"ranged GET {status}"
            assert data == self.part[7:12], f"ranged GET returned {data!r}"

    def step(self, label: str, name: str, step: dict, counts: bool = True) -> dict | None:
        """Sends fixture `name` and checks the answer against `step` (resolved); `counts` marks
        the fixture exercised."""
        if name not in self.available:
            self.fail(label, f"fixture events/{name}.json is missing")
            return None
        if counts:
            self.exercised.add(name)
        resp = None
        try:
            resp = self.invoke(name)
            doc = self.check_envelope(resp, step["status"])
            self.check_answer(step, doc)
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

    def start_upload(self, fixture_id: str, doc: dict | None, label: str) -> None:
        """From here on the fixtures' `fixture_id` stands for the upload InitiateLayerUpload
        answered with `doc` (None: it failed, the steps that need it fail)."""
        self.uploads.pop(fixture_id, None)
        if doc is None:
            return
        actual = doc.get("uploadId")
        if actual in self.upload_ids_seen:
            self.fail(label, "InitiateLayerUpload returned the same uploadId twice")
        self.upload_ids_seen.add(actual)
        self.uploads[fixture_id] = actual
        self.values["upload_id"] = actual

    # -- the script: the steps of expected.json, on the AWS backend with this run's names

    def run(self) -> None:
        log(f"repository {self.repo}, registry {self.registry}, region {self.region}")
        steps = self.expected["steps"]
        initiate = next(s for s in steps if s.get("fixture") == "initiate-layer-upload")
        for raw in steps:
            step = resolve(raw, self.values)
            name = step.get("fixture")
            note = f" ({step['note']})" if step.get("note") else ""
            if name is None:
                # A new upload the fixtures name: InitiateLayerUpload, checked as its own step.
                label = f"initiate-layer-upload{note}"
                doc = self.step(label, "initiate-layer-upload", resolve(initiate, self.values),
                                counts=False)
                self.start_upload(step["starts_upload"], doc, label)
                continue
            doc = self.step(f"{name}{note}", name, step)
            if "starts_upload" in step:
                self.start_upload(step["starts_upload"], doc, f"{name}{note}")

        unvisited = sorted(self.available - self.exercised)
        if unvisited:
            self.fail("every fixture exercised",
                      f"fixtures without a step in {EXPECTED.relative_to(ROOT)}: {unvisited}")
        else:
            self.passed += 1
            log(f"ok   every fixture exercised ({len(self.available)} in events/)")

# ------------------------------------------------------------------------------------------------


def run_oci_clients(run: Run, port: int, env: dict[str, str], tmp: Path) -> None:
    """Registry clients through the same watcher's function URL (tests/lambda/oci_pull.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import oci_pull

    try:
        found = oci_pull.skopeo_found()
    except AssertionError as e:
        run.fail("/v2/ clients through Lambda", str(e))
        return
    if not found:
        log("skip /v2/ clients through Lambda: skopeo is not installed (scripts/tools.sh system)")
        return
    t0 = time.monotonic()
    clients = oci_pull.OciThroughLambda(port, env, tmp, env["AWS_ENDPOINT_URL_S3"])
    for label, step in clients.steps():
        try:
            step()
        except Exception as e:  # noqa: BLE001 - a broken step is a failed step
            run.fail(label, f"{type(e).__name__}: {e}")
            continue
        run.passed += 1
        log(f"ok   {label}")
    log(f"/v2/ clients through Lambda: {time.monotonic() - t0:.1f} s")


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
        env.update({"ECR_BACKEND": "aws", "RUST_LOG": "info", "ECR_AUTH": "none"})
        tools_path(env)
        logdir = ROOT / "target" / "lambda-invoke"
        logdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ecr-lambda-invoke-") as tmp:
            tmp = Path(tmp)
            env_file = tmp / "watch.env"
            env_file.write_text("".join(f"{k}={v}\n" for k, v in
                                        {**senv, "ECR_BACKEND": "aws", "RUST_LOG": "info",
                                         "ECR_AUTH": "none"}.items()))
            watcher = Watcher(port, env, env_file, logdir / f"watch-{port}.log")
            ready = watcher.wait_ready((EVENTS / "error-missing-target.json").read_bytes())
            log(f"function answering on {HOST}:{port} after {ready:.1f} s")
            t0 = time.monotonic()
            run = Run(port, env, tmp, names)
            run.run()
            log(f"fixtures: {run.calls} invocations in {time.monotonic() - t0:.1f} s; "
                f"function instances started: {watcher.instances()}")
            run_oci_clients(run, port, env, tmp)
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

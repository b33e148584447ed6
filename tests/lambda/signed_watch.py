#!/usr/bin/env python3
"""boto3, signing for the address it calls, through `cargo lambda watch` with ECR_AUTH=sigv4.

The watcher emulates a Function URL at http://127.0.0.1:<port>/lambda-url/ecr-layer-upload/ and
hands the function a rawPath without `/lambda-url/ecr-layer-upload`; the function puts that
prefix back for the emulator's events only (src/frontdoors/lambda.rs, `emulated_url_prefix`), so
a client's signature over the address it called verifies. Checked here with real keys in the
local DynamoDB table (`ecr-layer-upload keys create`, AWS backend): a push-and-pull round trip
with a valid key, a wrong secret, an unknown key, no credentials, and a pull-only key pushing.

The local S3 and DynamoDB servers must be up (scripts/services.sh up); the watcher is the one of
tests/lambda/invoke_fixtures.py (its own port from 39600, LAMBDA_WATCH_FEATURES as there; log in
target/lambda-invoke/). ECR_BIN names the binary used for `keys` (default
target/debug/ecr-layer-upload). Ends with `N passed, N failed`; exits 1 on a failure.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions
from botocore import UNSIGNED

sys.path.insert(0, str(Path(__file__).resolve().parent))
import invoke_fixtures as fx  # noqa: E402  (the watcher, its environment and its port)

ROOT = fx.ROOT
BIN = os.environ.get("ECR_BIN", str(ROOT / "target" / "debug" / "ecr-layer-upload"))
REGION = "us-east-1"


def keys_create(env: dict[str, str], *args: str) -> tuple[str, str]:
    kenv = dict(env, ECR_BACKEND="aws")
    kenv.pop("AWS_LAMBDA_RUNTIME_API", None)
    proc = subprocess.run([BIN, "keys", "create", *args], cwd=ROOT, env=kenv,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise fx.Fatal(f"keys create {args}: {proc.stderr.strip()}")
    out = json.loads(proc.stdout)
    return out["accessKeyId"], out["secretAccessKey"]


def keys_delete(env: dict[str, str], key_id: str) -> None:
    kenv = dict(env, ECR_BACKEND="aws")
    kenv.pop("AWS_LAMBDA_RUNTIME_API", None)
    subprocess.run([BIN, "keys", "delete", key_id], cwd=ROOT, env=kenv,
                   capture_output=True, text=True, timeout=60)


def client(endpoint: str, key: tuple[str, str] | None):
    config = botocore.config.Config(retries={"max_attempts": 1}, read_timeout=180)
    if key is None:
        config = config.merge(botocore.config.Config(signature_version=UNSIGNED))
        return boto3.client("ecr", endpoint_url=endpoint, region_name=REGION, config=config)
    return boto3.client("ecr", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=key[0], aws_secret_access_key=key[1], config=config)


def refused(call, want_code: str, want_status: int) -> None:
    try:
        call()
    except botocore.exceptions.ClientError as e:
        got = (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
        assert got == (want_code, want_status), f"answered {got}, expected {(want_code, want_status)}"
        return
    raise AssertionError(f"accepted; expected {want_code}")


def push_and_pull(ecr, repo: str) -> None:
    ecr.create_repository(repositoryName=repo)
    layer = os.urandom(100_000)
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    digests = []
    for blob in (layer, config):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        up = ecr.initiate_layer_upload(repositoryName=repo)
        ecr.upload_layer_part(repositoryName=repo, uploadId=up["uploadId"], partFirstByte=0,
                              partLastByte=len(blob) - 1, layerPartBlob=blob)
        done = ecr.complete_layer_upload(repositoryName=repo, uploadId=up["uploadId"],
                                         layerDigests=[digest])
        assert done["layerDigest"] == digest, done
        digests.append((digest, len(blob)))
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digests[1][0], "size": digests[1][1]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digests[0][0], "size": digests[0][1]}],
    })
    ecr.put_image(repositoryName=repo, imageManifest=manifest, imageTag="v1")
    got = ecr.batch_get_image(repositoryName=repo, imageIds=[{"imageTag": "v1"}])
    assert got["images"][0]["imageManifest"] == manifest, got
    url = ecr.get_download_url_for_layer(repositoryName=repo, layerDigest=digests[0][0])
    status, data = fx.fetch(url["downloadUrl"])
    assert status == 200 and data == layer, f"GET {status}, {len(data)} bytes"


def main() -> int:
    passed = failed = 0
    watcher = None
    created: list[str] = []
    env: dict[str, str] = {}
    try:
        senv = fx.services_env()
        env = dict(os.environ)
        env.update(senv)
        fx.tools_path(env)
        if not os.environ.get("LAMBDA_PORT"):
            port = next((p for p in range(39600, 39700) if fx.port_free(p)), None)
            if port is None:
                raise fx.Fatal("no free port in 39600..39699; set LAMBDA_PORT")
        else:
            port = fx.choose_port()
        admin = keys_create(env, "--allow", "admin", "--name", "watch-admin")
        pull = keys_create(env, "--allow", "pull", "--name", "watch-reader")
        created += [admin[0], pull[0]]
        wenv = {**senv, "ECR_BACKEND": "aws", "RUST_LOG": "info", "ECR_AUTH": "sigv4"}
        env.update(wenv)
        logdir = ROOT / "target" / "lambda-invoke"
        logdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="ecr-signed-watch-") as tmp:
            env_file = Path(tmp) / "watch.env"
            env_file.write_text("".join(f"{k}={v}\n" for k, v in wenv.items()))
            watcher = fx.Watcher(port, env, env_file, logdir / f"signed-watch-{port}.log")
            ready = watcher.wait_ready((fx.EVENTS / "error-missing-target.json").read_bytes())
            fx.log(f"function answering on {fx.HOST}:{port} after {ready:.1f} s")
            endpoint = f"http://{fx.HOST}:{port}/lambda-url/{fx.FUNCTION}/"
            repo = f"watch/signed-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
            checks = [
                ("a valid key pushes and pulls through the Function URL emulation",
                 lambda: push_and_pull(client(endpoint, admin), repo)),
                ("a wrong secret: InvalidSignatureException",
                 lambda: refused(lambda: client(endpoint, (admin[0], "x" * 40))
                                 .describe_repositories(), "InvalidSignatureException", 400)),
                ("an unknown key: UnrecognizedClientException",
                 lambda: refused(lambda: client(endpoint, ("AKELNOSUCHKEY0000000", "x" * 40))
                                 .describe_repositories(), "UnrecognizedClientException", 400)),
                ("no credentials: MissingAuthenticationTokenException",
                 lambda: refused(lambda: client(endpoint, None).describe_repositories(),
                                 "MissingAuthenticationTokenException", 403)),
                ("a pull-only key pulls",
                 lambda: client(endpoint, pull).batch_get_image(
                     repositoryName=repo, imageIds=[{"imageTag": "v1"}])["images"][0]),
                ("a pull-only key pushing: AccessDeniedException",
                 lambda: refused(lambda: client(endpoint, pull).initiate_layer_upload(
                     repositoryName=repo), "AccessDeniedException", 400)),
            ]
            for label, check in checks:
                try:
                    check()
                    passed += 1
                    fx.log(f"ok   {label}")
                except Exception as e:  # noqa: BLE001 - a broken check is a failed check
                    failed += 1
                    fx.log(f"FAIL {label}: {type(e).__name__}: {e}")
                    if not isinstance(e, AssertionError):
                        fx.log(traceback.format_exc())
    except fx.Fatal as e:
        failed += 1
        fx.log(f"FAIL {e}")
    finally:
        if watcher is not None:
            watcher.stop()
            fx.log(f"watcher stopped (log: {watcher.log_path.relative_to(ROOT)})")
        for key_id in created:
            keys_delete(env, key_id)
    fx.log(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

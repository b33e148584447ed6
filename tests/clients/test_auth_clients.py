"""boto3 and the aws CLI, unmodified, against the real binary with ECR_AUTH=sigv4: keys made with
`ecr-layer-upload keys create`, a whole push and pull with a valid key, and every refusal (wrong
secret, unknown key, no credentials, a skewed clock, a pull-only key pushing, a `team/*` key on
another repository, a deleted key), and `aws ecr get-login-password`.

Run through `make test` or by hand:
ECR_BIN=target/debug/ecr-layer-upload python3 -m unittest tests/clients/test_auth_clients.py
With ECR_TEST_BACKEND=aws the server and the keys use S3 and DynamoDB from the environment.
"""
import base64
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import unittest.mock
import urllib.request
import uuid

import boto3
import botocore.auth
import botocore.config
import botocore.exceptions
from botocore import UNSIGNED

BIN = os.environ.get("ECR_BIN", "target/debug/ecr-layer-upload")
BACKEND = os.environ.get("ECR_TEST_BACKEND", "local")


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def keys(data, *args, check=True):
    env = dict(os.environ, ECR_BACKEND=BACKEND)
    env.pop("AWS_LAMBDA_RUNTIME_API", None)
    proc = subprocess.run([BIN, "keys", *args, "--data-dir", data],
                          capture_output=True, text=True, env=env, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"keys {args}: {proc.stderr}")
    return proc


def create_key(data, *args):
    out = json.loads(keys(data, "create", *args).stdout)
    return out["accessKeyId"], out["secretAccessKey"]


class Server:
    """The binary with ECR_AUTH=sigv4 on 127.0.0.1 with an ephemeral port, stopped by its PID."""

    def __init__(self, data):
        self.data = data
        env = dict(os.environ, RUST_LOG="info", ECR_BACKEND=BACKEND, ECR_AUTH="sigv4")
        env.pop("AWS_LAMBDA_RUNTIME_API", None)
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        found = threading.Event()
        self.endpoint = None

        def drain():
            for line in self.proc.stdout:
                if self.endpoint is None and "addr=" in line:
                    self.endpoint = "http://" + line.split("addr=")[1].split()[0]
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(30):
            self.stop()
            raise RuntimeError("ecr-layer-upload did not start in 30 s")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def setUpModule():
    global DATA, SERVER, ADMIN, PULL, TEAM, TEAM_PREFIX
    DATA = tempfile.mkdtemp(prefix="ecr-auth-clients-")
    TEAM_PREFIX = unique("team")
    ADMIN = create_key(DATA, "--allow", "admin", "--name", "ops")
    PULL = create_key(DATA, "--allow", "pull", "--name", "reader")
    TEAM = create_key(DATA, "--allow", "push", "--repository", TEAM_PREFIX + "/*")
    SERVER = Server(DATA)


def tearDownModule():
    SERVER.stop()
    shutil.rmtree(DATA, ignore_errors=True)


def ecr(key, **extra):
    return boto3.client(
        "ecr", endpoint_url=SERVER.endpoint, region_name="us-east-1",
        aws_access_key_id=key[0], aws_secret_access_key=key[1],
        config=botocore.config.Config(retries={"max_attempts": 1}, **extra))


class AuthClients(unittest.TestCase):
    def code(self, ctx):
        return ctx.exception.response["Error"]["Code"], \
            ctx.exception.response["ResponseMetadata"]["HTTPStatusCode"]

    def test_a_valid_key_pushes_and_pulls_an_image(self):
        admin, team = ecr(ADMIN), ecr(TEAM)
        repo = f"{TEAM_PREFIX}/app"
        admin.create_repository(repositoryName=repo)
        layer = os.urandom(200_000)
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        digests = []
        for blob in (layer, config):
            upload = team.initiate_layer_upload(repositoryName=repo)["uploadId"]
            team.upload_layer_part(repositoryName=repo, uploadId=upload, partFirstByte=0,
                                   partLastByte=len(blob) - 1, layerPartBlob=blob)
            d = "sha256:" + hashlib.sha256(blob).hexdigest()
            team.complete_layer_upload(repositoryName=repo, uploadId=upload, layerDigests=[d])
            digests.append(d)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digests[1], "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digests[0], "size": len(layer)}]})
        team.put_image(repositoryName=repo, imageManifest=manifest, imageTag="v1")
        reader = ecr(PULL)
        got = reader.batch_get_image(repositoryName=repo, imageIds=[{"imageTag": "v1"}])
        self.assertEqual(got["images"][0]["imageManifest"], manifest)
        url = reader.get_download_url_for_layer(
            repositoryName=repo, layerDigest=digests[0])["downloadUrl"]
        with urllib.request.urlopen(url, timeout=30) as resp:
            self.assertEqual(resp.read(), layer)

    def test_refusals(self):
        repo = f"{TEAM_PREFIX}/refused"
        ecr(ADMIN).create_repository(repositoryName=repo)
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            ecr((ADMIN[0], "not-the-secret")).describe_repositories()
        self.assertEqual(self.code(ctx), ("InvalidSignatureException", 400))
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            ecr(("AKELUNKNOWN000000000", ADMIN[1])).describe_repositories()
        self.assertEqual(self.code(ctx), ("UnrecognizedClientException", 400))
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            ecr(ADMIN, signature_version=UNSIGNED).describe_repositories()
        self.assertEqual(self.code(ctx), ("MissingAuthenticationTokenException", 403))
        # A clock 20 minutes slow, in whichever signer botocore uses (its own, or awscrt's when
        # that is installed, as the aws CLI's dependencies bring it).
        def slow(remove_tzinfo=True):
            now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)
            return now.replace(tzinfo=None) if remove_tzinfo else now

        with contextlib.ExitStack() as patches:
            patches.enter_context(
                unittest.mock.patch.object(botocore.auth, "get_current_datetime", slow))
            try:
                import botocore.crt.auth as crt_auth
            except ImportError:
                crt_auth = None
            if crt_auth is not None:
                patches.enter_context(
                    unittest.mock.patch.object(crt_auth, "get_current_datetime", slow))
            with self.assertRaises(botocore.exceptions.ClientError) as ctx:
                ecr(ADMIN).describe_repositories()
        self.assertEqual(self.code(ctx), ("InvalidSignatureException", 400))
        self.assertIn("Signature expired", ctx.exception.response["Error"]["Message"])
        # A pull-only key pushing.
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            ecr(PULL).initiate_layer_upload(repositoryName=repo)
        self.assertEqual(self.code(ctx), ("AccessDeniedException", 400))
        self.assertIn("user/reader is not authorized to perform: ecr:InitiateLayerUpload "
                      f"on resource: arn:aws:ecr:us-east-1:123456789012:repository/{repo} "
                      "because no identity-based policy allows the ecr:InitiateLayerUpload action",
                      ctx.exception.response["Error"]["Message"])
        # A team key on another repository.
        other = unique("elsewhere")
        ecr(ADMIN).create_repository(repositoryName=other)
        with self.assertRaises(botocore.exceptions.ClientError) as ctx:
            ecr(TEAM).initiate_layer_upload(repositoryName=other)
        self.assertEqual(self.code(ctx), ("AccessDeniedException", 400))

    def aws(self, key, *args):
        env = dict(os.environ, AWS_ACCESS_KEY_ID=key[0], AWS_SECRET_ACCESS_KEY=key[1],
                   AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            env.pop(k, None)
        return subprocess.run(["aws", "ecr", *args, "--endpoint-url", SERVER.endpoint],
                              capture_output=True, text=True, env=env, timeout=60)

    def test_aws_cli_get_login_password_and_refusals(self):
        out = self.aws(PULL, "get-login-password")
        self.assertEqual(out.returncode, 0, out.stderr)
        password = out.stdout.strip()
        self.assertTrue(password.startswith("elu1."), password)
        out = self.aws(PULL, "get-authorization-token", "--output", "json")
        self.assertEqual(out.returncode, 0, out.stderr)
        data = json.loads(out.stdout)["authorizationData"][0]
        user, _, pw = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        self.assertEqual(user, "AWS")
        self.assertTrue(pw.startswith("elu1."))
        self.assertEqual(data["proxyEndpoint"], SERVER.endpoint)
        repo = unique("cli")
        out = self.aws(ADMIN, "create-repository", "--repository-name", repo)
        self.assertEqual(out.returncode, 0, out.stderr)
        out = self.aws(PULL, "delete-repository", "--repository-name", repo)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("AccessDeniedException", out.stderr)
        out = self.aws((ADMIN[0], "wrong"), "describe-repositories")
        self.assertIn("InvalidSignatureException", out.stderr)

    def test_zz_a_deleted_key_is_refused_within_seconds(self):
        key = create_key(DATA, "--allow", "pull")
        client = ecr(key)
        deadline = time.time() + 3
        while True:  # a new key is known within a second too
            try:
                client.describe_repositories()
                break
            except botocore.exceptions.ClientError:
                self.assertLess(time.time(), deadline)
                time.sleep(0.1)
        keys(DATA, "delete", key[0])
        deadline = time.time() + 3
        while True:
            try:
                client.describe_repositories()
            except botocore.exceptions.ClientError as e:
                self.assertEqual(e.response["Error"]["Code"], "UnrecognizedClientException")
                break
            self.assertLess(time.time(), deadline, "a deleted key still works after 3 s")
            time.sleep(0.1)
        listed = keys(DATA, "list").stdout
        self.assertNotIn(key[0], listed)
        self.assertNotIn(ADMIN[1], listed)


if __name__ == "__main__":
    unittest.main()

"""boto3 and the aws CLI, unmodified, against the real binary: a full initiate → parts →
complete flow with each, and typed errors.

Run through `make test-clients` (which builds the binary and provides boto3 and the CLI), or by
hand: ECR_BIN=target/debug/ecr-layer-upload python3 -m unittest tests/clients/test_clients.py
With ECR_TEST_BACKEND=aws the server uses S3 and DynamoDB from the environment.
"""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
import uuid

import boto3
import botocore.config
import botocore.exceptions

BIN = os.environ.get("ECR_BIN", "target/debug/ecr-layer-upload")
REGISTRY = "123456789012"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "secret"}


class Server:
    """The binary on 127.0.0.1 with an ephemeral port, stopped by its PID."""

    def __init__(self):
        self.data = tempfile.mkdtemp(prefix="ecr-clients-")
        env = dict(os.environ, RUST_LOG="info",
                   ECR_BACKEND=os.environ.get("ECR_TEST_BACKEND", "local"))
        env.pop("AWS_LAMBDA_RUNTIME_API", None)
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", self.data],
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
        shutil.rmtree(self.data, ignore_errors=True)


def setUpModule():
    global SERVER
    SERVER = Server()


def tearDownModule():
    SERVER.stop()


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def layer_bytes(n, seed):
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


class Boto3Flow(unittest.TestCase):
    def setUp(self):
        self.ecr = boto3.client(
            "ecr", endpoint_url=SERVER.endpoint, region_name="us-east-1",
            aws_access_key_id="AKIDTEST", aws_secret_access_key="secret",
            config=botocore.config.Config(retries={"max_attempts": 1}))

    def test_full_push_in_parts(self):
        name = unique("boto3/flow")
        repo = self.ecr.create_repository(repositoryName=name)["repository"]
        self.assertEqual(repo["repositoryName"], name)
        self.assertEqual(repo["registryId"], REGISTRY)
        init = self.ecr.initiate_layer_upload(repositoryName=name)
        self.assertEqual(init["partSize"], 10485760)
        upload_id = init["uploadId"]
        layer = layer_bytes(5 * 1024 * 1024 + 4321, "boto3")
        cut = 5 * 1024 * 1024
        for first, chunk in ((0, layer[:cut]), (cut, layer[cut:])):
            out = self.ecr.upload_layer_part(
                repositoryName=name, uploadId=upload_id, partFirstByte=first,
                partLastByte=first + len(chunk) - 1, layerPartBlob=chunk)
            self.assertEqual(out["lastByteReceived"], first + len(chunk) - 1)
        digest = "sha256:" + hashlib.sha256(layer).hexdigest()
        done = self.ecr.complete_layer_upload(
            repositoryName=name, uploadId=upload_id, layerDigests=[digest])
        self.assertEqual(done["layerDigest"], digest)
        self.assertEqual(done["uploadId"], upload_id)
        # The same layer again: verified, then reported as already there.
        again = self.ecr.initiate_layer_upload(repositoryName=name)["uploadId"]
        self.ecr.upload_layer_part(repositoryName=name, uploadId=again, partFirstByte=0,
                                   partLastByte=len(layer) - 1, layerPartBlob=layer)
        with self.assertRaises(self.ecr.exceptions.LayerAlreadyExistsException):
            self.ecr.complete_layer_upload(repositoryName=name, uploadId=again,
                                           layerDigests=[digest])

    def test_typed_errors(self):
        name = unique("boto3/errors")
        self.ecr.create_repository(repositoryName=name)
        upload_id = self.ecr.initiate_layer_upload(repositoryName=name)["uploadId"]
        self.ecr.upload_layer_part(repositoryName=name, uploadId=upload_id, partFirstByte=0,
                                   partLastByte=9, layerPartBlob=b"0123456789")
        with self.assertRaises(self.ecr.exceptions.InvalidLayerPartException) as caught:
            self.ecr.upload_layer_part(repositoryName=name, uploadId=upload_id,
                                       partFirstByte=50, partLastByte=52, layerPartBlob=b"abc")
        err = caught.exception.response
        self.assertEqual(err["lastValidByteReceived"], 9)
        self.assertEqual(err["Error"]["Message"],
                         "First byte of the layer part is 50 instead of 10")
        self.assertEqual(caught.exception.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        with self.assertRaises(self.ecr.exceptions.RepositoryNotFoundException):
            self.ecr.initiate_layer_upload(repositoryName="no-such/repo")
        with self.assertRaises(self.ecr.exceptions.InvalidParameterException):
            self.ecr.initiate_layer_upload(repositoryName="UPPER")
        with self.assertRaises(self.ecr.exceptions.UploadNotFoundException):
            self.ecr.complete_layer_upload(repositoryName=name,
                                           uploadId=str(uuid.uuid4()),
                                           layerDigests=["sha256:" + "0" * 64])
        with self.assertRaises(self.ecr.exceptions.RepositoryAlreadyExistsException):
            self.ecr.create_repository(repositoryName=name)


class AwsCliFlow(unittest.TestCase):
    def aws(self, *args, check=True):
        env = dict(os.environ, **CREDENTIALS, AWS_DEFAULT_REGION="us-east-1",
                   AWS_MAX_ATTEMPTS="1")
        env.pop("AWS_PROFILE", None)
        proc = subprocess.run(
            ["aws", "ecr", *args, "--endpoint-url", SERVER.endpoint, "--output", "json"],
            capture_output=True, text=True, env=env, timeout=120)
        if check and proc.returncode != 0:
            self.fail(f"aws {' '.join(args[:1])} failed: {proc.stderr}")
        return proc

    def test_full_push_in_parts(self):
        name = unique("cli/flow")
        out = json.loads(self.aws("create-repository", "--repository-name", name).stdout)
        self.assertEqual(out["repository"]["repositoryUri"],
                         f"{REGISTRY}.dkr.ecr.us-east-1.amazonaws.com/{name}")
        upload_id = json.loads(self.aws("initiate-layer-upload", "--repository-name",
                                        name).stdout)["uploadId"]
        layer = layer_bytes(3 * 1024 * 1024 + 17, "cli")
        with tempfile.TemporaryDirectory() as tmp:
            # The CLI reads a blob parameter from a file as raw bytes with fileb://.
            first = 0
            for i, chunk in enumerate((layer[:1024 * 1024], layer[1024 * 1024:])):
                path = os.path.join(tmp, f"part{i}")
                with open(path, "wb") as f:
                    f.write(chunk)
                out = json.loads(self.aws(
                    "upload-layer-part", "--repository-name", name, "--upload-id", upload_id,
                    "--part-first-byte", str(first),
                    "--part-last-byte", str(first + len(chunk) - 1),
                    "--layer-part-blob", f"fileb://{path}").stdout)
                first += len(chunk)
                self.assertEqual(out["lastByteReceived"], first - 1)
        digest = "sha256:" + hashlib.sha256(layer).hexdigest()
        # ECR's 5 MiB minimum applies to the 1 MiB first part.
        proc = self.aws("complete-layer-upload", "--repository-name", name, "--upload-id",
                        upload_id, "--layer-digests", digest, check=False)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("LayerPartTooSmallException", proc.stderr)

        upload_id = json.loads(self.aws("initiate-layer-upload", "--repository-name",
                                        name).stdout)["uploadId"]
        with tempfile.NamedTemporaryFile() as f:
            f.write(layer)
            f.flush()
            self.aws("upload-layer-part", "--repository-name", name, "--upload-id", upload_id,
                     "--part-first-byte", "0", "--part-last-byte", str(len(layer) - 1),
                     "--layer-part-blob", f"fileb://{f.name}")
        out = json.loads(self.aws("complete-layer-upload", "--repository-name", name,
                                  "--upload-id", upload_id, "--layer-digests", digest).stdout)
        self.assertEqual(out["layerDigest"], digest)

    def test_typed_error(self):
        proc = self.aws("initiate-layer-upload", "--repository-name", "no-such/repo",
                        check=False)
        self.assertEqual(proc.returncode, 255)
        self.assertIn("RepositoryNotFoundException", proc.stderr)
        self.assertIn("The repository with name 'no-such/repo' does not exist in the registry "
                      f"with id '{REGISTRY}'", proc.stderr)


if __name__ == "__main__":
    unittest.main()

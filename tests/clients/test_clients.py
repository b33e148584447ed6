"""boto3 and the aws CLI, unmodified, against the real binary: a full initiate → parts →
complete flow with each, typed errors, and a real OCI image pushed and pulled back byte for byte.

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
import urllib.request
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


def fetch(url, byte_range=None):
    """GETs a download URL as a plain HTTP client would; returns (status, bytes)."""
    req = urllib.request.Request(url)
    if byte_range:
        req.add_header("Range", byte_range)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, resp.read()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class OciImageRoundTrip(unittest.TestCase):
    """An OCI image (config + two layers + manifest) pushed with boto3 the way AWS's Go client
    pushes one, then pulled back through BatchGetImage and the download URLs."""

    def setUp(self):
        self.ecr = boto3.client(
            "ecr", endpoint_url=SERVER.endpoint, region_name="us-east-1",
            aws_access_key_id="AKIDTEST", aws_secret_access_key="secret",
            config=botocore.config.Config(retries={"max_attempts": 1}))

    def push_blob(self, name, data):
        digest = sha256(data)
        check = self.ecr.batch_check_layer_availability(
            repositoryName=name, layerDigests=[digest])
        self.assertEqual(check["failures"], [])
        self.assertEqual(check["layers"][0]["layerAvailability"], "UNAVAILABLE")
        init = self.ecr.initiate_layer_upload(repositoryName=name)
        part = init["partSize"]
        for first in range(0, len(data), part):
            chunk = data[first:first + part]
            self.ecr.upload_layer_part(
                repositoryName=name, uploadId=init["uploadId"], partFirstByte=first,
                partLastByte=first + len(chunk) - 1, layerPartBlob=chunk)
        done = self.ecr.complete_layer_upload(
            repositoryName=name, uploadId=init["uploadId"], layerDigests=[digest])
        self.assertEqual(done["layerDigest"], digest)
        return {"digest": digest, "size": len(data)}

    def test_push_then_pull_every_byte(self):
        name = unique("boto3/image")
        self.ecr.create_repository(repositoryName=name)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        blobs = {
            "config": config,
            "small": layer_bytes(70_000, "small layer"),
            # Over ECR's part size, so it takes two parts.
            "large": layer_bytes(10 * 1024 * 1024 + 12_345, "large layer"),
        }
        pushed = {k: self.push_blob(name, v) for k, v in blobs.items()}
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": dict(mediaType="application/vnd.oci.image.config.v1+json",
                           **pushed["config"]),
            "layers": [dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip",
                            **pushed[k]) for k in ("small", "large")],
        }, indent=3)
        out = self.ecr.put_image(repositoryName=name, imageManifest=manifest,
                                 imageManifestMediaType=OCI_MANIFEST, imageTag="v1")
        image_digest = sha256(manifest.encode())
        self.assertEqual(out["image"]["imageId"], {"imageDigest": image_digest,
                                                   "imageTag": "v1"})
        with self.assertRaises(self.ecr.exceptions.ImageAlreadyExistsException):
            self.ecr.put_image(repositoryName=name, imageManifest=manifest, imageTag="v1")

        # Pull: the manifest by tag, then every blob it names through its download URL.
        got = self.ecr.batch_get_image(
            repositoryName=name, imageIds=[{"imageTag": "v1"}],
            acceptedMediaTypes=[OCI_MANIFEST])
        self.assertEqual(got["failures"], [])
        image = got["images"][0]
        self.assertEqual(image["imageManifest"], manifest)
        self.assertEqual(image["imageId"]["imageDigest"], image_digest)
        self.assertEqual(image["imageManifestMediaType"], OCI_MANIFEST)
        pulled = json.loads(image["imageManifest"])
        for desc in [pulled["config"], *pulled["layers"]]:
            url = self.ecr.get_download_url_for_layer(
                repositoryName=name, layerDigest=desc["digest"])
            self.assertEqual(url["layerDigest"], desc["digest"])
            status, data = fetch(url["downloadUrl"])
            self.assertEqual(status, 200)
            self.assertEqual(len(data), desc["size"])
            self.assertEqual(sha256(data), desc["digest"])
            status, part = fetch(url["downloadUrl"], "bytes=5-104")
            self.assertEqual(status, 206)
            self.assertEqual(part, data[5:105])
        by_key = {sha256(v): v for v in blobs.values()}
        self.assertEqual(set(by_key), {d["digest"] for d in [pulled["config"], *pulled["layers"]]})

        check = self.ecr.batch_check_layer_availability(
            repositoryName=name, layerDigests=[pushed["large"]["digest"]])
        layer = check["layers"][0]
        self.assertEqual(layer["layerAvailability"], "AVAILABLE")
        self.assertEqual(layer["layerSize"], len(blobs["large"]))
        self.assertEqual(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip")

        details = self.ecr.describe_images(repositoryName=name)["imageDetails"]
        self.assertEqual(len(details), 1)
        self.assertEqual(details[0]["imageDigest"], image_digest)
        self.assertEqual(details[0]["imageTags"], ["v1"])
        self.assertEqual(details[0]["imageSizeInBytes"],
                         len(blobs["small"]) + len(blobs["large"]))
        self.assertEqual(self.ecr.list_images(repositoryName=name)["imageIds"],
                         [{"imageDigest": image_digest, "imageTag": "v1"}])

        with self.assertRaises(self.ecr.exceptions.RepositoryNotEmptyException):
            self.ecr.delete_repository(repositoryName=name)
        deleted = self.ecr.batch_delete_image(repositoryName=name, imageIds=[{"imageTag": "v1"}])
        self.assertEqual(deleted["imageIds"], [{"imageDigest": image_digest, "imageTag": "v1"}])
        self.assertEqual(self.ecr.list_images(repositoryName=name)["imageIds"], [])
        self.ecr.delete_repository(repositoryName=name)

    def test_image_errors_are_typed(self):
        name = unique("boto3/image-errors")
        self.ecr.create_repository(repositoryName=name)
        absent = sha256(b"never pushed")
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": absent, "size": 12},
            "layers": []})
        with self.assertRaises(self.ecr.exceptions.LayersNotFoundException):
            self.ecr.put_image(repositoryName=name, imageManifest=manifest, imageTag="t")
        with self.assertRaises(self.ecr.exceptions.LayersNotFoundException):
            self.ecr.get_download_url_for_layer(repositoryName=name, layerDigest=absent)
        layer = self.push_blob(name, b"unreferenced layer bytes")
        with self.assertRaises(self.ecr.exceptions.LayerInaccessibleException):
            self.ecr.get_download_url_for_layer(repositoryName=name,
                                                layerDigest=layer["digest"])
        with self.assertRaises(self.ecr.exceptions.InvalidParameterException):
            self.ecr.put_image(repositoryName=name, imageManifest="{not json")
        with self.assertRaises(self.ecr.exceptions.ImageNotFoundException):
            self.ecr.describe_images(repositoryName=name, imageIds=[{"imageTag": "nope"}])
        got = self.ecr.batch_get_image(repositoryName=name, imageIds=[{"imageTag": "nope"}])
        self.assertEqual(got["failures"][0]["failureCode"], "ImageNotFound")


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
        # The registry's address as clients reach it, so `docker push <repositoryUri>:tag` works.
        self.assertEqual(out["repository"]["repositoryUri"],
                         f"{SERVER.endpoint.removeprefix('http://')}/{name}")
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

    def test_put_image_and_batch_get_image(self):
        name = unique("cli/image")
        self.aws("create-repository", "--repository-name", name)
        config = b'{"architecture":"arm64","os":"linux"}'
        digest = sha256(config)
        upload_id = json.loads(self.aws("initiate-layer-upload", "--repository-name",
                                        name).stdout)["uploadId"]
        with tempfile.TemporaryDirectory() as tmp:
            blob = os.path.join(tmp, "config")
            with open(blob, "wb") as f:
                f.write(config)
            self.aws("upload-layer-part", "--repository-name", name, "--upload-id", upload_id,
                     "--part-first-byte", "0", "--part-last-byte", str(len(config) - 1),
                     "--layer-part-blob", f"fileb://{blob}")
            self.aws("complete-layer-upload", "--repository-name", name, "--upload-id",
                     upload_id, "--layer-digests", digest)
            manifest = json.dumps({
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": digest, "size": len(config)},
                "layers": []})
            path = os.path.join(tmp, "manifest.json")
            with open(path, "w") as f:
                f.write(manifest)
            out = json.loads(self.aws("put-image", "--repository-name", name,
                                      "--image-tag", "latest",
                                      "--image-manifest", f"file://{path}").stdout)
        self.assertEqual(out["image"]["imageId"]["imageDigest"], sha256(manifest.encode()))
        got = json.loads(self.aws("batch-get-image", "--repository-name", name,
                                  "--image-ids", "imageTag=latest").stdout)
        self.assertEqual(got["images"][0]["imageManifest"], manifest)
        self.assertEqual(got["images"][0]["imageManifestMediaType"],
                         "application/vnd.docker.distribution.manifest.v2+json")
        url = json.loads(self.aws("get-download-url-for-layer", "--repository-name", name,
                                  "--layer-digest", digest).stdout)["downloadUrl"]
        self.assertEqual(fetch(url), (200, config))
        proc = self.aws("delete-repository", "--repository-name", name, check=False)
        self.assertIn("RepositoryNotEmptyException", proc.stderr)
        self.aws("delete-repository", "--repository-name", name, "--force")

    def test_typed_error(self):
        proc = self.aws("initiate-layer-upload", "--repository-name", "no-such/repo",
                        check=False)
        self.assertEqual(proc.returncode, 255)
        self.assertIn("RepositoryNotFoundException", proc.stderr)
        self.assertIn("The repository with name 'no-such/repo' does not exist in the registry "
                      f"with id '{REGISTRY}'", proc.stderr)


if __name__ == "__main__":
    unittest.main()

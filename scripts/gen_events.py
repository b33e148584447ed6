#!/usr/bin/env python3
"""Writes events/*.json: Lambda Function URL (payload 2.0) events, one per operation and main
error case, as a Function URL delivers them to the function.

A Function URL hands an `application/x-amz-json-1.1` body to the function base64-encoded
(`isBase64Encoded: true`), because the content type is neither JSON nor text; a few fixtures carry
the body as plain text too, as an emulator or API Gateway mapping may. Run it again after changing
it: `python3 scripts/gen_events.py`.

The fixtures make one push when sent in order: the layer PART goes up under UPLOAD_ID and the
image config under CONFIG_UPLOAD_ID, then one OCI manifest over both is put under two tags, read
back, and deleted. tests/fixtures/expected.json lists that order and what each fixture must be
answered (tests/unit/events.rs and tests/lambda/invoke_fixtures.py read it): a fixture added here
needs a step there, and REPO and the upload ids must stay the ones it names.
"""
import base64
import hashlib
import json
import os

HOST = "b2nqkvgpr6cw3tqcgjzjqxk4da0hxwxe.lambda-url.us-east-1.on.aws"
UPLOAD_ID = "0b7a3b1e-5c1d-4a4e-9a52-3f6c2d9e8f10"
# The image's config blob goes up through an upload of its own, so that a run can push the layer
# and the config one after the other with the same fixtures' flow.
CONFIG_UPLOAD_ID = "6d2f0c4a-8b3e-4f71-a2c5-9e1b7d3f5a60"
REPO = "sample/app"
PART = b"layer bytes of a tiny example layer\n"
# A blob no fixture uploads: a manifest naming it cannot be put.
ABSENT = b"a layer that was never pushed\n"
TAG = "v1"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
OUT = os.path.join(os.path.dirname(__file__), "..", "events")


def event(name, operation, body, b64=True, target=True):
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    headers = {
        "content-type": "application/x-amz-json-1.1",
        "host": HOST,
        "user-agent": "aws-cli/1.45.11 md/Botocore#1.43.11 ua/2.1 os/linux#6.1 md/arch#x86_64 lang/python#3.11.7 md/pyimpl#CPython cfg/retry-mode#legacy botocore/1.43.11",
        "x-amz-date": "20261122T063000Z",
        "authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261122/us-east-1/ecr/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        "content-length": str(len(raw)),
        "x-amzn-trace-id": "Root=1-6740257c-0f0e5a2b3c4d5e6f7a8b9c0d",
        "x-forwarded-for": "203.0.113.10",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
        "accept-encoding": "identity",
    }
    if target:
        headers["x-amz-target"] = f"AmazonEC2ContainerRegistry_V20150921.{operation}"
    ev = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": HOST.split(".")[0],
            "domainName": HOST,
            "domainPrefix": HOST.split(".")[0],
            "http": {
                "method": "POST",
                "path": "/",
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.10",
                "userAgent": headers["user-agent"],
            },
            "requestId": "c3a0f6a2-9a0e-4b8e-8f55-6a1f0d2b7e41",
            "routeKey": "$default",
            "stage": "$default",
            "time": "22/Nov/2026:06:30:00 +0000",
            "timeEpoch": 1795329000000,
        },
        "body": base64.b64encode(raw).decode() if b64 else raw.decode(),
        "isBase64Encoded": b64,
    }
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(ev, f, indent=2)
        f.write("\n")


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_blob():
    """An OCI image config whose one layer is PART (uncompressed, so its diff id is its digest)."""
    doc = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": [sha256(PART)]}}
    return json.dumps(doc, separators=(",", ":")).encode()


def manifest(config, layer):
    """An OCI image manifest over a config and one layer, indented as `docker` writes them: the
    image digest is the sha256 of this text, whitespace included."""
    doc = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
           "config": {"mediaType": CONFIG_TYPE, "digest": sha256(config), "size": len(config)},
           "layers": [{"mediaType": LAYER_TYPE, "digest": sha256(layer), "size": len(layer)}]}
    return json.dumps(doc, indent=3)


def main():
    os.makedirs(OUT, exist_ok=True)
    digest = sha256(PART)
    blob = base64.b64encode(PART).decode()
    event("create-repository", "CreateRepository", {"repositoryName": REPO})
    event("describe-repositories", "DescribeRepositories", {"repositoryNames": [REPO]}, b64=False)
    event("initiate-layer-upload", "InitiateLayerUpload", {"repositoryName": REPO})
    part = {"repositoryName": REPO, "uploadId": UPLOAD_ID, "partFirstByte": 0,
            "partLastByte": len(PART) - 1, "layerPartBlob": blob}
    event("upload-layer-part", "UploadLayerPart", part)
    event("upload-layer-part-text-body", "UploadLayerPart", part, b64=False)
    event("complete-layer-upload", "CompleteLayerUpload",
          {"repositoryName": REPO, "uploadId": UPLOAD_ID, "layerDigests": [digest]})
    # The config blob, in one part through an upload of its own.
    config = config_blob()
    config_part = {"repositoryName": REPO, "uploadId": CONFIG_UPLOAD_ID, "partFirstByte": 0,
                   "partLastByte": len(config) - 1,
                   "layerPartBlob": base64.b64encode(config).decode()}
    event("upload-config-part", "UploadLayerPart", config_part)
    event("complete-config-upload", "CompleteLayerUpload",
          {"repositoryName": REPO, "uploadId": CONFIG_UPLOAD_ID, "layerDigests": [sha256(config)]})
    event("batch-check-layer-availability", "BatchCheckLayerAvailability",
          {"repositoryName": REPO, "layerDigests": [digest, sha256(config), sha256(ABSENT)]})
    # Images: one manifest over the layer and the config, under two tags.
    text = manifest(config, PART)
    image_digest = sha256(text.encode())
    put = {"repositoryName": REPO, "imageManifest": text, "imageManifestMediaType": MANIFEST_TYPE,
           "imageTag": TAG}
    event("put-image", "PutImage", put)
    event("put-image-tag-latest", "PutImage", {**put, "imageTag": "latest"})
    event("batch-get-image", "BatchGetImage",
          {"repositoryName": REPO,
           "imageIds": [{"imageTag": TAG}, {"imageDigest": image_digest}, {"imageTag": "nope"}],
           "acceptedMediaTypes": [MANIFEST_TYPE,
                                  "application/vnd.docker.distribution.manifest.v2+json"]})
    event("list-images", "ListImages", {"repositoryName": REPO, "maxResults": 1})
    event("describe-images", "DescribeImages",
          {"repositoryName": REPO, "filter": {"tagStatus": "TAGGED"}})
    event("get-download-url-for-layer", "GetDownloadUrlForLayer",
          {"repositoryName": REPO, "layerDigest": digest})
    event("batch-delete-image", "BatchDeleteImage",
          {"repositoryName": REPO,
           "imageIds": [{"imageDigest": image_digest}, {"imageTag": "nope"}]})
    event("delete-repository", "DeleteRepository", {"repositoryName": REPO, "force": True})
    # Error cases.
    event("error-unknown-operation", "PutLifecyclePolicyEverywhere", {"repositoryName": REPO})
    event("error-missing-target", "", {"repositoryName": REPO}, target=False)
    event("error-serialization", "InitiateLayerUpload", b"[\"not\", \"an object\"]")
    event("error-wrong-member-type", "UploadLayerPart", {**part, "partFirstByte": "zero"})
    event("error-invalid-repository-name", "InitiateLayerUpload", {"repositoryName": "A"})
    event("error-repository-not-found", "InitiateLayerUpload", {"repositoryName": "no/such-repo"})
    event("error-registry-mismatch", "InitiateLayerUpload",
          {"registryId": "999999999999", "repositoryName": REPO})
    event("error-upload-not-found", "UploadLayerPart",
          {**part, "uploadId": "11111111-2222-3333-4444-555555555555"})
    event("error-invalid-layer-part", "UploadLayerPart",
          {**part, "partFirstByte": 100, "partLastByte": 100 + len(PART) - 1})
    event("error-part-length-mismatch", "UploadLayerPart", {**part, "partLastByte": len(PART)})
    event("error-empty-upload", "CompleteLayerUpload",
          {"repositoryName": REPO, "uploadId": UPLOAD_ID, "layerDigests": [digest]})
    event("error-invalid-layer-digest", "CompleteLayerUpload",
          {"repositoryName": REPO, "uploadId": UPLOAD_ID,
           "layerDigests": ["sha256:" + "0" * 64]})
    event("error-repository-already-exists", "CreateRepository", {"repositoryName": REPO})
    event("error-layers-not-found", "PutImage",
          {"repositoryName": REPO, "imageManifest": manifest(config, ABSENT), "imageTag": TAG})
    event("error-image-already-exists", "PutImage", put)
    # Before PutImage references it, a pushed layer is not served.
    event("error-layer-inaccessible", "GetDownloadUrlForLayer",
          {"repositoryName": REPO, "layerDigest": digest})
    event("error-repository-not-empty", "DeleteRepository", {"repositoryName": REPO})


if __name__ == "__main__":
    main()

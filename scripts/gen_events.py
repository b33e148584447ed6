#!/usr/bin/env python3
"""Writes events/*.json: Lambda Function URL (payload 2.0) events, one per operation and main
error case, as a Function URL delivers them to the function.

A Function URL hands an `application/x-amz-json-1.1` body to the function base64-encoded
(`isBase64Encoded: true`), because the content type is neither JSON nor text; a few fixtures carry
the body as plain text too, as an emulator or API Gateway mapping may. Run it again after changing
it: `python3 scripts/gen_events.py`.
"""
import base64
import hashlib
import json
import os

HOST = "b2nqkvgpr6cw3tqcgjzjqxk4da0hxwxe.lambda-url.us-east-1.on.aws"
UPLOAD_ID = "0b7a3b1e-5c1d-4a4e-9a52-3f6c2d9e8f10"
REPO = "sample/app"
PART = b"layer bytes of a tiny example layer\n"
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


def main():
    os.makedirs(OUT, exist_ok=True)
    digest = "sha256:" + hashlib.sha256(PART).hexdigest()
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


if __name__ == "__main__":
    main()

// The JavaScript SDK (@aws-sdk/client-ecr, installed by scripts/tools.sh), unmodified, against the
// real binary with ECR_AUTH=sigv4 and keys made by `ecr-layer-upload keys create`: a valid key
// pushes a layer and an image and pulls them back, a wrong secret, an unknown key and a pull-only
// key pushing are refused with AWS's error types.
//
// Run through `make test` (scripts/test.sh), or by hand:
//   NODE_PATH="$(scripts/tools.sh node-path)" ECR_BIN=target/debug/ecr-layer-upload \
//     ECR_TEST_BACKEND=local node tests/clients/js/auth_clients.cjs
// With ECR_TEST_BACKEND=aws the server and the keys use S3 and DynamoDB from the environment
// (scripts/services.sh env). Ends with `N passed, N failed`; exits 1 on a failure.
"use strict";

const assert = require("node:assert/strict");
const { spawn, execFileSync } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const ecr = require("@aws-sdk/client-ecr");

const BIN = process.env.ECR_BIN || "target/debug/ecr-layer-upload";
const BACKEND = process.env.ECR_TEST_BACKEND || "local";
const REGION = "us-east-1";
const START_MS = 30_000;

function childEnv(extra) {
  const env = { ...process.env, ECR_BACKEND: BACKEND, ...extra };
  delete env.AWS_LAMBDA_RUNTIME_API;
  return env;
}

function createKey(data, ...args) {
  const out = execFileSync(BIN, ["keys", "create", ...args, "--data-dir", data], {
    env: childEnv({}),
    encoding: "utf8",
    timeout: 60_000,
  });
  const key = JSON.parse(out);
  return { accessKeyId: key.accessKeyId, secretAccessKey: key.secretAccessKey };
}

// The binary on 127.0.0.1 with an ephemeral port; resolves to { endpoint, stop }.
function startServer(data) {
  const proc = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--data-dir", data], {
    env: childEnv({ ECR_AUTH: "sigv4", RUST_LOG: "info" }),
    stdio: ["ignore", "pipe", "pipe"],
  });
  const stop = () =>
    new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
      const kill = setTimeout(() => proc.kill("SIGKILL"), 10_000);
      proc.once("exit", () => {
        clearTimeout(kill);
        resolve();
      });
      proc.kill("SIGTERM");
    });
  return new Promise((resolve, reject) => {
    let buffered = "";
    const timer = setTimeout(() => {
      stop().then(() => reject(new Error(`the server did not start in ${START_MS} ms`)));
    }, START_MS);
    proc.stderr.resume();
    proc.stdout.on("data", (chunk) => {
      if (buffered === null) return;
      buffered += chunk.toString();
      const m = buffered.match(/addr=(\S+)/);
      if (m) {
        buffered = null;
        clearTimeout(timer);
        resolve({ endpoint: `http://${m[1]}`, stop });
      }
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      if (buffered !== null) reject(new Error(`the server exited (${code}) before listening`));
    });
  });
}

function client(endpoint, credentials) {
  return new ecr.ECRClient({ endpoint, region: REGION, credentials, maxAttempts: 1 });
}

const sha256 = (bytes) => "sha256:" + crypto.createHash("sha256").update(bytes).digest("hex");

async function refused(promise, type, status) {
  try {
    await promise;
  } catch (e) {
    assert.deepEqual([e.name, e.$metadata && e.$metadata.httpStatusCode], [type, status], String(e));
    return e;
  }
  assert.fail(`accepted; expected ${type}`);
}

async function pushAndPull(c, repo) {
  await c.send(new ecr.CreateRepositoryCommand({ repositoryName: repo }));
  const layer = crypto.randomBytes(300_000);
  const config = Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux" }));
  const blobs = [];
  for (const blob of [layer, config]) {
    const digest = sha256(blob);
    const up = await c.send(new ecr.InitiateLayerUploadCommand({ repositoryName: repo }));
    assert.ok(up.partSize > 0, "partSize");
    // One part (ECR's parts but the last are at least 5 MiB).
    const ack = await c.send(
      new ecr.UploadLayerPartCommand({
        repositoryName: repo,
        uploadId: up.uploadId,
        partFirstByte: 0,
        partLastByte: blob.length - 1,
        layerPartBlob: blob,
      }),
    );
    assert.equal(ack.lastByteReceived, blob.length - 1);
    const done = await c.send(
      new ecr.CompleteLayerUploadCommand({
        repositoryName: repo,
        uploadId: up.uploadId,
        layerDigests: [digest],
      }),
    );
    assert.equal(done.layerDigest, digest);
    blobs.push({ digest, size: blob.length });
  }
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", ...blobs[1] },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...blobs[0] }],
  });
  const put = await c.send(
    new ecr.PutImageCommand({ repositoryName: repo, imageManifest: manifest, imageTag: "v1" }),
  );
  assert.equal(put.image.imageId.imageDigest, sha256(Buffer.from(manifest)));
  const got = await c.send(
    new ecr.BatchGetImageCommand({ repositoryName: repo, imageIds: [{ imageTag: "v1" }] }),
  );
  assert.equal(got.failures.length, 0, JSON.stringify(got.failures));
  assert.equal(got.images[0].imageManifest, manifest);
  const url = await c.send(
    new ecr.GetDownloadUrlForLayerCommand({ repositoryName: repo, layerDigest: blobs[0].digest }),
  );
  assert.equal(url.layerDigest, blobs[0].digest);
  const resp = await fetch(url.downloadUrl);
  assert.equal(resp.status, 200);
  const bytes = Buffer.from(await resp.arrayBuffer());
  assert.ok(bytes.equals(layer), `the download URL served ${bytes.length} other bytes`);
}

async function main() {
  const data = fs.mkdtempSync(path.join(os.tmpdir(), "ecr-js-clients-"));
  let server = null;
  let passed = 0;
  let failed = 0;
  try {
    const admin = createKey(data, "--allow", "admin", "--name", "js-admin");
    const pull = createKey(data, "--allow", "pull", "--name", "js-reader");
    server = await startServer(data);
    const repo = `js/app-${crypto.randomBytes(4).toString("hex")}`;
    const checks = [
      ["a valid key pushes a layer and an image and pulls them back", () =>
        pushAndPull(client(server.endpoint, admin), repo)],
      ["a wrong secret: InvalidSignatureException", () =>
        refused(
          client(server.endpoint, { ...admin, secretAccessKey: "x".repeat(40) }).send(
            new ecr.DescribeRepositoriesCommand({})),
          "InvalidSignatureException", 400)],
      ["an unknown key: UnrecognizedClientException", () =>
        refused(
          client(server.endpoint, { accessKeyId: "AKELNOSUCHKEY0000000", secretAccessKey: "x".repeat(40) })
            .send(new ecr.DescribeRepositoriesCommand({})),
          "UnrecognizedClientException", 400)],
      ["a pull-only key pulls", async () => {
        const got = await client(server.endpoint, pull).send(
          new ecr.BatchGetImageCommand({ repositoryName: repo, imageIds: [{ imageTag: "v1" }] }));
        assert.equal(got.images.length, 1);
      }],
      ["a pull-only key pushing: AccessDeniedException", async () => {
        const e = await refused(
          client(server.endpoint, pull).send(
            new ecr.InitiateLayerUploadCommand({ repositoryName: repo })),
          "AccessDeniedException", 400);
        assert.match(e.message, /is not authorized to perform: ecr:InitiateLayerUpload on resource: arn:aws:ecr:/);
      }],
    ];
    for (const [label, check] of checks) {
      try {
        await check();
        passed += 1;
        console.log(`ok   ${label}`);
      } catch (e) {
        failed += 1;
        console.log(`FAIL ${label}: ${e && e.stack ? e.stack : e}`);
      }
    }
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${e && e.stack ? e.stack : e}`);
  } finally {
    if (server) await server.stop();
    fs.rmSync(data, { recursive: true, force: true });
  }
  console.log(`${passed} passed, ${failed} failed (backend ${BACKEND})`);
  process.exitCode = failed ? 1 : 0;
}

main();

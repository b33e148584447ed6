//! Every fixture in events/ goes through the Lambda handler in-process, as the Lambda runtime
//! delivers it (`lambda_http::request::from_str`), and the answer is what a client must see.

use std::collections::BTreeSet;

use ecr_layer_upload::frontdoors::lambda;
use ecr_layer_upload::ports::{BlobStore, MetadataStore, UploadRecord};
use ecr_layer_upload::service::Settings;
use lambda_http::{Body, IntoResponse};
use serde_json::{Map, Value, json};

use crate::common::service::{MemoryService as Svc, memory_service};
use crate::common::{REGISTRY, digest, now, open_upload};

/// InitiateLayerUpload's partSize with the default settings.
const PART_SIZE: u64 = 10_485_760;

fn service() -> Svc {
    memory_service(Settings::default())
}

fn fixture(name: &str) -> String {
    let path = format!("{}/events/{name}.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The JSON request a fixture carries, decoded as the handler decodes it.
fn request_of(name: &str) -> Value {
    let event: Value = serde_json::from_str(&fixture(name)).unwrap();
    let body = event["body"].as_str().unwrap();
    let raw = if event["isBase64Encoded"] == true {
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap()
    } else {
        body.as_bytes().to_vec()
    };
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs a fixture through the handler and the runtime's response conversion; returns the
/// status and the JSON body, after checking the headers every answer carries.
async fn invoke(svc: &Svc, name: &str) -> (u16, Value) {
    let (status, json, _) = invoke_raw(svc, name).await;
    (status, json)
}

/// Every answer of [`every_fixture_gets_the_modelled_answer`], in order, as a client receives
/// it (see [`answer_record`]): the golden record in tests/fixtures/answers.txt pins them.
static ANSWERS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// One answer as text: fixture, status, the headers a client reads (not the per-request id) and
/// the body byte for byte, with the values that differ on every run (fresh upload ids,
/// timestamps, the download URL's expiry) replaced by placeholders.
fn answer_record(name: &str, status: u16, headers: &http::HeaderMap, body: &str) -> String {
    let mut keys: Vec<&str> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| *k != "x-amzn-requestid")
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut out = format!("{name} {status}\n");
    for k in keys {
        for v in headers.get_all(k) {
            out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
        }
    }
    let mut body = body.to_string();
    for member in ["createdAt", "imagePushedAt"] {
        body = replace_member_value(&body, member, "<time>");
    }
    if name == "initiate-layer-upload" {
        body = replace_member_value(&body, "uploadId", "<uuid>");
    }
    if let Some(at) = body.find("?expires=") {
        let end = body[at..].find('"').map_or(body.len(), |e| at + e);
        body.replace_range(at..end, "?expires=<secs>");
    }
    out.push_str(&body);
    out.push('\n');
    out
}

/// `"member":<value>` with the (number or string) value replaced, everywhere in `text`.
fn replace_member_value(text: &str, member: &str, with: &str) -> String {
    let needle = format!("\"{member}\":");
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(&needle) {
        let start = at + needle.len();
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let len = if let Some(s) = tail.strip_prefix('"') {
            s.find('"').map_or(tail.len(), |e| e + 2)
        } else {
            tail.find([',', '}']).unwrap_or(tail.len())
        };
        out.push_str(with);
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

async fn invoke_raw(svc: &Svc, name: &str) -> (u16, Value, String) {
    let req = lambda_http::request::from_str(&fixture(name)).expect("fixture parses as an event");
    let resp = lambda::handle(svc, req).await;
    // What the Lambda runtime does before serializing the response for the front door.
    let resp = resp.into_response().await;
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()["content-type"],
        "application/x-amz-json-1.1",
        "{name}"
    );
    let request_id = resp.headers()["x-amzn-requestid"].to_str().unwrap();
    assert_eq!(request_id.len(), 36, "{name}: request id {request_id}");
    let text = match resp.body() {
        Body::Text(t) => t.clone(),
        other => panic!("{name}: body must reach the client as text, got {other:?}"),
    };
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
    if status != 200 {
        assert_eq!(
            resp.headers()["x-amzn-errortype"].to_str().unwrap(),
            json["__type"].as_str().unwrap(),
            "{name}"
        );
    }
    let record = answer_record(name, status, resp.headers(), &text);
    ANSWERS.lock().unwrap().push(record.clone());
    (status, json, record)
}

/// Puts an upload the fixtures name in place, as InitiateLayerUpload would with that id; `key`
/// is where its blob goes (InitiateLayerUpload gives every upload a key of its own).
async fn seed_upload(svc: &Svc, repository: &str, upload_id: &str, key: &str) {
    let key = key.to_string();
    let multipart_id = svc.blobs().create_multipart(&key).await.unwrap();
    // Of the repository as it is now, as InitiateLayerUpload records it.
    let incarnation = svc
        .metadata()
        .get_repository(crate::common::REGISTRY, repository)
        .await
        .unwrap()
        .map(|r| r.incarnation)
        .unwrap_or_default();
    let record = UploadRecord {
        blob_key: key,
        multipart_id,
        repository_incarnation: incarnation,
        expires_at: now().0 + 3600,
        ..open_upload(upload_id, repository)
    };
    svc.metadata().create_upload(&record).await.unwrap();
}

/// tests/fixtures/expected.json: what every fixture must be answered, step by step in the order
/// the fixtures make one push (tests/lambda/invoke_fixtures.py reads it too).
fn expected() -> Value {
    let path = format!(
        "{}/tests/fixtures/expected.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The base64 blob of a fixture's `layerPartBlob`.
fn part_of(name: &str) -> Vec<u8> {
    let blob = request_of(name)["layerPartBlob"]
        .as_str()
        .unwrap()
        .to_string();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, blob).unwrap()
}

/// What the placeholders of tests/fixtures/expected.json stand for in this run (`upload_id` is
/// set as uploads start).
fn placeholders(repo: &str, part: &[u8]) -> Map<String, Value> {
    let config = part_of("upload-config-part");
    let manifest = request_of("put-image")["imageManifest"]
        .as_str()
        .unwrap()
        .to_string();
    let absent_manifest: Value = serde_json::from_str(
        request_of("error-layers-not-found")["imageManifest"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let vars = json!({
        "repo": repo,
        "registry": REGISTRY,
        "region": "us-east-1",
        "part_size": PART_SIZE,
        "layer": digest(part),
        "layer_size": part.len(),
        "layer_last": part.len() - 1,
        "config": digest(&config),
        "config_size": config.len(),
        "config_last": config.len() - 1,
        "image": digest(manifest.as_bytes()),
        "manifest": manifest,
        "absent": absent_manifest["layers"][0]["digest"],
    });
    let Value::Object(vars) = vars else {
        unreachable!()
    };
    vars
}

/// `pattern` with its placeholders replaced: a string that is only `{name}` becomes the value
/// (of its own type), other strings have each `{name}` replaced by its text.
fn resolve(pattern: &Value, vars: &Map<String, Value>) -> Value {
    match pattern {
        Value::String(s) => {
            if let Some(value) = s
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .and_then(|name| vars.get(name))
            {
                return value.clone();
            }
            let mut out = s.clone();
            for (name, value) in vars {
                let text = match value {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                out = out.replace(&format!("{{{name}}}"), &text);
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|p| resolve(p, vars)).collect()),
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, p)| (k.clone(), resolve(p, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// `got` (None: absent) against a resolved `members` pattern of tests/fixtures/expected.json (its
/// "about" says what the patterns mean); `at` names the place for the message.
fn matches(got: Option<&Value>, want: &Value, at: &str) -> Result<(), String> {
    if let Value::Object(ops) = want
        && ops.keys().any(|k| k.starts_with('$'))
    {
        for (op, arg) in ops {
            let ok = match (op.as_str(), got) {
                ("$absent", got) => got.is_none(),
                ("$eq", got) => got == Some(arg),
                ("$type", Some(v)) => match arg.as_str() {
                    Some("number") => v.is_number(),
                    Some("uuid") => v.as_str().is_some_and(is_uuid),
                    Some("nonempty-string") => v.as_str().is_some_and(|s| !s.is_empty()),
                    other => panic!("{at}: unknown $type {other:?}"),
                },
                ("$contains" | "$excludes", Some(Value::String(s))) => {
                    let needles = arg.as_array().expect("a list of strings");
                    needles
                        .iter()
                        .all(|n| s.contains(n.as_str().unwrap()) == (op == "$contains"))
                }
                ("$type" | "$contains" | "$excludes", _) => false,
                (other, _) => panic!("{at}: unknown operator {other}"),
            };
            if !ok {
                return Err(format!("{at}: {got:?} is not {op} {arg}"));
            }
        }
        return Ok(());
    }
    let got = got.ok_or_else(|| format!("{at}: missing, expected {want}"))?;
    match want {
        Value::Object(members) => {
            for (name, w) in members {
                matches(got.get(name), w, &format!("{at}.{name}"))?;
            }
            Ok(())
        }
        Value::Array(items) => {
            let got = got
                .as_array()
                .filter(|g| g.len() == items.len())
                .ok_or_else(|| format!("{at}: {got}, expected {} elements", items.len()))?;
            for (i, (g, w)) in got.iter().zip(items).enumerate() {
                matches(Some(g), w, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        scalar if got == scalar => Ok(()),
        scalar => Err(format!("{at}: {got}, expected {scalar}")),
    }
}

/// One answer against its step: status, an error's type and message, the members.
fn check_answer(step: &Value, status: u16, json: &Value, label: &str) {
    assert_eq!(step["status"], status, "{label}: {json}");
    if status != 200 {
        assert_eq!(json["__type"], step["__type"], "{label}: {json}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{label}: {json}"
        );
        if let Some(message) = step.get("message") {
            assert_eq!(&json["message"], message, "{label}");
        }
    }
    if let Some(members) = step.get("members")
        && let Err(e) = matches(Some(json), members, "answer")
    {
        panic!("{label}: {e}\n{json}");
    }
}

#[tokio::test]
async fn every_fixture_gets_the_modelled_answer() {
    let svc = service();
    let names: BTreeSet<String> =
        std::fs::read_dir(format!("{}/events", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .map(|e| e.unwrap())
            // events/auth/ holds the signed and unsigned variants (tests/unit/lambda_auth.rs).
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .trim_end_matches(".json")
                    .to_string()
            })
            .collect();
    let expected = expected();
    let repo = expected["fixtures"]["repository"].as_str().unwrap();
    let part = part_of("upload-layer-part");
    let mut vars = placeholders(repo, &part);
    let mut seen = BTreeSet::new();
    let mut seeded = BTreeSet::new();

    for (i, step) in expected["steps"].as_array().unwrap().iter().enumerate() {
        let step = resolve(step, &vars);
        let label = format!(
            "step {i} ({}{})",
            step["fixture"].as_str().unwrap_or("new upload"),
            step["note"]
                .as_str()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
        if let Some(name) = step["fixture"].as_str() {
            assert!(names.contains(name), "fixture {name} is missing");
            seen.insert(name.to_string());
            let (status, json) = invoke(&svc, name).await;
            check_answer(&step, status, &json, &label);
            if step["serves_layer"] == true {
                // In-memory blobs answer `memory:///<key>?expires=<secs>`; the key must hold the
                // layer.
                let url = json["downloadUrl"].as_str().unwrap();
                let key = url
                    .strip_prefix("memory:///")
                    .and_then(|rest| rest.split('?').next())
                    .unwrap_or_else(|| panic!("{label}: download URL {url}"));
                assert_eq!(svc.blobs().get_object(key).await.unwrap().as_ref(), part);
            }
        }
        if let Some(id) = step["starts_upload"].as_str() {
            // The fixtures name this id: the upload goes in place as InitiateLayerUpload would
            // put it, with a blob key of its own.
            let key = if seeded.insert(id.to_string()) {
                format!("layers/{id}")
            } else {
                format!("layers/{id}-again")
            };
            seed_upload(&svc, repo, id, &key).await;
            vars.insert("upload_id".into(), json!(id));
        }
    }

    let unvisited: Vec<&String> = names.difference(&seen).collect();
    assert!(
        unvisited.is_empty(),
        "fixtures without a step in tests/fixtures/expected.json: {unvisited:?}"
    );

    // Byte for byte what the handler answered when the record was made; `ECR_UPDATE_GOLDEN=1`
    // rewrites it (only for an intended change of the wire answers).
    let answers = ANSWERS.lock().unwrap().concat();
    let path = format!("{}/tests/fixtures/answers.txt", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("ECR_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"))).unwrap();
        std::fs::write(&path, &answers).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (got, want) in answers.lines().zip(golden.lines()) {
        assert_eq!(
            got, want,
            "an answer differs from tests/fixtures/answers.txt"
        );
    }
    assert_eq!(
        answers.lines().count(),
        golden.lines().count(),
        "number of answer lines"
    );
}

#[tokio::test]
async fn lambda_http_would_base64_our_content_type_without_the_text_hint() {
    // Pins the lambda_http behaviour the handler's text hint works around.
    let mut resp = http::Response::new(Body::Text("{}".into()));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    let converted = resp.into_response().await;
    assert!(matches!(converted.body(), Body::Binary(_)));
}

#[tokio::test]
async fn payload_ignores_our_content_type_so_the_handler_reads_bytes() {
    // lambda_http's `payload()` only parses application/json; the body must still be read.
    use lambda_http::RequestPayloadExt;
    let req = lambda_http::request::from_str(&fixture("create-repository")).unwrap();
    let parsed: Option<Value> = req.payload().unwrap_or(None);
    assert!(parsed.is_none());
    let svc = service();
    let resp = lambda::handle(&svc, req).await;
    assert_eq!(resp.status(), 200);
}

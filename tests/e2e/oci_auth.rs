//! `/v2/` with `ECR_AUTH=sigv4` on the real binary, as ECR's registry: HTTP Basic credentials
//! `AWS:<password>`, the password from GetAuthorizationToken; a 401 with a Basic challenge
//! without them; each key's permission and repository patterns applied (403 `DENIED`); skopeo
//! pushing and pulling with such credentials; a deleted key's password refused.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::auth::{client, create_key, keys, start};
use crate::common::{noise, temp_dir, unique};
use crate::oci_clients::{OCI_MANIFEST, new_layout, skopeo, write_image, write_layout_index};

/// One request on a fresh connection: (status, headers in lower case, body).
fn request(
    endpoint: &str,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String, String) {
    let addr = endpoint.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// The registry password GetAuthorizationToken gives the key.
async fn password(endpoint: &str, id: &str, secret: &str) -> String {
    let out = client(endpoint, id, secret)
        .get_authorization_token()
        .send()
        .await
        .unwrap();
    let token = out.authorization_data()[0].authorization_token().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .unwrap();
    let decoded = String::from_utf8(decoded).unwrap();
    decoded.strip_prefix("AWS:").unwrap().to_owned()
}

fn error_code(body: &str) -> String {
    let doc: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    doc["errors"][0]["code"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_takes_registry_passwords_and_applies_each_keys_permissions() {
    let data = temp_dir();
    let u = unique("oa");
    let (admin_id, admin_secret) = create_key(data.path(), &["--allow", "admin"]);
    let (pull_id, pull_secret) = create_key(data.path(), &["--allow", "pull"]);
    let (team_id, team_secret) =
        create_key(data.path(), &["--allow", "push", "--repository", "team-*"]);
    let server = start(data).expect("start with sigv4");
    let e = server.endpoint.clone();
    let repo = u.clone();
    let team_repo = format!("team-{u}");
    let admin = client(&e, &admin_id, &admin_secret);
    for name in [&repo, &team_repo] {
        admin
            .create_repository()
            .repository_name(name)
            .send()
            .await
            .unwrap();
    }
    let admin_pw = password(&e, &admin_id, &admin_secret).await;
    let pull_pw = password(&e, &pull_id, &pull_secret).await;
    let team_pw = password(&e, &team_id, &team_secret).await;

    // No credentials: 401 with ECR's Basic challenge, naming the address reached.
    let (status, head, body) = request(&e, "GET", "/v2/", None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_code(&body), "UNAUTHORIZED");
    let host = e.trim_start_matches("http://");
    assert!(
        head.contains(&format!(
            "www-authenticate: basic realm=\"https://{host}/\",service=\"ecr.amazonaws.com\""
        )),
        "{head}"
    );
    // A wrong password, a user other than AWS, a SigV4 header: 401 too.
    for auth in [
        basic("AWS", "elu1.bm90.aXQ"),
        basic("bob", &admin_pw),
        "AWS4-HMAC-SHA256 Credential=x".to_string(),
    ] {
        let (status, _, body) = request(&e, "GET", "/v2/", Some(&auth));
        assert_eq!(status, 401, "{auth}: {body}");
    }
    // Any valid key logs in (what `docker login` checks).
    for pw in [&admin_pw, &pull_pw, &team_pw] {
        let (status, _, body) = request(&e, "GET", "/v2/", Some(&basic("AWS", pw)));
        assert_eq!(status, 200, "{body}");
    }

    // A pull-only key cannot start an upload; a `team-*` key can only in its repositories.
    let uploads = |name: &str| format!("/v2/{name}/blobs/uploads/");
    let (status, _, body) = request(&e, "POST", &uploads(&repo), Some(&basic("AWS", &pull_pw)));
    assert_eq!(status, 403, "{body}");
    assert_eq!(error_code(&body), "DENIED");
    assert!(body.contains("ecr:PutImage"), "{body}");
    assert!(body.contains(&format!("repository/{repo}")), "{body}");
    let (status, _, body) = request(&e, "POST", &uploads(&repo), Some(&basic("AWS", &team_pw)));
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = request(
        &e,
        "POST",
        &uploads(&team_repo),
        Some(&basic("AWS", &team_pw)),
    );
    assert_eq!(status, 202, "{body}");
    // Reading another repository is denied to the `team-*` key, allowed to the pull key.
    let tags = |name: &str| format!("/v2/{name}/tags/list");
    let (status, _, body) = request(&e, "GET", &tags(&repo), Some(&basic("AWS", &team_pw)));
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = request(&e, "GET", &tags(&repo), Some(&basic("AWS", &pull_pw)));
    assert_eq!(status, 200, "{body}");
    // The catalog lists every repository: a key limited to some is denied it.
    let (status, _, _) = request(&e, "GET", "/v2/_catalog", Some(&basic("AWS", &team_pw)));
    assert_eq!(status, 403);
    let (status, _, _) = request(&e, "GET", "/v2/_catalog", Some(&basic("AWS", &pull_pw)));
    assert_eq!(status, 200);

    // skopeo with the passwords: the admin key pushes, the pull key pulls but cannot push.
    if skopeo() {
        let dir = temp_dir();
        let layout = dir.path().join("src");
        new_layout(&layout);
        let manifest = write_image(&layout, "amd64", &[noise(3 * 1024 * 1024, 7)]);
        write_layout_index(&layout, &manifest, OCI_MANIFEST, "v1");
        let src = format!("oci:{}:v1", layout.display());
        let dest = |tag: &str| format!("docker://{host}/{repo}:{tag}");
        let copy = |creds_flag: &str, pw: &str, from: &str, to: &str| {
            std::process::Command::new("skopeo")
                .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
                .arg(format!("{creds_flag}=AWS:{pw}"))
                .args([from, to])
                .output()
                .unwrap()
        };
        let out = copy("--dest-creds", &admin_pw, &src, &dest("v1"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = copy("--dest-creds", &pull_pw, &src, &dest("v2"));
        assert!(!out.status.success(), "a pull-only key pushed");
        let pulled = dir.path().join("pulled");
        let out = copy(
            "--src-creds",
            &pull_pw,
            &dest("v1"),
            &format!("oci:{}:v1", pulled.display()),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Without credentials skopeo is refused.
        let out = std::process::Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--no-creds", &dest("v1")])
            .output()
            .unwrap();
        assert!(!out.status.success(), "an anonymous pull succeeded");
    }

    // A deleted key's password stops working within a second or so.
    let (ok, _, stderr) = keys(server.data.path(), &["delete", &pull_id]);
    assert!(ok, "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = request(&e, "GET", "/v2/", Some(&basic("AWS", &pull_pw)));
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a deleted key's password still works"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

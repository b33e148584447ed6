//! The dependency rule between the layers (docs/architecture.md), checked over the source.
//!
//! Each source file belongs to the layer of its folder. A file may name (`crate::<module>`) only
//! the modules its layer may depend on, and use only the external crates its layer may know. A
//! file's `#[cfg(test)]` part is not checked: tests may reach for whatever helps them.

#![cfg(test)]

use std::path::{Path, PathBuf};

/// A layer: the source files it holds, the crate modules they may name, and the external crates
/// they must not use.
struct Layer {
    name: &'static str,
    /// Path prefixes under `src/`.
    files: &'static [&'static str],
    /// Top-level modules of this crate that these files may name.
    may_name: &'static [&'static str],
    /// External crates these files may not use.
    must_not_use: &'static [&'static str],
}

const LAYERS: &[Layer] = &[
    Layer {
        name: "domain",
        files: &["domain/"],
        may_name: &["domain"],
        must_not_use: &[
            "lambda_http",
            "hyper",
            "hyper_util",
            "http_body_util",
            "http",
            "tokio",
            "redb",
            "base64",
            "aws_config",
            "aws_sdk_s3",
            "aws_sdk_dynamodb",
            "aws_sdk_ecr",
        ],
    },
    Layer {
        name: "ports",
        files: &["ports/"],
        may_name: &["domain", "ports"],
        must_not_use: &[
            "lambda_http",
            "hyper",
            "hyper_util",
            "http_body_util",
            "http",
            "tokio",
            "redb",
            "serde_json",
            "base64",
            "aws_config",
            "aws_sdk_s3",
            "aws_sdk_dynamodb",
            "aws_sdk_ecr",
        ],
    },
    Layer {
        name: "service",
        files: &["service/"],
        may_name: &["domain", "ports", "service"],
        must_not_use: &[
            "lambda_http",
            "hyper",
            "hyper_util",
            "http_body_util",
            "http",
            "redb",
            "serde_json",
            "base64",
            "aws_config",
            "aws_sdk_s3",
            "aws_sdk_dynamodb",
            "aws_sdk_ecr",
        ],
    },
    Layer {
        name: "backends::memory",
        files: &[
            "backends/memory.rs",
            "backends/memory_keys.rs",
            "backends/mod.rs",
        ],
        may_name: &["domain", "ports", "backends"],
        must_not_use: &["lambda_http", "hyper", "http", "redb", "aws_sdk_s3"],
    },
    Layer {
        name: "backends::local",
        files: &["backends/local/"],
        may_name: &["domain", "ports", "backends"],
        must_not_use: &[
            "lambda_http",
            "hyper",
            "http",
            "aws_config",
            "aws_sdk_s3",
            "aws_sdk_dynamodb",
            "aws_sdk_ecr",
        ],
    },
    Layer {
        name: "backends::aws",
        files: &["backends/aws/"],
        may_name: &["domain", "ports", "backends"],
        must_not_use: &["lambda_http", "hyper", "redb", "aws_sdk_ecr"],
    },
    Layer {
        name: "protocols",
        files: &["protocols/"],
        may_name: &["domain", "ports", "service", "protocols"],
        must_not_use: &[
            "lambda_http",
            "hyper",
            "hyper_util",
            "redb",
            "aws_config",
            "aws_sdk_s3",
            "aws_sdk_dynamodb",
            "aws_sdk_ecr",
        ],
    },
    Layer {
        name: "frontdoors::http",
        files: &["frontdoors/http.rs", "frontdoors/mod.rs"],
        may_name: &["domain", "ports", "service", "protocols", "frontdoors"],
        must_not_use: &[
            "lambda_http",
            "redb",
            "aws_config",
            "aws_sdk_s3",
            "aws_sdk_dynamodb",
            "aws_sdk_ecr",
        ],
    },
    Layer {
        name: "frontdoors::lambda",
        files: &["frontdoors/lambda.rs"],
        may_name: &["domain", "ports", "service", "protocols", "frontdoors"],
        must_not_use: &[
            "hyper",
            "hyper_util",
            "redb",
            "aws_config",
            "aws_sdk_s3",
            "aws_sdk_dynamodb",
            "aws_sdk_ecr",
        ],
    },
    Layer {
        name: "push",
        files: &["push/"],
        may_name: &["domain", "push"],
        must_not_use: &[
            "lambda_http",
            "hyper",
            "redb",
            "aws_sdk_s3",
            "aws_sdk_dynamodb",
        ],
    },
];

/// Files that compose the layers (start-up, the crate root) and this check itself.
const COMPOSITION: &[&str] = &[
    "lib.rs",
    "main.rs",
    "config.rs",
    "admin.rs",
    "architecture.rs",
    "bin/",
];

fn layer_of(rel: &str) -> Option<&'static Layer> {
    LAYERS
        .iter()
        .find(|l| l.files.iter().any(|prefix| rel.starts_with(prefix)))
}

/// The part of a source file that is checked: before its `#[cfg(test)]` items, without comments.
fn checked_code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        // A trailing comment; cutting at a `//` inside a string only hides text, never adds any.
        let code = line.find("//").map_or(line, |at| &line[..at]);
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules of this crate that `code` names: `crate::x`, and each name of
/// `crate::{x, y::z}`.
fn crate_modules(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(is_ident) {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|&c| is_ident(c)).collect();
                if !name.is_empty() && name != "self" {
                    found.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

/// Whether `code` uses the external crate `name` (`name::` or `use name` not preceded by an
/// identifier character or `::`).
fn uses_crate(code: &str, name: &str) -> bool {
    let mut rest = code;
    let mut offset = 0;
    while let Some(at) = rest.find(name) {
        let start = offset + at;
        let end = start + name.len();
        let before = code[..start].chars().next_back();
        let after = &code[end..];
        let preceded = before.is_some_and(|c| is_ident(c) || c == ':');
        let path = after.starts_with("::");
        let used = code[..start].trim_end().ends_with("use")
            && after.starts_with([';', ' ', ':', '{'])
            && !before.is_some_and(is_ident);
        if !preceded && (path || used) {
            return true;
        }
        offset = end;
        rest = &code[end..];
    }
    false
}

/// Every breach of the rule in one file, as messages.
fn breaches(rel: &str, text: &str) -> Vec<String> {
    let Some(layer) = layer_of(rel) else {
        if COMPOSITION.iter().any(|c| rel.starts_with(c)) {
            return Vec::new();
        }
        return vec![format!(
            "src/{rel} belongs to no layer: add it to src/architecture.rs and docs/architecture.md"
        )];
    };
    let code = checked_code(text);
    let mut out = Vec::new();
    for module in crate_modules(&code) {
        if !layer.may_name.contains(&module.as_str()) {
            out.push(format!(
                "src/{rel} ({}) names crate::{module}, which its layer may not depend on",
                layer.name
            ));
        }
    }
    for name in layer.must_not_use {
        if uses_crate(&code, name) {
            out.push(format!(
                "src/{rel} ({}) uses the crate {name}, which its layer may not know",
                layer.name
            ));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_depends_only_on_the_layers_beneath_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "the source tree was not found");
    let mut all = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path).expect("read source");
        all.extend(breaches(&rel, &text));
    }
    assert!(
        all.is_empty(),
        "the dependency rule is broken:\n{}",
        all.join("\n")
    );
}

#[test]
fn the_check_sees_breaches() {
    let bad = "use crate::backends::memory::MemoryBlobs;\nuse lambda_http::Body;\n";
    let found = breaches("service/upload.rs", bad);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("crate::backends"), "{found:?}");
    assert!(found[1].contains("lambda_http"), "{found:?}");
    // Grouped imports, paths inside expressions, and `use` of a whole crate.
    assert_eq!(
        crate_modules("use crate::{domain, service::Service};\nlet x = crate::config::X;"),
        ["domain", "service", "config"]
    );
    assert!(uses_crate("let b = base64::decode(x);", "base64"));
    assert!(uses_crate("use serde_json;", "serde_json"));
    assert!(!uses_crate("let my_base64::x = 1;", "base64"));
    assert!(!uses_crate("use crate::http::x;", "http"));
    assert!(!uses_crate("let s = \"http://h\";", "http"));
    // Tests and comments are not checked; unknown files are reported.
    assert!(
        breaches(
            "service/x.rs",
            "// crate::backends\n#[cfg(test)]\nuse crate::config;"
        )
        .is_empty()
    );
    assert_eq!(breaches("elsewhere.rs", "").len(), 1);
}

//! Settings, read once at start-up from flags and environment variables.
//!
//! | flag / variable | default |
//! | --- | --- |
//! | `--listen` / `ECR_LISTEN` | `127.0.0.1:8080` |
//! | `--data-dir` / `ECR_DATA_DIR` | `./data` |
//! | `ECR_BACKEND` | `local`; `aws` inside Lambda |
//! | `ECR_REGISTRY_ID` | `123456789012` |
//! | `ECR_REGION` | `AWS_REGION`, else `us-east-1` |
//! | `ECR_PART_SIZE` | 10485760; under Lambda the largest part a Function URL carries |
//! | `ECR_MIN_PART_SIZE` | 5242880; under Lambda 1048576 |
//! | `ECR_S3_PART_SIZE` | 8388608 (at least 5242880) |
//! | `ECR_UPLOAD_TTL_SECS` | 86400 |
//! | `ECR_BUCKET`, `ECR_TABLE` | required with `ECR_BACKEND=aws` |
//! | `ECR_PUBLIC_URL` | `http://` + the address the listener bound (embedded backend's download URLs) |

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::service::Settings;

pub use crate::domain::limits::{MAX_LAYER_PART, S3_MIN_PART_SIZE};
use crate::frontdoors::lambda;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    Aws,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub backend: Backend,
    pub bucket: Option<String>,
    pub table: Option<String>,
    pub in_lambda: bool,
    /// Where clients reach the local server (`http(s)://host[:port][/prefix]`, no trailing `/`):
    /// the start of the embedded backend's download URLs. `None`: the bound listen address.
    pub public_url: Option<String>,
    pub settings: Settings,
}

pub const USAGE: &str = "\
usage: ecr-layer-upload [serve] [--listen ADDR] [--data-dir DIR]

Serves Amazon ECR's layer-upload API (AWS JSON 1.1). Inside AWS Lambda (AWS_LAMBDA_RUNTIME_API
set) it runs the Lambda runtime loop; otherwise it listens on ADDR.

flags and environment:
  --listen ADDR     ECR_LISTEN          address to listen on (default 127.0.0.1:8080)
  --data-dir DIR    ECR_DATA_DIR        embedded backend's data directory (default ./data)
                    ECR_BACKEND         local | aws (default local; aws inside Lambda)
                    ECR_BUCKET          S3 bucket for layers (aws backend)
                    ECR_TABLE           DynamoDB table for state (aws backend)
                    ECR_REGISTRY_ID     12-digit registry id (default 123456789012)
                    ECR_REGION          region in ARNs and URIs (default AWS_REGION or us-east-1)
                    ECR_PART_SIZE       partSize answered by InitiateLayerUpload
                    ECR_MIN_PART_SIZE   smallest non-final part CompleteLayerUpload accepts
                    ECR_S3_PART_SIZE    size at which staged bytes become a multipart part
                    ECR_UPLOAD_TTL_SECS how long an unfinished upload lives (default 86400)
                    ECR_PUBLIC_URL      base of the local server's download URLs, as clients
                                        reach it (default http://<bound listen address>)
";

impl Config {
    /// Reads the settings from `args` (without the program name) and `env`. The error is a
    /// message for the operator.
    pub fn from_args_and_env(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut listen = env("ECR_LISTEN");
        let mut data_dir = env("ECR_DATA_DIR");
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match flag {
                "serve" => {}
                "--listen" => listen = Some(value("--listen")?),
                "--data-dir" => data_dir = Some(value("--data-dir")?),
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument '{other}'\n\n{USAGE}")),
            }
        }

        let in_lambda = env("AWS_LAMBDA_RUNTIME_API").is_some();
        let listen_text = listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            format!("ECR_LISTEN/--listen: '{listen_text}' is not an address like 127.0.0.1:8080")
        })?;
        let backend = match env("ECR_BACKEND").as_deref() {
            None | Some("") => {
                if in_lambda {
                    Backend::Aws
                } else {
                    Backend::Local
                }
            }
            Some("local") => Backend::Local,
            Some("aws") => Backend::Aws,
            Some(other) => return Err(format!("ECR_BACKEND: '{other}' is not one of local, aws")),
        };
        let nonempty = |name: &str| env(name).filter(|v| !v.is_empty());
        let (bucket, table) = (nonempty("ECR_BUCKET"), nonempty("ECR_TABLE"));
        if backend == Backend::Aws && (bucket.is_none() || table.is_none()) {
            return Err("ECR_BACKEND=aws needs ECR_BUCKET and ECR_TABLE".into());
        }
        let registry_id = nonempty("ECR_REGISTRY_ID").unwrap_or_else(|| "123456789012".into());
        if registry_id.len() != 12 || !registry_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("ECR_REGISTRY_ID: '{registry_id}' is not 12 digits"));
        }
        let region = nonempty("ECR_REGION")
            .or_else(|| nonempty("AWS_REGION"))
            .or_else(|| nonempty("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("ECR_REGION: '{region}' is not a region name"));
        }
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match nonempty(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .map_err(|_| format!("{name}: '{v}' is not a whole number of bytes")),
            }
        };
        let (default_part, default_min) = if in_lambda {
            (lambda::part_size(), lambda::MIN_PART_SIZE)
        } else {
            (10_485_760, S3_MIN_PART_SIZE)
        };
        let part_size = number("ECR_PART_SIZE", default_part)?;
        if part_size == 0 || part_size > MAX_LAYER_PART {
            return Err(format!(
                "ECR_PART_SIZE: {part_size} must be between 1 and {MAX_LAYER_PART}"
            ));
        }
        let min_part_size = number("ECR_MIN_PART_SIZE", default_min)?;
        if min_part_size > part_size {
            return Err(format!(
                "ECR_MIN_PART_SIZE: {min_part_size} is larger than ECR_PART_SIZE {part_size}; parts of the advertised size would be rejected"
            ));
        }
        let s3_part_size = number("ECR_S3_PART_SIZE", 8 * 1024 * 1024)?;
        if !(S3_MIN_PART_SIZE..=5 * 1024 * 1024 * 1024).contains(&s3_part_size) {
            return Err(format!(
                "ECR_S3_PART_SIZE: {s3_part_size} must be between {S3_MIN_PART_SIZE} and 5 GiB"
            ));
        }
        let upload_ttl_secs = number("ECR_UPLOAD_TTL_SECS", 86_400)?;
        if upload_ttl_secs < 60 {
            return Err("ECR_UPLOAD_TTL_SECS: must be at least 60".into());
        }
        let public_url = nonempty("ECR_PUBLIC_URL")
            .map(|url| parse_public_url(&url))
            .transpose()?;
        Ok(Config {
            listen,
            data_dir: PathBuf::from(data_dir.unwrap_or_else(|| "./data".into())),
            backend,
            bucket,
            table,
            in_lambda,
            public_url,
            settings: Settings {
                registry_id,
                region,
                part_size,
                min_part_size,
                s3_part_size,
                upload_ttl_secs,
                response_limit: in_lambda.then(lambda::response_limit),
            },
        })
    }
}

/// Checks an `ECR_PUBLIC_URL` and drops its trailing `/`s.
///
/// Accepted: `http://127.0.0.1:8080`, `https://ecr.example.com/`, `http://[::1]:9000/registry`.
/// Refused: `127.0.0.1:8080` (no scheme), `ftp://host`, `http://`, `http:///x`,
/// `http://host?x=1`, `http://host#top`, `http://ho st`.
fn parse_public_url(url: &str) -> Result<String, String> {
    let bad = |why: &str| format!("ECR_PUBLIC_URL: '{url}' {why}");
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("does not start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if url.contains(['?', '#'])
        || url
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(bad("may hold only scheme, host, port and path"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Config::from_args_and_env(&args, |k| env.get(k).cloned())
    }

    #[test]
    fn defaults_are_ecrs_on_the_local_server() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.backend, Backend::Local);
        assert_eq!(c.settings.part_size, 10_485_760);
        assert_eq!(c.settings.min_part_size, 5_242_880);
        assert_eq!(c.settings.registry_id, "123456789012");
        assert_eq!(c.settings.region, "us-east-1");
        assert_eq!(c.public_url, None);
    }

    #[test]
    fn public_url_is_checked_and_loses_its_trailing_slash() {
        for (given, kept) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("https://ecr.example.com/", "https://ecr.example.com"),
            ("http://[::1]:9000/registry/", "http://[::1]:9000/registry"),
        ] {
            let c = parse(&[], &[("ECR_PUBLIC_URL", given)]).unwrap();
            assert_eq!(c.public_url.as_deref(), Some(kept), "{given}");
        }
        for bad in [
            "127.0.0.1:8080",
            "ftp://host",
            "http://",
            "http:///x",
            "http://host?x=1",
            "http://host#top",
            "http://ho st",
        ] {
            let err = parse(&[], &[("ECR_PUBLIC_URL", bad)]).unwrap_err();
            assert!(err.contains("ECR_PUBLIC_URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn flags_override_environment() {
        let c = parse(
            &["serve", "--listen", "127.0.0.1:9999", "--data-dir=/tmp/x"],
            &[("ECR_LISTEN", "127.0.0.1:1"), ("ECR_DATA_DIR", "/nope")],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn lambda_defaults_to_aws_and_a_part_size_that_fits() {
        let c = parse(
            &[],
            &[
                ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
                ("ECR_BUCKET", "b"),
                ("ECR_TABLE", "t"),
            ],
        )
        .unwrap();
        assert_eq!(c.backend, Backend::Aws);
        assert_eq!(c.settings.part_size, lambda::part_size());
        assert!(c.settings.min_part_size <= c.settings.part_size);
        assert_eq!(c.settings.response_limit, Some(lambda::response_limit()));
    }

    #[test]
    fn bad_settings_stop_start_up_with_a_message() {
        for (env, needle) in [
            (("ECR_BACKEND", "s3"), "ECR_BACKEND"),
            (("ECR_REGISTRY_ID", "12"), "ECR_REGISTRY_ID"),
            (("ECR_PART_SIZE", "0"), "ECR_PART_SIZE"),
            (("ECR_PART_SIZE", "ten"), "ECR_PART_SIZE"),
            (("ECR_MIN_PART_SIZE", "99999999"), "ECR_MIN_PART_SIZE"),
            (("ECR_S3_PART_SIZE", "1024"), "ECR_S3_PART_SIZE"),
            (("ECR_LISTEN", "nowhere"), "ECR_LISTEN"),
            (("ECR_REGION", "US East"), "ECR_REGION"),
        ] {
            let err = parse(&[], &[env]).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        assert!(
            parse(&[], &[("ECR_BACKEND", "aws")])
                .unwrap_err()
                .contains("ECR_BUCKET")
        );
        assert!(parse(&["--bogus"], &[]).unwrap_err().contains("--bogus"));
    }
}

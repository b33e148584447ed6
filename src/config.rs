//! The command line, and the settings read once at start-up from flags and environment variables.
//!
//! Every setting is one argument of [`ServeArgs`]: its flag, environment variable, default and
//! help text are written there and nowhere else. `--help` shows them, and a test renders README.md's
//! "Configuration" table from them and fails when the two differ. A default that depends on where
//! the binary runs (inside Lambda or not) is told at the end of the help text, as
//! `[default: ...]`, and applied by [`Config::from_serve_args`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::Resettable;
use clap::{Arg, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::service::{Settings, VerifyMode};

use crate::domain::limits::{MAX_LAYER_PART, S3_MAX_PART_SIZE, S3_MIN_PART_SIZE};
use crate::frontdoors::http::Limits;
use crate::frontdoors::lambda;

/// Set by AWS Lambda (and `cargo lambda watch`): the binary then runs the Lambda runtime loop.
pub const LAMBDA_RUNTIME_API_ENV: &str = "AWS_LAMBDA_RUNTIME_API";

const LOCAL_PART_SIZE: u64 = 10_485_760;

/// `ecr-layer-upload [serve] [OPTIONS]`, or `ecr-layer-upload push ...`.
#[derive(Parser, Debug)]
#[command(
    name = "ecr-layer-upload",
    // Not argv[0]: inside Lambda the binary is called `bootstrap`.
    bin_name = "ecr-layer-upload",
    version,
    about = "Amazon ECR's image API (AWS JSON 1.1) on S3 + DynamoDB or an embedded backend",
    long_about = "Amazon ECR's image API (AWS JSON 1.1) on S3 + DynamoDB or an embedded backend.\n\n\
                  Without a command it serves, as `serve` does. Inside AWS Lambda \
                  (AWS_LAMBDA_RUNTIME_API set) it runs the Lambda runtime loop; elsewhere it \
                  serves HTTP on --listen.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<CliCommand>,
    /// The settings when no command is given.
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Built once at start-up and taken apart at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum CliCommand {
    /// Serve the API (the default): the Lambda runtime loop inside AWS Lambda, HTTP elsewhere
    Serve(ServeArgs),
    /// Push an OCI image layout, an OCI archive or a `docker save` tar through the ECR API
    #[cfg(feature = "push")]
    #[command(
        long_about = "Push an OCI image layout (directory or tar) or a `docker save` tar to an \
                      ECR repository through the ECR API, as AWS's Go client does. Credentials \
                      and region come from the usual AWS chain. See docs/push.md."
    )]
    Push(crate::push::Options),
    /// Create, list or delete the access keys requests are signed with (docs/security.md)
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `ecr-layer-upload keys ...`: each takes the backend settings of `serve` (`--data-dir`, or
/// `ECR_BACKEND=aws` with `ECR_TABLE` and `ECR_BUCKET`), and works while a server runs.
// Built once at start-up and taken apart at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; prints `{"accessKeyId": ..., "secretAccessKey": ...}` on stdout
    Create {
        /// a label for the key (shown by `keys list` and in AccessDenied messages)
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// what the key may do: `pull` (read), `push` (pull + uploads and image writes),
        /// `admin` (push + repository creation and deletion, BatchDeleteImage)
        #[arg(long, value_name = "pull|push|admin", default_value = "pull",
              value_parser = ["pull", "push", "admin"])]
        allow: String,
        /// limit the key to repositories matching this pattern (`*` matches any run of
        /// characters, e.g. `team/*`); repeatable; none: every repository
        #[arg(long = "repository", value_name = "PATTERN")]
        repositories: Vec<String>,
        #[command(flatten)]
        settings: ServeArgs,
    },
    /// List the keys: ids, names, permissions, repository patterns (never a secret), as JSON
    List {
        #[command(flatten)]
        settings: ServeArgs,
    },
    /// Delete (revoke) a key
    Delete {
        /// the access key id
        #[arg(value_name = "ACCESS_KEY_ID")]
        id: String,
        #[command(flatten)]
        settings: ServeArgs,
    },
}

impl KeysCommand {
    /// The backend settings the command runs with.
    pub fn settings(&self) -> &ServeArgs {
        match self {
            KeysCommand::Create { settings, .. }
            | KeysCommand::List { settings }
            | KeysCommand::Delete { settings, .. } => settings,
        }
    }
}

/// The server's settings: each is a flag and an environment variable (the flag wins). An unset or
/// empty variable leaves the setting at its default.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    /// address of the local HTTP server
    #[arg(
        long,
        env = "ECR_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: String,
    /// embedded backend's directory (`state.redb`, `blobs/`)
    #[arg(
        long,
        env = "ECR_DATA_DIR",
        value_name = "DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,
    /// `local`: embedded; `aws`: S3 + DynamoDB [default: `local` (`aws` inside Lambda)]
    #[arg(long, env = "ECR_BACKEND", value_name = "local|aws")]
    pub backend: Option<String>,
    /// S3 bucket of the `aws` backend
    #[arg(long, env = "ECR_BUCKET", value_name = "BUCKET")]
    pub bucket: Option<String>,
    /// DynamoDB table of the `aws` backend
    #[arg(long, env = "ECR_TABLE", value_name = "TABLE")]
    pub table: Option<String>,
    /// the 12-digit registry (account) id served
    #[arg(
        long,
        env = "ECR_REGISTRY_ID",
        value_name = "ID",
        default_value = "123456789012"
    )]
    pub registry_id: String,
    /// region written into ARNs and repository URIs [default: `AWS_REGION`, else
    /// `AWS_DEFAULT_REGION`, else `us-east-1`]
    #[arg(long, env = "ECR_REGION", value_name = "REGION")]
    pub region: Option<String>,
    #[arg(
        long,
        env = "ECR_PART_SIZE",
        value_name = "BYTES",
        help = format!(
            "`partSize` answered by InitiateLayerUpload [default: `{LOCAL_PART_SIZE}` (Lambda: `{}`)]",
            lambda::part_size()
        )
    )]
    pub part_size: Option<String>,
    #[arg(
        long,
        env = "ECR_MIN_PART_SIZE",
        value_name = "BYTES",
        help = format!(
            "smallest non-final part CompleteLayerUpload accepts [default: `{S3_MIN_PART_SIZE}` (Lambda: `{}`)]",
            lambda::MIN_PART_SIZE
        )
    )]
    pub min_part_size: Option<String>,
    /// staged bytes become one multipart part at this size (≥ 5 MiB)
    #[arg(
        long,
        env = "ECR_S3_PART_SIZE",
        value_name = "BYTES",
        default_value = "8388608"
    )]
    pub s3_part_size: String,
    /// an upload with no activity for this long is gone
    #[arg(
        long,
        env = "ECR_UPLOAD_TTL_SECS",
        value_name = "SECS",
        default_value = "86400"
    )]
    pub upload_ttl_secs: String,
    /// an upload older than this (from its creation) is gone, however active; keep it an hour
    /// under the bucket's lifecycle rules (template.yaml)
    #[arg(
        long,
        env = "ECR_MAX_UPLOAD_AGE_SECS",
        value_name = "SECS",
        default_value = "82800"
    )]
    pub max_upload_age_secs: String,
    /// layers no image references are removed once this long after their push and the last
    /// PutImage that referenced them, and bytes no record owns (those layers', deleted
    /// repositories', files of cut writes, multipart uploads of ended uploads) once they are this
    /// old; at start-up the embedded backend removes cut writes at once
    #[arg(
        long,
        env = "ECR_GC_GRACE_SECS",
        value_name = "SECS",
        default_value = "86400"
    )]
    pub gc_grace_secs: String,
    /// where clients reach the server: the base of the embedded backend's download URLs, and its
    /// host and port start every `repositoryUri` [default: `http://` + the bound address]
    #[arg(long, env = "ECR_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// a push through the OCI API (`/v2/`) to a repository that does not exist creates it
    /// (`true`) instead of answering NAME_UNKNOWN, as ECR does (`false`)
    #[arg(
        long,
        env = "ECR_CREATE_ON_PUSH",
        value_name = "BOOL",
        default_value = "false"
    )]
    pub create_on_push: String,
    /// how CompleteLayerUpload verifies a layer's digest: `stream` reads the stored layer back
    /// through SHA-256 (on the embedded backend a streamed `/v2/` chunk is read back as it
    /// lands, beside the writes); `incremental` keeps a SHA-256 state with the upload, advanced by each
    /// part (about one CPU-second per GB on the part path), and completes without reading the
    /// layer back (S3 also checks the assembled object's CRC-64), streaming whenever that state
    /// is missing or does not match the upload
    #[arg(
        long,
        env = "ECR_VERIFY",
        value_name = "MODE",
        default_value = "stream"
    )]
    pub verify: String,
    /// local server: a request's head must arrive whole within this long of the server waiting
    /// for it (so a kept-alive connection with no next request is closed after it too)
    #[arg(
        long,
        env = "ECR_HEADER_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "30"
    )]
    pub header_timeout_secs: String,
    /// local server: the longest silence allowed in the middle of a request body
    #[arg(
        long,
        env = "ECR_IDLE_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "30"
    )]
    pub idle_timeout_secs: String,
    /// local server: a whole request body must arrive within this long
    #[arg(
        long,
        env = "ECR_BODY_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "300"
    )]
    pub body_timeout_secs: String,
    /// local server: a request not answered within this long gets `ServerException` (500)
    #[arg(
        long,
        env = "ECR_REQUEST_TIMEOUT_SECS",
        value_name = "SECS",
        default_value = "900"
    )]
    pub request_timeout_secs: String,
    /// local server: connections open at once; beyond it the longest-idle connection is closed,
    /// or new ones wait if all are busy [default: half the open-file limit (`ulimit -n`), at
    /// most `1024`]
    #[arg(long, env = "ECR_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// local server: request body bytes held at once across requests, `/v2/` bodies included
    /// (≥ 32 MiB); beyond it a request gets `LimitExceededException` (`/v2/`: 429
    /// `TOOMANYREQUESTS`), which clients retry
    #[arg(
        long,
        env = "ECR_MAX_BUFFERED_BYTES",
        value_name = "BYTES",
        default_value = "268435456"
    )]
    pub max_buffered_bytes: String,
    /// `none`: every request is served; `sigv4`: requests must be signed with a key of `keys
    /// create` [default: `none` on a loopback `--listen`, `sigv4` on any other and inside Lambda]
    #[arg(long, env = "ECR_AUTH", value_name = "none|sigv4")]
    pub auth: Option<String>,
    /// log filter; request bodies and blobs are never logged
    #[arg(long, env = "RUST_LOG", value_name = "FILTER", default_value = "info")]
    pub log: String,
}

impl Cli {
    /// Parses the process's arguments and environment; prints help, the version or a usage error
    /// and exits (0 for help and version, 2 for an error) when that is what they ask for.
    pub fn parse_process() -> Cli {
        // clap reads a set variable even when it is empty; empty means unset here.
        let cmd = map_settings(Cli::command(), &|arg: Arg| {
            let empty = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|v| v.is_empty());
            if empty {
                arg.env(Resettable::Reset)
            } else {
                arg
            }
        });
        let matches = cmd.get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (without the program name) with the settings' variables read through `env`
    /// instead of the process environment.
    pub fn try_parse_with_env(
        args: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Cli, clap::Error> {
        let cmd = map_settings(Cli::command(), &|arg: Arg| {
            let value = arg
                .get_env()
                .and_then(|name| env(&name.to_string_lossy()))
                .filter(|v| !v.is_empty());
            let arg = arg.env(Resettable::Reset);
            match value {
                Some(v) => arg.default_value(v),
                None => arg,
            }
        });
        let matches = cmd.try_get_matches_from(
            std::iter::once("ecr-layer-upload".to_owned()).chain(args.iter().cloned()),
        )?;
        Cli::from_arg_matches(&matches)
    }

    /// The command asked for: `serve` when none was named.
    pub fn into_command(self) -> CliCommand {
        self.command.unwrap_or(CliCommand::Serve(self.serve))
    }
}

/// `cmd` with `f` applied to every argument that has an environment variable, in every subcommand.
fn map_settings(cmd: clap::Command, f: &dyn Fn(Arg) -> Arg) -> clap::Command {
    let cmd = cmd.mut_args(|a| if a.get_env().is_some() { f(a) } else { a });
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    names.into_iter().fold(cmd, |cmd, name| {
        cmd.mut_subcommand(name, |s| map_settings(s, f))
    })
}

/// How API requests are authenticated (`ECR_AUTH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Any request is served, whatever its credentials.
    None,
    /// Requests must carry a valid SigV4 signature of a known key (src/protocols/auth.rs).
    SigV4,
}

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
    /// The log filter (`RUST_LOG`), checked.
    pub log_filter: String,
    pub settings: Settings,
    /// The local server's time, connection and memory bounds.
    pub server_limits: Limits,
    /// How old unowned bytes must be before they are removed (both backends).
    pub gc_grace: std::time::Duration,
    /// How requests are authenticated.
    pub auth: AuthMode,
}

/// `ECR_MAX_CONNECTIONS` when unset: half the soft open-file limit (the other half is left for
/// the backend's files), at most 1024; 256 where the limit cannot be read.
fn default_max_connections() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| open_files_limit(&text))
        .map_or(256, |n| (n / 2).clamp(1, 1024) as usize)
}

/// The soft "Max open files" of a `/proc/<pid>/limits` text.
fn open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

impl Config {
    /// Reads the settings from `args` (without the program name; `serve` or no command) and
    /// `env`. The error is a message for the operator.
    pub fn from_args_and_env(
        args: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let cli = Cli::try_parse_with_env(args, &env).map_err(|e| e.to_string())?;
        match cli.into_command() {
            CliCommand::Serve(serve) => Config::from_serve_args(serve, env),
            #[cfg(feature = "push")]
            CliCommand::Push(_) => Err("`push` is not a server command".into()),
            CliCommand::Keys(_) => Err("`keys` is not a server command".into()),
        }
    }

    /// Checks the settings and applies the defaults that depend on where the binary runs. `env`
    /// gives `AWS_LAMBDA_RUNTIME_API` and the regions `ECR_REGION` falls back to.
    pub fn from_serve_args(
        args: ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let in_lambda = env(LAMBDA_RUNTIME_API_ENV).is_some();
        let listen_text = args.listen;
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            format!("ECR_LISTEN/--listen: '{listen_text}' is not an address like 127.0.0.1:8080")
        })?;
        let nonempty = |v: Option<String>| v.filter(|v| !v.is_empty());
        let backend = match nonempty(args.backend).as_deref() {
            None => {
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
        let (bucket, table) = (nonempty(args.bucket), nonempty(args.table));
        if backend == Backend::Aws && (bucket.is_none() || table.is_none()) {
            return Err("ECR_BACKEND=aws needs ECR_BUCKET and ECR_TABLE".into());
        }
        let registry_id = args.registry_id;
        if registry_id.len() != 12 || !registry_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("ECR_REGISTRY_ID: '{registry_id}' is not 12 digits"));
        }
        let region = nonempty(args.region)
            .or_else(|| nonempty(env("AWS_REGION")))
            .or_else(|| nonempty(env("AWS_DEFAULT_REGION")))
            .unwrap_or_else(|| "us-east-1".into());
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("ECR_REGION: '{region}' is not a region name"));
        }
        let number = |name: &str, value: Option<String>, default: u64| -> Result<u64, String> {
            match nonempty(value) {
                None => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .map_err(|_| format!("{name}: '{v}' is not a whole number of bytes")),
            }
        };
        let (default_part, default_min) = if in_lambda {
            (lambda::part_size(), lambda::MIN_PART_SIZE)
        } else {
            (LOCAL_PART_SIZE, S3_MIN_PART_SIZE)
        };
        let part_size = number("ECR_PART_SIZE", args.part_size, default_part)?;
        if part_size == 0 || part_size > MAX_LAYER_PART {
            return Err(format!(
                "ECR_PART_SIZE: {part_size} must be between 1 and {MAX_LAYER_PART}"
            ));
        }
        let min_part_size = number("ECR_MIN_PART_SIZE", args.min_part_size, default_min)?;
        if min_part_size > part_size {
            return Err(format!(
                "ECR_MIN_PART_SIZE: {min_part_size} is larger than ECR_PART_SIZE {part_size}; parts of the advertised size would be rejected"
            ));
        }
        let required = |name: &str, value: String| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{name}: '{value}' is not a whole number of bytes"))
        };
        let s3_part_size = required("ECR_S3_PART_SIZE", args.s3_part_size)?;
        if !(S3_MIN_PART_SIZE..=S3_MAX_PART_SIZE).contains(&s3_part_size) {
            return Err(format!(
                "ECR_S3_PART_SIZE: {s3_part_size} must be between {S3_MIN_PART_SIZE} and 5 GiB"
            ));
        }
        let upload_ttl_secs = required("ECR_UPLOAD_TTL_SECS", args.upload_ttl_secs)?;
        if upload_ttl_secs < 60 {
            return Err("ECR_UPLOAD_TTL_SECS: must be at least 60".into());
        }
        let max_upload_age_secs = required("ECR_MAX_UPLOAD_AGE_SECS", args.max_upload_age_secs)?;
        if max_upload_age_secs < 60 {
            return Err("ECR_MAX_UPLOAD_AGE_SECS: must be at least 60".into());
        }
        let gc_grace =
            std::time::Duration::from_secs(required("ECR_GC_GRACE_SECS", args.gc_grace_secs)?);
        let public_url = nonempty(args.public_url)
            .map(|url| parse_public_url(&url))
            .transpose()?;
        let registry_host = public_url.as_deref().map(url_authority);
        let create_on_push = match args.create_on_push.trim() {
            "true" | "1" => true,
            "false" | "0" | "" => false,
            other => {
                return Err(format!(
                    "ECR_CREATE_ON_PUSH: '{other}' is not true or false"
                ));
            }
        };
        let verify = match args.verify.trim() {
            "stream" | "" => VerifyMode::Stream,
            "incremental" => VerifyMode::Incremental,
            other => {
                return Err(format!(
                    "ECR_VERIFY: '{other}' is not one of stream, incremental"
                ));
            }
        };
        let secs = |name: &str, value: String| -> Result<std::time::Duration, String> {
            match value.parse::<u64>() {
                Ok(n) if n > 0 => Ok(std::time::Duration::from_secs(n)),
                _ => Err(format!(
                    "{name}: '{value}' is not a whole number of seconds above 0"
                )),
            }
        };
        let max_connections = match nonempty(args.max_connections) {
            None => default_max_connections(),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(format!(
                        "ECR_MAX_CONNECTIONS: '{v}' is not a number above 0"
                    ));
                }
            },
        };
        let max_buffered_bytes = required("ECR_MAX_BUFFERED_BYTES", args.max_buffered_bytes)?;
        if max_buffered_bytes < crate::protocols::ecr::MAX_BODY as u64 {
            return Err(format!(
                "ECR_MAX_BUFFERED_BYTES: {max_buffered_bytes} is less than one request of the \
                 largest size ({} bytes)",
                crate::protocols::ecr::MAX_BODY
            ));
        }
        let server_limits = Limits {
            header_timeout: secs("ECR_HEADER_TIMEOUT_SECS", args.header_timeout_secs)?,
            idle_timeout: secs("ECR_IDLE_TIMEOUT_SECS", args.idle_timeout_secs)?,
            body_timeout: secs("ECR_BODY_TIMEOUT_SECS", args.body_timeout_secs)?,
            request_timeout: secs("ECR_REQUEST_TIMEOUT_SECS", args.request_timeout_secs)?,
            max_connections,
            max_buffered_bytes: usize::try_from(max_buffered_bytes).unwrap_or(usize::MAX),
        };
        let auth = match nonempty(args.auth).as_deref() {
            None if in_lambda || !listen.ip().is_loopback() => AuthMode::SigV4,
            None => AuthMode::None,
            Some("none") => AuthMode::None,
            Some("sigv4") => AuthMode::SigV4,
            Some(other) => return Err(format!("ECR_AUTH: '{other}' is not one of none, sigv4")),
        };
        let log_filter = args.log;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            return Err(format!(
                "RUST_LOG/--log: '{log_filter}' is not a log filter: {e}"
            ));
        }
        Ok(Config {
            listen,
            data_dir: args.data_dir,
            backend,
            bucket,
            table,
            in_lambda,
            public_url,
            log_filter,
            settings: Settings {
                registry_id,
                region,
                part_size,
                min_part_size,
                s3_part_size,
                upload_ttl_secs,
                max_upload_age_secs,
                response_limit: in_lambda.then(lambda::response_limit),
                // The public URL's authority; without one, the address bound (set at start-up).
                registry_host,
                create_on_push,
                verify,
            },
            server_limits,
            gc_grace,
            auth,
        })
    }
}

/// The `host[:port]` of a URL: how `repositoryUri` names the registry (`docker push` takes no
/// scheme).
pub fn url_authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_string()
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

    #[test]
    fn auth_defaults_to_sigv4_off_loopback_and_inside_lambda() {
        assert_eq!(parse(&[], &[]).unwrap().auth, AuthMode::None);
        let c = parse(&["--listen", "0.0.0.0:8080"], &[]).unwrap();
        assert_eq!(c.auth, AuthMode::SigV4);
        let c = parse(
            &[],
            &[
                ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
                ("ECR_BUCKET", "b"),
                ("ECR_TABLE", "t"),
            ],
        )
        .unwrap();
        assert_eq!(c.auth, AuthMode::SigV4);
        let c = parse(&["--listen", "0.0.0.0:8080"], &[("ECR_AUTH", "none")]).unwrap();
        assert_eq!(c.auth, AuthMode::None);
        let c = parse(&["--auth", "sigv4"], &[]).unwrap();
        assert_eq!(c.auth, AuthMode::SigV4);
        assert!(
            parse(&[], &[("ECR_AUTH", "iam")])
                .unwrap_err()
                .contains("ECR_AUTH")
        );
    }

    #[test]
    fn keys_commands_take_the_backend_settings() {
        let env = |k: &str| (k == "ECR_DATA_DIR").then(|| "/tmp/d".to_owned());
        let args: Vec<String> = [
            "keys",
            "create",
            "--allow",
            "push",
            "--repository",
            "team/*",
            "--name",
            "ci",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cli = Cli::try_parse_with_env(&args, &env).unwrap();
        let CliCommand::Keys(KeysCommand::Create {
            name,
            allow,
            repositories,
            settings,
        }) = cli.into_command()
        else {
            panic!("not keys create");
        };
        assert_eq!((name.as_deref(), allow.as_str()), (Some("ci"), "push"));
        assert_eq!(repositories, ["team/*"]);
        assert_eq!(settings.data_dir, PathBuf::from("/tmp/d"));
        let args: Vec<String> = ["keys", "create", "--allow", "root"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(Cli::try_parse_with_env(&args, &env).is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_setting_has_a_flag_and_a_variable_in_both_places() {
        let serve = Cli::command().find_subcommand("serve").unwrap().clone();
        let top = Cli::command();
        let settings = |cmd: &clap::Command| -> Vec<(Option<String>, Option<String>)> {
            cmd.get_arguments()
                .filter(|a| a.get_env().is_some())
                .map(|a| {
                    (
                        a.get_long().map(str::to_owned),
                        a.get_env().map(|e| e.to_string_lossy().into_owned()),
                    )
                })
                .collect()
        };
        assert_eq!(settings(&top), settings(&serve));
        assert!(settings(&serve).iter().all(|(flag, _)| flag.is_some()));
    }

    #[test]
    fn serve_is_the_default_command_and_flags_work_without_it() {
        let env = |_: &str| None;
        for args in [
            &["--listen", "127.0.0.1:1"][..],
            &["serve", "--listen=127.0.0.1:1"],
        ] {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let CliCommand::Serve(s) = Cli::try_parse_with_env(&args, &env).unwrap().into_command()
            else {
                panic!("not serve")
            };
            assert_eq!(s.listen, "127.0.0.1:1");
        }
    }

    #[test]
    fn a_variable_does_not_conflict_with_the_serve_command() {
        let c = parse(&["serve"], &[("ECR_LISTEN", "127.0.0.1:7")]).unwrap();
        assert_eq!(c.listen.port(), 7);
        let c = parse(
            &["serve", "--listen", "127.0.0.1:8"],
            &[("ECR_LISTEN", "127.0.0.1:7")],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 8);
    }

    #[test]
    fn help_and_version_are_not_errors() {
        let env = |_: &str| None;
        for (args, kind) in [
            (&["--help"][..], clap::error::ErrorKind::DisplayHelp),
            (&["serve", "--help"], clap::error::ErrorKind::DisplayHelp),
            (&["--version"], clap::error::ErrorKind::DisplayVersion),
        ] {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let err = Cli::try_parse_with_env(&args, &env).unwrap_err();
            assert_eq!(err.kind(), kind);
            assert_eq!(err.exit_code(), 0);
        }
    }

    #[test]
    fn empty_variables_are_unset() {
        let c = parse(
            &[],
            &[
                ("ECR_LISTEN", ""),
                ("ECR_BACKEND", ""),
                ("ECR_REGISTRY_ID", ""),
                ("ECR_PART_SIZE", ""),
                ("ECR_S3_PART_SIZE", ""),
                ("ECR_REGION", ""),
                ("AWS_REGION", "eu-west-3"),
                ("RUST_LOG", ""),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.backend, Backend::Local);
        assert_eq!(c.settings.registry_id, "123456789012");
        assert_eq!(c.settings.part_size, 10_485_760);
        assert_eq!(c.settings.s3_part_size, 8 * 1024 * 1024);
        assert_eq!(c.settings.region, "eu-west-3");
        assert_eq!(c.log_filter, "info");
    }

    #[test]
    fn region_falls_back_to_the_aws_variables() {
        let region = |env: &[(&str, &str)]| parse(&[], env).unwrap().settings.region;
        assert_eq!(
            region(&[("AWS_DEFAULT_REGION", "ap-south-1")]),
            "ap-south-1"
        );
        assert_eq!(
            region(&[
                ("AWS_DEFAULT_REGION", "ap-south-1"),
                ("AWS_REGION", "eu-west-3")
            ]),
            "eu-west-3"
        );
        assert_eq!(
            region(&[("AWS_REGION", "eu-west-3"), ("ECR_REGION", "us-west-2")]),
            "us-west-2"
        );
        assert_eq!(
            parse(&["--region", "sa-east-1"], &[("ECR_REGION", "us-west-2")])
                .unwrap()
                .settings
                .region,
            "sa-east-1"
        );
    }

    #[test]
    fn every_setting_has_a_flag() {
        let c = parse(
            &[
                "--backend=aws",
                "--bucket=b",
                "--table=t",
                "--registry-id=000000000001",
                "--part-size=4194304",
                "--min-part-size=1048576",
                "--s3-part-size=6291456",
                "--upload-ttl-secs=600",
                "--public-url=http://h/",
                "--log=debug",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.backend, Backend::Aws);
        assert_eq!(
            (c.bucket.as_deref(), c.table.as_deref()),
            (Some("b"), Some("t"))
        );
        assert_eq!(c.settings.registry_id, "000000000001");
        assert_eq!(c.settings.part_size, 4_194_304);
        assert_eq!(c.settings.min_part_size, 1_048_576);
        assert_eq!(c.settings.s3_part_size, 6_291_456);
        assert_eq!(c.settings.upload_ttl_secs, 600);
        assert_eq!(c.public_url.as_deref(), Some("http://h"));
        assert_eq!(c.log_filter, "debug");
    }

    #[test]
    fn server_limits_have_defaults_and_are_checked() {
        let c = parse(&[], &[]).unwrap();
        let l = &c.server_limits;
        assert_eq!(l.header_timeout.as_secs(), 30);
        assert_eq!(l.idle_timeout.as_secs(), 30);
        assert_eq!(l.body_timeout.as_secs(), 300);
        assert_eq!(l.request_timeout.as_secs(), 900);
        assert!((1..=1024).contains(&l.max_connections));
        assert_eq!(l.max_buffered_bytes, 256 << 20);
        let c = parse(
            &["--max-connections", "7", "--header-timeout-secs", "2"],
            &[("ECR_MAX_BUFFERED_BYTES", "67108864")],
        )
        .unwrap();
        assert_eq!(c.server_limits.max_connections, 7);
        assert_eq!(c.server_limits.header_timeout.as_secs(), 2);
        assert_eq!(c.server_limits.max_buffered_bytes, 64 << 20);
        for (flag, value) in [
            ("--header-timeout-secs", "0"),
            ("--idle-timeout-secs", "x"),
            ("--max-connections", "0"),
            ("--max-buffered-bytes", "1048576"),
        ] {
            assert!(parse(&[flag, value], &[]).is_err(), "{flag} {value}");
        }
    }

    #[test]
    fn the_open_file_limit_is_read_from_proc() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max open files            128                  4096                 files\n";
        assert_eq!(open_files_limit(text), Some(128));
        assert_eq!(
            open_files_limit(
                "Max open files            unlimited            unlimited            files"
            ),
            Some(u64::MAX)
        );
        assert_eq!(open_files_limit("nothing"), None);
    }

    #[test]
    fn a_bad_log_filter_stops_start_up() {
        let err = parse(&[], &[("RUST_LOG", "info,=[")]).unwrap_err();
        assert!(err.contains("RUST_LOG"), "{err}");
    }

    /// README.md's configuration table, as [`ServeArgs`] defines it: flag and variable, default
    /// (clap's, or the help text's closing `[default: ...]`), meaning.
    fn settings_table() -> String {
        let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
        let mut table =
            String::from("| flag / variable | default | meaning |\n| --- | --- | --- |\n");
        for arg in cmd.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let (meaning, default) = match help
                .strip_suffix(']')
                .and_then(|h| h.rsplit_once(" [default: "))
            {
                Some((meaning, default)) => (meaning.to_owned(), default.to_owned()),
                None => {
                    let default = match arg.get_default_values() {
                        [] => "—".to_owned(),
                        values => format!("`{}`", values[0].to_string_lossy()),
                    };
                    (help, default)
                }
            };
            let flag = arg.get_long().expect("every setting has a flag");
            assert!(
                !meaning.contains('|') && !default.contains('|'),
                "{meaning}"
            );
            table.push_str(&format!(
                "| `--{flag}` / `{}` | {default} | {meaning} |\n",
                env.to_string_lossy()
            ));
        }
        table
    }

    #[test]
    fn readme_configuration_table_matches_the_flags() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let header = "| flag / variable | default | meaning |";
        let start = readme
            .find(header)
            .expect("README.md has a configuration table");
        let in_readme: String = readme[start..]
            .lines()
            .take_while(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        let expected = settings_table();
        if in_readme != expected {
            let (old, new): (Vec<&str>, Vec<&str>) =
                (in_readme.lines().collect(), expected.lines().collect());
            let mut diff = String::new();
            for l in &old {
                if !new.contains(l) {
                    diff.push_str(&format!("- {l}\n"));
                }
            }
            for l in &new {
                if !old.contains(l) {
                    diff.push_str(&format!("+ {l}\n"));
                }
            }
            if diff.is_empty() {
                diff.push_str("(the same rows, in another order)\n");
            }
            panic!(
                "README.md's configuration table differs from the settings in src/config.rs \
                 (- README, + src/config.rs):\n{diff}\nThe table as src/config.rs defines it:\n\n{expected}"
            );
        }
    }
}

//! `ecr-layer-upload push`: pushes an image through the ECR API itself (not the registry
//! protocol), the way AWS's Go client does, so it works against real ECR and against this
//! service alike. See docs/push.md.
//!
//! source (layout directory or tar, read in place) → image (the manifests and blobs to push) →
//! upload (BatchCheck, Initiate, parts, Complete, PutImage) with state (resume) and progress.

pub mod image;
pub mod progress;
pub mod source;
pub mod state;
pub mod upload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use aws_config::BehaviorVersion;

use self::progress::{Progress, human};
use self::upload::{BlobOutcome, Pusher};

/// Read only by the push command, for tests: stop (exit non-zero, state kept) after this many
/// parts were accepted, as an interrupted push would.
pub const STOP_AFTER_PARTS_ENV: &str = "ECR_PUSH_STOP_AFTER_PARTS";

pub const USAGE: &str = "\
usage: ecr-layer-upload push <oci-layout-dir | image.tar> --repository <name> [--tag <tag>]
           [--endpoint-url <url>] [--region <region>] [--registry-id <id>] [--state-file <file>]

Pushes an OCI image layout (directory or tar) or a docker save tar to an ECR repository through
the ECR API. Credentials and region come from the usual AWS chain; the endpoint from
--endpoint-url or AWS_ENDPOINT_URL_ECR.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub input: PathBuf,
    pub repository: String,
    pub tag: Option<String>,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub registry_id: Option<String>,
    pub state_file: Option<PathBuf>,
}

/// `Ok(None)` for `--help`.
pub fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut input = None;
    let mut repository = None;
    let mut tag = None;
    let mut endpoint_url = None;
    let mut region = None;
    let mut registry_id = None;
    let mut state_file = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let slot = match flag {
            "--repository" | "--repository-name" => &mut repository,
            "--tag" => &mut tag,
            "--endpoint-url" => &mut endpoint_url,
            "--region" => &mut region,
            "--registry-id" => &mut registry_id,
            "--state-file" => &mut state_file,
            f if f.starts_with('-') && f.len() > 1 => return Err(format!("unknown option {f}")),
            _ => {
                if input.replace(PathBuf::from(arg)).is_some() {
                    return Err("only one image can be pushed at a time".into());
                }
                continue;
            }
        };
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))?,
        };
        if value.is_empty() {
            return Err(format!("{flag} needs a value"));
        }
        *slot = Some(value);
    }
    let input = input.ok_or("the image to push (a directory or a tar) is missing")?;
    let repository = repository.ok_or("--repository is required")?;
    if let Some(id) = &registry_id
        && (id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("--registry-id {id:?} is not a 12-digit account id"));
    }
    Ok(Some(Options {
        input,
        repository,
        tag,
        endpoint_url,
        region,
        registry_id,
        state_file: state_file.map(PathBuf::from),
    }))
}

/// The `push` subcommand; `args` are the arguments after `push`.
pub fn main(args: &[String]) -> ExitCode {
    let opts = match parse_args(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("ecr-layer-upload push: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ecr-layer-upload push: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(opts, |k| std::env::var(k).ok())) {
        Ok(digest) => {
            println!("{digest}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("ecr-layer-upload push: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Pushes the image; answers the pushed manifest's digest.
pub async fn run(opts: Options, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let progress = Progress::new(std::io::stderr().is_terminal());
    let input = opts.input.clone();
    let tag = opts.tag.clone();
    let plan = tokio::task::spawn_blocking(move || {
        let source = source::Source::open(&input)?;
        image::plan(&source, tag.as_deref())
    })
    .await
    .map_err(|e| format!("reading the image: {e}"))?
    .map_err(|e| format!("reading the image: {e}"))?;

    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = &opts.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    let sdk = loader.load().await;
    let region = sdk
        .region()
        .map(|r| r.to_string())
        .ok_or("no AWS region: pass --region or set AWS_REGION")?;
    // The SDK reads AWS_ENDPOINT_URL_ECR itself; it is read here too because the endpoint is
    // part of the key under which unfinished uploads are saved.
    let endpoint = opts
        .endpoint_url
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_ECR"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .filter(|e| !e.is_empty());
    let mut conf = aws_sdk_ecr::config::Builder::from(&sdk);
    if let Some(url) = &endpoint {
        conf = conf.endpoint_url(url);
    }
    let state_path = match &opts.state_file {
        Some(p) => Some(p.clone()),
        None => state::default_path(&env),
    };
    let stop_after_parts = match env(STOP_AFTER_PARTS_ENV) {
        Some(v) => Some(
            v.parse::<u64>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{STOP_AFTER_PARTS_ENV}={v:?} is not a positive number"))?,
        ),
        None => None,
    };
    let mut pusher = Pusher {
        ecr: aws_sdk_ecr::Client::from_conf(conf.build()),
        registry_id: opts.registry_id.clone(),
        repository: opts.repository.clone(),
        endpoint_key: endpoint.unwrap_or_else(|| format!("ecr:{region}")),
        state: state_path.map(state::StateFile::new),
        progress,
        stop_after_parts,
        parts_sent: 0,
    };

    let blobs = plan.blobs();
    let (mut uploaded, mut present, mut sent) = (0usize, 0usize, 0u64);
    for blob in &blobs {
        match pusher.push_blob(blob).await? {
            BlobOutcome::Present => present += 1,
            BlobOutcome::Uploaded { sent: n } => {
                uploaded += 1;
                sent += n;
            }
        }
    }
    let mut new_images = 0usize;
    for m in &plan.manifests {
        if pusher.put_manifest(m).await? {
            new_images += 1;
        }
    }
    let top = plan.top();
    let name = match &top.tag {
        Some(t) => format!("{}:{t}", opts.repository),
        None => opts.repository.clone(),
    };
    let image_state = if new_images == 0 {
        "already present"
    } else {
        "pushed"
    };
    progress.line(&format!(
        "{name}@{} {image_state}: {uploaded} blobs uploaded ({} sent), {present} already present, {} manifests",
        top.digest,
        human(sent),
        plan.manifests.len()
    ));
    Ok(top.digest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parse_args_reads_every_option() {
        let o = parse_args(&args(
            "img.tar --repository a/b --tag v1 --endpoint-url=http://x --region eu-west-1 \
             --registry-id 123456789012 --state-file s.json",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(o.input, PathBuf::from("img.tar"));
        assert_eq!(o.repository, "a/b");
        assert_eq!(o.tag.as_deref(), Some("v1"));
        assert_eq!(o.endpoint_url.as_deref(), Some("http://x"));
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
        assert_eq!(o.registry_id.as_deref(), Some("123456789012"));
        assert_eq!(o.state_file, Some(PathBuf::from("s.json")));
    }

    #[test]
    fn parse_args_rejects_bad_input() {
        assert!(parse_args(&args("--repository r")).is_err());
        assert!(parse_args(&args("dir")).is_err());
        assert!(parse_args(&args("dir --repository")).is_err());
        assert!(parse_args(&args("dir --repository r --bogus 1")).is_err());
        assert!(parse_args(&args("a b --repository r")).is_err());
        assert!(parse_args(&args("dir --repository r --registry-id 12")).is_err());
        assert_eq!(parse_args(&args("--help")).unwrap(), None);
    }
}

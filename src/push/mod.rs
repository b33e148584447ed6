//! `ecr-layer-upload push`: pushes an image through the ECR API itself (not the registry
//! protocol), the way AWS's Go client does, so it works against real ECR and against this
//! service alike. See docs/push.md.
//!
//! source (layout directory or tar, read in place) → image (the manifests and blobs to push) →
//! upload (BatchCheck, Initiate, parts, Complete, PutImage; several blobs at once, each one part
//! read ahead: parts) with state (resume) and progress.

pub mod image;
pub mod parts;
pub mod progress;
pub mod source;
pub mod state;
pub mod upload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use aws_config::BehaviorVersion;

use self::progress::{Progress, human};
use self::upload::{BlobOutcome, DEFAULT_CONCURRENT_UPLOADS, Pusher, push_blobs};

/// Read only by the push command, for tests: stop (exit non-zero, state kept) after this many
/// parts were accepted, as an interrupted push would.
pub const STOP_AFTER_PARTS_ENV: &str = "ECR_PUSH_STOP_AFTER_PARTS";

/// The options of `ecr-layer-upload push` (docs/push.md).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// OCI image layout (directory or tar) or `docker save` tar
    #[arg(value_name = "oci-layout-dir | image.tar")]
    pub input: PathBuf,
    /// the repository to push to; it must exist
    #[arg(long, visible_alias = "repository-name", value_name = "NAME", value_parser = nonempty)]
    pub repository: String,
    /// the tag to give the image; also chooses the image in a layout that holds several
    #[arg(long, value_name = "TAG", value_parser = nonempty)]
    pub tag: Option<String>,
    /// the ECR endpoint [default: AWS_ENDPOINT_URL_ECR, else AWS_ENDPOINT_URL, else real ECR]
    #[arg(long, value_name = "URL", value_parser = nonempty)]
    pub endpoint_url: Option<String>,
    /// the region [default: the usual AWS chain (AWS_REGION, the profile's region, ...)]
    #[arg(long, value_name = "REGION", value_parser = nonempty)]
    pub region: Option<String>,
    /// a 12-digit account id [default: the caller's own registry]
    #[arg(long, value_name = "ID", value_parser = registry_id)]
    pub registry_id: Option<String>,
    /// where unfinished uploads are saved [default: $XDG_STATE_HOME/ecr-layer-upload/uploads.json,
    /// else ~/.local/state/ecr-layer-upload/uploads.json]
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// how many blobs are uploaded at once (1: one after the other), as dockerd's setting of
    /// the same name
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONCURRENT_UPLOADS,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_concurrent_uploads: u16,
}

fn nonempty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("needs a value".into())
    } else {
        Ok(value.to_owned())
    }
}

fn registry_id(id: &str) -> Result<String, String> {
    if id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(id.to_owned())
    } else {
        Err(format!("{id:?} is not a 12-digit account id"))
    }
}

/// The `push` command.
pub fn main(opts: Options) -> ExitCode {
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
    let pusher = Arc::new(Pusher {
        ecr: aws_sdk_ecr::Client::from_conf(conf.build()),
        registry_id: opts.registry_id.clone(),
        repository: opts.repository.clone(),
        endpoint_key: endpoint.unwrap_or_else(|| format!("ecr:{region}")),
        state: Mutex::new(state_path.map(state::StateFile::new)),
        progress: progress.clone(),
        stop_after_parts,
        parts_sent: AtomicU64::new(0),
    });

    let outcomes = push_blobs(
        &pusher,
        plan.blobs(),
        usize::from(opts.max_concurrent_uploads),
    )
    .await?;
    let (mut uploaded, mut present, mut sent) = (0usize, 0usize, 0u64);
    for outcome in outcomes {
        match outcome {
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

    /// `Ok(None)` for `--help`.
    fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
        #[derive(clap::Parser)]
        struct Push {
            #[command(flatten)]
            options: Options,
        }
        let argv = std::iter::once("push".to_owned()).chain(args.iter().cloned());
        match <Push as clap::Parser>::try_parse_from(argv) {
            Ok(p) => Ok(Some(p.options)),
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn parse_args_reads_every_option() {
        let o = parse_args(&args(
            "img.tar --repository a/b --tag v1 --endpoint-url=http://x --region eu-west-1 \
             --registry-id 123456789012 --state-file s.json --max-concurrent-uploads 2",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(o.max_concurrent_uploads, 2);
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
        assert!(parse_args(&args("dir --repository r --max-concurrent-uploads 0")).is_err());
        assert!(parse_args(&args("dir --repository r --max-concurrent-uploads 65")).is_err());
        let o = parse_args(&args("dir --repository r")).unwrap().unwrap();
        assert_eq!(o.max_concurrent_uploads, DEFAULT_CONCURRENT_UPLOADS);
        assert_eq!(parse_args(&args("--help")).unwrap(), None);
    }

    #[test]
    fn parse_args_takes_the_cli_spelling_and_refuses_empty_values() {
        let o = parse_args(&args("dir --repository-name a/b"))
            .unwrap()
            .unwrap();
        assert_eq!(o.repository, "a/b");
        for empty in [
            "--repository=",
            "--tag=",
            "--endpoint-url=",
            "--state-file=",
        ] {
            let argv = args(&format!("dir --repository r {empty}"));
            assert!(parse_args(&argv).is_err(), "{empty}");
        }
    }
}

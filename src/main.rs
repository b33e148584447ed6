//! One binary: the Lambda runtime loop inside AWS Lambda, a local HTTP server elsewhere.

use std::process::ExitCode;
use std::sync::Arc;

use ecr_layer_upload::admin;
use ecr_layer_upload::backends::aws::{DynamoMetadata, GcLimits, S3Blobs, collect};
use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata, reconcile};
use ecr_layer_upload::config::{Backend, Cli, CliCommand, Config};
use ecr_layer_upload::frontdoors::{self, http::Downloads, lambda::Scheduled};
use ecr_layer_upload::ports::{BlobStore, MetadataStore};
use ecr_layer_upload::protocols::auth::Auth;
use ecr_layer_upload::service::Service;
use tracing_subscriber::EnvFilter;

/// glibc's allocator raises its mmap threshold each time a large block is freed, up to 32 MiB,
/// and from then on serves part-sized buffers from heaps it does not give back: peak memory then
/// grows with every buffer that was ever live at once (about 30 MiB more in `make bench`'s
/// peak-RSS section). A fixed threshold keeps blocks of 1 MiB or more in mappings of their own,
/// returned to the system when freed. glibc reads it from the environment at start, so the
/// process starts itself again with it set, unless the variable is already there (a deployment
/// may set its own value; template.yaml sets this one, which spares the function the restart).
const MMAP_THRESHOLD_VAR: &str = "MALLOC_MMAP_THRESHOLD_";
const MMAP_THRESHOLD: &str = "1048576";

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn with_fixed_mmap_threshold() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(MMAP_THRESHOLD_VAR).is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "ecr-layer-upload".into());
    // `exec` returns only on failure; then this process goes on with glibc's defaults.
    let _ = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(MMAP_THRESHOLD_VAR, MMAP_THRESHOLD)
        .exec();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn with_fixed_mmap_threshold() {
    let _ = (MMAP_THRESHOLD_VAR, MMAP_THRESHOLD);
}

fn main() -> ExitCode {
    with_fixed_mmap_threshold();
    // Help, the version and usage errors end here (exit 0 or 2).
    #[cfg_attr(not(feature = "push"), allow(clippy::infallible_destructuring_match))]
    let serve = match Cli::parse_process().into_command() {
        CliCommand::Serve(serve) => serve,
        // A client of the API, with its own options; the Lambda build leaves it out.
        #[cfg(feature = "push")]
        CliCommand::Push(options) => return ecr_layer_upload::push::main(options),
        CliCommand::Keys(command) => return ecr_layer_upload::admin::keys_main(command),
    };
    let config = match Config::from_serve_args(serve, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("ecr-layer-upload: {msg}");
            return ExitCode::from(2);
        }
    };
    // Checked by Config.
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if config.in_lambda {
        // CloudWatch adds its own timestamps; JSON lines are what log queries want.
        fmt.json().without_time().with_target(false).init();
    } else {
        use std::io::IsTerminal;
        fmt.with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ecr-layer-upload: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(start(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("ecr-layer-upload: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The address clients reach the listener at. A wildcard address is not one to connect to;
/// loopback surely reaches it, and ECR_PUBLIC_URL names any other.
fn reachable(l: &tokio::net::TcpListener) -> Result<std::net::SocketAddr, String> {
    let mut addr = l.local_addr().map_err(|e| e.to_string())?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr)
}

async fn start(config: Config) -> Result<(), String> {
    // Bound before the backends are built: the embedded backend's download URLs name the address
    // actually bound (`--listen` may ask for port 0). Inside Lambda the runtime loop serves.
    let listener = if config.in_lambda {
        None
    } else {
        let l = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        Some(l)
    };
    let mut config = config;
    if config.settings.registry_host.is_none()
        && let Some(l) = &listener
    {
        // `repositoryUri` names the address clients reach: the one bound.
        config.settings.registry_host = Some(reachable(l)?.to_string());
    }
    match config.backend {
        Backend::Local => {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                format!(
                    "cannot create data directory {}: {e}",
                    config.data_dir.display()
                )
            })?;
            let meta = LocalMetadata::open(&config.data_dir)
                .map_err(|e| format!("cannot open state in {}: {e}", config.data_dir.display()))?;
            let mut blobs = LocalBlobs::open(&config.data_dir)
                .map_err(|e| format!("cannot open blobs in {}: {e}", config.data_dir.display()))?;
            if let Some(url) = &config.public_url {
                blobs = blobs.with_public_url(url);
            } else if let Some(l) = &listener {
                blobs = blobs.with_public_url(&format!("http://{}", reachable(l)?));
            }
            let downloads: Downloads = Some(Arc::new(blobs.clone()));
            let scheduled = local_pass(meta.clone(), blobs.clone(), config.gc_grace);
            spawn_reconciler(meta.clone(), blobs.clone(), config.gc_grace).await;
            let auth = admin::request_checker(&config, admin::key_store(&config, None)).await?;
            let svc = Arc::new(Service::new(meta, blobs, config.settings.clone()));
            spawn_sweeper(svc.clone());
            run(svc, downloads, auth, &config, listener, scheduled).await
        }
        Backend::Aws => {
            let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let (Some(bucket), Some(table)) = (config.bucket.clone(), config.table.clone()) else {
                return Err("ECR_BACKEND=aws needs ECR_BUCKET and ECR_TABLE".into());
            };
            let auth =
                admin::request_checker(&config, admin::key_store(&config, Some(&sdk))).await?;
            let meta = DynamoMetadata::new(&sdk, table);
            let blobs = S3Blobs::new(&sdk, bucket);
            let svc = Arc::new(Service::new(
                meta.clone(),
                blobs.clone(),
                config.settings.clone(),
            ));
            let scheduled = aws_pass(svc.clone(), meta, blobs, config.gc_grace);
            // Inside Lambda an EventBridge schedule invokes the pass (template.yaml's
            // GcSchedule); the local server runs it every hour itself.
            if listener.is_some() {
                let pass = scheduled.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
                    loop {
                        tick.tick().await;
                        pass().await;
                    }
                });
            }
            run(svc, None, auth, &config, listener, scheduled).await
        }
    }
}

/// The embedded backend removes abandoned uploads itself (S3 and DynamoDB have lifecycle rules
/// and TTL for that).
fn spawn_sweeper<M: MetadataStore, B: BlobStore>(svc: Arc<Service<M, B>>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
        loop {
            tick.tick().await;
            match svc.sweep_expired(1000).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "expired uploads removed"),
                Err(e) => {
                    tracing::warn!(error = %ecr_layer_upload::domain::error::chain(&e), "sweep failed")
                }
            }
        }
    });
}

/// The embedded backend removes what no record owns: once before serving (what a crash cut),
/// then every hour (what is older than `grace`); see src/backends/local/reconcile.rs.
async fn spawn_reconciler(meta: LocalMetadata, blobs: LocalBlobs, grace: std::time::Duration) {
    let pass = move |at_start: bool| {
        let (meta, blobs) = (meta.clone(), blobs.clone());
        async move {
            let clock = ecr_layer_upload::domain::clock::SystemClock;
            match reconcile(&meta, &blobs, at_start, grace, &clock).await {
                Ok(r) if r.files == 0 && r.layers == 0 => {}
                Ok(r) => tracing::info!(
                    files = r.files,
                    bytes = r.bytes,
                    layers = r.layers,
                    "unreferenced layers and unowned blob files removed"
                ),
                Err(e) => {
                    tracing::warn!(error = %ecr_layer_upload::domain::error::chain(&e), "reconciling the blob files failed")
                }
            }
        }
    };
    pass(true).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        tick.tick().await;
        loop {
            tick.tick().await;
            pass(false).await;
        }
    });
}

/// One bounded collection on the AWS backend: ends expired uploads (DynamoDB's TTL may lag by
/// days), then removes what no record owns from the bucket (src/backends/aws/gc.rs).
fn aws_pass(
    svc: Arc<Service<DynamoMetadata, S3Blobs>>,
    meta: DynamoMetadata,
    blobs: S3Blobs,
    grace: std::time::Duration,
) -> Scheduled {
    Arc::new(move || {
        let (svc, meta, blobs) = (svc.clone(), meta.clone(), blobs.clone());
        Box::pin(async move {
            let chain = ecr_layer_upload::domain::error::chain;
            let expired = match svc.sweep_expired(1000).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "sweep failed");
                    0
                }
            };
            let clock = ecr_layer_upload::domain::clock::SystemClock;
            match collect(&meta, &blobs, grace, &clock, GcLimits::default()).await {
                Ok(c) => {
                    tracing::info!(
                        expired,
                        objects = c.objects,
                        bytes = c.bytes,
                        multipart_aborted = c.multipart_aborted,
                        layers = c.layers,
                        complete = c.complete,
                        "unreferenced layers and unowned objects collected"
                    );
                    format!(
                        "{expired} expired uploads ended; {} unreferenced layers, {} objects ({} bytes) and {} multipart uploads removed; whole bucket seen: {}",
                        c.layers, c.objects, c.bytes, c.multipart_aborted, c.complete
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "collecting unowned objects failed");
                    format!("{expired} expired uploads ended; collection failed")
                }
            }
        })
    })
}

/// The embedded backend's scheduled pass (it runs in Lambda only if configured so): one
/// reconciliation of what is older than `grace`.
fn local_pass(meta: LocalMetadata, blobs: LocalBlobs, grace: std::time::Duration) -> Scheduled {
    Arc::new(move || {
        let (meta, blobs) = (meta.clone(), blobs.clone());
        Box::pin(async move {
            let clock = ecr_layer_upload::domain::clock::SystemClock;
            match reconcile(&meta, &blobs, false, grace, &clock).await {
                Ok(r) => format!(
                    "{} unreferenced layers, {} files ({} bytes) removed",
                    r.layers, r.files, r.bytes
                ),
                Err(_) => "reconciliation failed".to_owned(),
            }
        })
    })
}

/// Serves on `listener`, or runs the Lambda runtime loop when there is none.
async fn run<M: MetadataStore, B: BlobStore>(
    svc: Arc<Service<M, B>>,
    downloads: Downloads,
    auth: Option<Arc<Auth>>,
    config: &Config,
    listener: Option<tokio::net::TcpListener>,
    scheduled: Scheduled,
) -> Result<(), String> {
    let Some(listener) = listener else {
        return frontdoors::lambda::run(svc, auth, scheduled)
            .await
            .map_err(|e| e.to_string());
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        %addr,
        backend = ?config.backend,
        registry_id = %config.settings.registry_id,
        part_size = config.settings.part_size,
        auth = ?config.auth,
        "serving the ECR layer-upload API"
    );
    frontdoors::http::serve_with_auth(
        svc,
        downloads,
        auth,
        listener,
        config.server_limits.clone(),
        shutdown_signal(),
    )
    .await
    .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

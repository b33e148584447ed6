//! `ecr-layer-upload keys create|list|delete`, and the request checker the server starts with
//! (docs/security.md). Composition: it names the concrete key stores of the backends.

use std::process::ExitCode;
use std::sync::Arc;

use crate::backends::aws::DynamoKeys;
use crate::backends::local::LocalKeys;
use crate::config::{AuthMode, Backend, Config, KeysCommand};
use crate::domain::error::StoreError;
use crate::ports::keys::{KeyRecord, KeyStore, Permission};
use crate::protocols::auth::{self, Auth};

/// The key store of the configured backend (`sdk`: the AWS SDK's settings, for `aws`).
pub fn key_store(config: &Config, sdk: Option<&aws_config::SdkConfig>) -> Arc<dyn KeyStore> {
    match (config.backend, sdk, config.table.as_deref()) {
        (Backend::Aws, Some(sdk), Some(table)) => Arc::new(DynamoKeys::new(sdk, table)),
        _ => Arc::new(LocalKeys::open(&config.data_dir)),
    }
}

/// The request checker of `ECR_AUTH=sigv4`, or `None` for `none`. Refuses to start with sigv4
/// and no key, saying how to create one.
pub async fn request_checker(
    config: &Config,
    keys: Arc<dyn KeyStore>,
) -> Result<Option<Arc<Auth>>, String> {
    if config.auth == AuthMode::None {
        if !config.in_lambda && !config.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %config.listen,
                "ECR_AUTH=none on a non-loopback address: anyone who reaches it may push and delete"
            );
        }
        return Ok(None);
    }
    let existing = keys.list_keys().await.map_err(|e| {
        format!(
            "cannot read the access keys: {}",
            crate::domain::error::chain(&e)
        )
    })?;
    if existing.is_empty() {
        let backend = match config.backend {
            Backend::Local => format!("--data-dir {}", config.data_dir.display()),
            Backend::Aws => "ECR_BACKEND=aws ECR_TABLE=... ECR_BUCKET=...".to_owned(),
        };
        return Err(format!(
            "ECR_AUTH=sigv4 and no access key exists, so no request could be served. Create one \
             with `ecr-layer-upload keys create --allow push` (with the same backend settings \
             as the server: {backend}), or set ECR_AUTH=none to serve without authentication"
        ));
    }
    let ttl = if config.in_lambda {
        auth::LAMBDA_CACHE_TTL
    } else {
        auth::LOCAL_CACHE_TTL
    };
    tracing::info!(keys = existing.len(), "requests are checked with SigV4");
    Ok(Some(Arc::new(Auth::new(
        keys,
        config.settings.region.clone(),
        config.settings.registry_id.clone(),
        ttl,
    ))))
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed<'a> {
    access_key_id: &'a str,
    name: &'a str,
    permission: &'static str,
    repositories: &'a [String],
    created_at: u64,
}

/// Runs a `keys` command; the outcome is printed (JSON on stdout, errors on stderr).
pub fn keys_main(command: KeysCommand) -> ExitCode {
    let config =
        match Config::from_serve_args(command.settings().clone(), |k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(msg) => {
                eprintln!("ecr-layer-upload: {msg}");
                return ExitCode::from(2);
            }
        };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ecr-layer-upload: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_keys(command, &config)) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("ecr-layer-upload: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run_keys(command: KeysCommand, config: &Config) -> Result<String, String> {
    let sdk = match config.backend {
        Backend::Aws => {
            Some(aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await)
        }
        Backend::Local => {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| {
                format!(
                    "cannot create data directory {}: {e}",
                    config.data_dir.display()
                )
            })?;
            None
        }
    };
    let keys = key_store(config, sdk.as_ref());
    let failed = |e: StoreError| crate::domain::error::chain(&e).to_string();
    match command {
        KeysCommand::Create {
            name,
            allow,
            repositories,
            ..
        } => {
            let permission = Permission::parse(&allow)
                .ok_or_else(|| format!("--allow: '{allow}' is not one of pull, push, admin"))?;
            if let Some(bad) = repositories.iter().find(|p| p.is_empty() || p.len() > 256) {
                return Err(format!(
                    "--repository: '{bad}' is not a pattern of 1 to 256 characters"
                ));
            }
            let (id, secret) = auth::generate_key_pair()?;
            let record = KeyRecord {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
                name: name.unwrap_or_default(),
                permission,
                repositories,
                created_at_ms: auth::now_ms(),
            };
            keys.create_key(&record).await.map_err(failed)?;
            Ok(serde_json::json!({"accessKeyId": id, "secretAccessKey": secret}).to_string())
        }
        KeysCommand::List { .. } => {
            let all = keys.list_keys().await.map_err(failed)?;
            let listed: Vec<Listed> = all
                .iter()
                .map(|k| Listed {
                    access_key_id: &k.access_key_id,
                    name: &k.name,
                    permission: k.permission.as_str(),
                    repositories: &k.repositories,
                    created_at: k.created_at_ms / 1000,
                })
                .collect();
            serde_json::to_string_pretty(&listed).map_err(|e| e.to_string())
        }
        KeysCommand::Delete { id, .. } => {
            if keys.delete_key(&id).await.map_err(failed)? {
                Ok(serde_json::json!({"deleted": id}).to_string())
            } else {
                Err(format!("no access key {id}"))
            }
        }
    }
}

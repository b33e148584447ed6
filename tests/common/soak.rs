//! The soak run (`make soak`, not part of `make test`): concurrent clients push layers of random
//! sizes through the service for a bounded time, with retries, cuts (a request dropped part way,
//! as a client timeout or a dropped connection does) and duplicate parts; then every layer that
//! was reported complete is read back and hashed. Run on the embedded backend by
//! tests/unit/soak.rs and on S3 + DynamoDB, with faults injected, by tests/aws/soak.rs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::ports::{BlobStore, MetadataStore};
use ecr_layer_upload::service::Service;
use ecr_layer_upload::service::types::*;
use futures_util::TryStreamExt;

use super::{REGISTRY, digest, noise};

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub clients: usize,
    pub duration: Duration,
    pub max_layer: usize,
    pub part_size: usize,
    /// How long a client waits before it retries a failed request.
    pub back_off: Duration,
}

impl SoakConfig {
    /// From `ECR_SOAK_CLIENTS` and `ECR_SOAK_SECS` (8 clients, 60 s by default).
    pub fn from_env() -> Self {
        let get = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        SoakConfig {
            clients: get("ECR_SOAK_CLIENTS", 8) as usize,
            duration: Duration::from_secs(get("ECR_SOAK_SECS", 60)),
            max_layer: 12 << 20,
            part_size: 2 << 20,
            back_off: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Default)]
pub struct Counts {
    /// Uploads started.
    pub uploads: AtomicU64,
    /// Layers reported complete.
    pub layers: AtomicU64,
    /// Bytes of the layers reported complete.
    pub bytes: AtomicU64,
    pub cuts: AtomicU64,
    pub duplicates: AtomicU64,
    pub retried: AtomicU64,
    /// Pushes that did not end with a layer in time.
    pub failures: AtomicU64,
}

/// A completed layer: repository, digest.
pub type Completed = (String, String);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

enum Step<T> {
    Done(T),
    Failed(EcrError),
    Cut,
}

/// Runs `fut`, or with one chance in `cut_one_in` drops it after a random short time, as a
/// client timeout or a dropped connection does.
async fn maybe_cut<T>(
    rng: &mut Rng,
    counts: &Counts,
    fut: impl std::future::Future<Output = Result<T, EcrError>>,
) -> Step<T> {
    if rng.below(10) == 0 {
        let after = Duration::from_micros(rng.below(20_000));
        match tokio::time::timeout(after, fut).await {
            Ok(Ok(v)) => Step::Done(v),
            Ok(Err(e)) => Step::Failed(e),
            Err(_) => {
                counts.cuts.fetch_add(1, Ordering::Relaxed);
                Step::Cut
            }
        }
    } else {
        match fut.await {
            Ok(v) => Step::Done(v),
            Err(e) => Step::Failed(e),
        }
    }
}

/// One push of `data` as a resuming client does it; `None` if it did not end with a layer
/// within `limit`.
async fn push<M: MetadataStore, B: BlobStore>(
    svc: &Service<M, B>,
    name: &str,
    data: &[u8],
    cfg: &SoakConfig,
    rng: &mut Rng,
    counts: &Counts,
    limit: Instant,
) -> Option<String> {
    let want = digest(data);
    let repo = || name.parse().unwrap();
    'upload: while Instant::now() < limit {
        counts.uploads.fetch_add(1, Ordering::Relaxed);
        let id = match maybe_cut(
            rng,
            counts,
            svc.initiate_layer_upload(InitiateLayerUploadRequest::new(repo())),
        )
        .await
        {
            Step::Done(out) => out.upload_id,
            Step::Failed(_) | Step::Cut => {
                counts.retried.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(cfg.back_off).await;
                continue;
            }
        };
        let mut offset = 0usize;
        while offset < data.len() {
            if Instant::now() >= limit {
                return None;
            }
            let end = (offset + 1 + rng.below(cfg.part_size as u64) as usize).min(data.len());
            let send = |first: usize, last: usize| {
                svc.upload_layer_part(UploadLayerPartRequest::new(
                    repo(),
                    id.parse().unwrap(),
                    first as u64,
                    Bytes::copy_from_slice(&data[first..last]),
                ))
            };
            let first = offset;
            match maybe_cut(rng, counts, send(first, end)).await {
                Step::Done(out) => {
                    offset = out.last_byte_received as usize + 1;
                    if rng.below(8) == 0 {
                        // The same part again, as a client unsure of the first answer sends it:
                        // accepted again, or refused with where to go on from.
                        counts.duplicates.fetch_add(1, Ordering::Relaxed);
                        let _ = send(first, end).await;
                    }
                }
                Step::Failed(EcrError::InvalidLayerPart {
                    last_valid_byte_received,
                    ..
                }) => {
                    counts.retried.fetch_add(1, Ordering::Relaxed);
                    offset = match last_valid_byte_received {
                        0 => 0,
                        n => n as usize + 1,
                    };
                }
                Step::Failed(EcrError::UploadNotFound(_)) => continue 'upload,
                Step::Failed(_) | Step::Cut => {
                    counts.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(cfg.back_off).await;
                }
            }
        }
        while Instant::now() < limit {
            let done = maybe_cut(
                rng,
                counts,
                svc.complete_layer_upload(CompleteLayerUploadRequest::new(
                    repo(),
                    id.parse().unwrap(),
                    vec![want.parse().unwrap()],
                )),
            )
            .await;
            match done {
                Step::Done(_) | Step::Failed(EcrError::LayerAlreadyExists(_)) => {
                    return Some(want);
                }
                Step::Failed(EcrError::UploadNotFound(_)) => continue 'upload,
                // The bytes sent may be short (a cut part counted as lost): resend from there.
                Step::Failed(EcrError::InvalidLayer(_)) => continue 'upload,
                Step::Failed(_) | Step::Cut => {
                    counts.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(cfg.back_off).await;
                }
            }
        }
    }
    None
}

/// `cfg.clients` clients pushing into repository `name` (created here) until `cfg.duration` has
/// passed; returns the layers reported complete.
pub async fn run<M: MetadataStore, B: BlobStore>(
    svc: Arc<Service<M, B>>,
    name: &str,
    cfg: &SoakConfig,
    counts: Arc<Counts>,
) -> Vec<Completed> {
    svc.create_repository(CreateRepositoryRequest::new(name.parse().unwrap()))
        .await
        .unwrap();
    let end = Instant::now() + cfg.duration;
    let mut tasks = Vec::new();
    for client in 0..cfg.clients {
        let (svc, name, cfg, counts) = (svc.clone(), name.to_owned(), cfg.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x5EED ^ ((client as u64 + 1) << 20) | 1);
            let mut done = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let size = 1 + rng.below(cfg.max_layer as u64) as usize;
                let data = noise(size, (client as u64) << 32 | n);
                // A push may run past the end by a minute, no more.
                let limit = end.max(Instant::now()) + Duration::from_secs(60);
                match push(&svc, &name, &data, &cfg, &mut rng, &counts, limit).await {
                    Some(d) => {
                        counts.layers.fetch_add(1, Ordering::Relaxed);
                        counts.bytes.fetch_add(size as u64, Ordering::Relaxed);
                        done.push((name.clone(), d));
                    }
                    None => {
                        counts.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            done
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Makes the completed layers live as a real push does once its layers are in: PutImage of
/// manifests that reference them, up to 100 layers each (the first one doubling as the config).
/// The collection of unreferenced layers keeps exactly the layers some image references, so the
/// checks after it see what a registry keeps. Layers that are not recorded are left to `verify`.
pub async fn reference<M: MetadataStore, B: BlobStore>(svc: &Service<M, B>, layers: &[Completed]) {
    for (i, batch) in layers.chunks(100).enumerate() {
        let mut descriptors = Vec::new();
        for (repo, d) in batch {
            if let Ok(Some(layer)) = svc.metadata().get_layer(REGISTRY, repo, d).await {
                descriptors.push(format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                    layer.size
                ));
            }
        }
        let Some(first) = descriptors.first() else {
            continue;
        };
        let config = first.replace("image.layer.v1.tar", "image.config.v1+json");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{config},"layers":[{}]}}"#,
            descriptors.join(",")
        );
        svc.put_image(PutImageRequest {
            image_tag: Some(format!("soak-{i}").parse().unwrap()),
            ..PutImageRequest::new(batch[0].0.parse().unwrap(), manifest)
        })
        .await
        .unwrap();
    }
}

/// Reads every completed layer back through `meta` and `blobs` and hashes it; returns how many
/// did not match (or were not found).
pub async fn verify<M: MetadataStore, B: BlobStore>(
    meta: &M,
    blobs: &B,
    layers: &[Completed],
) -> u64 {
    let mut bad = 0;
    for (repo, d) in layers {
        let Ok(Some(layer)) = meta.get_layer(REGISTRY, repo, d).await else {
            bad += 1;
            continue;
        };
        let read: Result<Vec<Bytes>, _> = match blobs.read_object(&layer.blob_key, None).await {
            Ok(s) => s.try_collect().await,
            Err(e) => Err(e),
        };
        match read {
            Ok(chunks) if digest(&chunks.concat()) == *d => {}
            _ => bad += 1,
        }
    }
    bad
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

/// The figures, one line.
pub fn report(
    backend: &str,
    counts: &Counts,
    faults: u64,
    bad: u64,
    orphans: (u64, u64),
) -> String {
    format!(
        "soak {backend}: uploads {} layers {} bytes {} cuts {} duplicate parts {} retried {} faults injected {faults} failures {} wrong bytes {bad} orphans {} files / {} bytes peak RSS {} MiB",
        counts.uploads.load(Ordering::Relaxed),
        counts.layers.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed),
        counts.cuts.load(Ordering::Relaxed),
        counts.duplicates.load(Ordering::Relaxed),
        counts.retried.load(Ordering::Relaxed),
        counts.failures.load(Ordering::Relaxed),
        orphans.0,
        orphans.1,
        peak_rss_mib(),
    )
}

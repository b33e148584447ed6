//! Faults on the AWS backend: an SDK interceptor, installed where the S3 and DynamoDB clients are
//! built, that makes a chosen call (or a random share of calls) fail before it is sent, or lose
//! its answer after the server applied it (what a timeout or a cut connection looks like to the
//! caller). And a client that pushes a layer as a real one does, retrying until the layer is
//! recorded, with every success checked against the bytes stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_s3::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use bytes::Bytes;
use ecr_layer_upload::backends::aws::{DynamoMetadata, S3Blobs};
use ecr_layer_upload::domain::clock::ManualClock;
use ecr_layer_upload::domain::error::EcrError;
use ecr_layer_upload::ports::{BlobStore, MetadataStore};
use ecr_layer_upload::service::Service;
use ecr_layer_upload::service::types::*;
use futures_util::TryStreamExt;

use super::{REGISTRY, digest};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails before it is sent.
    Fail,
    /// The call reaches the server and is applied; its answer is lost.
    LoseAnswer,
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    None,
    /// The call numbered `.0` (from 0, counting every call of every client sharing the faults).
    At(u64, Fault),
    /// About `.0` calls in a thousand, half of each kind.
    Random(u64),
}

/// What the interceptors of a set of clients share: the plan and the counts.
#[derive(Debug, Clone)]
pub struct Faults(Arc<State>);

#[derive(Debug)]
struct State {
    calls: AtomicU64,
    injected: AtomicU64,
    plan: Mutex<Plan>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults(Arc::new(State {
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            plan: Mutex::new(Plan::None),
        }))
    }
}

impl Faults {
    /// No fault from now on; counts start again.
    pub fn clear(&self) {
        *self.0.plan.lock().unwrap() = Plan::None;
        self.0.calls.store(0, Ordering::SeqCst);
    }

    /// `fault` on call number `n` from now (0: the next call).
    pub fn at(&self, n: u64, fault: Fault) {
        self.0.calls.store(0, Ordering::SeqCst);
        *self.0.plan.lock().unwrap() = Plan::At(n, fault);
    }

    /// A fault on about `per_mille` calls in a thousand.
    pub fn random(&self, per_mille: u64) {
        *self.0.plan.lock().unwrap() = Plan::Random(per_mille);
    }

    /// Calls seen since the plan was set.
    pub fn calls(&self) -> u64 {
        self.0.calls.load(Ordering::SeqCst)
    }

    /// Faults injected so far, in all.
    pub fn injected(&self) -> u64 {
        self.0.injected.load(Ordering::SeqCst)
    }

    fn decide(&self) -> Option<Fault> {
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        let fault = match *self.0.plan.lock().unwrap() {
            Plan::None => None,
            Plan::At(at, fault) => (at == n).then_some(fault),
            Plan::Random(per_mille) => {
                // xorshift of the call number: repeatable, no shared generator.
                let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 1000 < per_mille).then_some(if x.is_multiple_of(2) {
                    Fault::Fail
                } else {
                    Fault::LoseAnswer
                })
            }
        };
        if fault.is_some() {
            self.0.injected.fetch_add(1, Ordering::SeqCst);
        }
        fault
    }
}

/// Marks an attempt whose answer is to be lost.
#[derive(Debug, Clone, Copy)]
struct LoseAnswer(bool);

impl Storable for LoseAnswer {
    type Storer = StoreReplace<Self>;
}

#[derive(Debug)]
struct Injector(Faults);

impl Intercept for Injector {
    fn name(&self) -> &'static str {
        "fault injection"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        match self.0.decide() {
            None => Ok(()),
            Some(Fault::Fail) => Err("injected fault: the request was not sent".into()),
            Some(Fault::LoseAnswer) => {
                cfg.interceptor_state().store_put(LoseAnswer(true));
                Ok(())
            }
        }
    }

    fn read_after_transmit(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg.load::<LoseAnswer>().is_some_and(|l| l.0) {
            cfg.interceptor_state().store_put(LoseAnswer(false));
            return Err("injected fault: the answer was lost".into());
        }
        Ok(())
    }
}

/// The AWS adapters on the local servers, with `faults` in both clients.
pub async fn faulty_adapters(faults: &Faults) -> (DynamoMetadata, S3Blobs) {
    let (bucket, table) = super::aws::names();
    let sdk = super::aws::sdk_config().await;
    let s3 = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(true)
        .interceptor(Injector(faults.clone()))
        .build();
    let dynamo = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .interceptor(Injector(faults.clone()))
        .build();
    (
        DynamoMetadata::from_client(aws_sdk_dynamodb::Client::from_conf(dynamo), table),
        S3Blobs::from_client(aws_sdk_s3::Client::from_conf(s3), bucket),
    )
}

/// What [`push_with_retries`] went through.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pushed {
    /// Requests that failed and were retried.
    pub retried: u64,
    /// Uploads started over (UploadNotFoundException).
    pub restarts: u64,
}

/// The bytes stored for the layer `digest` of repository `name`, read through `blobs` (a store
/// without faults), hash to `digest`.
pub async fn assert_layer_verified<M: MetadataStore, B: BlobStore>(
    meta: &M,
    blobs: &B,
    name: &str,
    digest_text: &str,
) {
    let layer = meta
        .get_layer(REGISTRY, name, digest_text)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{digest_text} is recorded in {name}"));
    let chunks: Vec<Bytes> = blobs
        .read_object(&layer.blob_key, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        digest(&chunks.concat()),
        digest_text,
        "the bytes stored under a success"
    );
}

/// Pushes `data` to repository `name` in parts of `part_size` as a resuming client does,
/// retrying failed requests (at most `max_requests` in all): a part refused as out of place
/// resumes from `lastValidByteReceived`, an upload not found starts over. Every success of
/// CompleteLayerUpload is checked at once against the stored bytes (through `verify`, a store
/// without faults). Between retries of a request that failed the client waits, as clients back
/// off: on `clock` (the service's, a manual one) when given, else for real.
pub async fn push_with_retries<M, B, VM, VB>(
    svc: &Service<M, B>,
    clock: Option<&ManualClock>,
    verify: (&VM, &VB),
    name: &str,
    data: &[u8],
    part_size: usize,
    max_requests: u64,
) -> Pushed
where
    M: MetadataStore,
    B: BlobStore,
    VM: MetadataStore,
    VB: BlobStore,
{
    let want = digest(data);
    let mut pushed = Pushed::default();
    let mut requests = 0u64;
    let mut last = String::new();
    macro_rules! count {
        () => {
            requests += 1;
            assert!(
                requests <= max_requests,
                "no verified layer after {max_requests} requests; the last error: {last}"
            );
        };
    }
    'upload: loop {
        count!();
        let id = match svc
            .initiate_layer_upload(InitiateLayerUploadRequest::new(name.parse().unwrap()))
            .await
        {
            Ok(out) => out.upload_id,
            Err(e) => {
                assert_retryable(&e);
                last = format!("initiate {}: {e}", e.type_name());
                pushed.retried += 1;
                back_off(clock).await;
                continue;
            }
        };
        let mut offset = 0usize;
        while offset < data.len() {
            count!();
            let end = (offset + part_size).min(data.len());
            let res = svc
                .upload_layer_part(UploadLayerPartRequest::new(
                    name.parse().unwrap(),
                    id.parse().unwrap(),
                    offset as u64,
                    Bytes::copy_from_slice(&data[offset..end]),
                ))
                .await;
            match res {
                Ok(out) => offset = out.last_byte_received as usize + 1,
                Err(EcrError::InvalidLayerPart {
                    last_valid_byte_received,
                    message,
                    ..
                }) => {
                    last = format!(
                        "InvalidLayerPart {last_valid_byte_received} at {offset}: {message}"
                    );
                    // Parts here are far longer than one byte: 0 means nothing received.
                    offset = match last_valid_byte_received {
                        0 => 0,
                        n => n as usize + 1,
                    };
                    pushed.retried += 1;
                }
                Err(EcrError::UploadNotFound(_)) => {
                    pushed.restarts += 1;
                    continue 'upload;
                }
                Err(e) => {
                    assert_retryable(&e);
                    last = format!("{}: {e}", e.type_name());
                    pushed.retried += 1;
                    back_off(clock).await;
                }
            }
        }
        loop {
            count!();
            let res = svc
                .complete_layer_upload(CompleteLayerUploadRequest::new(
                    name.parse().unwrap(),
                    id.parse().unwrap(),
                    vec![want.parse().unwrap()],
                ))
                .await;
            match res {
                Ok(out) => {
                    assert_eq!(out.layer_digest, want);
                    assert_layer_verified(verify.0, verify.1, name, &want).await;
                    return pushed;
                }
                Err(EcrError::LayerAlreadyExists(_)) => {
                    assert_layer_verified(verify.0, verify.1, name, &want).await;
                    return pushed;
                }
                Err(EcrError::UploadNotFound(_)) => {
                    pushed.restarts += 1;
                    continue 'upload;
                }
                Err(e) => {
                    assert_retryable(&e);
                    last = format!("{}: {e}", e.type_name());
                    pushed.retried += 1;
                    back_off(clock).await;
                }
            }
        }
    }
}

/// A client's wait before it retries: 3 s, as the SDKs' backoff grows to.
async fn back_off(clock: Option<&ManualClock>) {
    match clock {
        Some(c) => c.advance_secs(3),
        None => tokio::time::sleep(std::time::Duration::from_secs(3)).await,
    }
}

/// A storage fault reaches the client as ServerException (or a throttling error), which clients
/// retry; never as an answer about the layer.
fn assert_retryable(e: &EcrError) {
    assert!(
        matches!(e.type_name(), "ServerException" | "LimitExceededException"),
        "a fault answered {}: {e}",
        e.type_name()
    );
}

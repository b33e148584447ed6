//! Repositories deleted and created again, and the upload age cap, on the in-memory and embedded
//! backends (the scenarios are in tests/common/lifecycle.rs); and the cap's place under the
//! bucket's lifecycle rules in template.yaml.

use std::sync::Arc;

use ecr_layer_upload::backends::local::{LocalBlobs, LocalMetadata};
use ecr_layer_upload::backends::memory::{MemoryBlobs, MemoryMetadata};
use ecr_layer_upload::domain::clock::ManualClock;
use ecr_layer_upload::ports::MetadataStore;
use ecr_layer_upload::service::{
    DEFAULT_MAX_UPLOAD_AGE_SECS, Service, Settings, UPLOAD_AGE_MARGIN_SECS,
};

use crate::common::lifecycle::*;
use crate::common::service::{memory_service, small_parts};
use crate::common::{temp_dir, unique};

fn local(dir: &std::path::Path) -> (LocalMetadata, LocalBlobs) {
    (
        LocalMetadata::open(dir).unwrap(),
        LocalBlobs::open(dir).unwrap(),
    )
}

#[tokio::test]
async fn memory_recreated_repository_shares_nothing() {
    recreated_repository_shares_nothing(&memory_service(small_parts()), "life/recreated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_recreated_repository_shares_nothing() {
    let dir = temp_dir();
    let (meta, blobs) = local(dir.path());
    let svc = Service::new(meta, blobs, small_parts());
    recreated_repository_shares_nothing(&svc, "life/recreated").await;
}

#[tokio::test]
async fn memory_upload_of_a_deleted_incarnation_is_not_live() {
    an_upload_of_a_deleted_incarnation_is_not_live(&memory_service(small_parts()), "life/stale")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_upload_of_a_deleted_incarnation_is_not_live() {
    let dir = temp_dir();
    let (meta, blobs) = local(dir.path());
    let svc = Service::new(meta, blobs, small_parts());
    an_upload_of_a_deleted_incarnation_is_not_live(&svc, "life/stale").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_complete_racing_delete_records_nothing() {
    complete_racing_delete_records_nothing(
        MemoryMetadata::new(),
        MemoryBlobs::new(),
        small_parts(),
        "life/race",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_complete_racing_delete_records_nothing() {
    let dir = temp_dir();
    let (meta, blobs) = local(dir.path());
    complete_racing_delete_records_nothing(meta, blobs, small_parts(), "life/race").await;
}

/// The age scenario, then the sweep (the store is the test's own).
async fn age_cap_then_sweep<M: MetadataStore, B: ecr_layer_upload::ports::BlobStore>(
    meta: M,
    blobs: B,
) {
    let clock = Arc::new(ManualClock::starting_now());
    let svc = Service::new(meta, blobs, age_settings()).with_clock(clock.clone());
    let name = unique("life/age");
    let id = uploads_end_at_their_age_cap(&svc, &clock, &name).await;
    let segments = svc.metadata().list_segments(&id, 0).await.unwrap();
    assert!(!segments.is_empty(), "the capped upload held staged bytes");
    assert_eq!(svc.sweep_expired(100).await.unwrap(), 1);
    assert_eq!(svc.metadata().get_upload(&id).await.unwrap(), None);
    for s in segments {
        assert!(
            svc.blobs().get_object(&s.key).await.is_err(),
            "the sweep removed {}",
            s.key
        );
    }
}

#[tokio::test]
async fn memory_uploads_end_at_their_age_cap_and_are_swept() {
    age_cap_then_sweep(MemoryMetadata::new(), MemoryBlobs::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_uploads_end_at_their_age_cap_and_are_swept() {
    let dir = temp_dir();
    let (meta, blobs) = local(dir.path());
    age_cap_then_sweep(meta, blobs).await;
}

/// A `Default:` of parameter `name` in template.yaml's `Parameters:`.
fn template_default(text: &str, name: &str) -> u64 {
    let start = text
        .find(&format!("\n  {name}:\n"))
        .unwrap_or_else(|| panic!("template.yaml has a parameter {name}"));
    text[start + 1..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .find_map(|l| l.trim().strip_prefix("Default: "))
        .unwrap_or_else(|| panic!("{name} has a default"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}'s default: {e}"))
}

/// The bucket's lifecycle rules count from an upload's creation; the cap keeps every upload
/// (and a completion begun before the cap) clear of them, and the function gets the cap.
#[test]
fn template_lifecycle_rules_sit_above_the_upload_age_cap() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml");
    let text = std::fs::read_to_string(path).expect("template.yaml");
    let cap = template_default(&text, "MaxUploadAgeSeconds");
    assert_eq!(
        cap, DEFAULT_MAX_UPLOAD_AGE_SECS,
        "the template's default is the service's"
    );
    assert_eq!(Settings::default().max_upload_age_secs, cap);
    for rule in [
        "AbortIncompleteMultipartUploadDays",
        "StagingExpirationDays",
    ] {
        let days = template_default(&text, rule);
        assert!(
            cap + UPLOAD_AGE_MARGIN_SECS <= days * 86_400,
            "{rule} ({days} days) must exceed MaxUploadAgeSeconds ({cap} s) by {UPLOAD_AGE_MARGIN_SECS} s"
        );
        assert!(
            text.contains(&format!("DaysAfterInitiation: !Ref {rule}"))
                || text.contains(&format!("ExpirationInDays: !Ref {rule}")),
            "the rule uses {rule}"
        );
    }
    assert!(text.contains("ECR_MAX_UPLOAD_AGE_SECS: !Ref MaxUploadAgeSeconds"));
}

/// The cap is a setting: flag and variable, its default the service's, and at least a minute.
#[test]
fn the_upload_age_cap_is_a_setting() {
    use ecr_layer_upload::config::Config;
    let parse = |args: &[&str], env: &[(&str, &str)]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_args_and_env(&args, move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    };
    let age = |c: Result<Config, String>| c.map(|c| c.settings.max_upload_age_secs);
    assert_eq!(age(parse(&[], &[])), Ok(DEFAULT_MAX_UPLOAD_AGE_SECS));
    assert_eq!(
        age(parse(&[], &[("ECR_MAX_UPLOAD_AGE_SECS", "7200")])),
        Ok(7200)
    );
    assert_eq!(
        age(parse(
            &["--max-upload-age-secs", "3600"],
            &[("ECR_MAX_UPLOAD_AGE_SECS", "7200")]
        )),
        Ok(3600)
    );
    for bad in ["59", "soon", "-1"] {
        let err = age(parse(&[], &[("ECR_MAX_UPLOAD_AGE_SECS", bad)])).unwrap_err();
        assert!(err.contains("ECR_MAX_UPLOAD_AGE_SECS"), "{bad}: {err}");
    }
}

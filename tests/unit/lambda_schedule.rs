//! The Lambda front door tells EventBridge's scheduled event (template.yaml's `GcSchedule`) from
//! an HTTP request: the first runs the scheduled pass and nothing else, the second is served as
//! `lambda_http` serves it, and an event that is neither is refused without a panic.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ecr_layer_upload::frontdoors::lambda::{Scheduled, dispatch};
use ecr_layer_upload::service::Settings;
use lambda_http::{Context, LambdaEvent};
use serde_json::{Value, json};

use crate::common::service::memory_service;

fn fixture(name: &str) -> Value {
    let path = format!("{}/events/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn event(payload: Value) -> LambdaEvent<Value> {
    LambdaEvent::new(payload, Context::default())
}

#[tokio::test]
async fn scheduled_events_run_the_pass_and_requests_are_served() {
    let svc = Arc::new(memory_service(Settings::default()));
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let scheduled: Scheduled = Arc::new(move || {
        let counter = counter.clone();
        Box::pin(async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "3 objects removed".to_owned()
        })
    });

    let tick = json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/gc"], "detail": {}
    });
    let answer = dispatch(svc.clone(), None, &scheduled, event(tick))
        .await
        .unwrap();
    assert_eq!(answer, json!({"collected": "3 objects removed"}));
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // A Function URL request is served: the repository is created and listed.
    let created = dispatch(
        svc.clone(),
        None,
        &scheduled,
        event(fixture("create-repository")),
    )
    .await
    .unwrap();
    assert_eq!(created["statusCode"], 200, "{created}");
    let body: Value = serde_json::from_str(created["body"].as_str().unwrap()).unwrap();
    let name = body["repository"]["repositoryName"]
        .as_str()
        .unwrap()
        .to_owned();
    let listed = dispatch(
        svc.clone(),
        None,
        &scheduled,
        event(fixture("describe-repositories")),
    )
    .await
    .unwrap();
    assert_eq!(listed["statusCode"], 200, "{listed}");
    let body: Value = serde_json::from_str(listed["body"].as_str().unwrap()).unwrap();
    assert!(
        body["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["repositoryName"] == name.as_str()),
        "{body}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "requests do not run the pass"
    );

    // Neither a schedule nor a request: an error for the runtime, not a pass, not a panic.
    assert!(
        dispatch(
            svc,
            None,
            &scheduled,
            event(json!({"source": "aws.events"}))
        )
        .await
        .is_err()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

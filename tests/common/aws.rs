//! The AWS backend's adapters, built as start-up builds them (one SDK config, endpoints from the
//! environment), against the local S3 and DynamoDB servers of `scripts/services.sh`.

use aws_config::BehaviorVersion;
use ecr_layer_upload::backends::aws::{DynamoMetadata, S3Blobs};

/// `ECR_BUCKET` and `ECR_TABLE`, or a failure that says how to get them: without the servers'
/// environment the AWS suites fail, they do not pass vacuously.
pub fn names() -> (String, String) {
    let get = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "{name} is not set: these tests need the local S3 and DynamoDB servers. \
                     Run `make test-aws-contract` or `make test-aws-backend`, or \
                     `make services-up` and then `env $(scripts/services.sh env) cargo test --test aws`"
                )
            })
    };
    (get("ECR_BUCKET"), get("ECR_TABLE"))
}

pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(BehaviorVersion::latest()).await
}

pub async fn metadata() -> DynamoMetadata {
    let (_, table) = names();
    DynamoMetadata::new(&sdk_config().await, table)
}

pub async fn blobs() -> S3Blobs {
    let (bucket, _) = names();
    S3Blobs::new(&sdk_config().await, bucket)
}

/// Both adapters from one SDK config.
pub async fn adapters() -> (DynamoMetadata, S3Blobs) {
    let (bucket, table) = names();
    let config = sdk_config().await;
    (
        DynamoMetadata::new(&config, table),
        S3Blobs::new(&config, bucket),
    )
}

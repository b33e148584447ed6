//! The OCI Distribution API through its handler on the AWS backend (S3 + DynamoDB servers): the
//! scenarios of tests/oci/suite.rs. Blobs are read back from S3, and behind Lambda a blob GET
//! redirects to a presigned S3 URL.

use ecr_layer_upload::backends::aws::{DynamoMetadata, S3Blobs};
use ecr_layer_upload::service::{Service, Settings};

use crate::common::aws;
use crate::oci_suite;

/// The service on the shared servers, serving a registry of its own (the catalog lists a
/// registry's repositories, and other tests run at the same time).
async fn make(settings: Settings) -> Service<DynamoMetadata, S3Blobs> {
    let (meta, blobs) = aws::adapters().await;
    let registry_id = format!("{:012}", rand_u64() % 1_000_000_000_000);
    Service::new(
        meta,
        blobs,
        Settings {
            registry_id,
            ..settings
        },
    )
}

fn rand_u64() -> u64 {
    u64::from_str_radix(&uuid::Uuid::new_v4().simple().to_string()[..15], 16).unwrap()
}

crate::oci_scenarios!(make);

/// Behind Lambda, the 307 leads to the blob's bytes in S3.
#[tokio::test]
async fn redirected_blob_get_reaches_s3() {
    use http::Method;
    let svc = make(Settings::default()).await;
    let name = crate::common::unique("oci/presigned");
    crate::common::service::create_repository(&svc, &name).await;
    let data = crate::common::noise(100_000, 11);
    let d = oci_suite::push_blob(&svc, &name, &data).await;
    let a = oci_suite::call_with(
        &svc,
        ecr_layer_upload::protocols::oci::Delivery::Redirect {
            max_request: 6_291_456,
        },
        Method::GET,
        &format!("/v2/{name}/blobs/{d}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(a.status, 307);
    let (status, body) = crate::common::http_get(a.header("location")).await;
    assert_eq!(status, 200);
    assert!(body == data, "the presigned URL serves other bytes");
}

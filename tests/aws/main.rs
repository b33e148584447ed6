//! The suites that need the local S3 (SeaweedFS) and DynamoDB (dynoxide) servers of
//! `scripts/services.sh`: the storage contract on the AWS backend, and the service in-process on
//! it (the service suite of tests/service/, plus what only S3 + DynamoDB have).
//!
//! Run with `make test-aws-contract` or `make test-aws-backend` (they start the servers and
//! export their environment). Without that environment these tests fail, they do not pass
//! vacuously.

#[path = "../common/mod.rs"]
mod common;
#[path = "../oci/suite.rs"]
mod oci_suite;
#[path = "../service/direct.rs"]
mod service_direct;
#[path = "../service/images.rs"]
mod service_images;
#[path = "../service/incremental.rs"]
mod service_incremental;
#[path = "../service/suite.rs"]
mod service_suite;
#[path = "../contract/suite.rs"]
mod suite;

mod backend;
mod completion;
mod contract;
mod direct_parts;
mod faults;
mod gc;
mod image_race;
mod incremental;
mod keys;
mod layer_gc;
mod lifecycle;
mod oci;
mod soak;

//! The suites that need no servers: the service on the in-memory and embedded backends (uploads,
//! images: tests/service/), every events/ fixture through the Lambda handler, Lambda's size
//! limits, the storage contract on the in-memory and embedded backends, and the embedded backend
//! with the local server.
//!
//! `make unit` runs them (with the library's own tests).

#[path = "../common/mod.rs"]
mod common;
#[path = "../service/images.rs"]
mod service_images;
#[path = "../service/suite.rs"]
mod service_suite;
#[path = "../contract/suite.rs"]
mod suite;

mod completion;
mod contract;
mod decoder_bounds;
mod decoder_props;
mod events;
mod image_race;
mod lambda_limits;
mod lambda_schedule;
mod lifecycle;
mod local_backend;
mod orphans;
mod server_errors;
mod service;
mod soak;

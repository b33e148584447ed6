//! The suites that need no servers: the service on the in-memory and embedded backends (uploads,
//! images: tests/service/), every events/ fixture through the Lambda handler, Lambda's size
//! limits, the storage contract on the in-memory and embedded backends, and the embedded backend
//! with the local server.
//!
//! `make unit` runs them (with the library's own tests).

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

mod auth;
mod completion;
mod contract;
mod decoder_bounds;
mod decoder_props;
mod direct_parts;
mod early_verify;
mod events;
mod image_race;
mod in_place_parts;
mod incremental;
mod keys_store;
mod lambda_auth;
mod lambda_limits;
mod lambda_schedule;
mod lambda_watch_auth;
mod layer_gc;
mod lifecycle;
mod local_backend;
mod oci;
mod oci_stream;
mod orphans;
mod server_errors;
mod service;
mod soak;
mod verify_one_stream;
mod verify_ranges;

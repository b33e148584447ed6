//! The suites that need no servers: the service on the in-memory backend (uploads, images), every
//! events/ fixture through the Lambda handler, Lambda's size limits, the storage contract on the
//! in-memory and embedded backends, and the embedded backend with the local server.
//!
//! `make unit` runs them (with the library's own tests).

#[path = "../common/mod.rs"]
mod common;
#[path = "../contract/suite.rs"]
mod suite;

mod completion;
mod contract;
mod events;
mod images;
mod lambda_limits;
mod local_backend;
mod server_errors;
mod service;

//! ecr-layer-upload: Amazon ECR's image API (AWS JSON 1.1) over pluggable storage.
//!
//! The layers, innermost first (docs/architecture.md has the rule between them):
//!
//! - [`domain`]: model values, ECR's limits, errors, manifests, the clock.
//! - [`ports`]: the storage traits the service needs.
//! - [`service`]: the operations, over the ports.
//! - [`backends`]: the storage adapters (`memory`, `local`, `aws`).
//! - [`protocols`]: wire protocols over plain `http` types (`ecr`: AWS JSON 1.1).
//! - [`frontdoors`]: how requests arrive (`http`: the local server; `lambda`: AWS Lambda).
//! - [`config`]: settings read once at start-up, and the composition of the layers.
//! - [`push`]: a client of the API that pushes images (the `push` feature, on by default; the
//!   Lambda function is built without it).

pub mod admin;
mod architecture;
pub mod backends;
pub mod config;
pub mod domain;
pub mod frontdoors;
pub mod ports;
pub mod protocols;
#[cfg(feature = "push")]
pub mod push;
pub mod service;

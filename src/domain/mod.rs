//! The domain: ECR's model values and limits, the errors the API answers, manifests, the clock.
//!
//! Everything else builds on this layer; it depends on no other module of the crate (see
//! docs/architecture.md).

pub mod clock;
pub mod error;
pub mod limits;
pub mod manifest;
pub mod model;
mod validate;

pub use error::{EcrError, StoreError};
pub use model::*;
pub use validate::*;

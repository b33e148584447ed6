//! Front doors: how requests reach the protocol handlers.
//!
//! - [`http`]: the local HTTP/1.1 server (hyper), which also answers the embedded backend's signed
//!   download URLs.
//! - [`lambda`]: the AWS Lambda runtime loop behind a Function URL; the only module that knows
//!   Lambda (its event types, its 6 MB payload caps and the part size that follows from them).

pub mod http;
pub mod lambda;

//! Wire protocols: each turns a plain `http::Request<Bytes>` into calls of the service and its
//! answers into an `http::Response<Bytes>`, without knowing which front door carried it.
//!
//! - [`auth`]: SigV4 verification, the keys' permissions and registry passwords, checked before
//!   a protocol calls the service.
//! - [`ecr`]: Amazon ECR's AWS JSON 1.1 API (`POST /`, `X-Amz-Target`).
//! - [`oci`]: the OCI Distribution API (`/v2/...`) on the same service.

pub mod auth;
pub mod ecr;
pub mod oci;

//! The real binary, started on a loopback port and driven by real clients: `aws-sdk-ecr` and the
//! `ecr-layer-upload push` command. The server's backend follows `ECR_TEST_BACKEND` (`local` by
//! default; `aws` needs the environment of `scripts/services.sh env`): `make test` runs this
//! binary on both.

#[path = "../common/mod.rs"]
mod common;

mod allocator;
mod auth;
mod completion_cuts;
mod keep_alive;
mod oci_auth;
mod oci_buffered;
mod oci_client;
mod oci_clients;
mod oci_docker;
mod oci_podman;
mod push;
mod push_concurrent;
mod request_limits;
mod sdk_ecr;
mod server_limits;
mod startup_reconcile;

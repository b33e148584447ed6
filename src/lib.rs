//! ecr-layer-upload: Amazon ECR's image-layer push API (AWS JSON 1.1) over pluggable storage.
//!
//! protocol → service → ports ← backend adapters (DESIGN.md §1).

pub mod backend;
pub mod config;
pub mod domain;
pub mod error;
pub mod manifest;
pub mod ports;
pub mod protocol;
pub mod push;
pub mod server;
pub mod service;

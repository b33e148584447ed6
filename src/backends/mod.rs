//! Storage adapters behind the ports of [`crate::ports`].

pub mod aws;
pub mod local;
pub mod memory;
pub mod memory_keys;

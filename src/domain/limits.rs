//! ECR's and S3's limits that the service enforces, whatever the front door.

/// ECR's documented maximum of `layerPartBlob`.
pub const MAX_LAYER_PART: u64 = 20_971_520;

/// ECR's documented maximum layer size, 52,000 MiB.
pub const MAX_LAYER_SIZE: u64 = 52_000 * 1024 * 1024;

/// S3's minimum size of a multipart part that is not the last one.
pub const S3_MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// S3's largest multipart part, 5 GiB.
pub const S3_MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

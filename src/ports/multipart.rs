//! The rules of S3 multipart uploads that every [`BlobStore`](super::BlobStore) follows, for the
//! adapters that implement them themselves (the embedded and the in-memory stores).

use sha2::{Digest, Sha256};

use super::{FlushedPart, StoreResult};
use crate::domain::error::StoreError;

/// Lower-case hex sha256, the ETag both non-AWS adapters give parts.
pub fn part_etag(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Resolves an inclusive range request against an object of `size` bytes into the inclusive
/// `(first, last)` to serve. As S3 does, a `last` past the end is clamped and a `first` past the
/// end is an error.
pub fn resolve_range(size: u64, range: Option<(u64, u64)>) -> StoreResult<Option<(u64, u64)>> {
    match range {
        None if size == 0 => Ok(None),
        None => Ok(Some((0, size - 1))),
        Some((first, last)) if first <= last && first < size => {
            Ok(Some((first, last.min(size - 1))))
        }
        Some((first, last)) => Err(StoreError::failure(format!(
            "invalid range {first}-{last} for an object of {size} bytes"
        ))),
    }
}

/// Checks the part list of a completion: non-empty and strictly ascending, as S3 requires
/// (`MalformedXML`, `InvalidPartOrder`), and every non-final part at least `min_part_size`.
pub fn check_part_list(parts: &[FlushedPart], min_part_size: u64) -> StoreResult<()> {
    if parts.is_empty() {
        return Err(StoreError::failure(
            "complete_multipart needs at least one part",
        ));
    }
    if parts.windows(2).any(|w| w[0].number >= w[1].number) {
        return Err(StoreError::failure(
            "complete_multipart parts must be in ascending part-number order",
        ));
    }
    if let Some(small) = parts[..parts.len() - 1]
        .iter()
        .find(|p| p.len < min_part_size)
    {
        return Err(StoreError::failure(format!(
            "EntityTooSmall: part {} has {} bytes, less than the minimum {min_part_size}",
            small.number, small.len
        )));
    }
    Ok(())
}

/// Part numbers S3 accepts.
pub fn check_part_number(number: u32) -> StoreResult<()> {
    if (1..=10_000).contains(&number) {
        Ok(())
    } else {
        Err(StoreError::failure(format!(
            "part number {number} is outside 1..=10000"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_range_clamps_last_and_refuses_first_past_end() {
        assert_eq!(resolve_range(10, None).ok(), Some(Some((0, 9))));
        assert_eq!(resolve_range(0, None).ok(), Some(None));
        assert_eq!(resolve_range(10, Some((0, 0))).ok(), Some(Some((0, 0))));
        assert_eq!(resolve_range(10, Some((9, 9))).ok(), Some(Some((9, 9))));
        assert_eq!(resolve_range(10, Some((5, 100))).ok(), Some(Some((5, 9))));
        assert!(resolve_range(10, Some((10, 10))).is_err());
        assert!(resolve_range(10, Some((5, 4))).is_err());
        assert!(resolve_range(0, Some((0, 0))).is_err());
    }

    fn p(number: u32, len: u64) -> FlushedPart {
        FlushedPart {
            number,
            etag: String::new(),
            offset: 0,
            len,
        }
    }

    #[test]
    fn check_part_list_wants_ascending_parts_and_big_non_final_ones() {
        assert!(check_part_list(&[p(1, 5), p(2, 5), p(3, 1)], 5).is_ok());
        assert!(
            check_part_list(&[p(1, 1)], 5).is_ok(),
            "a lone part is the last one"
        );
        assert!(check_part_list(&[p(1, 4), p(2, 5)], 5).is_err());
        assert!(check_part_list(&[], 0).is_err());
        assert!(check_part_list(&[p(2, 5), p(1, 5)], 0).is_err());
        assert!(check_part_list(&[p(1, 5), p(1, 5)], 0).is_err());
    }

    #[test]
    fn part_numbers_outside_s3_bounds_are_refused() {
        assert!(check_part_number(0).is_err());
        assert!(check_part_number(1).is_ok());
        assert!(check_part_number(10_000).is_ok());
        assert!(check_part_number(10_001).is_err());
    }
}

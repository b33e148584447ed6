//! Incremental verification (`VerifyMode::Incremental`): each accepted part advances a SHA-256
//! and a CRC-64/NVME of the layer's bytes kept in the upload record ([`HashState`]), written in
//! the same conditional write that accepts the part, so that completion knows the layer's digest
//! without reading it back. The state is this crate's own encoding of SHA-256's resumable form
//! (the eight state words after the whole 64-byte blocks, the unhashed tail, the length), advanced
//! with `sha2`'s block function: ECR parts are contiguous, so the state after part `n` is the
//! state after part `n - 1` advanced by part `n`.
//!
//! A state is used only when it matches its upload exactly: it covers `next_byte` bytes and its
//! last part is the upload's last part. Anything else (no state: an upload begun in the default
//! mode or written by a version that did not keep it; a state left behind by a writer that
//! advanced the upload without it; an undecodable one) makes completion verify by streaming the
//! assembled object, as in the default mode: never a digest taken on trust.

use bytes::Bytes;
use sha2::block_api::compress256;

use crate::domain::model::Digest as LayerDigest;
use crate::ports::{HashState, PartFingerprint, UploadRecord};

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

const BLOCK: usize = 64;

/// How completion verifies a layer's digest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VerifyMode {
    /// By streaming the assembled object through SHA-256 (`service/verify.rs`).
    #[default]
    Stream,
    /// From the SHA-256 state each part advanced (this module), with the blob store checking the
    /// assembled object against the CRC-64/NVME of the same bytes where it can (S3); by
    /// streaming whenever the state is missing or does not match the upload.
    Incremental,
}

/// The CRC-64/NVME of `data`: a part's fingerprint ([`super::part_fingerprint`]) and its
/// checksum for the blob store.
pub fn part_crc(data: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data)
}

/// A SHA-256 and CRC-64 in progress, decoded from a [`HashState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    state: [u32; 8],
    /// Bytes after the last whole block (fewer than [`BLOCK`]).
    tail: Vec<u8>,
    len: u64,
    crc64: u64,
    last_part: String,
}

impl Default for Running {
    fn default() -> Self {
        Self::new()
    }
}

impl Running {
    /// The state over no bytes.
    pub fn new() -> Self {
        Running {
            state: H0,
            tail: Vec::new(),
            len: 0,
            crc64: 0,
            last_part: String::new(),
        }
    }

    /// The state a record holds; `None` if it is not one this code wrote (then the caller
    /// verifies by streaming).
    pub fn decode(stored: &HashState) -> Option<Self> {
        let words = hex::decode(&stored.sha256).ok()?;
        let tail = hex::decode(&stored.tail).ok()?;
        if words.len() != 32
            || tail.len() >= BLOCK
            || stored.len % BLOCK as u64 != tail.len() as u64
        {
            return None;
        }
        let mut state = [0u32; 8];
        for (word, bytes) in state.iter_mut().zip(words.chunks_exact(4)) {
            *word = u32::from_be_bytes(bytes.try_into().ok()?);
        }
        Some(Running {
            state,
            tail,
            len: stored.len,
            crc64: stored.crc64,
            last_part: stored.last_part.clone(),
        })
    }

    pub fn encode(&self) -> HashState {
        let mut words = Vec::with_capacity(32);
        for w in self.state {
            words.extend_from_slice(&w.to_be_bytes());
        }
        HashState {
            sha256: hex::encode(words),
            tail: hex::encode(&self.tail),
            len: self.len,
            crc64: self.crc64,
            last_part: self.last_part.clone(),
        }
    }

    /// Advances the state by `data`, whose CRC-64/NVME is `crc` ([`part_crc`]), the part
    /// whose fingerprint is `checksum`.
    pub fn update(&mut self, data: &[u8], crc: u64, checksum: &str) {
        self.crc64 = crc_fast::checksum_combine(
            crc_fast::CrcAlgorithm::Crc64Nvme,
            self.crc64,
            crc,
            data.len() as u64,
        );
        self.len += data.len() as u64;
        self.last_part = checksum.to_owned();
        self.absorb(data);
    }

    /// Advances the SHA-256 by `data` alone: the bytes of a part that arrive in pieces
    /// (`service/stream.rs`), which [`end_part`](Self::end_part) then counts as one part.
    pub fn absorb(&mut self, data: &[u8]) {
        let mut rest = data;
        if !self.tail.is_empty() {
            let fill = (BLOCK - self.tail.len()).min(rest.len());
            self.tail.extend_from_slice(&rest[..fill]);
            rest = &rest[fill..];
            if self.tail.len() < BLOCK {
                return;
            }
            let mut block = [0u8; BLOCK];
            block.copy_from_slice(&self.tail);
            compress256(&mut self.state, &[block]);
            self.tail.clear();
        }
        let (blocks, tail) = rest.as_chunks::<BLOCK>();
        compress256(&mut self.state, blocks);
        self.tail.extend_from_slice(tail);
    }

    /// Counts the `len` bytes [`absorb`](Self::absorb)ed since the last part as the part whose
    /// CRC-64/NVME is `crc` and whose fingerprint is `checksum`.
    pub fn end_part(&mut self, crc: u64, len: u64, checksum: &str) {
        self.crc64 =
            crc_fast::checksum_combine(crc_fast::CrcAlgorithm::Crc64Nvme, self.crc64, crc, len);
        self.len += len;
        self.last_part = checksum.to_owned();
    }

    /// Bytes covered.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// CRC-64/NVME of the bytes covered.
    pub fn crc64(&self) -> u64 {
        self.crc64
    }

    /// The SHA-256 of the bytes covered (the state itself is left as it is).
    pub fn digest(&self) -> [u8; 32] {
        let mut state = self.state;
        // The tail, 0x80, zeros up to 56 bytes past a block boundary, the length in bits.
        let mut pad = Vec::with_capacity(2 * BLOCK);
        pad.extend_from_slice(&self.tail);
        pad.push(0x80);
        while pad.len() % BLOCK != BLOCK - 8 {
            pad.push(0);
        }
        pad.extend_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        let (blocks, rest) = pad.as_chunks::<BLOCK>();
        debug_assert!(rest.is_empty());
        compress256(&mut state, blocks);
        let mut out = [0u8; 32];
        for (chunk, w) in out.chunks_exact_mut(4).zip(state) {
            chunk.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// The state a new upload starts with in incremental mode.
pub fn initial_state() -> HashState {
    Running::new().encode()
}

/// The digest and CRC-64 of the layer of `up` from its recorded state, if that state matches
/// the upload exactly (covers its `next_byte` bytes and ends with its last part); `None` means
/// that completion must verify by streaming.
pub fn recorded_digest(up: &UploadRecord) -> Option<(LayerDigest, u64)> {
    let running = matching_state(up)?;
    Some((LayerDigest::sha256(&running.digest()), running.crc64()))
}

fn ends_with(running: &Running, last: Option<&PartFingerprint>) -> bool {
    running.last_part == last.map_or("", |p| p.checksum.as_str())
}

/// The hash state of `up`, if it keeps one that matches it exactly (covers its `next_byte`
/// bytes and ends with its last part): the state a part written next advances.
pub fn matching_state(up: &UploadRecord) -> Option<Running> {
    let running = Running::decode(up.hash.as_ref()?)?;
    (running.len() == up.next_byte && ends_with(&running, up.last_part.as_ref())).then_some(running)
}

/// A part on its way into an upload, with what advancing a recorded state by it needs: the
/// bytes, their CRC-64, and the last state computed (a write that lost only to an unrelated
/// change, such as a flush, is tried again from the same state without hashing again).
pub struct PartHash {
    /// The part's bytes; `None` for a part written as it arrived, never held whole.
    data: Option<Bytes>,
    crc: u64,
    cached: Option<(HashState, HashState)>,
}

impl PartHash {
    pub fn new(data: Bytes, crc: u64) -> Self {
        PartHash {
            data: Some(data),
            crc,
            cached: None,
        }
    }

    /// A part whose bytes were written as they arrived (`service/stream.rs`): it cannot
    /// advance a state, so an upload that keeps one drops it, and its completion streams.
    pub fn unhashed(crc: u64) -> Self {
        PartHash {
            data: None,
            crc,
            cached: None,
        }
    }

    /// A part whose bytes advanced the state `from` of the upload they went into to `after` as
    /// they arrived (`service/stream.rs`): the upload takes `after` if it still holds `from`.
    pub fn streamed(crc: u64, from: HashState, after: HashState) -> Self {
        PartHash {
            data: None,
            crc,
            cached: Some((from, after)),
        }
    }

    /// The part's CRC-64/NVME.
    pub fn crc(&self) -> u64 {
        self.crc
    }

    /// The state of `up` advanced by this part (`fingerprint`, starting at `up.next_byte`):
    /// `None` if `up` keeps none, or one that does not match it (it then stays absent, and
    /// completion streams).
    pub fn advance(
        &mut self,
        up: &UploadRecord,
        fingerprint: &PartFingerprint,
    ) -> Option<HashState> {
        let from = up.hash.as_ref()?;
        if let Some((before, after)) = &self.cached
            && before == from
        {
            return Some(after.clone());
        }
        let data = self.data.as_ref()?;
        let mut running = Running::decode(from)?;
        if running.len() != fingerprint.first
            || running.len() != up.next_byte
            || !ends_with(&running, up.last_part.as_ref())
        {
            return None;
        }
        running.update(data, self.crc, &fingerprint.checksum);
        let after = running.encode();
        self.cached = Some((from.clone(), after.clone()));
        Some(after)
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn bytes(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Hashes `data` cut at `cuts`, encoding and decoding the state between parts as a record
    /// would.
    fn running_over(data: &[u8], cuts: &[usize]) -> Running {
        let mut stored = initial_state();
        let mut at = 0;
        for &end in cuts.iter().chain(std::iter::once(&data.len())) {
            let part = &data[at..end];
            let mut r = Running::decode(&stored).expect("decodes");
            r.update(part, part_crc(part), &format!("p{at}"));
            stored = r.encode();
            at = end;
        }
        Running::decode(&stored).expect("decodes")
    }

    #[test]
    fn any_split_gives_sha256_and_crc64_of_the_whole() {
        let data = bytes(1000, 7);
        for cuts in [
            vec![],
            vec![0],
            vec![1],
            vec![63],
            vec![64],
            vec![65],
            vec![10, 20, 30],
            vec![63, 127, 128, 500, 999],
            vec![64, 128, 192],
        ] {
            let r = running_over(&data, &cuts);
            assert_eq!(r.len(), 1000);
            assert_eq!(
                r.digest(),
                <[u8; 32]>::from(Sha256::digest(&data)),
                "{cuts:?}"
            );
            assert_eq!(r.crc64(), part_crc(&data), "{cuts:?}");
        }
    }

    #[test]
    fn lengths_around_the_padding_boundaries_match_sha256() {
        for len in [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 4096 + 3] {
            let data = bytes(len, len as u32);
            let r = running_over(&data, &[len / 3, len / 2]);
            assert_eq!(r.digest(), <[u8; 32]>::from(Sha256::digest(&data)), "{len}");
            assert_eq!(r.crc64(), part_crc(&data), "{len}");
        }
        assert_eq!(
            hex::encode(Running::new().digest()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_encoding_is_plain_hex_words_tail_and_length() {
        let mut r = Running::new();
        let data = bytes(70, 1);
        r.update(&data, part_crc(&data), "abc");
        let s = r.encode();
        assert_eq!(s.sha256.len(), 64);
        assert_eq!(s.tail, hex::encode(&data[64..]));
        assert_eq!(
            (s.len, s.crc64, s.last_part.as_str()),
            (70, part_crc(&data), "abc")
        );
        assert_eq!(Running::decode(&s), Some(r));
    }

    #[test]
    fn malformed_states_do_not_decode() {
        let good = {
            let mut r = Running::new();
            r.update(b"hello", part_crc(b"hello"), "x");
            r.encode()
        };
        assert!(Running::decode(&good).is_some());
        for bad in [
            HashState {
                sha256: "zz".into(),
                ..good.clone()
            },
            HashState {
                sha256: good.sha256[2..].into(),
                ..good.clone()
            },
            HashState {
                tail: "0".into(),
                ..good.clone()
            },
            HashState {
                tail: "00".repeat(64),
                len: 64,
                ..good.clone()
            },
            // The tail must be what the length leaves after whole blocks.
            HashState {
                len: 6,
                ..good.clone()
            },
        ] {
            assert_eq!(Running::decode(&bad), None, "{bad:?}");
        }
    }

    fn fingerprint(first: u64, data: &[u8]) -> PartFingerprint {
        PartFingerprint {
            first,
            last: first + data.len() as u64 - 1,
            checksum: format!("{:016x}", part_crc(data)),
        }
    }

    fn upload(hash: Option<HashState>) -> UploadRecord {
        UploadRecord {
            upload_id: "u".into(),
            registry_id: "r".into(),
            repository: "app".into(),
            repository_incarnation: String::new(),
            blob_key: "layers/u".into(),
            multipart_id: "m".into(),
            next_byte: 0,
            flushed_bytes: 0,
            parts_flushed: 0,
            part_numbers_used: 0,
            last_part: None,
            smallest_nonfinal_part: None,
            state: crate::ports::UploadState::Open,
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            expires_at: 0,
            hash,
            part_checksums: true,
        }
    }

    /// `up` having accepted `data` at its `next_byte`, advancing its state.
    fn accept(up: &UploadRecord, data: &[u8]) -> UploadRecord {
        let fp = fingerprint(up.next_byte, data);
        let mut h = PartHash::new(Bytes::copy_from_slice(data), part_crc(data));
        UploadRecord {
            next_byte: fp.last + 1,
            hash: h.advance(up, &fp),
            last_part: Some(fp),
            ..up.clone()
        }
    }

    #[test]
    fn advancing_a_record_and_reading_its_digest() {
        let (a, b) = (bytes(100, 1), bytes(77, 2));
        let up = accept(&accept(&upload(Some(initial_state())), &a), &b);
        let whole = [a.clone(), b.clone()].concat();
        let (digest, crc) = recorded_digest(&up).expect("matching state");
        assert_eq!(digest, LayerDigest::sha256(&Sha256::digest(&whole)));
        assert_eq!(crc, part_crc(&whole));

        // No state: none comes back, and none is made up.
        let plain = accept(&upload(None), &a);
        assert_eq!(plain.hash, None);
        assert_eq!(recorded_digest(&plain), None);

        // A state that does not cover the upload's bytes (a part accepted without it).
        let behind = UploadRecord {
            next_byte: up.next_byte + 5,
            ..up.clone()
        };
        assert_eq!(recorded_digest(&behind), None);
        assert_eq!(
            accept(&behind, &a).hash,
            None,
            "an inconsistent state is dropped"
        );

        // The same length, but the last part is another one than the state covered.
        let replaced = UploadRecord {
            last_part: Some(fingerprint(100, &bytes(77, 3))),
            ..up.clone()
        };
        assert_eq!(recorded_digest(&replaced), None);
        assert_eq!(accept(&replaced, &a).hash, None);
    }

    #[test]
    fn a_retry_from_the_same_state_reuses_the_hash_and_another_state_does_not() {
        let a = bytes(200, 4);
        let start = upload(Some(initial_state()));
        let fp = fingerprint(0, &a);
        let mut h = PartHash::new(Bytes::copy_from_slice(&a), part_crc(&a));
        let first = h.advance(&start, &fp);
        assert!(first.is_some());
        assert_eq!(h.advance(&start, &fp), first);
        let other = upload(Some(Running::new().encode()));
        assert_eq!(h.advance(&other, &fp), first);
    }
}

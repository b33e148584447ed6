//! [`BlobStore`] on one S3 bucket: staging objects with PutObject, layers with multipart uploads
//! completed from the recorded part ETags, read-back as a stream, presigned GETs for downloads.
//!
//! The bucket's role needs s3:ListBucket besides the object actions: without it S3 answers a
//! HEAD or GET of a missing key with 403 instead of 404, and absent objects would look like
//! failures.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::RequestChecksumCalculation;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::abort_multipart_upload::AbortMultipartUploadError;
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart, Delete,
    ObjectIdentifier,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

use super::sdk_failure;
use crate::domain::error::StoreError;
use crate::ports::{BlobStore, ByteStream, FlushedPart, StoreResult};

/// DeleteObjects takes at most 1000 keys.
const DELETE_BATCH: usize = 1000;
/// The longest validity we hand out for a download URL (ECR's own is an hour too).
pub const MAX_PRESIGN: Duration = Duration::from_secs(3600);

/// S3 blob store. Cheap to clone (the client is reference-counted).
#[derive(Clone, Debug)]
pub struct S3Blobs {
    client: Client,
    bucket: String,
}

impl S3Blobs {
    /// A store on `bucket` with the client settings of `sdk_config`. When an endpoint override
    /// is in effect (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, or one set on the config), the
    /// client uses path-style addressing: local S3 servers do not resolve `<bucket>.<host>`.
    pub fn new(sdk_config: &aws_config::SdkConfig, bucket: impl Into<String>) -> Self {
        let overridden = sdk_config.endpoint_url().is_some()
            || env_set("AWS_ENDPOINT_URL_S3")
            || env_set("AWS_ENDPOINT_URL");
        let config = aws_sdk_s3::config::Builder::from(sdk_config)
            .force_path_style(overridden)
            // Bodies go without a per-request checksum unless the operation requires one
            // (DeleteObjects does). A part's bytes are checked end to end by the completion's
            // SHA-256 of the assembled object, and TLS guards them on the way to S3; a CRC32
            // computed by us and verified again by the S3 server would cost both sides a pass
            // over every byte for no check the completion does not already make.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .build();
        Self::from_client(Client::from_conf(config), bucket)
    }

    /// A store on `bucket` through an already built client.
    pub fn from_client(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A presigned GET URL for `key`, valid for `expires` (more than zero, at most an hour).
    /// Signing is local: no request is made, and the key need not exist yet.
    pub async fn presign_get(&self, key: &str, expires: Duration) -> StoreResult<String> {
        if expires.is_zero() || expires > MAX_PRESIGN {
            return Err(StoreError::failure(format!(
                "presign_get {key}: validity {expires:?} is outside (0, 1 h]"
            )));
        }
        let config = PresigningConfig::expires_in(expires)
            .map_err(|e| StoreError::backend(format!("presign_get {key}"), e))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| sdk_failure(format!("presign_get {key}"), e))?;
        Ok(req.uri().to_owned())
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// The SDK's body as the port's stream, chunk by chunk as they arrive: a layer is never held
/// in memory whole. The stream ends after the first error.
fn into_port_stream(body: SdkByteStream, key: String) -> ByteStream {
    let stream = futures_util::stream::unfold(Some(body), move |state| {
        let key = key.clone();
        async move {
            let mut body = state?;
            match body.try_next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(body))),
                Ok(None) => None,
                Err(e) => Some((Err(StoreError::backend(format!("reading {key}"), e)), None)),
            }
        }
    });
    Box::pin(stream)
}

impl S3Blobs {
    async fn get(
        &self,
        op: &str,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> StoreResult<SdkByteStream> {
        let res = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range.map(|(first, last)| format!("bytes={first}-{last}")))
            .send()
            .await;
        match res {
            Ok(out) => Ok(out.body),
            Err(e) => match e.as_service_error() {
                Some(GetObjectError::NoSuchKey(_)) => Err(StoreError::NotFound(key.to_owned())),
                _ => Err(sdk_failure(format!("{op} {key}"), e)),
            },
        }
    }
}

/// A CRC-64/NVME as S3's `x-amz-checksum-crc64nvme` carries it: base64 of its 8 big-endian
/// bytes.
pub fn crc64_header(crc: u64) -> String {
    STANDARD.encode(crc.to_be_bytes())
}

/// Whether an S3 error says that a checksum did not match the bytes (S3 answers `BadDigest`;
/// some servers `InvalidDigest`, `XAmzContentChecksumMismatch` or an `InvalidRequest` naming
/// the checksum).
fn checksum_mismatch(code: Option<&str>, message: Option<&str>) -> bool {
    match code {
        Some("BadDigest" | "InvalidDigest" | "XAmzContentChecksumMismatch") => true,
        Some("InvalidRequest" | "InvalidArgument") => {
            message.is_some_and(|m| m.to_ascii_lowercase().contains("checksum"))
        }
        _ => false,
    }
}

impl S3Blobs {
    /// UploadPart, with `crc64` as the part's CRC-64/NVME when given (S3 checks it against the
    /// bytes; the SDK computes no checksum of its own then).
    async fn put_part(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        data: Bytes,
        crc64: Option<u64>,
    ) -> StoreResult<String> {
        let part_number = i32::try_from(number).map_err(|e| {
            StoreError::backend(format!("upload_part {key}: part number {number}"), e)
        })?;
        let res = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(multipart_id)
            .part_number(part_number)
            .set_checksum_crc64_nvme(crc64.map(crc64_header))
            .body(SdkByteStream::from(data))
            // The body is not hashed into the signature (`UNSIGNED-PAYLOAD`, as the SDKs do over
            // HTTPS). It carries the CRC-64 given, which S3 verifies (incremental verification),
            // or no checksum at all (see `new`): the completion then verifies the assembled
            // object's SHA-256.
            .customize()
            .disable_payload_signing()
            .send()
            .await;
        match res {
            Ok(out) => out.e_tag().map(str::to_owned).ok_or_else(|| {
                StoreError::failure(format!(
                    "upload_part {key} part {number}: answer without an ETag"
                ))
            }),
            Err(e) => match e.as_service_error() {
                Some(se) if se.code() == Some("NoSuchUpload") => Err(StoreError::NotFound(
                    format!("multipart upload {multipart_id}"),
                )),
                Some(se) if checksum_mismatch(se.code(), se.message()) => {
                    Err(StoreError::failure(format!(
                        "upload_part {key} part {number}: S3 found the part's bytes do not match their CRC-64 ({})",
                        se.code().unwrap_or("?")
                    )))
                }
                _ => Err(sdk_failure(format!("upload_part {key} part {number}"), e)),
            },
        }
    }

    async fn complete(
        &self,
        key: &str,
        multipart_id: &str,
        parts: &[FlushedPart],
        crc64: Option<u64>,
        checksummed: bool,
    ) -> StoreResult<()> {
        let mut completed = Vec::with_capacity(parts.len());
        for p in parts {
            let number = i32::try_from(p.number).map_err(|e| {
                StoreError::backend(
                    format!("complete_multipart {key}: part number {}", p.number),
                    e,
                )
            })?;
            completed.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(&p.etag)
                    .build(),
            );
        }
        let mut request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(multipart_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            );
        if checksummed {
            request = request
                .checksum_type(ChecksumType::FullObject)
                .set_checksum_crc64_nvme(crc64.map(crc64_header));
        }
        let err = match request.send().await {
            Ok(out) => {
                // The assembled object's CRC-64 as S3 computed it, where it answers one: it must
                // be the one given (a server that did not compare would otherwise pass).
                if let (Some(want), Some(got)) = (crc64, out.checksum_crc64_nvme())
                    && got != crc64_header(want)
                {
                    return Err(StoreError::failure(format!(
                        "complete_multipart {key}: the assembled object's CRC-64 is {got}, not {} as the accepted bytes'",
                        crc64_header(want)
                    )));
                }
                return Ok(());
            }
            Err(e) => e,
        };
        // S3 may answer 200 with an <Error> body once the assembly failed; the SDK detects that
        // body and returns it as a service error with the code inside, so it lands here too.
        let (code, message) = match err.as_service_error() {
            Some(se) => (se.code(), se.message()),
            None => (None, None),
        };
        if crc64.is_some() && checksum_mismatch(code, message) {
            // Never trusted: the assembled bytes are not the accepted ones.
            return Err(StoreError::failure(format!(
                "complete_multipart {key}: S3 refused the assembly, its CRC-64 is not the accepted bytes' ({})",
                code.unwrap_or("?")
            )));
        }
        match code {
            // A recorded ETag no longer matches a stored part (a losing writer replaced it) or
            // a part is missing: the recorded state lost a race.
            Some("InvalidPart" | "InvalidPartOrder") => Err(StoreError::Conflict),
            Some("NoSuchUpload") => {
                // Either this is a retry of a completion whose answer was lost (the object is
                // there, with the size of the parts), or the upload was aborted.
                let expected: u64 = parts.iter().map(|p| p.len).sum();
                match self.object_size(key).await? {
                    Some(size) if size == expected => Ok(()),
                    _ => Err(StoreError::Conflict),
                }
            }
            _ => Err(sdk_failure(format!("complete_multipart {key}"), err)),
        }
    }
}

impl BlobStore for S3Blobs {
    async fn put_object(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(SdkByteStream::from(data))
            // See `upload_part`.
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| sdk_failure(format!("put_object {key}"), e))?;
        Ok(())
    }

    async fn get_object(&self, key: &str) -> StoreResult<Bytes> {
        // Staging objects only (at most one ECR part): collecting is bounded.
        let body = self.get("get_object", key, None).await?;
        let data = body
            .collect()
            .await
            .map_err(|e| StoreError::backend(format!("get_object {key}"), e))?;
        Ok(data.into_bytes())
    }

    async fn read_object(&self, key: &str, range: Option<(u64, u64)>) -> StoreResult<ByteStream> {
        let body = self.get("read_object", key, range).await?;
        Ok(into_port_stream(body, key.to_owned()))
    }

    async fn object_size(&self, key: &str) -> StoreResult<Option<u64>> {
        let res = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        match res {
            Ok(out) => {
                let len = out.content_length().unwrap_or(0);
                u64::try_from(len).map(Some).map_err(|_| {
                    StoreError::failure(format!("object_size {key}: negative length {len}"))
                })
            }
            Err(e) => match e.as_service_error() {
                Some(HeadObjectError::NotFound(_)) => Ok(None),
                _ => Err(sdk_failure(format!("object_size {key}"), e)),
            },
        }
    }

    async fn delete_objects(&self, keys: &[String]) -> StoreResult<()> {
        for batch in keys.chunks(DELETE_BATCH) {
            let mut objects = Vec::with_capacity(batch.len());
            for key in batch {
                objects.push(
                    ObjectIdentifier::builder()
                        .key(key)
                        .build()
                        .map_err(|e| StoreError::backend(format!("delete_objects {key}"), e))?,
                );
            }
            let delete = Delete::builder()
                .set_objects(Some(objects))
                // Quiet: only failures come back.
                .quiet(true)
                .build()
                .map_err(|e| StoreError::backend("delete_objects", e))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| {
                    let first = batch.first().map_or("", String::as_str);
                    sdk_failure(
                        format!("delete_objects of {} keys from {first}", batch.len()),
                        e,
                    )
                })?;
            // S3 reports no error for an absent key, but some servers do: that is success too.
            let failed: Vec<String> = out
                .errors()
                .iter()
                .filter(|err| err.code() != Some("NoSuchKey"))
                .map(|err| {
                    format!(
                        "{}: {}",
                        err.key().unwrap_or("?"),
                        err.code().unwrap_or("unknown error")
                    )
                })
                .collect();
            if !failed.is_empty() {
                return Err(StoreError::failure(format!(
                    "delete_objects: {} of {} keys failed, first {}",
                    failed.len(),
                    batch.len(),
                    failed[0]
                )));
            }
        }
        Ok(())
    }

    async fn create_multipart(&self, key: &str) -> StoreResult<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_failure(format!("create_multipart {key}"), e))?;
        out.upload_id().map(str::to_owned).ok_or_else(|| {
            StoreError::failure(format!(
                "create_multipart {key}: answer without an upload id"
            ))
        })
    }

    async fn upload_part(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        data: Bytes,
    ) -> StoreResult<String> {
        self.put_part(key, multipart_id, number, data, None).await
    }

    async fn create_multipart_checksummed(&self, key: &str) -> StoreResult<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
            .checksum_type(ChecksumType::FullObject)
            .send()
            .await
            .map_err(|e| sdk_failure(format!("create_multipart_checksummed {key}"), e))?;
        out.upload_id().map(str::to_owned).ok_or_else(|| {
            StoreError::failure(format!(
                "create_multipart_checksummed {key}: answer without an upload id"
            ))
        })
    }

    async fn upload_part_checksummed(
        &self,
        key: &str,
        multipart_id: &str,
        number: u32,
        _offset: u64,
        data: Bytes,
        crc64: u64,
    ) -> StoreResult<String> {
        self.put_part(key, multipart_id, number, data, Some(crc64))
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        multipart_id: &str,
        parts: &[FlushedPart],
    ) -> StoreResult<()> {
        self.complete(key, multipart_id, parts, None, false).await
    }

    async fn complete_multipart_checksummed(
        &self,
        key: &str,
        multipart_id: &str,
        parts: &[FlushedPart],
        crc64: Option<u64>,
    ) -> StoreResult<()> {
        self.complete(key, multipart_id, parts, crc64, true).await
    }

    async fn abort_multipart(&self, key: &str, multipart_id: &str) -> StoreResult<()> {
        let res = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(multipart_id)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(AbortMultipartUploadError::NoSuchUpload(_)) => Ok(()),
                _ => Err(sdk_failure(format!("abort_multipart {key}"), e)),
            },
        }
    }

    /// A presigned GET, which S3 itself serves (with `Range`). Signed with the client's
    /// credentials: when those are temporary (a Lambda role's), the URL stops working when they
    /// expire, even before `expires_in_secs` (docs/deploy.md).
    async fn download_url(&self, key: &str, expires_in_secs: u64) -> StoreResult<String> {
        self.presign_get(key, Duration::from_secs(expires_in_secs))
            .await
    }
}

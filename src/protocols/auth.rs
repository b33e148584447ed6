//! Authentication and authorization of API requests (docs/security.md).
//!
//! [`Auth::authorize`] checks a request before the service touches storage: its SigV4
//! `Authorization` header, signed for service `ecr` in the configured region with a key of the
//! [`KeyStore`], is verified by recomputing the signature with the `aws-sigv4` crate over the
//! request's method, path, query, signed headers and the SHA-256 of its body, the date is checked
//! within [`MAX_SKEW_SECS`] of the clock, and the signatures are compared in constant time. Then
//! the operation's `ecr:<Action>` and its repositories are checked against the key's permission
//! and repository patterns. Every refusal is an [`AuthError`], answered as AWS answers it.
//!
//! The registry password of GetAuthorizationToken is a token this module issues and verifies
//! ([`Auth::issue_registry_password`], [`Auth::verify_registry_password`]): signed with a secret
//! derived from the key's own secret, bound to the key, expiring after
//! [`REGISTRY_TOKEN_TTL_SECS`], and refused once the key is deleted. Other protocols (the OCI
//! Distribution API) check a principal with [`Principal::allows`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SessionTokenMode, SignableBody, SignableRequest,
    SignatureLocation, SigningSettings, UriPathNormalizationMode, sign,
};
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use http::Request;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::clock::{Clock, SystemClock};
use crate::domain::error::StoreError;
use crate::ports::keys::{KeyRecord, KeyStore, Permission};

type HmacSha256 = hmac::Hmac<Sha256>;

/// The largest difference between a request's `X-Amz-Date` and the clock, either way.
pub const MAX_SKEW_SECS: u64 = 15 * 60;

/// How long a registry password of GetAuthorizationToken is valid: 12 hours, as ECR's.
pub const REGISTRY_TOKEN_TTL_SECS: u64 = 12 * 3600;

/// The signing name clients sign ECR requests for.
pub const SERVICE: &str = "ecr";

/// How long a key read from the store is used before it is read again, by default: a new or
/// deleted key takes effect within this long.
pub const LOCAL_CACHE_TTL: Duration = Duration::from_secs(1);
pub const LAMBDA_CACHE_TTL: Duration = Duration::from_secs(30);

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const TOKEN_PREFIX: &str = "elu1";

/// The `ecr:` actions, one per operation; each needs a permission level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    BatchCheckLayerAvailability,
    BatchGetImage,
    GetDownloadUrlForLayer,
    DescribeRepositories,
    DescribeImages,
    ListImages,
    GetAuthorizationToken,
    InitiateLayerUpload,
    UploadLayerPart,
    CompleteLayerUpload,
    PutImage,
    CreateRepository,
    DeleteRepository,
    BatchDeleteImage,
}

impl Action {
    pub const ALL: [Action; 14] = [
        Action::BatchCheckLayerAvailability,
        Action::BatchGetImage,
        Action::GetDownloadUrlForLayer,
        Action::DescribeRepositories,
        Action::DescribeImages,
        Action::ListImages,
        Action::GetAuthorizationToken,
        Action::InitiateLayerUpload,
        Action::UploadLayerPart,
        Action::CompleteLayerUpload,
        Action::PutImage,
        Action::CreateRepository,
        Action::DeleteRepository,
        Action::BatchDeleteImage,
    ];

    /// The IAM action name, `ecr:<Operation>`.
    pub fn iam_name(self) -> String {
        format!("ecr:{self:?}")
    }

    /// The least permission that allows it.
    pub fn needs(self) -> Permission {
        use Action::*;
        match self {
            BatchCheckLayerAvailability
            | BatchGetImage
            | GetDownloadUrlForLayer
            | DescribeRepositories
            | DescribeImages
            | ListImages
            | GetAuthorizationToken => Permission::Pull,
            InitiateLayerUpload | UploadLayerPart | CompleteLayerUpload | PutImage => {
                Permission::Push
            }
            CreateRepository | DeleteRepository | BatchDeleteImage => Permission::Admin,
        }
    }

    /// Whether the action concerns no repository (its IAM resource is `*`).
    pub fn is_registry_wide(self) -> bool {
        self == Action::GetAuthorizationToken
    }
}

/// Whether `name` matches `pattern`, in which `*` stands for any run of characters (`/`
/// included) and everything else for itself.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Who a verified request comes from: the key's id, label, permission and repository patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub access_key_id: String,
    pub name: String,
    pub permission: Permission,
    /// Empty: every repository.
    pub repositories: Vec<String>,
    /// The registry (account) id the principal's ARN names.
    pub registry_id: String,
}

impl Principal {
    fn of(key: &KeyRecord, registry_id: &str) -> Self {
        Principal {
            access_key_id: key.access_key_id.clone(),
            name: key.name.clone(),
            permission: key.permission,
            repositories: key.repositories.clone(),
            registry_id: registry_id.to_owned(),
        }
    }

    /// Anyone, allowed everything: the principal of `ECR_AUTH=none`.
    pub fn anonymous(registry_id: &str) -> Self {
        Principal {
            access_key_id: String::new(),
            name: "anonymous".into(),
            permission: Permission::Admin,
            repositories: Vec::new(),
            registry_id: registry_id.to_owned(),
        }
    }

    /// The IAM-style ARN in AccessDenied messages.
    pub fn arn(&self) -> String {
        let user = if self.name.is_empty() {
            &self.access_key_id
        } else {
            &self.name
        };
        format!("arn:aws:iam::{}:user/{user}", self.registry_id)
    }

    /// Whether the principal may do `action` on `repository` (`None`: every repository, or none
    /// for a registry-wide action).
    pub fn allows(&self, action: Action, repository: Option<&str>) -> bool {
        if self.permission < action.needs() {
            return false;
        }
        if action.is_registry_wide() || self.repositories.is_empty() {
            return true;
        }
        match repository {
            Some(name) => self.repositories.iter().any(|p| pattern_matches(p, name)),
            None => false,
        }
    }
}

/// A refused request, as AWS names and answers it.
#[derive(Debug)]
pub enum AuthError {
    /// No `Authorization` header (403).
    MissingToken,
    /// An `Authorization` header that is not a whole SigV4 one (400).
    Incomplete(String),
    /// An access key id the store does not know (400).
    UnrecognizedClient,
    /// A signature that does not match, a date too far from the clock, a wrong scope (400).
    InvalidSignature(String),
    /// A verified key not allowed to do the operation (400).
    AccessDenied(String),
    /// The key store failed (500).
    Store(StoreError),
}

impl AuthError {
    pub fn type_name(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "MissingAuthenticationTokenException",
            AuthError::Incomplete(_) => "IncompleteSignatureException",
            AuthError::UnrecognizedClient => "UnrecognizedClientException",
            AuthError::InvalidSignature(_) => "InvalidSignatureException",
            AuthError::AccessDenied(_) => "AccessDeniedException",
            AuthError::Store(_) => "ServerException",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            AuthError::MissingToken => 403,
            AuthError::Store(_) => 500,
            _ => 400,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            AuthError::MissingToken => "Missing Authentication Token",
            AuthError::UnrecognizedClient => {
                "The security token included in the request is invalid."
            }
            AuthError::Incomplete(m)
            | AuthError::InvalidSignature(m)
            | AuthError::AccessDenied(m) => m,
            AuthError::Store(_) => crate::domain::error::INTERNAL_MESSAGE,
        }
    }
}

const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// The parts of a SigV4 `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, AuthError> {
    let incomplete = |why: &str| {
        AuthError::Incomplete(format!("{why} Authorization={}", redact_signature(value)))
    };
    let Some(rest) = value.strip_prefix(ALGORITHM) else {
        let algorithm = value.split_whitespace().next().unwrap_or("");
        return Err(AuthError::Incomplete(format!(
            "Unsupported AWS 'algorithm': '{algorithm}'"
        )));
    };
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let mut missing = String::new();
    for (name, found) in [
        ("Credential", credential.is_some()),
        ("Signature", signature.is_some()),
        ("SignedHeaders", signed.is_some()),
    ] {
        if !found {
            missing.push_str(&format!(
                "Authorization header requires '{name}' parameter. "
            ));
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(incomplete(missing.trim_end()));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(incomplete(&format!(
            "Credential should have 5 parts separated by '/', like ACCESS_KEY/DATE/REGION/SERVICE/aws4_request; found {}.",
            scope.len()
        )));
    };
    if terminator != "aws4_request" || access_key_id.is_empty() {
        return Err(incomplete(
            "Credential should end in 'aws4_request' and start with an access key id.",
        ));
    }
    let signed_headers: Vec<&str> = signed.split(';').filter(|h| !h.is_empty()).collect();
    if signed_headers.is_empty() || signature.is_empty() {
        return Err(incomplete("SignedHeaders and Signature must not be empty."));
    }
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// The header with its signature cut, for messages (a signature is no secret, but nothing is
/// gained by echoing it).
fn redact_signature(value: &str) -> String {
    match value.find("Signature=") {
        Some(at) => format!("{}Signature=...", &value[..at]),
        None => value.to_owned(),
    }
}

/// Seconds since the epoch of a SigV4 basic ISO 8601 time, `YYYYMMDDTHHMMSSZ`.
fn parse_amz_date(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, s) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y as i64, mo as i64, d as i64)? * 86_400 + h * 3600 + mi * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<u64> {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

/// `YYYYMMDDTHHMMSSZ` of seconds since the epoch.
pub fn format_amz_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The repositories a request body names: `repositoryName`, or DescribeRepositories'
/// `repositoryNames`. Other members are skipped unread.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Named {
    repository_name: Option<String>,
    repository_names: Option<Vec<String>>,
}

fn named_repositories(body: &[u8]) -> Option<Vec<String>> {
    let named: Named = serde_json::from_slice(body).ok()?;
    match (named.repository_name, named.repository_names) {
        (Some(one), _) => Some(vec![one]),
        (None, Some(many)) if !many.is_empty() => Some(many),
        _ => None,
    }
}

/// The payload of a registry password.
#[derive(Serialize, Deserialize)]
struct TokenPayload {
    /// The access key id.
    k: String,
    /// Expiry, seconds since the epoch.
    e: u64,
}

/// The secret a key's registry passwords are signed with: derived from the key's own secret, so
/// that deleting the key invalidates them and no second secret needs storing.
fn token_key(key: &KeyRecord) -> HmacSha256 {
    let mut derive = <HmacSha256 as KeyInit>::new_from_slice(key.secret_access_key.as_bytes())
        .expect("HMAC takes keys of any length");
    derive.update(b"ecr-layer-upload registry password v1");
    let derived = derive.finalize().into_bytes();
    <HmacSha256 as KeyInit>::new_from_slice(&derived).expect("HMAC takes keys of any length")
}

/// A key read from the store, or its absence, and when it was read.
struct Cached {
    key: Option<KeyRecord>,
    read_at: std::time::Instant,
}

/// Caches at most this many key ids (known or not); beyond it the cache starts over, so that a
/// flood of made-up ids costs store reads but never memory.
const CACHE_MAX: usize = 4096;

/// The request checker of `ECR_AUTH=sigv4`.
pub struct Auth {
    keys: Arc<dyn KeyStore>,
    region: String,
    registry_id: String,
    clock: Arc<dyn Clock>,
    cache_ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("region", &self.region)
            .field("registry_id", &self.registry_id)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Checks requests against `keys`, for region `region` and registry `registry_id`, reading a
    /// key again after `cache_ttl`.
    pub fn new(
        keys: Arc<dyn KeyStore>,
        region: impl Into<String>,
        registry_id: impl Into<String>,
        cache_ttl: Duration,
    ) -> Self {
        Auth {
            keys,
            region: region.into(),
            registry_id: registry_id.into(),
            clock: Arc::new(SystemClock),
            cache_ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The same with another clock (tests of skew and expiry).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    fn now_secs(&self) -> u64 {
        self.clock.now_ms() / 1000
    }

    /// The key with this id, from the cache if read within the cache's lifetime.
    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, AuthError> {
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(id)
                && c.read_at.elapsed() < self.cache_ttl
            {
                return Ok(c.key.clone());
            }
        }
        let key = self.keys.get_key(id).await.map_err(AuthError::Store)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            id.to_owned(),
            Cached {
                key: key.clone(),
                read_at: std::time::Instant::now(),
            },
        );
        Ok(key)
    }

    /// Verifies the request's signature and returns who signed it.
    pub async fn authenticate(&self, req: &Request<Bytes>) -> Result<Principal, AuthError> {
        let headers = req.headers();
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(AuthError::MissingToken);
        };
        let value = value
            .to_str()
            .map_err(|_| AuthError::Incomplete("The Authorization header is not ASCII.".into()))?;
        let auth = parse_authorization(value)?;
        let Some(amz_date) = headers.get("x-amz-date").and_then(|v| v.to_str().ok()) else {
            return Err(AuthError::Incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                    .into(),
            ));
        };
        let Some(signed_at) = parse_amz_date(amz_date) else {
            return Err(AuthError::Incomplete(format!(
                "Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601"
            )));
        };
        // Scope and date first: they need no key, and the answers match AWS's order.
        if auth.service != SERVICE {
            return Err(AuthError::InvalidSignature(format!(
                "Credential should be scoped to correct service: '{SERVICE}'. "
            )));
        }
        if auth.region != self.region {
            return Err(AuthError::InvalidSignature(format!(
                "Credential should be scoped to a valid region, not '{}'. ",
                auth.region
            )));
        }
        if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
            return Err(AuthError::InvalidSignature(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz_date}'.",
                auth.date,
                &amz_date[..8]
            )));
        }
        let now = self.now_secs();
        if signed_at + MAX_SKEW_SECS < now {
            return Err(AuthError::InvalidSignature(format!(
                "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
                format_amz_date(now - MAX_SKEW_SECS),
                format_amz_date(now)
            )));
        }
        if signed_at > now + MAX_SKEW_SECS {
            return Err(AuthError::InvalidSignature(format!(
                "Signature not yet current: {amz_date} is still later than {} ({} + 15 min.)",
                format_amz_date(now + MAX_SKEW_SECS),
                format_amz_date(now)
            )));
        }
        if !auth.signed_headers.contains(&"host") {
            return Err(AuthError::InvalidSignature(
                "'Host' must be a 'SignedHeader' in the AWS Authorization.".into(),
            ));
        }
        let Some(key) = self.key(auth.access_key_id).await? else {
            return Err(AuthError::UnrecognizedClient);
        };
        let expected = expected_signature(req, &auth, &key, &self.region, signed_at)?;
        if bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
            Ok(Principal::of(&key, &self.registry_id))
        } else {
            Err(AuthError::InvalidSignature(SIGNATURE_MISMATCH.into()))
        }
    }

    /// Whether `principal` may do `action` with this request body (whose repositories it reads),
    /// else the AccessDenied answer ECR gives.
    pub fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        body: &[u8],
    ) -> Result<(), AuthError> {
        let resource = |name: &str| {
            format!(
                "arn:aws:ecr:{}:{}:repository/{name}",
                self.region, self.registry_id
            )
        };
        let denied = |res: String| {
            let action = action.iam_name();
            AuthError::AccessDenied(format!(
                "User: {} is not authorized to perform: {action} on resource: {res} because no identity-based policy allows the {action} action",
                principal.arn()
            ))
        };
        if action.is_registry_wide() {
            return if principal.allows(action, None) {
                Ok(())
            } else {
                Err(denied("*".into()))
            };
        }
        // Only a key limited to some repositories needs the names; skip reading the body
        // otherwise.
        if principal.permission < action.needs() {
            let name = named_repositories(body)
                .and_then(|n| n.into_iter().next())
                .unwrap_or_else(|| "*".into());
            return Err(denied(resource(&name)));
        }
        if principal.repositories.is_empty() {
            return Ok(());
        }
        match named_repositories(body) {
            None => Err(denied(resource("*"))),
            Some(names) => match names.iter().find(|n| !principal.allows(action, Some(n))) {
                Some(n) => Err(denied(resource(n))),
                None => Ok(()),
            },
        }
    }

    /// A registry password for `principal`, valid [`REGISTRY_TOKEN_TTL_SECS`] from now, and its
    /// expiry (seconds since the epoch).
    pub async fn issue_registry_password(
        &self,
        principal: &Principal,
    ) -> Result<(String, u64), AuthError> {
        let Some(key) = self.key(&principal.access_key_id).await? else {
            return Err(AuthError::UnrecognizedClient);
        };
        let expires = self.now_secs() + REGISTRY_TOKEN_TTL_SECS;
        let payload = serde_json::to_vec(&TokenPayload {
            k: key.access_key_id.clone(),
            e: expires,
        })
        .map_err(|e| AuthError::Store(StoreError::backend("encode a registry password", e)))?;
        let payload = URL_SAFE_NO_PAD.encode(payload);
        let mut mac = token_key(&key);
        mac.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Ok((format!("{TOKEN_PREFIX}.{payload}.{sig}"), expires))
    }

    /// Who a registry password (as GetAuthorizationToken issued it) belongs to, if it is genuine,
    /// unexpired and its key still exists. For the OCI API's `docker login` (user `AWS`).
    pub async fn verify_registry_password(&self, password: &str) -> Result<Principal, AuthError> {
        let invalid = || AuthError::UnrecognizedClient;
        let mut parts = password.split('.');
        let (Some(TOKEN_PREFIX), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let decoded: TokenPayload = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(invalid)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| invalid())?;
        let Some(key) = self.key(&decoded.k).await? else {
            return Err(invalid());
        };
        let mut mac = token_key(&key);
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig).map_err(|_| invalid())?;
        if decoded.e <= self.now_secs() {
            return Err(AuthError::InvalidSignature(
                "The registry password has expired; get a new one with GetAuthorizationToken."
                    .into(),
            ));
        }
        Ok(Principal::of(&key, &self.registry_id))
    }
}

/// The signature the client should have sent: SigV4 over the request as it arrived, its signed
/// headers only, computed by `aws-sigv4` with the key's secret at the request's own time.
fn expected_signature(
    req: &Request<Bytes>,
    auth: &Authorization<'_>,
    key: &KeyRecord,
    region: &str,
    signed_at: u64,
) -> Result<String, AuthError> {
    let mismatch = || AuthError::InvalidSignature(SIGNATURE_MISMATCH.into());
    let body_len = req.body().len().to_string();
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(auth.signed_headers.len());
    for &name in &auth.signed_headers {
        // Added by the signer from the time given to it.
        if name == "x-amz-date" {
            continue;
        }
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            // A front door may drop Content-Length (Lambda hands the body alone); it is the body's.
            if name == "content-length" {
                headers.push((name, body_len.as_str()));
                continue;
            }
            return Err(mismatch());
        }
        for v in values {
            headers.push((name, v));
        }
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let body_hash = hex::encode(Sha256::digest(req.body()));
    let signable = SignableRequest::new(
        req.method().as_str(),
        path_and_query,
        headers.into_iter(),
        SignableBody::Precomputed(body_hash),
    )
    .map_err(|_| mismatch())?;
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Double;
    settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    settings.signature_location = SignatureLocation::Headers;
    settings.excluded_headers = Some(Vec::new());
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Enabled;
    settings.session_token_mode = SessionTokenMode::Include;
    let identity: Identity = Credentials::new(
        key.access_key_id.clone(),
        key.secret_access_key.clone(),
        None,
        None,
        "ecr-layer-upload",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(UNIX_EPOCH + Duration::from_secs(signed_at))
        .settings(settings)
        .build()
        .map_err(|_| mismatch())?
        .into();
    let out = sign(signable, &params).map_err(|_| mismatch())?;
    Ok(out.signature().to_owned())
}

/// A fresh access key id (`AKEL` + 16 upper-case letters and digits) and a secret of 40
/// base64url characters (240 bits), from the system's random source.
pub fn generate_key_pair() -> Result<(String, String), String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut id_bytes = [0u8; 16];
    let mut secret = [0u8; 30];
    getrandom::fill(&mut id_bytes).map_err(|e| format!("no random source: {e}"))?;
    getrandom::fill(&mut secret).map_err(|e| format!("no random source: {e}"))?;
    let id: String = id_bytes
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect();
    Ok((format!("AKEL{id}"), URL_SAFE_NO_PAD.encode(secret)))
}

/// Seconds since the epoch now (for `keys create`).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_globs() {
        assert!(pattern_matches("team/*", "team/app"));
        assert!(pattern_matches("team/*", "team/a/b"));
        assert!(!pattern_matches("team/*", "other/app"));
        assert!(!pattern_matches("team/*", "team"));
        assert!(pattern_matches("*", "x"));
        assert!(pattern_matches("a*c", "abbbc"));
        assert!(!pattern_matches("a*c", "abbbd"));
        assert!(pattern_matches("exact", "exact"));
        assert!(!pattern_matches("exact", "exact2"));
    }

    #[test]
    fn amz_dates_round_trip() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20261122T063000Z"), Some(1_795_329_000));
        assert_eq!(format_amz_date(1_795_329_000), "20261122T063000Z");
        assert_eq!(format_amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(parse_amz_date("2026-11-22T06:30:00Z"), None);
        assert_eq!(parse_amz_date("20261322T063000Z"), None);
    }

    #[test]
    fn authorization_headers_are_parsed_and_incomplete_ones_named() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AK/20261122/us-east-1/ecr/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
        )
        .unwrap();
        assert_eq!(a.access_key_id, "AK");
        assert_eq!(a.signed_headers, ["host", "x-amz-date"]);
        let e =
            parse_authorization("AWS4-HMAC-SHA256 Credential=AK/2026/us-east-1/ecr/aws4_request")
                .unwrap_err();
        assert_eq!(e.type_name(), "IncompleteSignatureException");
        assert!(e.message().contains("'Signature'"), "{}", e.message());
        assert!(parse_authorization("Basic abc").is_err());
    }
}

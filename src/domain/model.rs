//! ECR's model values as types that can only hold valid values.
//!
//! Each value is parsed once, where a request arrives (the protocol, src/protocols/ecr/wire.rs),
//! by a constructor that answers the modelled `InvalidParameterException` with ECR's own wording
//! (`Invalid parameter at '<member>' failed to satisfy constraint: '...'`). Past that edge the
//! service works with these types and never looks at a request string again. Closed sets of the
//! model are enums that display and (de)serialize as their wire strings, so records keep the same
//! stored form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::EcrError;
use super::validate::{self, invalid};

/// A newtype over a validated string: `parse(member, text)`, `as_str`, `Display`, `FromStr`
/// (with the member name ECR uses most for it), comparisons with `str`.
macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $member:literal, $check:path) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// `text` if it satisfies the model's constraint, else the modelled error naming
            /// `member`.
            pub fn parse(member: &str, text: &str) -> Result<Self, EcrError> {
                $check(member, text)?;
                Ok(Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = EcrError;
            fn from_str(s: &str) -> Result<Self, EcrError> {
                Self::parse($member, s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

validated_string!(
    /// A registry (account) id: `[0-9]{12}`.
    ///
    /// good: `123456789012`; bad: `12345678901`, `1234567890123`, `12345678901a`, ``
    RegistryId,
    "registryId",
    validate::registry_id
);

validated_string!(
    /// A repository name of the current model: length 2..=256 and
    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
    ///
    /// good: `ab`, `a/b`, `project-a/nginx-web-app`, `a__b`, `a---b`, `a.b_c-d/e`
    /// bad: `a`, `A`, `-a`, `a-`, `a//b`, `/a`, `a/`, `a___b`, `a._b`, `a b`, `a..b`
    RepositoryName,
    "repositoryName",
    validate::repository_name
);

validated_string!(
    /// An upload id: a UUID in either case, kept as sent (ids are compared as strings).
    ///
    /// good: `3f2504e0-4f89-11d3-9a0c-0305e82c3301`, `3F2504E0-4F89-11D3-9A0C-0305E82C3301`
    /// bad: ``, `3f2504e0`, `3f2504e0-4f89-11d3-9a0c-0305e82c330`, `g f`
    UploadId,
    "uploadId",
    validate::upload_id
);

validated_string!(
    /// An image tag: 1..=300 characters, kept exactly as sent.
    ///
    /// good: `v1`, `latest`, `x` repeated 300 times; bad: ``, `x` repeated 301 times
    ImageTag,
    "imageTag",
    image_tag
);

fn image_tag(member: &str, s: &str) -> Result<(), EcrError> {
    validate::check_len(member, s.chars().count(), 1, 300)
}

impl UploadId {
    /// A fresh upload id (a random UUID, lower case).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

/// The algorithm of a [`Digest`], compared exactly: OCI digest algorithms are case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// `sha256`, the only algorithm the service computes and verifies.
    Sha256,
    /// Any other algorithm the model's pattern admits, as sent (`sha512`, and also `SHA256`,
    /// which is not `sha256`).
    Other(String),
}

impl Algorithm {
    fn parse(s: &str) -> Self {
        match s {
            "sha256" => Algorithm::Sha256,
            other => Algorithm::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Other(s) => s,
        }
    }
}

/// A content digest `algorithm:hex` of the model's pattern `[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+`.
///
/// `sha256` hex is held in lower case, as registries compute it, so that an upper-case `sha256`
/// digest names the same layer; other algorithms keep their hex as sent. Equality is exact on
/// the algorithm: `SHA256:<hex>` is another algorithm than `sha256:<hex>`, so it is neither
/// the key of a layer nor a digest CompleteLayerUpload can verify; a digest list without an
/// exact `sha256` one is refused there (see [`Digest::is_sha256`]).
///
/// good: `sha256:ab12`, `sha512:FF`, `a.b+c_d-e:0`; bad: `sha256:`, `:ab`, `sha256:xyz`,
/// `sha256`, ``
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// `text` as a digest, else the modelled pattern error naming `member`.
    pub fn parse(member: &str, text: &str) -> Result<Self, EcrError> {
        Self::try_parse(text).ok_or_else(|| {
            invalid(
                member,
                format_args!(
                    "must satisfy regular expression pattern: {}",
                    validate::LAYER_DIGEST_PATTERN
                ),
            )
        })
    }

    /// `text` as a digest, if it satisfies the model's pattern.
    pub fn try_parse(text: &str) -> Option<Self> {
        if !validate::is_layer_digest(text) {
            return None;
        }
        let (alg, hex) = text.split_once(':')?;
        let algorithm = Algorithm::parse(alg);
        let hex = match algorithm {
            Algorithm::Sha256 => hex.to_ascii_lowercase(),
            Algorithm::Other(_) => hex.to_owned(),
        };
        Some(Digest { algorithm, hex })
    }

    /// The `sha256` digest whose hash is `hash` (the bytes of a finished sha256).
    pub fn sha256(hash: &[u8]) -> Self {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(hash),
        }
    }

    pub fn algorithm(&self) -> &Algorithm {
        &self.algorithm
    }

    /// The hex part: lower case for `sha256`, as sent otherwise.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Whether this is a `sha256` digest (exactly that algorithm name), the kind
    /// CompleteLayerUpload verifies against the bytes.
    pub fn is_sha256(&self) -> bool {
        self.algorithm == Algorithm::Sha256
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = EcrError;
    fn from_str(s: &str) -> Result<Self, EcrError> {
        Self::parse("layerDigest", s)
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        other
            .split_once(':')
            .is_some_and(|(a, h)| a == self.algorithm.as_str() && h == self.hex)
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        self == other.as_str()
    }
}

/// A value as the client sent it, beside what it parsed to: answers and messages that echo a
/// member echo `text`, the service works with `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent<T> {
    pub text: String,
    pub value: T,
}

impl<T: fmt::Display> From<T> for Sent<T> {
    /// A value sent in its canonical form.
    fn from(value: T) -> Self {
        Sent {
            text: value.to_string(),
            value,
        }
    }
}

/// An image of a repository by digest, by tag, or by both (which must then agree): the model's
/// `ImageIdentifier` once it is known to name something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageId {
    digest: Option<Digest>,
    tag: Option<ImageTag>,
}

impl ImageId {
    pub fn by_digest(digest: Digest) -> Self {
        ImageId {
            digest: Some(digest),
            tag: None,
        }
    }

    pub fn by_tag(tag: ImageTag) -> Self {
        ImageId {
            digest: None,
            tag: Some(tag),
        }
    }

    pub fn by_both(digest: Digest, tag: ImageTag) -> Self {
        ImageId {
            digest: Some(digest),
            tag: Some(tag),
        }
    }

    /// An identifier's members as sent, or the failure code BatchGetImage and BatchDeleteImage
    /// answer for it (checked in ECR's order: presence, digest, tag).
    ///
    /// good: (`sha256:ab`, none), (none, `v1`), (`sha256:ab`, `v1`);
    /// bad: (none, none) `MissingDigestAndTag`, (`sha256`, `v1`) `InvalidImageDigest`,
    /// (none, ``) `InvalidImageTag`
    pub fn parse(digest: Option<&str>, tag: Option<&str>) -> Result<Self, ImageFailureCode> {
        if digest.is_none() && tag.is_none() {
            return Err(ImageFailureCode::MissingDigestAndTag);
        }
        let digest = digest
            .map(|d| Digest::try_parse(d).ok_or(ImageFailureCode::InvalidImageDigest))
            .transpose()?;
        let tag = tag
            .map(|t| ImageTag::parse("imageTag", t).map_err(|_| ImageFailureCode::InvalidImageTag))
            .transpose()?;
        Ok(ImageId { digest, tag })
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    pub fn tag(&self) -> Option<&ImageTag> {
        self.tag.as_ref()
    }
}

/// One page of a listing: at most `max_results` entries after the key `after` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub max_results: usize,
    pub after: Option<PageToken>,
}

impl Page {
    /// `maxResults` (1..=1000, `default` when absent), then `nextToken`, as ECR checks them.
    ///
    /// good: (none, none), (1, none), (1000, a token); bad: 0, 1001, a token not from us
    pub fn parse(
        max_results: Option<i64>,
        next_token: Option<&str>,
        default: usize,
    ) -> Result<Self, EcrError> {
        let max = max_results.unwrap_or(default as i64);
        if max < 1 {
            return Err(invalid(
                "maxResults",
                "must have value greater than or equal to 1",
            ));
        }
        if max > 1000 {
            return Err(invalid(
                "maxResults",
                "must have value less than or equal to 1000",
            ));
        }
        Ok(Page {
            max_results: max as usize,
            after: next_token
                .map(|t| PageToken::parse("nextToken", t))
                .transpose()?,
        })
    }

    /// The first page of `max_results` entries.
    pub fn first(max_results: usize) -> Self {
        Page {
            max_results,
            after: None,
        }
    }
}

/// A `nextToken`: opaque to clients, the sort key of the last entry of the page before (hex on
/// the wire).
///
/// good: `6162` (the key `ab`); bad: `xyz`, `ff` (not UTF-8)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken(String);

impl PageToken {
    pub fn parse(member: &str, token: &str) -> Result<Self, EcrError> {
        hex::decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(PageToken)
            .ok_or_else(|| invalid(member, "must be a token from an earlier response"))
    }

    /// The token that continues after `key`.
    pub fn after(key: &str) -> Self {
        PageToken(key.to_owned())
    }

    /// The sort key the next page continues after.
    pub fn key(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PageToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

/// A closed set of the model: an enum whose values display, serialize and parse as their wire
/// strings (`ALL` lists them in the model's order, as the enum error message does), with the
/// value an absent member takes as its `Default` where the model has one.
macro_rules! closed_set {
    ($(#[$meta:meta])* $name:ident default $default:ident { $($body:tt)* }) => {
        closed_set!($(#[$meta])* $name { $($body)* });

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }
    };
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }

            /// The value whose wire string is `s`, if any.
            pub fn from_wire(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// `s` as a value of the set, else the modelled enum error naming `member`.
            pub fn parse(member: &str, s: &str) -> Result<Self, EcrError> {
                Self::from_wire(s).ok_or_else(|| {
                    let all: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    invalid(
                        member,
                        format_args!("Member must satisfy enum value set: [{}]", all.join(", ")),
                    )
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

closed_set!(
    /// `layerAvailability` of BatchCheckLayerAvailability.
    LayerAvailability {
        Available = "AVAILABLE",
        Unavailable = "UNAVAILABLE",
    }
);

closed_set!(
    /// `failureCode` of a BatchCheckLayerAvailability failure.
    LayerFailureCode {
        InvalidLayerDigest = "InvalidLayerDigest",
        MissingLayerDigest = "MissingLayerDigest",
    }
);

impl LayerFailureCode {
    /// The `failureReason` ECR gives with the code.
    pub fn reason(self) -> &'static str {
        match self {
            LayerFailureCode::InvalidLayerDigest => "Invalid layer digest",
            LayerFailureCode::MissingLayerDigest => "The layer digest is missing",
        }
    }
}

closed_set!(
    /// `failureCode` of a BatchGetImage or BatchDeleteImage failure: the codes this service
    /// answers (the model also has KMS and pull-through cache codes, which do not arise here).
    ImageFailureCode {
        InvalidImageDigest = "InvalidImageDigest",
        InvalidImageTag = "InvalidImageTag",
        ImageTagDoesNotMatchDigest = "ImageTagDoesNotMatchDigest",
        ImageNotFound = "ImageNotFound",
        MissingDigestAndTag = "MissingDigestAndTag",
        ImageReferencedByManifestList = "ImageReferencedByManifestList",
    }
);

impl ImageFailureCode {
    /// The `failureReason` ECR gives with the code.
    pub fn reason(self) -> &'static str {
        match self {
            ImageFailureCode::InvalidImageDigest => {
                "Invalid request parameters: image digest should satisfy the regex '[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+'"
            }
            ImageFailureCode::InvalidImageTag => {
                "Invalid request parameters: image tag should have a length between 1 and 300"
            }
            ImageFailureCode::ImageTagDoesNotMatchDigest => {
                "Invalid request parameters: given tag and digest do not point to the same image"
            }
            ImageFailureCode::ImageNotFound => "Requested image not found",
            ImageFailureCode::MissingDigestAndTag => {
                "Invalid request parameters: both tag and digest cannot be null"
            }
            ImageFailureCode::ImageReferencedByManifestList => {
                "Requested image is referenced by an image index in the repository"
            }
        }
    }
}

closed_set!(
    /// `imageTagMutability` of a repository. Default `MUTABLE`.
    TagMutability default Mutable {
        Mutable = "MUTABLE",
        Immutable = "IMMUTABLE",
        MutableWithExclusion = "MUTABLE_WITH_EXCLUSION",
        ImmutableWithExclusion = "IMMUTABLE_WITH_EXCLUSION",
    }
);

impl TagMutability {
    /// Whether a tag, once it names an image, cannot be moved.
    pub fn is_immutable(self) -> bool {
        matches!(
            self,
            TagMutability::Immutable | TagMutability::ImmutableWithExclusion
        )
    }
}

closed_set!(
    /// `encryptionType` of a repository. Default `AES256`.
    EncryptionType default Aes256 {
        Aes256 = "AES256",
        Kms = "KMS",
        KmsDsse = "KMS_DSSE",
    }
);

closed_set!(
    /// `filter.tagStatus` of ListImages and DescribeImages: which images a listing keeps.
    TagStatus default Any {
        Tagged = "TAGGED",
        Untagged = "UNTAGGED",
        Any = "ANY",
    }
);

impl TagStatus {
    /// Whether an image with (`tagged`) or without tags is listed.
    pub fn keeps(self, tagged: bool) -> bool {
        match self {
            TagStatus::Any => true,
            TagStatus::Tagged => tagged,
            TagStatus::Untagged => !tagged,
        }
    }
}

closed_set!(
    /// `filter.imageStatus` of ListImages and DescribeImages.
    ImageStatusFilter default Any {
        Active = "ACTIVE",
        Archived = "ARCHIVED",
        Activating = "ACTIVATING",
        Any = "ANY",
    }
);

impl ImageStatusFilter {
    /// Whether the filter keeps `ACTIVE` images (every image here is active: nothing is
    /// archived).
    pub fn keeps_active(self) -> bool {
        matches!(self, ImageStatusFilter::Active | ImageStatusFilter::Any)
    }
}

closed_set!(
    /// `imageStatus` of an image detail.
    ImageStatus {
        Active = "ACTIVE",
        Archived = "ARCHIVED",
        Activating = "ACTIVATING",
    }
);

/// Whether a manifest media type names an image manifest or an index of manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest: config and layers are blobs.
    Manifest,
    /// An index (manifest list): its entries are manifests.
    Index,
}

closed_set!(
    /// The manifest media types PutImage accepts and images are stored with.
    ManifestMediaType {
        OciManifest = "application/vnd.oci.image.manifest.v1+json",
        OciIndex = "application/vnd.oci.image.index.v1+json",
        DockerManifest = "application/vnd.docker.distribution.manifest.v2+json",
        DockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json",
    }
);

impl ManifestMediaType {
    pub fn kind(self) -> ManifestKind {
        match self {
            ManifestMediaType::OciManifest | ManifestMediaType::DockerManifest => {
                ManifestKind::Manifest
            }
            ManifestMediaType::OciIndex | ManifestMediaType::DockerManifestList => {
                ManifestKind::Index
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_parse_with_ecrs_messages() {
        assert_eq!(
            RegistryId::parse("registryId", "123456789012")
                .unwrap()
                .as_str(),
            "123456789012"
        );
        for bad in ["12345678901", "1234567890123", "12345678901a", ""] {
            assert_eq!(
                RegistryId::parse("registryId", bad).unwrap_err().message(),
                "Invalid parameter at 'registryId' failed to satisfy constraint: 'must satisfy regular expression pattern: [0-9]{12}'"
            );
        }
        for good in ["ab", "a/b", "project-a/nginx-web-app", "a__b", "a---b"] {
            assert_eq!(good.parse::<RepositoryName>().unwrap(), good);
        }
        for bad in ["A1", "-a", "a//b", "a___b"] {
            assert!(bad.parse::<RepositoryName>().is_err(), "{bad}");
        }
        assert_eq!(
            RepositoryName::parse("repositoryNames.member", "a")
                .unwrap_err()
                .message(),
            "Invalid parameter at 'repositoryNames.member' failed to satisfy constraint: 'must have length greater than or equal to 2'"
        );
        assert!(
            "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
                .parse::<UploadId>()
                .is_ok()
        );
        assert_eq!(
            "not-a-uuid".parse::<UploadId>().unwrap_err().message(),
            "Invalid parameter at 'uploadId' failed to satisfy constraint: 'must satisfy regular expression pattern: [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}'"
        );
        assert!(UploadId::random().as_str().parse::<UploadId>().is_ok());
        assert!(ImageTag::parse("imageTag", &"x".repeat(300)).is_ok());
        assert_eq!(
            ImageTag::parse("imageTag", &"x".repeat(301))
                .unwrap_err()
                .message(),
            "Invalid parameter at 'imageTag' failed to satisfy constraint: 'must have length less than or equal to 300'"
        );
        assert!(ImageTag::parse("imageTag", "").is_err());
    }

    #[test]
    fn digests_keep_the_algorithm_exactly_and_sha256_hex_in_lower_case() {
        let upper = Digest::parse("layerDigest", "sha256:ABCD").unwrap();
        assert_eq!(upper.to_string(), "sha256:abcd");
        assert!(upper.is_sha256());
        assert_eq!(upper, Digest::sha256(&[0xab, 0xcd]));
        let other = Digest::parse("layerDigest", "sha512:FF").unwrap();
        assert_eq!(other.to_string(), "sha512:FF");
        assert!(!other.is_sha256());
        // `SHA256` is another algorithm than `sha256`, hex and all kept as sent.
        let shouting = Digest::parse("layerDigest", "SHA256:ABCD").unwrap();
        assert_eq!(shouting.to_string(), "SHA256:ABCD");
        assert!(!shouting.is_sha256());
        assert_ne!(shouting, upper);
        assert!(Digest::try_parse("a.b+c_d-e:0").is_some());
        for bad in ["sha256:", ":ab", "sha256:xyz", "sha256", ""] {
            assert_eq!(
                Digest::parse("layerDigests.member", bad)
                    .unwrap_err()
                    .message(),
                "Invalid parameter at 'layerDigests.member' failed to satisfy constraint: 'must satisfy regular expression pattern: [a-zA-Z0-9-_+.]+:[a-fA-F0-9]+'",
                "{bad}"
            );
        }
    }

    #[test]
    fn image_ids_fail_with_ecrs_codes_in_ecrs_order() {
        let d = "sha256:ab";
        assert!(ImageId::parse(Some(d), None).is_ok());
        assert!(ImageId::parse(None, Some("v1")).is_ok());
        let both = ImageId::parse(Some(d), Some("v1")).unwrap();
        assert_eq!(both.digest().unwrap(), d);
        assert_eq!(both.tag().unwrap(), "v1");
        assert_eq!(
            ImageId::parse(None, None),
            Err(ImageFailureCode::MissingDigestAndTag)
        );
        assert_eq!(
            ImageId::parse(Some("sha256"), Some("")),
            Err(ImageFailureCode::InvalidImageDigest)
        );
        assert_eq!(
            ImageId::parse(None, Some("")),
            Err(ImageFailureCode::InvalidImageTag)
        );
    }

    #[test]
    fn closed_sets_are_their_wire_strings() {
        assert_eq!(TagMutability::Immutable.to_string(), "IMMUTABLE");
        assert!(TagMutability::ImmutableWithExclusion.is_immutable());
        assert!(!TagMutability::MutableWithExclusion.is_immutable());
        assert_eq!(
            TagMutability::parse("imageTagMutability", "mutable")
                .unwrap_err()
                .message(),
            "Invalid parameter at 'imageTagMutability' failed to satisfy constraint: 'Member must satisfy enum value set: [MUTABLE, IMMUTABLE, MUTABLE_WITH_EXCLUSION, IMMUTABLE_WITH_EXCLUSION]'"
        );
        assert_eq!(
            EncryptionType::parse("encryptionConfiguration.encryptionType", "KMS").unwrap(),
            EncryptionType::Kms
        );
        assert_eq!(
            TagStatus::parse("filter.tagStatus", "tagged")
                .unwrap_err()
                .message(),
            "Invalid parameter at 'filter.tagStatus' failed to satisfy constraint: 'Member must satisfy enum value set: [TAGGED, UNTAGGED, ANY]'"
        );
        assert_eq!(
            ImageStatusFilter::parse("filter.imageStatus", "X")
                .unwrap_err()
                .message(),
            "Invalid parameter at 'filter.imageStatus' failed to satisfy constraint: 'Member must satisfy enum value set: [ACTIVE, ARCHIVED, ACTIVATING, ANY]'"
        );
        assert_eq!(
            serde_json::to_string(&EncryptionType::KmsDsse).unwrap(),
            r#""KMS_DSSE""#
        );
        assert_eq!(
            serde_json::from_str::<TagMutability>(r#""IMMUTABLE""#).unwrap(),
            TagMutability::Immutable
        );
        assert_eq!(
            ManifestMediaType::from_wire("application/vnd.oci.image.index.v1+json")
                .map(ManifestMediaType::kind),
            Some(ManifestKind::Index)
        );
        assert_eq!(LayerAvailability::Available, "AVAILABLE");
        assert_eq!(ImageFailureCode::ImageNotFound.as_str(), "ImageNotFound");
    }

    #[test]
    fn pages_check_size_then_token() {
        assert_eq!(Page::parse(None, None, 100).unwrap(), Page::first(100));
        assert_eq!(
            Page::parse(Some(0), Some("zz"), 100).unwrap_err().message(),
            "Invalid parameter at 'maxResults' failed to satisfy constraint: 'must have value greater than or equal to 1'"
        );
        assert!(Page::parse(Some(1001), None, 100).is_err());
        assert_eq!(
            Page::parse(Some(5), Some("zz"), 100).unwrap_err().message(),
            "Invalid parameter at 'nextToken' failed to satisfy constraint: 'must be a token from an earlier response'"
        );
        let token = PageToken::after("ab");
        assert_eq!(token.to_string(), "6162");
        assert_eq!(PageToken::parse("nextToken", "6162").unwrap(), token);
    }
}

//! Image manifests as PutImage receives them: OCI and Docker v2 manifests and indexes.
//!
//! Parsed once, at the edge of PutImage, into the few facts the service needs: the media type,
//! the blobs a manifest references (config and layers), the manifests an index references, and
//! the `subject`. The manifest text itself is kept exactly as sent: its digest is the sha256 of
//! those bytes, and clients verify that.

use serde::Deserialize;

use super::error::EcrError;
use super::model::{Digest, ManifestMediaType};
use super::validate as domain;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 (signed or not): retired by Docker, not accepted here.
const DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Most descriptors one manifest may reference. Docker caps images at 127 layers; this bound keeps
/// an image record far below DynamoDB's 400 KB item limit.
pub const MAX_REFERENCES: usize = 1000;

pub use super::model::ManifestKind as Kind;

/// A content descriptor: what a manifest says about one thing it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: Option<String>,
    pub digest: Digest,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub media_type: ManifestMediaType,
    pub kind: Kind,
    pub config: Option<Descriptor>,
    /// Layers the registry must hold (foreign and non-distributable layers are left out: clients
    /// fetch those from their `urls`, registries never store them).
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Digest>,
    /// `artifactType`, or else the config's media type.
    pub artifact_media_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
    urls: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
}

fn bad(rule: impl std::fmt::Display) -> EcrError {
    domain::invalid("imageManifest", rule)
}

fn descriptor(raw: RawDescriptor, at: &str) -> Result<Descriptor, EcrError> {
    let digest = raw
        .digest
        .ok_or_else(|| bad(format_args!("{at} has no digest")))?;
    let Some(parsed) = Digest::try_parse(&digest) else {
        return Err(bad(format_args!("{at} has an invalid digest '{digest}'")));
    };
    let size = raw
        .size
        .and_then(|s| u64::try_from(s).ok())
        .ok_or_else(|| bad(format_args!("{at} needs a size of 0 or more")))?;
    Ok(Descriptor {
        media_type: raw.media_type,
        digest: parsed,
        size,
    })
}

/// Foreign (Windows base) and non-distributable layers live outside registries.
fn is_external(raw: &RawDescriptor) -> bool {
    raw.media_type
        .as_deref()
        .is_some_and(|m| m.contains(".foreign.") || m.contains("nondistributable"))
        || raw.urls.as_ref().is_some_and(|u| !u.is_empty())
}

/// Parses `text`. `declared` is PutImage's `imageManifestMediaType`, if given.
pub fn parse(text: &str, declared: Option<&str>) -> Result<Manifest, EcrError> {
    let raw: RawManifest = serde_json::from_str(text)
        .map_err(|_| domain::invalid("ImageManifest", "Invalid JSON syntax"))?;
    let media_type = match (declared, raw.media_type.as_deref()) {
        (Some(d), Some(m)) if d != m => {
            return Err(domain::invalid(
                "imageManifestMediaType",
                format_args!("must equal the manifest's mediaType '{m}'"),
            ));
        }
        (Some(d), _) => d.to_string(),
        (None, Some(m)) => m.to_string(),
        // OCI makes `mediaType` optional: what the document holds tells the kind.
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    if DOCKER_SCHEMA1.contains(&media_type.as_str()) || raw.schema_version == Some(1) {
        return Err(bad(
            "Docker image manifest schema 1 is not supported; push a schema 2 or OCI manifest",
        ));
    }
    let Some(media_type) = ManifestMediaType::from_wire(&media_type) else {
        return Err(domain::invalid(
            "imageManifestMediaType",
            format_args!(
                "must be one of {OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}; not '{media_type}'"
            ),
        ));
    };
    let kind = media_type.kind();
    if raw.schema_version != Some(2) {
        return Err(bad("schemaVersion must be 2"));
    }
    let subject = raw
        .subject
        .map(|s| descriptor(s, "subject"))
        .transpose()?
        .map(|d| d.digest);
    let mut out = Manifest {
        media_type,
        kind,
        config: None,
        layers: Vec::new(),
        manifests: Vec::new(),
        subject,
        artifact_media_type: None,
    };
    match kind {
        Kind::Manifest => {
            if raw.manifests.is_some() {
                return Err(bad("an image manifest has no 'manifests'"));
            }
            let config = raw
                .config
                .ok_or_else(|| bad("an image manifest needs a config descriptor"))?;
            let config = descriptor(config, "config")?;
            let layers = raw.layers.unwrap_or_default();
            if layers.len() + 1 > MAX_REFERENCES {
                return Err(EcrError::LimitExceeded(format!(
                    "The manifest references {} blobs; at most {MAX_REFERENCES} are allowed",
                    layers.len() + 1
                )));
            }
            for (i, layer) in layers.into_iter().enumerate() {
                if !is_external(&layer) {
                    out.layers.push(descriptor(layer, &format!("layers[{i}]"))?);
                }
            }
            out.artifact_media_type = raw.artifact_type.or_else(|| config.media_type.clone());
            out.config = Some(config);
        }
        Kind::Index => {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(bad("an image index has no config or layers"));
            }
            let manifests = raw
                .manifests
                .ok_or_else(|| bad("an image index needs a 'manifests' list"))?;
            if manifests.len() > MAX_REFERENCES {
                return Err(EcrError::LimitExceeded(format!(
                    "The index references {} manifests; at most {MAX_REFERENCES} are allowed",
                    manifests.len()
                )));
            }
            for (i, m) in manifests.into_iter().enumerate() {
                out.manifests
                    .push(descriptor(m, &format!("manifests[{i}]"))?);
            }
            out.artifact_media_type = raw.artifact_type;
        }
    }
    Ok(out)
}

impl Manifest {
    /// The blobs the repository must hold: the config, then the layers, without repeats.
    pub fn blobs(&self) -> Vec<&Descriptor> {
        let mut seen = std::collections::HashSet::new();
        self.config
            .iter()
            .chain(self.layers.iter())
            .filter(|d| seen.insert(&d.digest))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn oci_manifest(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,{extra}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":7}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":9}}]}}"#
        )
    }

    #[test]
    fn oci_manifest_without_media_type_is_recognised() {
        let m = parse(&oci_manifest(""), None).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!(m.kind, Kind::Manifest);
        assert_eq!(m.config.as_ref().unwrap().digest, D1);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(
            m.artifact_media_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let blobs: Vec<String> = m.blobs().iter().map(|d| d.digest.to_string()).collect();
        assert_eq!(blobs, [D1, D2]);
    }

    #[test]
    fn docker_manifest_media_type_comes_from_the_document() {
        let text = oci_manifest(&format!(r#""mediaType":"{DOCKER_MANIFEST}","#));
        assert_eq!(parse(&text, None).unwrap().media_type, DOCKER_MANIFEST);
        assert_eq!(
            parse(&text, Some(DOCKER_MANIFEST)).unwrap().media_type,
            DOCKER_MANIFEST
        );
        let err = parse(&text, Some(OCI_MANIFEST)).unwrap_err();
        assert_eq!(err.type_name(), "InvalidParameterException");
    }

    #[test]
    fn index_lists_its_manifests() {
        let text = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":100,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        let m = parse(&text, None).unwrap();
        assert_eq!(m.media_type, OCI_INDEX);
        assert_eq!(m.kind, Kind::Index);
        assert_eq!(m.manifests[0].digest, D1);
        assert!(m.blobs().is_empty());
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"{D1}","size":7}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D2}","size":9,"urls":["https://example.com/x"]}}]}}"#
        );
        assert!(parse(&text, None).unwrap().layers.is_empty());
    }

    #[test]
    fn malformed_manifests_are_invalid_parameters() {
        let cases = [
            "not json".to_string(),
            "[1,2]".to_string(),
            r#"{"schemaVersion":1,"fsLayers":[]}"#.to_string(),
            format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{D2}","size":1}}]}}"#),
            r#"{"schemaVersion":2,"config":{"digest":"sha256:zz","size":1}}"#.to_string(),
            format!(r#"{{"schemaVersion":2,"config":{{"digest":"{D1}","size":-1}}}}"#),
            format!(r#"{{"schemaVersion":3,"config":{{"digest":"{D1}","size":1}}}}"#),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"text/plain","config":{{"digest":"{D1}","size":1}}}}"#
            ),
        ];
        for text in cases {
            let err = parse(&text, None).unwrap_err();
            assert_eq!(err.type_name(), "InvalidParameterException", "{text}");
        }
        assert_eq!(
            parse("{", None).unwrap_err().message(),
            "Invalid parameter at 'ImageManifest' failed to satisfy constraint: 'Invalid JSON syntax'"
        );
    }

    #[test]
    fn too_many_references_is_a_limit() {
        let layers: Vec<String> = (0..MAX_REFERENCES)
            .map(|_| format!(r#"{{"digest":"{D2}","size":1}}"#))
            .collect();
        let text = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{D1}","size":1}},"layers":[{}]}}"#,
            layers.join(",")
        );
        assert_eq!(
            parse(&text, None).unwrap_err().type_name(),
            "LimitExceededException"
        );
    }
}

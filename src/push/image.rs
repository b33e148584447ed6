//! What to push, worked out from the input before any request: the manifests in push order
//! (children of an index before the index), each with the blobs it references.

use std::collections::HashSet;
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::source::{Region, Source};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One blob (config or layer) and where its bytes are.
#[derive(Debug, Clone)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
    pub region: Region,
}

/// One PutImage: the manifest bytes exactly as they will be stored.
#[derive(Debug, Clone)]
pub struct ManifestPush {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: String,
    /// Only the image the user named is tagged; an index's children are pushed by digest.
    pub tag: Option<String>,
    pub blobs: Vec<BlobRef>,
}

#[derive(Debug)]
pub struct Plan {
    pub manifests: Vec<ManifestPush>,
}

impl Plan {
    /// The image the user asked for (pushed last).
    pub fn top(&self) -> &ManifestPush {
        self.manifests
            .last()
            .expect("a plan has at least one manifest")
    }

    /// Every distinct blob, in first-use order.
    pub fn blobs(&self) -> Vec<BlobRef> {
        let mut seen = HashSet::new();
        self.manifests
            .iter()
            .flat_map(|m| m.blobs.iter())
            .filter(|b| seen.insert(b.digest.clone()))
            .cloned()
            .collect()
    }
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: Option<std::collections::HashMap<String, String>>,
}

impl Descriptor {
    fn ref_name(&self) -> Option<&str> {
        self.annotations.as_ref()?.get(REF_NAME).map(String::as_str)
    }

    /// The tag a `ref.name` names: the name itself (`v1`, as skopeo and Docker write it), or the
    /// tag part of a full reference (`localhost/app:v1`, as podman writes it).
    fn ref_tag(&self) -> Option<&str> {
        let name = self.ref_name()?;
        Some(match name.rsplit_once(':') {
            Some((_, tag)) if !tag.contains('/') => tag,
            _ => name,
        })
    }
}

#[derive(Debug, Deserialize)]
struct IndexJson {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Builds the plan for an OCI layout (directory or tar) or a legacy `docker save` tar.
pub fn plan(source: &Source, tag: Option<&str>) -> Result<Plan, String> {
    if source.has("index.json")? {
        plan_oci(source, tag)
    } else if source.has("manifest.json")? {
        plan_docker_save(source, tag)
    } else {
        Err(format!(
            "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            source.describe()
        ))
    }
}

/// `sha256:<64 lower hex>` → the layout's blob path.
fn blob_path(digest: &str) -> Result<String, String> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| format!("malformed digest {digest:?}"))?;
    if alg != "sha256" {
        return Err(format!(
            "digest {digest}: only sha256 blobs can be pushed to ECR"
        ));
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("malformed digest {digest:?}"));
    }
    Ok(format!("blobs/sha256/{hex}"))
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What `--tag` defaults to when an annotation or `RepoTags` names one: only a valid tag.
fn usable_tag(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    ok.then(|| name.to_string())
}

fn plan_oci(source: &Source, tag: Option<&str>) -> Result<Plan, String> {
    let raw = source.read_small("index.json")?.unwrap_or_default();
    let index: IndexJson =
        serde_json::from_slice(&raw).map_err(|e| format!("index.json is not valid: {e}"))?;
    let entries = index.manifests.unwrap_or_default();
    let chosen = match entries.len() {
        0 => return Err("index.json lists no manifests".into()),
        1 => &entries[0],
        _ => {
            let found = tag.and_then(|t| {
                (entries.iter().find(|d| d.ref_name() == Some(t)))
                    .or_else(|| entries.iter().find(|d| d.ref_tag() == Some(t)))
            });
            match found {
                Some(d) => d,
                None => {
                    let names: Vec<&str> = entries
                        .iter()
                        .map(|d| d.ref_name().unwrap_or("(unnamed)"))
                        .collect();
                    let why = match tag {
                        Some(t) => format!("none is named {t:?}"),
                        None => "pass --tag to choose one".to_string(),
                    };
                    return Err(format!(
                        "index.json lists {} images ({}); {why}",
                        entries.len(),
                        names.join(", ")
                    ));
                }
            }
        }
    };
    let tag = tag
        .map(str::to_string)
        .or_else(|| chosen.ref_tag().and_then(usable_tag));
    let mut plan = Plan {
        manifests: Vec::new(),
    };
    let mut seen = HashSet::new();
    expand(source, chosen, tag, &mut plan, &mut seen, 0)?;
    Ok(plan)
}

fn read_manifest(source: &Source, d: &Descriptor) -> Result<Vec<u8>, String> {
    let path = blob_path(&d.digest)?;
    let bytes = source
        .read_small(&path)?
        .ok_or_else(|| format!("manifest {} is missing from the layout", d.digest))?;
    if bytes.len() as u64 != d.size {
        return Err(format!(
            "corrupt layout: manifest {} is {} bytes, its descriptor says {}",
            d.digest,
            bytes.len(),
            d.size
        ));
    }
    let actual = sha256_digest(&bytes);
    if actual != d.digest {
        return Err(format!(
            "corrupt layout: manifest {} has digest {actual}",
            d.digest
        ));
    }
    Ok(bytes)
}

fn blob_ref(source: &Source, d: &Descriptor, owner: &str) -> Result<BlobRef, String> {
    let path = blob_path(&d.digest)?;
    let region = source.region(&path)?.ok_or_else(|| {
        format!(
            "blob {} (referenced by {owner}) is missing from the layout",
            d.digest
        )
    })?;
    if region.len != d.size {
        return Err(format!(
            "corrupt layout: blob {} is {} bytes, its descriptor says {}",
            d.digest, region.len, d.size
        ));
    }
    Ok(BlobRef {
        digest: d.digest.clone(),
        size: d.size,
        region,
    })
}

fn expand(
    source: &Source,
    d: &Descriptor,
    tag: Option<String>,
    plan: &mut Plan,
    seen: &mut HashSet<String>,
    depth: usize,
) -> Result<(), String> {
    if depth > 4 {
        return Err(format!("index {} nests too deeply", d.digest));
    }
    if !seen.insert(d.digest.clone()) && tag.is_none() {
        return Ok(());
    }
    let bytes = read_manifest(source, d)?;
    let parsed: IndexJson = serde_json::from_slice(&bytes)
        .map_err(|e| format!("manifest {} is not valid JSON: {e}", d.digest))?;
    let media_type = d
        .media_type
        .clone()
        .or_else(|| parsed.media_type.clone())
        .unwrap_or_else(|| {
            if parsed.manifests.is_some() {
                OCI_INDEX.to_string()
            } else {
                OCI_MANIFEST.to_string()
            }
        });
    let is_index = media_type == OCI_INDEX || media_type == DOCKER_LIST;
    let mut blobs = Vec::new();
    if is_index {
        for child in parsed.manifests.as_deref().unwrap_or_default() {
            expand(source, child, None, plan, seen, depth + 1)?;
        }
    } else {
        if let Some(config) = &parsed.config {
            blobs.push(blob_ref(source, config, &d.digest)?);
        }
        for layer in parsed.layers.as_deref().unwrap_or_default() {
            blobs.push(blob_ref(source, layer, &d.digest)?);
        }
    }
    plan.manifests.push(ManifestPush {
        digest: d.digest.clone(),
        bytes,
        media_type,
        tag,
        blobs,
    });
    Ok(())
}

#[derive(Debug, Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

impl DockerSaveEntry {
    fn tags(&self) -> impl Iterator<Item = &str> {
        // `name:tag`, where the name may hold a registry port (`host:5000/app:v1`).
        self.repo_tags
            .iter()
            .flatten()
            .filter_map(|t| t.rsplit_once(':').map(|(_, tag)| tag))
            .filter(|t| !t.contains('/'))
    }
}

#[derive(Serialize)]
struct DockerDescriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    size: u64,
    digest: &'a str,
}

#[derive(Serialize)]
struct DockerManifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: DockerDescriptor<'a>,
    layers: Vec<DockerDescriptor<'a>>,
}

/// Streams a file of the image through sha256: `(digest, size)`.
pub fn hash_region(region: &Region) -> std::io::Result<(String, u64)> {
    let mut r = region.open()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    if n != region.len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "file is truncated",
        ));
    }
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

/// A legacy `docker save` archive has no manifest: one is built (Docker v2 schema 2, layers as
/// the uncompressed tars they are), with every digest computed by streaming the file.
fn plan_docker_save(source: &Source, tag: Option<&str>) -> Result<Plan, String> {
    let raw = source.read_small("manifest.json")?.unwrap_or_default();
    let entries: Vec<DockerSaveEntry> =
        serde_json::from_slice(&raw).map_err(|e| format!("manifest.json is not valid: {e}"))?;
    let chosen = match entries.len() {
        0 => return Err("manifest.json lists no images".into()),
        1 => &entries[0],
        _ => match tag.and_then(|t| entries.iter().find(|e| e.tags().any(|x| x == t))) {
            Some(e) => e,
            None => {
                let names: Vec<String> = entries
                    .iter()
                    .map(|e| match &e.repo_tags {
                        Some(t) if !t.is_empty() => t.join(" "),
                        _ => "(untagged)".into(),
                    })
                    .collect();
                let why = match tag {
                    Some(t) => format!("none is tagged {t:?}"),
                    None => "pass --tag to choose one".to_string(),
                };
                return Err(format!(
                    "manifest.json lists {} images ({}); {why}",
                    entries.len(),
                    names.join(", ")
                ));
            }
        },
    };
    let tag = tag
        .map(str::to_string)
        .or_else(|| chosen.tags().next().and_then(usable_tag));
    let hashed = |name: &str| -> Result<BlobRef, String> {
        let region = source.region(name)?.ok_or_else(|| {
            format!("{name} (listed in manifest.json) is missing from the archive")
        })?;
        let (digest, size) =
            hash_region(&region).map_err(|e| format!("cannot read {name}: {e}"))?;
        Ok(BlobRef {
            digest,
            size,
            region,
        })
    };
    let config = hashed(&chosen.config)?;
    let layers = chosen
        .layers
        .iter()
        .map(|l| hashed(l))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = DockerManifest {
        schema_version: 2,
        media_type: DOCKER_MANIFEST,
        config: DockerDescriptor {
            media_type: DOCKER_CONFIG,
            size: config.size,
            digest: &config.digest,
        },
        layers: layers
            .iter()
            .map(|l| DockerDescriptor {
                media_type: DOCKER_LAYER_TAR,
                size: l.size,
                digest: &l.digest,
            })
            .collect(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    let mut blobs = vec![config.clone()];
    blobs.extend(layers.iter().cloned());
    Ok(Plan {
        manifests: vec![ManifestPush {
            digest: sha256_digest(&bytes),
            bytes,
            media_type: DOCKER_MANIFEST.to_string(),
            tag,
            blobs,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_path_accepts_only_sha256() {
        let hex = "a".repeat(64);
        assert_eq!(
            blob_path(&format!("sha256:{hex}")).unwrap(),
            format!("blobs/sha256/{hex}")
        );
        assert!(blob_path(&format!("sha512:{hex}")).is_err());
        assert!(blob_path("sha256:../../etc").is_err());
        assert!(blob_path(&format!("sha256:{}", "A".repeat(64))).is_err());
    }

    #[test]
    fn default_tags_must_be_valid_tags() {
        assert_eq!(usable_tag("v1.2").as_deref(), Some("v1.2"));
        assert_eq!(usable_tag("docker.io/library/alpine:3"), None);
        assert_eq!(usable_tag(".hidden"), None);
    }

    #[test]
    fn ref_names_give_their_tag() {
        let d = |name: &str| Descriptor {
            media_type: None,
            digest: String::new(),
            size: 0,
            annotations: Some([(REF_NAME.to_string(), name.to_string())].into()),
        };
        assert_eq!(d("v1").ref_tag(), Some("v1"));
        assert_eq!(d("localhost/app:v2").ref_tag(), Some("v2"));
        assert_eq!(d("host:5000/app").ref_tag(), Some("host:5000/app"));
    }

    #[test]
    fn docker_save_tags_skip_registry_ports() {
        let e = DockerSaveEntry {
            config: String::new(),
            repo_tags: Some(vec!["host:5000/app:v1".into(), "app".into()]),
            layers: vec![],
        };
        assert_eq!(e.tags().collect::<Vec<_>>(), vec!["v1"]);
    }
}

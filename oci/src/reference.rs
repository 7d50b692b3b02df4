//! What an image argument names: a registry reference with Docker's defaults, an OCI image
//! layout directory, or an archive file. The syntax follows skopeo's transports:
//!
//! | argument | source |
//! |---|---|
//! | `alpine`, `docker.io/library/alpine:3.20`, `localhost:5000/x@sha256:...`, `docker://REF` | a registry |
//! | `oci:DIR[:TAG]`, or a path (`/...`, `./...`, `../...`) to a directory holding `oci-layout` | an OCI image layout |
//! | `oci-archive:FILE[:TAG]` | a tar of an OCI image layout |
//! | `docker-archive:FILE`, or a path to a file (a `docker save` or OCI archive, told apart by content) | an archive |

use std::fmt;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::digest::Digest;

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's registry API host.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A registry, by the distribution API.
    Registry(Reference),
    /// An OCI image layout directory, and the tag (`org.opencontainers.image.ref.name`) to pick.
    Layout { dir: PathBuf, tag: Option<String> },
    /// A tar of an OCI image layout.
    OciArchive { file: PathBuf, tag: Option<String> },
    /// A `docker save` tarball.
    DockerArchive(PathBuf),
    /// A path to a file that is an archive of either kind.
    Archive(PathBuf),
}

impl Source {
    /// Parses an image argument (see the module doc).
    pub fn parse(image: &str) -> Result<Self, Error> {
        if let Some(rest) = image.strip_prefix("docker://") {
            return Ok(Self::Registry(Reference::parse(rest)?));
        }
        if let Some(rest) = image.strip_prefix("oci:") {
            let (dir, tag) = split_tag(rest);
            return Ok(Self::Layout { dir, tag });
        }
        if let Some(rest) = image.strip_prefix("oci-archive:") {
            let (file, tag) = split_tag(rest);
            return Ok(Self::OciArchive { file, tag });
        }
        if let Some(rest) = image.strip_prefix("docker-archive:") {
            return Ok(Self::DockerArchive(rest.into()));
        }
        if ["/", "./", "../"].iter().any(|p| image.starts_with(p)) {
            let path = PathBuf::from(image);
            return Ok(if path.join("oci-layout").is_file() {
                Self::Layout {
                    dir: path,
                    tag: None,
                }
            } else if path.is_file() {
                Self::Archive(path)
            } else {
                return Err(Error::NoSuchPath(path));
            });
        }
        Ok(Self::Registry(Reference::parse(image)?))
    }

    /// The name `ember images` lists it under: the canonical reference for a registry image,
    /// else the transport, absolute path and tag.
    pub fn name(&self) -> String {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let with_tag = |kind: &str, p: &Path, tag: &Option<String>| match tag {
            Some(tag) => format!("{kind}:{}:{tag}", abs(p).display()),
            None => format!("{kind}:{}", abs(p).display()),
        };
        match self {
            Self::Registry(r) => r.to_string(),
            Self::Layout { dir, tag } => with_tag("oci", dir, tag),
            Self::OciArchive { file, tag } => with_tag("oci-archive", file, tag),
            Self::DockerArchive(file) | Self::Archive(file) => {
                format!("docker-archive:{}", abs(file).display())
            }
        }
    }
}

/// `PATH[:TAG]`: a tag is what follows the last colon, if it has no slash.
fn split_tag(text: &str) -> (PathBuf, Option<String>) {
    match text.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !path.is_empty() => {
            (path.into(), Some(tag.into()))
        }
        _ => (text.into(), None),
    }
}

/// A registry image reference, normalised as Docker does (`alpine` is
/// `docker.io/library/alpine:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as written (`docker.io`, `localhost:5000`).
    pub registry: String,
    /// The repository path (`library/alpine`).
    pub repository: String,
    /// The tag, when no digest is given or both are.
    pub tag: Option<String>,
    /// The manifest digest, when pinned.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::BadReference {
            reference: text.into(),
            why: why.into(),
        };
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(Digest::parse(digest)?)),
            None => (text, None),
        };
        let (name, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.into()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad(
                "the repository must be lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        if let Some(tag) = &tag {
            let ok = tag.len() <= 128
                && tag
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(bad("a tag is up to 128 letters, digits, '.', '_' and '-'"));
            }
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".into()),
            _ => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) the registry API is served on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &str) -> Reference {
        match Source::parse(text).unwrap() {
            Source::Registry(r) => r,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn docker_hub_defaults() {
        let r = reference("alpine");
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.manifest_ref(), "latest");
        assert_eq!(
            reference("docker.io/library/alpine:3.20").to_string(),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(reference("user/app").repository, "user/app");
        assert_eq!(
            reference("index.docker.io/x").to_string(),
            "docker.io/library/x:latest"
        );
        assert_eq!(
            reference("docker://busybox:1").to_string(),
            "docker.io/library/busybox:1"
        );
    }

    #[test]
    fn registries_ports_and_digests() {
        let hex = "0123456789abcdef".repeat(4);
        let r = reference(&format!("localhost:5000/x@sha256:{hex}"));
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.api_host(), "localhost:5000");
        assert_eq!(r.repository, "x");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), format!("sha256:{hex}"));
        let r = reference("quay.io/a/b/c:v1.2");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("quay.io", "a/b/c")
        );
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        // A name without a dot, colon or "localhost" in front is a Docker Hub user.
        assert_eq!(reference("myhost/x").registry, "docker.io");
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "Alpine",
            "alpine:",
            "alpine:bad/tag/",
            "x@sha256:12",
            "/",
            "a//b",
            "",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Source::parse("./does-not-exist"),
            Err(Error::NoSuchPath(_))
        ));
    }

    #[test]
    fn local_transports() {
        assert_eq!(
            Source::parse("oci:/tmp/layout:v1").unwrap(),
            Source::Layout {
                dir: "/tmp/layout".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Source::parse("oci:dir").unwrap(),
            Source::Layout {
                dir: "dir".into(),
                tag: None
            }
        );
        assert_eq!(
            Source::parse("oci-archive:/a/b.tar").unwrap(),
            Source::OciArchive {
                file: "/a/b.tar".into(),
                tag: None
            }
        );
        assert_eq!(
            Source::parse("docker-archive:x.tar").unwrap(),
            Source::DockerArchive("x.tar".into())
        );
        assert_eq!(Source::parse("oci:/l:t").unwrap().name(), "oci:/l:t");
    }
}

//! Host directories shared with the guest (virtio-fs): the `--share` and `--fs` flags as `fs`
//! configuration entries, and those entries checked into [`FsSpec`]s. Everything wrong with a
//! share (a missing directory, a file, a bad or repeated tag) is found here, before the VM
//! starts; starting virtiofsd belongs to [`crate::virtiofsd`].

use std::path::{Path, PathBuf};

use api_server::model::FsConfig;
use devices::virtio::fs::{TAG_MAX, valid_tag};

use crate::device_manager::Slot;

/// One virtio-fs device, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsSpec {
    /// Its configuration id.
    pub id: String,
    /// The name the guest mounts it by.
    pub tag: String,
    /// Who serves it.
    pub backend: FsBackend,
    /// Where it lives.
    pub slot: Slot,
}

/// Who serves a virtio-fs device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsBackend {
    /// ember starts (and stops) virtiofsd for this directory.
    Virtiofsd {
        /// The host directory.
        dir: PathBuf,
        /// Shared read-only.
        read_only: bool,
    },
    /// A vhost-user backend someone else runs, listening here.
    Socket(PathBuf),
}

/// Errors in the `fs` entries (and the `--share`/`--fs` flags).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FsConfigError {
    /// An id with characters other than letters, digits and '_'.
    #[error("fs id '{0}' is invalid: use letters, digits and '_'")]
    Id(String),
    /// Two entries with one id.
    #[error("two fs entries have the id '{0}'")]
    DuplicateId(String),
    /// A tag the guest cannot mount by.
    #[error(
        "fs '{id}': the tag '{tag}' must be 1 to {TAG_MAX} bytes (the guest mounts the share by \
         it); choose a shorter one with tag=NAME"
    )]
    Tag {
        /// The entry.
        id: String,
        /// Its tag.
        tag: String,
    },
    /// Two shares with one tag.
    #[error("fs '{second}' uses the tag '{tag}' of fs '{first}'; each share needs its own tag")]
    DuplicateTag {
        /// The tag.
        tag: String,
        /// The first entry with it.
        first: String,
        /// The second.
        second: String,
    },
    /// Neither or both of `shared_dir` and `socket`.
    #[error(
        "fs '{0}': give exactly one of shared_dir (ember starts virtiofsd for it) or socket (a \
         vhost-user backend you run)"
    )]
    Backend(String),
    /// `read_only` for a backend ember does not start.
    #[error("fs '{0}': read_only applies to shared_dir; start your own backend read-only instead")]
    ReadOnlySocket(String),
    /// A shared directory that does not exist (or cannot be looked at).
    #[error("fs '{id}': the shared directory '{}' cannot be used: {reason}", dir.display())]
    Dir {
        /// The entry.
        id: String,
        /// Its directory.
        dir: PathBuf,
        /// The OS's words.
        reason: String,
    },
    /// A shared "directory" that is a file.
    #[error("fs '{id}': '{}' is not a directory; share a directory", dir.display())]
    NotDir {
        /// The entry.
        id: String,
        /// What it names.
        dir: PathBuf,
    },
    /// A `--share` or `--fs` flag that cannot be parsed.
    #[error("{flag} '{arg}': {problem}")]
    Flag {
        /// `--share` or `--fs`.
        flag: &'static str,
        /// The whole argument.
        arg: String,
        /// What is wrong.
        problem: String,
    },
}

/// The virtio-fs devices of `entries`, in the slots after the `first` devices.
pub fn parse(entries: &[FsConfig], first: usize) -> Result<Vec<FsSpec>, FsConfigError> {
    let mut specs: Vec<FsSpec> = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let id = e.fs_id.clone();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(FsConfigError::Id(id));
        }
        if !valid_tag(&e.tag) {
            let tag = e.tag.clone();
            return Err(FsConfigError::Tag { id, tag });
        }
        if let Some(other) = specs.iter().find(|s| s.tag == e.tag) {
            return Err(FsConfigError::DuplicateTag {
                tag: e.tag.clone(),
                first: other.id.clone(),
                second: id,
            });
        }
        if specs.iter().any(|s| s.id == id) {
            return Err(FsConfigError::DuplicateId(id));
        }
        let backend = match (&e.shared_dir, &e.socket) {
            (Some(dir), None) => FsBackend::Virtiofsd {
                dir: checked_dir(&id, Path::new(dir))?,
                read_only: e.read_only,
            },
            (None, Some(_)) if e.read_only => return Err(FsConfigError::ReadOnlySocket(id)),
            (None, Some(socket)) => FsBackend::Socket(socket.into()),
            _ => return Err(FsConfigError::Backend(id)),
        };
        specs.push(FsSpec {
            id,
            tag: e.tag.clone(),
            backend,
            slot: Slot::nth(first + i),
        });
    }
    Ok(specs)
}

/// `dir`, which must be a directory.
fn checked_dir(id: &str, dir: &Path) -> Result<PathBuf, FsConfigError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(dir.to_owned()),
        Ok(_) => Err(FsConfigError::NotDir {
            id: id.into(),
            dir: dir.to_owned(),
        }),
        Err(err) => Err(FsConfigError::Dir {
            id: id.into(),
            dir: dir.to_owned(),
            reason: err.to_string(),
        }),
    }
}

/// Parses `--share HOSTDIR[,tag=NAME][,ro]`. The tag (and id) defaults to the directory's
/// name.
pub fn parse_share(arg: &str) -> Result<FsConfig, FsConfigError> {
    let bad = |problem: &str| FsConfigError::Flag {
        flag: "--share",
        arg: arg.into(),
        problem: problem.into(),
    };
    let mut parts = arg.split(',');
    let dir = parts
        .next()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| bad("no directory (expected HOSTDIR[,tag=NAME][,ro])"))?;
    let mut tag = None;
    let mut read_only = false;
    for part in parts {
        match part.split_once('=') {
            Some(("tag", name)) => tag = Some(name.to_owned()),
            None if part == "ro" => read_only = true,
            _ => {
                return Err(bad(&format!(
                    "unknown option '{part}' (expected tag=NAME or ro)"
                )));
            }
        }
    }
    let tag = match tag {
        Some(tag) => tag,
        None => default_tag(dir)
            .ok_or_else(|| bad("the directory has no name to use as tag; give tag=NAME"))?,
    };
    Ok(FsConfig {
        fs_id: id_from(&tag),
        tag,
        shared_dir: Some(dir.into()),
        socket: None,
        read_only,
    })
}

/// Parses `--fs socket=PATH,tag=NAME`.
pub fn parse_fs(arg: &str) -> Result<FsConfig, FsConfigError> {
    let bad = |problem: &str| FsConfigError::Flag {
        flag: "--fs",
        arg: arg.into(),
        problem: problem.into(),
    };
    let (mut socket, mut tag) = (None, None);
    for part in arg.split(',') {
        match part.split_once('=') {
            Some(("socket", path)) if !path.is_empty() => socket = Some(path.to_owned()),
            Some(("tag", name)) => tag = Some(name.to_owned()),
            _ => {
                return Err(bad(&format!(
                    "unknown option '{part}' (expected socket=PATH,tag=NAME)"
                )));
            }
        }
    }
    let socket = socket.ok_or_else(|| bad("no socket=PATH"))?;
    let tag = tag.ok_or_else(|| bad("no tag=NAME (the tag the backend serves)"))?;
    Ok(FsConfig {
        fs_id: id_from(&tag),
        tag,
        shared_dir: None,
        socket: Some(socket),
        read_only: false,
    })
}

/// The last component of `dir` ("/srv/docs/" gives "docs").
fn default_tag(dir: &str) -> Option<String> {
    Path::new(dir)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// A configuration id for `tag`: its characters outside letters, digits and '_' become '_'.
fn id_from(tag: &str) -> String {
    tag.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(dir: &str, tag: &str) -> FsConfig {
        FsConfig {
            fs_id: id_from(tag),
            tag: tag.into(),
            shared_dir: Some(dir.into()),
            socket: None,
            read_only: false,
        }
    }

    #[test]
    fn share_flags_default_the_tag_to_the_directory_name() {
        let s = parse_share("/srv/my-docs/,ro").unwrap();
        assert_eq!((s.tag.as_str(), s.fs_id.as_str()), ("my-docs", "my_docs"));
        assert!(s.read_only);
        let s = parse_share("/srv/docs,tag=d").unwrap();
        assert_eq!((s.tag.as_str(), s.read_only), ("d", false));
        for bad in ["", ",ro", "/srv,rw", "/,ro"] {
            assert!(parse_share(bad).is_err(), "{bad}");
        }
        let f = parse_fs("socket=/run/v.sock,tag=t").unwrap();
        assert_eq!(f.socket.as_deref(), Some("/run/v.sock"));
        let err = parse_fs("socket=/run/v.sock").unwrap_err().to_string();
        assert!(err.contains("no tag=NAME"), "{err}");
        assert!(parse_fs("tag=t").is_err() && parse_fs("socket=,tag=t").is_err());
    }

    #[test]
    fn bad_shares_are_named_before_the_vm_starts() {
        let dir = std::env::temp_dir();
        let d = dir.to_str().unwrap();
        let ok = parse(&[share(d, "a"), share(d, "b")], 2).unwrap();
        assert_eq!(ok[1].slot, Slot::nth(3));

        let missing = parse(&[share("/no/such/dir", "a")], 0).unwrap_err();
        assert!(missing.to_string().contains("No such file"), "{missing}");
        let file = parse(&[share("/proc/self/status", "a")], 0).unwrap_err();
        assert!(matches!(file, FsConfigError::NotDir { .. }), "{file}");
        let long = "t".repeat(TAG_MAX + 1);
        let err = parse(&[share(d, &long)], 0).unwrap_err();
        assert!(matches!(err, FsConfigError::Tag { .. }), "{err}");
        assert!(parse(&[share(d, &"t".repeat(TAG_MAX))], 0).is_ok());
        let mut twice = share(d, "a");
        twice.fs_id = "other".into();
        let err = parse(&[share(d, "a"), twice], 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "fs 'other' uses the tag 'a' of fs 'a'; each share needs its own tag"
        );
        let mut both = share(d, "a");
        both.socket = Some("/s".into());
        assert_eq!(parse(&[both], 0), Err(FsConfigError::Backend("a".into())));
        let mut ro_socket = parse_fs("socket=/s,tag=a").unwrap();
        ro_socket.read_only = true;
        assert!(matches!(
            parse(&[ro_socket], 0),
            Err(FsConfigError::ReadOnlySocket(_))
        ));
    }
}

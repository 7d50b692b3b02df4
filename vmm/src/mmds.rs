//! The MMDS data store as the VMM holds it: one per process, made at start (Firecracker's
//! clients may `PUT /mmds` before anything else), limited by `--mmds-size-limit` and seeded
//! from `--metadata`. The API ([`crate::lifecycle`]) reads and changes it before and after
//! boot; once the VM runs, the network interfaces `mmds-config` names answer the guest from
//! the same store, so what the host puts, the guest reads at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devices::host_file::HostFileError;
use devices::mmds::{Mmds, MmdsError, SharedMmds};

use crate::config::{MAX_CONFIG_FILE_SIZE, read_bounded};

/// How many times the store's limit a `--metadata` file may be: its JSON may be
/// pretty-printed, and only the compact form counts against the limit.
const FILE_SLACK: u64 = 8;

/// Errors loading `--metadata`.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The file cannot be read.
    #[error("cannot read the metadata file '{}'", path.display())]
    Read {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: HostFileError,
    },
    /// The file is far larger than the store could hold.
    #[error(
        "the metadata file '{}' is larger than {max} bytes, too large for the MMDS data store \
         (raise --mmds-size-limit)",
        path.display()
    )]
    TooLarge {
        /// The path given.
        path: PathBuf,
        /// The most ember reads.
        max: u64,
    },
    /// The file is not JSON.
    #[error("the metadata file '{}' is not valid JSON", path.display())]
    Parse {
        /// The path given.
        path: PathBuf,
        /// What serde found, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The store refused the file's JSON.
    #[error("the metadata file '{}' cannot be put in the MMDS data store", path.display())]
    Store {
        /// The path given.
        path: PathBuf,
        /// Why (its size, against the limit).
        #[source]
        source: MmdsError,
    },
}

/// The store, holding at most `limit` bytes of compact JSON, with the JSON of the file
/// `metadata` in it when one is given.
pub fn store(limit: usize, metadata: Option<&Path>) -> Result<SharedMmds, MetadataError> {
    let mut mmds = Mmds::new(limit);
    if let Some(path) = metadata {
        let path_buf = || path.to_owned();
        let max = (limit as u64)
            .saturating_mul(FILE_SLACK)
            .max(MAX_CONFIG_FILE_SIZE);
        let text = read_bounded(path, max)
            .map_err(|source| MetadataError::Read {
                path: path_buf(),
                source,
            })?
            .ok_or_else(|| MetadataError::TooLarge {
                path: path_buf(),
                max,
            })?;
        let value = serde_json::from_str(&text).map_err(|source| MetadataError::Parse {
            path: path_buf(),
            source,
        })?;
        mmds.put(value).map_err(|source| MetadataError::Store {
            path: path_buf(),
            source,
        })?;
    }
    Ok(Arc::new(Mutex::new(mmds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::sync::lock;
    use serde_json::json;

    fn file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ember-mmds-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn metadata_is_loaded_and_each_problem_names_the_file() {
        let empty = store(100, None).unwrap();
        assert_eq!(lock(&empty).data(), &serde_json::Value::Null);
        // Pretty-printed: only the compact JSON counts against the limit.
        let pretty = file("pretty.json", "{\n    \"latest\":   {\"id\": \"i-1\"}\n}\n");
        let loaded = store(25, Some(&pretty)).unwrap();
        assert_eq!(lock(&loaded).data(), &json!({"latest": {"id": "i-1"}}));

        let message =
            |limit, path: &Path| crate::error_chain(&store(limit, Some(path)).unwrap_err());
        let bad = file("bad.json", "{\"latest\": ");
        let err = message(100, &bad);
        assert!(
            err.starts_with(&format!(
                "the metadata file '{}' is not valid JSON: ",
                bad.display()
            )),
            "{err}"
        );
        let err = message(10, &pretty);
        assert!(
            err.starts_with(&format!(
                "the metadata file '{}' cannot be put",
                pretty.display()
            )),
            "{err}"
        );
        assert!(err.contains("over its limit of 10 bytes"), "{err}");
        let missing = std::env::temp_dir().join("ember-no-such-metadata.json");
        let err = message(100, &missing);
        assert!(err.contains("ember-no-such-metadata.json"), "{err}");
        assert!(err.contains("No such file"), "{err}");
        // A file far beyond any store is not read whole.
        let huge = file(
            "huge.json",
            &" ".repeat((MAX_CONFIG_FILE_SIZE + 1) as usize),
        );
        let err = message(100, &huge);
        assert!(err.contains("is larger than 1048576 bytes"), "{err}");
        for path in [pretty, bad, huge] {
            std::fs::remove_file(path).unwrap();
        }
    }
}

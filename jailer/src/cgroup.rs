//! The microVM's cgroup, as Firecracker's jailer makes it: for `--cgroup FILE=VALUE` settings,
//! the directory `<hierarchy>/<parent-cgroup>/<id>` in the hierarchy of FILE's controller (the
//! unified one with `--cgroup-version 2`, the controller's own mount with 1), the values
//! written, then the jailer itself moved in, so that ember, which it becomes, starts there.
//! With version 2 and no settings, the jailer moves into `<parent-cgroup>` if that exists.
//!
//! The hierarchies are found in `/proc/mounts`. Every directory made here is removed again if
//! a later step of this module fails, so that a bad `--cgroup` leaves nothing behind. This
//! module touches only cgroup filesystems.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::{CgroupSetting, Jail};

/// Options of a v1 cgroup mount that are not controllers.
const V1_MOUNT_OPTIONS: [&str; 12] = [
    "rw",
    "ro",
    "nosuid",
    "nodev",
    "noexec",
    "relatime",
    "noatime",
    "nodiratime",
    "strictatime",
    "xattr",
    "noprefix",
    "clone_children",
];

/// Files a new cgroup v1 cpuset starts with empty and needs before a process may join it.
const CPUSET_INHERITED: [&str; 2] = ["cpuset.cpus", "cpuset.mems"];

/// Why the cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No hierarchy of the version asked for is mounted.
    #[error(
        "no cgroup v{0} hierarchy is mounted (see /proc/mounts): mount one or pick the other \
         --cgroup-version"
    )]
    NoHierarchy(u8),
    /// The controller of a `--cgroup` file is not available.
    #[error(
        "--cgroup {file}: the {controller} controller is not available in cgroup v{version} \
         here (see /proc/mounts and cgroup.controllers): pick the other --cgroup-version or \
         another file"
    )]
    NoController {
        /// The `--cgroup` file.
        file: String,
        /// Its controller.
        controller: String,
        /// The version asked for.
        version: u8,
    },
    /// A `--cgroup` file does not exist in the new cgroup.
    #[error("--cgroup {file}: {dir} has no such file (check the name; `ls {dir}` lists them)")]
    NoSuchFile {
        /// The `--cgroup` file.
        file: String,
        /// The cgroup's directory.
        dir: PathBuf,
    },
    /// A directory could not be made.
    #[error("cannot create cgroup {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    /// A write was refused (a bad value, or a controller that cannot be enabled).
    #[error("cannot write '{value}' to {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// A v1 cpuset value to inherit could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// Moving into `--parent-cgroup` (version 2 without settings) failed.
    #[error(
        "cannot move into cgroup {0}: if it has controllers enabled in cgroup.subtree_control, \
         a process cannot join it; pass a --cgroup to get a child cgroup made instead"
    )]
    Move(PathBuf, #[source] std::io::Error),
}

/// One cgroup to make: its directory, the hierarchy's root it lives under, and its settings.
struct Plan<'a> {
    root: PathBuf,
    settings: Vec<&'a CgroupSetting>,
}

/// Puts the calling process in the cgroup(s) `jail` asks for; `proc_mounts` is the text of
/// `/proc/mounts`.
pub fn setup(jail: &Jail, proc_mounts: &str) -> Result<(), CgroupError> {
    let version = jail.cgroup_version;
    if jail.cgroups.is_empty() {
        if version == 2 {
            let parent = v2_root(proc_mounts)?.join(&jail.parent_cgroup);
            if parent.is_dir() {
                join(&parent).map_err(|e| match e {
                    CgroupError::Write { source, .. } => CgroupError::Move(parent.clone(), source),
                    other => other,
                })?;
            }
        }
        return Ok(());
    }
    let plans = plan(jail, proc_mounts)?;
    let mut made = Vec::new();
    let result = plans
        .iter()
        .try_for_each(|(dir, plan)| configure(dir, plan, version, &mut made))
        .and_then(|()| plans.keys().try_for_each(|dir| join(dir)));
    if result.is_err() {
        // Deepest first; a cgroup the process did join stays (it cannot be removed).
        for dir in made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

/// The cgroup directory of each hierarchy the settings touch, with its settings in order.
fn plan<'a>(jail: &'a Jail, proc_mounts: &str) -> Result<BTreeMap<PathBuf, Plan<'a>>, CgroupError> {
    let mut plans: BTreeMap<PathBuf, Plan<'a>> = BTreeMap::new();
    for setting in &jail.cgroups {
        let controller = setting.controller();
        let missing = || CgroupError::NoController {
            file: setting.file.clone(),
            controller: controller.to_owned(),
            version: jail.cgroup_version,
        };
        let root = if jail.cgroup_version == 2 {
            let root = v2_root(proc_mounts)?;
            let listed = std::fs::read_to_string(root.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .any(|c| c == controller);
            if !listed {
                return Err(missing());
            }
            root
        } else {
            v1_root(proc_mounts, controller).ok_or_else(missing)?
        };
        let dir = root.join(&jail.parent_cgroup).join(&jail.id);
        plans
            .entry(dir)
            .or_insert_with(|| Plan {
                root,
                settings: Vec::new(),
            })
            .settings
            .push(setting);
    }
    Ok(plans)
}

/// Makes `dir` (recording each directory made in `made`), lets its controllers in and writes
/// its settings.
fn configure(
    dir: &Path,
    plan: &Plan<'_>,
    version: u8,
    made: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| *d != plan.root && !d.exists())
        .collect();
    for new in missing.iter().rev() {
        std::fs::create_dir(new).map_err(|e| CgroupError::CreateDir(new.to_path_buf(), e))?;
        made.push(new.to_path_buf());
        if version == 1 && plan.settings.iter().any(|s| s.controller() == "cpuset") {
            inherit_cpuset(new)?;
        }
    }
    if version == 2 {
        enable_controllers(dir, plan)?;
    }
    for setting in &plan.settings {
        let path = dir.join(&setting.file);
        if !path.exists() {
            return Err(CgroupError::NoSuchFile {
                file: setting.file.clone(),
                dir: dir.to_owned(),
            });
        }
        write(&path, &setting.value)?;
    }
    Ok(())
}

/// Cgroup v2 lets a controller's files appear in a cgroup only once every ancestor enables it
/// in `cgroup.subtree_control`: enables each setting's controller from the root down to the
/// new cgroup's parent.
fn enable_controllers(dir: &Path, plan: &Plan<'_>) -> Result<(), CgroupError> {
    let ancestors: Vec<&Path> = dir
        .ancestors()
        .skip(1)
        .take_while(|d| d.starts_with(&plan.root))
        .collect();
    for ancestor in ancestors.iter().rev() {
        for setting in &plan.settings {
            let value = format!("+{}", setting.controller());
            write(&ancestor.join("cgroup.subtree_control"), &value)?;
        }
    }
    Ok(())
}

/// A new v1 cpuset has no CPUs and memory nodes, and no process may join it until it has:
/// copies the parent's.
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in CPUSET_INHERITED {
        let from = parent.join(file);
        let value = std::fs::read_to_string(&from).map_err(|e| CgroupError::Read(from, e))?;
        if !value.trim().is_empty() {
            write(&dir.join(file), value.trim())?;
        }
    }
    Ok(())
}

/// Moves the calling process into the cgroup `dir`.
fn join(dir: &Path) -> Result<(), CgroupError> {
    write(&dir.join("cgroup.procs"), &std::process::id().to_string())
}

/// One write of `value` to an existing cgroup file (a cgroup file takes one value per write).
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let err = |source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(err)?;
    file.write_all(value.as_bytes()).map_err(err)
}

/// (mount point, filesystem type, options) of each line of `/proc/mounts`.
fn mounts(proc_mounts: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    proc_mounts.lines().filter_map(|line| {
        let mut fields = line.split_whitespace().skip(1);
        Some((fields.next()?, fields.next()?, fields.next()?))
    })
}

/// Where the unified (v2) hierarchy is mounted.
fn v2_root(proc_mounts: &str) -> Result<PathBuf, CgroupError> {
    mounts(proc_mounts)
        .find(|(_, fstype, _)| *fstype == "cgroup2")
        .map(|(path, _, _)| PathBuf::from(path))
        .ok_or(CgroupError::NoHierarchy(2))
}

/// Where `controller`'s v1 hierarchy is mounted.
fn v1_root(proc_mounts: &str, controller: &str) -> Option<PathBuf> {
    mounts(proc_mounts)
        .find(|(_, fstype, options)| {
            *fstype == "cgroup"
                && !V1_MOUNT_OPTIONS.contains(&controller)
                && options.split(',').any(|o| o == controller)
        })
        .map(|(path, _, _)| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MOUNTS: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn hierarchies_are_found_by_type_and_controller() {
        assert_eq!(
            v2_root(MOUNTS).unwrap(),
            Path::new("/sys/fs/cgroup/unified")
        );
        assert_eq!(
            v1_root(MOUNTS, "cpuacct").unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            v1_root(MOUNTS, "memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory")
        );
        assert!(v1_root(MOUNTS, "pids").is_none());
        assert!(v1_root(MOUNTS, "relatime").is_none());
        assert!(matches!(
            v2_root("proc /proc proc rw 0 0\n"),
            Err(CgroupError::NoHierarchy(2))
        ));
    }

    /// A fake v2 hierarchy in a temporary directory: cgroup.controllers at its root, and
    /// subtree_control files in the directories that exist (the kernel makes them in new
    /// directories, a plain directory here does not, so they are made in advance).
    fn fake_v2(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("ember-jailer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("ember")).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        std::fs::write(root.join("ember/cgroup.subtree_control"), "").unwrap();
        root
    }

    fn jail(settings: &[&str], version: u8) -> Jail {
        Jail {
            id: "vm1".into(),
            exec_file: "/bin/true".into(),
            exec_name: "ember".into(),
            root: "/nonexistent".into(),
            uid: 0,
            gid: 0,
            netns: None,
            daemonize: false,
            new_pid_ns: false,
            cgroups: settings
                .iter()
                .map(|s| {
                    let (file, value) = s.split_once('=').unwrap();
                    CgroupSetting {
                        file: file.into(),
                        value: value.into(),
                    }
                })
                .collect(),
            cgroup_version: version,
            parent_cgroup: "ember".into(),
            limits: Vec::new(),
            ember_args: Vec::new(),
        }
    }

    #[test]
    fn a_new_v1_cpuset_gets_its_parents_cpus_and_memory_nodes() {
        let root = fake_v2("cpuset");
        std::fs::write(root.join("ember/cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(root.join("ember/cpuset.mems"), "0\n").unwrap();
        // The kernel makes the files, empty, with the directory.
        std::fs::create_dir(root.join("ember/vm1")).unwrap();
        for file in CPUSET_INHERITED {
            std::fs::write(root.join("ember/vm1").join(file), "").unwrap();
        }
        inherit_cpuset(&root.join("ember/vm1")).unwrap();
        let read = |f: &str| std::fs::read_to_string(root.join("ember/vm1").join(f)).unwrap();
        assert_eq!(
            (read("cpuset.cpus"), read("cpuset.mems")),
            ("0-3".into(), "0".into())
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_v2_controller_the_root_lacks_is_refused_before_anything_is_made() {
        let root = fake_v2("noctl");
        let mounts = format!("cgroup2 {} cgroup2 rw 0 0\n", root.display());
        let err = setup(&jail(&["io.max=8:0 rbps=1"], 2), &mounts).unwrap_err();
        assert!(
            err.to_string()
                .contains("the io controller is not available"),
            "{err}"
        );
        assert!(!root.join("ember/vm1").exists());
        let err = setup(&jail(&["memory.max=1"], 1), &mounts).unwrap_err();
        assert!(
            matches!(err, CgroupError::NoController { version: 1, .. }),
            "{err}"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn v2_enables_controllers_down_the_tree_and_an_unknown_file_removes_the_new_cgroup() {
        let root = fake_v2("enable");
        let mounts = format!("cgroup2 {} cgroup2 rw 0 0\n", root.display());
        let err = setup(&jail(&["memory.bogus=1"], 2), &mounts).unwrap_err();
        assert!(err.to_string().contains("has no such file"), "{err}");
        assert!(!root.join("ember/vm1").exists(), "the new cgroup stays");
        for dir in [root.clone(), root.join("ember")] {
            let control = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap();
            assert_eq!(control, "+memory", "{}", dir.display());
        }
        std::fs::remove_dir_all(root).unwrap();
    }
}

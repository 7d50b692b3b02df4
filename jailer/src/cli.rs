//! The command line of `ember-jailer`: Firecracker's jailer flags, parsed by clap, then checked
//! against the host ([`Cli::into_jail`]) before anything on it changes, so that a mistyped
//! flag leaves no directory or cgroup behind. This module reads the host (paths, metadata) but
//! changes nothing.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use clap::Parser;

/// The longest `--id`, as Firecracker's jailer allows.
const MAX_ID_LEN: usize = 64;

/// Where jails are built unless `--chroot-base-dir` says otherwise (Firecracker's default).
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";

/// The examples after `--help` (and in the man page): the socket path is the one
/// firecracker-go-sdk passes.
pub const EXAMPLES: &str = "\
Examples:
  ember-jailer --id vm1 --exec-file /usr/bin/ember --uid 123 --gid 123 \\
      --netns /var/run/netns/vm1 --cgroup-version 2 --cgroup memory.max=536870912
  (ember runs in /srv/jailer/ember/vm1/root as uid 123 and serves its API at
   /srv/jailer/ember/vm1/root/run/firecracker.socket; put the kernel and disks in that
   root and name them by their paths inside it, e.g. /vmlinux)";

/// ember-jailer: start ember in a jail, as Firecracker's jailer starts Firecracker.
///
/// Copies the ember binary into <chroot-base-dir>/<exec file name>/<id>/root, moves into the
/// cgroups, network namespace and resource limits asked for, makes that directory the root of
/// a new mount namespace with /dev/kvm, /dev/net/tun and /dev/urandom in it, drops to
/// --uid/--gid and execs ember with `--id <id>` and the arguments after `--`.
#[derive(Debug, Parser)]
#[command(
    name = "ember-jailer",
    version = concat!("v", env!("CARGO_PKG_VERSION")),
    after_help = EXAMPLES
)]
pub struct Cli {
    /// The microVM's unique id: letters, digits and '-', at most 64 characters. It names the
    /// jail directory and the cgroup, and ember gets it as --id.
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub id: String,
    /// The ember binary to jail; copied to the jail's root under its own file name.
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,
    /// The user id ember runs as.
    #[arg(long, value_name = "UID")]
    pub uid: u32,
    /// The group id ember runs as (with no supplementary groups).
    #[arg(long, value_name = "GID")]
    pub gid: u32,
    /// The directory jails are built in, as <DIR>/<exec file name>/<id>/root.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CHROOT_BASE)]
    pub chroot_base_dir: PathBuf,
    /// A network namespace to join (e.g. /var/run/netns/NAME from `ip netns add NAME`).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Detach: start a new session and point stdin, stdout and stderr at /dev/null.
    #[arg(long)]
    pub daemonize: bool,
    /// Run ember as the first process of a new PID namespace; its pid (as the host sees it)
    /// is written to <exec file name>.pid in the jail's root.
    #[arg(long)]
    pub new_pid_ns: bool,
    /// A cgroup file and the value to write to it in the microVM's cgroup
    /// <cgroup root>/<parent-cgroup>/<id> (e.g. memory.max=536870912, cpu.max=50000).
    /// Repeatable.
    #[arg(long, value_name = "FILE=VALUE", value_parser = parse_cgroup)]
    pub cgroup: Vec<CgroupSetting>,
    /// The cgroup hierarchy --cgroup writes to: 1 (a mount per controller) or 2 (unified).
    #[arg(long, value_name = "1|2", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=2))]
    pub cgroup_version: u8,
    /// The cgroup (relative to the hierarchy's root) the microVM's cgroup is made in. With
    /// --cgroup-version 2 and no --cgroup, ember is moved into this cgroup if it exists.
    /// [default: the exec file's name]
    #[arg(long, value_name = "PATH", value_parser = parse_parent_cgroup)]
    pub parent_cgroup: Option<PathBuf>,
    /// A resource limit for ember: fsize=BYTES (largest file it may write) or no-file=N (one
    /// more than the largest descriptor number; 2048 unless given). Repeatable.
    #[arg(long, value_name = "RESOURCE=VALUE", value_parser = parse_limit)]
    pub resource_limit: Vec<ResourceLimit>,
    /// ember's own arguments (e.g. --config-file /vm.json); paths are as ember sees them,
    /// inside the jail. Without --api-sock or --no-api, ember serves its API at
    /// /run/firecracker.socket (Firecracker's default).
    #[arg(last = true, value_name = "EMBER ARGS")]
    pub ember_args: Vec<OsString>,
}

/// One `--cgroup FILE=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// The file in the cgroup's directory, e.g. `memory.max`.
    pub file: String,
    /// What is written to it.
    pub value: String,
}

impl CgroupSetting {
    /// The controller the file belongs to: the part before the first dot.
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or_default()
    }
}

/// A resource `--resource-limit` can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// RLIMIT_FSIZE.
    FileSize,
    /// RLIMIT_NOFILE.
    NoFile,
}

/// One `--resource-limit RESOURCE=VALUE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimit {
    /// What is limited.
    pub resource: Resource,
    /// The soft and hard limit.
    pub value: u64,
}

/// A command line that parsed but does not fit the host.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The exec file cannot be resolved.
    #[error("--exec-file {0}: cannot find it (give the path of the ember binary)")]
    ExecFile(PathBuf, #[source] std::io::Error),
    /// The exec file is a directory or a device.
    #[error("--exec-file {0} is not a regular file (give the path of the ember binary)")]
    ExecNotFile(PathBuf),
    /// The exec file's name cannot name a directory.
    #[error("--exec-file {0}: its file name is not UTF-8")]
    ExecName(PathBuf),
    /// The chroot base directory cannot be resolved.
    #[error("--chroot-base-dir {0}: cannot find it (create it first)")]
    ChrootBase(PathBuf, #[source] std::io::Error),
    /// The chroot base is not a directory.
    #[error("--chroot-base-dir {0} is not a directory")]
    ChrootBaseNotDir(PathBuf),
}

/// A checked command line: what [`crate::run`] does.
#[derive(Debug)]
pub struct Jail {
    /// The microVM's id.
    pub id: String,
    /// The exec file, canonical.
    pub exec_file: PathBuf,
    /// Its file name: the jail's directory under the base, and the binary's name inside.
    pub exec_name: String,
    /// `<base>/<exec name>/<id>/root`.
    pub root: PathBuf,
    /// The ids ember runs as.
    pub uid: u32,
    /// See [`Jail::uid`].
    pub gid: u32,
    /// The network namespace to join.
    pub netns: Option<PathBuf>,
    /// `--daemonize`.
    pub daemonize: bool,
    /// `--new-pid-ns`.
    pub new_pid_ns: bool,
    /// The `--cgroup` settings, in order.
    pub cgroups: Vec<CgroupSetting>,
    /// 1 or 2.
    pub cgroup_version: u8,
    /// Relative to the hierarchy's root.
    pub parent_cgroup: PathBuf,
    /// The `--resource-limit`s, in order.
    pub limits: Vec<ResourceLimit>,
    /// Passed to ember after `--id`.
    pub ember_args: Vec<OsString>,
}

impl Cli {
    /// Resolves the paths and fills the defaults.
    pub fn into_jail(self) -> Result<Jail, CliError> {
        let exec_file = std::fs::canonicalize(&self.exec_file)
            .map_err(|e| CliError::ExecFile(self.exec_file.clone(), e))?;
        if !exec_file.is_file() {
            return Err(CliError::ExecNotFile(exec_file));
        }
        let exec_name = exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| CliError::ExecName(exec_file.clone()))?
            .to_owned();
        let base = std::fs::canonicalize(&self.chroot_base_dir)
            .map_err(|e| CliError::ChrootBase(self.chroot_base_dir.clone(), e))?;
        if !base.is_dir() {
            return Err(CliError::ChrootBaseNotDir(base));
        }
        let root = base.join(&exec_name).join(&self.id).join("root");
        let parent_cgroup = self
            .parent_cgroup
            .unwrap_or_else(|| PathBuf::from(&exec_name));
        Ok(Jail {
            id: self.id,
            exec_file,
            exec_name,
            root,
            uid: self.uid,
            gid: self.gid,
            netns: self.netns,
            daemonize: self.daemonize,
            new_pid_ns: self.new_pid_ns,
            cgroups: self.cgroup,
            cgroup_version: self.cgroup_version,
            parent_cgroup,
            limits: self.resource_limit,
            ember_args: self.ember_args,
        })
    }
}

fn parse_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(format!("the id must be 1 to {MAX_ID_LEN} characters long"));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        Some(c) => Err(format!(
            "'{c}' is not allowed in an id (use letters, digits and '-')"
        )),
        None => Ok(s.to_owned()),
    }
}

/// True if `path` is a plain relative path: no root, `.` or `..` that could leave the cgroup
/// hierarchy.
fn is_plain_relative(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::Normal(_)))
}

fn parse_cgroup(s: &str) -> Result<CgroupSetting, String> {
    let (file, value) = s
        .split_once('=')
        .filter(|(f, v)| !f.is_empty() && !v.is_empty())
        .ok_or("expected FILE=VALUE, e.g. memory.max=536870912")?;
    let setting = CgroupSetting {
        file: file.to_owned(),
        value: value.to_owned(),
    };
    let plain = !file.contains('/') && is_plain_relative(Path::new(file));
    if !plain || !file.contains('.') || setting.controller().is_empty() {
        return Err(format!(
            "'{file}' is not a cgroup file name (CONTROLLER.NAME, e.g. memory.max)"
        ));
    }
    Ok(setting)
}

fn parse_parent_cgroup(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if s.is_empty() || !is_plain_relative(&path) {
        return Err("give a path relative to the cgroup root, without '.' or '..'".into());
    }
    Ok(path)
}

fn parse_limit(s: &str) -> Result<ResourceLimit, String> {
    let (name, value) = s
        .split_once('=')
        .ok_or("expected RESOURCE=VALUE, e.g. no-file=1024")?;
    let resource = match name {
        "fsize" => Resource::FileSize,
        "no-file" => Resource::NoFile,
        _ => {
            return Err(format!(
                "unknown resource '{name}' (expected fsize or no-file)"
            ));
        }
    };
    let value = value
        .parse()
        .map_err(|_| format!("'{value}' is not a number"))?;
    Ok(ResourceLimit { resource, value })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::CommandFactory;

    use super::*;

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        let base = [
            "ember-jailer",
            "--id",
            "vm-1",
            "--exec-file",
            "/bin/true",
            "--uid",
            "1",
            "--gid",
            "2",
        ];
        Cli::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn firecrackers_flags_parse_with_its_defaults() {
        let cli = parse(&[
            "--cgroup",
            "memory.max=100",
            "--cgroup",
            "cpu.max=5000 10000",
            "--resource-limit",
            "no-file=64",
            "--resource-limit",
            "fsize=1000",
            "--netns",
            "/var/run/netns/x",
            "--daemonize",
            "--new-pid-ns",
            "--",
            "--api-sock",
            "/run/firecracker.socket",
            "--",
            "init",
        ])
        .unwrap();
        assert_eq!(cli.chroot_base_dir, Path::new("/srv/jailer"));
        assert_eq!(cli.cgroup_version, 1);
        assert_eq!(cli.cgroup[1].value, "5000 10000");
        assert_eq!(cli.cgroup[1].controller(), "cpu");
        assert_eq!(
            cli.resource_limit,
            [
                ResourceLimit {
                    resource: Resource::NoFile,
                    value: 64
                },
                ResourceLimit {
                    resource: Resource::FileSize,
                    value: 1000
                }
            ]
        );
        assert!(cli.daemonize && cli.new_pid_ns);
        // Everything after the first `--` is ember's, a second `--` included.
        assert_eq!(
            cli.ember_args,
            ["--api-sock", "/run/firecracker.socket", "--", "init"]
        );
    }

    #[test]
    fn firecracker_go_sdks_jailer_command_line_parses() {
        // JailerCommandBuilder.Args() with a NUMA node, cgroup v2, a netns and --daemonize;
        // the arguments after `--` are the SDK's for Firecracker.
        let cli = Cli::try_parse_from([
            "ember-jailer",
            "--id",
            "vm",
            "--uid",
            "123",
            "--gid",
            "100",
            "--exec-file",
            "/bin/true",
            "--cgroup",
            "cpuset.mems=0",
            "--cgroup",
            "cpuset.cpus=0-1",
            "--cgroup-version",
            "2",
            "--chroot-base-dir",
            "/tmp",
            "--netns",
            "/var/run/netns/n",
            "--daemonize",
            "--",
            "--no-seccomp",
            "--api-sock",
            "/run/firecracker.socket",
        ])
        .unwrap();
        assert_eq!((cli.uid, cli.gid, cli.cgroup_version), (123, 100, 2));
        assert_eq!(cli.cgroup.len(), 2);
        assert_eq!(cli.ember_args.len(), 3);
    }

    #[test]
    fn bad_values_are_refused_with_what_to_do() {
        let cases: &[(&[&str], &str)] = &[
            (&["--cgroup", "memory.max"], "expected FILE=VALUE"),
            (&["--cgroup", "memory.max="], "expected FILE=VALUE"),
            (&["--cgroup", "../x.max=1"], "is not a cgroup file name"),
            (&["--cgroup", "a/b.max=1"], "is not a cgroup file name"),
            (&["--cgroup", "nodot=1"], "is not a cgroup file name"),
            (&["--cgroup-version", "3"], "3 is not in 1..=2"),
            (&["--parent-cgroup", "../up"], "relative to the cgroup root"),
            (&["--parent-cgroup", "/abs"], "relative to the cgroup root"),
            (&["--resource-limit", "cpu=1"], "unknown resource 'cpu'"),
            (
                &["--resource-limit", "fsize=lots"],
                "'lots' is not a number",
            ),
        ];
        for (args, needle) in cases {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn ids_are_letters_digits_and_dashes_up_to_64() {
        assert!(parse_id(&"a".repeat(64)).is_ok());
        assert!(parse_id("551e7604-e35c-42b3-b825-416853441234").is_ok());
        assert!(parse_id(&"a".repeat(65)).unwrap_err().contains("1 to 64"));
        assert!(parse_id("").is_err());
        for bad in ["a/b", "..", "a_b", "a b", "é"] {
            assert!(
                parse_id(bad).unwrap_err().contains("is not allowed"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_jail_is_base_exec_name_id_root_and_the_parent_cgroup_the_exec_name() {
        let jail = parse(&["--chroot-base-dir", "/tmp"])
            .unwrap()
            .into_jail()
            .unwrap();
        let name = jail.exec_name.clone();
        assert_eq!(jail.root, Path::new("/tmp").join(&name).join("vm-1/root"));
        assert_eq!(jail.parent_cgroup, Path::new(&name));
    }

    #[test]
    fn paths_that_do_not_fit_are_refused() {
        let err = |args: &[&str]| parse(args).unwrap().into_jail().unwrap_err().to_string();
        assert!(err(&["--chroot-base-dir", "/nonexistent-base"]).contains("create it first"));
        assert!(err(&["--chroot-base-dir", "/bin/true"]).contains("is not a directory"));
        let cli = Cli::try_parse_from([
            "j",
            "--id",
            "a",
            "--exec-file",
            "/",
            "--uid",
            "0",
            "--gid",
            "0",
        ])
        .unwrap();
        assert!(
            cli.into_jail()
                .unwrap_err()
                .to_string()
                .contains("is not a regular file")
        );
    }
}

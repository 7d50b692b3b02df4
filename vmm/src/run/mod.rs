//! `ember run IMAGE [-- COMMAND...]`: a container image's program in a microVM, with
//! `docker run`'s ergonomics and exit status and a VM as the boundary.
//!
//! This module turns the command line and the image (`oci::prepare`: pulled or read into
//! ember's image cache, unpacked once into a read-only ext4) into an ordinary [`VmConfig`]:
//! the kernel ([`find_kernel`]), the image's root filesystem as a read-only virtio-blk disk, the `-v` directories as virtio-fs shares, the
//! `--net` TAP, and an initramfs ([`initramfs`]) carrying ember's static init and the
//! [`guest::GuestConfig`] it applies (user, environment, working directory, command). The VM
//! itself boots through the same [`crate::builder::run`] as `ember --kernel ...`; this module
//! must not reach into the VM's devices or threads. The init reports the program's exit status
//! through the exit port, so ember's status is the program's.

pub mod guest;
pub mod initramfs;
pub mod upper;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api_server::model::{BootSource, Drive, FsConfig, MachineConfig, NetworkInterface, VmConfig};
use clap::{ArgAction, Args, Parser, Subcommand};

use crate::ExitStatus;
use crate::cli::{self, ArgError};
use crate::config::DEFAULT_CMDLINE;
use crate::controller::Outcome;
use crate::share;
use crate::spec::RunOptions;
use guest::{GuestConfig, GuestError, NetSettings, Volume};
use oci::{PreparedImage, PullOptions};
use upper::UpperError;

/// Where the Debian package `ember-guest-kernel` installs its kernel.
pub const PACKAGED_KERNEL: &str = "/usr/lib/ember/vmlinux";
/// Where resources/build-kernel.sh leaves its kernel, relative to the working directory.
pub const BUILT_KERNEL: &str = "build/guest/vmlinux";
/// The `--rootfs-size` disk in the guest: the drive after the image's (/dev/vda).
pub const UPPER_DISK: &str = "/dev/vdb";

/// `ember run IMAGE`'s exit statuses and what each means; the man page lists them.
pub const EXIT_STATUSES: &[(&str, &str)] = &[
    ("N", "the program's exit status"),
    (
        "64",
        "ember's own error: flags, image, kernel, /dev/kvm (the reason is printed)",
    ),
    ("123", "the guest kernel panicked"),
    ("124", "--timeout expired"),
    (
        "125",
        "the container could not be set up (the reason is printed), or the guest crashed or \
         stopped without the program's status",
    ),
    ("126", "the program cannot be executed"),
    ("127", "the program is not found"),
    ("128+N", "signal N killed the program, or stopped ember"),
];

/// What `ember run IMAGE` reads from its environment; the man page lists it.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "EMBER_KERNEL",
        "the guest kernel when --kernel is not given",
    ),
    (
        "EMBER_CACHE_DIR",
        "the image cache, instead of $XDG_CACHE_HOME/ember or ~/.cache/ember",
    ),
    (
        "TMPDIR",
        "where the --rootfs-size disk is made (default /var/tmp)",
    ),
];

/// `ember run IMAGE` command lines; the man page lists them.
pub const EXAMPLES: &[&str] = &[
    "ember run docker.io/library/alpine:3.20 -- sh -c 'echo hello; exit 3'",
    "ember run -t -v $PWD:/src:ro -w /src --rootfs-size 4G debian:12 bash",
    "ember run --kernel vmlinux --timeout 60 oci:./layout:v1 make test",
];

/// `ember run`'s command line, parsed on its own: `ember run IMAGE` is this form, `ember run
/// --kernel ...` without an image the older spelling of `ember ...` ([`crate::cli::Cli`]).
#[derive(Debug, Parser)]
#[command(name = "ember", version = concat!("v", env!("CARGO_PKG_VERSION")))]
pub struct RunCli {
    #[command(subcommand)]
    command: RunCommand,
}

#[derive(Debug, Subcommand)]
enum RunCommand {
    /// Run a container image's program in a microVM and exit with its status.
    ///
    /// The image's root filesystem is attached read-only under an overlay whose writes stay
    /// in guest memory (or, with --rootfs-size, on a temporary disk): nothing persists after
    /// the run. Exit status: the program's; 126 if it
    /// cannot be executed, 127 if it is not found, 128+N if signal N killed it, 125 if the
    /// container could not be set up (the reason is printed), 64 for ember's own errors.
    /// (`ember run --kernel ...` without an image is the same as `ember --kernel ...`.)
    #[command(after_help = examples_footer())]
    Run(RunArgs),
}

/// What `ember run --help` shows after the flags.
fn examples_footer() -> String {
    let examples: String = EXAMPLES.iter().map(|e| format!("\n  {e}")).collect();
    format!("Examples:{examples}")
}

impl RunCli {
    /// The arguments of `ember run IMAGE ...`.
    pub fn into_args(self) -> RunArgs {
        let RunCommand::Run(args) = self.command;
        args
    }
}

/// What a command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// `ember ...` or `ember run ...` without an image: a VM the flags describe.
    Vm(Box<cli::Cli>),
    /// `ember run IMAGE ...`.
    Container(Box<RunArgs>),
}

/// Parses ember's command line. `ember run` takes an image since `ember run IMAGE` exists;
/// before, `ember run FLAGS` was `ember FLAGS`, which still parses as it did: a command line
/// that is valid in that form keeps its meaning (it has no word before `--` that is not a flag,
/// which an image is), every other `ember run` is the image form, whose errors are reported.
pub fn parse<I: Into<OsString> + Clone>(
    argv: impl IntoIterator<Item = I>,
) -> Result<Invocation, clap::Error> {
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let vm = cli::Cli::try_parse_from(&argv);
    let container_form = argv.get(1).is_some_and(|a| a == "run");
    match vm {
        Ok(vm) if !container_form || argv.len() > 2 => Ok(Invocation::Vm(Box::new(vm))),
        Err(e) if !container_form => Err(e),
        _ => Ok(Invocation::Container(Box::new(
            RunCli::try_parse_from(&argv)?.into_args(),
        ))),
    }
}

/// The options of `ember run IMAGE`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The image, as `ember pull` takes it: a registry reference (alpine,
    /// docker.io/library/alpine:3.20), oci:DIR[:TAG], oci-archive:FILE[:TAG],
    /// docker-archive:FILE, or a path starting with /, ./ or ../ to a layout or archive.
    /// Fetched into the image cache unless already there.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// The command and its arguments, instead of the image's Cmd (after `--`, or after IMAGE).
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
    /// The program to run instead of the image's Entrypoint (the image's Cmd is dropped too).
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass ember's own). Repeatable; wins
    /// over the image's Env.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The working directory, instead of the image's WorkingDir (created if missing).
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as USER[:GROUP] (names from the image's /etc/passwd and /etc/group, or numbers)
    /// instead of the image's User.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// An interactive terminal: echo, line editing and Ctrl-C for the program, TERM=xterm.
    #[arg(short, long, action = ArgAction::SetTrue)]
    pub tty: bool,
    /// Mount a host directory: HOSTDIR:GUESTDIR[:ro] (virtio-fs, through virtiofsd).
    /// Repeatable.
    #[arg(short, long, value_name = "HOSTDIR:GUESTDIR[:ro]")]
    pub volume: Vec<String>,
    /// A NIC on an existing host TAP, configured statically:
    /// tap=NAME,ip=ADDR/PREFIX[,gw=ADDR][,dns=ADDR]...[,mac=MAC][,mtu=N].
    #[arg(long, value_name = "tap=NAME,ip=ADDR/PREFIX[,..]")]
    pub net: Option<String>,
    /// The container's host name.
    #[arg(long, value_name = "NAME", default_value = "ember")]
    pub hostname: String,
    /// Guest kernel (ELF vmlinux or bzImage) [default: $EMBER_KERNEL, /usr/lib/ember/vmlinux,
    /// build/guest/vmlinux].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Guest memory in MiB (the container's writes live in it too, unless --rootfs-size).
    #[arg(short, long, value_name = "MIB", default_value_t = 512)]
    pub memory: usize,
    /// Keep the container's writes on a temporary disk of SIZE (512M, 1G: K, M, G or T,
    /// powers of 1024) instead of in guest memory: a sparse ext4 file in $TMPDIR (default
    /// /var/tmp) that uses host disk only as it is written and is removed when ember exits.
    #[arg(long, value_name = "SIZE", value_parser = upper::parse_size)]
    pub rootfs_size: Option<u64>,
    /// Number of vCPUs (1-32).
    #[arg(long, alias = "cpus", value_name = "N", default_value_t = 1)]
    pub vcpus: u8,
    /// Reach this registry (HOST or HOST:PORT) over plain HTTP instead of HTTPS (localhost and
    /// 127.0.0.1 always are). Repeatable.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Stop after SECS seconds and exit with status 124.
    #[arg(long, value_name = "SECS", value_parser = cli::parse_timeout)]
    pub timeout: Option<Duration>,
    /// Log level of ember's own messages on stderr: Off, Error, Warning, Info, Debug or Trace.
    #[arg(long, value_name = "LEVEL", default_value = "Warning", value_parser = cli::parse_level)]
    pub level: log::LevelFilter,
}

/// Why `ember run` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No kernel was given and none is installed.
    #[error(
        "no guest kernel: give --kernel PATH or set EMBER_KERNEL, install the \
         ember-guest-kernel package ({PACKAGED_KERNEL}), or build one with \
         resources/build-kernel.sh ({BUILT_KERNEL})"
    )]
    NoKernel,
    /// The kernel named by a flag or EMBER_KERNEL does not exist.
    #[error("{from} '{path}' is not a file")]
    KernelMissing {
        /// `--kernel` or `EMBER_KERNEL`.
        from: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The image cannot be fetched or unpacked.
    #[error(transparent)]
    Image(#[from] oci::Error),
    /// Neither the command line nor the image names a program.
    #[error("the image has no Entrypoint or Cmd: give the command after the image")]
    NoCommand,
    /// A bad `-u`, `-e` or `--net` address.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// A `-v` value is not `HOSTDIR:GUESTDIR[:ro]`.
    #[error("-v '{0}' is not HOSTDIR:GUESTDIR[:ro] (GUESTDIR absolute, HOSTDIR without commas)")]
    Volume(String),
    /// A `--net` or `-v` value the device flags refuse.
    #[error(transparent)]
    Device(#[from] ArgError),
    /// `--net` without `ip=`.
    #[error("--net '{0}' has no ip=ADDR/PREFIX (the container's address)")]
    NoAddress(String),
    /// The initramfs cannot be made.
    #[error("cannot create the initramfs in memory")]
    Initramfs(#[source] std::io::Error),
    /// The `--rootfs-size` disk cannot be made.
    #[error(transparent)]
    Upper(#[from] UpperError),
}

/// The kernel `ember run` boots: `--kernel`, else `$EMBER_KERNEL`, else the first of
/// `installed` that exists.
pub fn find_kernel(
    flag: Option<&Path>,
    env: Option<OsString>,
    installed: &[&Path],
) -> Result<PathBuf, RunError> {
    let given = flag
        .map(|p| ("--kernel", p.to_owned()))
        .or_else(|| env.map(|p| ("EMBER_KERNEL", p.into())));
    if let Some((from, path)) = given {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(RunError::KernelMissing { from, path })
        };
    }
    installed
        .iter()
        .find(|p| p.is_file())
        .map(|p| p.to_path_buf())
        .ok_or(RunError::NoKernel)
}

/// The program and arguments: `--entrypoint` replaces the image's Entrypoint and drops its
/// Cmd; words after the image replace Cmd.
fn command_line(args: &RunArgs, image: &PreparedImage) -> Result<Vec<String>, RunError> {
    let config = image.config.config().as_ref();
    let (entrypoint, cmd) = match &args.entrypoint {
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (
            config
                .and_then(|c| c.entrypoint().clone())
                .unwrap_or_default(),
            config.and_then(|c| c.cmd().clone()).unwrap_or_default(),
        ),
    };
    let cmd = if args.command.is_empty() {
        cmd
    } else {
        args.command.clone()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.first().is_none_or(|p| p.is_empty()) {
        return Err(RunError::NoCommand);
    }
    Ok(argv)
}

/// `-v HOSTDIR:GUESTDIR[:ro]` as a `--share` device (tag `volN`) and where the init mounts it.
fn volume(arg: &str, index: usize) -> Result<(FsConfig, Volume), RunError> {
    let bad = || RunError::Volume(arg.into());
    let (rest, read_only) = match arg.strip_suffix(":ro") {
        Some(rest) => (rest, true),
        None => (arg, false),
    };
    let (host, target) = rest.split_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(',') || !target.starts_with('/') || target.contains(':') {
        return Err(bad());
    }
    let tag = format!("vol{index}");
    let ro = if read_only { ",ro" } else { "" };
    let share = share::parse_share(&format!("{host},tag={tag}{ro}")).map_err(ArgError::from)?;
    let volume = Volume {
        tag,
        target: target.into(),
        read_only,
    };
    Ok((share, volume))
}

/// `--net tap=NAME,ip=...,gw=...,dns=...`: the NIC (the `--net` flag's options) and the
/// settings the init applies.
fn network(arg: &str) -> Result<(NetworkInterface, NetSettings), RunError> {
    let mut settings = NetSettings::default();
    let mut device = Vec::new();
    for option in arg.split(',') {
        match option.split_once('=') {
            Some(("ip", v)) => {
                guest::parse_cidr(v)?;
                settings.address = v.into();
            }
            Some(("gw", v)) => {
                guest::parse_gateway(v)?;
                settings.gateway = Some(v.into());
            }
            Some(("dns", v)) => {
                guest::parse_gateway(v)?;
                settings.dns.push(v.into());
            }
            _ => device.push(option),
        }
    }
    if settings.address.is_empty() {
        return Err(RunError::NoAddress(arg.into()));
    }
    Ok((cli::parse_net(&device.join(","), 0)?, settings))
}

/// A VM ready to boot: its configuration, and the memory file its initramfs path names, which
/// must stay open until the kernel is loaded.
pub struct Prepared {
    /// The microVM.
    pub config: VmConfig,
    /// The options of this run.
    pub options: RunOptions,
    /// The initramfs, named in `config` as `/proc/self/fd/N`.
    pub initramfs: std::fs::File,
    /// The `--rootfs-size` disk, named in `config` as `/proc/self/fd/N`; it has no other name,
    /// so the host's kernel frees it when ember exits, however it exits.
    pub upper: Option<std::fs::File>,
}

impl RunArgs {
    /// What the init is to do, for this image.
    fn guest_config(&self, image: &PreparedImage) -> Result<GuestConfig, RunError> {
        let config = image.config.config().as_ref();
        let image_env = config.and_then(|c| c.env().clone()).unwrap_or_default();
        let user = match &self.user {
            Some(user) => {
                guest::check_user_syntax(user)?;
                user.clone()
            }
            None => config.and_then(|c| c.user().clone()).unwrap_or_default(),
        };
        let cwd = self
            .workdir
            .clone()
            .or_else(|| config.and_then(|c| c.working_dir().clone()))
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(GuestConfig {
            argv: command_line(self, image)?,
            env: guest::merge_env(&image_env, &self.env, |k| std::env::var(k).ok())?,
            cwd,
            user,
            hostname: self.hostname.clone(),
            tty: self.tty,
            term_size: if self.tty { terminal_size() } else { None },
            upper_disk: self.rootfs_size.map(|_| UPPER_DISK.into()),
            volumes: Vec::new(),
            net: None,
        })
    }

    /// The VM that runs the image's program as the flags say.
    pub fn prepare(&self) -> Result<Prepared, RunError> {
        // What can be wrong with the flags alone is reported before an image is fetched.
        if let Some(user) = &self.user {
            guest::check_user_syntax(user)?;
        }
        let mut shares = Vec::new();
        let mut volumes = Vec::new();
        for (i, arg) in self.volume.iter().enumerate() {
            let (share, volume) = volume(arg, i)?;
            shares.push(share);
            volumes.push(volume);
        }
        let net = self.net.as_deref().map(network).transpose()?;
        let installed = [Path::new(PACKAGED_KERNEL), Path::new(BUILT_KERNEL)];
        let kernel = find_kernel(
            self.kernel.as_deref(),
            std::env::var_os("EMBER_KERNEL"),
            &installed,
        )?;
        let pull = PullOptions {
            insecure_registries: self.insecure_registry.clone(),
            ..Default::default()
        };
        let image = oci::prepare(&self.image, &pull)?;
        let guest = GuestConfig {
            volumes,
            net: net.as_ref().map(|(_, settings)| settings.clone()),
            ..self.guest_config(&image)?
        };
        let nics = net.into_iter().map(|(nic, _)| nic).collect();
        let upper = match self.rootfs_size {
            Some(size) => Some(upper::create(
                &upper::dir(std::env::var_os("TMPDIR")),
                size,
            )?),
            None => None,
        };
        self.vm_config(&image, &kernel, &guest, shares, nics, upper)
    }

    /// The VM: `kernel`, the initramfs carrying `guest`, the image's root filesystem, the
    /// `--rootfs-size` disk (the file and the path that names it), the `-v` shares and the
    /// `--net` NIC.
    fn vm_config(
        &self,
        image: &PreparedImage,
        kernel: &Path,
        guest: &GuestConfig,
        shares: Vec<FsConfig>,
        nics: Vec<NetworkInterface>,
        upper: Option<(std::fs::File, String)>,
    ) -> Result<Prepared, RunError> {
        let (initramfs, initrd_path) =
            initramfs::in_memory(&initramfs::build(guest)).map_err(RunError::Initramfs)?;
        let mut drives = vec![Drive {
            drive_id: "rootfs".into(),
            path_on_host: image.rootfs.display().to_string(),
            is_read_only: true,
            ..Default::default()
        }];
        let upper = upper.map(|(file, path)| {
            drives.push(Drive {
                drive_id: "upper".into(),
                path_on_host: path,
                // Nothing on it outlives the run: flushes need not reach the host's disk.
                cache_type: Some("Unsafe".into()),
                ..Default::default()
            });
            file
        });
        let config = VmConfig {
            boot_source: Some(BootSource {
                kernel_image_path: kernel.display().to_string(),
                initrd_path: Some(initrd_path),
                // The terminal shows the program's output only: the kernel prints nothing
                // below KERN_ALERT (a panic still shows).
                boot_args: Some(format!("{DEFAULT_CMDLINE} quiet loglevel=1")),
            }),
            machine_config: MachineConfig {
                vcpu_count: self.vcpus,
                mem_size_mib: self.memory,
                ..Default::default()
            },
            drives,
            network_interfaces: nics,
            fs: shares,
            ..Default::default()
        };
        let options = RunOptions {
            timeout: self.timeout,
            ..Default::default()
        };
        Ok(Prepared {
            config,
            options,
            initramfs,
            upper,
        })
    }
}

/// The size of the terminal on stdin, rows and columns, if it is one.
fn terminal_size() -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a struct winsize, which `size` is; it fails on a non-terminal.
    let ret = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) };
    (ret == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// What `ember run` exits with and says on stderr once the VM has ended. The init always
/// reports the program's status through the exit port, and only that status stays silent: a
/// guest that stopped without one lost its init or was powered off from inside the container,
/// which is not the program's success.
pub fn container_exit(outcome: Outcome) -> (ExitStatus, Option<String>) {
    match outcome.status {
        ExitStatus::GuestCode(_) => (outcome.status, None),
        ExitStatus::GuestStopped => (
            ExitStatus::GuestCrash,
            Some("the guest stopped without reporting the program's exit status".into()),
        ),
        status => (status, Some(outcome.message).filter(|m| !m.is_empty())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Result<RunArgs, String> {
        let argv = ["ember", "run"].iter().chain(words);
        match parse(argv.copied()).map_err(|e| e.to_string())? {
            Invocation::Container(args) => Ok(*args),
            Invocation::Vm(_) => Err("parsed as ember FLAGS".into()),
        }
    }

    fn image(config: &str) -> PreparedImage {
        PreparedImage {
            digest: "local:test".into(),
            rootfs: "rootfs.ext4".into(),
            config: serde_json::from_str(&format!(
                r#"{{"architecture":"amd64","os":"linux",
                    "rootfs":{{"type":"layers","diff_ids":[]}},"config":{config}}}"#
            ))
            .unwrap(),
        }
    }

    #[test]
    fn ember_run_with_an_image_is_the_container_form_and_without_one_the_old_spelling() {
        let a = args(&["-e", "A=1", "-u", "app", "img", "--", "sh", "-c", "exit 3"]).unwrap();
        assert_eq!(a.image, "img");
        assert_eq!(a.command, ["sh", "-c", "exit 3"]);
        assert_eq!((a.memory, a.vcpus, a.hostname.as_str()), (512, 1, "ember"));
        let a = args(&["-m", "256", "--cpus", "2", "img", "ls", "-l"]).unwrap();
        assert_eq!((a.memory, a.vcpus), (256, 2));
        assert_eq!(
            a.command,
            ["ls", "-l"],
            "no -- needed, and -l is the program's"
        );
        for old in [
            &["--kernel", "k", "--timeout", "5", "--", "true"][..],
            &["--kernel", "k", "--initrd", "i"],
        ] {
            assert_eq!(args(old).unwrap_err(), "parsed as ember FLAGS");
        }
        let missing = args(&[]).unwrap_err();
        assert!(missing.contains("<IMAGE>"), "{missing}");
        let unknown = args(&["--disk", "d", "img"]).unwrap_err();
        assert!(unknown.contains("--disk"), "{unknown}");
        let bad = parse(["ember", "--kernel", "k", "img"])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("img"), "{bad}");
    }

    #[test]
    fn the_kernel_is_the_flag_then_ember_kernel_then_the_installed_ones() {
        let exe = std::env::current_exe().unwrap();
        let missing = Path::new("/nonexistent/vmlinux");
        let found = |flag, env: Option<&Path>, installed: &[&Path]| {
            find_kernel(flag, env.map(Into::into), installed)
        };
        assert_eq!(found(Some(&exe), Some(missing), &[]).unwrap(), exe);
        assert_eq!(found(None, Some(&exe), &[missing]).unwrap(), exe);
        assert_eq!(found(None, None, &[missing, &exe]).unwrap(), exe);
        let err = found(Some(missing), Some(&exe), &[&exe])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--kernel '/nonexistent/vmlinux' is not a file");
        let err = found(None, Some(missing), &[&exe]).unwrap_err().to_string();
        assert!(err.starts_with("EMBER_KERNEL"), "{err}");
        let err = found(None, None, &[missing]).unwrap_err().to_string();
        assert!(
            err.contains("--kernel")
                && err.contains(PACKAGED_KERNEL)
                && err.contains("build-kernel.sh"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_the_image_configuration() {
        let img = image(
            r#"{"Env":["A=image","PATH=/bin"],"User":"app","WorkingDir":"/srv",
                "Entrypoint":["/entry"],"Cmd":["default"]}"#,
        );
        let cfg = args(&["img"]).unwrap().guest_config(&img).unwrap();
        assert_eq!(cfg.argv, ["/entry", "default"]);
        assert_eq!((cfg.user.as_str(), cfg.cwd.as_str()), ("app", "/srv"));
        assert_eq!(cfg.env, ["A=image", "PATH=/bin"]);
        let cfg = args(&["-e", "A=flag", "-u", "0:0", "-w", "/tmp", "img", "x", "y"])
            .unwrap()
            .guest_config(&img)
            .unwrap();
        assert_eq!(cfg.argv, ["/entry", "x", "y"], "words replace Cmd only");
        assert_eq!((cfg.user.as_str(), cfg.cwd.as_str()), ("0:0", "/tmp"));
        assert_eq!(cfg.env, ["PATH=/bin", "A=flag"]);
        let cfg = args(&["--entrypoint", "sh", "img"])
            .unwrap()
            .guest_config(&img)
            .unwrap();
        assert_eq!(cfg.argv, ["sh"], "--entrypoint drops the image's Cmd");
        let bare = image("{}");
        let cfg = args(&["img", "true"]).unwrap().guest_config(&bare).unwrap();
        assert_eq!((cfg.user.as_str(), cfg.cwd.as_str()), ("", "/"));
        assert!(matches!(
            args(&["img"]).unwrap().guest_config(&bare),
            Err(RunError::NoCommand)
        ));
        let err = args(&["-u", "app:", "img"])
            .unwrap()
            .guest_config(&img)
            .unwrap_err();
        assert!(err.to_string().contains("USER[:GROUP]"), "{err}");
        let err = args(&["-e", "=x", "img"])
            .unwrap()
            .guest_config(&img)
            .unwrap_err();
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
    }

    #[test]
    fn only_the_programs_status_is_silent_and_a_guest_stopping_without_one_fails() {
        let outcome = |status, message: &str| Outcome {
            status,
            message: message.into(),
        };
        assert_eq!(
            container_exit(outcome(ExitStatus::GuestCode(3), "")),
            (ExitStatus::GuestCode(3), None)
        );
        let (status, message) = container_exit(outcome(ExitStatus::GuestStopped, ""));
        assert_eq!(status.code(), 125);
        assert!(message.unwrap().contains("without reporting"));
        assert_eq!(
            container_exit(outcome(ExitStatus::Timeout, "timed out after 5 s")),
            (ExitStatus::Timeout, Some("timed out after 5 s".into()))
        );
        assert_eq!(
            container_exit(outcome(ExitStatus::GuestPanic, "")),
            (ExitStatus::GuestPanic, None)
        );
    }

    #[test]
    fn rootfs_size_adds_a_writable_second_drive_for_the_upper_layer() {
        let img = image(r#"{"Cmd":["true"]}"#);
        let plain = args(&["img"]).unwrap();
        assert_eq!(plain.rootfs_size, None);
        assert_eq!(plain.guest_config(&img).unwrap().upper_disk, None);
        let err = args(&["--rootfs-size", "1X", "img"]).unwrap_err();
        assert!(
            err.contains("--rootfs-size") && err.contains("'1X' is not a size"),
            "{err}"
        );
        let a = args(&["--rootfs-size", "1G", "img"]).unwrap();
        assert_eq!(a.rootfs_size, Some(1 << 30));
        let guest = a.guest_config(&img).unwrap();
        assert_eq!(guest.upper_disk.as_deref(), Some(UPPER_DISK));
        let disk = std::fs::File::open("/dev/null").unwrap();
        let upper = Some((disk, "/proc/self/fd/99".to_owned()));
        let kernel = Path::new("vmlinux");
        let prepared = a
            .vm_config(&img, kernel, &guest, vec![], vec![], upper)
            .unwrap();
        assert!(prepared.upper.is_some(), "the disk stays open for the run");
        let drives = &prepared.config.drives;
        assert_eq!(drives.len(), 2);
        assert!(drives[0].is_read_only && drives[0].path_on_host == "rootfs.ext4");
        assert_eq!(drives[1].path_on_host, "/proc/self/fd/99");
        assert!(!drives[1].is_read_only && !drives[1].is_root_device);
        let plain = plain
            .vm_config(&img, kernel, &guest, vec![], vec![], None)
            .unwrap();
        assert_eq!(plain.config.drives.len(), 1);
    }

    #[test]
    fn volumes_and_the_network_reuse_the_device_flags() {
        let dir = std::env::temp_dir();
        let host = dir.to_str().unwrap();
        let (share, vol) = volume(&format!("{host}:/data:ro"), 2).unwrap();
        assert_eq!((share.tag.as_str(), share.read_only), ("vol2", true));
        assert_eq!(share.shared_dir.as_deref(), Some(host));
        assert_eq!(
            (vol.tag.as_str(), vol.target.as_str(), vol.read_only),
            ("vol2", "/data", true)
        );
        assert!(!volume(&format!("{host}:/data"), 0).unwrap().1.read_only);
        for bad in ["/x", "/x:data", ":/data", "/a,b:/data", "/x:/a:b"] {
            assert!(matches!(volume(bad, 0), Err(RunError::Volume(_))), "{bad}");
        }
        let (nic, net) =
            network("tap=tap0,ip=10.0.0.2/24,gw=10.0.0.1,dns=1.1.1.1,mtu=1400").unwrap();
        assert_eq!((nic.host_dev_name.as_str(), nic.mtu), ("tap0", Some(1400)));
        assert_eq!(net.address, "10.0.0.2/24");
        assert_eq!(
            (net.gateway.as_deref(), net.dns.as_slice()),
            (Some("10.0.0.1"), &["1.1.1.1".to_owned()][..])
        );
        assert!(matches!(network("tap=tap0"), Err(RunError::NoAddress(_))));
        assert!(matches!(
            network("tap=t,ip=10.0.0.2/40"),
            Err(RunError::Guest(_))
        ));
        assert!(matches!(network("ip=10.0.0.2"), Err(RunError::Device(_))));
    }
}

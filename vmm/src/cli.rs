//! The `ember` command line: flags that describe a microVM directly, or a Firecracker config
//! file, turned into the same [`VmConfig`] the API uses, plus options for this run. `ember run
//! FLAGS` (no image) is the same as `ember FLAGS`, spelled for CI scripts; `ember run IMAGE` is
//! [`crate::run`]'s.

use std::path::PathBuf;
use std::time::Duration;

use api_server::model::{
    BootSource, DEFAULT_MEM_SIZE_MIB, DEFAULT_VCPU_COUNT, Drive, FsConfig, MachineConfig,
    MetricsConfig, NetworkInterface, VmConfig, VsockConfig,
};
use clap::{ArgAction, Args, Parser, Subcommand};

use crate::config::{self, ConfigError, DEFAULT_CMDLINE};
use crate::console::DEFAULT_SERIAL_FILE_LIMIT;
use crate::images::ImageCommand;
use crate::logger;
use crate::seccomp;
use crate::share;
use crate::spec::{RunOptions, VirtioTransport};
use api_server::server::DEFAULT_MAX_PAYLOAD;

const SHORT_FOOTER: &str = "Console: Ctrl-A x ends the VM, Ctrl-A h lists the console keys. \
    More, with exit statuses and examples: ember --help";

/// The console's escape keys and what each does. `--help` and the man page list them.
pub const CONSOLE_KEYS: &[(&str, &str)] = &[
    ("Ctrl-A x", "end the VM (exit status 130, as Ctrl-C would)"),
    ("Ctrl-A Ctrl-A", "send Ctrl-A to the guest"),
    ("Ctrl-A h", "list these keys"),
];

/// ember's exit statuses and what each means. `--help` and the man page list them.
pub const EXIT_STATUSES: &[(&str, &str)] = &[
    ("0", "the guest rebooted or powered off"),
    ("N", "the guest wrote the byte N to I/O port 0xf4"),
    (
        "64",
        "configuration error (flags, config file, kernel, /dev/kvm)",
    ),
    ("123", "the guest kernel panicked"),
    ("124", "--timeout expired"),
    ("125", "the guest crashed (triple fault, KVM error)"),
    ("128+N", "stopped by signal N (130 also for Ctrl-A x)"),
];

/// Example command lines. `--help` and the man page list them.
pub const EXAMPLES: &[&str] = &[
    "ember --kernel vmlinux --initrd initramfs.cpio -- 'uname -a'",
    "ember --kernel vmlinux --disk rootfs.ext4,root --vcpus 2 --memory 512",
    "ember --api-sock /tmp/ember.sock &",
];

/// What `--help` shows after the flags: the console keys, exit statuses and examples.
fn long_footer() -> String {
    let table = |rows: &[(&str, &str)], width: usize| -> String {
        rows.iter()
            .map(|(key, meaning)| format!("  {key:width$}  {meaning}\n"))
            .collect()
    };
    let examples: String = EXAMPLES.iter().map(|e| format!("\n  {e}")).collect();
    format!(
        "Console keys (when stdin is the terminal; every other key, Ctrl-C included, goes to the \
         guest):\n{}A background `ember ... &` neither reads the terminal nor changes its mode.\n\n\
         Exit status:\n{}\nExamples:{examples}",
        table(CONSOLE_KEYS, 14),
        table(EXIT_STATUSES, 5),
    )
}

/// ember: boot a Linux kernel in a KVM microVM whose serial console is this terminal.
///
/// Boots a Linux kernel (ELF vmlinux or bzImage) with an optional initramfs and virtio disks
/// and NICs, or serves Firecracker's REST API with --api-sock.
#[derive(Debug, Parser)]
#[command(
    name = "ember",
    // "ember vX.Y.Z": the `<Name> v<X.Y.Z>` first line Firecracker's launchers parse.
    version = concat!("v", env!("CARGO_PKG_VERSION")),
    args_conflicts_with_subcommands = true,
    after_help = SHORT_FOOTER,
    after_long_help = long_footer()
)]
pub struct Cli {
    /// One-shot forms.
    #[command(subcommand)]
    command: Option<Command>,
    /// The microVM and this run.
    #[command(flatten)]
    args: VmArgs,
}

// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a container image in a microVM (`ember run IMAGE -- COMMAND`, see `ember run
    /// --help`); without an image, boot the microVM as `ember` does with the same flags.
    Run(VmArgs),
    /// The image cache: pull, images, rmi, image prune.
    #[command(flatten)]
    Image(ImageCommand),
}

/// Everything that describes one run of one microVM.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// Guest kernel: an ELF vmlinux or a bzImage.
    #[arg(long, value_name = "PATH", conflicts_with = "config_file")]
    pub kernel: Option<PathBuf>,
    /// Initrd or initramfs (cpio) to pass to the kernel.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (replaces the default, see --help).
    #[arg(
        long,
        value_name = "STR",
        requires = "kernel",
        long_help = format!("Kernel command line, instead of the default:\n  {DEFAULT_CMDLINE}\n\
            (a kernel may put its own built-in command line in front of it)")
    )]
    pub cmdline: Option<String>,
    /// Number of vCPUs (1-32).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VCPU_COUNT, requires = "kernel")]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEM_SIZE_MIB, requires = "kernel")]
    pub memory: usize,
    /// A virtio-blk disk on a raw image: PATH[,ro][,root][,async][,id=NAME], or served by a
    /// vhost-user-blk backend: socket=PATH[,root][,id=NAME]. Repeatable.
    ///
    /// `ro` read-only; `root` the root device (/dev/vda; `root=/dev/vda rw` or `ro` is added to
    /// the kernel command line); `async` the Async I/O engine (io_uring, many requests in
    /// flight; Firecracker's `io_engine`); `id=NAME` its drive id and serial number (default
    /// diskN). `socket=PATH` is the Unix socket a vhost-user-blk backend (such as
    /// qemu-storage-daemon) listens on; ember reconnects if the backend restarts there.
    #[arg(
        long,
        value_name = "PATH|socket=PATH[,ro][,root][,async][,id=NAME]",
        requires = "kernel"
    )]
    pub disk: Vec<String>,
    /// A network interface on an existing host TAP: tap=NAME[,mac=MAC][,mtu=N][,id=NAME].
    /// Repeatable; without mac= the guest gets a stable address derived from id and TAP.
    #[arg(long, value_name = "tap=NAME[,..]", requires = "kernel")]
    pub net: Vec<String>,
    /// A virtio-vsock device: the guest's context id (3 or more) and the Unix socket ember
    /// listens on for host connections (`CONNECT <port>`); the guest's connections to port P
    /// of the host go to PATH_P.
    #[arg(long, value_name = "CID,PATH", requires = "kernel")]
    pub vsock: Option<String>,
    /// Share a host directory with the guest (virtio-fs): HOSTDIR[,tag=NAME][,ro]. Repeatable.
    ///
    /// ember starts virtiofsd for it ($EMBER_VIRTIOFSD, else virtiofsd on PATH) and stops it
    /// when the VM ends. The guest mounts it with `mount -t virtiofs TAG /mnt`; the tag
    /// defaults to the directory's name. `ro` shares it read-only.
    #[arg(long, value_name = "HOSTDIR[,tag=NAME][,ro]", requires = "kernel")]
    pub share: Vec<String>,
    /// A virtio-fs device served by a vhost-user backend you run: socket=PATH,tag=NAME.
    /// Repeatable.
    #[arg(long, value_name = "socket=PATH,tag=NAME", requires = "kernel")]
    pub fs: Vec<String>,
    /// Where the serial console's output goes: a file, or - for stdout. Repeat to write to
    /// several places. [default: stdout]
    #[arg(long, value_name = "PATH")]
    pub serial_out: Vec<PathBuf>,
    /// Most bytes written to each --serial-out file (or PUT /serial file); output beyond it is
    /// dropped, with a warning. Guards the host's disk against a guest that prints without end.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SERIAL_FILE_LIMIT)]
    pub serial_out_max_bytes: u64,
    /// Stop the guest after SECS seconds (decimals allowed) and exit with status 124.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Firecracker config-file JSON describing the microVM (boot-source, machine-config, ...).
    #[arg(long, value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// Do not serve the REST API (Firecracker's flag; ember serves none without --api-sock).
    #[arg(long, action = ArgAction::SetTrue)]
    pub no_api: bool,
    /// Serve Firecracker's REST API on this Unix socket (created owner-only; a stale socket
    /// is replaced). Without --kernel or --config-file the VM waits for InstanceStart.
    #[arg(long, value_name = "PATH", conflicts_with = "no_api")]
    pub api_sock: Option<PathBuf>,
    /// The microVM's id, reported by the API's GET /.
    #[arg(long, value_name = "ID", default_value = "anonymous-instance")]
    pub id: String,
    /// Largest API request body accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_PAYLOAD)]
    pub http_api_max_payload_size: usize,
    /// A JSON file put in the MMDS data store at start (the metadata guests read from the
    /// MMDS; `PUT /mmds` replaces it).
    #[arg(long, value_name = "PATH")]
    pub metadata: Option<PathBuf>,
    /// Largest MMDS data store, in bytes of compact JSON; metadata beyond it is refused.
    /// [default: --http-api-max-payload-size]
    #[arg(long, value_name = "BYTES")]
    pub mmds_size_limit: Option<usize>,
    /// Make every virtio device a virtio-pci device on PCI bus 0 instead of virtio-mmio
    /// (Firecracker's flag), for kernels that find their disks on PCI (distribution kernels);
    /// `pci=off` is dropped from the kernel command line.
    #[arg(long, action = ArgAction::SetTrue)]
    pub enable_pci: bool,
    /// Firecracker's boot timer: log "Guest-boot-time = N us" when the guest writes 123 to
    /// MMIO address 0xd0000000.
    #[arg(long, action = ArgAction::SetTrue)]
    pub boot_timer: bool,
    /// Log level of ember's own messages: Off, Error, Warning, Info, Debug or Trace.
    #[arg(long, value_name = "LEVEL", default_value = "Warning", value_parser = parse_level)]
    pub level: log::LevelFilter,
    /// Write ember's log to this file or named pipe instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Show each log line's level.
    #[arg(long, action = ArgAction::SetTrue)]
    pub show_level: bool,
    /// Show each log line's source file and line.
    #[arg(long, action = ArgAction::SetTrue)]
    pub show_log_origin: bool,
    /// Only log messages from this module (e.g. `vmm::lifecycle`).
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,
    /// A launcher's start timestamp (CLOCK_MONOTONIC, microseconds): with --api-sock, the time
    /// from it to the API being served is reported as `api_server.process_startup_time_us`
    /// in the metrics.
    #[arg(long, value_name = "US")]
    pub start_time_us: Option<u64>,
    /// A launcher's CPU-time stamp (CLOCK_PROCESS_CPUTIME_ID, microseconds): with --api-sock,
    /// reported as `api_server.process_startup_time_cpu_us`.
    #[arg(long, value_name = "US")]
    pub start_time_cpu_us: Option<u64>,
    /// The launcher's own CPU time (microseconds), added to the reported CPU start-up time.
    #[arg(long, value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,
    /// Seccomp filters to install instead of ember's own: a seccompiler JSON description with
    /// one filter per thread kind (vmm, api, vcpu, block, net, vsock, rng, fs, serial_out).
    /// Firecracker's compiled (bincode) filter files are not read.
    #[arg(long, value_name = "PATH", conflicts_with = "no_seccomp")]
    pub seccomp_filter: Option<PathBuf>,
    /// Run without seccomp filters (ember installs one per thread by default).
    #[arg(long, action = ArgAction::SetTrue)]
    pub no_seccomp: bool,
    /// Firecracker's snapshot data format version; ember has no snapshots yet and says so.
    #[arg(long, action = ArgAction::SetTrue, exclusive = true)]
    pub snapshot_version: bool,
    /// The data format version of a snapshot file; ember has no snapshots yet and says so.
    #[arg(long, value_name = "PATH", exclusive = true)]
    pub describe_snapshot: Option<PathBuf>,
    /// Write device counters as JSON lines to this file or named pipe (every 60 s, on
    /// FlushMetrics and at exit).
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,
    /// Words for the guest's init, appended to the kernel command line after `--` (ember's
    /// test initramfs runs them as one shell command).
    #[arg(last = true, value_name = "INIT ARGS", requires = "kernel")]
    pub init_args: Vec<String>,
}

impl Cli {
    /// The arguments, whichever form was used.
    pub fn args(&self) -> &VmArgs {
        match &self.command {
            Some(Command::Run(args)) => args,
            Some(Command::Image(_)) | None => &self.args,
        }
    }

    /// The image command, when one was given (`ember pull`, `images`, `rmi`, `image prune`).
    pub fn image_command(&self) -> Option<&ImageCommand> {
        match &self.command {
            Some(Command::Image(command)) => Some(command),
            _ => None,
        }
    }
}

/// A `--level` value.
pub fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    logger::parse_level(s).map_err(|e| e.to_string())
}

/// A `--timeout` value: seconds, decimals allowed, more than 0.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("the timeout must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("'{s}': {e}"))
}

/// Errors in a `--disk` or `--net` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    /// No path before the options.
    #[error("--disk '{0}' has no path")]
    NoPath(String),
    /// An option ember does not know.
    #[error("--disk '{arg}': unknown option '{option}' (expected ro, root, async or id=NAME)")]
    UnknownOption {
        /// The whole argument.
        arg: String,
        /// The bad option.
        option: String,
    },
    /// A `--net` option ember does not know.
    #[error(
        "--net '{arg}': unknown option '{option}' (expected tap=NAME, mac=MAC, mtu=N or id=NAME)"
    )]
    UnknownNetOption {
        /// The whole argument.
        arg: String,
        /// The bad option.
        option: String,
    },
    /// `--net` without `tap=`.
    #[error("--net '{0}' names no TAP (expected tap=NAME[,mac=MAC][,mtu=N][,id=NAME])")]
    NoTap(String),
    /// An MTU that is not a number.
    #[error("--net '{0}': mtu must be a number from 68 to 65535")]
    Mtu(String),
    /// A `--share` or `--fs` value that cannot be parsed.
    #[error(transparent)]
    Share(#[from] crate::share::FsConfigError),
    /// A `--vsock` value that is not `CID,PATH`.
    #[error("--vsock '{0}' is not CID,PATH (a context id of 3 or more, then a socket path)")]
    Vsock(String),
}

/// Parses `CID,PATH`; the range of the CID is checked with the rest of the configuration.
pub fn parse_vsock(arg: &str) -> Result<VsockConfig, ArgError> {
    let bad = || ArgError::Vsock(arg.into());
    let (cid, path) = arg.split_once(',').ok_or_else(bad)?;
    Ok(VsockConfig {
        vsock_id: None,
        guest_cid: cid.parse().map_err(|_| bad())?,
        uds_path: path.into(),
    })
}

/// Parses `PATH[,ro][,root][,async][,id=NAME]` (PATH may be `socket=SOCKET`); `index` numbers disks without an id.
pub fn parse_disk(arg: &str, index: usize) -> Result<Drive, ArgError> {
    let mut parts = arg.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ArgError::NoPath(arg.into()))?;
    let mut drive = Drive {
        drive_id: format!("disk{index}"),
        ..Default::default()
    };
    match path.strip_prefix("socket=") {
        Some(socket) => drive.socket = Some(socket.into()),
        None => drive.path_on_host = path.into(),
    }
    for option in parts {
        match option {
            "ro" => drive.is_read_only = true,
            "root" => drive.is_root_device = true,
            "async" => drive.io_engine = Some("Async".into()),
            _ => match option.strip_prefix("id=") {
                Some(id) => drive.drive_id = id.into(),
                None => {
                    return Err(ArgError::UnknownOption {
                        arg: arg.into(),
                        option: option.into(),
                    });
                }
            },
        }
    }
    Ok(drive)
}

/// Parses `tap=NAME[,mac=MAC][,mtu=N][,id=NAME]`; `index` names interfaces without an id
/// (`eth0`, `eth1`, ... as the guest will probably call them).
pub fn parse_net(arg: &str, index: usize) -> Result<NetworkInterface, ArgError> {
    let mut iface = NetworkInterface {
        iface_id: format!("eth{index}"),
        ..Default::default()
    };
    for option in arg.split(',') {
        let unknown = || ArgError::UnknownNetOption {
            arg: arg.into(),
            option: option.into(),
        };
        let (key, value) = option.split_once('=').ok_or_else(unknown)?;
        match key {
            "tap" => iface.host_dev_name = value.into(),
            "mac" => iface.guest_mac = Some(value.into()),
            "mtu" => iface.mtu = Some(value.parse().map_err(|_| ArgError::Mtu(arg.into()))?),
            "id" => iface.iface_id = value.into(),
            _ => return Err(unknown()),
        }
    }
    if iface.host_dev_name.is_empty() {
        return Err(ArgError::NoTap(arg.into()));
    }
    Ok(iface)
}

/// Errors turning the command line into a configuration.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A `--disk` value is malformed.
    #[error(transparent)]
    Disk(#[from] ArgError),
    /// The config file cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl VmArgs {
    /// The kernel command line: `--cmdline` (or the default), then `--` and the init words,
    /// each quoted if it has spaces so the kernel hands it to init as one argument.
    fn boot_args(&self) -> String {
        let mut args = self
            .cmdline
            .clone()
            .unwrap_or_else(|| DEFAULT_CMDLINE.into());
        if !self.init_args.is_empty() {
            args.push_str(" --");
            for word in &self.init_args {
                if word.contains(char::is_whitespace) {
                    args.push_str(&format!(" \"{word}\""));
                } else {
                    args.push(' ');
                    args.push_str(word);
                }
            }
        }
        args
    }

    /// The MMDS data store's limit: `--mmds-size-limit`, else the API's largest body (as in
    /// Firecracker, so that any body the API takes fits).
    pub fn mmds_size_limit(&self) -> usize {
        self.mmds_size_limit
            .unwrap_or(self.http_api_max_payload_size)
    }

    /// Whether the flags (or a config file) describe a VM to boot right away.
    pub fn describes_vm(&self) -> bool {
        self.kernel.is_some() || self.config_file.is_some()
    }

    /// `--metrics-path` as a configuration section.
    pub fn metrics(&self) -> Option<MetricsConfig> {
        self.metrics_path.as_ref().map(|p| MetricsConfig {
            metrics_path: p.display().to_string(),
        })
    }

    /// The seccomp filters `--no-seccomp` and `--seccomp-filter` ask for.
    pub fn seccomp_mode(&self) -> seccomp::Mode {
        match (&self.seccomp_filter, self.no_seccomp) {
            (_, true) => seccomp::Mode::Off,
            (Some(path), false) => seccomp::Mode::File(path.clone()),
            (None, false) => seccomp::Mode::BuiltIn,
        }
    }

    /// The options of this run that Firecracker's configuration model has no place for.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            timeout: self.timeout,
            serial_out: self.serial_out.clone(),
            serial_out_max_bytes: self.serial_out_max_bytes,
            boot_timer: self.boot_timer,
            transport: if self.enable_pci {
                VirtioTransport::Pci
            } else {
                VirtioTransport::Mmio
            },
            startup: Default::default(),
        }
    }

    /// The `--share` and `--fs` devices, in that order.
    fn shares(&self) -> Result<Vec<FsConfig>, ArgError> {
        let shares = self.share.iter().map(|s| share::parse_share(s));
        let others = self.fs.iter().map(|f| share::parse_fs(f));
        Ok(shares.chain(others).collect::<Result<_, _>>()?)
    }

    /// Why ember cannot do what a snapshot flag asks, if one was given.
    pub fn snapshot_request(&self) -> Option<String> {
        let what = if self.snapshot_version {
            "--snapshot-version".to_owned()
        } else {
            let path = self.describe_snapshot.as_ref()?;
            format!("--describe-snapshot {}", path.display())
        };
        Some(format!(
            "{what}: ember has no snapshots yet, so it has no snapshot data format"
        ))
    }

    /// The microVM the flags (or the config file) describe, in Firecracker's model (checked
    /// when it becomes a [`crate::spec::VmSpec`]). `--metrics-path` wins over a config
    /// file's `metrics`.
    pub fn vm_config(&self) -> Result<VmConfig, CliError> {
        let mut cfg = match &self.config_file {
            Some(path) => config::load_config_file(path)?,
            None => VmConfig {
                boot_source: self.kernel.as_ref().map(|kernel| BootSource {
                    kernel_image_path: kernel.display().to_string(),
                    initrd_path: self.initrd.as_ref().map(|p| p.display().to_string()),
                    boot_args: Some(self.boot_args()),
                }),
                machine_config: MachineConfig {
                    vcpu_count: self.vcpus,
                    mem_size_mib: self.memory,
                    ..Default::default()
                },
                drives: self
                    .disk
                    .iter()
                    .enumerate()
                    .map(|(i, d)| parse_disk(d, i))
                    .collect::<Result<_, _>>()?,
                network_interfaces: self
                    .net
                    .iter()
                    .enumerate()
                    .map(|(i, n)| parse_net(n, i))
                    .collect::<Result<_, _>>()?,
                vsock: self.vsock.as_deref().map(parse_vsock).transpose()?,
                fs: self.shares()?,
                ..Default::default()
            },
        };
        if let Some(metrics) = self.metrics() {
            cfg.metrics = Some(metrics);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ember").chain(args.iter().copied()))
    }

    #[test]
    fn help_speaks_to_users_and_shows_every_disk_option_and_the_whole_default_cmdline() {
        use clap::CommandFactory;
        let short = Cli::command().render_help().to_string();
        let long = Cli::command().render_long_help().to_string();
        assert!(short.starts_with("ember: boot a Linux kernel"), "{short}");
        for help in [&short, &long] {
            assert!(
                !help.contains("event loop"),
                "internal description:\n{help}"
            );
            assert!(help.contains("Ctrl-A x"), "{help}");
            assert!(
                help.contains("PATH[,ro][,root][,async][,id=NAME]"),
                "{help}"
            );
        }
        assert!(long.contains(DEFAULT_CMDLINE), "{long}");
        assert!(
            long.contains("Ctrl-A Ctrl-A") && long.contains("Ctrl-A h"),
            "{long}"
        );
    }

    #[test]
    fn flags_build_the_config_model() {
        let cli = parse(&[
            "--kernel", "vmlinux", "--vcpus", "2", "--memory", "256", "--initrd", "i.cpio",
        ])
        .unwrap();
        let cfg = cli.args().vm_config().unwrap();
        let boot = cfg.boot_source.unwrap();
        assert_eq!(boot.kernel_image_path, "vmlinux");
        assert_eq!(boot.initrd_path.as_deref(), Some("i.cpio"));
        assert_eq!(boot.boot_args.as_deref(), Some(DEFAULT_CMDLINE));
        assert_eq!(cfg.machine_config.vcpu_count, 2);
        assert_eq!(cfg.machine_config.mem_size_mib, 256);
    }

    #[test]
    fn words_after_double_dash_go_to_init() {
        let cli = parse(&[
            "--kernel",
            "k",
            "--cmdline",
            "console=ttyS0",
            "--",
            "echo hi; reboot -f",
            "x",
        ])
        .unwrap();
        let boot = cli.args().vm_config().unwrap().boot_source.unwrap();
        assert_eq!(
            boot.boot_args.as_deref(),
            Some("console=ttyS0 -- \"echo hi; reboot -f\" x")
        );
    }

    #[test]
    fn the_version_reads_as_launchers_expect_and_snapshot_flags_are_refused() {
        use clap::CommandFactory;
        let version = Cli::command().render_version();
        assert_eq!(
            version.trim_end(),
            concat!("ember v", env!("CARGO_PKG_VERSION"))
        );
        let cli = parse(&["--snapshot-version"]).unwrap();
        assert!(
            cli.args()
                .snapshot_request()
                .unwrap()
                .contains("no snapshots")
        );
        let cli = parse(&["--describe-snapshot", "vm.snap"]).unwrap();
        assert!(cli.args().snapshot_request().unwrap().contains("vm.snap"));
        assert!(parse(&["--snapshot-version", "--kernel", "k"]).is_err());
        assert!(parse(&["--no-seccomp", "--seccomp-filter", "f"]).is_err());
        let mode = |args: &[&str]| parse(args).unwrap().args().seccomp_mode();
        assert_eq!(mode(&[]), seccomp::Mode::BuiltIn);
        assert_eq!(mode(&["--no-seccomp"]), seccomp::Mode::Off);
        assert_eq!(
            mode(&["--seccomp-filter", "f.json"]),
            seccomp::Mode::File("f.json".into())
        );
        assert_eq!(parse(&[]).unwrap().args().snapshot_request(), None);
    }

    #[test]
    fn the_mmds_size_limit_defaults_to_the_largest_api_body() {
        assert_eq!(parse(&[]).unwrap().args().mmds_size_limit(), 51200);
        let cli = parse(&["--http-api-max-payload-size", "1000"]).unwrap();
        assert_eq!(cli.args().mmds_size_limit(), 1000);
        let cli = parse(&[
            "--http-api-max-payload-size",
            "1000",
            "--mmds-size-limit",
            "7",
        ]);
        assert_eq!(cli.unwrap().args().mmds_size_limit(), 7);
        assert!(parse(&["--mmds-size-limit", "-1"]).is_err());
        let cli = parse(&["--metadata", "meta.json"]).unwrap();
        assert_eq!(cli.args().metadata, Some(PathBuf::from("meta.json")));
    }

    #[test]
    fn config_file_conflicts_with_vm_flags() {
        assert!(parse(&["--config-file", "c.json", "--kernel", "k"]).is_err());
        assert!(parse(&["--config-file", "c.json", "--no-api", "--timeout", "3"]).is_ok());
    }

    #[test]
    fn bad_numbers_are_rejected_by_the_parser() {
        for args in [
            &["--kernel", "k", "--vcpus", "-1"][..],
            &["--kernel", "k", "--vcpus", "300"],
            &["--kernel", "k", "--memory", "lots"],
            &["--timeout", "0"],
            &["--timeout", "soon"],
            &["--level", "chatty"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
        assert_eq!(
            parse(&["--timeout", "1.5"]).unwrap().args().timeout,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse(&["--level", "debug"]).unwrap().args().level,
            log::LevelFilter::Debug
        );
    }

    /// What `ember` boots for these flags, or why not.
    fn spec(args: &[&str]) -> Result<crate::spec::VmSpec, String> {
        let cli = parse(args).map_err(|e| e.to_string())?;
        let cfg = cli.args().vm_config().map_err(|e| e.to_string())?;
        crate::spec::VmSpec::new(&cfg, &cli.args().run_options()).map_err(|e| e.to_string())
    }

    #[test]
    fn share_and_fs_flags_become_fs_devices_after_the_others_in_flag_order() {
        let tmp = std::env::temp_dir();
        let dir = tmp.to_str().unwrap();
        let ok = spec(&[
            "--kernel",
            "k",
            "--vsock",
            "3,/v.sock",
            "--fs",
            "socket=/run/e.sock,tag=ext",
            "--share",
            &format!("{dir},ro"),
        ])
        .unwrap();
        let tags: Vec<_> = ok.shares.iter().map(|s| s.tag.as_str()).collect();
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert_eq!(tags, [name, "ext"]);
        assert_eq!(ok.shares[0].slot, crate::device_manager::Slot::nth(1));
        assert!(ok.cmdline.contains(&ok.shares[1].slot.cmdline_param()));
        let err = spec(&["--kernel", "k", "--share", &format!("{dir},rw")]).unwrap_err();
        assert!(err.contains("unknown option 'rw'"), "{err}");
        assert!(parse(&["--share", dir]).is_err(), "--share needs --kernel");
    }

    #[test]
    fn zero_vcpus_and_no_kernel_are_config_errors() {
        let err = spec(&["--kernel", "k", "--vcpus", "0"]).unwrap_err();
        assert!(err.contains("vcpu_count"), "{err}");
        let err = spec(&[]).unwrap_err();
        assert!(err.contains("--kernel"), "{err}");
        let ok = spec(&["--kernel", "k", "--serial-out", "a.log", "--timeout", "2"]).unwrap();
        assert_eq!(ok.serial_out, [PathBuf::from("a.log")]);
        assert_eq!(ok.timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn enable_pci_puts_the_virtio_devices_on_pci() {
        let pci = spec(&["--kernel", "k", "--disk", "r,root", "--enable-pci"]).unwrap();
        assert_eq!(pci.transport, VirtioTransport::Pci);
        assert!(!pci.cmdline.contains("virtio_mmio") && !pci.cmdline.contains("pci=off"));
        let mmio = spec(&["--kernel", "k", "--disk", "r,root"]).unwrap();
        assert_eq!(mmio.transport, VirtioTransport::Mmio);
        assert!(mmio.cmdline.contains("virtio_mmio.device=") && mmio.cmdline.contains("pci=off"));
    }

    #[test]
    fn disk_arguments() {
        let d = parse_disk("img,ro,root,id=data", 3).unwrap();
        assert_eq!(
            (d.path_on_host.as_str(), d.drive_id.as_str()),
            ("img", "data")
        );
        assert!(d.is_read_only && d.is_root_device);
        assert_eq!(d.io_engine, None, "Sync is the default");
        let d = parse_disk("img,async", 0).unwrap();
        assert_eq!(d.io_engine.as_deref(), Some("Async"));
        assert_eq!(parse_disk("img", 3).unwrap().drive_id, "disk3");
        assert!(matches!(parse_disk(",ro", 0), Err(ArgError::NoPath(_))));
        let v = parse_disk("socket=/run/b.sock,root,id=vu", 0).unwrap();
        assert_eq!(
            (
                v.socket.as_deref(),
                v.path_on_host.as_str(),
                v.drive_id.as_str()
            ),
            (Some("/run/b.sock"), "", "vu")
        );
        assert!(v.is_root_device);
        assert!(matches!(
            parse_disk("img,rw", 0),
            Err(ArgError::UnknownOption { .. })
        ));
    }

    #[test]
    fn net_arguments() {
        let n = parse_net("tap=tap0,mac=06:00:00:00:00:01,mtu=9000,id=lan", 0).unwrap();
        assert_eq!(
            (
                n.iface_id.as_str(),
                n.host_dev_name.as_str(),
                n.guest_mac.as_deref(),
                n.mtu
            ),
            ("lan", "tap0", Some("06:00:00:00:00:01"), Some(9000))
        );
        assert_eq!(parse_net("tap=t", 2).unwrap().iface_id, "eth2");
        assert_eq!(
            parse_net("mac=06:00:00:00:00:01", 0),
            Err(ArgError::NoTap("mac=06:00:00:00:00:01".into()))
        );
        assert!(matches!(
            parse_net("tap0", 0),
            Err(ArgError::UnknownNetOption { .. })
        ));
        assert!(matches!(
            parse_net("tap=t,speed=10", 0),
            Err(ArgError::UnknownNetOption { .. })
        ));
        assert_eq!(
            parse_net("tap=t,mtu=big", 0),
            Err(ArgError::Mtu("tap=t,mtu=big".into()))
        );
        let v = parse_vsock("3,/run/v.sock").unwrap();
        assert_eq!((v.guest_cid, v.uds_path.as_str()), (3, "/run/v.sock"));
        for bad in ["3", "x,/v", ",/v", "-1,/v"] {
            assert_eq!(parse_vsock(bad), Err(ArgError::Vsock(bad.into())));
        }
        let err = spec(&["--kernel", "k", "--vsock", "2,/v.sock"]).unwrap_err();
        assert!(err.contains("guest_cid must be 3 or more"), "{err}");
        let ok = spec(&["--kernel", "k", "--vsock", "7,/v.sock"]).unwrap();
        assert_eq!(ok.vsock.map(|v| v.guest_cid), Some(7));
        let err = spec(&[
            "--kernel",
            "k",
            "--net",
            "tap=tap0",
            "--net",
            "tap=tap1,mac=zz",
        ])
        .unwrap_err();
        assert!(
            err.contains("network interface 'eth1': guest_mac 'zz' is not a MAC address"),
            "{err}"
        );
    }
}

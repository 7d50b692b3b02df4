//! ember's container init: process 1 of an `ember run` guest.
//!
//! It reads the configuration ember put in the initramfs (`guest.rs`), mounts the image (the
//! read-only ext4 on /dev/vda) under an overlay whose upper layer is a tmpfs (or, with
//! `--rootfs-size`, the empty ext4 on the disk ember names), mounts proc, sys,
//! dev, devpts, /dev/shm and the `-v` shares, sets the host name, /etc/hosts, resolv.conf and
//! eth0, switches root into the overlay, starts the program as the configured user, forwards
//! SIGTERM, SIGINT and SIGHUP to it, reaps every orphan, and reports the program's exit status
//! through ember's exit port (I/O port 0xf4): ember exits with it, as `docker run` does (126:
//! cannot be run, 127: not found, 128+N: killed by signal N, 125: the container could not be
//! set up, with a one-line reason).
//!
//! vmm/build.rs compiles this file with rustc alone (`std` only, statically linked, panic=abort)
//! so that it needs nothing from the image, not even a shell or a C library; the few system
//! calls `std` does not wrap are declared below against the C library linked into it. It prints
//! nothing unless something fails.
#![deny(unsafe_op_in_unsafe_fn)]
// guest.rs is shared with ember, which also uses the parts that write the configuration.
#![allow(dead_code)]

#[path = "../src/run/guest.rs"]
mod guest;
mod net;
mod sys;

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use guest::{CONFIG_PATH, GuestConfig};

/// Exit status when the container cannot be set up (Docker's status for its own errors).
const SETUP_FAILED: u8 = 125;

/// The image's read-only root, the tmpfs or disk holding the overlay's upper layer, and the
/// overlay.
const LOWER: &str = "/lower";
const RW: &str = "/rw";
const ROOT: &str = "/newroot";

fn main() {
    let code = match run() {
        Ok(code) => code,
        Err(why) => {
            eprintln!("ember-init: {why}");
            SETUP_FAILED
        }
    };
    sys::power_off(code);
}

/// Sets the container up, runs the program, and returns its exit status.
fn run() -> Result<u8, String> {
    // /dev first, so that even a configuration error reaches ember through /dev/port.
    mkdir("/dev")?;
    sys::mount("devtmpfs", "/dev", "devtmpfs", sys::MS_NOSUID, "")?;
    let bytes =
        std::fs::read(CONFIG_PATH).map_err(|e| format!("cannot read {CONFIG_PATH}: {e}"))?;
    let cfg = GuestConfig::decode(&bytes).map_err(|e| e.to_string())?;
    mount_root(&cfg)?;
    setup_names(&cfg)?;
    net::configure(cfg.net.as_ref())?;
    sys::switch_root(ROOT)?;
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let id = guest::resolve_user(&cfg.user, &read("/etc/passwd"), &read("/etc/group"))
        .map_err(|e| e.to_string())?;
    let mut env = cfg.env.clone();
    let mut default = |name: &str, value: &str| {
        if !env.iter().any(|e| e.split('=').next() == Some(name)) {
            env.push(format!("{name}={value}"));
        }
    };
    default("HOME", &id.home);
    default("HOSTNAME", &cfg.hostname);
    if cfg.tty {
        default("TERM", "xterm");
    }
    sys::set_console_mode(cfg.tty, cfg.term_size)?;
    let cwd = if cfg.cwd.is_empty() { "/" } else { &cfg.cwd };
    // Docker creates a WorkingDir the image does not have.
    std::fs::create_dir_all(cwd)
        .map_err(|e| format!("cannot create the working directory {cwd}: {e}"))?;
    let signals = sys::SignalSet::block(&[sys::SIGCHLD, sys::SIGTERM, sys::SIGINT, sys::SIGHUP])?;
    let mut command = Command::new(&cfg.argv[0]);
    command
        .args(&cfg.argv[1..])
        .env_clear()
        .envs(env.iter().map(|e| e.split_once('=').unwrap_or((e, ""))))
        .current_dir(cwd);
    let groups = id.groups.clone();
    let (uid, gid) = (id.uid, id.gid);
    // SAFETY: the closure runs in the forked child before exec and only makes system calls
    // (setsid, open, ioctl, dup2, setgroups, setgid, setuid), which are async-signal-safe.
    unsafe {
        command.pre_exec(move || sys::enter_session_as(uid, gid, &groups));
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let program = &cfg.argv[0];
            let (code, what) = if e.kind() == std::io::ErrorKind::NotFound {
                (127, "not found")
            } else {
                (126, "cannot be run")
            };
            eprintln!("ember-init: '{program}' {what}: {e}");
            return Ok(code);
        }
    };
    Ok(signals.supervise(child.id() as i32))
}

/// Mounts the image under the overlay at [`ROOT`], and the kernel's filesystems and the
/// volumes inside it.
fn mount_root(cfg: &GuestConfig) -> Result<(), String> {
    for dir in [LOWER, RW, ROOT] {
        mkdir(dir)?;
    }
    sys::mount("/dev/vda", LOWER, "ext4", sys::MS_RDONLY, "")
        .map_err(|e| format!("{e} (the image's root filesystem, /dev/vda)"))?;
    match &cfg.upper_disk {
        // The disk is an empty ext4 whose unused blocks read as zeroes: its inode tables need
        // no initialising; discard hands the blocks of deleted files back to the host.
        Some(disk) => sys::mount(disk, RW, "ext4", 0, "noinit_itable,discard")
            .map_err(|e| format!("{e} (the --rootfs-size disk)"))?,
        None => sys::mount("tmpfs", RW, "tmpfs", 0, "mode=0755")?,
    }
    for dir in ["/rw/upper", "/rw/work"] {
        mkdir(dir)?;
    }
    let options = format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work");
    sys::mount("overlay", ROOT, "overlay", 0, &options)?;
    let inside = |path: &str| format!("{ROOT}{path}");
    for dir in ["/proc", "/sys", "/dev", "/etc"] {
        mkdir(&inside(dir))?;
    }
    sys::mount("/dev", &inside("/dev"), "", sys::MS_MOVE, "")?;
    sys::mount(
        "proc",
        &inside("/proc"),
        "proc",
        sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC,
        "",
    )?;
    sys::mount(
        "sysfs",
        &inside("/sys"),
        "sysfs",
        sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC,
        "",
    )?;
    for dir in ["/dev/pts", "/dev/shm"] {
        mkdir(&inside(dir))?;
    }
    sys::mount(
        "devpts",
        &inside("/dev/pts"),
        "devpts",
        sys::MS_NOSUID | sys::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    sys::mount(
        "shm",
        &inside("/dev/shm"),
        "tmpfs",
        sys::MS_NOSUID | sys::MS_NODEV,
        "mode=1777",
    )?;
    for v in &cfg.volumes {
        let target = inside(&v.target);
        std::fs::create_dir_all(&target)
            .map_err(|e| format!("cannot create the mount point {}: {e}", v.target))?;
        let flags = if v.read_only { sys::MS_RDONLY } else { 0 };
        sys::mount(&v.tag, &target, "virtiofs", flags, "")
            .map_err(|e| format!("{e} (the -v volume for {})", v.target))?;
    }
    Ok(())
}

/// The host name, and the /etc/hosts and /etc/resolv.conf the container sees (written to the
/// overlay's upper layer: the image is untouched).
fn setup_names(cfg: &GuestConfig) -> Result<(), String> {
    sys::sethostname(&cfg.hostname)?;
    let address = cfg
        .net
        .as_ref()
        .and_then(|n| n.address.split('/').next())
        .unwrap_or("127.0.1.1");
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{}\n",
        cfg.hostname
    );
    write(&format!("{ROOT}/etc/hosts"), &hosts)?;
    write(
        &format!("{ROOT}/etc/hostname"),
        &format!("{}\n", cfg.hostname),
    )?;
    if let Some(net) = cfg.net.as_ref().filter(|n| !n.dns.is_empty()) {
        let conf: String = net
            .dns
            .iter()
            .map(|d| format!("nameserver {d}\n"))
            .collect();
        // A symlink (systemd-resolved's stub) would send the write into the lower layer's target.
        let path = format!("{ROOT}/etc/resolv.conf");
        let _ = std::fs::remove_file(&path);
        write(&path, &conf)?;
    }
    Ok(())
}

fn mkdir(path: &str) -> Result<(), String> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(format!("cannot create {path}: {e}"))
        }
        _ => Ok(()),
    }
}

fn write(path: &str, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {path}: {e}"))
}

/// A C string for a system call; the configuration's strings come from ember and hold no NUL.
fn c_string(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("'{s}' contains a NUL byte"))
}

//! `ember-jailer` (the `jailer` package's test; it runs the ember binary of the same target
//! directory, so build ember first when running it alone: `cargo build -p ember`). As root
//! with KVM: ember started through the jailer runs as uid/gid 123 in the jail's root, in the
//! network namespace and a memory-limited cgroup asked for (v2 where the host's unified
//! hierarchy has the memory controller, else v1), serves its API on the socket path
//! firecracker-go-sdk uses inside the jail, and boots a tiny guest through it; with
//! --daemonize and --new-pid-ns it is PID 1 of its own namespace, detached, its host pid in
//! the pid file, serving the API at Firecracker's default socket without being told. Bad arguments get errors naming the problem and leave no jail or cgroup.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::api::{START, json};
use common::*;

const LIMIT: Duration = Duration::from_secs(30);
const MEMORY_LIMIT: &str = "268435456";
/// The socket path firecracker-go-sdk passes (`--api-sock`), inside the jail.
const SOCKET: &str = "/run/firecracker.socket";

fn jailer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember-jailer"))
}

/// A memory cgroup parent for the test's jails, removed (with the jails' cgroups in it) when
/// dropped: on a v2 host a cgroup under the root (a v2 cgroup with processes cannot have
/// children with controllers, so not under the test's own); on a v1 host one under the test's
/// own memory cgroup, so that the jail stays inside any limit the test runs under.
struct MemoryCgroup {
    version: u8,
    /// `--parent-cgroup`.
    parent: String,
    /// The file that limits memory.
    file: &'static str,
    /// The hierarchy's mount point.
    mount: PathBuf,
}

impl MemoryCgroup {
    fn new() -> Self {
        let mounts = fs::read_to_string("/proc/mounts").unwrap();
        let mount_of = |fstype: &str, option: Option<&str>| {
            mounts.lines().find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let fits = f.len() > 3
                    && f[2] == fstype
                    && option.is_none_or(|o| f[3].split(',').any(|x| x == o));
                fits.then(|| PathBuf::from(f[1]))
            })
        };
        let name = format!("ember-jailer-test-{}", std::process::id());
        if let Some(mount) = mount_of("cgroup2", None) {
            let controllers = fs::read_to_string(mount.join("cgroup.controllers"));
            if controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
                return Self {
                    version: 2,
                    parent: name,
                    file: "memory.max",
                    mount,
                };
            }
        }
        let mount = mount_of("cgroup", Some("memory")).unwrap_or_else(|| {
            panic!(
                "this test needs the memory cgroup controller, in the cgroup v2 hierarchy or a \
                 v1 mount; neither is in /proc/mounts:\n{mounts}"
            )
        });
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.trim_matches('/')))
            .unwrap();
        let parent = if own.is_empty() {
            name
        } else {
            format!("{own}/{name}")
        };
        Self {
            version: 1,
            parent,
            file: "memory.limit_in_bytes",
            mount,
        }
    }

    fn dir(&self) -> PathBuf {
        self.mount.join(&self.parent)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(self.dir()) {
            for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                let _ = fs::remove_dir(entry.path());
            }
        }
        let _ = fs::remove_dir(self.dir());
    }
}

/// Fails with an explanation unless the jailer can run (root and KVM), or says it skips.
fn can_jail() -> bool {
    net_available() && kvm_available()
}

/// Waits for `path` to appear while `child` runs.
fn wait_for(path: &Path, child: &mut std::process::Child) {
    let deadline = Instant::now() + LIMIT;
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!(
                "the jailer ended ({status}) before {} appeared: {err}",
                path.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `/proc/PID/status`'s value for `key`, words separated by one space.
fn status(pid: u32, key: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn ember_runs_jailed_as_the_user_in_the_root_netns_and_cgroup_asked_for_and_boots() {
    if !can_jail() {
        return;
    }
    let cgroup = MemoryCgroup::new();
    let ns = NetNs::new("jail", &[]);
    let netns = PathBuf::from(format!("/var/run/netns/{}", ns.name));
    let base = tempdir("jailer-boot");
    // The caller puts the kernel in the jail first, as Kata does.
    let root = base.join("ember/t1/root");
    fs::create_dir_all(&root).unwrap();
    fs::copy(guest("exit_code"), root.join("guest.elf")).unwrap();

    let child = jailer()
        .args(["--id", "t1", "--exec-file"])
        .arg(ember_path())
        .args(["--uid", "123", "--gid", "123", "--chroot-base-dir"])
        .arg(&base)
        .arg("--netns")
        .arg(&netns)
        .args(["--cgroup-version", &cgroup.version.to_string()])
        .args(["--cgroup", &format!("{}={MEMORY_LIMIT}", cgroup.file)])
        .args(["--parent-cgroup", &cgroup.parent])
        .args(["--", "--api-sock", SOCKET])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed if the test fails half-way.
    let mut vm = Ember {
        child: Some(child),
        sock: root.join(SOCKET.trim_start_matches('/')),
        dir: base.clone(),
    };
    wait_for(&vm.sock, vm.child.as_mut().unwrap());
    // Without --new-pid-ns the jailer becomes ember: the same pid.
    let pid = vm.pid();

    assert_eq!(status(pid, "Uid"), "123 123 123 123");
    assert_eq!(status(pid, "Gid"), "123 123 123 123");
    assert_eq!(
        status(pid, "Groups"),
        "",
        "supplementary groups are dropped"
    );
    // Its root, in a mount namespace of its own, reads as "/" there: it is the jail's
    // directory by device and inode.
    let id = |m: fs::Metadata| (m.dev(), m.ino());
    assert_eq!(
        id(fs::metadata(format!("/proc/{pid}/root")).unwrap()),
        id(fs::metadata(&root).unwrap()),
        "ember's root is not {}",
        root.display()
    );
    let ns_ino = fs::metadata(&netns).unwrap().ino();
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        Path::new(&format!("net:[{ns_ino}]"))
    );
    assert_ne!(
        fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        fs::read_link("/proc/self/ns/mnt").unwrap(),
        "the jail has its own mount namespace"
    );
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let want = format!("/{}/t1", cgroup.parent);
    // v1: "N:memory:/PATH"; v2: "0::/PATH".
    let prefix = if cgroup.version == 1 {
        ":memory:"
    } else {
        "0::"
    };
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains(prefix) && l.ends_with(&want)),
        "{want} is not ember's memory cgroup:\n{cgroups}"
    );
    let limit = fs::read_to_string(cgroup.dir().join("t1").join(cgroup.file)).unwrap();
    assert_eq!(limit.trim(), MEMORY_LIMIT);
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().skip(3).take(2).eq(["2048", "2048"])),
        "no-file is not Firecracker's default 2048:\n{limits}"
    );
    assert_eq!(
        fs::read_to_string(root.join("ember.pid")).unwrap(),
        pid.to_string()
    );
    for (file, kind) in [
        ("ember", "file"),
        ("dev/kvm", "kvm"),
        ("dev/net/tun", "tun"),
    ] {
        let meta = fs::metadata(root.join(file)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (123, 123), "{kind}");
    }

    // The API inside the jail: the id came from the jailer; the kernel is named by its path
    // in the jail.
    let mut c = vm.client();
    let (code_, body) = c.request("GET", "/", None);
    assert_eq!(
        (code_, json(&body)["id"].as_str()),
        (200, Some("t1")),
        "{body}"
    );
    let boot = r#"{"kernel_image_path": "/guest.elf", "boot_args": "42"}"#;
    assert_eq!(c.request("PUT", "/boot-source", Some(boot)).0, 204);
    assert_eq!(c.request("PUT", "/actions", Some(START)).0, 204);
    let (status, console, stderr) = vm.finish();
    assert_eq!(console, "exit code 42\n", "{stderr}");
    assert_eq!(status, 42);
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn daemonized_in_a_new_pid_namespace_ember_is_pid_1_and_the_pid_file_has_its_host_pid() {
    if !can_jail() {
        return;
    }
    let base = tempdir("jailer-pidns");
    let out = run(
        jailer()
            .args(["--id", "t2", "--exec-file"])
            .arg(ember_path())
            .args(["--uid", "123", "--gid", "124", "--chroot-base-dir"])
            .arg(&base)
            // No --api-sock: ember serves Firecracker's default socket, as Kata expects.
            .args(["--daemonize", "--new-pid-ns"]),
        LIMIT,
    );
    assert_eq!(code(&out.status), 0, "{}", text(&out.stderr));
    let root = base.join("ember/t2/root");
    let pid_file = root.join("ember.pid");
    let deadline = Instant::now() + LIMIT;
    while !pid_file.exists() || !root.join("run/firecracker.socket").exists() {
        assert!(
            Instant::now() < deadline,
            "no pid file and socket in {}",
            root.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let pid: u32 = fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let nspid = status(pid, "NSpid");
    let stdio: Vec<PathBuf> = (0..3)
        .map(|fd| fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap())
        .collect();
    // SAFETY: ember, which this test started, by its pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(
        nspid,
        format!("{pid} 1"),
        "not PID 1 of a namespace of its own"
    );
    assert!(
        stdio.iter().all(|p| p == Path::new("/dev/null")),
        "{stdio:?}"
    );
    fs::remove_dir_all(&base).unwrap();
}

/// Runs the jailer with `args` after a valid id, uid and gid and a fresh base directory;
/// returns its output and whether the base is still empty.
fn refused(args: &[&str], base: &Path) -> (Output, bool) {
    let out = run(
        jailer()
            .args(["--chroot-base-dir"])
            .arg(base)
            .args(args)
            .stdin(Stdio::null()),
        LIMIT,
    );
    assert_ne!(code(&out.status), 0, "{args:?} was accepted");
    let empty = fs::read_dir(base).unwrap().next().is_none();
    (out, empty)
}

#[test]
fn bad_arguments_are_refused_with_what_to_do_and_leave_no_jail() {
    let base = tempdir("jailer-refused");
    let ember = ember_path();
    let ember = ember.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--exec-file", ember, "--uid", "1", "--gid", "1"],
            "the following required arguments were not provided:\n  --id <ID>",
        ),
        (
            &[
                "--id",
                "a/b",
                "--exec-file",
                ember,
                "--uid",
                "1",
                "--gid",
                "1",
            ],
            "invalid value 'a/b' for '--id <ID>': '/' is not allowed in an id",
        ),
        (
            &[
                "--id",
                "x",
                "--exec-file",
                "/nonexistent/ember",
                "--uid",
                "1",
                "--gid",
                "1",
            ],
            "ember-jailer: error: --exec-file /nonexistent/ember: cannot find it (give the path \
             of the ember binary): No such file or directory",
        ),
        (
            &[
                "--id",
                "x",
                "--exec-file",
                ember,
                "--uid",
                "abc",
                "--gid",
                "1",
            ],
            "invalid value 'abc' for '--uid <UID>'",
        ),
        (
            &[
                "--id",
                "x",
                "--exec-file",
                ember,
                "--uid",
                "1",
                "--gid",
                "1",
                "--netns",
                "/nonexistent/ns",
            ],
            "--netns /nonexistent/ns: cannot open it (create it with `ip netns add NAME`)",
        ),
        (
            &[
                "--id",
                "x",
                "--exec-file",
                ember,
                "--uid",
                "1",
                "--gid",
                "1",
                "--cgroup",
                "memory.max",
            ],
            "expected FILE=VALUE",
        ),
    ];
    for (args, needle) in cases {
        let (out, empty) = refused(args, &base);
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(empty, "{args:?} left a jail in {}", base.display());
    }
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn an_unknown_cgroup_file_is_refused_and_leaves_no_jail_and_no_cgroup() {
    if !net_available() {
        return;
    }
    let cgroup = MemoryCgroup::new();
    let base = tempdir("jailer-cgroup");
    let ember = ember_path();
    let version = cgroup.version.to_string();
    let args = [
        "--id",
        "t3",
        "--exec-file",
        ember.to_str().unwrap(),
        "--uid",
        "1",
        "--gid",
        "1",
        "--cgroup-version",
        &version,
        "--parent-cgroup",
        &cgroup.parent,
        "--cgroup",
        "memory.bogus=1",
    ];
    let (out, empty) = refused(&args, &base);
    let err = text(&out.stderr);
    assert!(
        err.contains("--cgroup memory.bogus: ") && err.contains("has no such file"),
        "{err}"
    );
    assert!(empty, "a jail was left in {}", base.display());
    assert!(!cgroup.dir().join("t3").exists(), "the cgroup was left");
    fs::remove_dir_all(&base).unwrap();
}

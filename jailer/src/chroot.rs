//! The jail's directory: `<base>/<exec name>/<id>/root` with a private copy of the exec file
//! ([`prepare`]), made the root of a new mount namespace ([`enter`]), then given the device
//! nodes and directories ember needs, owned by the user it runs as ([`populate`]).
//!
//! Directories that already exist are used as they are (a caller may put the kernel and disks
//! in the jail first, as Kata does). What [`prepare`] makes is removed again if the jailer
//! fails before [`enter`] (see [`JailDir`]).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::cli::Jail;

/// Directories made inside the jail, owner-only and owned by the jailed user: `/` so that
/// ember may create its socket and files, `/run` for Firecracker's socket path.
const DIRS: [&str; 4] = ["/", "/dev", "/dev/net", "/run"];

/// The device nodes ember opens: (path, major, minor, required).
const DEVICES: [(&str, u32, u32, bool); 3] = [
    ("/dev/kvm", 10, 232, true),
    ("/dev/net/tun", 10, 200, true),
    // For MMDS tokens and the like; a jail without it still runs.
    ("/dev/urandom", 1, 9, false),
];

/// Why the jail could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ChrootError {
    /// A directory of the jail could not be made.
    #[error("cannot create {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    /// The exec file could not be copied.
    #[error("cannot copy {0} to {1}")]
    Copy(PathBuf, PathBuf, #[source] std::io::Error),
    /// The copy's path already has a link elsewhere: it could change a file outside the jail.
    #[error(
        "{0} has other hard links: remove it (a jail's files must be its own), or use a new --id"
    )]
    HardLink(PathBuf),
    /// A path has a NUL byte.
    #[error("{0} has a NUL byte")]
    Nul(PathBuf),
    /// A step of making the new root failed.
    #[error("cannot make {1} the root of a new mount namespace: {0} failed")]
    Pivot(&'static str, PathBuf, #[source] std::io::Error),
    /// A device node could not be made.
    #[error("cannot create device node {0} in the jail")]
    Mknod(&'static str, #[source] std::io::Error),
    /// A file of the jail could not be handed to the jailed user.
    #[error("cannot set the owner or mode of {0} in the jail")]
    Own(String, #[source] std::io::Error),
}

/// The jail's directories as made by [`prepare`]: removed when dropped unless [`JailDir::keep`]
/// was called, so that a jailer that fails half-way leaves nothing it made behind.
#[derive(Debug)]
pub struct JailDir {
    /// The outermost directory made, or the exec copy if every directory existed.
    made: Option<PathBuf>,
}

impl JailDir {
    /// Keeps the jail (from [`enter`] on, its host path is out of reach anyway).
    pub fn keep(mut self) {
        self.made = None;
    }
}

impl Drop for JailDir {
    fn drop(&mut self) {
        if let Some(path) = self.made.take() {
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// Makes the jail's root (each missing directory up to it) and copies the exec file into it.
pub fn prepare(jail: &Jail) -> Result<JailDir, ChrootError> {
    let missing: Vec<&Path> = jail.root.ancestors().take_while(|d| !d.exists()).collect();
    let mut dir = JailDir {
        made: missing.last().map(|d| d.to_path_buf()),
    };
    for new in missing.iter().rev() {
        std::fs::create_dir(new).map_err(|e| ChrootError::CreateDir(new.to_path_buf(), e))?;
    }
    let copy = jail.root.join(&jail.exec_name);
    if dir.made.is_none() && !copy.exists() {
        dir.made = Some(copy.clone());
    }
    copy_exec(&jail.exec_file, &copy, jail.uid, jail.gid)?;
    Ok(dir)
}

/// Copies the exec file rather than linking it: the jailed process shares no page cache with
/// other VMs' binaries, and handing the copy to the jailed user changes no file outside.
fn copy_exec(from: &Path, to: &Path, uid: u32, gid: u32) -> Result<(), ChrootError> {
    let err = |e| ChrootError::Copy(from.to_owned(), to.to_owned(), e);
    let mut src = File::open(from).map_err(err)?;
    // O_NOFOLLOW: a symbolic link planted by an earlier tenant of this id is not followed.
    let mut dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o700)
        .open(to)
        .map_err(err)?;
    if dst.metadata().map_err(err)?.nlink() > 1 {
        return Err(ChrootError::HardLink(to.to_owned()));
    }
    dst.set_len(0).map_err(err)?;
    std::os::unix::fs::fchown(&dst, Some(uid), Some(gid)).map_err(err)?;
    dst.set_permissions(std::fs::Permissions::from_mode(0o700))
        .map_err(err)?;
    std::io::copy(&mut src, &mut dst).map_err(err)?;
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, ChrootError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| ChrootError::Nul(path.to_owned()))
}

/// Turns a libc return value into a `Result` carrying `errno`.
pub(crate) fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes `root` the root of a new mount namespace, as Firecracker's jailer does: mounts turn
/// slave (nothing done here reaches the host's namespace), `root` is bind-mounted on itself
/// (`pivot_root` needs a mount point), becomes `/` by `pivot_root`, and the old root is
/// detached. Unlike `chroot` alone, no way back to the host's files is left.
pub fn enter(root: &Path) -> Result<(), ChrootError> {
    let root_c = c_path(root)?;
    let step = |name, rc| check(rc).map_err(|e| ChrootError::Pivot(name, root.to_owned(), e));
    // SAFETY: unshare has no memory preconditions; it affects only this process.
    step("unshare(CLONE_NEWNS)", unsafe {
        libc::unshare(libc::CLONE_NEWNS)
    })?;
    // SAFETY: the path is a NUL-terminated literal; the other pointers may be null.
    step("making / a slave mount", unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        )
    })?;
    // SAFETY: both paths are the NUL-terminated `root_c`, alive for the call.
    step("bind-mounting the jail", unsafe {
        libc::mount(
            root_c.as_ptr(),
            root_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })?;
    // SAFETY: `root_c` is NUL-terminated and alive for the call.
    step("chdir", unsafe { libc::chdir(root_c.as_ptr()) })?;
    // SAFETY: a NUL-terminated literal path.
    step("mkdir old_root", unsafe {
        libc::mkdir(c"old_root".as_ptr(), 0o700)
    })?;
    // SAFETY: pivot_root reads two NUL-terminated literal paths.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c"old_root".as_ptr()) };
    step("pivot_root", if rc < 0 { -1 } else { 0 })?;
    // SAFETY: NUL-terminated literal paths.
    step("chdir /", unsafe { libc::chdir(c"/".as_ptr()) })?;
    // SAFETY: as above.
    step("unmounting the old root", unsafe {
        libc::umount2(c"old_root".as_ptr(), libc::MNT_DETACH)
    })?;
    // SAFETY: as above.
    step("rmdir old_root", unsafe {
        libc::rmdir(c"old_root".as_ptr())
    })?;
    // SAFETY: as above; for good measure, as Firecracker does.
    step("chroot", unsafe { libc::chroot(c".".as_ptr()) })
}

/// Inside the new root: the directories and device nodes ember needs, owned by `uid`/`gid`;
/// `/dev/userfaultfd` too when the host has it (`uffd_minor`, its misc minor number).
pub fn populate(uid: u32, gid: u32, uffd_minor: Option<u32>) -> Result<(), ChrootError> {
    for dir in DIRS {
        let own = |e| ChrootError::Own(dir.to_owned(), e);
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(own(e)),
            _ => {}
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(own)?;
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(own)?;
    }
    for (path, major, minor, required) in DEVICES {
        match mknod(path, major, minor, uid, gid) {
            Err(err) if !required => {
                eprintln!(
                    "ember-jailer: warning: {}",
                    utils::error_chain(&err as &dyn std::error::Error)
                );
            }
            other => other?,
        }
    }
    if let Some(minor) = uffd_minor {
        mknod("/dev/userfaultfd", 10, minor, uid, gid)?;
    }
    Ok(())
}

/// A character device node `path`, read-write for `uid`/`gid` only.
fn mknod(
    path: &'static str,
    major: u32,
    minor: u32,
    uid: u32,
    gid: u32,
) -> Result<(), ChrootError> {
    let c = c_path(Path::new(path))?;
    // SAFETY: `c` is NUL-terminated and alive for the call.
    check(unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | libc::S_IRUSR | libc::S_IWUSR,
            libc::makedev(major, minor),
        )
    })
    .map_err(|e| ChrootError::Mknod(path, e))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| ChrootError::Own(path.to_owned(), e))
}

/// The misc minor number of `/dev/userfaultfd` from `/proc/misc`'s text, if the host has one.
pub fn userfaultfd_minor(proc_misc: &str) -> Option<u32> {
    proc_misc.lines().find_map(|line| {
        let (minor, name) = line.trim().split_once(' ')?;
        (name.trim() == "userfaultfd").then(|| minor.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_userfaultfd_minor_is_read_from_proc_misc() {
        let misc = "232 kvm\n200 tun\n124 userfaultfd\n";
        assert_eq!(userfaultfd_minor(misc), Some(124));
        assert_eq!(userfaultfd_minor("232 kvm\n"), None);
        assert_eq!(userfaultfd_minor("x userfaultfd\n"), None);
    }

    fn jail_in(base: &Path) -> Jail {
        Jail {
            id: "t".into(),
            exec_file: "/bin/true".into(),
            exec_name: "true".into(),
            root: base.join("true/t/root"),
            // SAFETY: no preconditions.
            uid: unsafe { libc::geteuid() },
            // SAFETY: no preconditions.
            gid: unsafe { libc::getegid() },
            netns: None,
            daemonize: false,
            new_pid_ns: false,
            cgroups: Vec::new(),
            cgroup_version: 2,
            parent_cgroup: "true".into(),
            limits: Vec::new(),
            ember_args: Vec::new(),
        }
    }

    #[test]
    fn prepare_copies_the_exec_file_and_a_failed_jailer_removes_what_it_made() {
        let base = std::env::temp_dir().join(format!("ember-jailer-prep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).unwrap();
        let jail = jail_in(&base);
        let dir = prepare(&jail).unwrap();
        let copy = jail.root.join("true");
        assert_eq!(
            std::fs::read(&copy).unwrap(),
            std::fs::read("/bin/true").unwrap()
        );
        assert_eq!(std::fs::metadata(&copy).unwrap().mode() & 0o777, 0o700);
        drop(dir);
        assert!(!base.join("true").exists(), "the jail stays");

        // A jail made in advance (with the kernel in it) stays; only the copy goes.
        std::fs::create_dir_all(&jail.root).unwrap();
        std::fs::write(jail.root.join("vmlinux"), "k").unwrap();
        drop(prepare(&jail).unwrap());
        assert!(jail.root.join("vmlinux").exists() && !copy.exists());
        prepare(&jail).unwrap().keep();
        assert!(copy.exists());

        // A hard link in the copy's place would let the jail change a file outside it.
        std::fs::remove_file(&copy).unwrap();
        std::fs::hard_link(jail.root.join("vmlinux"), &copy).unwrap();
        let err = prepare(&jail).unwrap_err();
        assert!(matches!(err, ChrootError::HardLink(_)), "{err}");
        assert_eq!(std::fs::read(jail.root.join("vmlinux")).unwrap(), b"k");
        std::fs::remove_dir_all(&base).unwrap();
    }
}

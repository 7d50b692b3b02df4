//! The initramfs `ember run` boots: the init program ember carries and its configuration, as a
//! newc cpio archive (the format the kernel unpacks) written to a memfd.
//!
//! The writer is hand-made: the kernel needs only newc headers for a few directories, files and
//! one device node, which is ~40 lines; the cpio crates on crates.io either read only or pull in
//! far more than this (whole-tree archiving, compression).

use std::io::Write;

use super::guest::{CONFIG_PATH, GuestConfig};

/// The static init program vmm/build.rs compiled from vmm/init/main.rs.
const INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ember-init"));

/// One archive member.
enum Entry<'a> {
    Dir,
    File { mode: u32, data: &'a [u8] },
    CharDev { major: u32, minor: u32 },
}

/// A newc ("070701") cpio archive being built in memory.
#[derive(Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    next_inode: u32,
}

impl Cpio {
    /// Appends one member; `name` is relative (`ember/config`).
    fn add(&mut self, name: &str, entry: Entry) {
        let (mode, data, rdev) = match entry {
            Entry::Dir => (0o040_755, &[][..], (0, 0)),
            Entry::File { mode, data } => (0o100_000 | mode, data, (0, 0)),
            Entry::CharDev { major, minor } => (0o020_600, &[][..], (major, minor)),
        };
        self.next_inode += 1;
        let fields = [
            self.next_inode,
            mode,
            0,                                                 // uid
            0,                                                 // gid
            if mode & 0o170_000 == 0o040_000 { 2 } else { 1 }, // nlink
            0,                                                 // mtime
            data.len() as u32,
            0, // device major
            0, // device minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // checksum (only for "070702")
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Pads to the next multiple of four bytes, as newc requires after names and data.
    fn pad(&mut self) {
        while self.bytes.len() % 4 != 0 {
            self.bytes.push(0);
        }
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.add("TRAILER!!!", Entry::File { mode: 0, data: &[] });
        self.bytes
    }
}

/// The initramfs: `/init`, `/ember/config` and `/dev/console` (the kernel opens it for init's
/// stdin, stdout and stderr before anything can mount devtmpfs).
pub fn build(config: &GuestConfig) -> Vec<u8> {
    let mut cpio = Cpio::default();
    cpio.add("dev", Entry::Dir);
    cpio.add("dev/console", Entry::CharDev { major: 5, minor: 1 });
    cpio.add(
        "init",
        Entry::File {
            mode: 0o755,
            data: INIT,
        },
    );
    let config_path = CONFIG_PATH.trim_start_matches('/');
    if let Some((dir, _)) = config_path.rsplit_once('/') {
        cpio.add(dir, Entry::Dir);
    }
    cpio.add(
        config_path,
        Entry::File {
            mode: 0o400,
            data: &config.encode(),
        },
    );
    cpio.finish()
}

/// The archive in a memfd, named by a `/proc/self/fd/N` path the kernel loader opens like any
/// file: nothing is written to disk, and nothing is left behind however ember ends.
pub fn in_memory(bytes: &[u8]) -> std::io::Result<(std::fs::File, String)> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: the name is a NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(c"ember-run-initramfs".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    Ok((file, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One member of an archive: name, mode, rdev major and minor, data.
    type Member = (String, u32, (u32, u32), Vec<u8>);

    /// The members of a newc archive.
    fn members(mut bytes: &[u8]) -> Vec<Member> {
        let mut out = Vec::new();
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        let round = |n: usize| n.div_ceil(4) * 4;
        loop {
            assert_eq!(&bytes[..6], b"070701");
            let (mode, size, namesize) = (field(bytes, 1), field(bytes, 6), field(bytes, 11));
            let rdev = (field(bytes, 9), field(bytes, 10));
            let name_end = 110 + namesize as usize;
            assert_eq!(bytes[name_end - 1], 0, "names end in a NUL");
            let name = String::from_utf8(bytes[110..name_end - 1].to_vec()).unwrap();
            let data_start = round(name_end);
            let data = bytes[data_start..data_start + size as usize].to_vec();
            bytes = &bytes[round(data_start + size as usize)..];
            if name == "TRAILER!!!" {
                assert!(bytes.is_empty());
                return out;
            }
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn the_cpio_writer_pads_names_and_data_to_four_bytes() {
        let mut cpio = Cpio::default();
        cpio.add("a", Entry::Dir);
        cpio.add(
            "a/bc",
            Entry::File {
                mode: 0o644,
                data: b"hello",
            },
        );
        cpio.add("c", Entry::CharDev { major: 5, minor: 1 });
        let bytes = cpio.finish();
        assert_eq!(bytes.len() % 4, 0);
        let got = members(&bytes);
        assert_eq!(
            got,
            [
                ("a".into(), 0o40755, (0, 0), vec![]),
                ("a/bc".into(), 0o100644, (0, 0), b"hello".to_vec()),
                ("c".into(), 0o20600, (5, 1), vec![]),
            ]
        );
    }

    #[test]
    fn the_initramfs_holds_a_static_init_and_the_configuration() {
        let config = GuestConfig {
            argv: vec!["true".into()],
            ..Default::default()
        };
        let got = members(&build(&config));
        let names: Vec<_> = got.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(
            names,
            ["dev", "dev/console", "init", "ember", "ember/config"]
        );
        let init = &got[2].3;
        assert_eq!(&init[..4], b"\x7fELF");
        assert_eq!(got[2].1, 0o100755);
        assert_eq!(GuestConfig::decode(&got[4].3), Ok(config));
        let (file, path) = in_memory(b"abc").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        drop(file);
    }
}

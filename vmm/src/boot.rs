//! Loading what the guest boots: the kernel (ELF vmlinux or bzImage, told apart by their
//! magic), the initrd and the command line, each read straight from its file into guest memory
//! with no intermediate copy. It must not set up vCPUs or devices.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use devices::host_file::{self, HostFileError, Use};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::arch::x86_64::{BootInfo, initrd_address};

/// Errors loading the boot images.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be opened or read, or is not a regular file.
    #[error("cannot read the {what} '{}'", path.display())]
    Open {
        /// Kernel or initrd.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: HostFileError,
    },
    /// The kernel file is neither format.
    #[error("the kernel '{}' is neither an ELF vmlinux nor a bzImage", .0.display())]
    UnknownFormat(PathBuf),
    /// The kernel is in a known format but cannot be loaded.
    #[error("cannot load the kernel '{}' into {mem_mib} MiB of guest memory", path.display())]
    Load {
        /// The kernel path.
        path: PathBuf,
        /// Guest memory size.
        mem_mib: u64,
        /// What linux-loader said.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// A bzImage without the 64-bit entry point.
    #[error("the bzImage '{}' has no 64-bit entry point (boot protocol 2.12+ with XLF_KERNEL_64 is needed)", .0.display())]
    No64BitEntry(PathBuf),
    /// The initrd does not fit.
    #[error("the initrd '{}' ({size} bytes) does not fit in guest memory above the kernel; give the VM more memory", path.display())]
    InitrdTooLarge {
        /// The initrd path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The initrd could not be copied in.
    #[error("cannot read the initrd '{}' into guest memory", path.display())]
    InitrdRead {
        /// The initrd path.
        path: PathBuf,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The command line is too long or has characters Linux does not accept.
    #[error("invalid kernel command line (at most {} printable ASCII characters)", CMDLINE_MAX_SIZE - 1)]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line could not be written.
    #[error("cannot write the kernel command line into guest memory")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
}

/// Where the kernel landed.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The 64-bit entry point.
    pub entry: GuestAddress,
    /// First byte after the kernel image.
    pub end: u64,
    /// The bzImage's setup header, for the zero page; `None` for an ELF.
    pub setup_header: Option<setup_header>,
}

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// The 64-bit entry point of a bzImage's protected-mode payload is 0x200 past its start.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1;

fn open(what: &'static str, path: &Path) -> Result<(File, u64), BootError> {
    let (file, meta) = host_file::open(path, Use::Read).map_err(|source| BootError::Open {
        what,
        path: path.to_owned(),
        source,
    })?;
    Ok((file, meta.len()))
}

/// Loads the kernel at `path`.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let (mut file, _) = open("kernel", path)?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC;
    file.seek(SeekFrom::Start(0))
        .map_err(|source| BootError::Open {
            what: "kernel",
            path: path.to_owned(),
            source: source.into(),
        })?;
    let himem = Some(GuestAddress(HIMEM_START));
    let load_err = |source| BootError::Load {
        path: path.to_owned(),
        mem_mib: mem
            .iter()
            .map(vm_memory::GuestMemoryRegion::len)
            .sum::<u64>()
            >> 20,
        source,
    };
    if is_elf {
        let loaded = Elf::load(mem, None, &mut file, himem).map_err(load_err)?;
        return Ok(LoadedKernel {
            entry: loaded.kernel_load,
            end: loaded.kernel_end,
            setup_header: None,
        });
    }
    let loaded = BzImage::load(mem, None, &mut file, himem).map_err(|err| match err {
        linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::InvalidBzImage
            | linux_loader::loader::bzimage::Error::ReadBzImageHeader
            | linux_loader::loader::bzimage::Error::Underflow,
        ) => BootError::UnknownFormat(path.to_owned()),
        other => load_err(other),
    })?;
    let header = loaded
        .setup_header
        .ok_or_else(|| BootError::UnknownFormat(path.to_owned()))?;
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry(path.to_owned()));
    }
    Ok(LoadedKernel {
        entry: loaded.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
        end: loaded.kernel_end,
        setup_header: Some(header),
    })
}

/// Loads the initrd at `path` above `kernel`; returns its address and size.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_bytes: u64,
    kernel: &LoadedKernel,
) -> Result<(GuestAddress, u64), BootError> {
    let (mut file, size) = open("initrd", path)?;
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
    };
    let addr = initrd_address(mem_bytes, size, kernel.end, kernel.setup_header.as_ref())
        .ok_or_else(too_large)?;
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(addr, &mut file, len)
        .map_err(|source| BootError::InitrdRead {
            path: path.to_owned(),
            source,
        })?;
    Ok((addr, size))
}

/// Validates `cmdline` and writes it; returns its length.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, BootError> {
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cl.insert_str(cmdline).map_err(BootError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(BootError::CmdlineWrite)?;
    Ok(cmdline.len())
}

/// Loads kernel, initrd and command line; returns the entry point and what the zero page must
/// say about them.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<(GuestAddress, BootInfo), BootError> {
    let loaded = load_kernel(mem, kernel)?;
    let initrd = initrd
        .map(|path| load_initrd(mem, path, mem_bytes, &loaded))
        .transpose()?;
    let cmdline_len = write_cmdline(mem, cmdline)?;
    Ok((
        loaded.entry,
        BootInfo {
            setup_header: loaded.setup_header,
            cmdline_len,
            initrd,
            mem_bytes,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(mib: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ember-boot-{}-{name}", std::process::id()));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        path
    }

    /// A minimal 64-bit ELF with one PT_LOAD segment of `code` at `addr`.
    fn elf(addr: u64, code: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x78];
        f[..4].copy_from_slice(ELF_MAGIC);
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // executable
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&addr.to_le_bytes()); // entry
        f[32..40].copy_from_slice(&0x40u64.to_le_bytes()); // phoff
        f[52..54].copy_from_slice(&0x40u16.to_le_bytes()); // ehsize
        f[54..56].copy_from_slice(&0x38u16.to_le_bytes()); // phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = &mut f[0x40..0x78];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[8..16].copy_from_slice(&0x78u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&addr.to_le_bytes()); // vaddr
        ph[24..32].copy_from_slice(&addr.to_le_bytes()); // paddr
        ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn loads_an_elf_at_its_physical_address() {
        let m = mem(4);
        let path = temp_file("elf", &elf(0x20_0000, &[0xf4, 0xeb, 0xfd]));
        let k = load_kernel(&m, &path).unwrap();
        assert_eq!(k.entry, GuestAddress(0x20_0000));
        assert_eq!(k.end, 0x20_0003);
        assert!(k.setup_header.is_none());
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x20_0001)).unwrap(), 0xeb);
    }

    #[test]
    fn random_bytes_and_empty_files_are_not_kernels() {
        let m = mem(4);
        let noise: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for (name, bytes) in [
            ("noise", noise.as_slice()),
            ("empty", &[][..]),
            ("short", b"MZ"),
        ] {
            let path = temp_file(name, bytes);
            let err = load_kernel(&m, &path).unwrap_err();
            assert!(matches!(err, BootError::UnknownFormat(_)), "{name}: {err}");
            assert!(
                err.to_string()
                    .contains("neither an ELF vmlinux nor a bzImage")
            );
        }
    }

    #[test]
    fn a_kernel_larger_than_memory_is_a_load_error() {
        let m = mem(2);
        let path = temp_file("big", &elf(0x10_0000, &vec![0x90; 2 << 20]));
        let err = load_kernel(&m, &path).unwrap_err();
        assert!(matches!(err, BootError::Load { .. }), "{err}");
    }

    #[test]
    fn missing_files_and_directories_name_the_path() {
        let m = mem(4);
        let err = load_kernel(&m, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
        let err = load_kernel(&m, Path::new("/")).unwrap_err();
        assert!(matches!(err, BootError::Open { .. }), "{err}");
    }

    #[test]
    fn initrd_is_copied_high_and_oversized_ones_are_refused() {
        let m = mem(16);
        let k = LoadedKernel {
            entry: GuestAddress(0x10_0000),
            end: 0x20_0000,
            setup_header: None,
        };
        let path = temp_file("initrd", b"070701 cpio");
        let (addr, size) = load_initrd(&m, &path, 16 << 20, &k).unwrap();
        assert_eq!((addr.raw_value(), size), ((16 << 20) - 4096, 11));
        let mut back = [0u8; 11];
        m.read_slice(&mut back, addr).unwrap();
        assert_eq!(&back, b"070701 cpio");

        let big = temp_file("initrd-big", &vec![0; 15 << 20]);
        assert!(matches!(
            load_initrd(&m, &big, 16 << 20, &k),
            Err(BootError::InitrdTooLarge { .. })
        ));
    }

    #[test]
    fn cmdline_is_written_nul_terminated_and_bounded() {
        let m = mem(1);
        assert_eq!(write_cmdline(&m, "console=ttyS0").unwrap(), 13);
        let mut back = [0u8; 14];
        m.read_slice(&mut back, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&back, b"console=ttyS0\0");
        assert!(write_cmdline(&m, &"x".repeat(CMDLINE_MAX_SIZE)).is_err());
        assert!(write_cmdline(&m, "bad\u{7}bell").is_err());
    }
}

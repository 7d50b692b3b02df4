//! ACPI tables for guests whose kernel has ACPI: power-off through a hardware-reduced sleep
//! control register, a pvpanic device, and the CPUs, IOAPIC, COM1, i8042 and virtio-mmio
//! devices described again for kernels that trust ACPI over the MP table and the command line.
//! Kernels without ACPI (ember's lean test kernel) ignore all of it.
//!
//! The virtio-mmio devices must be in the DSDT: a hardware-reduced ACPI kernel has no legacy
//! PIC, so it maps no ISA interrupt numbers, and a `virtio_mmio.device=...:5` from the command
//! line gets no interrupt (its probe fails with -EINVAL, and a root disk is never found). From
//! the DSDT (`LNRO0005`, Linux's virtio-mmio id) each device's interrupt is mapped through the
//! IOAPIC like COM1's. Such a kernel also registers the command-line devices; their probes
//! find the windows taken and fail harmlessly.
//!
//! With `--enable-pci` the virtio devices are PCI functions instead, found by enumerating the
//! bus: the DSDT describes the host bridge (`PCI0`: its bus, the configuration ports, the
//! memory windows the BARs lie in, and each slot's INTA# routed to an IOAPIC pin) and an MCFG
//! table points at the ECAM window, which a motherboard resource (`PNP0C02`) reserves, as
//! Linux requires before it trusts MCFG. A kernel without ACPI finds the bus through the
//! configuration ports.
//!
//! Layout in the BIOS area, where Linux scans for the RSDP (it is also passed in
//! `boot_params.acpi_rsdp_addr`): RSDP, XSDT, FADT, MADT, DSDT (and MCFG), each 16-byte
//! aligned.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, aml};
use devices::virtio::mmio::MMIO_WINDOW;

use super::layout::{
    ACPI_MAX_SIZE, ACPI_SLEEP_CONTROL_PORT, ACPI_START, APIC_START, COM1_IRQ, COM1_LEN, COM1_PORT,
    I8042_IRQ, I8042_PORT, IOAPIC_START, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN, PCI_ECAM_SIZE,
    PCI_ECAM_START, PCI_MMIO32_SIZE, PCI_MMIO32_START, PVPANIC_PORT,
};

const OEM_ID: [u8; 6] = *b"EMBER ";
const OEM_TABLE_ID: [u8; 8] = *b"EMBERVM ";
const OEM_REVISION: u32 = 1;

/// The sleep type ember's `\_S5_` object gives for soft-off; the sleep control register acts
/// on it.
pub const SLEEP_TYPE_S5: u8 = 5;

// IA-PC boot architecture flags: legacy (ISA) devices, an 8042, no VGA, no CMOS RTC.
const BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
const BOOT_ARCH_8042: u16 = 1 << 1;
const BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;

/// Errors building the tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// The tables outgrew their area.
    #[error("the ACPI tables ({0} bytes) do not fit in the BIOS area")]
    TooLarge(usize),
}

/// A virtio-mmio device as the DSDT describes it: its 4 KiB window and its interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmio {
    /// Base of the MMIO window.
    pub base: u64,
    /// The IOAPIC pin (GSI).
    pub irq: u32,
}

/// The PCI host bridge as the tables describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciHost {
    /// The 64-bit memory window the BARs lie in: start and length.
    pub mmio64: (u64, u64),
    /// Each function's device number on bus 0 and the IOAPIC pin (GSI) its INTA# drives.
    pub intx: Vec<(u8, u32)>,
}

/// How the tables describe the virtio devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Virtio<'a> {
    /// virtio-mmio devices, each in the DSDT, in guest order.
    Mmio(&'a [VirtioMmio]),
    /// virtio-pci functions behind the host bridge.
    Pci(&'a PciHost),
}

/// The tables as (guest address, bytes), for `cpus` vCPUs and the `virtio` devices.
pub fn build(cpus: u8, virtio: Virtio) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let mut tables = Vec::new();
    let mut next = ACPI_START + align(Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>| {
        let addr = next;
        next += align(bytes.len() as u64);
        tables.push((addr, bytes));
        addr
    };

    let dsdt_addr = place(dsdt(virtio));
    let fadt_addr = place(fadt(dsdt_addr));
    let madt_addr = place(madt(cpus));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if let Virtio::Pci(_) = virtio {
        xsdt.add_entry(place(mcfg()));
    }
    let xsdt_addr = place(bytes(&xsdt));
    tables.push((ACPI_START, bytes(&Rsdp::new(OEM_ID, xsdt_addr))));

    let used = (next - ACPI_START) as usize;
    if used > ACPI_MAX_SIZE {
        return Err(AcpiError::TooLarge(used));
    }
    Ok(tables)
}

/// Where the RSDP is, for `boot_params.acpi_rsdp_addr`.
pub const RSDP_ADDR: u64 = ACPI_START;

fn align(len: u64) -> u64 {
    len.next_multiple_of(16)
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

/// Hardware-reduced FADT: no PM1 blocks or SCI, just the sleep control and status registers.
fn fadt(dsdt: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt);
    fadt.iapc_boot_arch =
        (BOOT_ARCH_LEGACY_DEVICES | BOOT_ARCH_8042 | BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_CMOS_RTC)
            .into();
    fadt.sleep_control_reg = io_gas(ACPI_SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_gas(ACPI_SLEEP_CONTROL_PORT + 1);
    bytes(&fadt.finalize())
}

/// One local APIC per vCPU (APIC id = index) and the IOAPIC, GSIs from 0, as in the MP table.
fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(cpus, IOAPIC_START as u32, 0));
    bytes(&madt)
}

/// Already-encoded AML, to nest in a scope.
struct Encoded(Vec<u8>);

impl Aml for Encoded {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// A device with a hardware id and its current resources.
fn device(name: &str, hid: &dyn Aml, resources: Vec<&dyn Aml>) -> Encoded {
    device_with_uid(name, hid, None, resources)
}

/// A device with a hardware id, a unique id among devices with that hardware id (when there
/// are several) and its current resources.
fn device_with_uid(
    name: &str,
    hid: &dyn Aml,
    uid: Option<u32>,
    resources: Vec<&dyn Aml>,
) -> Encoded {
    let crs = aml::ResourceTemplate::new(resources);
    let hid = aml::Name::new("_HID".into(), hid);
    let uid = uid.map(|uid| aml::Name::new("_UID".into(), &uid));
    let crs = aml::Name::new("_CRS".into(), &crs);
    let mut children: Vec<&dyn Aml> = vec![&hid];
    if let Some(uid) = &uid {
        children.push(uid);
    }
    children.push(&crs);
    Encoded(bytes(&aml::Device::new(name.into(), children)))
}

/// The ECAM window of bus 0 (PCI firmware spec 3.2, 4.1.2).
fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, 0);
    bytes(&mcfg)
}

/// The host bridge `PCI0` on segment 0, bus 0: its resources (bus 0, the configuration ports,
/// the 32- and 64-bit memory windows, non-prefetchable so that any BAR may lie in them) and
/// its interrupt routing (`_PRT`: each function's INTA# to its IOAPIC pin; the source is the
/// global interrupt itself). And `MRES`, the motherboard resource that reserves the ECAM
/// window.
fn pci_devices(pci: &PciHost) -> [Encoded; 2] {
    use aml::{AddressSpace, AddressSpaceCacheable::NotCacheable};
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let config = aml::IO::new(
        PCI_CONFIG_PORT,
        PCI_CONFIG_PORT,
        1,
        PCI_CONFIG_PORT_LEN as u8,
    );
    // The window ends below 4 GiB: the 32-bit descriptor holds it.
    let end32 = (PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32;
    let mmio32 = AddressSpace::new_memory(NotCacheable, true, PCI_MMIO32_START as u32, end32, None);
    let (start64, len64) = pci.mmio64;
    let mmio64 = AddressSpace::new_memory(NotCacheable, true, start64, start64 + len64 - 1, None);
    let crs = aml::ResourceTemplate::new(vec![&bus, &config, &mmio32, &mmio64]);

    let routes: Vec<(u32, u32)> = pci
        .intx
        .iter()
        .map(|&(device, gsi)| ((u32::from(device) << 16) | 0xffff, gsi))
        .collect();
    let entries: Vec<aml::Package> = routes
        .iter()
        .map(|(address, gsi)| aml::Package::new(vec![address, &0u8, &0u8, gsi]))
        .collect();
    let prt = aml::Package::new(entries.iter().map(|e| e as &dyn Aml).collect());

    let (hid, cid) = (aml::EISAName::new("PNP0A08"), aml::EISAName::new("PNP0A03"));
    let names = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CID".into(), &cid),
        aml::Name::new("_SEG".into(), &0u8),
        aml::Name::new("_BBN".into(), &0u8),
        aml::Name::new("_UID".into(), &0u8),
        aml::Name::new("_CRS".into(), &crs),
        aml::Name::new("_PRT".into(), &prt),
    ];
    let children: Vec<&dyn Aml> = names.iter().map(|n| n as &dyn Aml).collect();
    let pci0 = Encoded(bytes(&aml::Device::new("PCI0".into(), children)));

    // The window is below 4 GiB.
    let ecam = aml::Memory32Fixed::new(false, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let mres = device("MRES", &aml::EISAName::new("PNP0C02"), vec![&ecam]);
    [pci0, mres]
}

/// Linux's virtio-mmio devices, `VR00`, `VR01`, ... in guest order.
fn virtio_devices(virtio: &[VirtioMmio]) -> Vec<Encoded> {
    virtio
        .iter()
        .enumerate()
        .map(|(i, dev)| {
            // The window is below 4 GiB (the MMIO hole): the 32-bit descriptor holds it.
            let window = aml::Memory32Fixed::new(true, dev.base as u32, MMIO_WINDOW as u32);
            let irq = aml::Interrupt::new(true, true, false, false, dev.irq);
            let name = format!("VR{i:02}");
            device_with_uid(&name, &"LNRO0005", Some(i as u32), vec![&window, &irq])
        })
        .collect()
}

/// `\_S5_` for power-off, and the devices with their resources: COM1, the i8042, pvpanic
/// (QEMU0001), which Linux's pvpanic driver writes on a panic, and the virtio-mmio devices or
/// the PCI host bridge.
fn dsdt(virtio: Virtio) -> Vec<u8> {
    let edge_irq = |irq| aml::Interrupt::new(true, true, false, false, irq);
    let port = |p: u16, len| aml::IO::new(p, p, 1, len);

    let (com1_io, com1_irq) = (port(COM1_PORT, COM1_LEN as u8), edge_irq(COM1_IRQ));
    let com1 = device(
        "COM1",
        &aml::EISAName::new("PNP0501"),
        vec![&com1_io, &com1_irq],
    );
    let (kbd_data, kbd_cmd) = (port(I8042_PORT, 1), port(I8042_PORT + 4, 1));
    let kbd_irq = edge_irq(I8042_IRQ);
    let kbd = device(
        "PS2K",
        &aml::EISAName::new("PNP0303"),
        vec![&kbd_data, &kbd_cmd, &kbd_irq],
    );
    let pvpanic_io = port(PVPANIC_PORT, 1);
    let pvpanic = device("PEVT", &"QEMU0001", vec![&pvpanic_io]);

    let mut body = Vec::new();
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&SLEEP_TYPE_S5])).to_aml_bytes(&mut body);
    let virtio: Vec<Encoded> = match virtio {
        Virtio::Mmio(devices) => virtio_devices(devices),
        Virtio::Pci(host) => pci_devices(host).into(),
    };
    let mut devices: Vec<&dyn Aml> = vec![&com1, &kbd, &pvpanic];
    devices.extend(virtio.iter().map(|d| d as &dyn Aml));
    aml::Scope::new("_SB_".into(), devices).to_aml_bytes(&mut body);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn find<'a>(tables: &'a [(u64, Vec<u8>)], sig: &[u8]) -> &'a (u64, Vec<u8>) {
        tables.iter().find(|(_, t)| t.starts_with(sig)).unwrap()
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    #[test]
    fn tables_checksum_and_link_up() {
        let tables = build(4, Virtio::Mmio(&[])).unwrap();
        for (_, t) in &tables {
            assert_eq!(
                sum(if t.starts_with(b"RSD PTR ") {
                    &t[..36]
                } else {
                    t
                }),
                0
            );
            if !t.starts_with(b"RSD PTR ") {
                let len = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
                assert_eq!(len, t.len(), "{}", String::from_utf8_lossy(&t[..4]));
            }
        }
        let (rsdp_addr, rsdp) = find(&tables, b"RSD PTR ");
        assert_eq!(*rsdp_addr, RSDP_ADDR);
        let (xsdt_addr, xsdt) = find(&tables, b"XSDT");
        assert_eq!(u64_at(rsdp, 24), *xsdt_addr);
        let (fadt_addr, fadt) = find(&tables, b"FACP");
        let (madt_addr, _) = find(&tables, b"APIC");
        assert_eq!(
            (u64_at(xsdt, 36), u64_at(xsdt, 44)),
            (*fadt_addr, *madt_addr)
        );
        let (dsdt_addr, _) = find(&tables, b"DSDT");
        assert_eq!(u64_at(fadt, 140), *dsdt_addr, "X_DSDT");
        let mut end = ACPI_START;
        let mut sorted: Vec<_> = tables.iter().map(|(a, t)| (*a, t.len() as u64)).collect();
        sorted.sort();
        for (addr, len) in sorted {
            assert!(
                addr >= end && addr % 16 == 0,
                "tables overlap or are unaligned"
            );
            end = addr + len;
        }
    }

    #[test]
    fn fadt_is_hardware_reduced_with_the_sleep_register() {
        let tables = build(1, Virtio::Mmio(&[])).unwrap();
        let (_, fadt) = find(&tables, b"FACP");
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        // SLEEP_CONTROL_REG: a byte-wide system-I/O register at the sleep control port.
        assert_eq!(fadt[244], 1);
        assert_eq!(u64_at(fadt, 248), u64::from(ACPI_SLEEP_CONTROL_PORT));
        assert_eq!(u64_at(fadt, 260), u64::from(ACPI_SLEEP_CONTROL_PORT) + 1);
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let tables = build(3, Virtio::Mmio(&[])).unwrap();
        let (_, madt) = find(&tables, b"APIC");
        let entries = &madt[44..];
        let lapics: Vec<u8> = entries.chunks(8).take(3).map(|e| e[3]).collect();
        assert_eq!(lapics, vec![0, 1, 2]);
        assert_eq!(&entries[24..26], &[1, 12], "IOAPIC entry after the CPUs");
        assert_eq!(entries[26], 3, "IOAPIC id follows the CPUs");
    }

    #[test]
    fn dsdt_names_s5_and_the_devices() {
        let tables = build(1, Virtio::Mmio(&[])).unwrap();
        let (_, dsdt) = find(&tables, b"DSDT");
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"_S5_") && has(b"QEMU0001") && has(b"COM1") && has(b"PS2K"));
        assert!(!has(b"LNRO0005"));
    }

    #[test]
    fn dsdt_describes_every_virtio_mmio_device_with_its_window_and_interrupt() {
        let virtio: Vec<VirtioMmio> = (0..19u32)
            .map(|i| VirtioMmio {
                base: 0xd000_1000 + u64::from(i) * 0x1000,
                irq: 5 + i,
            })
            .collect();
        let tables = build(32, Virtio::Mmio(&virtio)).unwrap();
        let (_, dsdt) = find(&tables, b"DSDT");
        assert_eq!(sum(dsdt), 0);
        let count = |needle: &[u8]| dsdt.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(b"LNRO0005"), 19);
        for (i, dev) in virtio.iter().enumerate() {
            assert_eq!(count(format!("VR{i:02}").as_bytes()), 1);
            // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
            let mut window = vec![0x86, 9, 0, 1];
            window.extend_from_slice(&(dev.base as u32).to_le_bytes());
            window.extend_from_slice(&0x1000u32.to_le_bytes());
            assert_eq!(count(&window), 1, "window of VR{i:02}");
            // Extended interrupt: tag 0x89, length 6, consumer + edge, one interrupt, the GSI.
            let mut irq = vec![0x89, 6, 0, 0b11, 1];
            irq.extend_from_slice(&dev.irq.to_le_bytes());
            assert_eq!(count(&irq), 1, "interrupt of VR{i:02}");
        }
    }

    fn pci_host() -> PciHost {
        PciHost {
            mmio64: (4 << 30, 1 << 30),
            intx: vec![(1, 5), (2, 6), (3, 7)],
        }
    }

    fn count(table: &[u8], needle: &[u8]) -> usize {
        table.windows(needle.len()).filter(|w| *w == needle).count()
    }

    #[test]
    fn with_pci_an_mcfg_table_points_at_the_ecam_window_of_bus_0() {
        let host = pci_host();
        let tables = build(2, Virtio::Pci(&host)).unwrap();
        let (mcfg_addr, mcfg) = find(&tables, b"MCFG");
        assert_eq!(sum(mcfg), 0);
        assert_eq!(mcfg.len(), 44 + 16, "header, reserved, one allocation");
        assert_eq!(u64_at(mcfg, 44), PCI_ECAM_START);
        assert_eq!(&mcfg[52..56], &[0, 0, 0, 0], "segment 0, buses 0-0");
        let (_, xsdt) = find(&tables, b"XSDT");
        assert_eq!(u64_at(xsdt, 52), *mcfg_addr, "the XSDT lists the MCFG");
        // Without PCI there is none.
        let tables = build(2, Virtio::Mmio(&[])).unwrap();
        assert!(!tables.iter().any(|(_, t)| t.starts_with(b"MCFG")));
    }

    #[test]
    fn with_pci_the_dsdt_has_the_host_bridge_with_its_windows_and_interrupt_routes() {
        let host = pci_host();
        let tables = build(2, Virtio::Pci(&host)).unwrap();
        let (_, dsdt) = find(&tables, b"DSDT");
        assert_eq!(sum(dsdt), 0);
        let has = |needle: &[u8]| count(dsdt, needle) > 0;
        assert!(has(b"PCI0") && has(b"_PRT") && has(b"_SEG") && has(b"_BBN"));
        assert!(!has(b"LNRO0005"), "no virtio-mmio device");
        // EISA ids PNP0A08 (PCI Express root), PNP0A03 (PCI root), PNP0C02 (motherboard).
        for id in [
            [0x41, 0xd0, 0x0a, 0x08],
            [0x41, 0xd0, 0x0a, 0x03],
            [0x41, 0xd0, 0x0c, 0x02],
        ] {
            assert!(has(&id), "{id:x?}");
        }
        // Bus numbers 0-0: WordBusNumber, producer, fixed, granularity, min 0, max 0.
        assert!(has(&[0x88, 13, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0, 0]));
        // The configuration ports: IO(Decode16, 0xcf8, 0xcf8, 1, 8).
        assert!(has(&[0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]));
        // The 32-bit window: DWordMemory min and max after a zero granularity.
        let mut mmio32 = vec![0, 0, 0, 0];
        mmio32.extend_from_slice(&(PCI_MMIO32_START as u32).to_le_bytes());
        mmio32.extend_from_slice(&((PCI_MMIO32_START + PCI_MMIO32_SIZE - 1) as u32).to_le_bytes());
        assert!(has(&mmio32));
        // The 64-bit window: QWordMemory min and max.
        let mut mmio64 = (4u64 << 30).to_le_bytes().to_vec();
        mmio64.extend_from_slice(&((5u64 << 30) - 1).to_le_bytes());
        assert!(has(&mmio64));
        // The ECAM window reserved: Memory32Fixed, read-only, base, 1 MiB.
        let mut ecam = vec![0x86, 9, 0, 0];
        ecam.extend_from_slice(&(PCI_ECAM_START as u32).to_le_bytes());
        ecam.extend_from_slice(&(PCI_ECAM_SIZE as u32).to_le_bytes());
        assert!(has(&ecam));
        // Each _PRT entry: Package(4) { DWord 0xDDDDffff, pin 0 (INTA#), source 0, GSI }.
        for (device, gsi) in host.intx {
            let mut entry = vec![0x12, 0x0b, 4, 0x0c, 0xff, 0xff, device, 0, 0, 0, 0x0a];
            entry.push(gsi as u8);
            assert!(has(&entry), "route of device {device}");
        }
    }
}

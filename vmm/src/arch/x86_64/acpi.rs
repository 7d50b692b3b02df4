//! ACPI tables for guests whose kernel has ACPI: power-off through a hardware-reduced sleep
//! control register, a pvpanic device, and the CPUs, IOAPIC, COM1 and i8042 described again
//! for kernels that trust ACPI over the MP table. Kernels without ACPI (ember's lean test
//! kernel) ignore all of it.
//!
//! Layout in the BIOS area, where Linux scans for the RSDP (it is also passed in
//! `boot_params.acpi_rsdp_addr`): RSDP, XSDT, FADT, MADT, DSDT, each 16-byte aligned.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, aml};

use super::layout::{
    ACPI_MAX_SIZE, ACPI_SLEEP_CONTROL_PORT, ACPI_START, APIC_START, COM1_IRQ, COM1_PORT, I8042_IRQ,
    I8042_PORT, IOAPIC_START, PVPANIC_PORT,
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

/// The tables as (guest address, bytes), for `cpus` vCPUs.
pub fn build(cpus: u8) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let mut tables = Vec::new();
    let mut next = ACPI_START + align(Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>| {
        let addr = next;
        next += align(bytes.len() as u64);
        tables.push((addr, bytes));
        addr
    };

    let dsdt_addr = place(dsdt());
    let fadt_addr = place(fadt(dsdt_addr));
    let madt_addr = place(madt(cpus));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
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
    let crs = aml::ResourceTemplate::new(resources);
    let hid = aml::Name::new("_HID".into(), hid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    Encoded(bytes(&aml::Device::new(name.into(), vec![&hid, &crs])))
}

/// `\_S5_` for power-off, and the legacy devices with their resources: COM1, the i8042, and
/// pvpanic (QEMU0001), which Linux's pvpanic driver writes on a panic.
fn dsdt() -> Vec<u8> {
    let edge_irq = |irq| aml::Interrupt::new(true, true, false, false, irq);
    let port = |p: u16, len| aml::IO::new(p, p, 1, len);

    let (com1_io, com1_irq) = (port(COM1_PORT, 8), edge_irq(COM1_IRQ));
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
    aml::Scope::new("_SB_".into(), vec![&com1, &kbd, &pvpanic]).to_aml_bytes(&mut body);
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
        let tables = build(4).unwrap();
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
        let tables = build(1).unwrap();
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
        let tables = build(3).unwrap();
        let (_, madt) = find(&tables, b"APIC");
        let entries = &madt[44..];
        let lapics: Vec<u8> = entries.chunks(8).take(3).map(|e| e[3]).collect();
        assert_eq!(lapics, vec![0, 1, 2]);
        assert_eq!(&entries[24..26], &[1, 12], "IOAPIC entry after the CPUs");
        assert_eq!(entries[26], 3, "IOAPIC id follows the CPUs");
    }

    #[test]
    fn dsdt_names_s5_and_the_devices() {
        let tables = build(1).unwrap();
        let (_, dsdt) = find(&tables, b"DSDT");
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"_S5_") && has(b"QEMU0001") && has(b"COM1") && has(b"PS2K"));
    }
}

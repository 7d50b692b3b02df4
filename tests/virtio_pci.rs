//! virtio over PCI (`--enable-pci`) end to end with a tiny guest that carries its own
//! virtio-pci block driver (tests/guests/virtio_pci_blk.c): bus 0 through the legacy
//! configuration ports, the capabilities, MSI-X delivered through KVM's GSI routing, and a
//! masked vector held pending until it is unmasked, INTx on the IOAPIC pin when MSI-X is off; and through the API as Firecracker's client
//! libraries launch it, a drive swapped at run time reaching the guest as an MSI-X
//! configuration interrupt.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::api::*;
use common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

/// A 1 MiB image whose every sector holds bytes i*7+3 (i the offset in the sector), what the
/// guest checks.
fn image(name: &str) -> std::path::PathBuf {
    let path = tempdir(name).join("disk.img");
    let sector: Vec<u8> = (0..512u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, sector.repeat(2048)).unwrap();
    path
}

fn driver(disk: &std::path::Path) -> std::process::Command {
    let mut cmd = ember();
    cmd.arg("--kernel")
        .arg(guest("virtio_pci_blk"))
        .arg("--disk")
        .arg(disk);
    cmd
}

#[test]
fn a_guest_finds_the_disk_on_pci_and_reads_it_with_msix_interrupts() {
    if !kvm_available() {
        return;
    }
    let disk = image("pci-blk");
    // A second device takes the next slot.
    let second = image("pci-blk-second");
    let out = run(
        driver(&disk).arg("--disk").arg(&second).arg("--enable-pci"),
        LIMIT,
    );
    let (log, stderr) = (text(&out.stdout), text(&out.stderr));
    for line in [
        "PCI 00:00.0 8086:0d57 class 060000",
        "PCI 00:01.0 1af4:1042 class 018000",
        "PCI 00:02.0 1af4:1042 class 018000",
        "MSI-X ON",
        "QUEUE READY capacity=2048",
        "SECTOR 0 OK BY MSI-X",
        "MASKED VECTOR PENDING",
        "PENDING DELIVERED ON UNMASK",
    ] {
        assert!(log.contains(line), "'{line}' missing:\n{log}\n{stderr}");
    }
    assert!(!log.contains("PCI 00:03.0"), "{log}");
    assert_eq!(code(&out.status), EXIT_OK, "{log}\n{stderr}");
}

#[test]
fn a_driver_without_msix_gets_intx_on_the_ioapic_pin_in_its_interrupt_line() {
    if !kvm_available() {
        return;
    }
    let out = run(
        driver(&image("pci-intx")).args(["--enable-pci", "--cmdline", "intx"]),
        LIMIT,
    );
    let (log, stderr) = (text(&out.stdout), text(&out.stderr));
    // The first virtio slot's line, as on virtio-mmio.
    assert!(
        log.contains("SECTOR 0 OK BY INTX on pin 5"),
        "{log}\n{stderr}"
    );
    assert!(!log.contains("MSI-X ON"), "{log}");
    assert_eq!(code(&out.status), EXIT_OK, "{log}\n{stderr}");
}

#[test]
fn without_enable_pci_there_is_no_pci_bus() {
    if !kvm_available() {
        return;
    }
    let out = run(&mut driver(&image("pci-off")), LIMIT);
    let log = text(&out.stdout);
    assert!(
        log.contains("FAIL no virtio-blk function on bus 0"),
        "{log}"
    );
    assert!(!log.contains("PCI 00:00.0"), "{log}");
    assert_eq!(code(&out.status), 1);
}

#[test]
fn through_the_api_with_enable_pci_a_drive_swap_reaches_the_guest_by_msix() {
    if !kvm_available() {
        return;
    }
    // A client library passes --enable-pci with --api-sock, then configures and starts.
    let vm = Ember::start("api-pci-patch", &["--enable-pci"]);
    let mut c = vm.client();
    let (small, big) = (image("api-pci-small"), vm.dir.join("big.img"));
    std::fs::write(&big, std::fs::read(&small).unwrap().repeat(2)).unwrap();
    let log = vm.dir.join("console.log");
    let steps = [
        (
            "/boot-source",
            json!({"kernel_image_path": guest("virtio_pci_blk"), "boot_args": "resize"}),
        ),
        (
            "/drives/data",
            json!({"drive_id": "data", "path_on_host": small, "is_root_device": false}),
        ),
        ("/serial", json!({"serial_out_path": log})),
    ];
    for (path, body) in steps {
        done(&mut c, "PUT", path, &body.to_string());
    }
    done(&mut c, "PUT", "/actions", START);
    wait_for_text(&log, "CAPACITY 2048", LIMIT);
    let patch = json!({"drive_id": "data", "path_on_host": big}).to_string();
    done(&mut c, "PATCH", "/drives/data", &patch);
    let (code, _, stderr) = vm.finish();
    let console = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, EXIT_OK, "console:\n{console}\nstderr:\n{stderr}");
    assert!(
        console.ends_with("PENDING DELIVERED ON UNMASK\nCAPACITY 2048\nCAPACITY 4096\n"),
        "{console}"
    );
}

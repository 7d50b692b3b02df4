//! Builds ember's container init (vmm/init/main.rs) into $OUT_DIR/ember-init, which
//! `ember run` embeds in the initramfs it generates (vmm/src/run/initramfs.rs).
//!
//! The init runs as process 1 of a guest whose root is an arbitrary container image, so it
//! must need nothing from it: it is compiled with the same rustc, `std` only, linked statically
//! against the C library (`+crt-static`: no musl target is needed), and with panic=abort. A C
//! init (gcc -static) would also work, but would add a C compiler to the build and duplicate
//! the user and environment logic that ember unit-tests (vmm/src/run/guest.rs, shared as a
//! module).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        panic!("cargo sets OUT_DIR for build scripts");
    };
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").unwrap_or_default();
    for file in [
        "init/main.rs",
        "init/sys.rs",
        "init/net.rs",
        "src/run/guest.rs",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    let output = Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "--crate-name",
            "ember_init",
            "--crate-type",
            "bin",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "-C", "codegen-units=1"])
        .args(["-D", "warnings"])
        .arg("-o")
        .arg(out.join("ember-init"))
        .arg("init/main.rs")
        .output();
    match output {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "building ember's container init (vmm/init/main.rs) failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run rustc to build ember's container init: {e}"),
    }
}

//! `ember run IMAGE`'s warm start (issue 17): from spawn to vCPU 0's first KVM_RUN for an image
//! already in the cache, against a plain `ember --kernel` boot of the same kernel and memory in
//! the same run, taking turns run by run (target: within 20 ms). Printed as figures (median,
//! min, max):
//!
//! - setup, plain `ember --kernel K --memory 128` (as benches/boot.rs measures it);
//! - setup, `ember run --kernel K -m 128 IMAGE -- true` for an OCI layout directory (read again
//!   on every run: its index and manifest are hashed, the cache is only checked) and for an OCI
//!   archive (cached by name, as a registry image is: the layout is not read at all);
//! - setup with `--rootfs-size 1G` (mkfs.ext4 of the upper-layer disk; not part of the target);
//! - where `ember run`'s extra time goes, in this process: `oci::prepare` (the cache lookup)
//!   and all of `RunArgs::prepare` (lookup, configuration, initramfs in a memfd).
//!
//! The image is built here (busybox-static in one layer, tests/common/oci.rs), so no network is
//! needed. Needs KVM and /bin/busybox (resources/setup-host.sh installs busybox-static).
//!
//! Run: `EMBER_TEST_KERNEL=... cargo bench -p ember --bench run` (without it the kernel is built
//! by resources/build-kernel.sh).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;
#[allow(dead_code)] // the layout helpers the tests share; this bench needs a few
#[path = "../../tests/common/oci.rs"]
mod oci_layout;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{artifact, require_kvm, setup_time, stats, time_to_first_kvm_run};
use oci_layout::{layout_of, tar_of};
use vmm::run::Invocation;

const RUNS: usize = 15;
/// In-process repetitions of the front end (each takes well under a millisecond to a few).
const FRONT_END_RUNS: usize = 50;
/// The warm start's target: this much over a plain boot's setup.
const TARGET_MS: f64 = 20.0;

fn main() {
    require_kvm();
    let kernel = artifact("EMBER_TEST_KERNEL", "vmlinux", "build-kernel.sh");
    let ember = PathBuf::from(env!("CARGO_BIN_EXE_ember"));
    let dir = std::env::temp_dir().join(format!("ember-bench-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cache");
    // SAFETY: no other thread exists yet; ember processes and the in-process front end read it.
    unsafe { std::env::set_var(oci::CACHE_DIR_ENV, &cache) };
    let (layout, archive) = images(&dir);
    for image in [&layout, &archive] {
        let pulled = Command::new(&ember).args(["pull", image]).output().unwrap();
        assert!(
            pulled.status.success(),
            "ember pull {image}: {}",
            String::from_utf8_lossy(&pulled.stderr)
        );
    }
    let run_flags = |image: &str, extra: &[&str]| -> Vec<String> {
        let mut flags = vec![
            "run".into(),
            "--kernel".into(),
            kernel.display().to_string(),
        ];
        flags.extend(["-m", "128", "--level", "info", "--timeout", "30"].map(String::from));
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags.extend([image, "--", "true"].map(String::from));
        flags
    };
    let cases: [(&str, Option<Vec<String>>); 4] = [
        ("ember --kernel (plain)", None),
        ("ember run, OCI layout", Some(run_flags(&layout, &[]))),
        ("ember run, OCI archive", Some(run_flags(&archive, &[]))),
        (
            "ember run, --rootfs-size 1G",
            Some(run_flags(&archive, &["--rootfs-size", "1G"])),
        ),
    ];
    let mut ms = vec![Vec::new(); cases.len()];
    for _ in 0..RUNS {
        for (samples, (_, flags)) in ms.iter_mut().zip(&cases) {
            let time = match flags {
                None => setup_time(&ember, &kernel, &[]),
                Some(flags) => time_to_first_kvm_run(Command::new(&ember).args(flags)),
            };
            samples.push(time.as_secs_f64() * 1e3);
        }
    }
    let plain = stats(&ms[0]).median;
    for (samples, (name, _)) in ms.iter().zip(&cases) {
        let s = stats(samples);
        println!(
            "setup: spawn to first KVM_RUN, {name:<28} median {:>7.2} ms  min {:>7.2}  \
             max {:>7.2}  (n={})  {:+.2} ms over plain",
            s.median,
            s.min,
            s.max,
            s.n,
            s.median - plain
        );
    }
    for (name, samples) in [("layout", &ms[1]), ("archive", &ms[2])] {
        let over = stats(samples).median - plain;
        let verdict = if over <= TARGET_MS { "met" } else { "MISSED" };
        println!("target: warm ember run ({name}) within {TARGET_MS} ms of plain: {verdict}");
    }
    for (name, image) in [("OCI layout", &layout), ("OCI archive", &archive)] {
        report_front_end(name, image, &kernel);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A busybox image as an OCI layout and as an OCI archive of that layout: the references
/// `ember run` takes.
fn images(dir: &Path) -> (String, String) {
    use tar::EntryType::{Directory as D, Regular as F, Symlink as S};
    let busybox = std::fs::read("/bin/busybox")
        .expect("this bench needs busybox-static (resources/setup-host.sh installs it)");
    let layer = tar_of(&[
        ("bin/", D, b"", 0, 0o755),
        ("bin/busybox", F, &busybox, 0, 0o755),
        ("bin/sh", S, b"busybox", 0, 0o777),
        ("etc/", D, b"", 0, 0o755),
        (
            "etc/passwd",
            F,
            b"root:x:0:0:root:/root:/bin/sh\n",
            0,
            0o644,
        ),
    ]);
    let config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"]});
    let layout = layout_of(&dir.join("layout"), &[&layer], config);
    let archive = dir.join("image.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    builder.append_dir_all(".", &layout).unwrap();
    builder.into_inner().unwrap();
    (
        format!("oci:{}:v1", layout.display()),
        format!("oci-archive:{}", archive.display()),
    )
}

/// `ember run`'s own work before the VM is built, timed in this process: the image cache
/// lookup alone, and all of it (lookup, flags and image configuration merged, the initramfs
/// written to a memfd).
fn report_front_end(name: &str, image: &str, kernel: &Path) {
    let argv = [
        "ember",
        "run",
        "--kernel",
        &kernel.display().to_string(),
        image,
    ];
    let Ok(Invocation::Container(args)) = vmm::run::parse(argv) else {
        panic!("{argv:?} is not ember run IMAGE");
    };
    let time = |f: &dyn Fn()| {
        let samples: Vec<f64> = (0..FRONT_END_RUNS)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        stats(&samples)
    };
    let lookup = time(&|| {
        oci::prepare(image, &oci::PullOptions::default()).unwrap();
    });
    let all = time(&|| {
        args.prepare().unwrap();
    });
    for (what, s) in [
        ("oci::prepare (cache lookup)", lookup),
        ("RunArgs::prepare (all)", all),
    ] {
        println!(
            "front end, {name:<11}, {what:<28} median {:>7.3} ms  min {:>7.3}  max {:>7.3}  \
             (n={})",
            s.median, s.min, s.max, s.n
        );
    }
}

//! A Firecracker-style `--config-file` as ember reads it: the file's bytes are loaded and
//! parsed, then checked and turned into a VM specification for both transports. Each step
//! ends in a value or an error whose message says something.
#![no_main]

use ember_fuzz::scratch;
use libfuzzer_sys::fuzz_target;
use vmm::config::load_config_file;
use vmm::spec::{self, RunOptions, VirtioTransport, VmSpec};

fn assert_message(err: &dyn std::error::Error) {
    assert!(
        !vmm::error_chain(err).trim().is_empty(),
        "an error without a message"
    );
}

fuzz_target!(|data: &[u8]| {
    let path = scratch("config.json");
    std::fs::write(&path, data).expect("write the config file");
    let cfg = match load_config_file(&path) {
        Ok(cfg) => cfg,
        Err(err) => return assert_message(&err),
    };
    let _ = spec::unsupported(&cfg);
    if let Err(err) = spec::check(&cfg) {
        assert_message(&err);
    }
    for transport in [VirtioTransport::Mmio, VirtioTransport::Pci] {
        let opts = RunOptions {
            transport,
            ..RunOptions::default()
        };
        if let Err(err) = VmSpec::new(&cfg, &opts) {
            assert_message(&err);
        }
    }
});

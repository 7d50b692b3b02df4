//! The `ember` binary: parse the command line, run the microVM, exit with its status.

use std::error::Error;
use std::process::ExitCode;

use clap::Parser;
use vmm::ExitStatus;
use vmm::builder::{self, RunOptions};
use vmm::cli::Cli;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(ExitStatus::ConfigError.code())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let args = cli.args();
    let mut logger = env_logger::Builder::new();
    logger.filter_level(args.level.into()).format_target(false);
    if args.boot_timer {
        // The boot time is the point of the flag: show it whatever the log level.
        logger.filter_module("devices::legacy::boot_timer", log::LevelFilter::Info);
    }
    logger.init();

    let opts = RunOptions {
        timeout: args.timeout,
        serial_out: args.serial_out.clone(),
        boot_timer: args.boot_timer,
    };
    let result = args
        .vm_config()
        .map_err(|e| Box::new(e) as Box<dyn Error>)
        .and_then(|cfg| builder::run(&cfg, &opts).map_err(|e| Box::new(e) as Box<dyn Error>));
    // The end of ember's own teardown; benches/boot.rs reads this line.
    log::info!(
        "ember exiting at monotonic {} ns",
        vmm::vcpu::monotonic_ns()
    );
    match result {
        Ok(outcome) => {
            if !outcome.message.is_empty() {
                eprintln!("ember: {}", outcome.message);
            }
            ExitCode::from(outcome.status.code())
        }
        Err(err) => {
            eprintln!("ember: error: {}", error_chain(err.as_ref()));
            ExitCode::from(ExitStatus::ConfigError.code())
        }
    }
}

/// "outer: cause: root cause", each message once.
fn error_chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let msg = cause.to_string();
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        source = cause.source();
    }
    text
}

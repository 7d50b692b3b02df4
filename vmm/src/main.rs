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
    env_logger::Builder::new()
        .filter_level(cli.level.into())
        .format_target(false)
        .init();

    let opts = RunOptions {
        timeout: cli.timeout,
        serial_out: cli.serial_out.clone(),
    };
    let result = cli
        .vm_config()
        .map_err(|e| Box::new(e) as Box<dyn Error>)
        .and_then(|cfg| builder::run(&cfg, &opts).map_err(|e| Box::new(e) as Box<dyn Error>));
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

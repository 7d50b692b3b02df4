//! `ember-jailer`: starts ember in a jail, with Firecracker's jailer command line (see the
//! `jailer` library for the steps).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // First, before the jailer opens anything of its own.
    if let Err(err) = jailer::close_inherited_fds() {
        eprintln!("ember-jailer: error: {}", utils::error_chain(&err));
        return ExitCode::FAILURE;
    }
    let cli = jailer::Cli::parse();
    let result = cli
        .into_jail()
        .map_err(jailer::Error::from)
        .and_then(jailer::run);
    match result {
        Ok(never) => match never {},
        Err(err) => {
            eprintln!("ember-jailer: error: {}", utils::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

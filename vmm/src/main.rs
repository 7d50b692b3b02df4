//! The `ember` binary: parse the command line, run the microVM, exit with its status.

use std::error::Error;
use std::process::ExitCode;

use api_server::model::VmConfig;
use api_server::request::VmmAction;
use clap::Parser;
use utils::poll::{poll, pollfd};
use vmm::ExitStatus;
use vmm::builder::{self, ApiHook, RunOptions};
use vmm::cli::{Cli, VmArgs};
use vmm::controller::{Outcome, StopSignals};
use vmm::{api, logger};

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
    let log_options = logger::Options {
        id: &args.id,
        level: args.level,
        path: args.log_path.as_deref(),
        show_level: args.show_level,
        show_origin: args.show_log_origin,
        // The boot time is the point of --boot-timer: show it whatever the level.
        always: args.boot_timer.then_some("devices::legacy::boot_timer"),
    };
    if let Err(err) = logger::init(&log_options) {
        eprintln!("ember: error: {}", vmm::error_chain(&err));
        return ExitCode::from(ExitStatus::ConfigError.code());
    }

    let opts = RunOptions {
        timeout: args.timeout,
        serial_out: args.serial_out.clone(),
        serial_out_max_bytes: args.serial_out_max_bytes,
        boot_timer: args.boot_timer,
    };
    // Before any thread exists, so that every thread inherits the mask.
    let result = match StopSignals::block() {
        Err(err) => Err(Box::new(err) as Box<dyn Error>),
        Ok(signals) => match &args.api_sock {
            None => configured_vm(args).and_then(|cfg| {
                builder::run(&cfg, &opts, signals, None).map_err(|e| Box::new(e) as Box<dyn Error>)
            }),
            Some(sock) => serve_api(args, sock, opts, signals),
        },
    };
    // The end of ember's own teardown; benches/boot.rs reads this line.
    log::info!(
        "ember exiting at monotonic {} ns",
        vmm::vcpu::monotonic_ns()
    );
    match result {
        Ok(outcome) => {
            if !outcome.message.is_empty() {
                // On a terminal the guest's last line (a shell prompt, say) rarely ends in a
                // newline; ember's message starts a line of its own.
                // SAFETY: isatty only inspects the descriptor number.
                let console_on_terminal = unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1;
                let newline = if console_on_terminal { "\n" } else { "" };
                eprintln!("{newline}ember: {}", outcome.message);
            }
            ExitCode::from(outcome.status.code())
        }
        Err(err) => {
            eprintln!("ember: error: {}", vmm::error_chain(err.as_ref()));
            ExitCode::from(ExitStatus::ConfigError.code())
        }
    }
}

/// The VM the flags or config file describe, with the config file's `logger` section applied.
fn configured_vm(args: &VmArgs) -> Result<VmConfig, Box<dyn Error>> {
    let cfg = args.vm_config()?;
    if let Some(section) = &cfg.logger {
        logger::configure(section)?;
    }
    Ok(cfg)
}

/// Serves the REST API: boots right away when the flags or a config file describe a VM,
/// otherwise builds the configuration from requests until InstanceStart.
fn serve_api(
    args: &VmArgs,
    sock: &std::path::Path,
    mut opts: RunOptions,
    signals: StopSignals,
) -> Result<Outcome, Box<dyn Error>> {
    let api = api::start(sock, args.http_api_max_payload_size, &args.id)?;
    if args.describes_vm() {
        let cfg = configured_vm(args)?;
        let hook = ApiHook {
            api,
            answer_start: false,
        };
        return Ok(builder::run(&cfg, &opts, signals, Some(hook))?);
    }
    let mut cfg = VmConfig {
        metrics: args.metrics(),
        ..Default::default()
    };
    loop {
        let mut fds = [api.notify_fd(), signals.fd()].map(|fd| pollfd(fd, libc::POLLIN));
        poll(&mut fds, -1)?;
        if let Some(signo) = signals.read() {
            return Ok(Outcome {
                status: ExitStatus::Signal(signo as i32),
                message: format!("stopped by signal {signo}"),
            });
        }
        while let Some(action) = api.next() {
            if action != VmmAction::InstanceStart {
                api.reply(api::preboot(&api, &mut cfg, &mut opts, action));
                continue;
            }
            let hook = ApiHook {
                api: api.clone(),
                answer_start: true,
            };
            match builder::run(&cfg, &opts, signals.try_clone()?, Some(hook)) {
                Ok(outcome) => return Ok(outcome),
                // The VM never started: say why, and keep serving the configuration.
                Err(err) if !api.started() => api.reply(Err(vmm::error_chain(&err))),
                Err(err) => return Err(err.into()),
            }
        }
    }
}

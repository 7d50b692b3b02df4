//! The `ember` binary: parse the command line, run the microVM, exit with its status.

use std::error::Error;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use api_server::model::VmConfig;
use devices::mmds::SharedMmds;
use devices::sync::lock;
use utils::poll::{poll, pollfd};
use vmm::ExitStatus;
use vmm::builder;
use vmm::cli::VmArgs;
use vmm::controller::{Outcome, StopSignals};
use vmm::lifecycle::{Lifecycle, VmState};
use vmm::metrics::ProcessStartup;
use vmm::run::{Invocation, RunArgs};
use vmm::spec::{RunOptions, VmSpec};
use vmm::{api, logger};

fn main() -> ExitCode {
    let cli = match vmm::run::parse(std::env::args_os()) {
        Ok(Invocation::Vm(cli)) => cli,
        Ok(Invocation::Container(args)) => return run_container(&args),
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(ExitStatus::ConfigError.code())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Some(command) = cli.image_command() {
        return vmm::images::run(command);
    }
    let args = cli.args();
    let log_options = logger::Options {
        id: &args.id,
        level: args.level,
        path: args.log_path.as_deref(),
        show_level: args.show_level,
        show_origin: args.show_log_origin,
        module: args.module.as_deref(),
        // The boot time is the point of --boot-timer: show it whatever the level.
        always: args.boot_timer.then_some("devices::legacy::boot_timer"),
    };
    if let Err(err) = logger::init(&log_options) {
        eprintln!("ember: error: {}", vmm::error_chain(&err));
        return ExitCode::from(ExitStatus::ConfigError.code());
    }

    if let Some(refusal) = args.snapshot_request() {
        eprintln!("ember: error: {refusal}");
        return ExitCode::from(ExitStatus::ConfigError.code());
    }
    // Before any thread exists: each one installs its filter as it starts.
    if let Err(err) = vmm::seccomp::init(&args.seccomp_mode()) {
        eprintln!("ember: error: {}", vmm::error_chain(&err));
        return ExitCode::from(ExitStatus::ConfigError.code());
    }
    let result = run(args);
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

/// Runs the VM the arguments describe, or serves the API until one is booted and ends.
fn run(args: &VmArgs) -> Result<Outcome, Box<dyn Error>> {
    let opts = args.run_options();
    // Before any thread exists, so that every thread inherits the mask.
    let signals = StopSignals::block()?;
    // From the start, as in Firecracker: a client may PUT /mmds before anything else.
    let mmds = vmm::mmds::store(args.mmds_size_limit(), args.metadata.as_deref())?;
    match &args.api_sock {
        None => boot(&configured_vm(args)?, &opts, signals, &mmds),
        Some(sock) => serve_api(args, sock, opts, signals, mmds),
    }
}

/// Boots the VM `cfg` describes and runs it to its end.
fn boot(
    cfg: &VmConfig,
    opts: &RunOptions,
    signals: StopSignals,
    mmds: &SharedMmds,
) -> Result<Outcome, Box<dyn Error>> {
    let spec = VmSpec::new(cfg, opts)?;
    Ok(builder::run(&spec, signals, None, mmds)?)
}

/// `ember run IMAGE`: boots the image's program and exits with its status. Only the program's
/// output reaches the terminal, so ember says nothing when the program exits with a status;
/// it speaks only when the VM ended some other way (timeout, signal, crash) or failed.
fn run_container(args: &RunArgs) -> ExitCode {
    let log_options = logger::Options {
        id: "ember-run",
        level: args.level,
        path: None,
        show_level: false,
        show_origin: false,
        module: None,
        always: None,
    };
    let booted = logger::init(&log_options)
        .map_err(Box::<dyn Error>::from)
        .and_then(|()| {
            let signals = StopSignals::block()?;
            let prepared = args.prepare()?;
            let mmds = vmm::mmds::store(0, None)?;
            boot(&prepared.config, &prepared.options, signals, &mmds)
        });
    match booted {
        Ok(outcome) => {
            let (status, message) = vmm::run::container_exit(outcome);
            if let Some(message) = message {
                eprintln!("ember: {message}");
            }
            ExitCode::from(status.code())
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
    mmds: SharedMmds,
) -> Result<Outcome, Box<dyn Error>> {
    let api = api::start(sock, args.http_api_max_payload_size, &args.id)?;
    // Measured as Firecracker does: once the API socket is bound.
    opts.startup = ProcessStartup::measure(
        args.start_time_us,
        args.start_time_cpu_us,
        args.parent_cpu_time_us.unwrap_or(0),
    );
    if let Some(us) = opts.startup.wall_us {
        log::info!("serving the API {us} us after --start-time-us");
    }
    if args.describes_vm() {
        let cfg = configured_vm(args)?;
        let spec = VmSpec::new(&cfg, &opts)?;
        let lifecycle = Lifecycle::new(api, cfg, opts, mmds.clone());
        let lifecycle = Arc::new(Mutex::new(lifecycle));
        return Ok(builder::run(&spec, signals, Some(lifecycle), &mmds)?);
    }
    let cfg = VmConfig {
        metrics: args.metrics(),
        ..Default::default()
    };
    let lifecycle = Lifecycle::new(api.clone(), cfg, opts, mmds.clone());
    let lifecycle = Arc::new(Mutex::new(lifecycle));
    loop {
        // Requests are answered until one is an InstanceStart that boots the VM.
        let next = lock(&lifecycle).serve();
        if let Some(spec) = next {
            let booted = builder::run(&spec, signals.try_clone()?, Some(lifecycle.clone()), &mmds);
            match booted {
                Ok(outcome) => return Ok(outcome),
                // The VM never started: say why, and keep serving the configuration.
                Err(err) if lock(&lifecycle).state() == VmState::NotStarted => {
                    lock(&lifecycle).start_failed(err);
                    continue;
                }
                Err(err) => return Err(err.into()),
            }
        }
        let mut fds = [api.notify_fd(), signals.fd()].map(|fd| pollfd(fd, libc::POLLIN));
        poll(&mut fds, -1)?;
        if let Some(signo) = signals.read() {
            return Ok(Outcome {
                status: ExitStatus::Signal(signo as i32),
                message: format!("stopped by signal {signo}"),
            });
        }
    }
}

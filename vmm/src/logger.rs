//! ember's own log: which lines are kept, how they look and where they go. Set from the command
//! line at start (`--level`, `--log-path`, `--show-level`, `--show-log-origin`) and changed by a
//! config file's `logger` section or `PUT /logger` before boot, as Firecracker's logger is.
//! Each call site writes at most `LINES_PER_SECOND` lines a second, because devices log
//! guest misbehaviour and a guest can misbehave in a loop.
//!
//! This module owns the process's `log` backend and the log file (opened, like every file a
//! user names, through `devices::host_file`). It must never carry guest console output, which goes to stdout
//! or `--serial-out` on its own path.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Instant;

use api_server::model::LoggerConfig;
use devices::host_file::{self, HostFileError, Use};
use devices::sync;
use log::{LevelFilter, Log, Metadata, Record};

/// Errors configuring the log.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The level name is not one of Firecracker's.
    #[error("unknown log level '{0}': use Off, Error, Warning, Info, Debug or Trace")]
    Level(String),
    /// The log file or named pipe cannot be opened for writing.
    #[error("cannot open the log file '{}' for writing", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: HostFileError,
    },
    /// The log was configured before [`init`].
    #[error("internal: the logger is not installed")]
    NotInstalled,
}

/// Firecracker's level names, in any case; `Warn` is accepted for `Warning`.
pub fn parse_level(name: &str) -> Result<LevelFilter, LoggerError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warning" | "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return Err(LoggerError::Level(name.into())),
    })
}

/// Opens the log file: see [`Use::Append`] (a named pipe never stalls the thread that logs).
fn open_log(path: &Path) -> Result<File, LoggerError> {
    host_file::open(path, Use::Append)
        .map(|(file, _)| file)
        .map_err(|source| LoggerError::Open {
            path: path.into(),
            source,
        })
}

/// Where lines go.
enum Output {
    Stderr,
    File(File),
}

/// What can change after start.
struct Settings {
    level: LevelFilter,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
    output: Output,
}

/// Lines one call site may write per second. Devices log what a guest does wrong, and a guest
/// can do it in a loop: without a bound it could fill the host's disk through ember's log.
/// The counters (metrics) still count every event.
const LINES_PER_SECOND: u32 = 20;

/// What the per-call-site bound decides for one line.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Write it, after saying how many lines of this call site were dropped before it.
    Write { suppressed: u64 },
    /// Drop it.
    Drop,
}

/// One call site's use of its budget.
#[derive(Default)]
struct Site {
    /// The second (since the logger started) it last wrote in.
    second: u64,
    written: u32,
    dropped: u64,
}

/// The budgets of the call sites (source file and line) that logged.
#[derive(Default)]
struct SiteBudgets(HashMap<(&'static str, u32), Site>);

impl SiteBudgets {
    fn admit(&mut self, site: (&'static str, u32), second: u64) -> Admit {
        let site = self.0.entry(site).or_default();
        let mut suppressed = 0;
        if site.second != second {
            suppressed = std::mem::take(&mut site.dropped);
            (site.second, site.written) = (second, 0);
        }
        if site.written >= LINES_PER_SECOND {
            site.dropped += 1;
            return Admit::Drop;
        }
        site.written += 1;
        Admit::Write { suppressed }
    }
}

struct Logger {
    id: String,
    /// A target logged at Info whatever the level (the boot timer's report, when asked for).
    always: Option<&'static str>,
    settings: RwLock<Settings>,
    budgets: Mutex<SiteBudgets>,
    start: Instant,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// The command line's log options.
pub struct Options<'a> {
    /// The microVM's id, on every line.
    pub id: &'a str,
    /// Lines below this are dropped.
    pub level: LevelFilter,
    /// Where lines go; stderr when absent (stdout carries the guest's console).
    pub path: Option<&'a Path>,
    /// Prefix lines with their level.
    pub show_level: bool,
    /// Prefix lines with their source file and line.
    pub show_origin: bool,
    /// Only log this module (Firecracker's `--module`).
    pub module: Option<&'a str>,
    /// Log this target at Info whatever the level.
    pub always: Option<&'static str>,
}

/// Installs ember's logger. Called once, before any thread starts.
pub fn init(opts: &Options) -> Result<(), LoggerError> {
    let output = match opts.path {
        Some(path) => Output::File(open_log(path)?),
        None => Output::Stderr,
    };
    let logger = LOGGER.get_or_init(|| Logger {
        id: opts.id.into(),
        always: opts.always,
        settings: RwLock::new(Settings {
            level: opts.level,
            show_level: opts.show_level,
            show_origin: opts.show_origin,
            module: opts.module.map(Into::into),
            output,
        }),
        budgets: Mutex::new(SiteBudgets::default()),
        start: Instant::now(),
    });
    // A second call (tests) keeps the first logger: `log` accepts only one.
    let _ = log::set_logger(logger);
    logger.publish_max_level(opts.level);
    Ok(())
}

/// Applies a `logger` section: the fields given replace the current settings, and the level
/// is Info unless given.
pub fn configure(cfg: &LoggerConfig) -> Result<(), LoggerError> {
    let logger = LOGGER.get().ok_or(LoggerError::NotInstalled)?;
    // Everything that can fail comes before any change, so a bad request changes nothing.
    // An absent level means Info, as in Firecracker's spec and code, not "unchanged".
    let level = parse_level(cfg.level.as_deref().unwrap_or("Info"))?;
    let file = cfg
        .log_path
        .as_deref()
        .map(|p| open_log(Path::new(p)))
        .transpose()?;
    let mut s = sync::write(&logger.settings);
    s.level = level;
    if let Some(file) = file {
        s.output = Output::File(file);
    }
    s.show_level = cfg.show_level.unwrap_or(s.show_level);
    s.show_origin = cfg.show_log_origin.unwrap_or(s.show_origin);
    if cfg.module.is_some() {
        s.module.clone_from(&cfg.module);
    }
    let level = s.level;
    drop(s);
    logger.publish_max_level(level);
    Ok(())
}

impl Logger {
    /// `log`'s global filter, which spares disabled call sites the lock.
    fn publish_max_level(&self, level: LevelFilter) {
        let floor = if self.always.is_some() {
            LevelFilter::Info
        } else {
            LevelFilter::Off
        };
        log::set_max_level(level.max(floor));
    }

    fn settings(&self) -> std::sync::RwLockReadGuard<'_, Settings> {
        sync::read(&self.settings)
    }
}

/// `2026-11-25T10:00:00.123456Z [id:thread:LEVEL:file:line] message`, the level and origin
/// when asked for: Firecracker's layout, so the same log parsers work.
fn format_line(s: &Settings, id: &str, record: &Record) -> String {
    let now = jiff::Timestamp::now();
    let thread = std::thread::current();
    let mut line = format!("{now:.6} [{id}:{}", thread.name().unwrap_or("-"));
    if s.show_level {
        line.push(':');
        line.push_str(record.level().as_str());
    }
    if s.show_origin {
        let file = record.file().unwrap_or("?");
        let at = record.line().unwrap_or(0);
        line.push_str(&format!(":{file}:{at}"));
    }
    line.push_str(&format!("] {}\n", record.args()));
    line
}

impl Log for Logger {
    fn enabled(&self, meta: &Metadata) -> bool {
        if self.always == Some(meta.target()) && meta.level() <= log::Level::Info {
            return true;
        }
        let s = self.settings();
        meta.level() <= s.level
            && s.module
                .as_deref()
                .is_none_or(|m| meta.target().starts_with(m))
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = String::new();
        // Lines without a static location (none of ember's) are not bounded.
        if let (Some(file), Some(at)) = (record.file_static(), record.line()) {
            let second = self.start.elapsed().as_secs();
            let admit = sync::lock(&self.budgets).admit((file, at), second);
            match admit {
                Admit::Drop => return,
                Admit::Write { suppressed: 0 } => {}
                Admit::Write { suppressed } => {
                    line = format!("[{suppressed} more lines from {file}:{at} were dropped]\n");
                }
            }
        }
        let s = self.settings();
        line.push_str(&format_line(&s, &self.id, record));
        // One write per line keeps lines whole between threads; a log that cannot be written
        // has nowhere to report that, so the line is dropped.
        let _ = match &s.output {
            Output::Stderr => io::stderr().write_all(line.as_bytes()),
            Output::File(file) => (&*file).write_all(line.as_bytes()),
        };
    }

    fn flush(&self) {
        if let Output::File(file) = &self.settings().output {
            let _ = (&*file).flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_names_are_firecrackers_in_any_case() {
        assert_eq!(parse_level("Warning").unwrap(), LevelFilter::Warn);
        assert_eq!(parse_level("warn").unwrap(), LevelFilter::Warn);
        assert_eq!(parse_level("TRACE").unwrap(), LevelFilter::Trace);
        assert_eq!(parse_level("off").unwrap(), LevelFilter::Off);
        let err = parse_level("chatty").unwrap_err().to_string();
        assert!(err.contains("'chatty'") && err.contains("Warning"), "{err}");
    }

    #[test]
    fn lines_carry_id_thread_and_optionally_level_and_origin() {
        let mut s = Settings {
            level: LevelFilter::Info,
            show_level: false,
            show_origin: false,
            module: None,
            output: Output::Stderr,
        };
        let args = format_args!("hello {}", 7);
        let record = Record::builder()
            .args(args)
            .level(log::Level::Warn)
            .file(Some("vmm/src/x.rs"))
            .line(Some(12))
            .build();
        let plain = format_line(&s, "vm1", &record);
        let thread = std::thread::current().name().unwrap_or("-").to_owned();
        assert!(
            plain.ends_with(&format!(" [vm1:{thread}] hello 7\n")),
            "{plain}"
        );
        assert!(plain.starts_with("20") && plain.contains('T'), "{plain}");
        s.show_level = true;
        s.show_origin = true;
        let full = format_line(&s, "vm1", &record);
        assert!(
            full.ends_with(&format!(" [vm1:{thread}:WARN:vmm/src/x.rs:12] hello 7\n")),
            "{full}"
        );
    }

    #[test]
    fn sinks_are_created_owner_only_and_appended_to() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ember-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        open_log(&path).unwrap().write_all(b"one\n").unwrap();
        open_log(&path).unwrap().write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = open_log(&dir.join("missing/log")).unwrap_err().to_string();
        assert!(err.contains("missing/log"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_named_pipe_nobody_reads_never_blocks_the_writer() {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let path = std::env::temp_dir().join(format!("ember-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Opening does not wait for a reader, and a full pipe refuses instead of blocking.
        let mut pipe = open_log(&path).unwrap();
        let line = [b'x'; 4096];
        let refused = (0..64).any(|_| {
            pipe.write_all(&line)
                .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
        });
        assert!(refused, "256 KiB went into a pipe nobody reads");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_call_site_in_a_loop_is_bounded_and_says_what_it_dropped() {
        let mut budgets = SiteBudgets::default();
        let (site, other) = (("devices/x.rs", 10), ("devices/x.rs", 11));
        let written = (0..1000)
            .filter(|_| budgets.admit(site, 5) != Admit::Drop)
            .count();
        assert_eq!(written, LINES_PER_SECOND as usize);
        // Another call site has its own budget.
        assert_eq!(budgets.admit(other, 5), Admit::Write { suppressed: 0 });
        // The next second writes again, first saying how many were dropped.
        assert_eq!(
            budgets.admit(site, 6),
            Admit::Write {
                suppressed: 1000 - u64::from(LINES_PER_SECOND)
            }
        );
        assert_eq!(budgets.admit(site, 6), Admit::Write { suppressed: 0 });
    }
}

//! Device counters as JSON lines, Firecracker's way: one object per flush, written every
//! [`FLUSH_PERIOD`], on `FlushMetrics` and when the VM stops. Each counter is the change since
//! the previous line, so a reader sums lines (Firecracker's `SharedIncMetric` semantics).
//!
//! Keys: `utc_timestamp_ms`; `block`, `net`, `entropy`, `vsock` and `mmds`, the totals over
//! all devices of that kind (present even without such devices); `block_<drive_id>` and
//! `net_<iface_id>` per device. A VM has at most one entropy and one vsock device and one
//! metadata store (whose counters are the totals over the interfaces that reach it), so, as in
//! Firecracker, `entropy`, `vsock` and `mmds` are their only keys.
//!
//! This module reads the devices' own counters and owns the metrics file. It must not keep
//! a device lock across the file write.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use devices::host_file::{self, HostFileError, Use};
use devices::mmds::{MmdsMetrics, SharedMmds};
use devices::sync::lock;
use devices::virtio::block::BlockStats;
use devices::virtio::block::device::QueueServer;
use devices::virtio::net::{NetServer, NetStats, Tap};
use devices::virtio::rng::{RngServer, RngStats};
use devices::virtio::vsock::{VsockServer, VsockStats};
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::warn;
use serde_json::{Map, Value};
use vmm_sys_util::timerfd::TimerFd;

/// How often counters are written while the VM runs (Firecracker's period).
pub const FLUSH_PERIOD: Duration = Duration::from_secs(60);

/// Errors writing metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The metrics file or named pipe cannot be opened.
    #[error("cannot open the metrics file '{}'", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: HostFileError,
    },
    /// A line could not be written (a full named pipe drops it).
    #[error("cannot write metrics")]
    Write(#[source] io::Error),
    /// The flush timer could not be created.
    #[error("cannot create the metrics timer")]
    Timer(#[source] io::Error),
}

/// Opens the file `metrics_path` names, as a `PUT /metrics` or `--metrics-path` gives it.
pub fn open(path: &Path) -> Result<File, MetricsError> {
    host_file::open(path, Use::Append)
        .map(|(file, _)| file)
        .map_err(|source| MetricsError::Open {
            path: path.into(),
            source,
        })
}

/// A device whose counters are reported, through its serving handle, which reads what the
/// device published after its last batch (`devices::sync::Published`): never the transport
/// lock that vCPUs use for register accesses, nor the serving lock its I/O thread holds
/// across I/O.
pub enum Source {
    /// A virtio-blk drive.
    Block(QueueServer),
    /// A virtio-net interface.
    Net(NetServer<Tap>),
    /// The entropy device.
    Entropy(RngServer),
    /// The vsock device.
    Vsock(VsockServer),
    /// The metadata store, whose lock is held only briefly by the interfaces' stacks.
    Mmds(SharedMmds),
}

impl Source {
    fn kind(&self) -> &'static str {
        match self {
            Self::Block(_) => "block",
            Self::Net(_) => "net",
            Self::Entropy(_) => "entropy",
            Self::Vsock(_) => "vsock",
            Self::Mmds(_) => "mmds",
        }
    }

    /// The device's own key in a line, from its configuration id: none for the one entropy
    /// device, whose counters are its kind's totals.
    fn key(&self, id: &str) -> Option<String> {
        match self {
            Self::Entropy(_) | Self::Vsock(_) | Self::Mmds(_) => None,
            _ => Some(format!("{}_{id}", self.kind())),
        }
    }

    /// The device's counters, named as the device names them.
    fn read(&self) -> Counters {
        match self {
            Self::Block(b) => b.stats().counters().to_vec(),
            Self::Net(n) => n.stats().counters().to_vec(),
            Self::Entropy(r) => r.stats().counters().to_vec(),
            Self::Vsock(v) => v.stats().counters().to_vec(),
            Self::Mmds(m) => lock(m).metrics().counters().to_vec(),
        }
    }
}

/// Counters by name, in the order they are reported.
type Counters = Vec<(&'static str, u64)>;

/// Every kind's totals, all zero: the same names in the same order as each kind's devices.
fn zero_totals() -> [(&'static str, Counters); 5] {
    [
        ("block", BlockStats::default().counters().to_vec()),
        ("net", NetStats::default().counters().to_vec()),
        ("entropy", RngStats::default().counters().to_vec()),
        ("vsock", VsockStats::default().counters().to_vec()),
        ("mmds", MmdsMetrics::default().counters().to_vec()),
    ]
}

struct Reported {
    /// Its own key, besides its kind's totals.
    key: Option<String>,
    source: Source,
    /// The values in the previous line (none before the first).
    last: Vec<u64>,
}

/// How long ember took to serve its API, as Firecracker reports it (`api_server` in every
/// metrics line) when a launcher passes `--start-time-us` and `--start-time-cpu-us`: the time
/// since the launcher's timestamps, on the monotonic clock and on the process's CPU clock (plus
/// `--parent-cpu-time-us`, the launcher's own CPU time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessStartup {
    /// Microseconds from `--start-time-us` to the API being served.
    pub wall_us: Option<u64>,
    /// CPU microseconds from `--start-time-cpu-us`, plus the parent's.
    pub cpu_us: Option<u64>,
}

impl ProcessStartup {
    /// Measures now against the launcher's timestamps (monotonic and process-CPU clocks, in
    /// microseconds), as Firecracker does once its API socket is bound.
    pub fn measure(start_us: Option<u64>, start_cpu_us: Option<u64>, parent_cpu_us: u64) -> Self {
        let micros = |clock| utils::time::clock_ns(clock) / 1000;
        Self {
            wall_us: start_us.map(|t| micros(libc::CLOCK_MONOTONIC).saturating_sub(t)),
            cpu_us: start_cpu_us.map(|t| {
                let own = micros(libc::CLOCK_PROCESS_CPUTIME_ID).saturating_sub(t);
                own.saturating_add(parent_cpu_us)
            }),
        }
    }

    fn counters(&self) -> Counters {
        let mut found = Vec::new();
        if let Some(us) = self.wall_us {
            found.push(("process_startup_time_us", us));
        }
        if let Some(us) = self.cpu_us {
            found.push(("process_startup_time_cpu_us", us));
        }
        found
    }
}

/// The metrics of one VM, written to one file.
pub struct Metrics {
    out: File,
    devices: Vec<Reported>,
    startup: ProcessStartup,
}

impl Metrics {
    /// Reports `devices` (named by their configuration ids) and the process's `startup` time
    /// to `out`.
    pub fn new(out: File, devices: Vec<(String, Source)>, startup: ProcessStartup) -> Self {
        let devices = devices
            .into_iter()
            .map(|(id, source)| Reported {
                key: source.key(&id),
                last: Vec::new(),
                source,
            })
            .collect();
        Self {
            out,
            devices,
            startup,
        }
    }

    /// The next line: changes since the previous one.
    fn line(&mut self) -> String {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut doc = Map::new();
        doc.insert("utc_timestamp_ms".into(), Value::from(ms as u64));
        let mut totals = zero_totals();
        for dev in &mut self.devices {
            let now = dev.source.read();
            let delta: Counters = now
                .iter()
                .enumerate()
                .map(|(i, (name, n))| {
                    let last = dev.last.get(i).copied().unwrap_or(0);
                    (*name, n.wrapping_sub(last))
                })
                .collect();
            dev.last = now.iter().map(|(_, n)| *n).collect();
            if let Some((_, total)) = totals.iter_mut().find(|t| t.0 == dev.source.kind()) {
                total
                    .iter_mut()
                    .zip(&delta)
                    .for_each(|((_, t), (_, d))| *t += d);
            }
            if let Some(key) = &dev.key {
                doc.insert(key.clone(), object(&delta));
            }
        }
        for (kind, values) in totals {
            doc.insert(kind.into(), object(&values));
        }
        let startup = self.startup.counters();
        if !startup.is_empty() {
            // Firecracker's store metrics: the same values on every line.
            doc.insert("api_server".into(), object(&startup));
        }
        let mut line = Value::Object(doc).to_string();
        line.push('\n');
        line
    }

    /// Writes one line.
    pub fn write(&mut self) -> Result<(), MetricsError> {
        let line = self.line();
        self.out
            .write_all(line.as_bytes())
            .map_err(MetricsError::Write)
    }
}

fn object(counters: &[(&str, u64)]) -> Value {
    Value::Object(
        counters
            .iter()
            .map(|(n, v)| ((*n).to_owned(), Value::from(*v)))
            .collect(),
    )
}

/// The event-loop subscriber that writes a line every period.
pub struct MetricsTimer {
    metrics: Arc<Mutex<Metrics>>,
    timer: TimerFd,
}

impl MetricsTimer {
    /// Writes `metrics` every `period`.
    pub fn new(metrics: Arc<Mutex<Metrics>>, period: Duration) -> Result<Self, MetricsError> {
        let mut timer = TimerFd::new().map_err(|e| MetricsError::Timer(e.into()))?;
        timer
            .reset(period, Some(period))
            .map_err(|e| MetricsError::Timer(e.into()))?;
        Ok(Self { metrics, timer })
    }
}

impl MutEventSubscriber for MetricsTimer {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        if let Err(err) = lock(&self.metrics).write() {
            warn!("{}", crate::error_chain(&err));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new_raw(self.timer.as_raw_fd(), EventSet::IN)) {
            warn!("metrics will only be written on request: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventManager, SubscriberOps};

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("ember-metrics-{}-{name}", std::process::id()))
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_without_devices_carry_zero_totals() {
        let path = temp("empty");
        let _ = std::fs::remove_file(&path);
        let mut m = Metrics::new(open(&path).unwrap(), Vec::new(), ProcessStartup::default());
        m.write().unwrap();
        m.write().unwrap();
        let lines = lines(&path);
        assert_eq!(lines.len(), 2);
        assert!(lines[0]["utc_timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
        for (name, _) in BlockStats::default().counters() {
            assert_eq!(lines[1]["block"][name], 0, "{name}");
        }
        for (name, _) in NetStats::default().counters() {
            assert_eq!(lines[1]["net"][name], 0, "{name}");
        }
        for (name, _) in RngStats::default().counters() {
            assert_eq!(lines[1]["entropy"][name], 0, "{name}");
        }
        for (name, _) in VsockStats::default().counters() {
            assert_eq!(lines[1]["vsock"][name], 0, "{name}");
        }
        for (name, _) in MmdsMetrics::default().counters() {
            assert_eq!(lines[1]["mmds"][name], 0, "{name}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_process_start_up_time_is_reported_on_every_line_as_firecracker_does() {
        let now_us = crate::vcpu::monotonic_ns() / 1000;
        let startup = ProcessStartup::measure(Some(now_us - 5_000), Some(0), 7);
        assert!(startup.wall_us.unwrap() >= 5_000);
        assert!(startup.cpu_us.unwrap() >= 7);
        assert_eq!(
            ProcessStartup::measure(Some(u64::MAX), None, 0),
            ProcessStartup {
                wall_us: Some(0),
                cpu_us: None
            }
        );
        let path = temp("startup");
        let _ = std::fs::remove_file(&path);
        let mut m = Metrics::new(open(&path).unwrap(), Vec::new(), startup);
        m.write().unwrap();
        m.write().unwrap();
        for line in lines(&path) {
            let api = &line["api_server"];
            assert_eq!(api["process_startup_time_us"], startup.wall_us.unwrap());
            assert_eq!(api["process_startup_time_cpu_us"], startup.cpu_us.unwrap());
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_metadata_store_is_reported_under_mmds_only() {
        let path = temp("mmds");
        let _ = std::fs::remove_file(&path);
        let mmds = crate::mmds::store(100, None).unwrap();
        let sources = vec![("mmds".to_owned(), Source::Mmds(mmds))];
        let mut m = Metrics::new(open(&path).unwrap(), sources, ProcessStartup::default());
        m.write().unwrap();
        let line = &lines(&path)[0];
        let mut keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let want = [
            "block",
            "entropy",
            "mmds",
            "net",
            "utc_timestamp_ms",
            "vsock",
        ];
        assert_eq!(keys, want, "{line}");
        assert_eq!(line["mmds"]["rx_no_token"], 0, "{line}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_unopenable_path_names_itself() {
        let err = open(Path::new("/nonexistent/dir/metrics"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/dir/metrics"), "{err}");
    }

    #[test]
    fn the_timer_writes_a_line_each_period() {
        let path = temp("timer");
        let _ = std::fs::remove_file(&path);
        let metrics = Arc::new(Mutex::new(Metrics::new(
            open(&path).unwrap(),
            Vec::new(),
            ProcessStartup::default(),
        )));
        let timer = MetricsTimer::new(metrics, Duration::from_millis(20)).unwrap();
        let mut event_loop: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        event_loop.add_subscriber(Arc::new(Mutex::new(timer)));
        for _ in 0..3 {
            event_loop.run_with_timeout(1000).unwrap();
        }
        assert_eq!(lines(&path).len(), 3);
        std::fs::remove_file(&path).unwrap();
    }
}

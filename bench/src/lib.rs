//! The benchmark suite (`cargo bench -p bench`): every figure beside its baseline
//! measured in the same run, printed as a table and written as JSON. The parts:
//! [`api`] (wrk against `POST /orders` beside pgbench running the same
//! transaction), [`relay`], [`worker`], [`e2e`] (open-loop load through the
//! three release binaries, with peak memory), [`hostile`] (a normal client's
//! latency while thousands of slow-header and idle connections attack the API,
//! and how soon after their timeouts those are closed), and [`live`] (the relay in steady
//! traffic: what it adds to the API's rate and to every process's CPU, and its
//! commit→publish latency, over plain TCP and over TLS).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

pub mod api;
pub mod auth;
pub mod e2e;
pub mod hostile;
pub mod live;
pub mod load;
pub mod relay;
pub mod worker;

use std::{fmt::Write as _, process::Command, time::Duration};

/// How big the runs are.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// `--quick`: tiny runs that only prove the suite works (CI).
    pub quick: bool,
}

impl Scale {
    /// `quick` when quick, `full` otherwise.
    #[must_use]
    pub fn pick<T>(self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub measurement: String,
    /// The figure.
    pub value: String,
    /// Its baseline from the same run.
    pub baseline: String,
    /// Figure against baseline, or against the target.
    pub ratio: String,
    /// The target, and whether it was met.
    pub target: String,
}

impl Row {
    /// A row.
    pub fn new(
        measurement: impl Into<String>,
        value: impl Into<String>,
        baseline: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            measurement: measurement.into(),
            value: value.into(),
            baseline: baseline.into(),
            ratio: ratio.into(),
            target: target.into(),
        }
    }
}

/// One part's results: rows for the table, a JSON object for the summary.
#[derive(Debug, Clone)]
pub struct Section {
    /// Its name (`api`, `relay`, …).
    pub name: &'static str,
    /// Table rows.
    pub rows: Vec<Row>,
    /// Machine-readable figures.
    pub json: serde_json::Value,
}

/// The sections as one Markdown table.
#[must_use]
pub fn table(sections: &[Section]) -> String {
    let mut out = String::from(
        "| part | measurement | value | baseline (same run) | ratio | target |\n|---|---|---:|---:|---:|---|\n",
    );
    for section in sections {
        for row in &section.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                section.name, row.measurement, row.value, row.baseline, row.ratio, row.target
            );
        }
    }
    out
}

/// `met` or `MISSED`, for the target column.
#[must_use]
pub fn verdict(target: &str, met: bool) -> String {
    format!("{target}: {}", if met { "met" } else { "MISSED" })
}

/// Milliseconds with two decimals.
#[must_use]
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Whole-machine CPU time from `/proc/stat`, to tell a CPU-bound run from one
/// that waits.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    busy: u64,
    total: u64,
    at: std::time::Instant,
}

impl Cpu {
    /// The counters now.
    #[must_use]
    pub fn now() -> Self {
        let (busy, total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let fields: Vec<u64> = stat
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal …
                let idle = fields.get(3)? + fields.get(4)?;
                let total: u64 = fields.iter().take(8).sum();
                Some((total - idle, total))
            })
            .unwrap_or_default();
        Self {
            busy,
            total,
            at: std::time::Instant::now(),
        }
    }

    /// CPU seconds used by the whole machine since `self`, and the share of
    /// all cores that was.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn since(self) -> (f64, f64) {
        let later = Self::now();
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        // The counters are in clock ticks of all cores together.
        let seconds = self.at.elapsed().as_secs_f64() * cores * busy / total;
        (seconds, busy / total)
    }
}

/// CPU seconds (user and system) a process has used so far: `pid`, or this
/// process when `None`. 0 when it cannot be read.
#[must_use]
pub fn process_cpu(pid: Option<u32>) -> f64 {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The command name (field 2) may hold spaces: count from the last ')'.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11) // fields 14 and 15: utime, stime
                .take(2)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or_default();
    // /proc reports clock ticks of USER_HZ, 100 on Linux.
    #[allow(clippy::cast_precision_loss)]
    let seconds = ticks as f64 / 100.0;
    seconds
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces, so they are counted from the last `)`): the first is field 3, the
/// state. Empty when the process is gone.
fn stat_fields(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Every process id in `/proc` now.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The parent of process `pid` (`PPid` in `/proc/<pid>/status`), while it runs.
#[must_use]
pub fn parent_pid(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// CPU seconds (user and system) used so far by process `pid` and its
/// children: those running now ([`process_cpu`] of each, so a child started
/// since an earlier reading counts fully) and those that exited and were
/// reaped by `pid` (its `cutime` and `cstime`, so a child that exits between
/// two readings is not lost). For a PostgreSQL postmaster that is the whole
/// cluster: its backends and auxiliary processes. A counter that only grows:
/// the difference of two readings is what the cluster used in between.
#[must_use]
pub fn process_tree_cpu(pid: u32) -> f64 {
    let children: f64 = all_pids()
        .into_iter()
        .filter(|&p| {
            stat_fields(p)
                .get(1) // field 4: the parent's pid
                .and_then(|v| v.parse::<u32>().ok())
                == Some(pid)
        })
        .map(|p| process_cpu(Some(p)))
        .sum();
    let reaped: u64 = stat_fields(pid)
        .iter()
        .skip(13) // fields 16 and 17: cutime, cstime
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // Clock ticks of USER_HZ, as in `process_cpu`.
    #[allow(clippy::cast_precision_loss)]
    let reaped = reaped as f64 / 100.0;
    process_cpu(Some(pid)) + reaped + children
}

/// CPU seconds used so far by every running process whose command name
/// (`/proc/<pid>/comm`) is `name`, such as RabbitMQ's Erlang VM, `beam.smp`.
#[must_use]
pub fn named_cpu(name: &str) -> f64 {
    all_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .map(|p| process_cpu(Some(p)))
        .sum()
}

/// Runs pgbench with `script` on `url` (`clients` clients, `seconds` long,
/// prepared statements); returns transactions per second.
///
/// # Panics
/// When pgbench is missing or fails.
#[must_use]
pub fn pgbench(url: &str, script: &str, clients: usize, seconds: u64) -> f64 {
    let text = run_pgbench(url, script, clients, seconds, &[]);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output: {text}"))
}

/// Runs pgbench with `script` open loop: transactions start on a schedule of
/// `rate` per second (`--rate`), spread over `clients` clients. Returns each
/// transaction's latency from its transaction log, counted from its scheduled
/// start (pgbench's rule under `--rate`): waiting for a free client counts, as
/// it does for a request waiting for the API's pool.
///
/// # Panics
/// When pgbench is missing or fails.
#[must_use]
pub fn pgbench_latencies(
    url: &str,
    script: &str,
    clients: usize,
    seconds: u64,
    rate: f64,
) -> Vec<Duration> {
    let dir = std::env::temp_dir().join(format!("bench-log-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("tx");
    let _ = run_pgbench(
        url,
        script,
        clients,
        seconds,
        &[
            format!("--rate={rate}"),
            "--log".into(),
            format!("--log-prefix={}", prefix.display()),
        ],
    );
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
        // client_id transaction_no time script_no time_epoch time_us [lag]
        latencies.extend(log.lines().filter_map(|line| {
            let micros: u64 = line.split_whitespace().nth(2)?.parse().ok()?;
            Some(Duration::from_micros(micros))
        }));
    }
    let _ = std::fs::remove_dir_all(&dir);
    latencies
}

/// pgbench's standard output, after it succeeded.
fn run_pgbench(url: &str, script: &str, clients: usize, seconds: u64, extra: &[String]) -> String {
    let path = std::env::temp_dir().join(format!("bench-{}.sql", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, script).unwrap();
    let threads = clients.min(2);
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared"])
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &seconds.to_string()])
        .args(extra)
        .arg("-f")
        .arg(&path)
        .arg(url)
        .output()
        .expect("pgbench is not installed (Debian: postgresql-client)");
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "pgbench failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// The `p`-th percentile (0–100) of `samples` (sorted in place).
#[must_use]
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[index.min(samples.len() - 1)]
}

/// Events per second.
#[must_use]
pub fn rate(count: usize, elapsed: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let count = count as f64;
    count / elapsed.as_secs_f64()
}

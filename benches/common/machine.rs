//! The machine the benchmarks run on, from /proc: its CPU, how busy it is, and a process's
//! memory.

use std::time::{Duration, Instant};

/// Clock ticks per second (the unit of /proc/stat and /proc/PID/stat times).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// (busy, total) jiffies of all CPUs, from /proc/stat.
pub fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // user nice system idle iowait ...
    (
        total - fields[3] - fields.get(4).copied().unwrap_or(0),
        total,
    )
}

/// The share of all CPUs busy since `start` (a `machine_cpu()` reading).
pub fn busy_since(start: (u64, u64)) -> f64 {
    let end = machine_cpu();
    (end.0 - start.0) as f64 / (end.1 - start.1).max(1) as f64
}

/// Waits (at most `limit`) for 3 s in which the machine is less than 20 % busy, so that a
/// build or test running next to the benchmark does not skew it from the start; returns the
/// busy share of the last 3 s, which the report states.
pub fn wait_for_quiet(limit: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let before = machine_cpu();
        std::thread::sleep(Duration::from_secs(3));
        let busy = busy_since(before);
        if busy < 0.2 || start.elapsed() > limit {
            return busy;
        }
    }
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM); None once the process is gone or a
/// zombie (which has no memory fields).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
}

/// `status_kib` summed over `pid` and its child processes: a sealpost daemon runs GPGME in
/// `sealpost gpg-worker` children (the gpg processes they start are orphaned at once, so they
/// are not counted). For VmHWM this is the sum of each process's own peak, an upper bound of
/// their peak together. None once `pid` is gone.
pub fn tree_status_kib(pid: u32, field: &str) -> Option<u64> {
    let own = status_kib(pid, field)?;
    let children: u64 = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|child| parent_of(*child) == Some(pid))
        .filter_map(|child| status_kib(child, field))
        .sum();
    Some(own + children)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Processes and threads created on the whole machine since boot (the `processes` line of
/// /proc/stat counts every clone).
pub fn forks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("processes "))
        .and_then(|n| n.trim().parse().ok())
        .expect("processes in /proc/stat")
}

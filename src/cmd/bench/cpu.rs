//! What processes spend, sampled: CPU time (getrusage of the children, /proc for any pid, the
//! PostgreSQL backends serving a database) and peak memory; and what machine this is.

use std::time::Duration;

use sqlx::Connection;

use crate::db;

/// CPU-seconds (user + system) of the children this process has waited for, so far.
#[cfg(unix)]
pub(super) fn children_cpu_secs() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN is always valid.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

#[cfg(not(unix))]
pub(super) fn children_cpu_secs() -> Option<f64> {
    None
}

/// User + system CPU-seconds a process has used so far (Linux: /proc/PID/stat).
#[cfg(target_os = "linux")]
pub(super) fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (in parentheses) may hold spaces: count fields after its end.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn process_cpu_secs(_pid: u32) -> Option<f64> {
    None
}

/// CPU-seconds the whole machine has been busy so far, all cores together (Linux: /proc/stat,
/// every state but idle and iowait): whatever ran — streamlab, the broker, the database.
#[cfg(target_os = "linux")]
pub(super) fn machine_busy_secs() -> Option<f64> {
    let busy = busy_ticks(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_sec > 0).then(|| busy as f64 / per_sec as f64)
}

/// The busy ticks of /proc/stat's first line (all cores): user, nice, system, irq, softirq and
/// steal — not idle, not iowait (guest time is already counted in user).
#[cfg(any(target_os = "linux", test))]
fn busy_ticks(stat: &str) -> Option<u64> {
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = ticks[..] else {
        return None;
    };
    Some(user + nice + system + irq + softirq + steal)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn machine_busy_secs() -> Option<f64> {
    None
}

/// The CPU time of the PostgreSQL backends serving database `name` while it is watched: their
/// pids from pg_stat_activity, their CPU from /proc, sampled every 25 ms until [`DbCpu::stop`].
pub(super) struct DbCpu {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Option<f64>>,
}

impl DbCpu {
    pub(super) fn watch(admin_url: &str, name: &str) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let (url, name, until) = (admin_url.to_string(), name.to_string(), stop.clone());
        let task = tokio::spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
            let mut seen = std::collections::BTreeMap::<i32, f64>::new();
            let mut measurable = true;
            while !until.is_cancelled() {
                let pids: Vec<i32> = db::measure::pg_backend_pids(&mut conn, &name).await.ok()?;
                for pid in pids {
                    match process_cpu_secs(pid as u32) {
                        Some(secs) => {
                            let e = seen.entry(pid).or_default();
                            *e = e.max(secs);
                        }
                        // Not on this machine (or not Linux): no figure rather than a wrong one.
                        None => measurable = false,
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = conn.close().await;
            (measurable && !seen.is_empty()).then(|| seen.values().sum())
        });
        Self { stop, task }
    }

    pub(super) async fn stop(self) -> Option<f64> {
        self.stop.cancel();
        self.task.await.ok().flatten()
    }
}

/// Linux only (VmHWM from /proc); elsewhere peak memory is not measured and shows as 0.
#[cfg(target_os = "linux")]
pub(super) fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
pub(super) fn peak_rss_kib(_pid: u32) -> Option<u64> {
    None
}

pub(super) fn machine() -> String {
    #[cfg(target_os = "linux")]
    let (cpuinfo, meminfo) = (
        std::fs::read_to_string("/proc/cpuinfo").ok(),
        std::fs::read_to_string("/proc/meminfo").ok(),
    );
    #[cfg(not(target_os = "linux"))]
    let (cpuinfo, meminfo): (Option<String>, Option<String>) = (None, None);
    let cpu = cpuinfo
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_gib = meminfo
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB")
}

#[cfg(test)]
mod tests {
    use super::busy_ticks;

    #[test]
    fn busy_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  100 2 30 5000 40 5 6 7 0 0\ncpu0 50 1 15 2500 20 2 3 3 0 0\n";
        assert_eq!(busy_ticks(stat), Some(100 + 2 + 30 + 5 + 6 + 7));
        assert_eq!(busy_ticks("cpu  1 2 3\n"), None, "too few fields");
        assert_eq!(
            busy_ticks("intr 1 2 3 4 5 6 7 8\n"),
            None,
            "not the cpu line"
        );
    }
}

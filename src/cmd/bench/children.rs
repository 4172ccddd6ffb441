//! The streamlab processes bench measures: started as this same executable, with bench's Kafka
//! settings, timed, their peak memory and CPU sampled.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cpu::{children_cpu_secs, machine_busy_secs, peak_rss_kib};
use crate::db::redact;
use crate::kafka;

/// A child `streamlab` run: wall time, peak RSS (VmHWM, sampled until it exits) and CPU time.
pub(super) struct ChildRun {
    pub(super) secs: f64,
    pub(super) peak_rss_kib: u64,
    /// User + system CPU-seconds of the child (None off Unix).
    pub(super) cpu_secs: Option<f64>,
    /// Cores the whole machine kept busy on average meanwhile (None off Linux).
    pub(super) machine_busy_cores: Option<f64>,
}

/// The Kafka settings of bench's own command line, handed to every streamlab it starts.
pub(super) static CHILD_PROPERTIES: std::sync::OnceLock<kafka::security::Secret> =
    std::sync::OnceLock::new();

/// `streamlab` (this executable) as a child that connects to Kafka as bench does.
/// A streamlab child with `args`. A database URL (`-D URL`) travels in `DATABASE_URL`, not on
/// the command line, where `ps` would show its password.
pub(super) fn streamlab_child(exe: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(exe);
    if let Some(text) = CHILD_PROPERTIES.get() {
        command.env(super::INHERITED_PROPERTIES_ENV, text.expose());
    }
    let mut rest = args.iter();
    while let Some(&arg) = rest.next() {
        match (arg, rest.clone().next()) {
            ("-D", Some(&url)) => {
                command.env("DATABASE_URL", url);
                rest.next();
            }
            _ => {
                command.arg(arg);
            }
        }
    }
    command
}

/// A child's arguments as they may be printed: database URLs without their passwords.
fn shown(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.contains("://") {
                redact(a)
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) async fn run_child(exe: &Path, brokers: &str, args: &[&str]) -> Result<ChildRun> {
    let started = Instant::now();
    let (cpu_before, busy_before) = (children_cpu_secs(), machine_busy_secs());
    let mut child = streamlab_child(exe, args)
        .env("STREAMLAB_BROKERS", brokers)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a streamlab child")?;
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("streamlab {} failed: {err}", shown(args));
    }
    let cpu_secs = match (cpu_before, children_cpu_secs()) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let secs = started.elapsed().as_secs_f64();
    let machine_busy_cores = busy_before
        .zip(machine_busy_secs())
        .map(|(before, after)| (after - before) / secs);
    Ok(ChildRun {
        secs,
        peak_rss_kib: peak,
        cpu_secs,
        machine_busy_cores,
    })
}

/// Wall time of a short child run in milliseconds, waited for directly (no polling interval).
pub(super) async fn exact_ms(exe: &Path, brokers: &str, args: &[&str]) -> Result<f64> {
    let mut command = streamlab_child(exe, args);
    command
        .env("STREAMLAB_BROKERS", brokers)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let shown = shown(args);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = command.output().context("starting a streamlab child")?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!(
                "streamlab {shown} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(ms)
    })
    .await
    .context("timing a streamlab child")?
}

/// `produce --topic … --count … --rate 0` (as fast as it can), then `more`.
pub(super) fn produce_unlimited<'a>(
    topic: &'a str,
    count: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["produce", "--topic", topic, "--count", count, "--rate", "0"];
    args.extend_from_slice(more);
    args
}

/// The two ways `consume` reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum Reading {
    /// The default: the one member of a group of its own.
    Member,
    /// `--assign all`.
    Alone,
}

impl Reading {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Alone => "alone",
        }
    }

    /// As the report's rows say it.
    pub(super) fn described(self) -> &'static str {
        match self {
            Self::Member => "group member",
            Self::Alone => "--assign all",
        }
    }

    /// `consume --stop-at-end` of `topic` into `url` as `group`, reading this way.
    pub(super) fn consume<'a>(
        self,
        topic: &'a str,
        sink: &'a str,
        url: &'a str,
        group: &'a str,
    ) -> Vec<&'a str> {
        let mut args = vec![
            "consume",
            "--topic",
            topic,
            "--sink",
            sink,
            "-D",
            url,
            "--group",
            group,
            "--stop-at-end",
        ];
        args.extend(self.flags());
        args
    }

    /// The one of two figures that belongs to this way of reading.
    pub(super) fn pick<'a, T>(self, member: &'a mut T, alone: &'a mut T) -> &'a mut T {
        match self {
            Reading::Member => member,
            Reading::Alone => alone,
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Self::Member => &[],
            Self::Alone => &["--assign", "all"],
        }
    }
}

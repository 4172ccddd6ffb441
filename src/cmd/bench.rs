//! `streamlab bench`: the pipeline against its limits, in one run, on the local stack.
//!
//! Every figure is the median of `--repeats` runs. `produce` and `consume` run as child processes
//! (this same binary), so their peak RSS is their own. Ratios within one run matter more than
//! absolute numbers on a shared, noisy machine.
//!
//! `consume` is measured both ways it reads: as the one member of a group of its own (what
//! `consume` does by default: it joins, waits for its assignment, and leaves at the end) and
//! with `--assign all` (every partition alone), on the same backlog, in alternating order.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sqlx::{Connection, Postgres, Sqlite};
use time::OffsetDateTime;

use crate::cli::{BenchArgs, DEFAULT_BATCH_SIZE};
use crate::db::{self, redact, Change, Dialect, Folded, Landed, Row, Tombstone, UpsertWay};
use crate::events::{Event, EventKind, Generator, Sale};
use crate::kafka::{self, admin::Admin, partitioner::partition_for_key};
use crate::render;

/// How long the database limits may wait to connect.
const LIMIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Serialize)]
pub struct BenchReport {
    pub machine: String,
    pub events: u64,
    pub repeats: u32,
    pub produce_sales_per_sec: f64,
    pub produce_sales_mb_per_sec: f64,
    pub produce_sensor_per_sec: f64,
    pub fetch_limit_per_sec: f64,
    pub pg_copy_limit_per_sec: f64,
    pub sqlite_bulk_limit_per_sec: f64,
    /// As a lone group member (the default).
    pub consume_pg_per_sec: f64,
    pub consume_pg_ratio: f64,
    /// As a lone group member with `--writers 2` and `--writers 4`.
    pub consume_pg_writers2_per_sec: f64,
    pub consume_pg_writers2_ratio: f64,
    pub consume_pg_writers4_per_sec: f64,
    pub consume_pg_writers4_ratio: f64,
    /// CPU-seconds per million events of `consume` into PostgreSQL (one writer, group member):
    /// the streamlab process (getrusage of the child; None off Unix) and the PostgreSQL
    /// backends serving it (/proc/PID/stat of their pg_stat_activity pids, sampled every 25 ms;
    /// None off Linux or when PostgreSQL runs elsewhere).
    pub consume_pg_cpu_secs_per_million: Option<f64>,
    pub consume_pg_db_cpu_secs_per_million: Option<f64>,
    /// The same for the PostgreSQL limit: its one backend, loading the binary COPY.
    pub pg_copy_db_cpu_secs_per_million: Option<f64>,
    /// With `--assign all`, on the same backlog.
    pub consume_pg_assign_all_per_sec: f64,
    pub consume_pg_assign_all_ratio: f64,
    /// `consume --upsert` (a lone group member) of `produce --keys` updates, and its limit: the
    /// same updates, batched as consume batches them, applied by [`db::bulk_upsert_sales`] the
    /// faster of its two ways (each the faster of one transaction and one per batch).
    pub pg_upsert_limit_per_sec: f64,
    pub pg_upsert_staged_per_sec: f64,
    pub pg_upsert_unnest_per_sec: f64,
    pub consume_pg_upsert_per_sec: f64,
    pub consume_pg_upsert_ratio: f64,
    /// CPU-seconds per million events of `consume --upsert` (streamlab, the database) and of
    /// its limit's backend, measured as for the append rows.
    pub consume_pg_upsert_cpu_secs_per_million: Option<f64>,
    pub consume_pg_upsert_db_cpu_secs_per_million: Option<f64>,
    pub pg_upsert_limit_db_cpu_secs_per_million: Option<f64>,
    pub consume_sqlite_per_sec: f64,
    pub consume_sqlite_ratio: f64,
    pub consume_sqlite_assign_all_per_sec: f64,
    pub consume_sqlite_assign_all_ratio: f64,
    /// `consume --stop-at-end` of an empty topic, start to exit: as a lone group member (join,
    /// assignment, leave) and with `--assign all`.
    pub startup_member_ms: f64,
    pub startup_assign_all_ms: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub produce_peak_rss_mib: f64,
    pub consume_peak_rss_mib: f64,
    /// `produce --compression`: speed and stored size per codec.
    pub codecs: Vec<CodecCost>,
    /// The same produce and fetch on the durable broker (`--durable-broker`).
    pub durable_produce_per_sec: Option<f64>,
    pub durable_fetch_per_sec: Option<f64>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// A child `streamlab` run: wall time, peak RSS (VmHWM, sampled until it exits) and CPU time.
struct ChildRun {
    secs: f64,
    peak_rss_kib: u64,
    /// User + system CPU-seconds of the child (None off Unix).
    cpu_secs: Option<f64>,
}

/// CPU-seconds (user + system) of the children this process has waited for, so far.
#[cfg(unix)]
fn children_cpu_secs() -> Option<f64> {
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
fn children_cpu_secs() -> Option<f64> {
    None
}

/// User + system CPU-seconds a process has used so far (Linux: /proc/PID/stat).
#[cfg(target_os = "linux")]
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (in parentheses) may hold spaces: count fields after its end.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

#[cfg(not(target_os = "linux"))]
fn process_cpu_secs(_pid: u32) -> Option<f64> {
    None
}

/// The CPU time of the PostgreSQL backends serving database `name` while it is watched: their
/// pids from pg_stat_activity, their CPU from /proc, sampled every 25 ms until [`DbCpu::stop`].
struct DbCpu {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Option<f64>>,
}

impl DbCpu {
    fn watch(admin_url: &str, name: &str) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let (url, name, until) = (admin_url.to_string(), name.to_string(), stop.clone());
        let task = tokio::spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
            let mut seen = std::collections::BTreeMap::<i32, f64>::new();
            let mut measurable = true;
            while !until.is_cancelled() {
                let pids: Vec<i32> =
                    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
                        .bind(&name)
                        .fetch_all(&mut conn)
                        .await
                        .ok()?;
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

    async fn stop(self) -> Option<f64> {
        self.stop.cancel();
        self.task.await.ok().flatten()
    }
}

/// Linux only (VmHWM from /proc); elsewhere peak memory is not measured and shows as 0.
#[cfg(target_os = "linux")]
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
fn peak_rss_kib(_pid: u32) -> Option<u64> {
    None
}

async fn run_child(exe: &Path, brokers: &str, args: &[&str]) -> Result<ChildRun> {
    let started = Instant::now();
    let cpu_before = children_cpu_secs();
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
    Ok(ChildRun {
        secs: started.elapsed().as_secs_f64(),
        peak_rss_kib: peak,
        cpu_secs,
    })
}

fn machine() -> String {
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

/// What a bench run needs at every step.
struct Ctx {
    exe: PathBuf,
    brokers: String,
    stamp: i64,
    pg_admin: String,
    workdir: PathBuf,
    /// Events per measurement.
    n: u64,
}

/// Every round's figures, before medians.
#[derive(Default)]
struct Samples {
    produce_sales: Vec<f64>,
    produce_sensor: Vec<f64>,
    mb_per_sec: Vec<f64>,
    fetch: Vec<f64>,
    copy: Vec<f64>,
    bulk: Vec<f64>,
    consume_pg: Vec<f64>,
    consume_pg_writers2: Vec<f64>,
    consume_pg_writers4: Vec<f64>,
    /// CPU per million events of consume → PostgreSQL (one writer, member) and its limit.
    cpu: CpuSamples,
    consume_pg_alone: Vec<f64>,
    /// The upsert limit's two ways: staged COPY, consume's UNNEST statements.
    upsert_staged: Vec<f64>,
    upsert_unnest: Vec<f64>,
    consume_pg_upsert: Vec<f64>,
    cpu_upsert: CpuSamples,
    consume_sqlite: Vec<f64>,
    consume_sqlite_alone: Vec<f64>,
    startup_member: Vec<f64>,
    startup_alone: Vec<f64>,
    rss_produce: u64,
    rss_consume: u64,
}

/// CPU-seconds per million events of a consume → PostgreSQL run and of its limit, every round's.
#[derive(Default)]
struct CpuSamples {
    /// The streamlab process.
    streamlab: Vec<f64>,
    /// The PostgreSQL backends serving it.
    database: Vec<f64>,
    /// The PostgreSQL backend loading the limit.
    limit: Vec<f64>,
}

impl CpuSamples {
    /// A consume run of `n` events: the child's CPU-seconds, its database's.
    fn consumed(&mut self, run: &ChildRun, database: Option<f64>, n: f64) {
        self.streamlab.extend(run.cpu_secs.map(|s| s * 1e6 / n));
        self.database.extend(database.map(|s| s * 1e6 / n));
    }

    /// Medians of streamlab, database, limit: None where nothing was measured.
    fn medians(self) -> [Option<f64>; 3] {
        [self.streamlab, self.database, self.limit].map(|xs| (!xs.is_empty()).then(|| median(xs)))
    }
}

/// The Kafka settings of bench's own command line, handed to every streamlab it starts.
static CHILD_PROPERTIES: std::sync::OnceLock<kafka::security::Secret> = std::sync::OnceLock::new();

/// `streamlab` (this executable) as a child that connects to Kafka as bench does.
/// A streamlab child with `args`. A database URL (`-D URL`) travels in `DATABASE_URL`, not on
/// the command line, where `ps` would show its password.
fn streamlab_child(exe: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(exe);
    if let Some(text) = CHILD_PROPERTIES.get() {
        command.env(crate::cli::INHERITED_PROPERTIES_ENV, text.expose());
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

pub async fn run(args: BenchArgs) -> Result<()> {
    let _ = CHILD_PROPERTIES.set(args.kafka.security.source.to_text());
    let ctx = Ctx {
        exe: std::env::current_exe()?,
        brokers: args.kafka.brokers.join(","),
        stamp: OffsetDateTime::now_utc().unix_timestamp(),
        pg_admin: args.pg_url.clone(),
        workdir: PathBuf::from("target/bench"),
        n: args.events,
    };
    std::fs::create_dir_all(&ctx.workdir)?;
    let mut admin = Admin::connect(&args.kafka).await?;
    tracing::info!(
        "bench: {} events, {} repeats, PostgreSQL {}",
        ctx.n,
        args.repeats,
        redact(&ctx.pg_admin)
    );
    let mut samples = Samples::default();
    for round in 0..args.repeats {
        let topic = produce_and_fetch(&ctx, &args, &mut admin, round, &mut samples).await?;
        // The database limits, on the same kind of rows.
        let rows = generate(ctx.n);
        let (copy, copy_cpu) = pg_copy_limit(&ctx, round, &rows).await?;
        samples.copy.push(copy);
        samples.cpu.limit.extend(copy_cpu);
        samples
            .bulk
            .push(sqlite_bulk_limit(&ctx.workdir, &rows).await?);
        drop(rows);
        // Which way of reading goes first alternates.
        let modes = if round % 2 == 0 {
            [Reading::Member, Reading::Alone]
        } else {
            [Reading::Alone, Reading::Member]
        };
        consume_both_ways(&ctx, &topic, round, modes, &mut samples).await?;
        delete_topic(&mut admin, &topic).await;
        upsert_round(&ctx, &args, &mut admin, round, &mut samples).await?;
        startup_both_ways(&ctx, &args, &mut admin, round, modes, &mut samples).await?;
        tracing::info!("bench: round {} of {} done", round + 1, args.repeats);
    }
    let mut report = samples.report(&ctx, &args);

    let (exe, stamp, n) = (&ctx.exe, ctx.stamp, ctx.n);
    if let Some(durable) = &args.durable_broker {
        let (produce, fetch) = durable_engine(exe, &args, durable, stamp, n).await?;
        report.durable_produce_per_sec = Some(produce);
        report.durable_fetch_per_sec = Some(fetch);
    }
    // What each compression codec costs and saves, on a quarter of the events.
    report.codecs = codec_costs(exe, &args, &mut admin, stamp, (n / 4).max(10_000)).await?;
    // Steady-state latency at 10,000 events/s.
    if !args.latency.is_zero() {
        let (brokers, pg) = (&ctx.brokers, &ctx.pg_admin);
        let (p50, p99) = latency(exe, brokers, &mut admin, pg, stamp, args.latency).await?;
        report.latency_p50_ms = Some(p50);
        report.latency_p99_ms = Some(p99);
    }

    std::fs::write(
        ctx.workdir.join("latest.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    print_report(&report)?;
    Ok(())
}

impl Samples {
    /// Medians, ratios to the limits, peak memory.
    fn report(self, ctx: &Ctx, args: &BenchArgs) -> BenchReport {
        let [cpu_streamlab, cpu_db, cpu_copy] = self.cpu.medians();
        let [cpu_upsert, cpu_upsert_db, cpu_upsert_limit] = self.cpu_upsert.medians();
        let mut r = BenchReport {
            machine: machine(),
            events: ctx.n,
            repeats: args.repeats,
            produce_sales_per_sec: median(self.produce_sales),
            produce_sensor_per_sec: median(self.produce_sensor),
            produce_sales_mb_per_sec: median(self.mb_per_sec),
            fetch_limit_per_sec: median(self.fetch),
            pg_copy_limit_per_sec: median(self.copy),
            sqlite_bulk_limit_per_sec: median(self.bulk),
            consume_pg_per_sec: median(self.consume_pg),
            consume_pg_assign_all_per_sec: median(self.consume_pg_alone),
            consume_pg_writers2_per_sec: median(self.consume_pg_writers2),
            consume_pg_writers4_per_sec: median(self.consume_pg_writers4),
            consume_pg_cpu_secs_per_million: cpu_streamlab,
            consume_pg_db_cpu_secs_per_million: cpu_db,
            pg_copy_db_cpu_secs_per_million: cpu_copy,
            pg_upsert_staged_per_sec: median(self.upsert_staged),
            pg_upsert_unnest_per_sec: median(self.upsert_unnest),
            consume_pg_upsert_per_sec: median(self.consume_pg_upsert),
            consume_pg_upsert_cpu_secs_per_million: cpu_upsert,
            consume_pg_upsert_db_cpu_secs_per_million: cpu_upsert_db,
            pg_upsert_limit_db_cpu_secs_per_million: cpu_upsert_limit,
            consume_sqlite_per_sec: median(self.consume_sqlite),
            consume_sqlite_assign_all_per_sec: median(self.consume_sqlite_alone),
            startup_member_ms: median(self.startup_member),
            startup_assign_all_ms: median(self.startup_alone),
            produce_peak_rss_mib: self.rss_produce as f64 / 1024.0,
            consume_peak_rss_mib: self.rss_consume as f64 / 1024.0,
            ..BenchReport::default()
        };
        let pg_limit = r.fetch_limit_per_sec.min(r.pg_copy_limit_per_sec);
        let sqlite_limit = r.fetch_limit_per_sec.min(r.sqlite_bulk_limit_per_sec);
        r.consume_pg_ratio = r.consume_pg_per_sec / pg_limit;
        r.consume_pg_assign_all_ratio = r.consume_pg_assign_all_per_sec / pg_limit;
        r.consume_pg_writers2_ratio = r.consume_pg_writers2_per_sec / pg_limit;
        r.consume_pg_writers4_ratio = r.consume_pg_writers4_per_sec / pg_limit;
        r.pg_upsert_limit_per_sec = r.pg_upsert_staged_per_sec.max(r.pg_upsert_unnest_per_sec);
        r.consume_pg_upsert_ratio =
            r.consume_pg_upsert_per_sec / r.fetch_limit_per_sec.min(r.pg_upsert_limit_per_sec);
        r.consume_sqlite_ratio = r.consume_sqlite_per_sec / sqlite_limit;
        r.consume_sqlite_assign_all_ratio = r.consume_sqlite_assign_all_per_sec / sqlite_limit;
        r
    }
}

/// Produce, unlimited, each kind onto a fresh topic of its own; then read the sales topic with
/// consume's reader and discard it (the fetch limit). The sales topic is the round's backlog.
async fn produce_and_fetch(
    ctx: &Ctx,
    args: &BenchArgs,
    admin: &mut Admin,
    round: u32,
    samples: &mut Samples,
) -> Result<String> {
    let (stamp, n) = (ctx.stamp, ctx.n);
    let count = n.to_string();
    let topic = format!("bench-{stamp}-{round}");
    let sensor_topic = format!("bench-{stamp}-{round}-sensor");
    for (t, kind) in [(&topic, "sales"), (&sensor_topic, "sensor")] {
        admin.create_topic(t, args.partitions, 1, &[]).await?;
        let produce = produce_unlimited(t, &count, &["--kind", kind]);
        let run = run_child(&ctx.exe, &ctx.brokers, &produce).await?;
        if kind == "sales" {
            samples.produce_sales.push(n as f64 / run.secs);
            samples.rss_produce = samples.rss_produce.max(run.peak_rss_kib);
        } else {
            samples.produce_sensor.push(n as f64 / run.secs);
            delete_topic(admin, t).await;
        }
    }
    let started = Instant::now();
    let drained = drain(&args.kafka, &topic).await?;
    samples
        .fetch
        .push(drained.records as f64 / started.elapsed().as_secs_f64());
    let produce_secs = n as f64 / samples.produce_sales[samples.produce_sales.len() - 1];
    samples
        .mb_per_sec
        .push(drained.payload_bytes as f64 / 1e6 / produce_secs);
    Ok(topic)
}

/// `consume --stop-at-end` of the backlog into each database, as a lone group member and with
/// `--assign all`, each into a fresh database.
async fn consume_both_ways(
    ctx: &Ctx,
    topic: &str,
    round: u32,
    modes: [Reading; 2],
    samples: &mut Samples,
) -> Result<()> {
    let (stamp, n) = (ctx.stamp, ctx.n as f64);
    // One writer both ways, then a group member with two and with four writers.
    let runs = [
        (modes[0], 1),
        (modes[1], 1),
        (Reading::Member, 2),
        (Reading::Member, 4),
    ];
    for (mode, writers) in runs {
        let label = format!("{}_w{writers}", mode.label());
        let name = format!("streamlab_bench_{stamp}_{round}_{label}");
        let pg_db = pg_database_url(&ctx.pg_admin, &name)?;
        let group = format!("bench-{stamp}-{round}-pg-{label}");
        let writers_flag = writers.to_string();
        let mut consume = mode.consume(topic, "pg", &pg_db, &group);
        consume.extend(["--writers", &writers_flag]);
        let (run, db_cpu) = consume_into_pg(ctx, &name, &pg_db, &consume).await?;
        let rate = n / run.secs;
        match (mode, writers) {
            (Reading::Member, 1) => {
                samples.consume_pg.push(rate);
                samples.cpu.consumed(&run, db_cpu, n);
            }
            (Reading::Alone, _) => samples.consume_pg_alone.push(rate),
            (Reading::Member, 2) => samples.consume_pg_writers2.push(rate),
            (Reading::Member, _) => samples.consume_pg_writers4.push(rate),
        }
        samples.rss_consume = samples.rss_consume.max(run.peak_rss_kib);
    }
    for mode in modes {
        let sqlite_path = ctx
            .workdir
            .join(format!("consume-{round}-{}.db", mode.label()));
        remove_sqlite(&sqlite_path);
        let sqlite_url = format!("sqlite://{}", sqlite_path.display());
        let group = format!("bench-{stamp}-{round}-sqlite-{}", mode.label());
        let consume = mode.consume(topic, "sqlite", &sqlite_url, &group);
        let run = run_child(&ctx.exe, &ctx.brokers, &consume).await?;
        let rates = mode.pick(
            &mut samples.consume_sqlite,
            &mut samples.consume_sqlite_alone,
        );
        rates.push(n / run.secs);
        samples.rss_consume = samples.rss_consume.max(run.peak_rss_kib);
        remove_sqlite(&sqlite_path);
    }
    Ok(())
}

/// Run `consume` (its arguments name database `name` at `url`) into that database, fresh:
/// created and migrated first, so that its backends are watched from the start, and dropped
/// after. The run, and the CPU-seconds those backends spent.
async fn consume_into_pg(
    ctx: &Ctx,
    name: &str,
    url: &str,
    consume: &[&str],
) -> Result<(ChildRun, Option<f64>)> {
    <Postgres as Dialect>::connect(url, LIMIT_TIMEOUT)
        .await?
        .close()
        .await;
    let db_cpu = DbCpu::watch(&ctx.pg_admin, name);
    let run = run_child(&ctx.exe, &ctx.brokers, consume).await;
    let db_cpu = db_cpu.stop().await;
    drop_database(&ctx.pg_admin, name).await;
    Ok((run?, db_cpu))
}

/// Keys of the upsert measurement's updates, the share of them that are tombstones (percent),
/// and the seed both its `produce` and its limit generate them from.
const UPSERT_KEYS: u64 = 10_000;
const UPSERT_TOMBSTONE_PERCENT: u32 = 5;
const UPSERT_SEED: u64 = 27;

/// `consume --upsert` into PostgreSQL against its limit: the limit on the updates
/// [`upsert_batches`] makes; then `produce --keys … --tombstones … --seed …` of the same updates
/// onto a topic of its own, consumed to its end as a lone group member into a fresh database.
async fn upsert_round(
    ctx: &Ctx,
    args: &BenchArgs,
    admin: &mut Admin,
    round: u32,
    samples: &mut Samples,
) -> Result<()> {
    let batches = upsert_batches(ctx.n, args.partitions);
    let mut fastest = (0.0, None);
    for (way, label, rates) in [
        (UpsertWay::Staged, "staged", &mut samples.upsert_staged),
        (UpsertWay::Unnest, "unnest", &mut samples.upsert_unnest),
    ] {
        let what = format!("{round}_upsert_{label}");
        let (rate, cpu) = pg_limit(ctx, &what, &Load::Upsert(&batches, way), 1).await?;
        rates.push(rate);
        if rate > fastest.0 {
            fastest = (rate, cpu);
        }
    }
    samples.cpu_upsert.limit.extend(fastest.1);
    drop(batches);
    let topic = format!("bench-{}-{round}-upsert", ctx.stamp);
    admin.create_topic(&topic, args.partitions, 1, &[]).await?;
    let (count, keys, seed) = (
        ctx.n.to_string(),
        UPSERT_KEYS.to_string(),
        UPSERT_SEED.to_string(),
    );
    let tombstones = format!("{UPSERT_TOMBSTONE_PERCENT}%");
    let updates = [
        "--keys",
        &keys,
        "--tombstones",
        &tombstones,
        "--seed",
        &seed,
    ];
    let produce = produce_unlimited(&topic, &count, &updates);
    run_child(&ctx.exe, &ctx.brokers, &produce).await?;
    let name = format!("streamlab_bench_{}_{round}_upsert", ctx.stamp);
    let (url, group) = (
        pg_database_url(&ctx.pg_admin, &name)?,
        format!("bench-{name}"),
    );
    let mut consume = Reading::Member.consume(&topic, "pg", &url, &group);
    consume.push("--upsert");
    let (run, db_cpu) = consume_into_pg(ctx, &name, &url, &consume).await?;
    samples.consume_pg_upsert.push(ctx.n as f64 / run.secs);
    samples.cpu_upsert.consumed(&run, db_cpu, ctx.n as f64);
    samples.rss_consume = samples.rss_consume.max(run.peak_rss_kib);
    delete_topic(admin, &topic).await;
    Ok(())
}

/// The `n` updates `produce --keys UPSERT_KEYS --tombstones UPSERT_TOMBSTONE_PERCENT% --seed
/// UPSERT_SEED` makes, as `consume --upsert` writes them: in batches of consume's default size,
/// each folded to the last change per key; partitions as produce's partitioner puts the keys,
/// each partition's offsets from 0.
fn upsert_batches(n: u64, partitions: i32) -> Vec<Folded> {
    let mut g = Generator::new(EventKind::Sales, Some(UPSERT_SEED));
    let tombstones = f64::from(UPSERT_TOMBSTONE_PERCENT) / 100.0;
    let mut next = vec![0i64; partitions.max(1) as usize];
    let now = OffsetDateTime::now_utc();
    let mut change = || {
        let (key, event) = g.next_update(UPSERT_KEYS, tombstones, now);
        let at = partition_for_key(key.as_bytes(), next.len());
        let (partition, offset) = (at as i32, next[at]);
        next[at] += 1;
        match event {
            None => Change::Delete(Tombstone {
                key,
                partition,
                offset,
            }),
            Some(event) => {
                let record_key = Some(key.clone().into_bytes().into());
                let landed = Landed {
                    event,
                    partition,
                    offset,
                    key: record_key,
                    value: Default::default(),
                };
                Change::Put(key, landed)
            }
        }
    };
    let batch = DEFAULT_BATCH_SIZE as u64;
    (0..n.div_ceil(batch))
        .map(|b| {
            let size = batch.min(n - b * batch);
            db::latest_per_key((0..size).map(|_| change()).collect())
        })
        .collect()
}

/// `produce --topic … --count … --rate 0` (as fast as it can), then `more`.
fn produce_unlimited<'a>(topic: &'a str, count: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["produce", "--topic", topic, "--count", count, "--rate", "0"];
    args.extend_from_slice(more);
    args
}

/// What joining costs at start: consume an empty topic to its end, both ways.
async fn startup_both_ways(
    ctx: &Ctx,
    args: &BenchArgs,
    admin: &mut Admin,
    round: u32,
    modes: [Reading; 2],
    samples: &mut Samples,
) -> Result<()> {
    let stamp = ctx.stamp;
    let empty = format!("bench-{stamp}-{round}-empty");
    admin.create_topic(&empty, args.partitions, 1, &[]).await?;
    for mode in modes {
        let sqlite_path = ctx
            .workdir
            .join(format!("startup-{round}-{}.db", mode.label()));
        remove_sqlite(&sqlite_path);
        let sqlite_url = format!("sqlite://{}", sqlite_path.display());
        let migrate = ["migrate", "--sink", "sqlite", "-D", &sqlite_url];
        run_child(&ctx.exe, &ctx.brokers, &migrate).await?;
        let group = format!("bench-{stamp}-{round}-startup-{}", mode.label());
        let consume = mode.consume(&empty, "sqlite", &sqlite_url, &group);
        let ms = exact_ms(&ctx.exe, &ctx.brokers, &consume).await?;
        mode.pick(&mut samples.startup_member, &mut samples.startup_alone)
            .push(ms);
        remove_sqlite(&sqlite_path);
    }
    delete_topic(admin, &empty).await;
    Ok(())
}

/// The two ways `consume` reads.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// The default: the one member of a group of its own.
    Member,
    /// `--assign all`.
    Alone,
}

impl Reading {
    fn label(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Alone => "alone",
        }
    }

    /// `consume --stop-at-end` of `topic` into `url` as `group`, reading this way.
    fn consume<'a>(
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
    fn pick<'a, T>(self, member: &'a mut T, alone: &'a mut T) -> &'a mut T {
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

/// Wall time of a short child run in milliseconds, waited for directly (no polling interval).
async fn exact_ms(exe: &Path, brokers: &str, args: &[&str]) -> Result<f64> {
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

/// What reading a whole topic found.
#[derive(Debug, Default)]
struct Drained {
    records: u64,
    /// Keys and values, uncompressed.
    payload_bytes: u64,
    /// Record batches as the log stores them (compressed).
    batch_bytes: u64,
}

/// Read every partition of `topic` to its end with consume's reader, keeping nothing.
async fn drain(opts: &kafka::Config, topic: &str) -> Result<Drained> {
    let mut topic = kafka::fetch::TopicReaders::open(opts, topic).await?;
    let reads = topic.readers.iter_mut().map(|reader| async move {
        let end = reader.end_offset().await?;
        let (mut offset, mut d) = (0i64, Drained::default());
        while offset < end {
            let fetch = reader
                .fetch(offset, kafka::FETCH_BYTES, kafka::FETCH_MAX_WAIT_MS)
                .await?;
            if fetch.next_offset <= offset {
                break;
            }
            offset = fetch.next_offset;
            d.records += fetch.records.len() as u64;
            d.batch_bytes += fetch.batch_bytes;
            d.payload_bytes += fetch
                .records
                .iter()
                .map(|r| {
                    (r.key.as_ref().map_or(0, |k| k.len())
                        + r.value.as_ref().map_or(0, |v| v.len())) as u64
                })
                .sum::<u64>();
        }
        Ok::<_, anyhow::Error>(d)
    });
    let parts = futures::future::try_join_all(reads).await?;
    Ok(parts.into_iter().fold(Drained::default(), |a, b| Drained {
        records: a.records + b.records,
        payload_bytes: a.payload_bytes + b.payload_bytes,
        batch_bytes: a.batch_bytes + b.batch_bytes,
    }))
}

/// Produce (unlimited) and read back a quarter of the events on the durable broker: medians over
/// the repeats, as for the in-memory figures.
async fn durable_engine(
    exe: &Path,
    args: &BenchArgs,
    brokers: &str,
    stamp: i64,
    n: u64,
) -> Result<(f64, f64)> {
    let opts = kafka::Config {
        brokers: vec![brokers.to_string()],
        // Another broker: nothing learnt about the first one applies.
        cluster: Default::default(),
        ..args.kafka.clone()
    };
    let mut admin = Admin::connect(&opts).await?;
    let events = (n / 4).max(10_000);
    let count = events.to_string();
    let (mut produce, mut fetch) = (vec![], vec![]);
    for round in 0..args.repeats {
        let topic = format!("bench-{stamp}-{round}-durable");
        admin.create_topic(&topic, args.partitions, 1, &[]).await?;
        let run = run_child(exe, brokers, &produce_unlimited(&topic, &count, &[])).await?;
        produce.push(events as f64 / run.secs);
        let started = Instant::now();
        let drained = drain(&opts, &topic).await?;
        fetch.push(drained.records as f64 / started.elapsed().as_secs_f64());
        delete_topic(&mut admin, &topic).await;
    }
    Ok((median(produce), median(fetch)))
}

/// What one `--compression` codec costs (produce speed) and saves (bytes in the log).
#[derive(Debug, Clone, Serialize)]
pub struct CodecCost {
    pub codec: String,
    pub produce_per_sec: f64,
    pub stored_bytes_per_event: f64,
}

/// Produce the same number of sales events once per codec onto fresh topics, then read each log
/// back to see how many bytes it holds.
async fn codec_costs(
    exe: &Path,
    args: &BenchArgs,
    admin: &mut Admin,
    stamp: i64,
    events: u64,
) -> Result<Vec<CodecCost>> {
    let brokers = args.kafka.brokers.join(",");
    let count = events.to_string();
    let mut costs = Vec::new();
    for codec in ["none", "lz4", "zstd", "snappy", "gzip"] {
        let topic = format!("bench-{stamp}-codec-{codec}");
        admin.create_topic(&topic, args.partitions, 1, &[]).await?;
        let produce = produce_unlimited(&topic, &count, &["--seed", "7", "--compression", codec]);
        let run = run_child(exe, &brokers, &produce).await?;
        let stored = drain(&args.kafka, &topic).await?;
        delete_topic(admin, &topic).await;
        costs.push(CodecCost {
            codec: codec.into(),
            produce_per_sec: events as f64 / run.secs,
            stored_bytes_per_event: stored.batch_bytes as f64 / stored.records.max(1) as f64,
        });
    }
    Ok(costs)
}

/// Delete a topic bench created once it is measured: a run leaves no topics behind (a failure
/// costs a warning, not the run).
async fn delete_topic(admin: &mut Admin, topic: &str) {
    if let Err(e) = admin.delete_topic(topic).await {
        tracing::warn!("bench: cannot delete its topic '{topic}': {e:#}");
    }
}

fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn generate(n: u64) -> Vec<Sale> {
    // Unseeded: time-ordered v7 ids, like the events consume writes (random ids would make the
    // primary-key index the bottleneck and understate the limit).
    // Timestamps a few microseconds apart, as a fast producer stamps them: a million equal
    // timestamps would make the index on ts a pile of duplicates and understate the limit.
    let mut g = Generator::new(EventKind::Sales, None);
    let start = OffsetDateTime::now_utc();
    (0..n)
        .map(
            |i| match g.next_event(start + time::Duration::microseconds(2 * i as i64)) {
                Event::Sale(s) => s,
                Event::Sensor(_) => unreachable!("a sales generator makes sales"),
            },
        )
        .collect()
}

fn pg_database_url(admin_url: &str, name: &str) -> Result<String> {
    let mut url = url::Url::parse(admin_url).context("--pg-url")?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

async fn drop_database(admin_url: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

/// The PostgreSQL write limit: binary COPY of the rows into `sales_events` of a fresh database
/// (migrated as `consume`'s are), encoded as `consume` encodes them, loaded two ways — in one
/// COPY and one transaction, and as COPYs of `consume`'s default batch size, a transaction each —
/// whichever is faster. Also the CPU-seconds per million rows its backend spent (Linux, local
/// server).
async fn pg_copy_limit(ctx: &Ctx, round: u32, rows: &[Sale]) -> Result<(f64, Option<f64>)> {
    let rows = as_rows(rows);
    let per_batch = DEFAULT_BATCH_SIZE as usize;
    pg_limit(ctx, &format!("{round}_copy"), &Load::Copy(&rows), per_batch).await
}

/// What a PostgreSQL limit loads, in units a transaction takes one or more of: rows, by one
/// binary COPY into `sales_events`; or upsert batches, each by [`db::bulk_upsert_sales`].
enum Load<'a> {
    Copy(&'a [Row<'a, Sale>]),
    Upsert(&'a [Folded], UpsertWay),
}

impl Load<'_> {
    fn len(&self) -> usize {
        match self {
            Load::Copy(rows) => rows.len(),
            Load::Upsert(batches, _) => batches.len(),
        }
    }

    /// Before the clock starts: the upsert's staging table.
    async fn prepare(&self, conn: &mut sqlx::PgConnection) -> Result<()> {
        if let Load::Upsert(_, UpsertWay::Staged) = self {
            db::create_upsert_stage(conn, EventKind::Sales).await?;
        }
        Ok(())
    }

    /// Load the units `range` in the caller's transaction: how many events they hold.
    async fn apply(&self, conn: &mut sqlx::PgConnection, range: Range<usize>) -> Result<u64> {
        match self {
            Load::Copy(rows) => Ok(db::bulk_load_sales(conn, &rows[range]).await?),
            Load::Upsert(batches, way) => {
                let mut events = 0;
                for folded in &batches[range] {
                    db::bulk_upsert_sales(conn, folded, *way).await?;
                    events += (folded.puts.len() + folded.deletes.len()) as u64 + folded.superseded;
                }
                Ok(events)
            }
        }
    }
}

/// A PostgreSQL limit: `load` into fresh databases (migrated as `consume`'s are) two ways — all
/// of it in one transaction, and `per_batch` units a transaction each — whichever is faster,
/// with the CPU-seconds per million events its backend spent (Linux, local server).
async fn pg_limit(
    ctx: &Ctx,
    what: &str,
    load: &Load<'_>,
    per_batch: usize,
) -> Result<(f64, Option<f64>)> {
    let whole = pg_load(ctx, what, load, load.len()).await?;
    let batched = pg_load(ctx, &format!("{what}_tx"), load, per_batch).await?;
    Ok(if batched.0 > whole.0 { batched } else { whole })
}

/// One way of loading for [`pg_limit`]: `per_transaction` units of `load` a transaction, each
/// committed, into a fresh database named after `what`.
async fn pg_load(
    ctx: &Ctx,
    what: &str,
    load: &Load<'_>,
    per_transaction: usize,
) -> Result<(f64, Option<f64>)> {
    let name = format!("streamlab_bench_{}_{what}", ctx.stamp);
    let pool =
        <Postgres as Dialect>::connect(&pg_database_url(&ctx.pg_admin, &name)?, LIMIT_TIMEOUT)
            .await?;
    let mut conn = pool.acquire().await?;
    load.prepare(&mut conn).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await?;
    let cpu_before = process_cpu_secs(backend as u32);
    let started = Instant::now();
    let mut loaded = 0;
    let per_transaction = per_transaction.max(1);
    for start in (0..load.len()).step_by(per_transaction) {
        let mut tx = conn.begin().await?;
        let units = start..load.len().min(start + per_transaction);
        loaded += load.apply(&mut tx, units).await?;
        tx.commit().await?;
    }
    let rate = loaded as f64 / started.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(process_cpu_secs(backend as u32))
        .map(|(before, after)| (after - before) * 1e6 / loaded.max(1) as f64);
    drop(conn);
    pool.close().await;
    drop_database(&ctx.pg_admin, &name).await;
    Ok((rate, cpu))
}

/// The rows as a consumer would write them from partition 0, offsets 0, 1, 2…
fn as_rows(rows: &[Sale]) -> Vec<Row<'_, Sale>> {
    rows.iter()
        .enumerate()
        .map(|(i, event)| Row {
            event,
            key: None,
            partition: 0,
            offset: i as i64,
        })
        .collect()
}

/// The rows inserted into a fresh SQLite file (migrated as `consume`'s are) in one
/// transaction, with the statement `consume` uses (one prepared multi-row INSERT, a thousand
/// rows at a time): the SQLite limit.
async fn sqlite_bulk_limit(workdir: &Path, rows: &[Sale]) -> Result<f64> {
    let path = workdir.join("limit.db");
    remove_sqlite(&path);
    let pool = <Sqlite as Dialect>::connect(&format!("sqlite://{}", path.display()), LIMIT_TIMEOUT)
        .await?;
    let mut conn = pool.acquire().await?;
    // A cache big enough for the whole transaction: with SQLite's default 2 MB, a million-row
    // transaction spills pages mid-way and measures the spill, not the database.
    sqlx::query("PRAGMA cache_size = -262144")
        .execute(&mut *conn)
        .await?;
    let rows = as_rows(rows);
    let started = Instant::now();
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    Sqlite::insert_sales(&mut tx, &rows, false).await?;
    tx.commit().await?;
    let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    pool.close().await;
    remove_sqlite(&path);
    Ok(rate)
}

/// p50/p99 of (row written − event ts) with `produce --rate 10000` and `consume` into PostgreSQL.
async fn latency(
    exe: &Path,
    brokers: &str,
    admin: &mut Admin,
    pg_admin: &str,
    stamp: i64,
    window: Duration,
) -> Result<(f64, f64)> {
    let topic = format!("bench-{stamp}-latency");
    admin.create_topic(&topic, 3, 1, &[]).await?;
    let name = format!("streamlab_bench_{stamp}_latency");
    let db_url = pg_database_url(pg_admin, &name)?;
    // Migrate first so the consumer is reading before the first event is produced.
    <Postgres as Dialect>::connect(&db_url, LIMIT_TIMEOUT)
        .await?
        .close()
        .await;
    let group = format!("bench-{stamp}-latency");
    let consume = [
        "consume", "--topic", &topic, "--sink", "pg", "-D", &db_url, "--group", &group,
    ];
    let mut consumer = streamlab_child(exe, &consume)
        .env("STREAMLAB_BROKERS", brokers)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let secs = format!("{}ms", window.as_millis());
    run_child(
        exe,
        brokers,
        &[
            "produce",
            "--topic",
            &topic,
            "--rate",
            "10000",
            "--duration",
            &secs,
        ],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &consumer.id().to_string()])
        .status();
    let _ = consumer.wait();
    let mut conn = sqlx::PgConnection::connect(&db_url).await?;
    // ingested_at is now() of the writing transaction, which commits right after.
    let (p50, p99): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
         FROM (SELECT EXTRACT(EPOCH FROM ingested_at - ts) * 1000 AS ms FROM sales_events) AS l",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    drop_database(pg_admin, &name).await;
    delete_topic(admin, &topic).await;
    Ok((p50.unwrap_or(f64::NAN), p99.unwrap_or(f64::NAN)))
}

fn codec_table(costs: &[CodecCost]) -> comfy_table::Table {
    let mut t = render::table(["--compression", "PRODUCE", "STORED", "VS NONE"]);
    let none = costs
        .iter()
        .find(|c| c.codec == "none")
        .map_or(f64::NAN, |c| c.stored_bytes_per_event);
    for c in costs {
        t.add_row(vec![
            c.codec.clone(),
            format!("{:.0} events/s", c.produce_per_sec),
            format!("{:.1} bytes/event", c.stored_bytes_per_event),
            format!("{:.0} %", 100.0 * c.stored_bytes_per_event / none),
        ]);
    }
    t
}

/// A row of the report: measure, result, target.
type ReportRow = (String, String, String);

fn events_per_sec(x: f64) -> String {
    format!("{x:.0} events/s")
}

/// The broker's and the databases' own rates: the limits the pipeline is held to.
fn broker_rows(r: &BenchReport) -> Vec<ReportRow> {
    let rate = events_per_sec;
    let mut rows = vec![
        (
            "produce sales (unlimited)".into(),
            format!(
                "{} · {:.1} MB/s",
                rate(r.produce_sales_per_sec),
                r.produce_sales_mb_per_sec
            ),
            target(r.produce_sales_per_sec >= 500_000.0, "≥ 500000 events/s"),
        ),
        (
            "produce sensor (unlimited)".into(),
            rate(r.produce_sensor_per_sec),
            String::new(),
        ),
        (
            "fetch limit (read and discard)".into(),
            rate(r.fetch_limit_per_sec),
            String::new(),
        ),
    ];
    if let (Some(produce), Some(fetch)) = (r.durable_produce_per_sec, r.durable_fetch_per_sec) {
        rows.push((
            "durable broker: produce / fetch".into(),
            format!("{} / {}", rate(produce), rate(fetch)),
            String::new(),
        ));
    }
    rows.push((
        "PostgreSQL limit (binary COPY)".into(),
        format!("{:.0} rows/s", r.pg_copy_limit_per_sec),
        String::new(),
    ));
    rows.push((
        "PostgreSQL upsert limit, per batch: staged binary COPY / UNNEST".into(),
        format!(
            "{} / {}",
            rate(r.pg_upsert_staged_per_sec),
            rate(r.pg_upsert_unnest_per_sec)
        ),
        String::new(),
    ));
    rows.push((
        "SQLite limit (bulk insert, 1 txn)".into(),
        format!("{:.0} rows/s", r.sqlite_bulk_limit_per_sec),
        String::new(),
    ));
    rows
}

/// consume's rates, each with its ratio to the limit.
fn consume_rows(r: &BenchReport) -> Vec<ReportRow> {
    let rate = events_per_sec;
    let consume = |per_sec: f64, ratio: f64| format!("{} · {ratio:.2} × limit", rate(per_sec));
    vec![
        (
            "consume → PostgreSQL (group member)".into(),
            consume(r.consume_pg_per_sec, r.consume_pg_ratio),
            target(r.consume_pg_ratio >= 0.9, "≥ 0.9 × limit"),
        ),
        (
            "consume → PostgreSQL, --writers 2 / 4".into(),
            format!(
                "{} · {:.2} × / {} · {:.2} ×",
                rate(r.consume_pg_writers2_per_sec),
                r.consume_pg_writers2_ratio,
                rate(r.consume_pg_writers4_per_sec),
                r.consume_pg_writers4_ratio
            ),
            String::new(),
        ),
        cpu_row(
            "consume → PostgreSQL: streamlab / database (limit's COPY)",
            [
                r.consume_pg_cpu_secs_per_million,
                r.consume_pg_db_cpu_secs_per_million,
                r.pg_copy_db_cpu_secs_per_million,
            ],
        ),
        (
            "consume → PostgreSQL (--assign all)".into(),
            consume(
                r.consume_pg_assign_all_per_sec,
                r.consume_pg_assign_all_ratio,
            ),
            "= group member".into(),
        ),
        (
            format!(
                "consume --upsert → PostgreSQL ({UPSERT_KEYS} keys, \
                 {UPSERT_TOMBSTONE_PERCENT}% tombstones)"
            ),
            consume(r.consume_pg_upsert_per_sec, r.consume_pg_upsert_ratio),
            target(r.consume_pg_upsert_ratio >= 0.9, "≥ 0.9 × limit"),
        ),
        cpu_row(
            "consume --upsert → PostgreSQL: streamlab / database (limit's)",
            [
                r.consume_pg_upsert_cpu_secs_per_million,
                r.consume_pg_upsert_db_cpu_secs_per_million,
                r.pg_upsert_limit_db_cpu_secs_per_million,
            ],
        ),
        (
            "consume → SQLite (group member)".into(),
            consume(r.consume_sqlite_per_sec, r.consume_sqlite_ratio),
            target(
                r.consume_sqlite_per_sec >= 300_000.0 && r.consume_sqlite_ratio >= 0.7,
                "≥ 300000 and ≥ 0.7 ×",
            ),
        ),
        (
            "consume → SQLite (--assign all)".into(),
            consume(
                r.consume_sqlite_assign_all_per_sec,
                r.consume_sqlite_assign_all_ratio,
            ),
            "= group member".into(),
        ),
    ]
}

/// "CPU per million events, `what`": streamlab / database (the limit's backend).
fn cpu_row(what: &str, [streamlab, database, limit]: [Option<f64>; 3]) -> ReportRow {
    let cpu = |secs: Option<f64>| secs.map_or("not measured".into(), |s| format!("{s:.2} s"));
    (
        format!("CPU per million events, {what}"),
        format!("{} / {} ({})", cpu(streamlab), cpu(database), cpu(limit)),
        String::new(),
    )
}

/// Start-up, latency and memory.
fn other_rows(r: &BenchReport) -> Vec<ReportRow> {
    let mut rows = vec![(
        "consume start-up, empty topic (member / --assign all)".into(),
        format!(
            "{:.0} ms / {:.0} ms",
            r.startup_member_ms, r.startup_assign_all_ms
        ),
        String::new(),
    )];
    if let (Some(p50), Some(p99)) = (r.latency_p50_ms, r.latency_p99_ms) {
        rows.push((
            "latency at 10000 events/s (p50 / p99)".into(),
            format!("{p50:.0} ms / {p99:.0} ms"),
            target(p99 <= 30.0, "p99 ≤ 30 ms"),
        ));
    }
    rows.push((
        format!("peak RSS produce / consume (backlog of {})", r.events),
        format!(
            "{:.1} MiB / {:.1} MiB",
            r.produce_peak_rss_mib, r.consume_peak_rss_mib
        ),
        target(r.consume_peak_rss_mib <= 64.0, "consume ≤ 64 MiB"),
    ));
    rows
}

/// The target column: the target, marked MISSED when the figure does not meet it.
fn target(met: bool, text: &str) -> String {
    if met {
        text.to_string()
    } else {
        format!("MISSED: {text}")
    }
}

fn print_report(r: &BenchReport) -> Result<()> {
    let mut t = render::table(["MEASURE", "RESULT", "TARGET"]);
    for (measure, result, target) in broker_rows(r)
        .into_iter()
        .chain(consume_rows(r))
        .chain(other_rows(r))
    {
        t.add_row(vec![measure, result, target]);
    }
    render::line(format!(
        "streamlab bench · {} events × {} repeats (medians) · {}\n{t}",
        r.events, r.repeats, r.machine
    ))?;
    render::line(codec_table(&r.codecs))?;
    render::line("written to target/bench/latest.json")?;
    Ok(())
}

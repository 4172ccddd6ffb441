//! The figures: every round's samples, their medians and ratios to the limits (the JSON in
//! `target/bench/latest.json`), and the table printed.

use anyhow::Result;
use serde::Serialize;

use super::children::ChildRun;
use super::cpu::machine;
use super::limits::{UPSERT_KEYS, UPSERT_TOMBSTONE_PERCENT};
use super::Ctx;
use crate::render;

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
    /// As a lone group member with `--writers 1` and `--writers 4` (the default chooses).
    pub consume_pg_writers1_per_sec: f64,
    pub consume_pg_writers1_ratio: f64,
    pub consume_pg_writers4_per_sec: f64,
    pub consume_pg_writers4_ratio: f64,
    /// CPU-seconds per million events of `consume` into PostgreSQL (default writers, group member):
    /// the streamlab process (getrusage of the child; None off Unix) and the PostgreSQL
    /// backends serving it (/proc/PID/stat of their pg_stat_activity pids, sampled every 25 ms;
    /// None off Linux or when PostgreSQL runs elsewhere).
    pub consume_pg_cpu_secs_per_million: Option<f64>,
    pub consume_pg_db_cpu_secs_per_million: Option<f64>,
    /// The same for the PostgreSQL limit: its backends, loading the binary COPY.
    pub pg_copy_db_cpu_secs_per_million: Option<f64>,
    /// Cores the whole machine (streamlab, broker, database) kept busy during that consume, on
    /// average (Linux: /proc/stat); and the cores there are.
    pub consume_pg_machine_busy_cores: Option<f64>,
    pub cores: usize,
    /// The rate that consume's cost per event allows with every core busy (its rate × cores /
    /// busy cores), and that ceiling against the limit: how far more overlap alone could go.
    pub consume_pg_ceiling_per_sec: Option<f64>,
    pub consume_pg_ceiling_ratio: Option<f64>,
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
    /// CPU-seconds per million events of `consume` into SQLite (default, group member): the
    /// streamlab process, SQLite's work included (it runs inside); the SQLite limit's (this
    /// process while it loads); the cores the machine kept busy, and the ceiling they allow,
    /// as for PostgreSQL.
    pub consume_sqlite_cpu_secs_per_million: Option<f64>,
    pub sqlite_limit_cpu_secs_per_million: Option<f64>,
    pub consume_sqlite_machine_busy_cores: Option<f64>,
    pub consume_sqlite_ceiling_per_sec: Option<f64>,
    pub consume_sqlite_ceiling_ratio: Option<f64>,
    pub consume_sqlite_assign_all_per_sec: f64,
    pub consume_sqlite_assign_all_ratio: f64,
    /// `consume --stop-at-end` of an empty topic, start to exit: as a lone group member (join,
    /// assignment, leave) and with `--assign all`.
    pub startup_member_ms: f64,
    pub startup_assign_all_ms: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub produce_peak_rss_mib: f64,
    /// The most any consume run with the default writers took (`--writers 1 / 4` aside).
    pub consume_peak_rss_mib: f64,
    /// Which run that was, e.g. "into SQLite, group member".
    pub consume_peak_rss_run: String,
    /// `produce --compression`: speed and stored size per codec.
    pub codecs: Vec<CodecCost>,
    /// The same produce and fetch on the durable broker (`--durable-broker`).
    pub durable_produce_per_sec: Option<f64>,
    pub durable_fetch_per_sec: Option<f64>,
}

/// What one `--compression` codec costs (produce speed) and saves (bytes in the log).
#[derive(Debug, Clone, Serialize)]
pub struct CodecCost {
    pub codec: String,
    pub produce_per_sec: f64,
    pub stored_bytes_per_event: f64,
}

pub(super) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// Every round's figures, before medians.
#[derive(Default)]
pub(super) struct Samples {
    pub(super) produce_sales: Vec<f64>,
    pub(super) produce_sensor: Vec<f64>,
    pub(super) mb_per_sec: Vec<f64>,
    pub(super) fetch: Vec<f64>,
    pub(super) copy: Vec<f64>,
    pub(super) bulk: Vec<f64>,
    pub(super) consume_pg: Vec<f64>,
    pub(super) consume_pg_writers1: Vec<f64>,
    pub(super) consume_pg_writers4: Vec<f64>,
    /// CPU per million events of consume → PostgreSQL (default writers, member) and its limit.
    pub(super) cpu: CpuSamples,
    pub(super) consume_pg_alone: Vec<f64>,
    /// The upsert limit's two ways: staged COPY, consume's UNNEST statements.
    pub(super) upsert_staged: Vec<f64>,
    pub(super) upsert_unnest: Vec<f64>,
    pub(super) consume_pg_upsert: Vec<f64>,
    pub(super) cpu_upsert: CpuSamples,
    /// consume → SQLite (default, member): streamlab with SQLite in it; the limit's process.
    pub(super) cpu_sqlite: CpuSamples,
    pub(super) consume_sqlite: Vec<f64>,
    pub(super) consume_sqlite_alone: Vec<f64>,
    pub(super) startup_member: Vec<f64>,
    pub(super) startup_alone: Vec<f64>,
    pub(super) rss_produce: u64,
    pub(super) rss_consume: PeakRss,
}

/// The highest peak RSS of several runs, and which run it was.
#[derive(Default)]
pub(super) struct PeakRss {
    kib: u64,
    run: String,
}

impl PeakRss {
    /// Run `run` peaked at `kib`.
    pub(super) fn saw(&mut self, kib: u64, run: impl Into<String>) {
        if kib > self.kib {
            self.kib = kib;
            self.run = run.into();
        }
    }
}

/// CPU-seconds per million events of a consume → PostgreSQL run and of its limit, every round's.
#[derive(Default)]
pub(super) struct CpuSamples {
    /// The streamlab process.
    pub(super) streamlab: Vec<f64>,
    /// The PostgreSQL backends serving it.
    pub(super) database: Vec<f64>,
    /// The PostgreSQL backend loading the limit.
    pub(super) limit: Vec<f64>,
    /// Cores the whole machine kept busy during the consume runs.
    pub(super) machine: Vec<f64>,
}

impl CpuSamples {
    /// A consume run of `n` events: the child's CPU-seconds, its database's.
    pub(super) fn consumed(&mut self, run: &ChildRun, database: Option<f64>, n: f64) {
        self.streamlab.extend(run.cpu_secs.map(|s| s * 1e6 / n));
        self.database.extend(database.map(|s| s * 1e6 / n));
        self.machine.extend(run.machine_busy_cores);
    }

    /// Medians of streamlab, database, limit, machine: None where nothing was measured.
    fn medians(self) -> [Option<f64>; 4] {
        [self.streamlab, self.database, self.limit, self.machine]
            .map(|xs| (!xs.is_empty()).then(|| median(xs)))
    }
}

impl Samples {
    /// Medians, ratios to the limits, peak memory.
    pub(super) fn report(self, ctx: &Ctx, args: &super::Config) -> BenchReport {
        let [cpu_streamlab, cpu_db, cpu_copy, busy] = self.cpu.medians();
        let [cpu_upsert, cpu_upsert_db, cpu_upsert_limit, _] = self.cpu_upsert.medians();
        let [cpu_sqlite, _, cpu_sqlite_limit, busy_sqlite] = self.cpu_sqlite.medians();
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
            consume_pg_writers1_per_sec: median(self.consume_pg_writers1),
            consume_pg_writers4_per_sec: median(self.consume_pg_writers4),
            consume_pg_cpu_secs_per_million: cpu_streamlab,
            consume_pg_db_cpu_secs_per_million: cpu_db,
            pg_copy_db_cpu_secs_per_million: cpu_copy,
            consume_pg_machine_busy_cores: busy,
            cores: crate::cmd::consume::cores(),
            pg_upsert_staged_per_sec: median(self.upsert_staged),
            pg_upsert_unnest_per_sec: median(self.upsert_unnest),
            consume_pg_upsert_per_sec: median(self.consume_pg_upsert),
            consume_pg_upsert_cpu_secs_per_million: cpu_upsert,
            consume_pg_upsert_db_cpu_secs_per_million: cpu_upsert_db,
            pg_upsert_limit_db_cpu_secs_per_million: cpu_upsert_limit,
            consume_sqlite_per_sec: median(self.consume_sqlite),
            consume_sqlite_assign_all_per_sec: median(self.consume_sqlite_alone),
            consume_sqlite_cpu_secs_per_million: cpu_sqlite,
            sqlite_limit_cpu_secs_per_million: cpu_sqlite_limit,
            consume_sqlite_machine_busy_cores: busy_sqlite,
            startup_member_ms: median(self.startup_member),
            startup_assign_all_ms: median(self.startup_alone),
            produce_peak_rss_mib: self.rss_produce as f64 / 1024.0,
            consume_peak_rss_mib: self.rss_consume.kib as f64 / 1024.0,
            consume_peak_rss_run: self.rss_consume.run,
            ..BenchReport::default()
        };
        let pg_limit = r.fetch_limit_per_sec.min(r.pg_copy_limit_per_sec);
        let sqlite_limit = r.fetch_limit_per_sec.min(r.sqlite_bulk_limit_per_sec);
        r.consume_pg_ratio = r.consume_pg_per_sec / pg_limit;
        r.consume_pg_ceiling_per_sec = ceiling(r.consume_pg_per_sec, r.cores, busy);
        r.consume_pg_ceiling_ratio = r.consume_pg_ceiling_per_sec.map(|c| c / pg_limit);
        r.consume_pg_assign_all_ratio = r.consume_pg_assign_all_per_sec / pg_limit;
        r.consume_pg_writers1_ratio = r.consume_pg_writers1_per_sec / pg_limit;
        r.consume_pg_writers4_ratio = r.consume_pg_writers4_per_sec / pg_limit;
        r.pg_upsert_limit_per_sec = r.pg_upsert_staged_per_sec.max(r.pg_upsert_unnest_per_sec);
        r.consume_pg_upsert_ratio =
            r.consume_pg_upsert_per_sec / r.fetch_limit_per_sec.min(r.pg_upsert_limit_per_sec);
        r.consume_sqlite_ratio = r.consume_sqlite_per_sec / sqlite_limit;
        r.consume_sqlite_ceiling_per_sec = ceiling(r.consume_sqlite_per_sec, r.cores, busy_sqlite);
        r.consume_sqlite_ceiling_ratio = r.consume_sqlite_ceiling_per_sec.map(|c| c / sqlite_limit);
        r.consume_sqlite_assign_all_ratio = r.consume_sqlite_assign_all_per_sec / sqlite_limit;
        r
    }
}

/// The rate a run's cost per event allows with every core busy: its rate × cores ÷ the cores
/// the machine kept busy meanwhile. An upper bound on what more overlap alone could reach.
fn ceiling(per_sec: f64, cores: usize, busy: Option<f64>) -> Option<f64> {
    busy.filter(|&b| b > 0.0)
        .map(|b| per_sec * cores as f64 / b)
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
            "consume → PostgreSQL, --writers 1 / 4".into(),
            format!(
                "{} · {:.2} × / {} · {:.2} ×",
                rate(r.consume_pg_writers1_per_sec),
                r.consume_pg_writers1_ratio,
                rate(r.consume_pg_writers4_per_sec),
                r.consume_pg_writers4_ratio
            ),
            String::new(),
        ),
        {
            let (what, mut result, _) = cpu_row(
                "consume → PostgreSQL: streamlab / database (limit's COPY)",
                [
                    r.consume_pg_cpu_secs_per_million,
                    r.consume_pg_db_cpu_secs_per_million,
                    r.pg_copy_db_cpu_secs_per_million,
                ],
            );
            result.push_str(&machine_busy(
                r.consume_pg_machine_busy_cores,
                r.cores,
                r.consume_pg_ceiling_per_sec.zip(r.consume_pg_ceiling_ratio),
            ));
            let met = r.consume_pg_cpu_secs_per_million.map(|s| s <= 0.8);
            (
                what,
                result,
                met.map_or(String::new(), |met| target(met, "streamlab ≤ 0.8 s")),
            )
        },
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
            target(r.consume_sqlite_ratio >= 0.9, "≥ 0.9 × limit"),
        ),
        {
            let result = format!(
                "{} ({}){}",
                cpu_secs(r.consume_sqlite_cpu_secs_per_million),
                cpu_secs(r.sqlite_limit_cpu_secs_per_million),
                machine_busy(
                    r.consume_sqlite_machine_busy_cores,
                    r.cores,
                    r.consume_sqlite_ceiling_per_sec
                        .zip(r.consume_sqlite_ceiling_ratio),
                )
            );
            (
                "CPU per million events, consume → SQLite: streamlab, SQLite in it (the limit's)"
                    .into(),
                result,
                String::new(),
            )
        },
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

/// " · machine busy 1.49 of 2 cores · all busy: 511509 events/s = 0.92 × limit", as far as
/// measured.
fn machine_busy(busy: Option<f64>, cores: usize, ceiling: Option<(f64, f64)>) -> String {
    let mut text = String::new();
    if let Some(busy) = busy {
        text.push_str(&format!(" · machine busy {busy:.2} of {cores} cores"));
    }
    if let Some((per_sec, ratio)) = ceiling {
        text.push_str(&format!(
            " · all busy: {} = {ratio:.2} × limit",
            events_per_sec(per_sec)
        ));
    }
    text
}

/// "CPU per million events, `what`": streamlab / database (the limit's backend).
fn cpu_row(what: &str, [streamlab, database, limit]: [Option<f64>; 3]) -> ReportRow {
    (
        format!("CPU per million events, {what}"),
        format!(
            "{} / {} ({})",
            cpu_secs(streamlab),
            cpu_secs(database),
            cpu_secs(limit)
        ),
        String::new(),
    )
}

/// "0.73 s", or "not measured".
fn cpu_secs(secs: Option<f64>) -> String {
    secs.map_or("not measured".into(), |s| format!("{s:.2} s"))
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
        format!(
            "peak RSS produce / consume, default writers (backlog of {})",
            r.events
        ),
        format!(
            "{:.1} MiB / {:.1} MiB ({})",
            r.produce_peak_rss_mib, r.consume_peak_rss_mib, r.consume_peak_rss_run
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

pub(super) fn print_report(r: &BenchReport) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_cpu_row_gives_the_ceiling_every_core_busy_would_allow() {
        let sqlite_cpu_row = |r: &BenchReport| {
            consume_rows(r)
                .into_iter()
                .find(|(what, _, _)| what.contains("consume → SQLite: streamlab"))
                .expect("a SQLite CPU row")
                .1
        };
        let r = BenchReport {
            cores: 2,
            consume_sqlite_cpu_secs_per_million: Some(3.8),
            sqlite_limit_cpu_secs_per_million: Some(2.45),
            consume_sqlite_machine_busy_cores: Some(1.6),
            consume_sqlite_ceiling_per_sec: ceiling(300_000.0, 2, Some(1.6)),
            consume_sqlite_ceiling_ratio: Some(375_000.0 / 400_000.0),
            ..BenchReport::default()
        };
        assert_eq!(r.consume_sqlite_ceiling_per_sec, Some(375_000.0));
        assert_eq!(
            sqlite_cpu_row(&r),
            "3.80 s (2.45 s) · machine busy 1.60 of 2 cores · all busy: 375000 events/s = 0.94 × \
             limit"
        );
        // Off Linux nothing is measured: the row says so rather than inventing a ceiling.
        assert_eq!(ceiling(300_000.0, 2, None), None);
        assert_eq!(
            sqlite_cpu_row(&BenchReport::default()),
            "not measured (not measured)"
        );
    }

    #[test]
    fn the_peak_rss_names_the_run_that_took_the_most() {
        let mut peak = PeakRss::default();
        peak.saw(50_000, "into PostgreSQL, group member");
        peak.saw(70_000, "into SQLite, group member");
        peak.saw(70_000, "into SQLite, --assign all");
        peak.saw(60_000, "--upsert into PostgreSQL");
        assert_eq!(
            (peak.kib, peak.run.as_str()),
            (70_000, "into SQLite, group member")
        );
    }
}

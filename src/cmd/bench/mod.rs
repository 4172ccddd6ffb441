//! `streamlab bench`: the pipeline against its limits, in one run, on the local stack.
//!
//! Every figure is the median of `--repeats` runs. `produce` and `consume` run as child processes
//! (this same binary), so their peak RSS is their own. Ratios within one run matter more than
//! absolute numbers on a shared, noisy machine.
//!
//! `consume` is measured both ways it reads: as the one member of a group of its own (what
//! `consume` does by default: it joins, waits for its assignment, and leaves at the end) and
//! with `--assign all` (every partition alone), on the same backlog, in alternating order.
//!
//! `mod.rs` runs the rounds; `children.rs` starts the streamlab processes measured; `cpu.rs`
//! samples what processes spend (CPU, peak memory) and describes the machine; `limits.rs` the
//! database limits the pipeline is held to; `broker.rs` reads topics back (the fetch limit,
//! codecs, the durable broker); `report.rs` turns the samples into the report, its table and JSON.

mod broker;
mod children;
mod cost;
mod cpu;
mod limits;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::{Connection, Postgres};
use time::OffsetDateTime;

use crate::cmd::consume;
use crate::db::{self, redact, Dialect, UpsertWay};
use crate::kafka::{self, admin::Admin};

use broker::{codec_costs, delete_topic, drain, durable_engine};
use children::{
    exact_ms, produce_unlimited, run_child, streamlab_child, ChildRun, Reading, CHILD_PROPERTIES,
};
use cpu::DbCpu;
use limits::{
    generate, pg_copy_limit, pg_limit, sqlite_bulk_limit, upsert_lanes, Load, UPSERT_KEYS,
    UPSERT_SEED, UPSERT_TOMBSTONE_PERCENT,
};
use report::{print_report, Samples};

pub use report::{BenchReport, CodecCost};

/// Settings `bench` hands the streamlab processes it starts (properties-file text): the ones
/// its own command line gave, so its children connect the same way.
pub const INHERITED_PROPERTIES_ENV: &str = "STREAMLAB_KAFKA_PROPERTIES";

/// How long the database limits may wait to connect.
const LIMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a bench run needs at every step.
struct Ctx {
    exe: PathBuf,
    brokers: String,
    stamp: i64,
    pg_admin: String,
    workdir: PathBuf,
    /// Events per measurement.
    n: u64,
    /// The writers `consume` picks by default for the bench topics here: the limits load on as
    /// many connections side by side as it writes on.
    writers: usize,
}

/// `bench`, settled: how much to measure, how often, and where.
pub struct Config {
    pub kafka: kafka::Config,
    /// Events per measurement.
    pub events: u64,
    /// Runs of each measurement (medians are reported).
    pub repeats: u32,
    /// Partitions of the bench topics.
    pub partitions: i32,
    /// PostgreSQL's maintenance database: bench databases are created and dropped there.
    pub pg_url: String,
    /// Also measure produce and fetch on this broker.
    pub durable_broker: Option<String>,
    /// How long to measure end-to-end latency (zero: not at all).
    pub latency: Duration,
    /// Instead of the rounds: count one hot path's instructions (`scripts/cost` runs it under
    /// callgrind).
    pub cost: Option<String>,
}

pub async fn run(args: Config) -> Result<()> {
    if let Some(path) = &args.cost {
        return cost::run(path, args.events);
    }
    let _ = CHILD_PROPERTIES.set(args.kafka.security.source.to_text());
    let ctx = Ctx {
        exe: std::env::current_exe()?,
        brokers: args.kafka.brokers.join(","),
        stamp: OffsetDateTime::now_utc().unix_timestamp(),
        pg_admin: args.pg_url.clone(),
        workdir: PathBuf::from("target/bench"),
        n: args.events,
        writers: consume::writer_count(None, args.partitions.max(1) as usize, consume::cores(), 8)
            .0,
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
        let (copy, copy_cpu) = pg_copy_limit(&ctx, round, &rows, ctx.writers).await?;
        samples.copy.push(copy);
        samples.cpu.limit.extend(copy_cpu);
        let (bulk, bulk_cpu) = sqlite_bulk_limit(&ctx.workdir, &rows).await?;
        samples.bulk.push(bulk);
        samples.cpu_sqlite.limit.extend(bulk_cpu);
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

/// Produce, unlimited, each kind onto a fresh topic of its own; then read the sales topic with
/// consume's reader and discard it (the fetch limit). The sales topic is the round's backlog.
async fn produce_and_fetch(
    ctx: &Ctx,
    args: &Config,
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
    // The default writers (none asked for) both ways, then a group member with one and with
    // four writers.
    let runs = [
        (modes[0], None),
        (modes[1], None),
        (Reading::Member, Some(1)),
        (Reading::Member, Some(4)),
    ];
    for (mode, writers) in runs {
        let label = format!("{}_w{}", mode.label(), writers.unwrap_or(0));
        let name = format!("streamlab_bench_{stamp}_{round}_{label}");
        let pg_db = pg_database_url(&ctx.pg_admin, &name)?;
        let group = format!("bench-{stamp}-{round}-pg-{label}");
        let writers_flag = writers.map(|w: u32| w.to_string());
        let mut consume = mode.consume(topic, "pg", &pg_db, &group);
        if let Some(flag) = &writers_flag {
            consume.extend(["--writers", flag]);
        }
        let (run, db_cpu) = consume_into_pg(ctx, &name, &pg_db, &consume).await?;
        let rate = n / run.secs;
        match (mode, writers) {
            (Reading::Member, None) => {
                samples.consume_pg.push(rate);
                samples.cpu.consumed(&run, db_cpu, n);
            }
            (Reading::Alone, _) => samples.consume_pg_alone.push(rate),
            (Reading::Member, Some(1)) => samples.consume_pg_writers1.push(rate),
            (Reading::Member, _) => samples.consume_pg_writers4.push(rate),
        }
        // The memory target is the default configuration's: chosen writer counts aside.
        if writers.is_none() {
            let into = format!("into PostgreSQL, {}", mode.described());
            samples.rss_consume.saw(run.peak_rss_kib, into);
        }
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
        if matches!(mode, Reading::Member) {
            // SQLite runs inside the child: its CPU is the database's too.
            samples.cpu_sqlite.consumed(&run, None, n);
        }
        let into = format!("into SQLite, {}", mode.described());
        samples.rss_consume.saw(run.peak_rss_kib, into);
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
    db::measure::pg_drop_database(&ctx.pg_admin, name).await;
    Ok((run?, db_cpu))
}

/// `consume --upsert` into PostgreSQL against its limit: the limit on the updates
/// [`upsert_lanes`] makes, on as many connections as consume writes on; then `produce --keys … --tombstones … --seed …` of the same updates
/// onto a topic of its own, consumed to its end as a lone group member into a fresh database.
async fn upsert_round(
    ctx: &Ctx,
    args: &Config,
    admin: &mut Admin,
    round: u32,
    samples: &mut Samples,
) -> Result<()> {
    let lanes = upsert_lanes(ctx.n, args.partitions, ctx.writers);
    let mut fastest = (0.0, None);
    for (way, label, rates) in [
        (UpsertWay::Staged, "staged", &mut samples.upsert_staged),
        (UpsertWay::Unnest, "unnest", &mut samples.upsert_unnest),
    ] {
        let what = format!("{round}_upsert_{label}");
        let loads: Vec<Load<'_>> = lanes.iter().map(|l| Load::Upsert(l, way)).collect();
        let (rate, cpu) = pg_limit(ctx, &what, &loads, 1).await?;
        rates.push(rate);
        if rate > fastest.0 {
            fastest = (rate, cpu);
        }
    }
    samples.cpu_upsert.limit.extend(fastest.1);
    drop(lanes);
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
    samples
        .rss_consume
        .saw(run.peak_rss_kib, "--upsert into PostgreSQL");
    delete_topic(admin, &topic).await;
    Ok(())
}

/// What joining costs at start: consume an empty topic to its end, both ways.
async fn startup_both_ways(
    ctx: &Ctx,
    args: &Config,
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
    let (p50, p99) = db::measure::pg_ingest_latency_ms(&mut conn).await?;
    conn.close().await?;
    db::measure::pg_drop_database(pg_admin, &name).await;
    delete_topic(admin, &topic).await;
    Ok((p50.unwrap_or(f64::NAN), p99.unwrap_or(f64::NAN)))
}

fn remove_sqlite(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn pg_database_url(admin_url: &str, name: &str) -> Result<String> {
    let mut url = url::Url::parse(admin_url).context("--pg-url")?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

//! Prometheus metrics for the long-running commands (`--metrics-addr HOST:PORT`).
//!
//! The `metrics` facade records everywhere; without `--metrics-addr` no recorder is installed
//! and every call is a no-op. With it, `metrics-exporter-prometheus` serves the text format on
//! `http://HOST:PORT/metrics` (any path answers) for as long as the command runs.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Batch write durations, in seconds: from a few milliseconds (SQLite, small batch) to the
/// retry horizon of an unavailable database.
const WRITE_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Start serving when asked to. Must be called inside the Tokio runtime.
pub fn serve(addr: Option<SocketAddr>) -> Result<()> {
    let Some(addr) = addr else {
        return Ok(());
    };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(BATCH_WRITE_SECONDS.into()),
            WRITE_SECONDS_BUCKETS,
        )
        .context("configuring the metrics histogram buckets")?
        .install()
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    describe();
    tracing::info!("serving Prometheus metrics on http://{addr}/metrics");
    Ok(())
}

pub const PRODUCED: &str = "streamlab_events_produced_total";
pub const PRODUCE_ERRORS: &str = "streamlab_produce_errors_total";
pub const CONSUMED: &str = "streamlab_events_consumed_total";
pub const INSERTED: &str = "streamlab_events_inserted_total";
pub const DUPLICATES: &str = "streamlab_events_duplicate_total";
pub const DEAD_LETTERED: &str = "streamlab_events_dead_lettered_total";
pub const BATCH_WRITE_SECONDS: &str = "streamlab_batch_write_seconds";
pub const LAG: &str = "streamlab_lag_events";

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(PRODUCED, "Events the broker acknowledged");
    describe_counter!(PRODUCE_ERRORS, "Produce requests that failed after retries");
    describe_counter!(
        CONSUMED,
        "Records read and committed (stored or dead-lettered)"
    );
    describe_counter!(INSERTED, "Events inserted as new rows");
    describe_counter!(DUPLICATES, "Events whose id was already stored");
    describe_counter!(DEAD_LETTERED, "Records stored in dead_letters");
    describe_histogram!(
        BATCH_WRITE_SECONDS,
        Unit::Seconds,
        "Time to commit one batch (rows, dead letters and offsets), retries included"
    );
    describe_gauge!(LAG, "Records behind the partition's high watermark");
}

//! What consume prints: each stored event, the status line, the summary.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;

use super::{Config, ConsumeSummary};
use crate::db::{Batch, Landed, Mode, Written};
use crate::events::ts_millis;
use crate::kafka::Position;
use crate::render;

pub(super) fn each(batch: &Batch, written: &Written) -> Result<()> {
    let refused = |l: &&Landed| {
        written
            .refused
            .iter()
            .any(|(p, o, _)| (*p, *o) == (l.partition, l.offset))
    };
    for landed in batch.events.iter().filter(|l| !refused(l)) {
        // Upserted, the row's key is the record's.
        let key = match batch.mode {
            Mode::Append => Some(landed.event.key()),
            Mode::Upsert(_) => landed.key_text(),
        };
        render::line(format!(
            "Stored: {} at {}",
            key.unwrap_or_default(),
            ts_millis::format(landed.event.ts())
        ))?;
    }
    for tombstone in &batch.deletes {
        render::line(format!("Deleted: {}", tombstone.key))?;
    }
    Ok(())
}

pub(super) fn status_line(
    args: &Config,
    summary: &ConsumeSummary,
    positions: &BTreeMap<i32, Position>,
    started: Instant,
) -> String {
    let rate = summary.consumed as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let lags: Vec<String> = positions
        .iter()
        .map(|(p, pos)| format!("{p}:{}", pos.lag))
        .collect();
    let stored = if args.upsert {
        format!(
            "upserted {} · stale {} · deleted {}",
            summary.inserted, summary.duplicates, summary.deleted
        )
    } else {
        format!(
            "inserted {} · duplicates {}",
            summary.inserted, summary.duplicates
        )
    };
    format!(
        "consumed {} · {stored} · dead letters {} · {:.0} events/s · lag {}",
        summary.consumed,
        summary.dead_lettered,
        rate,
        lags.join(" ")
    )
}

pub(super) fn summary(args: &Config, summary: &ConsumeSummary) -> Result<()> {
    if args.json {
        return render::json(summary);
    }
    let kind = args.kind.name();
    let stored = if args.upsert {
        format!(
            "{} rows upserted into {}, {} older than the row stored, {} replaced within a batch, \
             {} deleted",
            summary.inserted,
            args.kind.latest_table(),
            summary.duplicates,
            summary.superseded,
            summary.deleted
        )
    } else {
        format!(
            "{} inserted, {} duplicates skipped",
            summary.inserted, summary.duplicates
        )
    };
    render::note(format!(
        "consumed {} {kind} records from '{}' in {:.2}s ({:.1} events/s): {stored}, {} dead-lettered",
        summary.consumed,
        args.topic,
        summary.elapsed_secs,
        summary.consumed as f64 / summary.elapsed_secs.max(1e-9),
        summary.dead_lettered
    ))?;
    for (p, pos) in &summary.partitions {
        render::note(format!(
            "  partition {p}: next offset {}, lag {}",
            pos.next_offset(),
            pos.lag
        ))?;
    }
    Ok(())
}

//! The command layer: one module per subcommand, each taking its settled configuration (a plain
//! struct of its own, which `cli` builds from clap's arguments), doing the work, and rendering
//! the outcome.
//!
//! No module here sees clap's argument types: `Cli::into_job` settles every usage error and
//! hands over a [`Job`]. This is the only layer that decides an exit code (through
//! [`exit::Error`]); `kafka`, `db`, `events` and `render` know nothing of the command line.

pub mod bench;
pub mod check;
pub mod completions;
pub mod consume;
pub mod dlq;
pub mod group;
pub mod members;
pub mod migrate;
pub mod offsets;
pub mod produce;
pub mod topic;
pub mod watch;

use crate::{exit, render};
use members::MemberView;

/// One command, settled: each variant holds what its module's `run` takes.
pub enum Job {
    Topic(topic::Job),
    Produce(produce::Config),
    Consume(consume::Config),
    Migrate(migrate::Config),
    Check(check::Config),
    Watch(watch::Config),
    Bench(bench::Config),
    OffsetsReset(offsets::Reset),
    Group(group::Job),
    Dlq(dlq::Job),
    Completions(completions::Config),
}

/// Run one command. Usage errors were settled by `Cli::into_job`; what fails here is the
/// world (exit 1), or an unhealthy `check`.
pub async fn run(job: Job) -> Result<(), exit::Error> {
    match job {
        Job::Topic(job) => topic::run(job).await?,
        Job::Produce(config) => produce::run(config).await?,
        Job::Consume(config) => consume::run(config).await?,
        Job::Migrate(config) => migrate::run(config).await?,
        Job::Check(config) => return check::run(config).await,
        Job::Watch(config) => watch::run(config).await?,
        Job::Bench(config) => bench::run(config).await?,
        Job::Completions(config) => completions::run(config)?,
        Job::OffsetsReset(reset) => offsets::run(reset).await?,
        Job::Group(job) => group::run(job).await?,
        Job::Dlq(job) => dlq::run(job).await?,
    }
    Ok(())
}

/// A group's heading, as `check`, `topic describe` and `group describe` print it.
fn group_heading(group: &str, state: &str, members: usize) -> String {
    format!("group '{group}' · {state} · {members} member(s)")
}

/// A group's heading, its note, and its members' table (when it has members), as `check` and
/// `topic describe` print them.
fn group_lines(g: &members::GroupView) -> String {
    let mut lines = format!("\n{}", group_heading(&g.group, &g.state, g.members.len()));
    if let Some(note) = &g.note {
        lines.push_str(&format!("\nnote: {note}"));
    }
    if !g.members.is_empty() {
        lines.push_str(&format!("\n{}", members_table(&g.members)));
    }
    lines
}

/// A group's members and what each holds, as `check` and `topic describe` print them.
fn members_table(members: &[MemberView]) -> comfy_table::Table {
    let mut t = render::table(["MEMBER", "CLIENT", "GENERATION", "PARTITIONS"]);
    for m in members {
        t.add_row(vec![
            m.member_id.clone(),
            if m.client.is_empty() {
                "-".to_string()
            } else {
                m.client.clone()
            },
            m.generation.map_or("-".to_string(), |g| g.to_string()),
            match &m.partitions {
                Some(ps) if ps.is_empty() => "none".to_string(),
                Some(ps) => ps.iter().map(i32::to_string).collect::<Vec<_>>().join(","),
                None => "? (not reported by the broker)".to_string(),
            },
        ]);
    }
    t
}

/// Partitions and a group's positions in them, as `check` and `group describe` print them.
fn positions_table(positions: &[crate::kafka::Position]) -> comfy_table::Table {
    let mut t = render::table(["PARTITION", "LOG START", "COMMITTED", "LOG END", "LAG"]);
    for p in positions {
        t.add_row(vec![
            p.partition.to_string(),
            p.log_start.to_string(),
            offset_text(p.committed),
            p.log_end.to_string(),
            lag_text(p),
        ]);
    }
    t
}

/// A position's LAG cell, as `check`, `watch` and `group describe` print it: the records left,
/// or how far the position is past the log end.
fn lag_text(p: &crate::kafka::Position) -> String {
    match p.ahead {
        Some(n) => format!("ahead by {n}"),
        None => p.lag.to_string(),
    }
}

/// An offset cell: "-" for none.
fn offset_text(offset: Option<i64>) -> String {
    offset.map_or("-".to_string(), |o| o.to_string())
}

#[cfg(test)]
mod tests {
    use crate::kafka::Position;

    #[test]
    fn lag_is_one_wording_for_every_table() {
        assert_eq!(super::lag_text(&Position::new(0, (10, 50), Some(20))), "30");
        assert_eq!(
            super::lag_text(&Position::new(0, (0, 50), Some(1050))),
            "ahead by 1000"
        );
        assert_eq!(super::offset_text(None), "-");
    }
}

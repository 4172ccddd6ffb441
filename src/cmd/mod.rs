//! The command layer: one module per subcommand, each turning its parsed arguments into the
//! configuration the layers below take, doing the work, and rendering the outcome.
//!
//! This is the only layer that sees `cli`'s types below `Cli::into_command` and the only one that
//! decides an exit code (through [`exit::Error`]); `kafka`, `db`, `events` and `render` know
//! nothing of the command line.

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

use crate::cli::Command;
use crate::{exit, render};
use members::MemberView;

/// Run one command. Usage errors were settled by `Cli::into_command`; what fails here is the
/// world (exit 1), or an unhealthy `check`.
pub async fn run(command: Command) -> Result<(), exit::Error> {
    match command {
        Command::Topic(cmd) => topic::run(cmd).await?,
        Command::Produce(args) => produce::run(args).await?,
        Command::Consume(args) => consume::run(args).await?,
        Command::Migrate(args) => migrate::run(args).await?,
        Command::Check(args) => return check::run(args).await,
        Command::Watch(args) => watch::run(args).await?,
        Command::Bench(args) => bench::run(args).await?,
        Command::Completions(args) => completions::run(args)?,
        Command::Offsets(cmd) => offsets::run(cmd).await?,
        Command::Group(cmd) => group::run(cmd).await?,
        Command::Dlq(cmd) => dlq::run(cmd).await?,
    }
    Ok(())
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

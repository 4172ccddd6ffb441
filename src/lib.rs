//! streamlab: a laptop-sized Kafka → database pipeline.
//!
//! `main.rs` only parses and reports; each subcommand has its own module here, so the tests can
//! drive the same code the binary runs.

pub mod bench;
pub mod check;
pub mod cli;
pub mod consume;
pub mod duration;
pub mod events;
pub mod exit;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod produce;
pub mod progress;
pub mod shutdown;
pub mod sink;
pub mod topic;
pub mod watch;

use anyhow::Result;

use cli::{Cli, Command};

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Topic(cmd) => topic::run(cmd).await,
        Command::Produce(args) => produce::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Check(args) => check::run(args).await,
        Command::Watch(args) => watch::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}

/// `streamlab migrate`: apply the embedded migrations and exit.
async fn migrate(args: cli::MigrateArgs) -> Result<()> {
    let url = args.db.url();
    let timeout = std::time::Duration::from_secs(10);
    match args.db.sink {
        cli::SinkKind::Pg => drop(sink::pg::connect(&url, timeout).await?),
        cli::SinkKind::Sqlite => drop(sink::sqlite::connect(&url, timeout).await?),
    }
    output::line(format!("migrations applied to {}", sink::redact(&url)))?;
    Ok(())
}

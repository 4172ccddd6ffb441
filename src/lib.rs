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

/// Run one command. Usage errors were settled by `Cli::into_command`; what fails here is the
/// world (exit 1), or an unhealthy `check`.
pub async fn run(command: Command) -> Result<(), exit::Error> {
    match command {
        Command::Topic(cmd) => topic::run(cmd).await?,
        Command::Produce(args) => produce::run(args).await?,
        Command::Consume(args) => consume::run(args).await?,
        Command::Migrate(args) => migrate(args).await?,
        Command::Check(args) => return check::run(args).await,
        Command::Watch(args) => watch::run(args).await?,
        Command::Bench(args) => bench::run(args).await?,
        Command::Completions(args) => completions(args)?,
    }
    Ok(())
}

/// `streamlab completions SHELL`: the completion script on stdout.
fn completions(args: cli::CompletionsArgs) -> Result<()> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "streamlab", &mut script);
    output::bytes(&script)?;
    Ok(())
}

/// `streamlab migrate`: apply the embedded migrations and exit.
async fn migrate(args: cli::MigrateArgs) -> Result<()> {
    let target = args.db.target()?;
    let (url, timeout) = (&target.url, args.timeout);
    match target.kind {
        cli::SinkKind::Pg => drop(sink::pg::connect(url, timeout).await?),
        cli::SinkKind::Sqlite => drop(sink::sqlite::connect(url, timeout).await?),
    }
    output::note(format!("migrations applied to {}", sink::redact(url)))?;
    Ok(())
}

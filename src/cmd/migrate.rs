//! `streamlab migrate`: apply the embedded migrations and exit.

use std::time::Duration;

use anyhow::Result;

use crate::{db, render};

/// `migrate`, settled: which database, and how long to wait for it.
pub struct Config {
    pub target: db::Target,
    pub timeout: Duration,
}

pub async fn run(config: Config) -> Result<()> {
    // Connecting applies them.
    drop(db::Database::connect(&config.target, config.timeout).await?);
    render::note(format!(
        "migrations applied to {}",
        db::redact(&config.target.url)
    ))?;
    Ok(())
}

//! `streamlab migrate`: apply the embedded migrations and exit.

use anyhow::Result;

use crate::cli::MigrateArgs;
use crate::{db, render};

pub async fn run(args: MigrateArgs) -> Result<()> {
    let target = args.db.target()?;
    // Connecting applies them.
    drop(db::Database::connect(&target, args.timeout).await?);
    render::note(format!("migrations applied to {}", db::redact(&target.url)))?;
    Ok(())
}

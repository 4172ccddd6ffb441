//! `streamlab migrate`: apply the embedded migrations and exit.

use anyhow::Result;

use crate::cli::{MigrateArgs, SinkKind};
use crate::{db, render};

pub async fn run(args: MigrateArgs) -> Result<()> {
    let target = args.db.target()?;
    let (url, timeout) = (&target.url, args.timeout);
    match target.kind {
        SinkKind::Pg => drop(db::pg::connect(url, timeout).await?),
        SinkKind::Sqlite => drop(db::sqlite::connect(url, timeout).await?),
    }
    render::note(format!("migrations applied to {}", db::redact(url)))?;
    Ok(())
}

//! Writing results to stdout. Errors (a closed pipe, say) are returned, not panicked on, and
//! `exit::report` treats a broken pipe as success.

use std::fmt::Display;
use std::io::Write;

use comfy_table::{presets, Table};
use serde::Serialize;

pub fn line(text: impl Display) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

pub fn json(value: &impl Serialize) -> anyhow::Result<()> {
    line(serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// A plain, borderless table with a header row, in the style of `kubectl get`.
pub fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(header);
    table
}

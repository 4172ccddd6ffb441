//! Writing results to stdout. Errors (a closed pipe, say) are returned, not panicked on, and
//! `exit::report` treats a broken pipe as success.
//!
//! Results (tables, JSON) always print; notes for people (summaries, confirmations) are
//! dropped under `-q`. Colour goes through `anstream`, which strips it off a terminal and
//! under `NO_COLOR`.

use std::fmt::Display;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use anstyle::{AnsiColor, Style};
use comfy_table::{presets, Table};
use serde::Serialize;

/// How results are printed (`--format`; its clap face is in `cli`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For people: tables and sentences.
    Table,
    /// For scripts: one JSON document on stdout.
    Json,
}

static QUIET: AtomicBool = AtomicBool::new(false);

/// `-q`: from now on, [`note`] prints nothing and progress is not shown.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A result: always printed.
pub fn line(text: impl Display) -> std::io::Result<()> {
    let mut out = anstream::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

/// Raw bytes (a generated script, say): always printed.
pub fn bytes(data: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(data)?;
    out.flush()
}

/// A note for a person (a summary, a confirmation): not printed under `-q`.
pub fn note(text: impl Display) -> std::io::Result<()> {
    if quiet() {
        return Ok(());
    }
    line(text)
}

pub fn json(value: &impl Serialize) -> anyhow::Result<()> {
    line(serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Whether stdout shows colour: a terminal, and neither `NO_COLOR` nor `CLICOLOR=0`.
pub fn stdout_colour() -> bool {
    anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never
}

/// Whether stderr shows colour (for the log lines).
pub fn stderr_colour() -> bool {
    anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never
}

/// `text` in green (good) or red (bad) when stdout shows colour; plain otherwise.
pub fn verdict(text: &str, good: bool) -> String {
    if !stdout_colour() {
        return text.to_string();
    }
    let colour = if good {
        AnsiColor::Green
    } else {
        AnsiColor::Red
    };
    let style = Style::new().fg_color(Some(colour.into()));
    format!("{style}{text}{style:#}")
}

/// A plain, borderless table with a header row, in the style of `kubectl get`.
pub fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(header);
    table
}

//! `streamlab dlq list|show|replay|purge`: the records a database set aside in `dead_letters`.
//!
//! `replay` decodes the chosen letters again with the rules and options of today (say a larger
//! `--max-event-bytes`, or the right `--kind`) and stores those that now pass, removing them
//! from `dead_letters` in the same transaction (`db::dlq::take`): each is stored once, however
//! many replays run; letters whose event the database refuses stay, reported. With `--to-topic`
//! it claims the letters first (removes them in a transaction), produces the raw records (key
//! and value as they came), and commits once the broker acknowledged them (`db::dlq::claim_then`).
//! Letters of corrupt batches (`consume --skip-corrupt-batches`) hold a raw record batch, not a
//! record: replay leaves them alone.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::db::dlq::{self, Filter, Letter, Order, Taken};
use crate::db::{self, redact, Database, Deadline, Landed, Reader, Target};
use crate::events::{self, EventKind};
use crate::kafka;
use crate::render::{self, Format};

/// A `dlq` subcommand, settled.
pub enum Job {
    List(List),
    Show(Show),
    /// Boxed: it holds the Kafka configuration the others do without.
    Replay(Box<Replay>),
    Purge(Purge),
}

/// `dlq list`, settled.
pub struct List {
    pub timeout: std::time::Duration,
    pub target: Target,
    pub filter: Filter,
    /// At most this many (the newest).
    pub limit: Option<u32>,
    pub format: Format,
}

/// `dlq show`, settled.
pub struct Show {
    pub timeout: std::time::Duration,
    pub target: Target,
    pub id: i64,
    pub format: Format,
}

/// `dlq replay`, settled.
pub struct Replay {
    pub kafka: kafka::Config,
    pub target: Target,
    pub filter: Filter,
    /// What the payloads should be, and how large they may be (decoding into the table).
    pub kind: EventKind,
    pub max_event_bytes: usize,
    /// Instead of decoding: produce the raw records to this topic.
    pub to_topic: Option<String>,
    /// At most this many (the oldest first).
    pub limit: Option<u32>,
    pub format: Format,
}

/// `dlq purge`, settled.
pub struct Purge {
    pub timeout: std::time::Duration,
    pub target: Target,
    /// Which letters go (`before` always set).
    pub filter: Filter,
    /// Delete them (otherwise only list what would go).
    pub execute: bool,
    pub format: Format,
}

pub async fn run(job: Job) -> Result<()> {
    match job {
        Job::List(args) => list(args).await,
        Job::Show(args) => show(args).await,
        Job::Replay(args) => replay(*args).await,
        Job::Purge(args) => purge(args).await,
    }
}

#[derive(Serialize)]
struct Listing {
    database: String,
    count: usize,
    dead_letters: Vec<Letter>,
}

async fn list(args: List) -> Result<()> {
    let (target, filter) = (&args.target, &args.filter);
    let reader = Reader::connect(target, args.timeout).await?;
    let letters = reader
        .dead_letter_rows(filter, Order::NewestFirst, args.limit, false)
        .await?;
    let listing = Listing {
        database: redact(&target.url),
        count: letters.len(),
        dead_letters: letters,
    };
    match args.format {
        Format::Json => render::json(&listing),
        Format::Table => {
            let mut t = render::table([
                "ID",
                "TOPIC",
                "PARTITION",
                "OFFSET",
                "FAILED AT",
                "BYTES",
                "ERROR",
            ]);
            for l in &listing.dead_letters {
                t.add_row(vec![
                    l.id.to_string(),
                    l.topic.clone(),
                    l.partition.to_string(),
                    l.offset.to_string(),
                    l.failed_at.clone(),
                    l.payload_bytes.map_or("null".into(), |n| n.to_string()),
                    shorten(&escaped(&l.error), 100),
                ]);
            }
            render::line(t)?;
            render::note(format!("{} dead letter(s)", listing.count))?;
            Ok(())
        }
    }
}

/// `text` cut to `max` characters, marked when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// `text` for a terminal: control characters (newlines, escape sequences) shown escaped
/// (`\n`, `\u{1b}`), so stored bytes can neither break a table nor drive the terminal.
fn escaped(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Bytes for people and scripts: as UTF-8 when they are, and always as hex.
#[derive(Serialize)]
struct Shown {
    bytes: usize,
    utf8: Option<String>,
    hex: String,
}

impl Shown {
    fn of(bytes: Option<&[u8]>) -> Option<Self> {
        bytes.map(|b| Shown {
            bytes: b.len(),
            utf8: std::str::from_utf8(b).ok().map(str::to_string),
            hex: b.iter().map(|x| format!("{x:02x}")).collect(),
        })
    }
}

#[derive(Serialize)]
struct ShownLetter {
    #[serde(flatten)]
    letter: Letter,
    /// `None`: the record had no key.
    key: Option<Shown>,
    /// `None`: the record had no value.
    payload: Option<Shown>,
}

async fn show(args: Show) -> Result<()> {
    let target = &args.target;
    let reader = Reader::connect(target, args.timeout).await?;
    let filter = Filter {
        ids: vec![args.id],
        ..Filter::default()
    };
    let Some(letter) = reader
        .dead_letter_rows(&filter, Order::OldestFirst, None, true)
        .await?
        .pop()
    else {
        bail!(
            "no dead letter with id {} in {} (`streamlab dlq list` shows them)",
            args.id,
            redact(&target.url)
        );
    };
    let shown = ShownLetter {
        key: Shown::of(letter.key.as_deref()),
        payload: Shown::of(letter.payload.as_deref()),
        letter,
    };
    match args.format {
        Format::Json => render::json(&shown),
        Format::Table => {
            let l = &shown.letter;
            let text = |s: &Option<Shown>| match s {
                None => "null".to_string(),
                Some(Shown {
                    utf8: Some(text),
                    bytes,
                    ..
                }) => format!("({bytes} bytes, UTF-8)\n{}", escaped(text)),
                Some(Shown { hex, bytes, .. }) => format!("({bytes} bytes, not UTF-8, hex)\n{hex}"),
            };
            render::line(format!(
                "dead letter {} · {}/{}@{} · failed at {}\nerror: {}\nkey: {}\npayload: {}",
                l.id,
                l.topic,
                l.partition,
                l.offset,
                l.failed_at,
                escaped(&l.error),
                text(&shown.key).replace('\n', " "),
                text(&shown.payload)
            ))?;
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct Replayed {
    database: String,
    /// The letters taken out of `dead_letters`, by id.
    replayed: Vec<i64>,
    /// Where they went: the event table, or the topic they were produced to.
    into: String,
    /// Of the replayed events, how many rows are new and how many ids were already stored
    /// (None with --to-topic).
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<Taken>,
    /// Letters that still fail (decoding, or refused by the database), kept, with today's
    /// reason.
    still_failing: Vec<StillFailing>,
    /// Letters of corrupt batches (a raw record batch, not a record), left alone, by id.
    corrupt_batches: Vec<i64>,
}

#[derive(Serialize)]
struct StillFailing {
    id: i64,
    error: String,
}

/// How `consume --skip-corrupt-batches` begins the reason of the letters it stores: their
/// payload is a whole raw record batch.
const CORRUPT_BATCH: &str = "skipped with --skip-corrupt-batches";

async fn replay(args: Replay) -> Result<()> {
    let (timeout, target, filter) = (args.kafka.timeout, &args.target, &args.filter);
    let reader = Reader::connect(target, timeout).await?;
    let (corrupt, mut letters): (Vec<Letter>, Vec<Letter>) = reader
        .dead_letter_rows(filter, Order::OldestFirst, None, true)
        .await?
        .into_iter()
        .partition(|l| l.error.starts_with(CORRUPT_BATCH));
    if let Some(limit) = args.limit {
        letters.truncate(limit as usize);
    }
    let mut report = Replayed {
        database: redact(&target.url),
        replayed: Vec::new(),
        into: match &args.to_topic {
            Some(topic) => format!("topic {topic}"),
            None => args.kind.table().to_string(),
        },
        stored: None,
        still_failing: Vec::new(),
        corrupt_batches: corrupt.iter().map(|l| l.id).collect(),
    };
    if !letters.is_empty() {
        let database = Database::connect(target, timeout).await?;
        // Every statement gets --timeout, as consume's.
        let limit = db::connect_timeout(timeout);
        let mut sink = Deadline::new(database, limit, target.describe());
        match &args.to_topic {
            Some(topic) => {
                let ids: Vec<i64> = letters.iter().map(|l| l.id).collect();
                let now = time::OffsetDateTime::now_utc();
                let records = letters
                    .iter()
                    .map(|l| kafka::produce::record(l.key.clone(), l.payload.clone(), now))
                    .collect();
                let produce = kafka::produce::send_placed(&args.kafka, topic, records);
                dlq::claim_then(&mut sink, &ids, produce)
                    .await
                    .map_err(anyhow::Error::new)?;
                report.replayed = ids;
            }
            None => into_table(&args, &letters, &mut sink, &mut report).await?,
        }
    }
    match args.format {
        Format::Json => render::json(&report),
        Format::Table => print_replay(&report),
    }
}

/// Decode each letter again with today's rules; store those that pass and take them out of
/// `dead_letters` in one transaction. What still fails, or what the database refuses, stays.
async fn into_table(
    args: &Replay,
    letters: &[Letter],
    sink: &mut Deadline<Database>,
    report: &mut Replayed,
) -> Result<()> {
    let mut events = Vec::new();
    for l in letters {
        let value = l.payload.as_deref();
        match events::decode_record(args.kind, value, args.max_event_bytes) {
            Ok(event) => events.push((
                l.id,
                Landed {
                    event,
                    partition: l.partition,
                    offset: l.offset,
                    key: l.key.clone().map(Into::into),
                    value: value.map(|v| v.to_vec()).unwrap_or_default().into(),
                },
            )),
            Err(error) => report.still_failing.push(StillFailing {
                id: l.id,
                error: error.into(),
            }),
        }
    }
    let taken = dlq::take(sink, &events).await.map_err(anyhow::Error::new)?;
    for (id, reason) in &taken.refused {
        report.still_failing.push(StillFailing {
            id: *id,
            error: format!("refused by the database: {reason}"),
        });
    }
    report.still_failing.sort_by_key(|f| f.id);
    report.replayed = events
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !taken.refused.iter().any(|(r, _)| r == id))
        .collect();
    report.stored = Some(taken);
    Ok(())
}

fn print_replay(report: &Replayed) -> Result<()> {
    let mut line = format!(
        "replayed {} dead letter(s) into {}",
        report.replayed.len(),
        report.into
    );
    if let Some(s) = &report.stored {
        line.push_str(&format!(
            ": {} inserted, {} duplicate(s)",
            s.inserted, s.duplicates
        ));
    }
    render::line(line)?;
    for f in &report.still_failing {
        render::line(format!(
            "still failing, kept: id {}: {}",
            f.id,
            escaped(&f.error)
        ))?;
    }
    if !report.corrupt_batches.is_empty() {
        render::line(format!(
            "{} corrupt-batch letter(s) left alone: they hold a raw record batch, not a record",
            report.corrupt_batches.len()
        ))?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Purged {
    database: String,
    /// False: a dry run, nothing was deleted.
    executed: bool,
    /// How many were deleted (0 in a dry run).
    purged: usize,
    /// The letters deleted, or that --execute would delete.
    ids: Vec<i64>,
}

async fn purge(args: Purge) -> Result<()> {
    let (target, filter) = (&args.target, &args.filter);
    let reader = Reader::connect(target, args.timeout).await?;
    let ids = if args.execute {
        reader.purge_dead_letters(filter).await?
    } else {
        let letters = reader
            .dead_letter_rows(filter, Order::OldestFirst, None, false)
            .await?;
        letters.iter().map(|l| l.id).collect()
    };
    let purged = Purged {
        database: redact(&target.url),
        executed: args.execute,
        purged: if args.execute { ids.len() } else { 0 },
        ids,
    };
    match args.format {
        Format::Json => render::json(&purged),
        Format::Table => {
            let ids: Vec<String> = purged.ids.iter().map(i64::to_string).collect();
            let which = if ids.is_empty() {
                String::new()
            } else {
                format!(": ids {}", ids.join(", "))
            };
            if purged.executed {
                render::line(format!("purged {} dead letter(s){which}", purged.purged))?;
            } else {
                render::line(format!("would purge {} dead letter(s){which}", ids.len()))?;
                render::note("dry run: nothing deleted; add --execute to delete them")?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_control_characters_escaped() {
        assert_eq!(
            escaped("a\u{1b}[31mred\nb\tc é"),
            "a\\u{1b}[31mred\\nb\\tc é"
        );
    }
}

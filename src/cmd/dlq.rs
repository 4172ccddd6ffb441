//! `streamlab dlq list|show|replay|purge`: the records a database set aside in `dead_letters`.
//!
//! `replay` decodes the chosen letters again with the rules and options of today (say a larger
//! `--max-event-bytes`, or the right `--kind`) and stores those that now pass, removing them
//! from `dead_letters` in the same transaction (`db::dlq::take`): each is stored once, however
//! many replays run. With `--to-topic` it produces the raw records (key and value as they came)
//! to a topic instead, and removes them once the broker acknowledged them.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cli::{
    DlqCommand, DlqFilterArgs, DlqListArgs, DlqPurgeArgs, DlqReplayArgs, DlqShowArgs, Format,
};
use crate::db::dlq::{self, Filter, Letter, Order, TakeError, Taken};
use crate::db::{self, redact, Database, Landed, Reader, Target};
use crate::events;
use crate::kafka;
use crate::render;

pub async fn run(command: DlqCommand) -> Result<()> {
    match command {
        DlqCommand::List(args) => list(args).await,
        DlqCommand::Show(args) => show(args).await,
        DlqCommand::Replay(args) => replay(args).await,
        DlqCommand::Purge(args) => purge(args).await,
    }
}

impl From<&DlqFilterArgs> for Filter {
    fn from(f: &DlqFilterArgs) -> Self {
        Filter {
            topic: f.topic.clone(),
            since: f.since,
            before: None,
            reason: f.reason.clone(),
            ids: f.ids.clone(),
        }
    }
}

/// The database, for reading (and purging).
async fn open(db: &crate::cli::DbOpts, timeout: std::time::Duration) -> Result<(Target, Reader)> {
    let target = db.target()?;
    let reader = Reader::connect(&target, timeout).await?;
    Ok((target, reader))
}

#[derive(Serialize)]
struct Listing {
    database: String,
    count: usize,
    dead_letters: Vec<Letter>,
}

async fn list(args: DlqListArgs) -> Result<()> {
    let (target, reader) = open(&args.db, args.kafka.timeout).await?;
    let filter = Filter::from(&args.filter);
    let letters = reader
        .dead_letter_rows(&filter, Order::NewestFirst, args.limit, false)
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
                    shorten(&l.error, 100),
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
    let one_line = text.replace('\n', " ");
    match one_line.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
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

async fn show(args: DlqShowArgs) -> Result<()> {
    let (target, reader) = open(&args.db, args.kafka.timeout).await?;
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
                }) => format!("({bytes} bytes, UTF-8)\n{text}"),
                Some(Shown { hex, bytes, .. }) => format!("({bytes} bytes, not UTF-8, hex)\n{hex}"),
            };
            render::line(format!(
                "dead letter {} · {}/{}@{} · failed at {}\nerror: {}\nkey: {}\npayload: {}",
                l.id,
                l.topic,
                l.partition,
                l.offset,
                l.failed_at,
                l.error,
                text(&shown.key).replace('\n', " "),
                text(&shown.payload)
            ))?;
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct Replay {
    database: String,
    /// The letters taken out of `dead_letters`, by id.
    replayed: Vec<i64>,
    /// Where they went: the event table, or the topic they were produced to.
    into: String,
    /// Of the replayed events, how many rows are new and how many ids were already stored
    /// (None with --to-topic).
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<Taken>,
    /// Letters that still fail, kept, with today's reason.
    still_failing: Vec<StillFailing>,
}

#[derive(Serialize)]
struct StillFailing {
    id: i64,
    error: String,
}

async fn replay(args: DlqReplayArgs) -> Result<()> {
    let timeout = args.kafka.timeout;
    let (target, reader) = open(&args.db, timeout).await?;
    let filter = Filter::from(&args.filter);
    let letters = reader
        .dead_letter_rows(&filter, Order::OldestFirst, None, true)
        .await?;
    let mut report = Replay {
        database: redact(&target.url),
        replayed: Vec::new(),
        into: match &args.to_topic {
            Some(topic) => format!("topic {topic}"),
            None => args.kind.table().to_string(),
        },
        stored: None,
        still_failing: Vec::new(),
    };
    if !letters.is_empty() {
        let mut database = Database::connect(&target, timeout).await?;
        let limit = db::connect_timeout(timeout);
        match &args.to_topic {
            Some(topic) => {
                produce_raw(&args.kafka, topic, &letters).await?;
                let ids: Vec<i64> = letters.iter().map(|l| l.id).collect();
                dlq::take(&mut database, &[], &ids, limit)
                    .await
                    .map_err(|e| taken_error(e, true))?;
                report.replayed = ids;
            }
            None => {
                let mut events = Vec::new();
                for l in &letters {
                    let value = l.payload.as_deref();
                    match events::decode_record(args.kind, value, args.max_event_bytes) {
                        Ok(event) => {
                            report.replayed.push(l.id);
                            events.push(Landed {
                                event,
                                partition: l.partition,
                                offset: l.offset,
                                key: l.key.clone().map(Into::into),
                                value: value.map(|v| v.to_vec()).unwrap_or_default().into(),
                            });
                        }
                        Err(error) => report.still_failing.push(StillFailing { id: l.id, error }),
                    }
                }
                let ids = report.replayed.clone();
                let taken = dlq::take(&mut database, &events, &ids, limit)
                    .await
                    .map_err(|e| taken_error(e, false))?;
                report.stored = Some(taken);
            }
        }
    }
    match args.format {
        Format::Json => render::json(&report),
        Format::Table => {
            let mut line = format!(
                "replayed {} dead letter(s) into {}",
                report.replayed.len(),
                report.into
            );
            if let Some(s) = report.stored {
                line.push_str(&format!(
                    ": {} inserted, {} duplicate(s)",
                    s.inserted, s.duplicates
                ));
            }
            render::line(line)?;
            for f in &report.still_failing {
                render::line(format!("still failing, kept: id {}: {}", f.id, f.error))?;
            }
            Ok(())
        }
    }
}

fn taken_error(e: TakeError, produced: bool) -> anyhow::Error {
    match e {
        TakeError::Changed { .. } if produced => anyhow::Error::new(e).context(
            "the records were produced, but some of their dead letters were taken meanwhile: \
             those records are now in the topic twice",
        ),
        e => anyhow::Error::new(e),
    }
}

/// Produce each letter's raw record (key and value as they came) to `topic`, placed as Kafka's
/// default partitioner places keyed records (round robin without a key); returns once the
/// broker acknowledged every one.
async fn produce_raw(opts: &kafka::Config, topic: &str, letters: &[Letter]) -> Result<()> {
    use rskafka::client::partition::Compression;
    let client = kafka::connect(opts).await?;
    let partitions = kafka::partitions_of(&client, topic).await?;
    let clients = kafka::partition_clients(&client, topic, &partitions).await?;
    let mut by_partition: BTreeMap<usize, Vec<rskafka::record::Record>> = BTreeMap::new();
    for (i, l) in letters.iter().enumerate() {
        let at = match &l.key {
            Some(key) => kafka::partitioner::partition_for_key(key, partitions.len()),
            None => i % partitions.len(),
        };
        by_partition
            .entry(at)
            .or_default()
            .push(rskafka::record::Record {
                key: l.key.clone(),
                value: l.payload.clone(),
                headers: Default::default(),
                timestamp: super::produce::chrono_ts(time::OffsetDateTime::now_utc()),
            });
    }
    for (at, records) in by_partition {
        let produced = clients[at].produce(records, Compression::NoCompression);
        tokio::time::timeout(opts.timeout, produced)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "producing to {topic}/{}: no answer within {:?}",
                    partitions[at],
                    opts.timeout
                )
            })?
            .with_context(|| format!("producing to {topic}/{}", partitions[at]))?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Purged {
    database: String,
    purged: usize,
    ids: Vec<i64>,
}

async fn purge(args: DlqPurgeArgs) -> Result<()> {
    let (target, reader) = open(&args.db, args.kafka.timeout).await?;
    let filter = Filter {
        before: Some(args.before),
        ..Filter::from(&args.filter)
    };
    let ids = reader.purge_dead_letters(&filter).await?;
    let purged = Purged {
        database: redact(&target.url),
        purged: ids.len(),
        ids,
    };
    match args.format {
        Format::Json => render::json(&purged),
        Format::Table => {
            let ids: Vec<String> = purged.ids.iter().map(i64::to_string).collect();
            render::line(format!(
                "purged {} dead letter(s){}",
                purged.purged,
                if ids.is_empty() {
                    String::new()
                } else {
                    format!(": ids {}", ids.join(", "))
                }
            ))?;
            Ok(())
        }
    }
}

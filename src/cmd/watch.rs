//! `streamlab watch`: lag, throughput and backpressure as a picture that moves.
//!
//! Every interval a [`Snapshot`] is taken — log start/end per partition from the broker, the
//! group's committed position (from the database with `--sink`, where the truth is; from the
//! Kafka group otherwise), and with `--sink` what landed. On a terminal it is drawn full-screen
//! with ratatui; piped, each snapshot is one JSON line, so scripts and tests read the same data.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Sparkline, Table};
use ratatui::Frame;
use serde::Serialize;
use time::OffsetDateTime;

use super::members;
use crate::db::{self, Reader};
use crate::events::{ts_millis, EventKind};
use crate::kafka::fetch::TopicReaders;
use crate::kafka::{self, admin::GroupCoordinator, Position};
use crate::{render, shutdown};

/// Rate samples kept for the sparklines (at 1 s, two minutes).
const HISTORY: usize = 120;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    pub at: String,
    pub topic: String,
    pub group: String,
    /// Where `committed` comes from: "database" or "kafka".
    pub position_source: &'static str,
    pub partitions: Vec<PartitionView>,
    pub total: Totals,
    /// Events per second appended to the log since the previous snapshot.
    pub produce_rate: f64,
    /// Events per second committed by the group since the previous snapshot.
    pub consume_rate: f64,
    pub sink: Option<SinkView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PartitionView {
    #[serde(flatten)]
    pub position: Position,
    /// The group member holding it (its client: host and pid for streamlab members), when the
    /// group has members and their assignments are known.
    pub owner: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Totals {
    pub records: i64,
    pub committed: i64,
    pub lag: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SinkView {
    pub rows: i64,
    pub newest_ts: Option<String>,
    pub dead_letters: i64,
    /// Now minus the newest stored event's `ts`: how far behind real time the table is.
    pub delay_ms: Option<i64>,
}

/// `watch`, settled: what to show, how often, for how long.
pub struct Config {
    pub kafka: kafka::Config,
    pub topic: String,
    pub group: String,
    /// Also what landed in this database; the group's position is then read from it.
    pub target: Option<db::Target>,
    /// Which table to count (with `target`).
    pub kind: EventKind,
    pub interval: Duration,
    /// Stop after this many snapshots; `None`: until q or Ctrl-C.
    pub count: Option<u64>,
}

pub async fn run(args: Config) -> Result<()> {
    let mut source = Source::connect(&args).await?;
    let cancel = shutdown::on_signal();
    let mut history = History::default();
    let json = !std::io::stdout().is_terminal();
    let mut terminal = (!json).then(ratatui::init);
    // NO_COLOR (or CLICOLOR=0): the same dashboard in the terminal's own colours.
    let colour = render::stdout_colour();
    let mut paused = false;
    let mut taken = 0u64;
    let result = async {
        loop {
            if !paused {
                let snapshot = history.rates(source.snapshot(&args).await?);
                taken += 1;
                match terminal.as_mut() {
                    Some(t) => {
                        t.draw(|f| {
                            draw(f, &snapshot, &history, paused);
                            if !colour {
                                uncolour(f.buffer_mut());
                            }
                        })?;
                    }
                    None => render::line(serde_json::to_string(&snapshot)?)?,
                }
            }
            if args.count.is_some_and(|n| taken >= n) || cancel.is_cancelled() {
                return Ok(());
            }
            if terminal.is_some() {
                // Keys are read on a blocking thread so the runtime stays free.
                let wait = args.interval;
                let key = tokio::task::spawn_blocking(move || read_key(wait)).await??;
                match key {
                    Some(Key::Quit) => return Ok(()),
                    Some(Key::Pause) => paused = !paused,
                    None => {}
                }
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(args.interval) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
            }
        }
    }
    .await;
    if terminal.is_some() {
        ratatui::restore();
    }
    result
}

/// Drop every colour from a drawn frame, keeping text and emphasis (bold, reversed).
fn uncolour(buffer: &mut ratatui::buffer::Buffer) {
    for cell in &mut buffer.content {
        cell.set_fg(ratatui::style::Color::Reset);
        cell.set_bg(ratatui::style::Color::Reset);
    }
}

/// What a key asks of the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Quit,
    Pause,
}

impl Key {
    /// q, Esc, and Ctrl-C (which raw mode delivers as a key, not as SIGINT) quit; p pauses.
    fn of(key: KeyEvent) -> Option<Self> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') | KeyCode::Char('d') if ctrl => Some(Key::Quit),
            KeyCode::Char('q') | KeyCode::Esc => Some(Key::Quit),
            KeyCode::Char('p') => Some(Key::Pause),
            _ => None,
        }
    }
}

/// A meaningful key pressed within `wait`, if any.
fn read_key(wait: Duration) -> Result<Option<Key>> {
    let until = Instant::now() + wait;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if event::poll(left)? {
            if let Event::Key(key) = event::read()? {
                if key.kind == KeyEventKind::Press {
                    if let Some(key) = Key::of(key) {
                        return Ok(Some(key));
                    }
                }
            }
        } else {
            break;
        }
    }
    Ok(None)
}

/// What a snapshot is read from: the broker, and the database when given.
struct Source {
    topic: TopicReaders,
    /// Kept between snapshots; follows the coordinator when it moves.
    coordinator: GroupCoordinator,
    reader: Option<Reader>,
}

impl Source {
    async fn connect(args: &Config) -> Result<Self> {
        let topic = TopicReaders::open(&args.kafka, &args.topic).await?;
        let reader = match &args.target {
            Some(target) => Some(Reader::connect(target, args.kafka.timeout).await?),
            None => None,
        };
        Ok(Self {
            topic,
            coordinator: GroupCoordinator::new(&args.kafka, &args.group),
            reader,
        })
    }

    async fn snapshot(&mut self, args: &Config) -> Result<Snapshot> {
        let ranges = self.topic.ranges().await?;
        let ids: Vec<i32> = ranges.keys().copied().collect();
        let (committed, position_source) = match &self.reader {
            Some(reader) => (db_offsets(reader, args).await?, "database"),
            None => (self.group_offsets(args, &ids).await?, "kafka"),
        };
        let owners = self.owners(args).await;
        let mut partitions = Vec::new();
        let mut total = Totals::default();
        for (&partition, &(log_start, log_end)) in &ranges {
            // Never committed: everything still in the log is unread.
            let position = Position::new(
                partition,
                (log_start, log_end),
                committed.get(&partition).copied(),
            );
            total.records += log_end - log_start;
            total.committed += position.committed.unwrap_or(0);
            total.lag += position.lag;
            partitions.push(PartitionView {
                position,
                owner: owners.get(&partition).cloned(),
            });
        }
        let sink = match &self.reader {
            Some(reader) => Some(sink_view(reader, args).await?),
            None => None,
        };
        Ok(Snapshot {
            at: ts_millis::format(OffsetDateTime::now_utc()),
            topic: args.topic.clone(),
            group: args.group.clone(),
            position_source,
            partitions,
            total,
            produce_rate: 0.0,
            consume_rate: 0.0,
            sink,
        })
    }

    async fn group_offsets(&mut self, args: &Config, ids: &[i32]) -> Result<BTreeMap<i32, i64>> {
        let fetched = self.coordinator.fetch(&args.topic, ids).await;
        if fetched.is_err() {
            self.coordinator.forget();
        }
        fetched
    }

    /// Partition → the member holding it. Best effort: a dashboard without owners is still useful.
    async fn owners(&mut self, args: &Config) -> BTreeMap<i32, String> {
        let (view, failed) = members::described_or_recorded(
            &mut self.coordinator,
            self.reader.as_ref(),
            &args.topic,
        )
        .await;
        if failed.is_some() {
            self.coordinator.forget();
        }
        let mut owners = BTreeMap::new();
        for member in view.map(|v| v.members).unwrap_or_default() {
            let who = if member.client.is_empty() {
                member.member_id.clone()
            } else {
                member.client.clone()
            };
            for partition in member.partitions.unwrap_or_default() {
                owners.insert(partition, who.clone());
            }
        }
        owners
    }
}

async fn db_offsets(reader: &Reader, args: &Config) -> Result<BTreeMap<i32, i64>> {
    let stored = reader
        .stored_offsets(&args.group, Some(&args.topic))
        .await
        .context("reading the group's stored offsets (has consume run against this database?)")?;
    Ok(stored
        .into_iter()
        .map(|(_, partition, next)| (partition, next))
        .collect())
}

async fn sink_view(reader: &Reader, args: &Config) -> Result<SinkView> {
    let table = args.kind.table();
    let landed = reader
        .rows(table)
        .await
        .with_context(|| format!("reading {table}"))?;
    let dead_letters = reader.dead_letter_count(Some(&args.topic)).await?;
    let newest_ts = landed.newest_ts;
    let delay_ms = newest_ts
        .as_deref()
        .and_then(|ts| {
            OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|ts| ((OffsetDateTime::now_utc() - ts).whole_milliseconds() as i64).max(0));
    Ok(SinkView {
        rows: landed.count,
        newest_ts,
        dead_letters,
        delay_ms,
    })
}

/// Rates between consecutive snapshots, kept for the sparklines.
#[derive(Default)]
pub struct History {
    last: Option<(Instant, i64, i64)>,
    pub produce: VecDeque<u64>,
    pub consume: VecDeque<u64>,
}

impl History {
    /// Fill in `snapshot`'s rates from the previous one, and remember them.
    pub fn rates(&mut self, mut snapshot: Snapshot) -> Snapshot {
        let now = Instant::now();
        snapshot.produce_rate = 0.0;
        snapshot.consume_rate = 0.0;
        let ends: i64 = snapshot.partitions.iter().map(|p| p.position.log_end).sum();
        if let Some((then, last_ends, last_committed)) = self.last {
            let secs = now.duration_since(then).as_secs_f64().max(1e-3);
            snapshot.produce_rate = (ends - last_ends).max(0) as f64 / secs;
            snapshot.consume_rate =
                (snapshot.total.committed - last_committed).max(0) as f64 / secs;
            push(&mut self.produce, snapshot.produce_rate);
            push(&mut self.consume, snapshot.consume_rate);
        }
        self.last = Some((now, ends, snapshot.total.committed));
        snapshot
    }
}

fn push(series: &mut VecDeque<u64>, rate: f64) {
    if series.len() == HISTORY {
        series.pop_front();
    }
    series.push_back(rate.round() as u64);
}

/// One frame of the dashboard. Pure: everything it shows is in its arguments, so tests render
/// it into ratatui's `TestBackend` and read the buffer.
pub fn draw(frame: &mut Frame, s: &Snapshot, history: &History, paused: bool) {
    let sink_height = if s.sink.is_some() { 3 } else { 0 };
    let [title, table, rates, sink, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(s.partitions.len() as u16 + 4),
        Constraint::Min(6),
        Constraint::Length(sink_height),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let state = if paused { " PAUSED" } else { "" };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("streamlab watch", Style::new().add_modifier(Modifier::BOLD)),
            Span::styled(
                state,
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(
                " · topic {} · group {} (position from {}) · {}",
                s.topic, s.group, s.position_source, s.at
            )),
        ])),
        title,
    );
    frame.render_widget(partition_table(s, table.width), table);

    let [produced, consumed] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(rates);
    sparkline(
        frame,
        produced,
        "produce",
        s.produce_rate,
        &history.produce,
        Color::Cyan,
    );
    sparkline(
        frame,
        consumed,
        "consume",
        s.consume_rate,
        &history.consume,
        Color::Green,
    );

    if let Some(v) = &s.sink {
        let delay = v
            .delay_ms
            .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        frame.render_widget(
            Paragraph::new(format!(
                "rows {} · newest ts {} · end-to-end delay {delay} · dead letters {}",
                v.rows,
                v.newest_ts.as_deref().unwrap_or("-"),
                v.dead_letters
            ))
            .block(Block::default().borders(Borders::ALL).title(" sink ")),
            sink,
        );
    }
    frame.render_widget(
        Paragraph::new("q quit · p pause").style(Style::new().fg(Color::DarkGray)),
        keys,
    );
}

/// The partition table's columns: header and width; the owner column goes before the bar.
const COLUMNS: [(&str, Constraint); 6] = [
    ("partition", Constraint::Length(9)),
    ("log start", Constraint::Length(11)),
    ("log end", Constraint::Length(11)),
    ("committed", Constraint::Length(11)),
    ("lag", Constraint::Length(10)),
    ("lag bar", Constraint::Min(10)),
];
const OWNER_COLUMN: usize = 5;
const OWNER_WIDTH: u16 = 18;

fn partition_table(s: &Snapshot, width: u16) -> Table<'static> {
    // The owner column only appears for a group with members (`consume` without --assign or
    // --partition).
    let owners = s.partitions.iter().any(|p| p.owner.is_some());
    let fixed = 62 + if owners { OWNER_WIDTH + 1 } else { 0 };
    let max_lag = s
        .partitions
        .iter()
        .map(|p| p.position.lag)
        .max()
        .unwrap_or(0)
        .max(1);
    let bar_width = width.saturating_sub(fixed).max(10) as i64;
    let with_owner = |mut cells: Vec<String>, owner: String| {
        if owners {
            cells.insert(OWNER_COLUMN, owner);
        }
        cells
    };
    let mut rows: Vec<Row> = s
        .partitions
        .iter()
        .map(|p| {
            let cells = partition_cells(&p.position, lag_bar(p.position.lag, max_lag, bar_width));
            Row::new(with_owner(cells, p.owner.clone().unwrap_or("-".into())))
                .style(lag_style(&p.position))
        })
        .collect();
    let totals = vec![
        "total".to_string(),
        String::new(),
        s.total.records.to_string(),
        s.total.committed.to_string(),
        s.total.lag.to_string(),
        String::new(),
    ];
    rows.push(
        Row::new(with_owner(totals, String::new()))
            .style(Style::new().add_modifier(Modifier::BOLD)),
    );
    let (mut header, mut widths): (Vec<&str>, Vec<Constraint>) = COLUMNS.into_iter().unzip();
    if owners {
        widths.insert(OWNER_COLUMN, Constraint::Length(OWNER_WIDTH));
        header.insert(OWNER_COLUMN, "owner");
    }
    Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::default().borders(Borders::ALL).title(" partitions "))
}

/// One partition's cells, in the order of [`COLUMNS`].
fn partition_cells(p: &Position, bar: String) -> Vec<String> {
    vec![
        p.partition.to_string(),
        p.log_start.to_string(),
        p.log_end.to_string(),
        p.committed.map_or("-".into(), |c| c.to_string()),
        super::lag_text(p),
        bar,
    ]
}

/// A bar `width` long at the largest lag; any lag at all gets at least one block.
fn lag_bar(lag: i64, max_lag: i64, width: i64) -> String {
    let filled = if lag == 0 {
        0
    } else {
        ((lag * width) / max_lag).max(1)
    };
    "█".repeat(filled as usize)
}

/// Red when the stored position is ahead of the log, green when caught up, yellow otherwise.
fn lag_style(p: &Position) -> Style {
    match (p.ahead, p.lag) {
        (Some(_), _) => Style::new().fg(Color::Red),
        (None, 0) => Style::new().fg(Color::Green),
        (None, _) => Style::new().fg(Color::Yellow),
    }
}

fn sparkline(
    frame: &mut Frame,
    area: Rect,
    what: &str,
    rate: f64,
    series: &VecDeque<u64>,
    color: Color,
) {
    // Newest on the right: show the tail that fits.
    let fits = area.width.saturating_sub(2) as usize;
    let data: Vec<u64> = series
        .iter()
        .skip(series.len().saturating_sub(fits))
        .copied()
        .collect();
    frame.render_widget(
        Sparkline::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!(" {what} {rate:.0} events/s ")),
            )
            .data(&data)
            .style(Style::new().fg(color)),
        area,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::*;

    #[test]
    fn ctrl_c_q_and_esc_quit_and_p_pauses() {
        let key = |code, modifiers| Key::of(KeyEvent::new(code, modifiers));
        let none = KeyModifiers::NONE;
        assert_eq!(
            key(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Key::Quit)
        );
        assert_eq!(key(KeyCode::Char('q'), none), Some(Key::Quit));
        assert_eq!(key(KeyCode::Esc, none), Some(Key::Quit));
        assert_eq!(key(KeyCode::Char('p'), none), Some(Key::Pause));
        assert_eq!(key(KeyCode::Char('c'), none), None);
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            at: "2026-11-22T20:00:00.000Z".into(),
            topic: "sales".into(),
            group: "streamlab".into(),
            position_source: "database",
            partitions: vec![
                PartitionView {
                    position: Position::new(0, (0, 1200), Some(1200)),
                    owner: None,
                },
                PartitionView {
                    position: Position::new(1, (100, 1500), Some(900)),
                    owner: None,
                },
                PartitionView {
                    position: Position::new(2, (0, 300), None),
                    owner: None,
                },
            ],
            total: Totals {
                records: 2900,
                committed: 2100,
                lag: 900,
            },
            produce_rate: 500.0,
            consume_rate: 300.0,
            sink: Some(SinkView {
                rows: 2100,
                newest_ts: Some("2026-11-22T19:59:58.500Z".into()),
                dead_letters: 2,
                delay_ms: Some(1500),
            }),
        }
    }

    fn render(s: &Snapshot, history: &History, paused: bool) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(100, 24)).unwrap();
        terminal.draw(|f| draw(f, s, history, paused)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    fn line_with<'a>(lines: &'a [String], needle: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{}", lines.join("\n")))
    }

    #[test]
    fn owners_appear_only_when_the_group_has_members() {
        let alone = render(&snapshot(), &History::default(), false);
        assert!(!line_with(&alone, "log start").contains("owner"));

        let mut grouped = snapshot();
        for (p, owner) in grouped
            .partitions
            .iter_mut()
            .zip(["vm pid 7", "vm pid 7", "vm pid 9"])
        {
            p.owner = Some(owner.to_string());
        }
        let lines = render(&grouped, &History::default(), false);
        assert!(line_with(&lines, "log start").contains("owner"));
        assert!(line_with(&lines, "│0 ").contains("vm pid 7"));
        assert!(line_with(&lines, "│2 ").contains("vm pid 9"));
        let bars = |l: &str| l.matches('█').count();
        assert!(bars(line_with(&lines, "│1 ")) > bars(line_with(&lines, "│2 ")));
    }

    #[test]
    fn partitions_show_offsets_lag_and_proportional_bars() {
        let lines = render(&snapshot(), &History::default(), false);
        let p1 = line_with(&lines, "│1 ");
        assert!(
            p1.contains("100") && p1.contains("1500") && p1.contains("900") && p1.contains("600")
        );
        let bars = |l: &str| l.matches('█').count();
        let (p0, p2) = (line_with(&lines, "│0 "), line_with(&lines, "│2 "));
        assert_eq!(bars(p0), 0, "no lag, no bar");
        assert!(
            bars(p1) > bars(p2) && bars(p2) > 0,
            "bars follow lag: {p1}\n{p2}"
        );
        assert!(
            p2.contains(" - "),
            "a never-committed partition shows '-': {p2}"
        );
        let total = line_with(&lines, "total");
        assert!(total.contains("2900") && total.contains("2100") && total.contains("900"));
    }

    #[test]
    fn rates_sink_and_keys_are_shown() {
        let mut history = History::default();
        history.produce.extend([100, 300, 500]);
        history.consume.extend([300, 300, 300]);
        let lines = render(&snapshot(), &history, true);
        assert!(line_with(&lines, "produce 500 events/s").contains("consume 300 events/s"));
        let sink = line_with(&lines, "rows 2100");
        assert!(
            sink.contains("delay 1.5s") && sink.contains("dead letters 2"),
            "{sink}"
        );
        assert!(line_with(&lines, "streamlab watch").contains("PAUSED"));
        line_with(&lines, "q quit · p pause");
    }

    #[test]
    fn rates_come_from_consecutive_snapshots() {
        let mut history = History::default();
        let first = history.rates(snapshot());
        assert_eq!(
            first.produce_rate, 0.0,
            "no rate without a previous snapshot"
        );
        std::thread::sleep(Duration::from_millis(100));
        let mut next = snapshot();
        next.partitions[0].position.log_end += 100;
        next.total.committed += 50;
        let next = history.rates(next);
        assert!(
            next.produce_rate > 0.0 && next.produce_rate <= 1000.0,
            "{}",
            next.produce_rate
        );
        assert!(next.consume_rate > 0.0 && next.consume_rate < next.produce_rate);
        assert_eq!(history.produce.len(), 1);
    }
}

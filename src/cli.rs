//! Every command-line option, in one place (the sqlx-cli `opt.rs` pattern). Connection options are
//! defined once and flattened into the commands that need them.
//!
//! Each command's arguments are settled here, once, into the plain configuration its `cmd` module
//! runs (ripgrep's `HiArgs` pattern): [`Cli::into_job`] returns a [`Job`], and every usage error
//! — a bad flag, a database that cannot be meant — ends the run there, before anything connects.
//! Nothing below this module sees a clap type.

use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cmd::{
    bench, check, completions, consume, dlq, group, migrate, offsets, produce, topic, watch, Job,
};
use crate::events::EventKind;
use crate::exit::{self, usage};
pub use crate::kafka::StartFrom;
use crate::render::Format;
use crate::{db, kafka};

#[derive(Debug, Parser)]
#[command(
    name = "streamlab",
    version,
    about = "Practise and run the essentials of streaming on one machine: Kafka topics, \
             a mock-event firehose, and an exactly-once sink into PostgreSQL or SQLite.",
    after_help = "A whole pipeline in four commands:\n  \
        streamlab topic create --topic sales --partitions 3\n  \
        streamlab produce --topic sales --count 10000 --rate 0\n  \
        streamlab consume --topic sales --sink sqlite --stop-at-end\n  \
        streamlab check --sink sqlite --topic sales"
)]
pub struct Cli {
    /// How to reach Kafka: accepted before or after the subcommand, as rpk does.
    #[command(flatten)]
    pub kafka: KafkaOpts,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides it.
    #[arg(
        short,
        long,
        action = clap::ArgAction::Count,
        global = true,
        help_heading = "Global options"
    )]
    pub verbose: u8,

    /// Print only results, warnings and errors: no progress, no summaries (JSON still prints).
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Global options"
    )]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The subcommand, settled into what its `cmd` module runs: the global connection options
    /// and every usage error clap cannot see by itself end the run here (exit 2), before
    /// anything connects.
    pub fn into_job(self) -> Result<Job, exit::Error> {
        let kafka = self.kafka.config()?;
        if kafka.brokers.is_empty() {
            return Err(usage(
                "--bootstrap-server names no broker (expected HOST:PORT[,HOST:PORT…])",
            ));
        }
        self.command.settle(kafka)
    }
}

impl Command {
    fn settle(self, kafka: kafka::Config) -> Result<Job, exit::Error> {
        Ok(match self {
            Command::Topic(command) => Job::Topic(command.settle(kafka)?),
            Command::Produce(args) => Job::Produce(args.settle(kafka)?),
            Command::Consume(args) => Job::Consume(args.settle(kafka)?),
            Command::Migrate(args) => Job::Migrate(args.settle(kafka.timeout)?),
            Command::Check(args) => Job::Check(args.settle(kafka)?),
            Command::Watch(args) => Job::Watch(args.settle(kafka)?),
            Command::Bench(args) => Job::Bench(args.settle(kafka)),
            Command::Offsets(OffsetsCommand::Reset(args)) => Job::OffsetsReset(args.settle(kafka)?),
            Command::Group(command) => Job::Group(command.settle(kafka)?),
            Command::Dlq(command) => Job::Dlq(command.settle(kafka)?),
            Command::Completions(args) => Job::Completions(args.settle()),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect and configure topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Send realistic mock events (sales or sensor readings) to a topic at a precise rate.
    Produce(ProduceArgs),
    /// Write a topic into PostgreSQL or SQLite, exactly once per event.
    Consume(ConsumeArgs),
    /// Apply the database migrations for a sink and exit.
    Migrate(MigrateArgs),
    /// Sanity and health checks over what landed in the database.
    Check(CheckArgs),
    /// Live dashboard of offsets, lag, produce/consume rates and what landed.
    Watch(WatchArgs),
    /// Measure produce, fetch, database limits, consume, latency and memory on the local stack.
    Bench(BenchArgs),
    /// Move a consumer group's offsets (in the database, mirrored to Kafka): rewind, skip ahead.
    #[command(subcommand)]
    Offsets(OffsetsCommand),
    /// List the consumer groups, or describe one: members, committed offsets, lag.
    #[command(subcommand)]
    Group(GroupCommand),
    /// The dead letters a database keeps: list, show, replay (re-decode or re-produce), purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Print a shell completion script, e.g. `streamlab completions bash > ~/.local/share/bash-completion/completions/streamlab`.
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

impl CompletionsArgs {
    fn settle(self) -> completions::Config {
        completions::Config {
            shell: self.shell,
            command: <Cli as clap::CommandFactory>::command,
        }
    }
}

/// How to reach Kafka. Parsed once at the top (global: before or after the subcommand) and
/// handed to every command that talks to a broker.
#[derive(Clone, Args)]
pub struct KafkaOpts {
    /// Broker addresses, comma separated.
    #[arg(
        short = 'b',
        long = "bootstrap-server",
        env = "STREAMLAB_BROKERS",
        hide_env_values = true,
        default_value = crate::kafka::DEFAULT_BROKERS,
        value_name = "HOST:PORT[,HOST:PORT…]",
        global = true,
        help_heading = "Global options"
    )]
    pub bootstrap_server: String,

    /// Give up on a broker or database that does not answer after this long (e.g. 10s, 2m).
    #[arg(
        long = "timeout",
        default_value = "10s",
        value_parser = crate::duration::parse,
        global = true,
        help_heading = "Global options"
    )]
    pub timeout: Duration,

    /// Kafka client settings from a properties file, as `kafka-topics.sh --command-config`
    /// takes: security.protocol, sasl.mechanism, sasl.username, sasl.password (or
    /// sasl.jaas.config), ssl.ca.location, ssl.certificate.location, ssl.key.location,
    /// ssl.endpoint.identification.algorithm.
    #[arg(
        long = "command-config",
        env = "STREAMLAB_COMMAND_CONFIG",
        hide_env_values = true,
        value_name = "FILE",
        global = true,
        help_heading = "Global options"
    )]
    pub command_config: Option<std::path::PathBuf>,

    /// One Kafka client setting, KEY=VALUE (as kcat -X); repeatable, wins over --command-config.
    /// Secrets are better kept out of the command line: STREAMLAB_SASL_USERNAME and
    /// STREAMLAB_SASL_PASSWORD are read when neither gives them.
    #[arg(
        short = 'X',
        value_name = "KEY=VALUE",
        global = true,
        help_heading = "Global options"
    )]
    pub property: Vec<String>,
}

impl KafkaOpts {
    /// What the kafka layer needs from these flags: a usage error (exit 2) names a bad key, file
    /// or value, never a secret.
    pub fn config(&self) -> Result<kafka::Config, exit::Error> {
        use crate::kafka::security::{Properties, Security};
        let mut props = Properties::default();
        if let Ok(text) = std::env::var(bench::INHERITED_PROPERTIES_ENV) {
            props
                .parse_text(&text, bench::INHERITED_PROPERTIES_ENV)
                .map_err(usage)?;
        }
        if let Some(path) = &self.command_config {
            props.read_file(path).map_err(usage)?;
        }
        for (n, setting) in self.property.iter().enumerate() {
            match setting.split_once('=') {
                Some((key, value)) if !key.trim().is_empty() => {
                    props.set(key, value, "-X");
                }
                _ => {
                    return Err(usage(format!(
                        "-X expects KEY=VALUE (the {} -X has no '=')",
                        ordinal(n + 1)
                    )))
                }
            }
        }
        let security =
            Security::from_properties(&props, |name| std::env::var(name).ok()).map_err(usage)?;
        Ok(kafka::Config {
            brokers: self
                .bootstrap_server
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            timeout: self.timeout,
            security,
            cluster: Default::default(),
        })
    }
}

fn ordinal(n: usize) -> String {
    match n {
        1 => "1st".into(),
        2 => "2nd".into(),
        3 => "3rd".into(),
        n => format!("{n}th"),
    }
}

/// Which database a sink writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// PostgreSQL (default URL matches docker-compose.yaml).
    Pg,
    /// SQLite (a file, created if missing).
    Sqlite,
}

/// How to reach the database. Shared by consume, migrate, check and watch.
#[derive(Clone, Args)]
pub struct DbOpts {
    /// Database to write to / read from. Optional when -D names it (postgres://… or sqlite://…).
    #[arg(long, value_enum)]
    pub sink: Option<SinkKind>,

    /// Database URL. Defaults: sqlite://warehouse.db, postgres://postgres:postgres@localhost:5432/streamlab
    #[arg(
        short = 'D',
        long = "database-url",
        env = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

impl DbOpts {
    /// Settle which database is meant before anything connects ([`db::Target::settle`]):
    /// `--sink` and the URL's scheme must agree, either one alone is enough, and a URL of
    /// another database is a usage error.
    fn target(&self) -> Result<db::Target, exit::Error> {
        let kind = self.sink.map(db::Kind::from);
        db::Target::settle(kind, self.database_url.as_deref()).map_err(usage_of)
    }

    /// Like [`DbOpts::target`], for commands where the database is optional.
    fn optional_target(&self) -> Result<Option<db::Target>, exit::Error> {
        match (self.sink, &self.database_url) {
            (None, None) => Ok(None),
            _ => self.target().map(Some),
        }
    }
}

/// A database that cannot be used, in the words of the command line (exit 2).
fn usage_of(e: db::TargetError) -> exit::Error {
    match e {
        db::TargetError::Unnamed => {
            usage("say which database: --sink pg|sqlite, or -D postgres://… | sqlite://…")
        }
        db::TargetError::Mismatch { asked, shown } => usage(format!(
            "--sink {} does not fit the database URL {shown} (from -D or DATABASE_URL): \
             drop --sink, or give a {} URL",
            asked.name(),
            asked.name()
        )),
        other => usage(other.to_string()),
    }
}

impl From<SinkKind> for db::Kind {
    fn from(kind: SinkKind) -> Self {
        match kind {
            SinkKind::Pg => db::Kind::Postgres,
            SinkKind::Sqlite => db::Kind::Sqlite,
        }
    }
}

/// `--format`: clap's face of [`Format`] (how results are printed). The help has no final period,
/// as clap's derive shows a doc comment.
impl ValueEnum for Format {
    fn value_variants<'a>() -> &'a [Self] {
        &[Format::Table, Format::Json]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Format::Table => PossibleValue::new("table")
                .alias("text")
                .help("For people: tables and sentences"),
            Format::Json => {
                PossibleValue::new("json").help("For scripts: one JSON document on stdout")
            }
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic (configs such as retention.ms are applied at creation).
    Create(TopicCreateArgs),
    /// Show or change how long a topic keeps its records (retention.ms).
    Retention(TopicRetentionArgs),
    /// List the topics on the cluster.
    List(TopicListArgs),
    /// Partitions, leaders, earliest/latest offsets and retention of one topic.
    Describe(TopicDescribeArgs),
    /// Delete a topic and every record in it.
    Delete(TopicDeleteArgs),
    /// Show a topic's configs, or change any of them (IncrementalAlterConfigs).
    Config(TopicConfigArgs),
}

impl TopicCommand {
    fn settle(self, kafka: kafka::Config) -> Result<topic::Job, exit::Error> {
        Ok(match self {
            TopicCommand::Create(args) => topic::Job::Create(args.settle(kafka)),
            TopicCommand::Retention(args) => topic::Job::Retention(args.settle(kafka)?),
            TopicCommand::List(args) => topic::Job::List(args.settle(kafka)),
            TopicCommand::Describe(args) => topic::Job::Describe(args.settle(kafka)),
            TopicCommand::Delete(args) => topic::Job::Delete(args.settle(kafka)),
            TopicCommand::Config(args) => topic::Job::Config(args.settle(kafka)?),
        })
    }
}

#[derive(Debug, Args)]
pub struct TopicDeleteArgs {
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: String,
    /// Succeed (exit 0) when there is no such topic.
    #[arg(long)]
    pub if_exists: bool,
}

impl TopicDeleteArgs {
    fn settle(self, kafka: kafka::Config) -> topic::Delete {
        topic::Delete {
            kafka,
            topic: self.topic,
            if_exists: self.if_exists,
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    streamlab topic config --topic sales\n  \
    streamlab topic config --topic sales --set retention.ms=86400000 --set cleanup.policy=delete\n  \
    streamlab topic config --topic sales --delete retention.ms")]
pub struct TopicConfigArgs {
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: String,
    /// Set a config on the topic, e.g. retention.ms=86400000. Repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,
    /// Remove the topic's own value of a config (the broker's default applies again). Repeatable.
    #[arg(long, value_name = "KEY", value_parser = parse_config_key)]
    pub delete: Vec<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

impl TopicConfigArgs {
    /// The changes asked for, each key at most once.
    fn settle(self, kafka: kafka::Config) -> Result<topic::Configs, exit::Error> {
        use crate::kafka::admin::ConfigChange;
        let changes: Vec<ConfigChange> = self
            .set
            .into_iter()
            .map(|(k, v)| ConfigChange::Set(k, v))
            .chain(self.delete.into_iter().map(ConfigChange::Delete))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for change in &changes {
            if !seen.insert(change.key()) {
                return Err(usage(format!(
                    "{} is named more than once in --set/--delete: say once what it becomes",
                    change.key()
                )));
            }
        }
        Ok(topic::Configs {
            kafka,
            topic: self.topic,
            changes,
            format: self.format,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum OffsetsCommand {
    /// Move a group's stored offsets for a topic, as kafka-consumer-groups --reset-offsets does:
    /// prints the plan, and changes nothing without --execute.
    Reset(OffsetsResetArgs),
}

#[derive(Debug, Args)]
#[command(
    group(
        clap::ArgGroup::new("target")
            .required(true)
            .args(["to_earliest", "to_latest", "to_datetime", "to_offset", "shift_by"])
    ),
    after_help = "The database holds the group's offsets (they are written with the rows): they \
    are changed there, in one transaction fenced like consume's writes, then mirrored to the Kafka \
    group. Refused while the group has live members (named; where the broker cannot describe the \
    group, the members the database recorded — --force sets those aside). Consumers reading alone \
    (--assign all, --partition) are not members: they are not refused, but their next write is \
    fenced and they exit 1, as does a member that joined after the check; nothing of the reset is \
    lost. If mirroring to Kafka fails after the database was changed, the plan is printed, a warning \
    says so, and the exit is 1 (consume mirrors the offsets on its next run). Rows already stored \
    are kept: events read again count as duplicates.\n\nExamples:\n  \
    streamlab offsets reset --group streamlab --topic sales -D sqlite://lab.db --to-datetime 2026-11-22T10:00:00Z\n  \
    streamlab offsets reset --group streamlab --topic sales -D sqlite://lab.db --shift-by -100 --partition 0 --execute"
)]
pub struct OffsetsResetArgs {
    #[command(flatten)]
    pub db: DbOpts,
    /// The consumer group whose offsets move.
    #[arg(short, long)]
    pub group: String,
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: String,
    /// Only these partitions (repeatable, or comma separated: --partition 0,2); default all.
    #[arg(
        long = "partition",
        value_name = "N[,N…]",
        value_delimiter = ',',
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(0..)
    )]
    pub partitions: Vec<i32>,
    /// To the first offset each partition still holds.
    #[arg(long)]
    pub to_earliest: bool,
    /// To the end of each partition: skip everything not yet read.
    #[arg(long)]
    pub to_latest: bool,
    /// To the first record written at or after this time (RFC 3339, e.g. 2026-11-22T10:00:00Z);
    /// the end where none is that recent. Refused for a partition whose older records were
    /// removed (retention) when the time is before the first record it still holds.
    #[arg(long, value_name = "DATETIME", value_parser = parse_datetime)]
    pub to_datetime: Option<time::OffsetDateTime>,
    /// To this offset; it must lie in each partition's log (earliest..=end).
    #[arg(long, value_name = "OFFSET", value_parser = clap::value_parser!(i64).range(0..))]
    pub to_offset: Option<i64>,
    /// Move each stored offset by N (negative: back), kept within the log.
    #[arg(long, value_name = "±N", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,
    /// Apply the plan (without it, only print it).
    #[arg(long)]
    pub execute: bool,
    /// Where the broker cannot describe the group: reset although the database records members
    /// (a member that crashed leaves its row); members Kafka reports live still refuse.
    #[arg(long)]
    pub force: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

impl OffsetsResetArgs {
    fn settle(self, kafka: kafka::Config) -> Result<offsets::Reset, exit::Error> {
        use offsets::To;
        // Exactly one is given: clap's argument group requires it.
        let to = match (self.to_datetime, self.to_offset, self.shift_by) {
            (Some(at), _, _) => To::Datetime(at),
            (_, Some(offset), _) => To::Offset(offset),
            (_, _, Some(by)) => To::Shift(by),
            _ if self.to_latest => To::Latest,
            _ => To::Earliest,
        };
        Ok(offsets::Reset {
            target: self.db.target()?,
            kafka,
            group: self.group,
            topic: self.topic,
            partitions: self.partitions,
            to,
            execute: self.execute,
            force: self.force,
            format: self.format,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// The consumer groups the cluster knows, with their state and member count.
    List(GroupListArgs),
    /// A group's members and, per partition, committed offset, log end and lag (from Kafka;
    /// with --sink/-D also the database's offsets side by side).
    Describe(GroupDescribeArgs),
}

impl GroupCommand {
    fn settle(self, kafka: kafka::Config) -> Result<group::Job, exit::Error> {
        Ok(match self {
            GroupCommand::List(args) => group::Job::List(args.settle(kafka)),
            GroupCommand::Describe(args) => group::Job::Describe(args.settle(kafka)?),
        })
    }
}

#[derive(Debug, Args)]
pub struct GroupListArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

impl GroupListArgs {
    fn settle(self, kafka: kafka::Config) -> group::List {
        group::List {
            kafka,
            format: self.format,
        }
    }
}

#[derive(Debug, Args)]
pub struct GroupDescribeArgs {
    #[arg(short, long)]
    pub group: String,
    /// Only this topic (default: every topic the group has offsets for or is assigned).
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: Option<String>,
    /// Also the offsets stored in this database, side by side with Kafka's, disagreements
    /// flagged (and the members' partitions as the database recorded them, where the broker
    /// does not report assignments).
    #[command(flatten)]
    pub db: DbOpts,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

impl GroupDescribeArgs {
    fn settle(self, kafka: kafka::Config) -> Result<group::Describe, exit::Error> {
        Ok(group::Describe {
            target: self.db.optional_target()?,
            kafka,
            group: self.group,
            topic: self.topic,
            format: self.format,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// The dead letters, newest first (without their payloads).
    List(DlqListArgs),
    /// One dead letter with its key and payload.
    Show(DlqShowArgs),
    /// Decode the chosen dead letters again with today's rules and options, and store those
    /// that now pass, removing them from dead_letters in the same transaction (those the
    /// database refuses stay); or, with --to-topic, produce the raw records (keys included) to a
    /// topic and remove them. Letters of corrupt batches (--skip-corrupt-batches) are left alone.
    Replay(DlqReplayArgs),
    /// Delete dead letters that failed before a time: prints what would go, and deletes nothing
    /// without --execute.
    Purge(DlqPurgeArgs),
}

impl DlqCommand {
    fn settle(self, kafka: kafka::Config) -> Result<dlq::Job, exit::Error> {
        Ok(match self {
            DlqCommand::List(args) => dlq::Job::List(args.settle(kafka.timeout)?),
            DlqCommand::Show(args) => dlq::Job::Show(args.settle(kafka.timeout)?),
            DlqCommand::Replay(args) => dlq::Job::Replay(Box::new(args.settle(kafka)?)),
            DlqCommand::Purge(args) => dlq::Job::Purge(args.settle(kafka.timeout)?),
        })
    }
}

/// Which dead letters a `dlq` command works on; every filter given must match.
#[derive(Debug, Clone, Args)]
pub struct DlqFilterArgs {
    /// Only those of this topic.
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: Option<String>,
    /// Only those that failed at or after this time: RFC 3339 (2026-11-22T10:00:00Z) or a
    /// duration ago (1h, 30m).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub since: Option<time::OffsetDateTime>,
    /// Only those whose reason contains this text (case-sensitive).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Only these ids (repeatable, or comma separated).
    #[arg(long = "id", value_name = "ID[,ID…]", value_delimiter = ',', allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..))]
    pub ids: Vec<i64>,
}

impl From<DlqFilterArgs> for db::dlq::Filter {
    fn from(f: DlqFilterArgs) -> Self {
        db::dlq::Filter {
            topic: f.topic,
            since: f.since,
            before: None,
            reason: f.reason,
            ids: f.ids,
        }
    }
}

#[derive(Debug, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub db: DbOpts,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// Show at most this many (the newest).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

impl DlqListArgs {
    fn settle(self, timeout: Duration) -> Result<dlq::List, exit::Error> {
        Ok(dlq::List {
            timeout,
            target: self.db.target()?,
            filter: self.filter.into(),
            limit: self.limit,
            format: self.format,
        })
    }
}

#[derive(Debug, Args)]
pub struct DlqShowArgs {
    #[command(flatten)]
    pub db: DbOpts,
    /// The dead letter's id (from `dlq list`).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(1..))]
    pub id: i64,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

impl DlqShowArgs {
    fn settle(self, timeout: Duration) -> Result<dlq::Show, exit::Error> {
        Ok(dlq::Show {
            timeout,
            target: self.db.target()?,
            id: self.id,
            format: self.format,
        })
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "--to-topic claims the letters (removes them in a transaction), produces \
    the records, and commits once the broker acknowledged them: a replay running at the same time \
    finds them gone, a failed produce keeps them. At-least-once only if that COMMIT fails after \
    the acknowledgement (the error says so): then check the topic against `streamlab dlq list` \
    before replaying the letters still listed."
)]
pub struct DlqReplayArgs {
    #[command(flatten)]
    pub db: DbOpts,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// Which events the payloads should be.
    #[arg(short, long, value_enum, default_value = "sales")]
    pub kind: EventKind,
    /// Records larger than this many bytes still fail (as consume's --max-event-bytes).
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_event_bytes: usize,
    /// Instead of decoding: produce each raw record (key and value as they came) to this topic
    /// (requests of at most 1 MiB per partition), removing it from dead_letters.
    #[arg(long, value_name = "TOPIC", value_parser = crate::kafka::names::parse_topic_name, conflicts_with_all = ["kind", "max_event_bytes"])]
    pub to_topic: Option<String>,
    /// Replay at most this many (the oldest first).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

impl DlqReplayArgs {
    fn settle(self, kafka: kafka::Config) -> Result<dlq::Replay, exit::Error> {
        Ok(dlq::Replay {
            target: self.db.target()?,
            kafka,
            filter: self.filter.into(),
            kind: self.kind,
            max_event_bytes: self.max_event_bytes,
            to_topic: self.to_topic,
            limit: self.limit,
            format: self.format,
        })
    }
}

#[derive(Debug, Args)]
pub struct DlqPurgeArgs {
    #[command(flatten)]
    pub db: DbOpts,
    /// Delete those that failed before this time: RFC 3339 or a duration ago (7d).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub before: time::OffsetDateTime,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// Delete them (without it, only list what would go).
    #[arg(long)]
    pub execute: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

impl DlqPurgeArgs {
    fn settle(self, timeout: Duration) -> Result<dlq::Purge, exit::Error> {
        Ok(dlq::Purge {
            timeout,
            target: self.db.target()?,
            filter: db::dlq::Filter {
                before: Some(self.before),
                ..self.filter.into()
            },
            execute: self.execute,
            format: self.format,
        })
    }
}

#[derive(Debug, Args)]
pub struct TopicCreateArgs {
    /// Topic name: letters, digits, '.', '_' and '-', at most 249 characters.
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: String,
    /// Number of partitions (the unit of parallelism and ordering).
    #[arg(short, long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Copies of each partition (1 on a single broker).
    #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(i16).range(1..))]
    pub replication_factor: i16,
    /// Topic config applied at creation, e.g. retention.ms=86400000. Repeatable. A retention.ms
    /// or retention.bytes without a cleanup.policy also sends cleanup.policy=delete (Kafka's
    /// default, made explicit: some brokers, tansu among them, delete only where it is set).
    #[arg(short, long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub configs: Vec<(String, String)>,
    /// Succeed (exit 0) when the topic already exists.
    #[arg(long)]
    pub if_not_exists: bool,
}

impl TopicCreateArgs {
    fn settle(self, kafka: kafka::Config) -> topic::Create {
        topic::Create {
            kafka,
            topic: self.topic,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            configs: self.configs,
            if_not_exists: self.if_not_exists,
        }
    }
}

#[derive(Debug, Args)]
pub struct TopicRetentionArgs {
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: String,
    /// New retention: 1d, 36h, 90m, 500ms, or milliseconds. Without it, show the current value.
    /// A topic without a cleanup.policy of its own also gets cleanup.policy=delete (Kafka's
    /// default, made explicit so that every broker deletes what is older), unless the broker's
    /// default policy is compaction.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub set: Option<Duration>,
}

impl TopicRetentionArgs {
    fn settle(self, kafka: kafka::Config) -> Result<topic::Retention, exit::Error> {
        let too_long = |_| usage("--set: retention is too long");
        let set_ms = self
            .set
            .map(|d| i64::try_from(d.as_millis()).map_err(too_long));
        let set_ms = set_ms.transpose()?;
        Ok(topic::Retention {
            kafka,
            topic: self.topic,
            set_ms,
        })
    }
}

#[derive(Debug, Args)]
pub struct TopicListArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

impl TopicListArgs {
    fn settle(self, kafka: kafka::Config) -> topic::List {
        topic::List {
            kafka,
            format: self.format,
        }
    }
}

#[derive(Debug, Args)]
pub struct TopicDescribeArgs {
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: String,
    /// Also show this consumer group's members and the partitions each holds (brokers that do
    /// not report assignments, like tansu, show them in `streamlab check --topic` instead).
    #[arg(short, long)]
    pub group: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

impl TopicDescribeArgs {
    fn settle(self, kafka: kafka::Config) -> topic::Describe {
        topic::Describe {
            kafka,
            topic: self.topic,
            group: self.group,
            format: self.format,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Lz4,
    Snappy,
    Zstd,
}

impl From<CompressionArg> for rskafka::client::partition::Compression {
    fn from(c: CompressionArg) -> Self {
        use rskafka::client::partition::Compression;
        match c {
            CompressionArg::None => Compression::NoCompression,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartitionerArg {
    /// Apache Kafka's default for keyed records: murmur2(key) % partitions.
    Murmur2,
    /// Spread evenly regardless of key.
    RoundRobin,
}

impl From<PartitionerArg> for produce::Partitioner {
    fn from(p: PartitionerArg) -> Self {
        match p {
            PartitionerArg::Murmur2 => produce::Partitioner::Murmur2,
            PartitionerArg::RoundRobin => produce::Partitioner::RoundRobin,
        }
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Updates of a key space (a topic read as a table by `consume --upsert`):\n  \
    streamlab topic create --topic stores --config cleanup.policy=compact\n  \
    streamlab produce --topic stores --keys 500 --tombstones 5% --count 20000 --rate 0 --seed 7\n\
    Each record updates one of 500 keys (store-0 … store-499, drawn at random, so each key is \
    updated about 40 times); 5% of them are tombstones (a key with no value) that delete it."
)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub metrics: MetricsOpts,
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: String,
    /// Which events to generate.
    #[arg(short, long, value_enum, default_value = "sales")]
    pub kind: EventKind,
    /// Events per second; 0 sends as fast as possible.
    #[arg(short, long, default_value_t = 3.0)]
    pub rate: f64,
    /// Stop after this many events.
    #[arg(short = 'n', long)]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 10s, 5m). Without --count/--duration, runs until Ctrl-C.
    #[arg(short, long, value_parser = crate::duration::parse)]
    pub duration: Option<Duration>,
    /// Make the stream reproducible: the same seed gives the same events (ids included), and
    /// with --keys the same keys and tombstones.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Produce keyed state changes instead: each record updates one of N keys, `store-<k>`
    /// (sales, its store_id) or `sensor-<k>` (sensor, its sensor_id), with k drawn from 0..N —
    /// a topic to read as a table (`consume --upsert`) and to compact.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: Option<u64>,
    /// With --keys: this share of the records are tombstones (the key with a null value),
    /// which delete the key's row downstream: `5%`, `0.5%` or `5` (percent).
    #[arg(long, value_name = "PERCENT", requires = "keys", value_parser = parse_percent, default_value = "0%")]
    pub tombstones: f64,
    /// Compress each record batch (as Kafka's `compression.type`). `none`, Kafka's default, is
    /// readable by every client; lz4 or zstd save bandwidth and disk (`streamlab bench` shows
    /// what each costs and saves) but need the codec in every consumer.
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
    /// How keyed events are spread over partitions.
    #[arg(long, value_enum, default_value = "murmur2")]
    pub partitioner: PartitionerArg,
    /// `json` prints the summary (events acknowledged, per partition, rate) as one JSON document.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Largest record batch sent to one partition in one request, in bytes.
    #[arg(long, default_value_t = 1 << 20, hide = true)]
    pub batch_bytes: usize,
}

impl ProduceArgs {
    fn settle(self, kafka: kafka::Config) -> Result<produce::Config, exit::Error> {
        if !self.rate.is_finite() || self.rate < 0.0 {
            return Err(usage(format!(
                "--rate must be 0 (unlimited) or positive, got {}",
                self.rate
            )));
        }
        Ok(produce::Config {
            kafka,
            metrics_addr: self.metrics.metrics_addr,
            topic: self.topic,
            kind: self.kind,
            rate: self.rate,
            count: self.count,
            duration: self.duration,
            seed: self.seed,
            keys: self.keys,
            tombstones: self.tombstones,
            compression: self.compression.into(),
            partitioner: self.partitioner.into(),
            format: self.format,
            batch_bytes: self.batch_bytes,
        })
    }
}

/// `--tombstones 5%`: a percentage (the `%` optional) as a share, 0..=1.
fn parse_percent(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches('%').trim();
    match number.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p / 100.0),
        _ => Err(format!(
            "'{text}' is not a percentage from 0% to 100% (e.g. 5%)"
        )),
    }
}

/// `--kind`: clap's face of [`EventKind`] (the events module knows nothing of the command line).
impl ValueEnum for EventKind {
    fn value_variants<'a>() -> &'a [Self] {
        &EventKind::ALL
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()).help(self.shape()))
    }
}

/// `--from`, `--reset-offsets-ahead`: clap's face of [`StartFrom`].
impl ValueEnum for StartFrom {
    fn value_variants<'a>() -> &'a [Self] {
        &[StartFrom::Earliest, StartFrom::Latest]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}

/// Shared by `produce` and `consume`.
#[derive(Debug, Clone, Args)]
pub struct MetricsOpts {
    /// Serve Prometheus metrics on this address while running (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// `consume --assign`: the one way to read without the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AssignAll {
    /// Every partition of the topic, including partitions added while consuming.
    All,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub db: DbOpts,
    #[command(flatten)]
    pub metrics: MetricsOpts,
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: String,
    /// Consumer group to join. Every consumer started with the same group is one of its members,
    /// and the group shares the topic's partitions among them (Kafka's consumer-group protocol;
    /// librdkafka and Java consumers may join too). Members beyond the partition count idle,
    /// ready to take over. The group's offsets are kept in the database, mirrored to Kafka.
    #[arg(short, long, default_value = "streamlab")]
    pub group: String,
    /// Do not join the group: read every partition of the topic alone.
    /// The group's stored offsets still fence the writes: a second consumer of the same group
    /// and database stops instead of writing twice.
    #[arg(long, value_enum, value_name = "all", conflicts_with_all = ["partitions", "session_timeout", "rebalance_timeout", "join_group"])]
    pub assign: Option<AssignAll>,
    /// Do not join the group: read only these partitions, alone (repeatable, or comma
    /// separated: --partition 0,2). Offsets are still the group's, per partition.
    #[arg(
        long = "partition",
        value_name = "N[,N…]",
        value_delimiter = ',',
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(0..),
        conflicts_with_all = ["session_timeout", "rebalance_timeout", "join_group"]
    )]
    pub partitions: Vec<i32>,
    /// Deprecated: joining the group is what --group does now.
    #[arg(long, hide = true)]
    pub join_group: bool,
    /// As a group member: a member silent this long is dropped and its partitions move to the
    /// others. Apache Kafka accepts 6s..30m by default.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub session_timeout: Duration,
    /// As a group member: how long members get to finish their batch and rejoin once the
    /// group rebalances.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    pub rebalance_timeout: Duration,
    /// Which events the topic carries; anything else is dead-lettered.
    #[arg(short, long, value_enum, default_value = "sales")]
    pub kind: EventKind,
    /// Read the topic as a table: one row per record key in `sales_latest` / `sensor_latest`
    /// (primary key `key`, the record key as text), holding the newest value by log order; a
    /// record with no value (a tombstone) deletes its key's row, a record with no key is a dead
    /// letter. A record never replaces or deletes a row from a later offset, so replaying the
    /// topic (another --group, `offsets reset`) leaves the same table. Pairs with a compacted
    /// topic (`topic create --config cleanup.policy=compact`) and `produce --keys N`.
    #[arg(long)]
    pub upsert: bool,
    /// Where to start when the group has no stored offsets.
    #[arg(long, value_enum, default_value = "earliest")]
    pub from: StartFrom,
    /// When the offsets stored for this group are past the end of the log (the broker lost
    /// data, or the topic was re-created on a broker without topic ids), move them to the log's
    /// start (events already stored count as duplicates) or end, instead of stopping.
    #[arg(long, value_enum, value_name = "earliest|latest")]
    pub reset_offsets_ahead: Option<StartFrom>,
    /// A record batch that fails its checksum or cannot be decoded stops the run (exit 1, naming
    /// the offsets). With this flag it is stored in dead_letters, raw, and consume goes on.
    #[arg(long)]
    pub skip_corrupt_batches: bool,
    /// How often to re-read the topic's metadata, to pick up partitions added while consuming.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub metadata_refresh: Duration,
    /// Exit once the partitions read reach the end they had when they were given to this
    /// consumer: with --assign all / --partition, those. A group member reads what the group
    /// assigns it to that end, then stays in the group until the stored offsets show every
    /// partition at the end it had when the member started (so a partition whose member left
    /// is taken over, not orphaned), or until none of them moves for --timeout.
    #[arg(long)]
    pub stop_at_end: bool,
    /// Most events written in one database transaction.
    #[arg(long, default_value_t = consume::DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,
    /// Independent writers, each over its own share of the partitions (the i-th partition read
    /// goes to writer i mod N) with its own database connection, transactions and offset fence.
    /// More than one helps when the database has cores to spare. 1–8, or auto (the default): one
    /// per core, at least two, at most one per partition held; into SQLite, one (it writes one
    /// transaction at a time). With --throttle, one.
    #[arg(long, default_value = "auto", value_parser = parse_writers)]
    pub writers: ::std::option::Option<u32>,
    /// Print `Stored: <key> at <ts>` for every stored event.
    #[arg(long)]
    pub print_each: bool,
    /// `json` prints the summary (consumed, inserted, duplicates, dead letters, per-partition
    /// offsets and lag) as one JSON document.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Records larger than this many bytes are dead-lettered unparsed.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_event_bytes: usize,
    /// Write at most this many events per second: a deliberately slow sink, to practise
    /// backpressure (watch lag climb with `streamlab watch`, then drain without it).
    #[arg(long, value_name = "EVENTS_PER_SEC", value_parser = clap::value_parser!(u32).range(1..))]
    pub throttle: Option<u32>,
}

impl ConsumeArgs {
    fn settle(self, kafka: kafka::Config) -> Result<consume::Config, exit::Error> {
        use consume::Reading;
        if self.print_each && self.format == Format::Json {
            return Err(usage(
                "--print-each prints lines for people: it does not mix with --format json",
            ));
        }
        let target = self.db.target()?;
        if self.join_group {
            tracing::warn!(
                "--join-group is no longer needed: consume joins its --group unless told \
                 --assign all or --partition"
            );
        }
        let reading = match (self.assign, self.partitions) {
            (Some(AssignAll::All), _) => Reading::All,
            (None, only) if only.is_empty() => Reading::Member,
            (None, only) => Reading::Only(only),
        };
        Ok(consume::Config {
            kafka,
            target,
            metrics_addr: self.metrics.metrics_addr,
            topic: self.topic,
            group: self.group,
            reading,
            membership: kafka::group::Membership {
                session_timeout: self.session_timeout,
                rebalance_timeout: self.rebalance_timeout,
            },
            kind: self.kind,
            upsert: self.upsert,
            compacted: false,
            from: self.from,
            reset_offsets_ahead: self.reset_offsets_ahead,
            skip_corrupt_batches: self.skip_corrupt_batches,
            metadata_refresh: self.metadata_refresh,
            stop_at_end: self.stop_at_end,
            batch_size: self.batch_size as usize,
            writers: if self.throttle.is_some() {
                Some(1)
            } else {
                self.writers.map(|w| w as usize)
            },
            writer_cap: 8,
            print_each: self.print_each,
            json: self.format == Format::Json,
            max_event_bytes: self.max_event_bytes,
            throttle: self.throttle,
        })
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Keys: q, Esc or Ctrl-C quit, p pauses. Piped (not a terminal), one JSON snapshot per \
    interval is printed instead:\n  streamlab watch --topic sales --sink sqlite --count 1 | jq .total"
)]
pub struct WatchArgs {
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: String,
    /// Consumer group whose position is shown, and which of its members holds each partition.
    #[arg(short, long, default_value = "streamlab")]
    pub group: String,
    /// Also show what landed in this database (--sink and/or -D); the group's position is then
    /// read from it.
    #[command(flatten)]
    pub db: DbOpts,
    /// Which table to count (with --sink).
    #[arg(short, long, value_enum, default_value = "sales")]
    pub kind: EventKind,
    /// Time between refreshes.
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse)]
    pub interval: Duration,
    /// Stop after this many snapshots (default: until q or Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

impl WatchArgs {
    fn settle(self, kafka: kafka::Config) -> Result<watch::Config, exit::Error> {
        Ok(watch::Config {
            target: self.db.optional_target()?,
            kafka,
            topic: self.topic,
            group: self.group,
            kind: self.kind,
            interval: self.interval,
            count: self.count,
        })
    }
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbOpts,
}

impl MigrateArgs {
    fn settle(self, timeout: Duration) -> Result<migrate::Config, exit::Error> {
        Ok(migrate::Config {
            target: self.db.target()?,
            timeout,
        })
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub db: DbOpts,
    /// Which kind's table to check (sales_events / sensor_logs). Default: the one that holds
    /// rows (sales when both or neither do; the other one is then named, with how to ask for it).
    #[arg(short, long, value_enum)]
    pub kind: Option<EventKind>,
    /// Check the table `consume --upsert` keeps (sales_latest / sensor_latest): one row per
    /// key, `key` its primary key.
    #[arg(long)]
    pub upsert: bool,
    /// With --upsert and --topic: read the topic up to the group's stored offsets and compare
    /// each key's newest record (a tombstone: no row) with the table's row; a difference is
    /// unhealthy (exit 1), naming up to 10 keys.
    #[arg(long, requires_all = ["upsert", "topic"])]
    pub verify_log: bool,
    /// Also compare the sink's offsets with the broker's latest offsets for this topic.
    #[arg(short, long, value_parser = crate::kafka::names::parse_topic_name)]
    pub topic: Option<String>,
    /// Consumer group whose stored offsets are compared (with --topic, its live members and the
    /// partitions each holds are listed too).
    #[arg(short, long, default_value = "streamlab")]
    pub group: String,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Fail (exit 1) when total lag exceeds this many events.
    #[arg(long, requires = "topic")]
    pub max_lag: Option<i64>,
}

impl CheckArgs {
    fn settle(self, kafka: kafka::Config) -> Result<check::Config, exit::Error> {
        Ok(check::Config {
            target: self.db.target()?,
            kafka,
            kind: self.kind,
            upsert: self.upsert,
            verify_log: self.verify_log,
            topic: self.topic,
            group: self.group,
            format: self.format,
            max_lag: self.max_lag,
        })
    }
}

#[derive(Args)]
pub struct BenchArgs {
    /// Events per measurement.
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// Partitions of the bench topics (four, so that four writers each have one).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// PostgreSQL server (its maintenance database); bench databases are created and dropped.
    #[arg(
        long,
        env = "STREAMLAB_TEST_PG",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub pg_url: String,
    /// Also measure produce and fetch on this broker (`just bench` passes the durable local
    /// broker here and runs everything else on an in-memory one).
    #[arg(long, value_name = "HOST:PORT")]
    pub durable_broker: Option<String>,
    /// How long to measure end-to-end latency at 10,000 events/s (0 skips it).
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    pub latency: Duration,
    /// Run one hot path (consume-sales, consume-sensor, produce-sales, produce-sensor) over
    /// --events events without broker or database, for `scripts/cost` to count under callgrind.
    #[arg(long, hide = true, value_name = "PATH")]
    pub cost: Option<String>,
}

impl BenchArgs {
    fn settle(self, kafka: kafka::Config) -> bench::Config {
        bench::Config {
            kafka,
            events: self.events,
            repeats: self.repeats,
            partitions: self.partitions,
            pg_url: self.pg_url,
            durable_broker: self.durable_broker,
            latency: self.latency,
            cost: self.cost,
        }
    }
}

// The options that may carry a secret are shown redacted by `Debug` (a `Cli` in a log or a
// panic message): database URLs through `db::redact`, every -X setting as its key only.

impl std::fmt::Debug for KafkaOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let property: Vec<String> = self.property.iter().map(|p| redact_setting(p)).collect();
        f.debug_struct("KafkaOpts")
            .field("bootstrap_server", &self.bootstrap_server)
            .field("timeout", &self.timeout)
            .field("command_config", &self.command_config)
            .field("property", &property)
            .finish()
    }
}

impl std::fmt::Debug for DbOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbOpts")
            .field("sink", &self.sink)
            .field(
                "database_url",
                &self.database_url.as_deref().map(db::redact),
            )
            .finish()
    }
}

impl std::fmt::Debug for BenchArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchArgs")
            .field("events", &self.events)
            .field("repeats", &self.repeats)
            .field("partitions", &self.partitions)
            .field("pg_url", &db::redact(&self.pg_url))
            .field("durable_broker", &self.durable_broker)
            .field("latency", &self.latency)
            .finish()
    }
}

/// A -X setting without its value (`sasl.password=***`): any value may be a secret.
fn redact_setting(setting: &str) -> String {
    match setting.split_once('=') {
        Some((key, _)) => format!("{key}=***"),
        None => "***".to_string(),
    }
}

/// An RFC 3339 date and time: `2026-11-22T10:00:00Z`, `2026-11-22T11:00:00.5+01:00`.
fn parse_datetime(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339).map_err(
        |e| format!("'{s}' is not an RFC 3339 date and time ({e}); e.g. 2026-11-22T10:00:00Z"),
    )
}

/// A moment: RFC 3339, or a duration meaning that long ago (`1h`, `7d`).
fn parse_when(s: &str) -> Result<time::OffsetDateTime, String> {
    if let Ok(at) = parse_datetime(s) {
        return Ok(at);
    }
    let ago = humantime::parse_duration(s.trim()).map_err(|_| {
        format!("'{s}' is neither an RFC 3339 date and time (2026-11-22T10:00:00Z) nor a duration ago (1h, 7d)")
    })?;
    time::OffsetDateTime::now_utc()
        .checked_sub(time::Duration::try_from(ago).map_err(|e| e.to_string())?)
        .ok_or_else(|| format!("'{s}' reaches before any date streamlab can write"))
}

fn parse_config_key(s: &str) -> Result<String, String> {
    let key = s.trim();
    if key.is_empty() || key.contains('=') {
        return Err(format!(
            "expected a config name such as retention.ms, got '{s}'"
        ));
    }
    Ok(key.to_string())
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

/// `--writers`: `auto` (None) or 1–8.
fn parse_writers(s: &str) -> Result<Option<u32>, String> {
    match s {
        "auto" => Ok(None),
        _ => match s.parse::<u32>() {
            Ok(n @ 1..=8) => Ok(Some(n)),
            _ => Err(format!(
                "'{s}' is not auto nor a number of writers from 1 to 8"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    /// A `Cli` in a log or panic message shows no password: not the database URL's, not a -X
    /// setting's, not bench's --pg-url's.
    #[test]
    fn debug_never_shows_a_password() {
        for args in [
            &[
                "streamlab",
                "-X",
                "sasl.password=s3cret-x",
                "check",
                "-D",
                "postgres://app:s3cret-d@db/streamlab",
            ][..],
            &[
                "streamlab",
                "-X",
                "sasl.password=s3cret-x",
                "bench",
                "--pg-url",
                "postgres://app:s3cret-pg@db/postgres",
            ][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let shown = format!("{cli:?} {cli:#?}");
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("sasl.password=***"), "{shown}");
        }
    }

    /// `--help` prints `[env: NAME=value]` unless told not to, and DATABASE_URL holds passwords.
    #[test]
    fn help_never_shows_the_value_of_an_environment_variable() {
        fn visit(cmd: &clap::Command, path: &str, checked: &mut usize) {
            for arg in cmd.get_arguments() {
                if arg.get_env().is_some() {
                    *checked += 1;
                    assert!(
                        arg.is_hide_env_values_set(),
                        "{path} --{}: add hide_env_values = true",
                        arg.get_id()
                    );
                }
            }
            for sub in cmd.get_subcommands() {
                visit(sub, &format!("{path} {}", sub.get_name()), checked);
            }
        }
        let mut checked = 0;
        visit(&Cli::command(), "streamlab", &mut checked);
        assert!(
            checked >= 4,
            "found only {checked} arguments read from the environment"
        );
    }
}

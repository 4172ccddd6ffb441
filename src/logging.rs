//! `tracing` set-up: `-v` raises streamlab's own level, `RUST_LOG` overrides everything.
//! Logs go to stderr so stdout stays clean for tables and JSON.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// sqlx warns about a PostgreSQL URL parameter it does not know *with its value* — an
/// `sslpassword=` (which it does not read) or a `Password=` would be printed. Off whatever
/// `RUST_LOG` says; `db::pg` names such parameters itself, without their values.
const SQLX_URL_PARAMETERS: &str = "sqlx_postgres::options::parse=off";

/// `quiet` (`-q`) keeps warnings and errors only.
pub fn init(verbosity: u8, quiet: bool) {
    let default = match verbosity {
        _ if quiet => "streamlab=warn,rskafka=error,sqlx=error",
        0 => "streamlab=info,rskafka=error,sqlx=warn",
        1 => "streamlab=debug,rskafka=warn,sqlx=warn",
        _ => "streamlab=trace,rskafka=debug,sqlx=info",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default))
        .add_directive(
            SQLX_URL_PARAMETERS
                .parse()
                .expect("a valid filter directive"),
        );
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(crate::render::stderr_colour())
        .with_target(false);
    let moves = LeaderMoves::default()
        .with_filter(Targets::new().with_target("rskafka::client::partition", Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(text.with_filter(filter))
        .with(moves)
        .try_init();
}

/// rskafka's producer follows a partition whose leader moved by itself — it drops the cached
/// leader, asks for metadata again and retries — and says so only in its own INFO log. This
/// turns that into streamlab's WARN line, once per partition and move (not once per retry),
/// worded as the reader's (`kafka::fetch`) and the coordinator's moves are.
#[derive(Default)]
struct LeaderMoves {
    said: Mutex<HashMap<String, Instant>>,
}

/// Retries of one move come within this; a later invalidation is another move.
const ONE_MOVE: Duration = Duration::from_secs(10);

impl<S: Subscriber> Layer<S> for LeaderMoves {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message != "Invaliding cached leader" {
            return;
        }
        let partition = format!("{}/{}", fields.topic, fields.partition);
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if said.get(&partition).is_some_and(|t| t.elapsed() < ONE_MOVE) {
            return;
        }
        said.insert(partition.clone(), Instant::now());
        let reason = fields.reason.trim_start_matches("partition client: ");
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        eprintln!("{now}  WARN the leader of {partition} moved or its broker is gone ({reason}); following it");
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    topic: String,
    partition: String,
    reason: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.record_str(field, text.trim_matches('"'));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let slot = match field.name() {
            "message" => &mut self.message,
            "topic" => &mut self.topic,
            "partition" => &mut self.partition,
            "reason" => &mut self.reason,
            _ => return,
        };
        *slot = value.to_string();
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_str(field, &value.to_string());
    }
}

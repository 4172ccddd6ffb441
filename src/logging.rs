//! `tracing` set-up: `-v` raises streamlab's own level, `RUST_LOG` overrides everything.
//! Logs go to stderr so stdout stays clean for tables and JSON.

use tracing_subscriber::EnvFilter;

pub fn init(verbosity: u8) {
    let default = match verbosity {
        0 => "streamlab=info,rskafka=error,sqlx=warn",
        1 => "streamlab=debug,rskafka=warn,sqlx=warn",
        _ => "streamlab=trace,rskafka=debug,sqlx=info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

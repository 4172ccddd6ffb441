//! `tracing` set-up: `-v` raises streamlab's own level, `RUST_LOG` overrides everything.
//! Logs go to stderr so stdout stays clean for tables and JSON.

use tracing_subscriber::EnvFilter;

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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(crate::render::stderr_colour())
        .with_target(false)
        .try_init();
}

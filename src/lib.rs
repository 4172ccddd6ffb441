//! streamlab: a laptop-sized Kafka → database pipeline.
//!
//! `main.rs` only parses and reports. The rooms: `cli` (clap, and nothing else sees it: each
//! command's arguments settled into a `cmd::Job`), `cmd` (one module per subcommand: its settled
//! configuration → work → output),
//! `kafka` (the broker), `db` (the databases), `tls` (a refused certificate in words), `events` (what flows), `render` (what the user
//! sees); `exit` maps outcomes to exit codes. The tests drive the same library the binary runs.

pub mod cli;
pub mod cmd;
pub mod db;
pub mod duration;
pub mod events;
pub mod exit;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod progress;
pub mod render;
pub mod shutdown;
pub mod tls;

pub use cmd::run;

//! The integration tests: one binary, one module per command or area, every one against the
//! real broker and databases (`just test` sets them up: scripts/test). Run one module with
//! `just test -- consume::`, one test with `just test -- consume::print_each`.
//!
//! Every streamlab command line goes through [`support::streamlab`], a builder that reads like
//! the command line; numbers and sets come from `--format json`.

mod support;

mod check;
mod cluster;
mod consume;
mod conventions;
mod db_edges;
mod dlq;
mod duplicates;
mod durable;
mod edges;
mod group;
mod metrics;
mod offsets;
mod produce;
mod reliability;
mod secure;
mod sink;
mod topic;
mod upsert;
mod watch;

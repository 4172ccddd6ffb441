//! The `streamlab` binary: parse the command line, run it, map the outcome to an exit code.
//! Everything else lives in the library so the tests can call it.

use std::process::ExitCode;

use clap::Parser;
use streamlab::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    streamlab::logging::init(cli.verbose, cli.quiet);
    streamlab::render::set_quiet(cli.quiet);
    let job = match cli.into_job() {
        Ok(job) => job,
        Err(err) => return streamlab::exit::report(&err),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(streamlab::run(job)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => streamlab::exit::report(&err),
    }
}

//! Exit codes and how failures are reported: one line on stderr, no backtrace.
//!
//! 0 success · 1 runtime failure (or an unhealthy `check`) · 2 usage error (also used by clap).

use std::process::ExitCode;

/// A failure caused by what the user asked for rather than by the world: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `check` found the pipeline unhealthy: the report is already printed, exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unhealthy(pub String);

/// Build a usage error (exit 2) with a message.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// Print the error chain on one line and choose the exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        // `streamlab topic list | head -1` is not an error.
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {err:#}");
    if err.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

//! Exit codes and how failures are reported: one line on stderr, no backtrace.
//!
//! 0 success · 1 runtime failure, or an unhealthy `check` · 2 usage error (as clap uses), or a
//! database `check` cannot reach.

use std::process::ExitCode;

/// An error that carries its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitError {
    pub code: u8,
    pub message: String,
}

/// A failure caused by what the user asked for rather than by the world: exit code 2.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    ExitError {
        code: 2,
        message: message.into(),
    }
    .into()
}

/// Print the error chain on one line and choose the exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        // `streamlab topic list | head -1` is not an error.
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {err:#}");
    let code = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<ExitError>())
        .map_or(1, |e| e.code);
    ExitCode::from(code)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

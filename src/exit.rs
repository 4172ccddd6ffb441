//! Exit codes and how failures are reported: one line on stderr, no backtrace.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (a closed pipe, as in `streamlab topic list \| head -1`, included) |
//! | 1 | runtime failure: a broker or database unreachable or refusing, bad data that stops a run, an unhealthy `check` |
//! | 2 | usage: a flag, value or URL that cannot work, found before anything connects (as clap) |

use std::process::ExitCode;

/// How a run ends when it does not succeed. Every error that reaches `main` is one of these,
/// and each kind knows its exit code: nothing below the commands picks one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the user asked for cannot work; found before anything connects. Exit 2, as clap.
    #[error("{0}")]
    Usage(String),
    /// `check` ran and found the pipeline unhealthy (the names of the failed checks). Exit 1.
    #[error("pipeline unhealthy: failed {}", .0.join(", "))]
    Unhealthy(Vec<String>),
    /// The world failed: a broker or database unreachable or refusing, bad data. Exit 1.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl Error {
    pub fn code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Unhealthy(_) | Error::Failed(_) => 1,
        }
    }
}

/// A usage error (exit 2).
pub fn usage(message: impl Into<String>) -> Error {
    Error::Usage(message.into())
}

/// Print the error on one line and choose the exit code.
pub fn report(err: &Error) -> ExitCode {
    match err {
        // `streamlab topic list | head -1` is not an error.
        Error::Failed(e) if is_broken_pipe(e) => return ExitCode::SUCCESS,
        Error::Failed(e) => eprintln!("error: {}", one_line(e)),
        other => eprintln!("error: {other}"),
    }
    ExitCode::from(err.code())
}

/// The error chain on one line, each cause named once: many errors (sqlx's, say) repeat their
/// source in their own text, which `{:#}` would print again.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("error returned from database: (code: 14) unable to open database file")]
    struct Wrapper(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("(code: 14) unable to open database file")]
    struct Inner;

    #[test]
    fn each_cause_is_named_once() {
        let err = anyhow::Error::new(Wrapper(Inner)).context("cannot open SQLite database x.db");
        assert_eq!(
            one_line(&err),
            "cannot open SQLite database x.db: error returned from database: \
             (code: 14) unable to open database file"
        );
    }
}

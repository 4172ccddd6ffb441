//! Exit codes and how failures are reported: one line on stderr, no backtrace.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (a closed pipe, as in `streamlab topic list \| head -1`, included) |
//! | 1 | runtime failure: a broker or database unreachable or refusing, bad data that stops a run, an unhealthy `check` |
//! | 2 | usage: a flag, value or URL that cannot work, found before anything connects (as clap) |

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
    eprintln!("error: {}", one_line(err));
    let code = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<ExitError>())
        .map_or(1, |e| e.code);
    ExitCode::from(code)
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

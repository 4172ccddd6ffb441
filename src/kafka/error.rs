//! The one error type of `kafka/`: what a caller may need to tell apart, as variants to match.
//!
//! Most of `kafka/` still returns `anyhow::Result`, with context added on the way up; an error
//! a caller branches on is a [`enum@Error`] at the bottom of that chain, and [`Error::of`] is the
//! one place that looks for it. No other error of `kafka/` is looked for by type. Foreign errors
//! (an `io::Error` of a broken connection, a `rustls::Error` of a refused certificate) are read
//! where they are explained, by their own types.
//!
//! There is no `Other(anyhow::Error)` variant: an `anyhow::Error` put inside one would hide its
//! top error from `anyhow`'s chain (where [`super::retry::Retry::of`] reads an `io::Error`), so
//! everything else stays an `anyhow::Error` as it is.

use super::bounds::Malformed;
use super::retry::BrokerError;
use super::wire::ConnectionError;

/// What went wrong talking to Kafka, where a caller may act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The topic asked about does not exist (told apart from a broker that did not answer).
    #[error("topic '{0}' does not exist; create it with `streamlab topic create --topic {0}`")]
    UnknownTopic(String),
    /// A connection refused for its security settings (TLS, SASL, or a TLS/plaintext
    /// mismatch): the same at every broker, and retrying cannot help.
    #[error("{0}")]
    Refused(String),
    /// A broker answered a request (or a topic, partition or group in it) with an error code.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A connection that could not be made, was left half way, or went unanswered.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// Bytes from another client that cannot be what they claim.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// A consumer group's answer that no retry can fix (joining stops at once).
    #[error("{0}")]
    Fatal(String),
}

impl Error {
    /// The [`enum@Error`] `err` was made from, under whatever context was added since.
    pub fn of(err: &anyhow::Error) -> Option<&Error> {
        err.chain().find_map(|c| c.downcast_ref::<Error>())
    }

    /// `message` as a [`Error::Refused`], ready to return.
    pub fn refused(message: impl Into<String>) -> anyhow::Error {
        Error::Refused(message.into()).into()
    }

    /// Whether `err` is (or was caused by) a security refusal.
    pub fn is_refused(err: &anyhow::Error) -> bool {
        matches!(Self::of(err), Some(Error::Refused(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_variant_is_found_under_context_and_says_the_same_words() {
        let err: anyhow::Result<()> = Err(Error::UnknownTopic("t".into()).into());
        let err = err.context("describing t").unwrap_err();
        assert!(matches!(Error::of(&err), Some(Error::UnknownTopic(t)) if t == "t"));
        assert_eq!(
            format!("{err:#}"),
            "describing t: topic 't' does not exist; create it with `streamlab topic create --topic t`"
        );
        assert!(!Error::is_refused(&err));
        assert!(Error::is_refused(
            &Error::refused("no").context("connecting")
        ));
        assert!(Error::of(&anyhow::anyhow!("plain")).is_none());
    }
}

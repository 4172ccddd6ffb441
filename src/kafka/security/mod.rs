//! How streamlab secures its Kafka connections: `security.protocol`, SASL and TLS, set the way
//! Kafka users already do it — a Java/librdkafka-style properties file (`--command-config`) and
//! `-X key=value` (as kcat) — and used by both connection paths: rskafka's data path
//! ([`super::connect`]) and the kafka-protocol connection ([`super::wire`]).
//!
//! Three rooms: `properties` reads `key = value` text (pure), `settings` says what the keys
//! mean (pure, but for the certificate files), `tls` is the rustls side — roots, client
//! identity, the verifier of a broker's certificate, the wording of a refused handshake. A
//! connection refused for these settings is a [`super::Error::Refused`]. The password is kept in
//! a [`Secret`], which no `Debug` or `Display` shows.

mod properties;
mod settings;
mod tls;

pub use properties::{Properties, Secret};
pub use settings::{Mechanism, Protocol, Sasl, Security, Tls, PASSWORD_ENV, USERNAME_ENV};
pub use tls::explain_tls_error;

/// A setting, file or value that cannot be used: one line that names the key or file, never a
/// secret (a usage error on the command line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadSetting(String);

/// The line itself, for the command line's usage errors (which take text).
impl From<BadSetting> for String {
    fn from(err: BadSetting) -> Self {
        err.0
    }
}

//! Which database a command works on, settled once — from a kind, a URL, or both — before
//! anything connects; and how its URL is shown (never with its password).
//!
//! The command line names the database (`--sink`, `-D`) and hands what it was given to
//! [`Target::settle`]; what cannot work comes back as a [`TargetError`] for it to word.

use std::str::FromStr;

/// The two databases streamlab writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Sqlite,
}

impl Kind {
    /// The short name: `pg`, `sqlite`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Postgres => "pg",
            Kind::Sqlite => "sqlite",
        }
    }

    /// The product, for messages: `PostgreSQL`, `SQLite`.
    pub fn product(self) -> &'static str {
        match self {
            Kind::Postgres => "PostgreSQL",
            Kind::Sqlite => "SQLite",
        }
    }

    /// Where the database is when no URL says (the PostgreSQL one is docker-compose.yaml's).
    pub fn default_url(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres://postgres:postgres@localhost:5432/streamlab",
            Kind::Sqlite => "sqlite://warehouse.db",
        }
    }

    /// The kind a URL's scheme names, if it names one.
    fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("postgres" | "postgresql") => Some(Kind::Postgres),
            Some("sqlite") => Some(Kind::Sqlite),
            _ => None,
        }
    }
}

/// A database: its kind and URL, settled ([`Target::settle`]). `Debug` shows the URL redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub url: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("kind", &self.kind)
            .field("url", &redact(&self.url))
            .finish()
    }
}

/// Why a kind and a URL name no database streamlab can use. The URLs in it are redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Neither a kind nor a URL.
    #[error("no database named: give its kind or a postgres://… or sqlite://… URL")]
    Unnamed,
    /// A URL of something else.
    #[error("{shown} is not a database streamlab writes to: use postgres://… or sqlite://…")]
    Unsupported { shown: String },
    /// The URL's scheme is right, but the driver cannot read the rest (a bad port, say).
    #[error("invalid database URL {shown}: {reason}")]
    Unreadable { shown: String, reason: String },
    /// The kind asked for is not the one the URL names.
    #[error("a {} database was asked for, but {shown} is not one", .asked.name())]
    Mismatch { asked: Kind, shown: String },
}

impl Target {
    /// Settle which database is meant: the kind and the URL's scheme must agree, either one
    /// alone is enough (the kind alone means its [`Kind::default_url`]), and a URL of another
    /// database, or one its driver cannot read, is refused before anything connects.
    pub fn settle(kind: Option<Kind>, url: Option<&str>) -> Result<Self, TargetError> {
        let Some(url) = url else {
            let kind = kind.ok_or(TargetError::Unnamed)?;
            return Ok(Self {
                kind,
                url: kind.default_url().into(),
            });
        };
        let shown = || redact(url);
        let from_url =
            Kind::of_url(url).ok_or_else(|| TargetError::Unsupported { shown: shown() })?;
        let readable = match from_url {
            Kind::Postgres => sqlx::postgres::PgConnectOptions::from_str(url).map(drop),
            Kind::Sqlite => sqlx::sqlite::SqliteConnectOptions::from_str(url).map(drop),
        };
        if let Err(e) = readable {
            return Err(TargetError::Unreadable {
                shown: shown(),
                reason: e.to_string(),
            });
        }
        match kind {
            Some(asked) if asked != from_url => Err(TargetError::Mismatch {
                asked,
                shown: shown(),
            }),
            _ => Ok(Self {
                kind: from_url,
                url: url.into(),
            }),
        }
    }

    /// "PostgreSQL at postgres://app:***@db/streamlab": the database as messages name it.
    pub fn describe(&self) -> String {
        format!("{} at {}", self.kind.product(), redact(&self.url))
    }
}

/// A database URL safe to print: the password after `user:`, query parameters that carry one
/// (`password`, `sslpassword`, any case) and any `#fragment` shown as `***`. A URL that does not
/// parse is not shown at all (where its password would be cannot be known).
pub fn redact(url: &str) -> String {
    let parsed = url::Url::parse(url)
        // `scheme:anything` parses as an opaque path; only SQLite's short forms are database
        // URLs (and they carry a file path, nothing secret).
        .ok()
        .filter(|u| !u.cannot_be_a_base() || u.scheme() == "sqlite");
    let Some(mut parsed) = parsed else {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme).filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        return match scheme {
            Some(scheme) => format!("<unparsable {scheme} URL>"),
            None => "<unparsable database URL>".to_string(),
        };
    };
    let mut changed = false;
    if parsed.password().is_some() {
        changed |= parsed.set_password(Some("***")).is_ok();
    }
    if let Some(query) = parsed.query() {
        if let Some(masked) = redact_query(query) {
            parsed.set_query(Some(&masked));
            changed = true;
        }
    }
    // A fragment means nothing to a database; it can only be a password that was not
    // percent-encoded ('#' in it) spilling over.
    if parsed.fragment().is_some() {
        parsed.set_fragment(Some("***"));
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        url.to_string()
    }
}

/// The query with the value of every password-carrying parameter replaced by `***`, other
/// parameters byte for byte; `None` when there is none.
fn redact_query(query: &str) -> Option<String> {
    let mut changed = false;
    let pieces: Vec<String> = query
        .split('&')
        .map(|piece| {
            // The key as sqlx reads it (percent-decoded, '+' as space).
            let key = url::form_urlencoded::parse(piece.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if is_secret_parameter(&key) {
                changed = true;
                let raw_key = piece.split_once('=').map_or(piece, |(k, _)| k);
                format!("{raw_key}=***")
            } else {
                piece.to_string()
            }
        })
        .collect();
    changed.then(|| pieces.join("&"))
}

/// `password`, `sslpassword` (libpq's key file passphrase) and any other key naming a password.
fn is_secret_parameter(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key.contains("password") || key.contains("passwd") || key == "pwd"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_and_the_url_settle_the_target() {
        use Kind::{Postgres, Sqlite};
        let sqlite = Target::settle(Some(Sqlite), None).unwrap();
        assert_eq!(
            sqlite.url, "sqlite://warehouse.db",
            "the kind alone: its default"
        );
        let pg = Target::settle(None, Some("postgresql://app@db/x")).unwrap();
        assert_eq!(pg.kind, Postgres, "the URL alone names the kind");
        assert!(Target::settle(Some(Sqlite), Some("sqlite:w.db")).is_ok());
        assert_eq!(Target::settle(None, None), Err(TargetError::Unnamed));
        assert!(matches!(
            Target::settle(Some(Postgres), Some("sqlite://w.db")),
            Err(TargetError::Mismatch {
                asked: Postgres,
                ..
            })
        ));
        let other = Target::settle(None, Some("mysql://app:s3cret@db/x"));
        assert!(
            matches!(&other, Err(TargetError::Unsupported { shown }) if !shown.contains("s3cret")),
            "{other:?}"
        );
        assert!(matches!(
            Target::settle(None, Some("postgres://app:s3cret@db:notaport/x")),
            Err(TargetError::Unreadable { shown, .. }) if !shown.contains("s3cret")
        ));
    }

    #[test]
    fn debug_of_a_target_hides_its_password() {
        let target = Target::settle(None, Some("postgres://app:s3cret@db/streamlab")).unwrap();
        let shown = format!("{target:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://app:***@db/streamlab"), "{shown}");
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        let shown = redact("postgres://app:s3cret@db.example:5432/streamlab");
        assert_eq!(shown, "postgres://app:***@db.example:5432/streamlab");
        assert_eq!(redact("sqlite://warehouse.db"), "sqlite://warehouse.db");
        assert_eq!(
            redact("postgres://app@db/streamlab?sslmode=disable&application_name=x"),
            "postgres://app@db/streamlab?sslmode=disable&application_name=x",
            "nothing to hide: shown as given"
        );
        assert!(!redact("postgres://a:b c@").contains("b c"));
    }

    #[test]
    fn password_parameters_are_masked_in_any_case_and_position() {
        for (url, shown) in [
            (
                "postgres://app@db/s?password=s3cret",
                "postgres://app@db/s?password=***",
            ),
            (
                "postgres://app@db/s?sslmode=require&password=s3cret&application_name=x",
                "postgres://app@db/s?sslmode=require&password=***&application_name=x",
            ),
            (
                "postgres://app@db/s?PassWord=s3cret&SSLPASSWORD=s3cret",
                "postgres://app@db/s?PassWord=***&SSLPASSWORD=***",
            ),
            (
                "postgres://app:s3cret@db/s?sslpassword=s3cret",
                "postgres://app:***@db/s?sslpassword=***",
            ),
            // Percent-encoded key, as sqlx decodes it.
            (
                "postgres://app@db/s?pass%77ord=s3cret",
                "postgres://app@db/s?pass%77ord=***",
            ),
            // A value that is itself encoded, or empty.
            (
                "postgres://app@db/s?password=s3%63ret+x&password=",
                "postgres://app@db/s?password=***&password=***",
            ),
            (
                "sqlite://w.db?password=s3cret",
                "sqlite://w.db?password=***",
            ),
            // Unencoded '@' and '#' in the password: the URL reads "p" as the password, "ss"
            // as the host and the rest as a fragment; neither is shown.
            ("postgres://app:p@ss#cret@db/s", "postgres://app:***@ss#***"),
        ] {
            let got = redact(url);
            assert!(!got.contains("cret"), "{url} → {got}");
            assert_eq!(got, shown, "{url}");
        }
    }

    #[test]
    fn an_unparsable_url_is_not_echoed() {
        for url in [
            "postgres://app:s3cret@db:notaport/s",
            "postgres://app:s3/cret@db/s",
            "postgres://app:s3cret@[::1/s",
        ] {
            let got = redact(url);
            assert!(!got.contains("cret"), "{url} → {got}");
            assert_eq!(got, "<unparsable postgres URL>");
        }
        assert_eq!(redact("s3cret"), "<unparsable database URL>");
        assert_eq!(redact(":s3cret"), "<unparsable database URL>");
        // Parses (scheme "user", an opaque path), but is no database URL: its path is not shown.
        assert_eq!(redact("user:s3cret@host"), "<unparsable user URL>");
        // SQLite's short forms are paths, shown as given.
        assert_eq!(redact("sqlite:warehouse.db"), "sqlite:warehouse.db");
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }
}

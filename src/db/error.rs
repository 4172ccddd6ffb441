//! What a database error means for a batch: try again ([`Verdict::Transient`]), set the rows
//! aside as dead letters ([`Verdict::Refused`]), or stop — each dialect judged by its own codes.

use std::time::Duration;

use super::{Batch, OffsetAdvance};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Someone else moved the stored offset: another consumer on the same group and sink.
    #[error(
        "the stored offset of {topic}/{partition} for group '{group}' is no longer {expected}: \
         another consumer is writing this group into the same database; stopping without writing \
         (--assign all and --partition read alone; without them, the members of a --group share \
         its partitions)"
    )]
    Fenced {
        group: String,
        topic: String,
        partition: i32,
        expected: String,
    },
    /// A statement got no answer within its deadline: the connection is frozen, or the server.
    #[error("{database} did not answer within {}", humantime::format_duration(*.after))]
    TimedOut { database: String, after: Duration },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl SinkError {
    /// Worth retrying: the connection or the server went away, a lock was busy, or no answer
    /// came in time (on a new connection the next attempt may get one).
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Database(e) => is_transient(e),
            SinkError::TimedOut { .. } => true,
            SinkError::Fenced { .. } => false,
        }
    }

    pub fn is_fenced(&self) -> bool {
        matches!(self, SinkError::Fenced { .. })
    }

    pub fn is_timed_out(&self) -> bool {
        matches!(self, SinkError::TimedOut { .. })
    }

    /// The database's reason, when it refused the data itself (a data exception, a constraint):
    /// the rows at fault belong in the dead letters, not in an error that stops the stream.
    pub fn refusal(&self) -> Option<String> {
        let SinkError::Database(sqlx::Error::Database(db)) = self else {
            return None;
        };
        (verdict(db.as_ref()) == Verdict::Refused).then(|| match db.code() {
            Some(code)
                if db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some() =>
            {
                format!("{} (SQLSTATE {code})", db.message())
            }
            Some(code) => format!("{} (SQLite code {code})", db.message()),
            None => db.message().to_string(),
        })
    }

    pub(crate) fn fenced(batch: &Batch, advance: &OffsetAdvance) -> Self {
        SinkError::Fenced {
            group: batch.group.clone(),
            topic: batch.topic.clone(),
            partition: advance.partition,
            expected: advance
                .from
                .map_or_else(|| "absent".to_string(), |f| f.to_string()),
        }
    }
}

/// The settings that mend a refused PostgreSQL server certificate.
const PG_TLS: crate::tls::TlsSettings = crate::tls::TlsSettings {
    ca: "sslrootcert",
    any_host: "use sslmode=verify-ca",
    ca_as_server:
        "streamlab's PostgreSQL client (rustls) refuses one even where sslrootcert names \
                   it, unlike libpq: give the server a certificate its CA signed (CA:FALSE), as \
                   scripts/secure-certs makes",
};

/// A server certificate the TLS client refused, in one line that says what to do; None for
/// any other error.
pub fn tls_refusal(e: &sqlx::Error) -> Option<String> {
    let tls: &rustls::Error = match e {
        sqlx::Error::Io(io) => io.get_ref()?.downcast_ref()?,
        sqlx::Error::Tls(inner) => inner.downcast_ref()?,
        _ => return None,
    };
    let rustls::Error::InvalidCertificate(cause) = tls else {
        return None;
    };
    let (what, remedy) = crate::tls::certificate_refusal(cause, &PG_TLS);
    Some(format!("TLS: the server's certificate {what}: {remedy}"))
}

/// What to do about a database error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again: the connection or the server went away, a lock was busy, resources ran short.
    Transient,
    /// The database refused the data (a data exception, a constraint): the rows are at fault.
    Refused,
    /// Neither: stop and say so.
    Fatal,
}

/// Worth retrying: the connection or the server went away, or a lock was busy.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    classify(e) == Verdict::Transient
}

pub fn classify(e: &sqlx::Error) -> Verdict {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => Verdict::Transient,
        sqlx::Error::Database(db) => verdict(db.as_ref()),
        sqlx::Error::Migrate(m) => match m.as_ref() {
            sqlx::migrate::MigrateError::Execute(e) => classify(e),
            _ => Verdict::Fatal,
        },
        _ => Verdict::Fatal,
    }
}

/// Each dialect by its own codes: a Postgres SQLSTATE is five characters whose first two are
/// the class; a SQLite result code is a number whose low byte is the primary code.
fn verdict(db: &dyn sqlx::error::DatabaseError) -> Verdict {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        postgres_verdict(pg.code())
    } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        db.code()
            .and_then(|c| c.parse().ok())
            .map_or(Verdict::Fatal, sqlite_verdict)
    } else {
        Verdict::Fatal
    }
}

/// By SQLSTATE class (and a few codes of mixed classes).
pub fn postgres_verdict(sqlstate: &str) -> Verdict {
    match sqlstate.get(..2).unwrap_or_default() {
        // connection exception; transaction rollback (serialization failure, deadlock);
        // insufficient resources (too many connections, out of memory, disk full)
        "08" | "40" | "53" => Verdict::Transient,
        // data exception; integrity constraint violation (the id conflict never gets here:
        // the inserts skip it with ON CONFLICT (id) DO NOTHING)
        "22" | "23" => Verdict::Refused,
        _ => match sqlstate {
            // admin/crash shutdown, cannot connect now, idle session timeout; query canceled
            // (statement_timeout, pg_cancel_backend); lock_timeout; our session ended by
            // idle_in_transaction_session_timeout
            "57P01" | "57P02" | "57P03" | "57P05" | "57014" | "55P03" | "25P03" => {
                Verdict::Transient
            }
            _ => Verdict::Fatal,
        },
    }
}

/// By SQLite result code, extended or primary: the primary code is the low byte.
pub fn sqlite_verdict(code: i32) -> Verdict {
    const BUSY: i32 = 5;
    const LOCKED: i32 = 6;
    const PROTOCOL: i32 = 15;
    const TOOBIG: i32 = 18;
    const CONSTRAINT: i32 = 19;
    const MISMATCH: i32 = 20;
    match code & 0xff {
        BUSY | LOCKED | PROTOCOL => Verdict::Transient,
        // Every constraint (CHECK, NOT NULL, UNIQUE, FOREIGN KEY, a trigger's RAISE…); the id
        // conflict is skipped with ON CONFLICT (id) DO NOTHING and never gets here.
        CONSTRAINT | MISMATCH | TOOBIG => Verdict::Refused,
        _ => Verdict::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_errors_are_classified_by_sqlstate_class() {
        use Verdict::*;
        for (code, expected) in [
            ("08006", Transient), // connection failure
            ("08P01", Transient), // protocol violation
            ("40001", Transient), // serialization failure
            ("40P01", Transient), // deadlock
            ("53300", Transient), // too many connections
            ("57P01", Transient), // admin shutdown
            ("57014", Transient), // query canceled
            ("55P03", Transient), // lock not available
            ("22021", Refused),   // invalid byte sequence (a NUL in text)
            ("22003", Refused),   // numeric value out of range
            ("23514", Refused),   // check violation
            ("23502", Refused),   // not null violation
            ("23505", Refused),   // unique violation (not the id: that one is skipped)
            ("42501", Fatal),     // insufficient privilege
            ("42P01", Fatal),     // undefined table
            ("57P04", Fatal),     // database dropped
            ("XX000", Fatal),     // internal error
        ] {
            assert_eq!(postgres_verdict(code), expected, "SQLSTATE {code}");
        }
        // The low byte of a SQLSTATE read as a number means nothing: 22021 and 42501 both end
        // in 0x05, SQLITE_BUSY's code, and once passed for transient.
        assert_eq!(22021 & 0xff, 5);
        assert_eq!(42501 & 0xff, 5);
    }

    #[test]
    fn sqlite_errors_are_classified_by_result_code() {
        use Verdict::*;
        for (code, expected) in [
            (5, Transient),   // SQLITE_BUSY
            (261, Transient), // SQLITE_BUSY_RECOVERY
            (517, Transient), // SQLITE_BUSY_SNAPSHOT
            (6, Transient),   // SQLITE_LOCKED
            (262, Transient), // SQLITE_LOCKED_SHAREDCACHE
            (19, Refused),    // SQLITE_CONSTRAINT
            (275, Refused),   // SQLITE_CONSTRAINT_CHECK
            (1299, Refused),  // SQLITE_CONSTRAINT_NOTNULL
            (1811, Refused),  // SQLITE_CONSTRAINT_TRIGGER
            (2067, Refused),  // SQLITE_CONSTRAINT_UNIQUE
            (20, Refused),    // SQLITE_MISMATCH
            (18, Refused),    // SQLITE_TOOBIG
            (1, Fatal),       // SQLITE_ERROR (a missing table, a syntax error)
            (8, Fatal),       // SQLITE_READONLY
            (13, Fatal),      // SQLITE_FULL
            (266, Fatal),     // SQLITE_IOERR_READ
        ] {
            assert_eq!(sqlite_verdict(code), expected, "SQLite code {code}");
        }
    }

    /// Real errors from a real SQLite: the dialect is recognised and its reason kept.
    #[tokio::test]
    async fn a_constraint_sqlite_enforces_is_a_refusal_with_its_reason() {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER CHECK (n > 0))")
            .execute(&mut conn)
            .await
            .unwrap();
        let err = SinkError::from(
            sqlx::query("INSERT INTO t VALUES (-1)")
                .execute(&mut conn)
                .await
                .unwrap_err(),
        );
        assert!(!err.is_transient());
        let reason = err.refusal().expect("a CHECK violation is a refusal");
        assert!(reason.contains("CHECK constraint failed"), "{reason}");
        assert!(reason.contains("SQLite code 275"), "{reason}");
        let missing = SinkError::from(
            sqlx::query("INSERT INTO nowhere VALUES (1)")
                .execute(&mut conn)
                .await
                .unwrap_err(),
        );
        assert_eq!(missing.refusal(), None);
        assert!(!missing.is_transient());
    }
}

//! The bookkeeping tables and every statement on them, for both databases and both sides.
//!
//! `streamlab_offsets` holds where each group is in each partition, moved in the same
//! transaction as the rows (and fenced: [`advance`]); `streamlab_members` holds who holds which
//! partitions, for `check` and `watch` (brokers such as tansu do not report assignments). The
//! consumer writes them ([`super::Writer`]); `check` and `watch` read them ([`super::Reader`]).
//!
//! One text serves both dialects: `$n` placeholders (SQLite reads them too), the table named in
//! its schema on PostgreSQL, and each dialect's clock. [`Statement::query`] binds a statement
//! for whichever driver runs it: a typed pool or transaction, or the reader's `Any` pool.

use std::borrow::Cow;
use std::future::Future;

use sqlx::postgres::PgQueryResult;
use sqlx::query::Query;
use sqlx::sqlite::SqliteQueryResult;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use super::{client_identity, Batch, Kind, MemberRecord, OffsetAdvance};

const OFFSETS: &str = "streamlab_offsets";
const MEMBERS: &str = "streamlab_members";

/// A value bound to a statement: the column types of the bookkeeping tables.
pub(crate) enum Param<'a> {
    Int(i32),
    BigInt(i64),
    Text(Cow<'a, str>),
    /// NULL when absent.
    MaybeText(Option<&'a str>),
}

/// SQL and its parameters, in order, for either driver.
pub struct Statement<'a> {
    sql: String,
    params: Vec<Param<'a>>,
}

impl From<&str> for Statement<'_> {
    /// A statement without parameters.
    fn from(sql: &str) -> Self {
        Self {
            sql: sql.to_string(),
            params: Vec::new(),
        }
    }
}

impl<'a> Statement<'a> {
    /// The statement as a query of driver `DB`, its parameters bound.
    pub(crate) fn query<'q, DB: Database>(&'q self) -> Query<'q, DB, DB::Arguments<'q>>
    where
        'a: 'q,
        i32: Encode<'q, DB> + Type<DB>,
        i64: Encode<'q, DB> + Type<DB>,
        &'q str: Encode<'q, DB> + Type<DB>,
        Option<&'q str>: Encode<'q, DB> + Type<DB>,
    {
        let query = sqlx::query::<DB>(&self.sql);
        self.params.iter().fold(query, |query, param| match param {
            Param::Int(v) => query.bind(*v),
            Param::BigInt(v) => query.bind(*v),
            Param::Text(v) => query.bind(v.as_ref()),
            Param::MaybeText(v) => query.bind::<Option<&'q str>>(*v),
        })
    }
}

/// A sqlx driver the shared statements run on (PostgreSQL's, SQLite's): how is written once,
/// for any driver that can bind their parameters and read their rows.
pub trait Driver: Database {
    /// Run a statement; how many rows it changed.
    fn execute(
        conn: &mut Self::Connection,
        statement: &Statement<'_>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// The rows of [`stored`].
    fn fetch_stored(
        conn: &mut Self::Connection,
        statement: &Statement<'_>,
    ) -> impl Future<Output = Result<Vec<StoredOffset>, sqlx::Error>> + Send;
}

impl<DB> Driver for DB
where
    DB: Database,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i32: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'r> StoredOffset: FromRow<'r, DB::Row>,
{
    async fn execute(
        conn: &mut DB::Connection,
        statement: &Statement<'_>,
    ) -> Result<u64, sqlx::Error> {
        let done = statement.query::<DB>().execute(conn).await?;
        Ok(done.rows_affected())
    }

    async fn fetch_stored(
        conn: &mut DB::Connection,
        statement: &Statement<'_>,
    ) -> Result<Vec<StoredOffset>, sqlx::Error> {
        let rows = statement.query::<DB>().fetch_all(conn).await?;
        rows.iter().map(FromRow::from_row).collect()
    }
}

/// How many rows a statement changed: each driver's result says, but not through a trait.
pub trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for PgQueryResult {
    fn rows_affected(&self) -> u64 {
        PgQueryResult::rows_affected(self)
    }
}

impl RowsAffected for SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        SqliteQueryResult::rows_affected(self)
    }
}

/// A bookkeeping table as the dialect names it: in its schema on PostgreSQL (the migrations
/// create it in `public`, whatever the search path).
fn table(kind: Kind, name: &str) -> String {
    match kind {
        Kind::Postgres => format!("public.{name}"),
        Kind::Sqlite => name.to_string(),
    }
}

/// The time now, as the dialect stores it.
fn now(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "now()",
        Kind::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    }
}

/// A row of [`stored`]: a partition's next offset, and the topic id stored with it (None:
/// written before ids were kept, or by a broker that reports none).
pub type StoredOffset = (i32, i64, Option<String>);

/// The consumer's stored rows of `group` for `topic`: `(partition, next offset, topic id)`.
pub(crate) fn stored<'a>(kind: Kind, group: &'a str, topic: &'a str) -> Statement<'a> {
    Statement {
        sql: format!(
            "SELECT kafka_partition, next_offset, topic_id FROM {}
             WHERE consumer_group = $1 AND topic = $2",
            table(kind, OFFSETS)
        ),
        params: vec![Param::Text(group.into()), Param::Text(topic.into())],
    }
}

/// Move a partition's stored offset, fenced: a new row only if there is none (`from` None), else
/// only if it still holds `from`. The topic id is recorded when known. One row changed: moved.
pub(crate) fn advance<'a>(kind: Kind, batch: &'a Batch, advance: &OffsetAdvance) -> Statement<'a> {
    let offsets = table(kind, OFFSETS);
    let (sql, from) = match advance.from {
        None => (
            format!(
                "INSERT INTO {offsets}
                     (consumer_group, topic, kafka_partition, next_offset, topic_id)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
            ),
            None,
        ),
        Some(from) => (
            format!(
                "UPDATE {offsets}
                 SET next_offset = $4, updated_at = {}, topic_id = COALESCE($5, topic_id)
                 WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3
                   AND next_offset = $6",
                now(kind)
            ),
            Some(Param::BigInt(from)),
        ),
    };
    let params = [
        Param::Text(batch.group.as_str().into()),
        Param::Text(batch.topic.as_str().into()),
        Param::Int(advance.partition),
        Param::BigInt(advance.to),
        Param::MaybeText(batch.topic_id.as_deref()),
    ];
    Statement {
        sql,
        params: params.into_iter().chain(from).collect(),
    }
}

/// Move several partitions' stored offsets, each fenced as [`advance`] moves an existing row
/// (`moves` all have a `from`), in one statement: one round trip per batch, however many
/// partitions it holds. Returns the rows moved, as [`stored`] does (the statement's RETURNING).
pub(crate) fn advance_existing<'a>(
    kind: Kind,
    batch: &'a Batch,
    moves: &[&OffsetAdvance],
) -> Statement<'a> {
    let values: Vec<String> = (0..moves.len())
        .map(|i| {
            let n = 4 + 3 * i;
            format!(
                "(CAST(${n} AS INTEGER), CAST(${} AS BIGINT), CAST(${} AS BIGINT))",
                n + 1,
                n + 2
            )
        })
        .collect();
    // VALUES names its columns column1… in both dialects (SQLite takes no alias list).
    let sql = format!(
        "UPDATE {} AS o
         SET next_offset = a.column3, updated_at = {}, topic_id = COALESCE($3, o.topic_id)
         FROM (VALUES {}) AS a
         WHERE o.consumer_group = $1 AND o.topic = $2 AND o.kafka_partition = a.column1
           AND o.next_offset = a.column2
         RETURNING kafka_partition, next_offset, topic_id",
        table(kind, OFFSETS),
        now(kind),
        values.join(", ")
    );
    let mut params = vec![
        Param::Text(batch.group.as_str().into()),
        Param::Text(batch.topic.as_str().into()),
        Param::MaybeText(batch.topic_id.as_deref()),
    ];
    for m in moves {
        params.extend([
            Param::Int(m.partition),
            Param::BigInt(m.from.unwrap_or(-1)),
            Param::BigInt(m.to),
        ]);
    }
    Statement { sql, params }
}

/// Record what a member holds (replacing its row), or delete its row when it left.
pub(crate) fn record_member(kind: Kind, member: &MemberRecord) -> Statement<'_> {
    let members = table(kind, MEMBERS);
    let mut params = vec![
        Param::Text(member.group.as_str().into()),
        Param::Text(member.topic.as_str().into()),
        Param::Text(member.member_id.as_str().into()),
    ];
    let Some(holding) = &member.holding else {
        return Statement {
            sql: format!(
                "DELETE FROM {members}
                 WHERE consumer_group = $1 AND topic = $2 AND member_id = $3"
            ),
            params,
        };
    };
    params.extend([
        Param::Int(holding.generation),
        Param::Text(holding.partitions_text().into()),
        Param::Text(client_identity().into()),
    ]);
    Statement {
        sql: format!(
            "INSERT INTO {members}
                 (consumer_group, topic, member_id, generation, partitions, client)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (consumer_group, topic, member_id) DO UPDATE
             SET generation = excluded.generation, partitions = excluded.partitions,
                 client = excluded.client, assigned_at = {}",
            now(kind)
        ),
        params,
    }
}

/// For the reader: `group`'s `(topic, partition, next offset)` rows, of one topic or of all, in
/// order; the numbers as BIGINT (the `Any` driver reads no narrower integer from PostgreSQL).
pub(crate) fn positions<'a>(kind: Kind, group: &'a str, topic: Option<&'a str>) -> Statement<'a> {
    let mut sql = format!(
        "SELECT topic, CAST(kafka_partition AS BIGINT), CAST(next_offset AS BIGINT) FROM {}
         WHERE consumer_group = $1",
        table(kind, OFFSETS)
    );
    let mut params = vec![Param::Text(group.into())];
    if let Some(topic) = topic {
        sql.push_str(" AND topic = $2");
        params.push(Param::Text(topic.into()));
    }
    sql.push_str(" ORDER BY topic, 2");
    Statement { sql, params }
}

/// For the reader: the `(member id, generation, partitions, client)` rows of `group` and `topic`.
pub(crate) fn members<'a>(kind: Kind, group: &'a str, topic: &'a str) -> Statement<'a> {
    Statement {
        sql: format!(
            "SELECT member_id, generation, partitions, client FROM {}
             WHERE consumer_group = $1 AND topic = $2",
            table(kind, MEMBERS)
        ),
        params: vec![Param::Text(group.into()), Param::Text(topic.into())],
    }
}

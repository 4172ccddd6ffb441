//! PostgreSQL's fast path for events: binary `COPY` straight into the table, under a savepoint
//! unless it is the first statement of its transaction.
//!
//! `INSERT … ON CONFLICT (id) DO NOTHING` costs the server about half again what a plain insert
//! does (a speculative insertion per row), and the server is what limits a consumer. Ids are
//! almost always new, so each batch is first tried the cheap way: duplicates inside the batch are
//! dropped here (the first occurrence is kept, as ON CONFLICT keeps it), and the rest go in by
//! binary `COPY`. Should the table already hold one of the ids — an event produced twice, or
//! another writer racing for the same id (COPY waits for its transaction; if it commits, the
//! unique index refuses ours) — or should the database refuse anything else, the savepoint is
//! rolled back and the batch goes in the careful way ([`super::pg`]'s `ON CONFLICT` statement),
//! which counts duplicates and surfaces a refusal exactly as before. Either way the rows are part
//! of the batch's one transaction.

use std::collections::HashSet;

use foldhash::fast::RandomState;
use futures::TryStreamExt;

use sqlx::postgres::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::upsert::{on_conflict_newer, STORED_IS_OLDER};
use super::{columns, split_kinds, Landed, Row, Tombstone, SALES_COLUMNS, SENSOR_COLUMNS};
use crate::events::{cents, EventKind, Sale, SensorReading};

const SAVEPOINT: &str = "SAVEPOINT streamlab_copy";
const ROLL_BACK: &str = "ROLLBACK TO SAVEPOINT streamlab_copy";
/// A refused COPY that was the transaction's first statement: all of it goes, in one round trip.
const BEGIN_AGAIN: &str = "ROLLBACK; BEGIN";

/// How one batch of rows of a table went in.
pub(super) enum Copied {
    /// By COPY: this many rows were new; the rest of the batch repeated an id of the batch.
    Inserted(u64),
    /// COPY was refused (an id already stored, or anything else): the savepoint is rolled back
    /// (or, COPY first in its transaction, the transaction begun again) and nothing of it
    /// remains; the rows must go in the careful way.
    Refused,
}

/// Rows that binary `COPY` can write, column by column in the order of the table's list.
pub(super) trait CopyRow: Sync + Sized {
    /// The table the rows go to, and its columns in the order [`CopyRow::encode`] writes them.
    const TABLE: &'static str;
    const COLUMNS: &'static str;
    /// The kind of event a row holds (whose `_latest` table an upsert writes).
    const KIND: EventKind;
    /// Fields of a tuple: the columns, the last two `kafka_partition`, `kafka_offset`.
    const FIELDS: i16;
    fn id(&self) -> Uuid;
    /// The record key as text (an upsert's row key).
    fn key(&self) -> Option<&str>;
    /// Append each field to `out`.
    fn encode_fields(&self, out: &mut Vec<u8>);

    /// Append the tuple (field count, then each field) to `out`.
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&Self::FIELDS.to_be_bytes());
        self.encode_fields(out);
    }
}

/// The binary COPY stream's header: signature, flags, header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY stream's trailer: a field count of -1.
const TRAILER: [u8; 2] = (-1i16).to_be_bytes();
/// Room reserved per row: an encoded event takes 100–130 bytes, so the stream is not copied
/// to a larger buffer as it grows.
const ROW_BYTES: usize = 128;

/// COPY `rows` (first occurrence of each id) into their table, under a savepoint — or, `first`
/// in its transaction, without one: then a refusal rolls back the transaction, which held
/// nothing else, and begins it again.
///
/// The savepoint is never released: COMMIT keeps what it holds, and a release would cost a
/// round trip per batch for nothing.
pub(super) async fn copy_rows<R: CopyRow>(
    conn: &mut PgConnection,
    rows: &[R],
    first: bool,
) -> Result<Copied, sqlx::Error> {
    let (data, unique) = copy_data(rows);
    if !first {
        sqlx::query(SAVEPOINT).execute(&mut *conn).await?;
    }
    let copied = async {
        let mut copy = conn.copy_in_raw(&copy_statement::<R>()).await?;
        copy.send(data).await?;
        copy.finish().await
    }
    .await;
    match copied {
        Ok(n) => {
            debug_assert_eq!(n, unique);
            Ok(Copied::Inserted(n))
        }
        Err(sqlx::Error::Database(e)) => {
            tracing::debug!(
                "COPY into {} refused ({e}); inserting with ON CONFLICT",
                R::TABLE
            );
            let undo = if first { BEGIN_AGAIN } else { ROLL_BACK };
            // A plain string: the simple protocol, which takes two statements in one message.
            sqlx::Executor::execute(&mut *conn, undo).await?;
            Ok(Copied::Refused)
        }
        Err(e) => Err(e),
    }
}

/// The binary COPY stream of `rows`: the first occurrence of each id (as `ON CONFLICT` keeps
/// it), and how many rows that is. The ids seen are kept in a hash set keyed per process
/// (foldhash): one pass, cheaper than sorting a copy of them to find the rare repeat — v7 ids
/// from several partitions, and from one partition within a millisecond, are not in order —
/// and ids are the producer's to choose, so a fixed hash would let crafted ones collide.
fn copy_data<R: CopyRow>(rows: &[R]) -> (Vec<u8>, u64) {
    let mut data = Vec::with_capacity(HEADER.len() + rows.len() * ROW_BYTES + TRAILER.len());
    data.extend_from_slice(HEADER);
    let mut seen = HashSet::with_capacity_and_hasher(rows.len(), RandomState::default());
    let mut unique = 0u64;
    for row in rows.iter().filter(|row| seen.insert(row.id().as_u128())) {
        row.encode(&mut data);
        unique += 1;
    }
    data.extend_from_slice(&TRAILER);
    (data, unique)
}

/// The COPY streams consume sends for a batch of `events` (its sales, its sensor readings;
/// `None` for a kind the batch has none of), without a database: what `bench --cost` counts.
pub fn copy_streams(events: &[Landed]) -> [Option<Vec<u8>>; 2] {
    let (sales, sensors) = split_kinds(events);
    [
        (!sales.is_empty()).then(|| copy_data(&sales).0),
        (!sensors.is_empty()).then(|| copy_data(&sensors).0),
    ]
}

/// Load `rows` into `sales_events` the fastest way PostgreSQL takes rows: one binary COPY,
/// streamed in pieces of about a megabyte — no savepoint, no duplicate check, the same
/// encoding `consume` sends. What `bench` measures `consume` against (its write limit).
pub async fn bulk_load_sales(
    conn: &mut PgConnection,
    rows: &[Row<'_, Sale>],
) -> Result<u64, sqlx::Error> {
    const PIECE: usize = 1 << 20;
    let mut copy = conn.copy_in_raw(&copy_statement::<Row<'_, Sale>>()).await?;
    let mut data = Vec::with_capacity(PIECE + 512);
    data.extend_from_slice(HEADER);
    for row in rows {
        row.encode(&mut data);
        if data.len() >= PIECE {
            copy.send(std::mem::replace(
                &mut data,
                Vec::with_capacity(PIECE + 512),
            ))
            .await?;
        }
    }
    data.extend_from_slice(&TRAILER);
    copy.send(data).await?;
    copy.finish().await
}

/// What [`bulk_upsert`] did: rows inserted or updated, rows deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Upserted {
    pub upserted: u64,
    pub deleted: u64,
}

/// Apply one batch's changes, folded to the last per key ([`super::latest_per_key`]), to the
/// kind's `_latest` table the strongest way PostgreSQL takes them: one binary COPY of values and
/// tombstones into a temporary staging table, then one round trip of `INSERT … SELECT … ON
/// CONFLICT (key) DO UPDATE` (newest wins), `DELETE … USING` (the tombstones, newest wins) and
/// emptying the stage ([`create_upsert_stage`] made it on this connection). In the caller's
/// transaction, whatever its shape.
pub(super) async fn bulk_upsert<R: CopyRow>(
    conn: &mut PgConnection,
    puts: &[R],
    deletes: &[Tombstone],
) -> Result<Upserted, sqlx::Error> {
    let (stage, columns) = (stage_table(R::KIND), columns(R::KIND, true));
    let mut data = Vec::with_capacity(HEADER.len() + (puts.len() + deletes.len()) * 112 + 2);
    data.extend_from_slice(HEADER);
    puts.iter().for_each(|row| staged_put(row, &mut data));
    deletes
        .iter()
        .for_each(|t| staged_delete::<R>(t, &mut data));
    data.extend_from_slice(&TRAILER);
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {stage} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    copy.send(data).await?;
    copy.finish().await?;
    let results: Vec<u64> = sqlx::raw_sql(&apply_stage(R::KIND))
        .execute_many(&mut *conn)
        .map_ok(|done| done.rows_affected())
        .try_collect()
        .await?;
    Ok(Upserted {
        upserted: results.first().copied().unwrap_or(0),
        deleted: results.get(1).copied().unwrap_or(0),
    })
}

/// Create this session's staging table for [`bulk_upsert`] into `kind`'s `_latest` table, if
/// there is none yet: the table's columns, none of them NOT NULL (a tombstone holds only its
/// key and position).
pub async fn create_upsert_stage(
    conn: &mut PgConnection,
    kind: EventKind,
) -> Result<(), sqlx::Error> {
    let (latest, columns) = (kind.latest_table(), columns(kind, true));
    let statement = format!(
        "CREATE TEMP TABLE IF NOT EXISTS {} AS SELECT {columns} FROM public.{latest} WITH NO DATA",
        stage_table(kind)
    );
    sqlx::raw_sql(&statement).execute(conn).await?;
    Ok(())
}

/// The session's staging table of `kind`'s `_latest` table.
fn stage_table(kind: EventKind) -> String {
    format!("pg_temp.streamlab_stage_{}", kind.latest_table())
}

/// The stage's values upserted, its tombstones (no id) deleted, each only over an older row;
/// then the stage emptied.
fn apply_stage(kind: EventKind) -> String {
    let (stage, latest, columns) = (stage_table(kind), kind.latest_table(), columns(kind, true));
    format!(
        "INSERT INTO public.{latest} AS t ({columns}) \
         SELECT {columns} FROM {stage} WHERE id IS NOT NULL {};
         DELETE FROM public.{latest} AS t \
         USING (SELECT key, kafka_partition AS p, kafka_offset AS o FROM {stage} \
         WHERE id IS NULL) AS d WHERE t.key = d.key AND {STORED_IS_OLDER};
         TRUNCATE {stage}",
        on_conflict_newer(columns, "now()")
    )
}

/// A value as the stage takes it: the key, then the row.
fn staged_put<R: CopyRow>(row: &R, out: &mut Vec<u8>) {
    out.extend_from_slice(&(R::FIELDS + 1).to_be_bytes());
    match row.key() {
        Some(key) => text(out, key),
        None => null(out),
    }
    row.encode_fields(out);
}

/// A tombstone as the stage takes it: the key, NULL for every column but the last two, its
/// position.
fn staged_delete<R: CopyRow>(tombstone: &Tombstone, out: &mut Vec<u8>) {
    out.extend_from_slice(&(R::FIELDS + 1).to_be_bytes());
    text(out, &tombstone.key);
    (0..R::FIELDS - 2).for_each(|_| null(out));
    int4(out, tombstone.partition);
    int8(out, tombstone.offset);
}

fn copy_statement<R: CopyRow>() -> String {
    format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        R::TABLE,
        R::COLUMNS
    )
}

impl CopyRow for Row<'_, Sale> {
    const TABLE: &'static str = "public.sales_events";
    const COLUMNS: &'static str = SALES_COLUMNS;
    const KIND: EventKind = EventKind::Sales;
    const FIELDS: i16 = 7;

    fn id(&self) -> Uuid {
        self.event.id
    }

    fn key(&self) -> Option<&str> {
        Row::key(self)
    }

    fn encode_fields(&self, out: &mut Vec<u8>) {
        let s = self.event;
        uuid(out, s.id);
        timestamptz(out, s.ts);
        text(out, &s.store_id);
        numeric_cents(out, cents(s.amount_usd));
        text(out, &s.channel);
        int4(out, self.partition);
        int8(out, self.offset);
    }
}

impl CopyRow for Row<'_, SensorReading> {
    const TABLE: &'static str = "public.sensor_logs";
    const COLUMNS: &'static str = SENSOR_COLUMNS;
    const KIND: EventKind = EventKind::Sensor;
    const FIELDS: i16 = 8;

    fn id(&self) -> Uuid {
        self.event.id
    }

    fn key(&self) -> Option<&str> {
        Row::key(self)
    }

    fn encode_fields(&self, out: &mut Vec<u8>) {
        let s = self.event;
        uuid(out, s.id);
        text(out, &s.sensor_id);
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&s.val.to_be_bytes());
        text(out, &s.unit);
        text(out, &s.status);
        timestamptz(out, s.ts);
        int4(out, self.partition);
        int8(out, self.offset);
    }
}

fn uuid(out: &mut Vec<u8>, id: Uuid) {
    out.extend_from_slice(&16i32.to_be_bytes());
    out.extend_from_slice(id.as_bytes());
}

/// Microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch).
fn timestamptz(out: &mut Vec<u8>, ts: OffsetDateTime) {
    const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
    let micros = unix_micros(ts) - PG_EPOCH_MICROS;
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&micros.to_be_bytes());
}

/// Microseconds since the Unix epoch, truncated toward zero (as `unix_timestamp_nanos() / 1000`,
/// without its 128-bit division).
fn unix_micros(ts: OffsetDateTime) -> i64 {
    let (seconds, nanos) = (ts.unix_timestamp(), ts.nanosecond());
    let micros = seconds * 1_000_000 + i64::from(nanos / 1000);
    // Before 1970 the seconds are floored, so a partial microsecond rounds away from zero.
    micros + i64::from(seconds < 0 && nanos % 1000 != 0)
}

/// A NULL field.
fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i32).to_be_bytes());
}

fn text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn int4(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&4i32.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
}

fn int8(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&v.to_be_bytes());
}

/// `cents / 100` as a binary `numeric` with two decimal places: base-10000 digits, the integer
/// part's first, then one fractional digit (the cents × 100).
fn numeric_cents(out: &mut Vec<u8>, cents: i64) {
    let negative = cents < 0;
    let abs = cents.unsigned_abs();
    let (mut whole, frac) = (abs / 100, (abs % 100) as i16 * 100);
    // Below 2^63 / 100 the integer part has at most 5 base-10000 digits; then the fraction.
    let mut digits = [0i16; 6];
    let mut len = 0;
    while whole > 0 {
        digits[len] = (whole % 10_000) as i16;
        whole /= 10_000;
        len += 1;
    }
    digits[..len].reverse();
    let weight = len as i16 - 1;
    if frac != 0 {
        digits[len] = frac;
        len += 1;
    }
    // Trailing zero digits are implied by the weight.
    while len > 0 && digits[len - 1] == 0 {
        len -= 1;
    }
    let digits = &digits[..len];
    let (weight, sign) = match (digits.is_empty(), negative) {
        (true, _) => (0, 0x0000),
        (false, false) => (weight, 0x0000),
        (false, true) => (weight, 0x4000),
    };
    out.extend_from_slice(&((8 + 2 * digits.len()) as i32).to_be_bytes());
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&(sign as i16).to_be_bytes());
    out.extend_from_slice(&2i16.to_be_bytes()); // dscale
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(cents: i64) -> Vec<i16> {
        let mut out = Vec::new();
        numeric_cents(&mut out, cents);
        out[4..]
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    /// The COPY stream of `sales` (partition 0, each at its offset) and its row count.
    fn stream_of(sales: &[(Sale, i64)]) -> (Vec<u8>, u64) {
        let rows: Vec<Row<'_, Sale>> = sales
            .iter()
            .map(|(event, offset)| Row {
                event,
                record_key: None,
                partition: 0,
                offset: *offset,
            })
            .collect();
        copy_data(&rows)
    }

    #[test]
    fn a_repeated_id_is_copied_once_at_its_first_occurrence() {
        let mut g = crate::events::Generator::new(EventKind::Sales, Some(3));
        let now = OffsetDateTime::now_utc();
        let sales: Vec<Sale> = (0..5)
            .map(|_| match g.next_event(now) {
                crate::events::Event::Sale(s) => s,
                crate::events::Event::Sensor(_) => unreachable!(),
            })
            .collect();
        // Offsets 0‥6: the third sale again at 3, the first (another amount) again at 6.
        let again = Sale {
            amount_usd: 1.0,
            ..sales[0].clone()
        };
        let order = [
            &sales[0], &sales[1], &sales[2], &sales[2], &sales[3], &sales[4], &again,
        ];
        let repeated: Vec<(Sale, i64)> = order
            .iter()
            .zip(0..)
            .map(|(s, o)| ((*s).clone(), o))
            .collect();
        let first: Vec<(Sale, i64)> = [0, 1, 2, 4, 5].map(|i| repeated[i].clone()).to_vec();
        assert_eq!(stream_of(&first).1, 5);
        assert_eq!(stream_of(&repeated), stream_of(&first));
    }

    #[test]
    fn the_header_is_signature_flags_and_extension_length() {
        assert_eq!(HEADER.len(), 11 + 4 + 4);
        assert_eq!(&HEADER[..11], b"PGCOPY\n\xff\r\n\0");
        assert!(HEADER[11..].iter().all(|&b| b == 0));
    }

    #[test]
    fn numeric_cents_is_base_10000_with_two_decimal_places() {
        // ndigits, weight, sign, dscale, digits…
        assert_eq!(encoded(0), [0, 0, 0, 2]);
        assert_eq!(encoded(5), [1, -1, 0, 2, 500]);
        assert_eq!(encoded(1234), [2, 0, 0, 2, 12, 3400]);
        assert_eq!(encoded(100), [1, 0, 0, 2, 1]);
        assert_eq!(encoded(1_000_000), [1, 1, 0, 2, 1]);
        assert_eq!(encoded(123_456_789), [3, 1, 0, 2, 123, 4567, 8900]);
        assert_eq!(encoded(-250), [2, 0, 0x4000, 2, 2, 5000]);
        assert_eq!(
            encoded(i64::MIN),
            [6, 4, 0x4000, 2, 9, 2233, 7203, 6854, 7758, 800]
        );
    }

    #[test]
    fn unix_micros_truncates_toward_zero_as_nanos_divided_by_1000_does() {
        for nanos in [
            0i128,
            999,
            1_000,
            1_500,
            1_790_000_000_123_456_789,
            -1,
            -999,
            -1_000,
            -1_500,
            -1_000_000_000,
            -1_000_000_001,
            -62_000_000_000_123_456_789,
        ] {
            let ts = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
            assert_eq!(i128::from(unix_micros(ts)), nanos / 1000, "{nanos} ns");
        }
    }
}

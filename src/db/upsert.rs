//! A topic as a table (`consume --upsert`): one row per record key in the kind's `_latest`
//! table, the newest value by log order winning, a tombstone (a record with no value) deleting
//! the key's row.
//!
//! What is pure lives here: the record key as the table's key ([`table_key`]), a batch's
//! changes folded to the last one per key ([`latest_per_key`]), and the SQL guard both
//! databases apply so that an older record — a replay, another group writing the same table —
//! never overwrites or deletes a newer row ([`on_conflict_newer`], [`STORED_IS_OLDER`]).

use std::collections::HashMap;

use super::Landed;
use crate::events::{EventKind, Invalid};

/// How a batch's events are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Every event a row of its kind's table, ids already stored skipped (`consume`).
    #[default]
    Append,
    /// One row per record key in the kind's `_latest` table (`consume --upsert`).
    Upsert(EventKind),
}

/// A record with a key and no value: the key's row is deleted, unless the table holds a newer one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub key: String,
    pub partition: i32,
    pub offset: i64,
}

/// A keyed record of an upsert stream, decoded: a new value for its key, or its deletion.
#[derive(Debug, Clone)]
pub enum Change {
    /// The key (the record's, as text) and its new value.
    Put(String, Landed),
    Delete(Tombstone),
}

impl Change {
    fn key(&self) -> &str {
        match self {
            Change::Put(key, _) => key,
            Change::Delete(t) => &t.key,
        }
    }
}

/// Longest record key accepted as a table key, in bytes (a btree entry stays small).
pub const MAX_KEY_BYTES: usize = 512;

/// The record key as the table's primary key: UTF-8 text, present, not empty, no NUL (which
/// PostgreSQL text cannot hold), at most [`MAX_KEY_BYTES`]. `Err` is the dead letter's reason.
pub fn table_key(key: Option<&[u8]>) -> Result<&str, Invalid> {
    let bytes = key.ok_or("record has no key (--upsert stores one row per record key)")?;
    if bytes.is_empty() {
        return Err("record key is empty (--upsert stores one row per record key)".into());
    }
    if bytes.len() > MAX_KEY_BYTES {
        return Err(Invalid(format!(
            "record key is {} bytes, longer than the {MAX_KEY_BYTES} an upsert key may have",
            bytes.len()
        )));
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| Invalid(format!("record key is not UTF-8: {e}")))?;
    if text.contains('\0') {
        return Err("record key contains a NUL character".into());
    }
    Ok(text)
}

/// A batch's changes, folded: the last change of each key, in log order.
#[derive(Debug, Default)]
pub struct Folded {
    /// Keys whose last change is a value.
    pub puts: Vec<Landed>,
    /// Keys whose last change is a tombstone.
    pub deletes: Vec<Tombstone>,
    /// Changes a later change of the same key in the batch replaced.
    pub superseded: u64,
}

/// Keep only the last change of each key (`changes` in log order: a partition's records in
/// offset order). The table ends the same as if each change were applied in turn, and no
/// statement touches a key twice.
pub fn latest_per_key(changes: Vec<Change>) -> Folded {
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
    for (i, change) in changes.iter().enumerate() {
        last.insert(change.key(), i);
    }
    let keep: Vec<bool> = (0..changes.len())
        .map(|i| last[changes[i].key()] == i)
        .collect();
    let mut folded = Folded {
        superseded: (changes.len() - last.len()) as u64,
        ..Folded::default()
    };
    for (change, keep) in changes.into_iter().zip(keep) {
        match change {
            _ if !keep => {}
            Change::Put(_, landed) => folded.puts.push(landed),
            Change::Delete(tombstone) => folded.deletes.push(tombstone),
        }
    }
    folded
}

/// The guard of a delete, the stored row aliased `t` and the tombstone's position `d.p`,
/// `d.o`: only a row the tombstone is newer than goes (a row from another partition — the key
/// moved when partitions were added — counts as older).
pub const STORED_IS_OLDER: &str = "(d.p <> t.kafka_partition OR d.o > t.kafka_offset)";

/// `ON CONFLICT (key) DO UPDATE …` of an upsert into a table aliased `t` with `columns` (the
/// key first): every other column takes the incoming value and `ingested_at` becomes `now` —
/// unless the stored row is as new or newer (same partition, same or later offset), so that a
/// replay of older records leaves the table as it is. Both databases speak this SQL.
pub fn on_conflict_newer(columns: &str, now: &str) -> String {
    let sets: Vec<String> = columns
        .split(", ")
        .filter(|c| *c != "key")
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "ON CONFLICT (key) DO UPDATE SET {}, ingested_at = {now} \
         WHERE excluded.kafka_partition <> t.kafka_partition \
         OR excluded.kafka_offset > t.kafka_offset",
        sets.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, EventKind, Generator};

    fn put(key: &str, offset: i64) -> Change {
        let mut g = Generator::new(EventKind::Sales, Some(offset as u64));
        let event: Event = g.next_event(time::OffsetDateTime::now_utc());
        let landed = Landed {
            value: event.to_json().into(),
            key: Some(key.as_bytes().to_vec().into()),
            event,
            partition: 0,
            offset,
        };
        Change::Put(key.into(), landed)
    }

    fn delete(key: &str, offset: i64) -> Change {
        Change::Delete(Tombstone {
            key: key.into(),
            partition: 0,
            offset,
        })
    }

    fn offsets(folded: &Folded) -> (Vec<i64>, Vec<(String, i64)>) {
        let puts = folded.puts.iter().map(|l| l.offset).collect();
        let deletes = folded
            .deletes
            .iter()
            .map(|t| (t.key.clone(), t.offset))
            .collect();
        (puts, deletes)
    }

    #[test]
    fn the_last_change_of_each_key_wins_in_log_order() {
        let folded = latest_per_key(vec![
            put("a", 0),
            put("b", 1),
            put("a", 2),
            put("c", 3),
            put("b", 4),
        ]);
        assert_eq!(offsets(&folded), (vec![2, 3, 4], vec![]));
        assert_eq!(folded.superseded, 2);
    }

    #[test]
    fn a_tombstone_after_a_value_deletes_and_a_value_after_a_tombstone_puts() {
        let folded = latest_per_key(vec![
            put("a", 0),
            delete("a", 1),
            delete("b", 2),
            put("b", 3),
            delete("c", 4),
        ]);
        assert_eq!(
            offsets(&folded),
            (vec![3], vec![("a".into(), 1), ("c".into(), 4)])
        );
        assert_eq!(folded.superseded, 2);
    }

    #[test]
    fn nothing_folds_to_nothing() {
        let folded = latest_per_key(Vec::new());
        assert!(folded.puts.is_empty() && folded.deletes.is_empty());
        assert_eq!(folded.superseded, 0);
    }

    #[test]
    fn record_keys_become_table_keys_or_a_reason() {
        assert_eq!(table_key(Some(b"store-7")), Ok("store-7"));
        assert_eq!(table_key(Some("caf\u{e9}".as_bytes())), Ok("caf\u{e9}"));
        let long = vec![b'k'; MAX_KEY_BYTES + 1];
        for (key, reason) in [
            (None, "has no key"),
            (Some(&b""[..]), "key is empty"),
            (Some(&b"\xff\xfe"[..]), "not UTF-8"),
            (Some(&b"a\0b"[..]), "NUL"),
            (Some(&long[..]), "513 bytes"),
        ] {
            let err = table_key(key).unwrap_err();
            assert!(err.0.contains(reason), "{err}");
        }
        assert_eq!(
            table_key(Some(&long[..MAX_KEY_BYTES])).map(str::len),
            Ok(512)
        );
    }

    #[test]
    fn the_conflict_clause_updates_every_column_but_the_key_when_newer() {
        let sql = on_conflict_newer("key, id, val, kafka_partition, kafka_offset", "now()");
        assert_eq!(
            sql,
            "ON CONFLICT (key) DO UPDATE SET id = excluded.id, val = excluded.val, \
             kafka_partition = excluded.kafka_partition, kafka_offset = excluded.kafka_offset, \
             ingested_at = now() WHERE excluded.kafka_partition <> t.kafka_partition \
             OR excluded.kafka_offset > t.kafka_offset"
        );
    }
}

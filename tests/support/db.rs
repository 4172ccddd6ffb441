//! A database of a test's own, and SQL against it through the databases' own clients.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use super::{pg_admin_url, python_bin, unique};

/// A database for one test: a fresh PostgreSQL database or SQLite file, removed afterwards.
pub struct TestDb {
    pub sink: &'static str,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("warehouse.db").display());
        Self {
            sink: "sqlite",
            url,
            _dir: Some(dir),
            pg_name: None,
        }
    }

    pub fn pg() -> Self {
        let name = unique("streamlab_test").replace('-', "_");
        let admin = pg_admin_url();
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let base = admin.rsplit_once('/').unwrap().0;
        Self {
            sink: "pg",
            url: format!("{base}/{name}"),
            _dir: None,
            pg_name: Some(name),
        }
    }

    pub fn both() -> [TestDb; 2] {
        [TestDb::sqlite(), TestDb::pg()]
    }

    /// The SQLite file (for a sqlite:// database).
    pub fn path(&self) -> &str {
        self.url.trim_start_matches("sqlite://")
    }

    /// A single number from SQL (the sink's own dialect).
    pub fn scalar(&self, sql: &str) -> i64 {
        let out = self.query(sql);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql} gave {out:?}"))
    }

    /// `SELECT COUNT(*) FROM table`.
    pub fn count(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT COUNT(*) FROM {table}"))
    }

    pub fn lines(&self, sql: &str) -> Vec<String> {
        self.query(sql)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Stored next offsets per partition for `topic`.
    pub fn stored_offsets(&self, topic: &str) -> BTreeMap<i64, i64> {
        self.pairs(&format!(
            "SELECT kafka_partition, next_offset FROM streamlab_offsets WHERE topic = '{topic}' ORDER BY 1"
        ))
        .into_iter()
        .collect()
    }

    /// Rows of two integers.
    fn pairs(&self, sql: &str) -> Vec<(i64, i64)> {
        self.lines(sql)
            .iter()
            .map(|l| {
                let (a, b) = l
                    .split_once('|')
                    .unwrap_or_else(|| panic!("{sql} gave {l:?}"));
                (a.parse().unwrap(), b.parse().unwrap())
            })
            .collect()
    }

    /// Every stored sales id.
    pub fn sales_ids(&self) -> BTreeSet<String> {
        self.lines("SELECT id FROM sales_events")
            .into_iter()
            .collect()
    }

    /// Every stored sales row's Kafka position `(partition, offset)`; panics on a position
    /// stored twice.
    pub fn sales_positions(&self) -> BTreeSet<(i64, i64)> {
        let rows = self.pairs("SELECT kafka_partition, kafka_offset FROM sales_events");
        let positions: BTreeSet<(i64, i64)> = rows.iter().copied().collect();
        assert_eq!(positions.len(), rows.len(), "a Kafka position stored twice");
        positions
    }

    /// Make the database refuse sales of `store` (a CHECK constraint; a trigger in SQLite);
    /// returns what its error says.
    pub fn refuse_sales_of(&self, store: &str) -> &'static str {
        match self.sink {
            "pg" => {
                self.exec(&format!(
                    "ALTER TABLE sales_events ADD CONSTRAINT no_closed_store \
                     CHECK (store_id <> '{store}')"
                ));
                "no_closed_store"
            }
            _ => {
                self.exec(&format!(
                    "CREATE TRIGGER no_closed_store BEFORE INSERT ON sales_events \
                     WHEN NEW.store_id = '{store}' \
                     BEGIN SELECT RAISE(ABORT, 'store {store} is closed'); END"
                ));
                "is closed"
            }
        }
    }

    /// SQL reading `dead_letters.payload` as text.
    pub fn payload_as_text(&self) -> &'static str {
        match self.sink {
            "pg" => "convert_from(payload, 'UTF8')",
            _ => "CAST(payload AS TEXT)",
        }
    }

    pub fn exec(&self, sql: &str) {
        self.query(sql);
    }

    fn query(&self, sql: &str) -> String {
        match self.sink {
            "pg" => psql(&self.url, sql),
            _ => sqlite(&self.url, sql),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            let _ = Command::new("psql")
                .args([
                    &pg_admin_url(),
                    "-qAtc",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ])
                .output();
        }
    }
}

pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// SQLite through Python's sqlite3 (no sqlite3 CLI needed).
fn sqlite(url: &str, sql: &str) -> String {
    let path = url.trim_start_matches("sqlite://");
    let script = "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nfor r in c.execute(sys.argv[2]): print('|'.join('' if v is None else str(v) for v in r))\nc.commit()";
    let out = Command::new(python_bin())
        .args(["-c", script, path, sql])
        .output()
        .expect("run the test Python");
    assert!(
        out.status.success(),
        "sqlite {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

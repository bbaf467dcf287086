//! Metadata of cache entries: the [`CacheStore`] trait and its SQLite implementation in
//! `<state-dir>/cache/cache.db` (its own file and migrations, beside the blobs).
//!
//! An entry is `pending` from its reservation until its commit, then `committed`. Only
//! committed entries are ever found by a lookup or served by a download. `(scope, key,
//! version)` is unique, so a second reservation of the same entry fails atomically.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// Errors of the cache store.
#[derive(Debug, thiserror::Error)]
pub enum CacheStoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store lock poisoned")]
    Poisoned,
    #[error("migration failed: {0}")]
    Migration(String),
    /// The same scope/key/version is being written.
    #[error("entry is being written")]
    Locked,
    /// The same scope/key/version already exists (entries are immutable).
    #[error("entry exists")]
    Exists,
    /// The scope's quota cannot hold the reservation even after eviction.
    #[error("quota exceeded")]
    QuotaExceeded,
    #[error("not found")]
    NotFound,
    /// The entry is no longer pending (committed or discarded meanwhile).
    #[error("entry not pending")]
    NotPending,
}

/// State of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    Pending,
    Committed,
}

impl EntryState {
    fn as_str(self) -> &'static str {
        match self {
            EntryState::Pending => "pending",
            EntryState::Committed => "committed",
        }
    }
}

/// One cache entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i64,
    pub scope: String,
    pub key: String,
    pub version: String,
    pub state: EntryState,
    pub reserved_size: i64,
    pub size: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub committed_at: Option<i64>,
    pub last_used_at: i64,
    pub job_id: String,
    pub execution_id: String,
}

/// A new reservation.
#[derive(Debug, Clone)]
pub struct NewReservation<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub version: &'a str,
    pub reserved_size: i64,
    pub job_id: &'a str,
    pub execution_id: &'a str,
    pub now: i64,
    /// Total bytes (committed sizes plus pending reservations) the scope may hold.
    pub quota: i64,
}

/// A removed entry whose files the caller deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub id: i64,
    pub scope: String,
    pub key: String,
    pub state: EntryState,
    /// Why: `evicted` (quota, LRU), `expired` (retention), `abandoned` (stale reservation).
    pub reason: &'static str,
}

/// Metadata storage of the cache. Implementations make each method atomic.
pub trait CacheStore: Send + Sync + 'static {
    /// Reserves an entry; evicts least recently used committed entries of the scope when the
    /// quota requires it. Returns the new id and what was evicted.
    fn reserve(&self, r: &NewReservation<'_>) -> Result<(i64, Vec<Removed>), CacheStoreError>;
    /// Newest committed entry of `scope` and `version`: `keys[0]` matched exactly, later keys
    /// as prefixes, tried in order. Marks the hit as used at `now`.
    fn lookup(
        &self,
        scope: &str,
        version: &str,
        keys: &[String],
        now: i64,
    ) -> Result<Option<Entry>, CacheStoreError>;
    fn get(&self, id: i64) -> Result<Option<Entry>, CacheStoreError>;
    /// Records that `[start, end)` of pending entry `id` was written.
    fn add_range(&self, id: i64, start: i64, end: i64, now: i64) -> Result<(), CacheStoreError>;
    /// The written ranges of entry `id`, unsorted.
    fn ranges(&self, id: i64) -> Result<Vec<(i64, i64)>, CacheStoreError>;
    /// pending → committed with its final size.
    fn mark_committed(&self, id: i64, size: i64, now: i64) -> Result<(), CacheStoreError>;
    /// Deletes entry `id` (any state); false when it did not exist.
    fn remove(&self, id: i64) -> Result<bool, CacheStoreError>;
    /// Marks entry `id` as used at `now`.
    fn touch(&self, id: i64, now: i64) -> Result<(), CacheStoreError>;
    /// Removes committed entries unused since `unused_before` and pending ones idle since
    /// `idle_before`.
    fn sweep(&self, unused_before: i64, idle_before: i64) -> Result<Vec<Removed>, CacheStoreError>;
    /// Every entry id with its state (to reconcile the blob directory at start).
    fn all_ids(&self) -> Result<Vec<(i64, EntryState)>, CacheStoreError>;
    /// Bytes held by `scope` (committed sizes plus pending reservations).
    fn usage(&self, scope: &str) -> Result<i64, CacheStoreError>;
}

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE cache_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'committed')),
    reserved_size INTEGER NOT NULL,
    size INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    committed_at INTEGER,
    last_used_at INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    execution_id TEXT NOT NULL
);
CREATE UNIQUE INDEX cache_entries_identity ON cache_entries(scope, key, version);
CREATE INDEX cache_entries_lookup ON cache_entries(scope, version, state, key);
CREATE INDEX cache_entries_lru ON cache_entries(scope, state, last_used_at);
CREATE TABLE cache_ranges (
    entry_id INTEGER NOT NULL REFERENCES cache_entries(id) ON DELETE CASCADE,
    start INTEGER NOT NULL,
    end_excl INTEGER NOT NULL
);
CREATE INDEX cache_ranges_entry ON cache_ranges(entry_id);
"#];

const COLS: &str = "id, scope, key, version, state, reserved_size, size, created_at, updated_at, \
                    committed_at, last_used_at, job_id, execution_id";

fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let state: String = r.get(4)?;
    Ok(Entry {
        id: r.get(0)?,
        scope: r.get(1)?,
        key: r.get(2)?,
        version: r.get(3)?,
        state: if state == "committed" {
            EntryState::Committed
        } else {
            EntryState::Pending
        },
        reserved_size: r.get(5)?,
        size: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        committed_at: r.get(9)?,
        last_used_at: r.get(10)?,
        job_id: r.get(11)?,
        execution_id: r.get(12)?,
    })
}

/// SQLite implementation of [`CacheStore`].
pub struct SqliteCacheStore {
    conn: Mutex<Connection>,
}

impl SqliteCacheStore {
    /// Opens (creating if needed) the database file, enables WAL, applies migrations.
    pub fn open(path: &Path) -> Result<SqliteCacheStore, CacheStoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(CacheStoreError::Migration(format!(
                "journal_mode is {mode}, not wal"
            )));
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(CacheStoreError::Migration(format!(
                "cache schema {version} is newer than this binary ({known})"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)
                .map_err(|e| CacheStoreError::Migration(format!("step {}: {e}", i + 1)))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(SqliteCacheStore {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, CacheStoreError>,
    ) -> Result<T, CacheStoreError> {
        let mut c = self.conn.lock().map_err(|_| CacheStoreError::Poisoned)?;
        f(&mut c)
    }
}

fn get_entry(c: &Connection, id: i64) -> Result<Option<Entry>, CacheStoreError> {
    Ok(c.query_row(
        &format!("SELECT {COLS} FROM cache_entries WHERE id = ?1"),
        [id],
        entry_row,
    )
    .optional()?)
}

fn usage_of(c: &Connection, scope: &str) -> Result<i64, CacheStoreError> {
    Ok(c.query_row(
        "SELECT COALESCE(SUM(COALESCE(size, reserved_size)), 0) FROM cache_entries \
         WHERE scope = ?1",
        [scope],
        |r| r.get(0),
    )?)
}

impl CacheStore for SqliteCacheStore {
    fn reserve(&self, r: &NewReservation<'_>) -> Result<(i64, Vec<Removed>), CacheStoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<String> = tx
                .query_row(
                    "SELECT state FROM cache_entries WHERE scope = ?1 AND key = ?2 AND version = ?3",
                    params![r.scope, r.key, r.version],
                    |row| row.get(0),
                )
                .optional()?;
            match existing.as_deref() {
                Some("pending") => return Err(CacheStoreError::Locked),
                Some(_) => return Err(CacheStoreError::Exists),
                None => {}
            }
            if r.reserved_size > r.quota {
                return Err(CacheStoreError::QuotaExceeded);
            }
            let mut used = usage_of(&tx, r.scope)?;
            let mut evicted = Vec::new();
            if used + r.reserved_size > r.quota {
                let lru: Vec<(i64, String, i64)> = {
                    let mut st = tx.prepare(
                        "SELECT id, key, COALESCE(size, 0) FROM cache_entries \
                         WHERE scope = ?1 AND state = 'committed' ORDER BY last_used_at, id",
                    )?;
                    let rows = st.query_map([r.scope], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?;
                    rows.collect::<Result<_, _>>()?
                };
                for (id, key, size) in lru {
                    if used + r.reserved_size <= r.quota {
                        break;
                    }
                    tx.execute("DELETE FROM cache_entries WHERE id = ?1", [id])?;
                    used -= size;
                    evicted.push(Removed {
                        id,
                        scope: r.scope.to_string(),
                        key,
                        state: EntryState::Committed,
                        reason: "evicted",
                    });
                }
                if used + r.reserved_size > r.quota {
                    // Pending reservations fill the quota: evict nothing.
                    return Err(CacheStoreError::QuotaExceeded);
                }
            }
            tx.execute(
                "INSERT INTO cache_entries (scope, key, version, state, reserved_size, size, \
                 created_at, updated_at, committed_at, last_used_at, job_id, execution_id) \
                 VALUES (?1, ?2, ?3, 'pending', ?4, NULL, ?5, ?5, NULL, ?5, ?6, ?7)",
                params![
                    r.scope,
                    r.key,
                    r.version,
                    r.reserved_size,
                    r.now,
                    r.job_id,
                    r.execution_id
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            Ok((id, evicted))
        })
    }

    fn lookup(
        &self,
        scope: &str,
        version: &str,
        keys: &[String],
        now: i64,
    ) -> Result<Option<Entry>, CacheStoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut hit = None;
            for (i, key) in keys.iter().enumerate() {
                let sql = if i == 0 {
                    format!(
                        "SELECT {COLS} FROM cache_entries WHERE scope = ?1 AND version = ?2 \
                         AND state = 'committed' AND key = ?3 \
                         ORDER BY committed_at DESC, id DESC LIMIT 1"
                    )
                } else {
                    format!(
                        "SELECT {COLS} FROM cache_entries WHERE scope = ?1 AND version = ?2 \
                         AND state = 'committed' AND substr(key, 1, length(?3)) = ?3 \
                         ORDER BY committed_at DESC, id DESC LIMIT 1"
                    )
                };
                hit = tx
                    .query_row(&sql, params![scope, version, key], entry_row)
                    .optional()?;
                if hit.is_some() {
                    break;
                }
            }
            if let Some(e) = &mut hit {
                tx.execute(
                    "UPDATE cache_entries SET last_used_at = ?2 WHERE id = ?1",
                    params![e.id, now],
                )?;
                e.last_used_at = now;
            }
            tx.commit()?;
            Ok(hit)
        })
    }

    fn get(&self, id: i64) -> Result<Option<Entry>, CacheStoreError> {
        self.with(|c| get_entry(c, id))
    }

    fn add_range(&self, id: i64, start: i64, end: i64, now: i64) -> Result<(), CacheStoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE cache_entries SET updated_at = ?2 WHERE id = ?1 AND state = 'pending'",
                params![id, now],
            )?;
            if n == 0 {
                return Err(CacheStoreError::NotPending);
            }
            tx.execute(
                "INSERT INTO cache_ranges (entry_id, start, end_excl) VALUES (?1, ?2, ?3)",
                params![id, start, end],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn ranges(&self, id: i64) -> Result<Vec<(i64, i64)>, CacheStoreError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT start, end_excl FROM cache_ranges WHERE entry_id = ?1")?;
            let rows = st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn mark_committed(&self, id: i64, size: i64, now: i64) -> Result<(), CacheStoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE cache_entries SET state = 'committed', size = ?2, committed_at = ?3, \
                 updated_at = ?3, last_used_at = ?3 WHERE id = ?1 AND state = 'pending'",
                params![id, size, now],
            )?;
            if n == 0 {
                return Err(CacheStoreError::NotPending);
            }
            tx.execute("DELETE FROM cache_ranges WHERE entry_id = ?1", [id])?;
            tx.commit()?;
            Ok(())
        })
    }

    fn remove(&self, id: i64) -> Result<bool, CacheStoreError> {
        self.with(|c| Ok(c.execute("DELETE FROM cache_entries WHERE id = ?1", [id])? > 0))
    }

    fn touch(&self, id: i64, now: i64) -> Result<(), CacheStoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE cache_entries SET last_used_at = MAX(last_used_at, ?2) WHERE id = ?1",
                params![id, now],
            )?;
            Ok(())
        })
    }

    fn sweep(&self, unused_before: i64, idle_before: i64) -> Result<Vec<Removed>, CacheStoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let gone: Vec<Removed> = {
                let mut st = tx.prepare(&format!(
                    "SELECT {COLS} FROM cache_entries WHERE \
                     (state = 'committed' AND last_used_at < ?1) OR \
                     (state = 'pending' AND updated_at < ?2)"
                ))?;
                let rows = st.query_map(params![unused_before, idle_before], entry_row)?;
                rows.map(|r| {
                    r.map(|e| Removed {
                        id: e.id,
                        scope: e.scope,
                        key: e.key,
                        state: e.state,
                        reason: if e.state == EntryState::Committed {
                            "expired"
                        } else {
                            "abandoned"
                        },
                    })
                })
                .collect::<Result<_, _>>()?
            };
            for r in &gone {
                tx.execute("DELETE FROM cache_entries WHERE id = ?1", [r.id])?;
            }
            tx.commit()?;
            Ok(gone)
        })
    }

    fn all_ids(&self) -> Result<Vec<(i64, EntryState)>, CacheStoreError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT id, state FROM cache_entries")?;
            let rows = st.query_map([], |r| {
                let s: String = r.get(1)?;
                Ok((
                    r.get(0)?,
                    if s == EntryState::Committed.as_str() {
                        EntryState::Committed
                    } else {
                        EntryState::Pending
                    },
                ))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn usage(&self, scope: &str) -> Result<i64, CacheStoreError> {
        self.with(|c| usage_of(c, scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res<'a>(
        scope: &'a str,
        key: &'a str,
        size: i64,
        now: i64,
        quota: i64,
    ) -> NewReservation<'a> {
        NewReservation {
            scope,
            key,
            version: "v1",
            reserved_size: size,
            job_id: "job_1",
            execution_id: "ex_1",
            now,
            quota,
        }
    }

    #[test]
    fn reserve_commit_lookup_and_lru() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteCacheStore::open(&dir.path().join("c.db")).unwrap();
        let (a, _) = s.reserve(&res("u", "npm-a", 10, 1, 100)).unwrap();
        assert!(matches!(
            s.reserve(&res("u", "npm-a", 10, 1, 100)),
            Err(CacheStoreError::Locked)
        ));
        // Pending entries are invisible.
        assert!(s.lookup("u", "v1", &["npm-a".into()], 2).unwrap().is_none());
        s.add_range(a, 0, 10, 2).unwrap();
        s.mark_committed(a, 10, 3).unwrap();
        assert!(matches!(
            s.reserve(&res("u", "npm-a", 10, 4, 100)),
            Err(CacheStoreError::Exists)
        ));
        let (b, _) = s.reserve(&res("u", "npm-b", 10, 4, 100)).unwrap();
        s.mark_committed(b, 10, 5).unwrap();
        // Prefix: the newest wins; exact only for the first key; other scope misses.
        let hit = s
            .lookup("u", "v1", &["npm".into(), "npm-".into()], 6)
            .unwrap()
            .unwrap();
        assert_eq!(hit.id, b);
        assert!(s.lookup("u", "v1", &["npm".into()], 6).unwrap().is_none());
        assert!(s.lookup("x", "v1", &["npm-a".into()], 6).unwrap().is_none());
        assert!(s.lookup("u", "v2", &["npm-a".into()], 6).unwrap().is_none());
        // a is used at 7, so b is the least recently used and goes first.
        s.lookup("u", "v1", &["npm-a".into()], 7).unwrap().unwrap();
        let (_, ev) = s.reserve(&res("u", "npm-c", 85, 8, 100)).unwrap();
        assert_eq!(ev.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b]);
        assert_eq!(s.usage("u").unwrap(), 95);
        assert!(matches!(
            s.reserve(&res("u", "npm-d", 101, 8, 100)),
            Err(CacheStoreError::QuotaExceeded)
        ));
        // Sweep: a unused since 7, the pending c idle since 8.
        let gone = s.sweep(8, 9).unwrap();
        assert_eq!(gone.len(), 2);
        assert_eq!(s.usage("u").unwrap(), 0);
    }
}

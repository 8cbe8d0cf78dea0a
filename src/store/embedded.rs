//! The embedded backend: one SQLite file (`<data_dir>/ezthrottle.db`) in WAL
//! mode. A committed transaction survives `kill -9` (the WAL is in the OS
//! page cache; `synchronous = NORMAL` only risks the newest transactions on a
//! power loss). All SQLite calls run on the blocking pool, never on the async
//! runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{IdempotencyRecord, LearnedLimit, Store, StoreError};

const SCHEMA_VERSION: i64 = 2;

pub struct EmbeddedStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EmbeddedStore {
    /// Open (creating if needed) the database under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| err(format!("{}: {e}", data_dir.display())))?;
        let path = data_dir.join("ezthrottle.db");
        let conn = Connection::open(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        migrate(&conn)?;
        Ok(EmbeddedStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` with the connection on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(err)?
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    if version > SCHEMA_VERSION {
        return Err(err(format!(
            "database schema version {version} is newer than this ezthrottle ({SCHEMA_VERSION})"
        )));
    }
    if version < 1 {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS learned_limits (
                domain TEXT PRIMARY KEY,
                rps REAL,
                max_concurrent INTEGER,
                updated_at INTEGER NOT NULL
            );
            PRAGMA user_version = 1;",
        )
        .map_err(err)?;
    }
    if version < 2 {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS idempotency (
                scope TEXT PRIMARY KEY,
                fingerprint TEXT NOT NULL,
                status INTEGER NOT NULL,
                reason TEXT,
                headers BLOB NOT NULL,
                body BLOB NOT NULL,
                created_at INTEGER NOT NULL,
                expires_at INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency (expires_at);
            PRAGMA user_version = 2;",
        )
        .map_err(err)?;
    }
    Ok(())
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
                .map_err(err)
        })
        .await
    }

    async fn learned_limits(&self) -> Result<Vec<LearnedLimit>, StoreError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT domain, rps, max_concurrent, updated_at FROM learned_limits")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(LearnedLimit {
                        domain: r.get(0)?,
                        rps: r.get(1)?,
                        max_concurrent: r
                            .get::<_, Option<i64>>(2)?
                            .and_then(|v| u32::try_from(v).ok()),
                        updated_at: r.get::<_, i64>(3)?.max(0) as u64,
                    })
                })
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
        .await
    }

    async fn save_learned_limit(&self, limit: LearnedLimit) -> Result<(), StoreError> {
        self.with(move |c| {
            let existing: Option<(Option<f64>, Option<i64>)> = c
                .query_row(
                    "SELECT rps, max_concurrent FROM learned_limits WHERE domain = ?1",
                    params![limit.domain],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(err)?;
            let (old_rps, old_conc) = existing.unwrap_or((None, None));
            c.execute(
                "INSERT INTO learned_limits (domain, rps, max_concurrent, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(domain) DO UPDATE SET rps = ?2, max_concurrent = ?3, updated_at = ?4",
                params![
                    limit.domain,
                    limit.rps.or(old_rps),
                    limit.max_concurrent.map(i64::from).or(old_conc),
                    limit.updated_at as i64
                ],
            )
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn idempotency_get(
        &self,
        scope: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let scope = scope.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT fingerprint, status, reason, headers, body, created_at, expires_at
                 FROM idempotency WHERE scope = ?1 AND expires_at > ?2",
                params![scope, now_ms as i64],
                |r| {
                    Ok(IdempotencyRecord {
                        scope: scope.clone(),
                        fingerprint: r.get(0)?,
                        status: u16::try_from(r.get::<_, i64>(1)?).unwrap_or(500),
                        reason: r.get(2)?,
                        headers: r.get(3)?,
                        body: r.get(4)?,
                        created_at: r.get::<_, i64>(5)?.max(0) as u64,
                        expires_at: r.get::<_, i64>(6)?.max(0) as u64,
                    })
                },
            )
            .optional()
            .map_err(err)
        })
        .await
    }

    async fn idempotency_put(&self, record: IdempotencyRecord) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO idempotency
                 (scope, fingerprint, status, reason, headers, body, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    record.scope,
                    record.fingerprint,
                    i64::from(record.status),
                    record.reason,
                    record.headers,
                    record.body,
                    record.created_at as i64,
                    record.expires_at as i64
                ],
            )
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn idempotency_sweep(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let n = c
                .execute(
                    "DELETE FROM idempotency WHERE expires_at <= ?1",
                    params![now_ms as i64],
                )
                .map_err(err)?;
            Ok(n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(scope: &str, expires_at: u64) -> IdempotencyRecord {
        IdempotencyRecord {
            scope: scope.into(),
            fingerprint: "f".repeat(64),
            status: 201,
            reason: Some("Created".into()),
            headers: b"Content-Type: application/json\r\nX-A: 1\r\n".to_vec(),
            body: vec![0, 1, 2, 255],
            created_at: 10,
            expires_at,
        }
    }

    #[tokio::test]
    async fn idempotency_records_survive_reopen_expire_and_sweep() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.idempotency_put(record("live", 1_000)).await.unwrap();
            s.idempotency_put(record("old", 100)).await.unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(
            s.idempotency_get("live", 500).await.unwrap(),
            Some(record("live", 1_000))
        );
        // Expired records are invisible even before the sweep deletes them.
        assert_eq!(s.idempotency_get("old", 500).await.unwrap(), None);
        assert_eq!(s.idempotency_get("nope", 500).await.unwrap(), None);
        assert_eq!(s.idempotency_sweep(500).await.unwrap(), 1);
        assert_eq!(s.idempotency_sweep(500).await.unwrap(), 0);
        assert!(s.idempotency_get("live", 500).await.unwrap().is_some());
        assert_eq!(s.idempotency_get("live", 1_000).await.unwrap(), None);
    }

    #[tokio::test]
    async fn learned_limits_survive_reopen_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.ping().await.unwrap();
            s.save_learned_limit(LearnedLimit {
                domain: "a.test".into(),
                rps: Some(0.5),
                max_concurrent: None,
                updated_at: 1,
            })
            .await
            .unwrap();
            s.save_learned_limit(LearnedLimit {
                domain: "a.test".into(),
                rps: None,
                max_concurrent: Some(3),
                updated_at: 2,
            })
            .await
            .unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let all = s.learned_limits().await.unwrap();
        assert_eq!(
            all,
            vec![LearnedLimit {
                domain: "a.test".into(),
                rps: Some(0.5),
                max_concurrent: Some(3),
                updated_at: 2
            }]
        );
    }
}

//! The embedded backend: one SQLite file (`<data_dir>/ezthrottle.db`) in WAL
//! mode. A committed transaction survives `kill -9` (the WAL is in the OS
//! page cache; `synchronous = NORMAL` only risks the newest transactions on a
//! power loss, see [`pool::configure_writer`]). All SQLite calls run on the
//! blocking pool, never on the async runtime; writes take the one writer
//! connection, reads one of a few read connections, so a read never waits
//! for a write (see `pool.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::{Type, Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};

use super::files;
use super::pool::{self, Checkpointer, Readers};
use super::seal::{self, Seal};
use super::{
    Delivery, DeliveryState, IdempotencyRecord, JobEnd, JobRecord, JobStatus, LearnedLimit, Store,
    StoreError, WebhookSecrets,
};
use crate::config::EncryptionKey;

const SCHEMA_VERSION: i64 = 7;

/// The `meta` row that says the jobs' `domain` and `parent_id` columns
/// (schema 7) still have to be filled from their specs: written with the
/// columns, deleted in the transaction that fills them, so a crash between
/// the two fills them on the next start.
const BACKFILL_JOB_INDEX: &str = "backfill_job_index";

/// Rows deleted per sweep transaction. A sweep holds the writer for one
/// batch at a time and lets waiting writes (submissions, stored responses)
/// in between, so a backlog of a million expired rows costs them at most
/// one batch of waiting, not the whole sweep.
const SWEEP_BATCH: usize = 1000;

/// Idempotency records are up to 10 MiB each and deleted rows are zeroed
/// (`secure_delete`): a batch also ends after this many stored bytes.
const SWEEP_BATCH_BYTES: i64 = 32 << 20;

/// The key (if any) that seals the columns in [`SEALED_COLUMNS`].
type SealRef = Option<Arc<Seal>>;

// Associated data of each sealed column: `table.column`.
const JOBS_SPEC: &str = "jobs.spec";
const JOBS_RESULT: &str = "jobs.result";
const DELIVERIES_URL: &str = "deliveries.url";
const DELIVERIES_PAYLOAD: &str = "deliveries.payload";
const SECRETS_PRIMARY: &str = "webhook_secrets.primary_secret";
const SECRETS_SECONDARY: &str = "webhook_secrets.secondary_secret";
const IDEMPOTENCY_HEADERS: &str = "idempotency.headers";
const IDEMPOTENCY_BODY: &str = "idempotency.body";

/// Every column that can hold credentials or request/response content:
/// `(table, column)`; the purpose is `table.column`.
const SEALED_COLUMNS: [(&str, &str); 8] = [
    ("jobs", "spec"),
    ("jobs", "result"),
    ("deliveries", "url"),
    ("deliveries", "payload"),
    ("webhook_secrets", "primary_secret"),
    ("webhook_secrets", "secondary_secret"),
    ("idempotency", "headers"),
    ("idempotency", "body"),
];

/// The `meta` row whose sealed value proves the configured key is the one
/// the data was written with.
const KEY_CHECK: &str = "key_check";
const KEY_CHECK_PURPOSE: &str = "meta.key_check";
const KEY_CHECK_VALUE: &[u8] = b"ezthrottle storage key check v1";

/// Start-up error when the configured key is not the one the data was sealed with.
pub const WRONG_KEY: &str = "storage.encryption_key does not decrypt existing data";

pub struct EmbeddedStore {
    inner: Arc<Inner>,
    path: PathBuf,
    seal: SealRef,
}

/// The connections, shared with the blocking-pool closures running calls.
struct Inner {
    writer: Mutex<Connection>,
    readers: Readers,
    checkpointer: Checkpointer,
}

impl Inner {
    /// Run `f` on the writer connection (waiting for it).
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let out = {
            let mut c = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        };
        self.checkpointer.committed();
        out
    }

    /// Run `f` on a read connection: the last committed state, never
    /// waiting for a write in progress.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.readers.with(f)
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EmbeddedStore {
    /// Open (creating if needed) the database under `data_dir`, without
    /// encryption at rest.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, None)
    }

    /// Open (creating if needed) the database under `data_dir`; with `key`,
    /// the columns that can hold credentials are sealed (see `seal.rs`).
    ///
    /// The data dir is 0700 and the database files 0600 whatever the umask;
    /// looser modes left by an older version are fixed with a warning. A key
    /// that does not open the data already sealed, or a database with sealed
    /// data opened without a key, is refused here rather than failing (or
    /// worse, misreading) value by value later.
    pub fn open_with(data_dir: &Path, key: Option<&EncryptionKey>) -> Result<Self, StoreError> {
        files::create_private_dir(data_dir)
            .map_err(|e| err(format!("{}: {e}", data_dir.display())))?;
        let path = data_dir.join(files::DB_FILE);
        files::create_private_file(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        files::secure_data_dir(data_dir);
        let conn = Connection::open(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        pool::configure_writer(&conn)?;
        migrate(&conn)?;
        check_counts(&conn)?;
        let seal = key.map(|k| Arc::new(Seal::new(k)));
        check_key(&conn, seal.as_deref())?;
        // After the key check: a sealed spec can be read only now.
        let filled = backfill_job_index(&conn, &seal)?;
        if filled > 0 {
            tracing::info!(
                jobs = filled,
                "indexed the domain and parent of jobs stored by an older version"
            );
        }
        if let Some(s) = &seal {
            let n = seal_plaintext(&conn, s)?;
            if n > 0 {
                tracing::info!(
                    values = n,
                    "encrypted stored values written before storage.encryption_key was set"
                );
                // Copy the sealed pages into the database file and empty the
                // WAL, so the plaintext page images of before do not outlive
                // this start in either file (freed cells are zeroed:
                // secure_delete).
                truncate_wal(&conn);
            }
        }
        // The WAL and shared-memory files exist now (WAL mode): check them too.
        files::secure_data_dir(data_dir);
        let readers = Readers::open(&path, pool::READERS)?;
        let checkpointer = Checkpointer::start(&path)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(conn),
                readers,
                checkpointer,
            }),
            path,
            seal,
        })
    }

    /// Whether stored values are sealed with a key.
    pub fn encrypted(&self) -> bool {
        self.seal.is_some()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the blocking pool: waiting for a connection and every
    /// SQLite call may take milliseconds, which must not stall the async
    /// workers that serve proxied requests.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(err)?
    }

    /// Run `f` with the writer connection on the blocking pool.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.blocking(move |i| i.write(f)).await
    }

    /// Run `f` with a read connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.blocking(move |i| i.read(f)).await
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// Bring the schema up to `target` (below [`SCHEMA_VERSION`] only in tests,
/// which build the data file an older version left behind).
fn migrate_to(conn: &Connection, target: i64) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    let wanted = |v: i64| version < v && v <= target;
    if version > SCHEMA_VERSION {
        return Err(err(format!(
            "database schema version {version} is newer than this ezthrottle ({SCHEMA_VERSION})"
        )));
    }
    if wanted(1) {
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
    if wanted(2) {
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
    if wanted(3) {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY,
                workspace TEXT NOT NULL,
                idempotent_key TEXT NOT NULL,
                status TEXT NOT NULL,
                spec TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                next_attempt_at INTEGER NOT NULL,
                lease_until INTEGER NOT NULL,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL,
                result TEXT,
                UNIQUE (workspace, idempotent_key)
            );
            CREATE INDEX IF NOT EXISTS jobs_due ON jobs (status, next_attempt_at);
            CREATE TABLE IF NOT EXISTS deliveries (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                job_id TEXT NOT NULL REFERENCES jobs (id),
                workspace TEXT NOT NULL,
                url TEXT NOT NULL,
                has_quorum_vote INTEGER NOT NULL,
                payload BLOB NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                next_attempt_at INTEGER NOT NULL,
                last_status INTEGER,
                last_error TEXT,
                updated_at INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
            CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_id);
            CREATE TABLE IF NOT EXISTS webhook_secrets (
                workspace TEXT PRIMARY KEY,
                primary_secret TEXT NOT NULL,
                secondary_secret TEXT
            );
            PRAGMA user_version = 3;",
        )
        .map_err(err)?;
    }
    if wanted(4) {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (
                name TEXT PRIMARY KEY,
                value BLOB NOT NULL
            );
            PRAGMA user_version = 4;",
        )
        .map_err(err)?;
    }
    if wanted(5) {
        // `attempts` counted claims before; from now on it counts upstream
        // calls and `claims` is the fencing token. The job list pages by
        // (workspace, created_at).
        conn.execute_batch(
            "ALTER TABLE jobs ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;
            UPDATE jobs SET claims = attempts;
            CREATE INDEX IF NOT EXISTS jobs_list ON jobs (workspace, created_at, id);
            PRAGMA user_version = 5;",
        )
        .map_err(err)?;
    }
    if wanted(6) {
        // Counts by status are kept by triggers in the same transaction as
        // every insert, status change and delete, whichever statement does
        // it (now or added later), so `job_counts` reads seven rows instead
        // of scanning every job on every submission.
        // `jobs_list_status`: a list filtered by a rare status is a range,
        // not a scan of the whole workspace. `jobs_ended`: the retention
        // sweep finds old ended jobs without reading the live ones.
        conn.execute_batch(
            "BEGIN;
            CREATE TABLE IF NOT EXISTS job_counts (
                status TEXT PRIMARY KEY,
                n INTEGER NOT NULL
            ) WITHOUT ROWID;
            CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs BEGIN
                INSERT INTO job_counts (status, n) VALUES (NEW.status, 1)
                    ON CONFLICT (status) DO UPDATE SET n = n + 1;
            END;
            CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs BEGIN
                UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
            END;
            CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF status ON jobs
            WHEN OLD.status IS NOT NEW.status BEGIN
                UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
                INSERT INTO job_counts (status, n) VALUES (NEW.status, 1)
                    ON CONFLICT (status) DO UPDATE SET n = n + 1;
            END;
            DELETE FROM job_counts;
            INSERT INTO job_counts (status, n) SELECT status, COUNT(*) FROM jobs GROUP BY status;
            CREATE INDEX IF NOT EXISTS jobs_list_status ON jobs (workspace, status, created_at, id);
            CREATE INDEX IF NOT EXISTS jobs_ended ON jobs (updated_at)
                WHERE status IN ('success', 'failed', 'cancelled');
            PRAGMA user_version = 6;
            COMMIT;",
        )
        .map_err(err)?;
    }
    if wanted(7) {
        // The console lists a workspace's jobs by domain and a parent's
        // follow-up jobs: both live inside the (possibly sealed) spec, so
        // they get columns of their own, written with the job, and indexes
        // that make either list a keyset range. `jobs_list_domain_status`
        // keeps a domain + rare status filter a range too. Existing rows
        // are filled at open, once the key can read their specs
        // (`backfill_job_index`, flagged by the `meta` row).
        conn.execute_batch(&format!(
            "BEGIN;
            ALTER TABLE jobs ADD COLUMN domain TEXT;
            ALTER TABLE jobs ADD COLUMN parent_id TEXT;
            CREATE INDEX IF NOT EXISTS jobs_list_domain
                ON jobs (workspace, domain, created_at, id);
            CREATE INDEX IF NOT EXISTS jobs_list_domain_status
                ON jobs (workspace, domain, status, created_at, id);
            CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_id, created_at, id)
                WHERE parent_id IS NOT NULL;
            INSERT OR REPLACE INTO meta (name, value)
                SELECT '{BACKFILL_JOB_INDEX}', x'' WHERE EXISTS (SELECT 1 FROM jobs);
            PRAGMA user_version = 7;
            COMMIT;"
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// Fill `domain` and `parent_id` of the jobs stored before schema 7 from
/// their specs, in one transaction, if the migration flagged it; returns
/// how many jobs were read.
fn backfill_job_index(conn: &Connection, seal: &SealRef) -> Result<u64, StoreError> {
    let pending = conn
        .query_row(
            "SELECT 1 FROM meta WHERE name = ?1",
            params![BACKFILL_JOB_INDEX],
            |_| Ok(()),
        )
        .optional()
        .map_err(err)?
        .is_some();
    if !pending {
        return Ok(0);
    }
    let tx = conn.unchecked_transaction().map_err(err)?;
    let mut n = 0u64;
    {
        let mut read = tx.prepare("SELECT rowid, spec FROM jobs").map_err(err)?;
        let mut write = tx
            .prepare("UPDATE jobs SET domain = ?2, parent_id = ?3 WHERE rowid = ?1")
            .map_err(err)?;
        let rows = read
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, get_text(r, 1, seal, JOBS_SPEC)?))
            })
            .map_err(err)?;
        for row in rows {
            let (rowid, spec) = row.map_err(|e| err(format!("indexing stored jobs: {e}")))?;
            write
                .execute(params![
                    rowid,
                    super::job_domain(&spec),
                    super::job_parent(&spec)
                ])
                .map_err(err)?;
            n += 1;
        }
    }
    tx.execute(
        "DELETE FROM meta WHERE name = ?1",
        params![BACKFILL_JOB_INDEX],
    )
    .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(n)
}

/// Counts by status from the jobs themselves (a scan of the `jobs_due`
/// index), in status order.
fn scan_counts(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(err)
}

/// Counts by status as kept in `job_counts`, in status order.
fn kept_counts(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT status, n FROM job_counts WHERE n != 0 ORDER BY status")
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(err)
}

/// At start, check the kept counts against the jobs (one index scan, once)
/// and rebuild them if they differ: only a hand-edited file or a bug can
/// make them drift, and the gauges and status page would then be wrong
/// until the next restart instead of forever.
fn check_counts(conn: &Connection) -> Result<(), StoreError> {
    let truth = scan_counts(conn)?;
    let kept = kept_counts(conn)?;
    if truth != kept {
        tracing::warn!(
            ?kept,
            ?truth,
            "storage: job counts did not match the jobs; rebuilt"
        );
        conn.execute_batch(
            "BEGIN;
            DELETE FROM job_counts;
            INSERT INTO job_counts (status, n) SELECT status, COUNT(*) FROM jobs GROUP BY status;
            COMMIT;",
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Compare the configured key with the key-check value stored by the first
/// start with a key (and store it on that start).
fn check_key(conn: &Connection, seal: Option<&Seal>) -> Result<(), StoreError> {
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE name = ?1",
            params![KEY_CHECK],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    match (seal, stored) {
        (Some(s), Some(check)) => match s.open(KEY_CHECK_PURPOSE, &check) {
            Ok(v) if v == KEY_CHECK_VALUE => Ok(()),
            _ => Err(err(format!(
                "{WRONG_KEY}: the database was encrypted with another key; start with the key it was written with"
            ))),
        },
        (Some(s), None) => {
            conn.execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2)",
                params![KEY_CHECK, s.seal(KEY_CHECK_PURPOSE, KEY_CHECK_VALUE)],
            )
            .map_err(err)?;
            Ok(())
        }
        (None, Some(_)) => Err(err(
            "the database holds values encrypted with storage.encryption_key, but no key is configured: set [storage] encryption_key_file or encryption_key_env",
        )),
        (None, None) => {
            tracing::info!(
                "stored job request headers (incl. Authorization), bodies and webhook secrets are kept in clear text in the data dir; set [storage] encryption_key_file or encryption_key_env to encrypt them"
            );
            Ok(())
        }
    }
}

/// Seal every value of [`SEALED_COLUMNS`] still in plaintext (written before
/// a key was configured); returns how many. One transaction: a crash
/// half-way leaves plaintext values, which stay readable and are sealed on
/// the next start.
fn seal_plaintext(conn: &Connection, seal: &Seal) -> Result<u64, StoreError> {
    let tx = conn.unchecked_transaction().map_err(err)?;
    let mut n = 0u64;
    for (table, column) in SEALED_COLUMNS {
        let purpose = format!("{table}.{column}");
        let rows: Vec<(i64, Vec<u8>)> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT rowid, {column} FROM {table} WHERE {column} IS NOT NULL
                     AND (typeof({column}) = 'text' OR substr({column}, 1, 4) != ?1)"
                ))
                .map_err(err)?;
            let rows = stmt
                .query_map(params![&seal::MAGIC[..]], |r| {
                    let v = match r.get_ref(1)? {
                        ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
                        _ => Vec::new(),
                    };
                    Ok((r.get(0)?, v))
                })
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)?
        };
        for (rowid, plain) in rows {
            tx.execute(
                &format!("UPDATE {table} SET {column} = ?1 WHERE rowid = ?2"),
                params![seal.seal(&purpose, &plain), rowid],
            )
            .map_err(err)?;
            n += 1;
        }
    }
    tx.commit().map_err(err)?;
    Ok(n)
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` until it completes: another connection
/// still finishing a checkpoint (a store of this process just closed) makes
/// it report busy instead of waiting. Bounded (about 2 s); a WAL that could
/// not be emptied is a warning, and is emptied by later checkpoints.
fn truncate_wal(conn: &Connection) {
    for _ in 0..200 {
        match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(0) => return,
            Ok(_) | Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    tracing::warn!("could not empty the WAL after encrypting old values; later checkpoints will");
}

/// A value to store in a sealed column: sealed with a key, else as before.
fn put_bytes(seal: &SealRef, purpose: &str, plain: &[u8]) -> Value {
    match seal {
        Some(s) => Value::Blob(s.seal(purpose, plain)),
        None => Value::Blob(plain.to_vec()),
    }
}

/// Like [`put_bytes`], taking the value (no copy without a key).
fn put_owned(seal: &SealRef, purpose: &str, plain: Vec<u8>) -> Value {
    match seal {
        Some(s) => Value::Blob(s.seal(purpose, &plain)),
        None => Value::Blob(plain),
    }
}

/// A text value to store in a sealed column (plain TEXT without a key).
fn put_text(seal: &SealRef, purpose: &str, plain: &str) -> Value {
    match seal {
        Some(s) => Value::Blob(s.seal(purpose, plain.as_bytes())),
        None => Value::Text(plain.to_string()),
    }
}

fn put_opt_text(seal: &SealRef, purpose: &str, plain: Option<&str>) -> Value {
    plain.map_or(Value::Null, |p| put_text(seal, purpose, p))
}

fn conversion(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Blob, Box::new(e))
}

/// A sealed column's value as stored (`None` for NULL), opened.
fn get_opt_bytes(
    r: &rusqlite::Row<'_>,
    idx: usize,
    seal: &SealRef,
    purpose: &str,
) -> rusqlite::Result<Option<Vec<u8>>> {
    match r.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        // Text is never sealed (sealed values are stored as BLOBs).
        ValueRef::Text(t) => Ok(Some(t.to_vec())),
        ValueRef::Blob(b) => seal::unseal(seal.as_deref(), purpose, b)
            .map(Some)
            .map_err(|e| conversion(idx, e)),
        ValueRef::Integer(_) | ValueRef::Real(_) => Err(rusqlite::Error::InvalidColumnType(
            idx,
            purpose.to_string(),
            r.get_ref(idx)?.data_type(),
        )),
    }
}

fn get_bytes(
    r: &rusqlite::Row<'_>,
    idx: usize,
    seal: &SealRef,
    purpose: &str,
) -> rusqlite::Result<Vec<u8>> {
    get_opt_bytes(r, idx, seal, purpose)?
        .ok_or_else(|| rusqlite::Error::InvalidColumnType(idx, purpose.to_string(), Type::Null))
}

fn get_opt_text(
    r: &rusqlite::Row<'_>,
    idx: usize,
    seal: &SealRef,
    purpose: &str,
) -> rusqlite::Result<Option<String>> {
    get_opt_bytes(r, idx, seal, purpose)?
        .map(|b| String::from_utf8(b).map_err(|e| conversion(idx, e)))
        .transpose()
}

fn get_text(
    r: &rusqlite::Row<'_>,
    idx: usize,
    seal: &SealRef,
    purpose: &str,
) -> rusqlite::Result<String> {
    get_opt_text(r, idx, seal, purpose)?
        .ok_or_else(|| rusqlite::Error::InvalidColumnType(idx, purpose.to_string(), Type::Null))
}

const JOB_COLUMNS: &str = "id, workspace, idempotent_key, status, spec, attempts, \
    next_attempt_at, lease_until, created_at, updated_at, result, claims";

fn job_row(r: &rusqlite::Row<'_>, seal: &SealRef) -> rusqlite::Result<JobRecord> {
    let status: String = r.get(3)?;
    Ok(JobRecord {
        id: r.get(0)?,
        workspace: r.get(1)?,
        idempotent_key: r.get(2)?,
        status: JobStatus::parse(&status).unwrap_or(JobStatus::Failed),
        spec: get_text(r, 4, seal, JOBS_SPEC)?,
        attempts: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        next_attempt_at: r.get::<_, i64>(6)?.max(0) as u64,
        lease_until: r.get::<_, i64>(7)?.max(0) as u64,
        created_at: r.get::<_, i64>(8)?.max(0) as u64,
        updated_at: r.get::<_, i64>(9)?.max(0) as u64,
        result: get_opt_text(r, 10, seal, JOBS_RESULT)?,
        claims: u32::try_from(r.get::<_, i64>(11)?).unwrap_or(0),
    })
}

const DELIVERY_COLUMNS: &str = "id, job_id, workspace, url, has_quorum_vote, payload, state, \
    attempts, next_attempt_at, last_status, last_error, updated_at";

fn delivery_row(r: &rusqlite::Row<'_>, seal: &SealRef) -> rusqlite::Result<Delivery> {
    let state: String = r.get(6)?;
    Ok(Delivery {
        id: r.get(0)?,
        job_id: r.get(1)?,
        workspace: r.get(2)?,
        url: get_text(r, 3, seal, DELIVERIES_URL)?,
        has_quorum_vote: r.get::<_, i64>(4)? != 0,
        payload: get_bytes(r, 5, seal, DELIVERIES_PAYLOAD)?,
        state: DeliveryState::parse(&state).unwrap_or(DeliveryState::Failed),
        attempts: u32::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
        next_attempt_at: r.get::<_, i64>(8)?.max(0) as u64,
        last_status: r
            .get::<_, Option<i64>>(9)?
            .and_then(|v| u16::try_from(v).ok()),
        last_error: r.get(10)?,
        updated_at: r.get::<_, i64>(11)?.max(0) as u64,
    })
}

/// Insert `job` unless its `(workspace, idempotent_key)` exists; returns the
/// existing job then.
fn insert_job(
    tx: &Connection,
    job: &JobRecord,
    seal: &SealRef,
) -> Result<Option<JobRecord>, StoreError> {
    let existing = tx
        .query_row(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE workspace = ?1 AND idempotent_key = ?2"),
            params![job.workspace, job.idempotent_key],
            |r| job_row(r, seal),
        )
        .optional()
        .map_err(err)?;
    if existing.is_some() {
        return Ok(existing);
    }
    tx.execute(
        &format!(
            "INSERT INTO jobs ({JOB_COLUMNS}, domain, parent_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ),
        params![
            job.id,
            job.workspace,
            job.idempotent_key,
            job.status.as_str(),
            put_text(seal, JOBS_SPEC, &job.spec),
            i64::from(job.attempts),
            job.next_attempt_at as i64,
            job.lease_until as i64,
            job.created_at as i64,
            job.updated_at as i64,
            put_opt_text(seal, JOBS_RESULT, job.result.as_deref()),
            i64::from(job.claims),
            super::job_domain(&job.spec),
            super::job_parent(&job.spec)
        ],
    )
    .map_err(err)?;
    Ok(None)
}

fn get_job(c: &Connection, id: &str, seal: &SealRef) -> Result<Option<JobRecord>, StoreError> {
    c.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
        params![id],
        |r| job_row(r, seal),
    )
    .optional()
    .map_err(err)
}

/// One job's end in one transaction: the status and result (if the claim
/// is still the job's), its webhook deliveries, its follow-up jobs.
fn finish_job(
    c: &mut Connection,
    id: &str,
    claims: Option<u32>,
    end: &JobEnd,
    result: &Value,
    payload: &Value,
    seal: &SealRef,
) -> Result<bool, StoreError> {
    let tx = c.transaction().map_err(err)?;
    let now = super::now_ms() as i64;
    let changed = tx
        .execute(
            "UPDATE jobs SET status = ?2, result = ?3, lease_until = 0, updated_at = ?4,
         attempts = attempts + ?6
         WHERE id = ?1 AND status NOT IN ('success', 'failed', 'cancelled')
           AND (?5 IS NULL OR claims = ?5)",
            params![
                id,
                end.status.as_str(),
                result,
                now,
                claims.map(i64::from),
                i64::from(end.calls)
            ],
        )
        .map_err(err)?;
    if changed == 0 {
        return Ok(false);
    }
    let workspace: String = tx
        .query_row(
            "SELECT workspace FROM jobs WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )
        .map_err(err)?;
    for d in &end.deliveries {
        tx.execute(
            "INSERT INTO deliveries (job_id, workspace, url, has_quorum_vote, payload,
         state, attempts, next_attempt_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6)",
            params![
                id,
                workspace,
                put_text(seal, DELIVERIES_URL, &d.url),
                i64::from(d.has_quorum_vote),
                payload,
                now
            ],
        )
        .map_err(err)?;
    }
    for child in &end.children {
        insert_job(&tx, child, seal)?;
    }
    tx.commit().map_err(err)?;
    Ok(true)
}

/// One batch of ended jobs past their retention whose webhooks are settled,
/// oldest first; `jobs_ended` (a partial index on ended jobs) finds them
/// without reading live jobs. Named, because the planner (without
/// statistics) prefers `jobs_due (status, ...)` for the `IN` list and would
/// then sort every ended job by `updated_at`.
const JOBS_SWEEP_BATCH: &str = "SELECT id FROM jobs INDEXED BY jobs_ended
     WHERE status IN ('success', 'failed', 'cancelled') AND updated_at < ?1
       AND NOT EXISTS (SELECT 1 FROM deliveries d
                       WHERE d.job_id = jobs.id AND d.state = 'pending')
     ORDER BY updated_at LIMIT ?2";

/// One batch of expired idempotency records with their sizes, oldest first.
const IDEMPOTENCY_SWEEP_BATCH: &str =
    "SELECT rowid, length(headers) + length(body) FROM idempotency
     WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2";

/// The job list query for a status filter (or none) and a cursor: none,
/// a time only (`Some(true)`: an empty id), or `(created_at, id)`. Each
/// shape is its own statement so that SQLite can walk `jobs_list` (or
/// `jobs_list_status`) backwards from the cursor and stop after `limit`
/// rows: one generic statement with `?2 IS NULL OR ...` terms would be
/// planned for the worst case and scan the workspace from its newest job.
/// With `by_domain`, the same walk of `jobs_list_domain` (or
/// `jobs_list_domain_status`).
/// Parameters: ?1 workspace, ?2 status, ?3 cursor time, ?4 cursor id,
/// ?5 limit (all five are bound whichever appear), ?6 domain (bound with
/// `by_domain` only).
fn jobs_list_sql(by_status: bool, by_domain: bool, after_time_only: Option<bool>) -> String {
    let status = match (by_status, by_domain) {
        (false, false) => "",
        (true, false) => " AND status = ?2",
        (false, true) => " AND domain = ?6",
        (true, true) => " AND domain = ?6 AND status = ?2",
    };
    let cursor = match after_time_only {
        None => "",
        Some(true) => " AND created_at <= ?3",
        Some(false) => " AND (created_at, id) < (?3, ?4)",
    };
    format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE workspace = ?1{status}{cursor}
         ORDER BY created_at DESC, id DESC LIMIT ?5"
    )
}

/// A parent's follow-up jobs, oldest first: a range of `jobs_parent`.
fn job_children_sql() -> String {
    format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE parent_id = ?1
         ORDER BY created_at, id LIMIT ?2"
    )
}

impl EmbeddedStore {
    /// One page of the job list (see [`jobs_list_sql`]).
    async fn list_page(
        &self,
        workspace: &str,
        domain: Option<&str>,
        status: Option<JobStatus>,
        limit: usize,
        after: Option<(u64, String)>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let workspace = workspace.to_string();
        let domain = domain.map(str::to_string);
        let seal = self.seal.clone();
        self.read(move |c| {
            let sql = jobs_list_sql(
                status.is_some(),
                domain.is_some(),
                after.as_ref().map(|(_, id)| id.is_empty()),
            );
            let (after_t, after_id) = after
                .map(|(t, id)| (t.min(i64::MAX as u64) as i64, id))
                .unwrap_or((i64::MAX, String::new()));
            let mut values: Vec<Value> = vec![
                Value::Text(workspace),
                status.map_or(Value::Null, |s| Value::Text(s.as_str().into())),
                Value::Integer(after_t),
                Value::Text(after_id),
                Value::Integer(limit.min(i64::MAX as usize) as i64),
            ];
            // ?6 appears only in the domain statements (SQLite counts
            // parameters up to the highest number used).
            if let Some(d) = domain {
                values.push(Value::Text(d));
            }
            let mut stmt = c.prepare_cached(&sql).map_err(err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values), |r| job_row(r, &seal))
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
        .await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
                .map_err(err)
        })
        .await
    }

    async fn learned_limits(&self) -> Result<Vec<LearnedLimit>, StoreError> {
        self.read(|c| {
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
        self.write(move |c| {
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
        let seal = self.seal.clone();
        self.read(move |c| {
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
                        headers: get_bytes(r, 3, &seal, IDEMPOTENCY_HEADERS)?,
                        body: get_bytes(r, 4, &seal, IDEMPOTENCY_BODY)?,
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
        let seal = self.seal.clone();
        self.blocking(move |inner| {
            // Sealed (up to 10 MiB of ChaCha20) before taking the writer, so
            // other writes wait only for the commit itself.
            let headers = put_owned(&seal, IDEMPOTENCY_HEADERS, record.headers);
            let body = put_owned(&seal, IDEMPOTENCY_BODY, record.body);
            inner.write(|c| {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO idempotency
                     (scope, fingerprint, status, reason, headers, body, created_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        record.scope,
                        record.fingerprint,
                        i64::from(record.status),
                        record.reason,
                        headers,
                        body,
                        record.created_at.min(i64::MAX as u64) as i64,
                        record.expires_at.min(i64::MAX as u64) as i64
                    ])
                })
                .map_err(err)?;
                Ok(())
            })
        })
        .await
    }

    async fn idempotency_sweep(&self, now_ms: u64) -> Result<u64, StoreError> {
        let now = now_ms.min(i64::MAX as u64) as i64;
        let mut total = 0u64;
        loop {
            let n = self
                .write(move |c| {
                    let tx = c.transaction().map_err(err)?;
                    // Oldest first, up to a row and a byte budget (at least
                    // one row, whatever its size).
                    let rowids: Vec<i64> = {
                        let mut stmt = tx.prepare_cached(IDEMPOTENCY_SWEEP_BATCH).map_err(err)?;
                        let rows = stmt
                            .query_map(params![now, SWEEP_BATCH as i64], |r| {
                                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                            })
                            .map_err(err)?;
                        let mut bytes = 0i64;
                        let mut out = Vec::new();
                        for row in rows {
                            let (rowid, len) = row.map_err(err)?;
                            if !out.is_empty() && bytes.saturating_add(len) > SWEEP_BATCH_BYTES {
                                break;
                            }
                            bytes = bytes.saturating_add(len);
                            out.push(rowid);
                        }
                        out
                    };
                    {
                        let mut del = tx
                            .prepare_cached("DELETE FROM idempotency WHERE rowid = ?1")
                            .map_err(err)?;
                        for rowid in &rowids {
                            del.execute(params![rowid]).map_err(err)?;
                        }
                    }
                    tx.commit().map_err(err)?;
                    Ok(rowids.len())
                })
                .await?;
            total += n as u64;
            if n == 0 {
                return Ok(total);
            }
            // Writers queued behind this batch go first.
            tokio::task::yield_now().await;
        }
    }

    async fn job_insert(&self, job: JobRecord) -> Result<Option<JobRecord>, StoreError> {
        let seal = self.seal.clone();
        self.write(move |c| {
            let tx = c.transaction().map_err(err)?;
            let existing = insert_job(&tx, &job, &seal)?;
            tx.commit().map_err(err)?;
            Ok(existing)
        })
        .await
    }

    async fn job_get(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let id = id.to_string();
        let seal = self.seal.clone();
        self.read(move |c| get_job(c, &id, &seal)).await
    }

    async fn jobs_claim(
        &self,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let seal = self.seal.clone();
        self.write(move |c| {
            let tx = c.transaction().map_err(err)?;
            let ids: Vec<String> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT id FROM jobs
                         WHERE (status IN ('queued', 'retrying') AND next_attempt_at <= ?1)
                            OR (status = 'in_flight' AND lease_until <= ?1)
                         ORDER BY next_attempt_at, created_at LIMIT ?2",
                    )
                    .map_err(err)?;
                let rows = stmt
                    .query_map(params![now_ms as i64, limit as i64], |r| r.get(0))
                    .map_err(err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(err)?
            };
            let mut claimed = Vec::with_capacity(ids.len());
            for id in ids {
                tx.execute(
                    "UPDATE jobs SET status = 'in_flight', claims = claims + 1,
                     lease_until = ?2, updated_at = ?3 WHERE id = ?1",
                    params![id, now_ms.saturating_add(lease_ms) as i64, now_ms as i64],
                )
                .map_err(err)?;
                if let Some(job) = get_job(&tx, &id, &seal)? {
                    claimed.push(job);
                }
            }
            tx.commit().map_err(err)?;
            Ok(claimed)
        })
        .await
    }

    async fn jobs_release_leases(&self) -> Result<u64, StoreError> {
        self.write(|c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = 'retrying', lease_until = 0, next_attempt_at = 0
                     WHERE status = 'in_flight'",
                    [],
                )
                .map_err(err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn job_renew(&self, id: &str, claims: u32, lease_until: u64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET lease_until = ?3
                     WHERE id = ?1 AND claims = ?2 AND status = 'in_flight'",
                    params![id, i64::from(claims), lease_until as i64],
                )
                .map_err(err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn job_reschedule(
        &self,
        id: &str,
        claims: u32,
        status: JobStatus,
        next_attempt_at: u64,
        calls: u32,
    ) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = ?3, next_attempt_at = ?4, lease_until = 0,
                     updated_at = ?5, attempts = attempts + ?6
                     WHERE id = ?1 AND claims = ?2 AND status = 'in_flight'",
                    params![
                        id,
                        i64::from(claims),
                        status.as_str(),
                        next_attempt_at.min(i64::MAX as u64) as i64,
                        super::now_ms() as i64,
                        i64::from(calls)
                    ],
                )
                .map_err(err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn job_finish(
        &self,
        id: &str,
        claims: Option<u32>,
        end: JobEnd,
    ) -> Result<bool, StoreError> {
        let id = id.to_string();
        let seal = self.seal.clone();
        self.blocking(move |inner| {
            // Sealed before taking the writer (a payload can be large).
            let result = put_text(&seal, JOBS_RESULT, &end.result);
            let payload = put_bytes(&seal, DELIVERIES_PAYLOAD, &end.payload);
            inner.write(|c| finish_job(c, &id, claims, &end, &result, &payload, &seal))
        })
        .await
    }

    async fn jobs_list(
        &self,
        workspace: &str,
        status: Option<JobStatus>,
        limit: usize,
        after: Option<(u64, String)>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.list_page(workspace, None, status, limit, after).await
    }

    async fn jobs_list_by_domain(
        &self,
        workspace: &str,
        domain: &str,
        status: Option<JobStatus>,
        limit: usize,
        after: Option<(u64, String)>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.list_page(workspace, Some(domain), status, limit, after)
            .await
    }

    async fn job_children(
        &self,
        parent_id: &str,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let parent_id = parent_id.to_string();
        let seal = self.seal.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&job_children_sql()).map_err(err)?;
            let rows = stmt
                .query_map(
                    params![parent_id, limit.min(i64::MAX as usize) as i64],
                    |r| job_row(r, &seal),
                )
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
        .await
    }

    async fn job_requeue(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = 'queued', next_attempt_at = ?2, lease_until = 0,
                     attempts = 0, updated_at = ?2
                     WHERE id = ?1 AND status IN ('failed', 'cancelled')",
                    params![id, now_ms as i64],
                )
                .map_err(err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn jobs_sweep(&self, before_ms: u64) -> Result<u64, StoreError> {
        let before = before_ms.min(i64::MAX as u64) as i64;
        let mut total = 0u64;
        loop {
            let n = self
                .write(move |c| {
                    let tx = c.transaction().map_err(err)?;
                    let ids: Vec<String> = {
                        let mut stmt = tx.prepare_cached(JOBS_SWEEP_BATCH).map_err(err)?;
                        let rows = stmt
                            .query_map(params![before, SWEEP_BATCH as i64], |r| r.get(0))
                            .map_err(err)?;
                        rows.collect::<Result<Vec<_>, _>>().map_err(err)?
                    };
                    {
                        let mut del_deliveries = tx
                            .prepare_cached("DELETE FROM deliveries WHERE job_id = ?1")
                            .map_err(err)?;
                        let mut del_job = tx
                            .prepare_cached("DELETE FROM jobs WHERE id = ?1")
                            .map_err(err)?;
                        for id in &ids {
                            del_deliveries.execute(params![id]).map_err(err)?;
                            del_job.execute(params![id]).map_err(err)?;
                        }
                    }
                    tx.commit().map_err(err)?;
                    Ok(ids.len())
                })
                .await?;
            total += n as u64;
            if n < SWEEP_BATCH {
                return Ok(total);
            }
            // Writers queued behind this batch go first.
            tokio::task::yield_now().await;
        }
    }

    async fn job_cancel(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = 'cancelled', lease_until = 0, updated_at = ?2
                     WHERE id = ?1 AND status NOT IN ('success', 'failed', 'cancelled')",
                    params![id, super::now_ms() as i64],
                )
                .map_err(err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn job_counts(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        self.read(|c| {
            Ok(kept_counts(c)?
                .into_iter()
                .filter_map(|(status, n)| Some((JobStatus::parse(&status)?, n.max(0) as u64)))
                .collect())
        })
        .await
    }

    async fn jobs_next_due(&self) -> Result<Option<u64>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT MIN(t) FROM (
                    SELECT MIN(next_attempt_at) AS t FROM jobs WHERE status IN ('queued', 'retrying')
                    UNION ALL
                    SELECT MIN(lease_until) AS t FROM jobs WHERE status = 'in_flight')",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map(|v| v.map(|t| t.max(0) as u64))
            .map_err(err)
        })
        .await
    }

    async fn deliveries_due(&self, now_ms: u64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let seal = self.seal.clone();
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries
                     WHERE state = 'pending' AND next_attempt_at <= ?1
                     ORDER BY next_attempt_at, id LIMIT ?2"
                ))
                .map_err(err)?;
            let rows = stmt
                .query_map(params![now_ms as i64, limit as i64], |r| {
                    delivery_row(r, &seal)
                })
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
        .await
    }

    async fn delivery_update(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let d = delivery.clone();
        self.write(move |c| {
            c.execute(
                "UPDATE deliveries SET state = ?2, attempts = ?3, next_attempt_at = ?4,
                 last_status = ?5, last_error = ?6, updated_at = ?7 WHERE id = ?1",
                params![
                    d.id,
                    d.state.as_str(),
                    i64::from(d.attempts),
                    d.next_attempt_at as i64,
                    d.last_status.map(i64::from),
                    d.last_error,
                    d.updated_at as i64
                ],
            )
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn deliveries_for_job(&self, job_id: &str) -> Result<Vec<Delivery>, StoreError> {
        let job_id = job_id.to_string();
        let seal = self.seal.clone();
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE job_id = ?1 ORDER BY id"
                ))
                .map_err(err)?;
            let rows = stmt
                .query_map(params![job_id], |r| delivery_row(r, &seal))
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)
        })
        .await
    }

    async fn deliveries_for_jobs(&self, job_ids: &[String]) -> Result<Vec<Delivery>, StoreError> {
        let job_ids = job_ids.to_vec();
        let seal = self.seal.clone();
        // One read connection and one prepared statement for the page.
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE job_id = ?1 ORDER BY id"
                ))
                .map_err(err)?;
            let mut out = Vec::new();
            for id in &job_ids {
                let rows = stmt
                    .query_map(params![id], |r| delivery_row(r, &seal))
                    .map_err(err)?;
                for row in rows {
                    out.push(row.map_err(err)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn deliveries_next_due(&self) -> Result<Option<u64>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map(|v| v.map(|t| t.max(0) as u64))
            .map_err(err)
        })
        .await
    }

    async fn secrets_get(&self, workspace: &str) -> Result<Option<WebhookSecrets>, StoreError> {
        let workspace = workspace.to_string();
        let seal = self.seal.clone();
        self.read(move |c| {
            c.query_row(
                "SELECT primary_secret, secondary_secret FROM webhook_secrets WHERE workspace = ?1",
                params![workspace],
                |r| {
                    Ok(WebhookSecrets {
                        workspace: workspace.clone(),
                        primary: get_text(r, 0, &seal, SECRETS_PRIMARY)?,
                        secondary: get_opt_text(r, 1, &seal, SECRETS_SECONDARY)?,
                    })
                },
            )
            .optional()
            .map_err(err)
        })
        .await
    }

    async fn secrets_put(&self, secrets: WebhookSecrets) -> Result<(), StoreError> {
        let seal = self.seal.clone();
        self.write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO webhook_secrets (workspace, primary_secret, secondary_secret)
                 VALUES (?1, ?2, ?3)",
                params![
                    secrets.workspace,
                    put_text(&seal, SECRETS_PRIMARY, &secrets.primary),
                    put_opt_text(&seal, SECRETS_SECONDARY, secrets.secondary.as_deref())
                ],
            )
            .map_err(err)?;
            Ok(())
        })
        .await
    }

    async fn secrets_delete(&self, workspace: &str) -> Result<bool, StoreError> {
        let workspace = workspace.to_string();
        self.write(move |c| {
            let n = c
                .execute(
                    "DELETE FROM webhook_secrets WHERE workspace = ?1",
                    params![workspace],
                )
                .map_err(err)?;
            Ok(n > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, contains, fill, job, read_back, record, PLANTED};

    #[tokio::test]
    async fn idempotency_records_round_trip_and_hide_when_expired() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::idempotency_records_round_trip_and_hide_when_expired(&s, 500).await;
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
    async fn a_claim_takes_due_jobs_in_due_order_up_to_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::a_claim_takes_due_jobs_in_due_order_up_to_its_limit(&s).await;
    }

    #[tokio::test]
    async fn jobs_dedupe_claim_in_order_and_lapsed_leases_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::jobs_dedupe_and_claim_under_a_lease(&s).await;
        // A crash: the lapsed leases are claimable after the restart.
        drop(s);
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::jobs_fence_finish_deliver_and_sweep(&s, &s).await;
    }

    /// Counts by status from the jobs themselves, as `job_counts` answers.
    fn scanned(s: &EmbeddedStore) -> Vec<(JobStatus, u64)> {
        let c = s.inner.writer.lock().unwrap();
        scan_counts(&c)
            .unwrap()
            .into_iter()
            .map(|(st, n)| (JobStatus::parse(&st).unwrap(), n as u64))
            .collect()
    }

    async fn assert_counts(s: &EmbeddedStore, step: &str) {
        let kept = s.job_counts().await.unwrap();
        assert_eq!(kept, scanned(s), "after {step}");
    }

    #[tokio::test]
    async fn counts_stay_right_across_every_status_change() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::counts_stay_right_through_requeue(&s, async |step| {
            assert_counts(&s, step).await
        })
        .await;
        assert_eq!(s.jobs_release_leases().await.unwrap(), 1, "j3");
        assert_counts(&s, "release leases").await;
        assert_eq!(s.jobs_sweep(u64::MAX / 2).await.unwrap(), 1, "j1");
        assert_counts(&s, "sweep").await;
        let counts = s.job_counts().await.unwrap();
        assert_eq!(
            counts,
            vec![(JobStatus::Queued, 4), (JobStatus::Retrying, 2)],
            "j2 j4 j5 child queued, j0 j3 retrying"
        );
    }

    #[tokio::test]
    async fn counts_that_drifted_are_rebuilt_at_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.job_insert(job("j1", "k1", 1)).await.unwrap();
            s.job_insert(job("j2", "k2", 1)).await.unwrap();
            let c = s.inner.writer.lock().unwrap();
            c.execute_batch(
                "UPDATE job_counts SET n = 99 WHERE status = 'queued';
                 INSERT INTO job_counts (status, n) VALUES ('failed', 3);",
            )
            .unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.job_counts().await.unwrap(), vec![(JobStatus::Queued, 2)]);
    }

    #[tokio::test]
    async fn reads_proceed_while_a_write_transaction_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        s.idempotency_put(record("live", u64::MAX / 2))
            .await
            .unwrap();
        s.job_insert(job("j1", "k1", 1)).await.unwrap();
        let (opened_tx, opened) = std::sync::mpsc::channel();
        let (release_tx, release) = std::sync::mpsc::channel::<()>();
        let inner = s.inner.clone();
        let writer = std::thread::spawn(move || {
            inner
                .write(|c| {
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .map_err(err)?;
                    tx.execute("UPDATE jobs SET status = 'cancelled' WHERE id = 'j1'", [])
                        .map_err(err)?;
                    opened_tx.send(()).unwrap();
                    // Held until the reads below have answered.
                    release.recv().unwrap();
                    tx.commit().map_err(err)
                })
                .unwrap();
        });
        opened.recv().unwrap();
        let reads = async {
            let r = s.idempotency_get("live", 1).await.unwrap();
            let j = s.job_get("j1").await.unwrap().unwrap();
            let counts = s.job_counts().await.unwrap();
            let page = s.jobs_list("default", None, 10, None).await.unwrap();
            (r, j, counts, page)
        };
        let (r, j, counts, page) = tokio::time::timeout(std::time::Duration::from_secs(30), reads)
            .await
            .expect("reads waited for the open write transaction");
        assert!(r.is_some());
        // The last committed state: the open transaction is not visible.
        assert_eq!(j.status, JobStatus::Queued);
        assert_eq!(counts, vec![(JobStatus::Queued, 1)]);
        assert_eq!(page.len(), 1);
        release_tx.send(()).unwrap();
        writer.join().unwrap();
        assert_eq!(
            s.job_get("j1").await.unwrap().unwrap().status,
            JobStatus::Cancelled
        );
        assert_eq!(
            s.job_counts().await.unwrap(),
            vec![(JobStatus::Cancelled, 1)]
        );
    }

    #[tokio::test]
    async fn durability_settings_and_no_checkpoint_inside_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let c = s.inner.writer.lock().unwrap();
        let get = |name: &str| -> String {
            c.query_row(&format!("PRAGMA {name}"), [], |r| {
                Ok(match r.get_ref(0)? {
                    ValueRef::Integer(i) => i.to_string(),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    _ => String::new(),
                })
            })
            .unwrap()
        };
        assert_eq!(get("journal_mode"), "wal");
        // NORMAL (1): acknowledged commits are in the OS before we answer.
        assert_eq!(get("synchronous"), "1");
        assert_eq!(get("wal_autocheckpoint"), "0");
        assert_eq!(get("foreign_keys"), "1");
        drop(c);
        s.inner.readers.with(|r| {
            let e = r.execute("DELETE FROM jobs", []).unwrap_err();
            assert!(e.to_string().contains("readonly"), "{e}");
        });
    }

    #[tokio::test]
    async fn sweeps_delete_more_than_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let n = 2 * SWEEP_BATCH + 7;
        {
            let mut c = s.inner.writer.lock().unwrap();
            let tx = c.transaction().unwrap();
            for i in 0..n {
                let mut j = job(&format!("j{i}"), &format!("k{i}"), 1);
                j.status = JobStatus::Success;
                j.updated_at = 5;
                insert_job(&tx, &j, &None).unwrap();
                tx.execute(
                    "INSERT INTO idempotency
                     (scope, fingerprint, status, headers, body, created_at, expires_at)
                     VALUES (?1, 'f', 200, x'', x'00', 1, 5)",
                    params![format!("s{i}")],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        // One live job and one live record stay.
        s.job_insert(job("live", "live", 1)).await.unwrap();
        s.idempotency_put(record("live", 1_000)).await.unwrap();
        assert_eq!(s.jobs_sweep(10).await.unwrap(), n as u64);
        assert_eq!(s.idempotency_sweep(10).await.unwrap(), n as u64);
        assert_eq!(s.jobs_sweep(10).await.unwrap(), 0);
        assert_eq!(s.idempotency_sweep(10).await.unwrap(), 0);
        assert_eq!(s.job_counts().await.unwrap(), vec![(JobStatus::Queued, 1)]);
        assert!(s.idempotency_get("live", 10).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn sweeps_page_past_jobs_kept_for_pending_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::sweeps_page_past_jobs_kept_for_pending_deliveries(&s, SWEEP_BATCH).await;
    }

    /// The plan of `sql` with every parameter bound to NULL.
    fn plan(c: &Connection, sql: &str) -> String {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let n = stmt.parameter_count();
        let params: Vec<Value> = vec![Value::Null; n];
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join(" | ")
    }

    #[tokio::test]
    async fn job_list_and_sweep_queries_use_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let c = s.inner.writer.lock().unwrap();
        for by_domain in [false, true] {
            for (by_status, after, index) in [
                (false, None, "jobs_list"),
                (false, Some(false), "jobs_list"),
                (false, Some(true), "jobs_list"),
                (true, None, "jobs_list_status"),
                (true, Some(false), "jobs_list_status"),
                (true, Some(true), "jobs_list_status"),
            ] {
                let index = match (by_domain, by_status) {
                    (false, _) => index.to_string(),
                    (true, false) => "jobs_list_domain".to_string(),
                    (true, true) => "jobs_list_domain_status".to_string(),
                };
                let p = plan(&c, &jobs_list_sql(by_status, by_domain, after));
                let case = format!("domain {by_domain} status {by_status} {after:?}");
                assert!(p.contains(&format!("USING INDEX {index} (")), "{case}: {p}");
                assert!(!p.contains("TEMP B-TREE"), "{case}: {p}");
                if after.is_some() {
                    assert!(p.contains("created_at"), "a range on the cursor: {p}");
                }
            }
        }
        let p = plan(&c, &job_children_sql());
        assert!(p.contains("USING INDEX jobs_parent ("), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        let p = plan(&c, JOBS_SWEEP_BATCH);
        assert!(p.contains("USING INDEX jobs_ended"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        let p = plan(&c, IDEMPOTENCY_SWEEP_BATCH);
        assert!(p.contains("USING INDEX idempotency_expires"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        let p = plan(
            &c,
            "SELECT status, n FROM job_counts WHERE n != 0 ORDER BY status",
        );
        assert!(!p.contains("jobs"), "{p}");
    }

    #[tokio::test]
    async fn job_list_pages_through_equal_times_with_a_status_filter() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::job_list_pages_through_equal_times_with_a_status_filter(&s).await;
    }

    #[tokio::test]
    async fn job_list_by_domain_pages_follows_status_and_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::job_list_by_domain_pages_follows_status_and_sweep(&s).await;
    }

    #[tokio::test]
    async fn job_children_are_found_from_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::job_children_are_found_from_the_parent(&s).await;
    }

    /// A data file of schema 6 (before jobs had `domain` and `parent_id`)
    /// with jobs in it, written with `key` if given, as that version left it.
    fn schema_6_file(dir: &Path, key: Option<&EncryptionKey>) {
        let path = dir.join(files::DB_FILE);
        let conn = Connection::open(&path).unwrap();
        migrate_to(&conn, 6).unwrap();
        let seal: SealRef = key.map(|k| Arc::new(Seal::new(k)));
        check_key(&conn, seal.as_deref()).unwrap();
        for (id, spec, created) in [
            (
                "old1",
                r#"{"method":"GET","url":"https://API.Old.test/a"}"#,
                1,
            ),
            (
                "old2",
                r#"{"method":"GET","url":"https://hooks.test/","metadata":{"parent_job_id":"old1"}}"#,
                2,
            ),
            ("old3", r#"{"method":"GET"}"#, 3),
        ] {
            conn.execute(
                &format!(
                    "INSERT INTO jobs ({JOB_COLUMNS})
                     VALUES (?1, 'default', ?1, 'queued', ?2, 0, 1, 0, ?3, ?3, NULL, 0)"
                ),
                params![id, put_text(&seal, JOBS_SPEC, spec), created],
            )
            .unwrap();
        }
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 6);
    }

    #[tokio::test]
    async fn a_schema_6_file_gets_its_jobs_indexed_by_domain_and_parent_at_open() {
        for key in [None, Some(key(7))] {
            let dir = tempfile::tempdir().unwrap();
            schema_6_file(dir.path(), key.as_ref());
            let s = EmbeddedStore::open_with(dir.path(), key.as_ref()).unwrap();
            let listed = s
                .jobs_list_by_domain("default", "api.old.test", None, 10, None)
                .await
                .unwrap();
            assert_eq!(listed.len(), 1, "encrypted: {}", key.is_some());
            assert_eq!(listed[0].id, "old1");
            let children = s.job_children("old1", 10).await.unwrap();
            assert_eq!(children.len(), 1);
            assert_eq!(children[0].id, "old2");
            {
                let c = s.inner.writer.lock().unwrap();
                let version: i64 = c
                    .pragma_query_value(None, "user_version", |r| r.get(0))
                    .unwrap();
                assert_eq!(version, SCHEMA_VERSION);
                let flag: i64 = c
                    .query_row(
                        "SELECT COUNT(*) FROM meta WHERE name = ?1",
                        params![BACKFILL_JOB_INDEX],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(flag, 0, "the backfill ran once and cleared its flag");
                let no_domain: String = c
                    .query_row("SELECT id FROM jobs WHERE domain IS NULL", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(no_domain, "old3", "a spec without a URL has no domain");
            }
            // New jobs are indexed on insert next to the old ones.
            let mut j = job("new1", "new1", 1);
            j.spec = r#"{"url":"https://api.old.test/b"}"#.into();
            j.created_at = 9;
            s.job_insert(j).await.unwrap();
            drop(s);
            let s = EmbeddedStore::open_with(dir.path(), key.as_ref()).unwrap();
            let listed = s
                .jobs_list_by_domain("default", "api.old.test", None, 10, None)
                .await
                .unwrap();
            let ids: Vec<_> = listed.iter().map(|j| j.id.as_str()).collect();
            assert_eq!(ids, ["new1", "old1"]);
        }
    }

    #[tokio::test]
    async fn secrets_round_trip_and_never_debug_print() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::secrets_round_trip_and_never_debug_print(&s).await;
    }

    fn key(b: u8) -> EncryptionKey {
        EncryptionKey::from_bytes([b; 32])
    }

    /// Every byte SQLite keeps on disk for the store.
    fn disk_bytes(dir: &Path) -> Vec<u8> {
        let mut all = Vec::new();
        for f in ["ezthrottle.db", "ezthrottle.db-wal", "ezthrottle.db-shm"] {
            if let Ok(b) = std::fs::read(dir.join(f)) {
                all.extend(b);
            }
        }
        all
    }

    #[tokio::test]
    async fn with_a_key_nothing_sensitive_reaches_the_disk_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open_with(dir.path(), Some(&key(1))).unwrap();
            assert!(s.encrypted());
            fill(&s).await;
            read_back(&s).await;
            let bytes = disk_bytes(dir.path());
            assert!(bytes.len() > 4096, "the store wrote something");
            assert!(!contains(&bytes, PLANTED), "planted secret found on disk");
            // Control: the same data without a key is on disk in clear.
            let plain = tempfile::tempdir().unwrap();
            let p = EmbeddedStore::open(plain.path()).unwrap();
            fill(&p).await;
            assert!(contains(&disk_bytes(plain.path()), PLANTED));
        }
        // Same key: everything reads back.
        let s = EmbeddedStore::open_with(dir.path(), Some(&key(1))).unwrap();
        read_back(&s).await;
        drop(s);
        // Wrong key, or none: refused at open with a clear error.
        let e = EmbeddedStore::open_with(dir.path(), Some(&key(2)))
            .err()
            .expect("wrong key must be refused");
        assert!(e.to_string().contains(WRONG_KEY), "{e}");
        let e = EmbeddedStore::open(dir.path())
            .err()
            .expect("no key must be refused");
        assert!(e.to_string().contains("encryption_key"), "{e}");
    }

    #[tokio::test]
    async fn plaintext_from_before_the_key_is_readable_then_sealed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            assert!(!s.encrypted());
            fill(&s).await;
        }
        let s = EmbeddedStore::open_with(dir.path(), Some(&key(3))).unwrap();
        read_back(&s).await;
        // Nor is the plaintext left in the files (old WAL frames, free cells).
        assert!(!contains(&disk_bytes(dir.path()), PLANTED));
        // Every sealed column now holds a sealed BLOB, none a plaintext.
        {
            let c = s.inner.writer.lock().unwrap();
            for (table, column) in SEALED_COLUMNS {
                let plain: i64 = c
                    .query_row(
                        &format!(
                            "SELECT COUNT(*) FROM {table} WHERE {column} IS NOT NULL
                         AND (typeof({column}) = 'text' OR substr({column}, 1, 4) != ?1)"
                        ),
                        params![&seal::MAGIC[..]],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(plain, 0, "{table}.{column}");
            }
        }
        drop(s);
        // Sealed values in a modified file are an error, never garbage.
        {
            let c = Connection::open(dir.path().join("ezthrottle.db")).unwrap();
            let v: Vec<u8> = c
                .query_row("SELECT spec FROM jobs WHERE id = 'j1'", [], |r| r.get(0))
                .unwrap();
            let mut t = v.clone();
            let last = t.len() - 1;
            t[last] ^= 0x55;
            c.execute("UPDATE jobs SET spec = ?1 WHERE id = 'j1'", params![t])
                .unwrap();
        }
        let s = EmbeddedStore::open_with(dir.path(), Some(&key(3))).unwrap();
        let e = s.job_get("j1").await.unwrap_err();
        assert!(e.to_string().contains("cannot decrypt"), "{e}");
        assert!(s.job_get("j2").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn database_files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = data.join("ezthrottle.db");
        {
            // A database left by an older version, world-readable.
            let s = EmbeddedStore::open(&data).unwrap();
            s.job_insert(job("j1", "k1", 1)).await.unwrap();
        }
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = EmbeddedStore::open(&data).unwrap();
        s.job_insert(job("j2", "k2", 1)).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        for f in ["ezthrottle.db", "ezthrottle.db-wal", "ezthrottle.db-shm"] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
    }

    #[tokio::test]
    async fn learned_limits_survive_reopen_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.ping().await.unwrap();
            conformance::save_learned_limits(&s).await;
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        conformance::learned_limits_merged(&s).await;
    }
}

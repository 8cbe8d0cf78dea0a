//! The embedded store's connections: one writer, a few readers and a WAL
//! checkpointer.
//!
//! SQLite in WAL mode lets readers and one writer proceed at the same time,
//! but only on *separate* connections: a single connection behind a mutex
//! (what the store had) makes an idempotency look-up on the request path wait
//! behind a 10 MiB commit, a sweep or a job claim. So:
//!
//! - writes take the one writer connection (SQLite serialises writers
//!   anyway; a mutex in front of it makes that wait visible and cheap,
//!   instead of `SQLITE_BUSY` retries between several writer connections);
//! - reads take any idle connection of a small pool (`READERS`), each
//!   reading the last committed snapshot without taking any lock a writer
//!   needs;
//! - checkpoints (copying the WAL back into the database file, with its
//!   fsyncs) run on their own thread and connection, never inside a
//!   writer's commit, so a write is a WAL append and nothing more.
//!
//! Every call reaches these from the blocking pool (`spawn_blocking`),
//! never from an async worker: waiting for a connection, like any SQLite
//! call, may take milliseconds.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// Read connections. Reads are short indexed look-ups or pages of at most
/// 500 jobs; four lets request-path look-ups (idempotency, secrets) go on
/// while job list pages, the job runner and webhook deliveries read, on a
/// machine with a few cores. More would mostly add page caches (2 MiB each
/// by default).
pub const READERS: usize = 4;

/// How long the checkpointer lets commits accumulate before copying them
/// back: a checkpoint per commit would fsync the database file thousands of
/// times a second under a burst of submissions; this bounds the WAL to what
/// is written in this time (plus what a long-lived reader pins).
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(200);

/// After a burst the WAL file is truncated back to this size when it is
/// reset, rather than keeping its high-water mark on disk.
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

/// How long a connection waits for a lock held by another before giving up
/// with `SQLITE_BUSY`. Between our own connections only start-up recovery
/// and the checkpointer can hold one; a second process on the same file (an
/// operator's `sqlite3` shell) is the case this is for.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    Ok(conn)
}

/// The writer's settings (journal mode, durability, auto-checkpoint off).
///
/// `synchronous = NORMAL` in WAL mode: a commit is a `write()` of its WAL
/// frames, not an fsync; the frames are in the OS page cache the moment
/// the commit returns, so every acknowledged write survives `kill -9` of
/// the process (what we promise). Only a power loss or kernel crash can
/// drop the newest commits (never corrupt the file); `FULL` would fsync the
/// WAL on every commit to cover that too, at the cost of a disk flush per
/// job submission and per stored idempotency response.
pub fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(err)?;
    // Deleted rows (swept jobs with their stored headers) are zeroed in
    // the file instead of lingering in free pages.
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(err)?;
    // The checkpointer thread does this; a commit never does.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(err)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
        .map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    Ok(())
}

/// A fixed set of read connections; a caller waits (on the blocking pool)
/// when all are busy.
pub struct Readers {
    idle: Mutex<Vec<Connection>>,
    freed: Condvar,
}

impl Readers {
    /// Open `n` read connections to the database at `path`, whose schema is
    /// already migrated by the writer.
    pub fn open(path: &Path, n: usize) -> Result<Readers, StoreError> {
        let mut idle = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let conn = open_conn(path)?;
            // A reader that tried to write would be a bug; make it an error.
            conn.pragma_update(None, "query_only", "ON").map_err(err)?;
            idle.push(conn);
        }
        Ok(Readers {
            idle: Mutex::new(idle),
            freed: Condvar::new(),
        })
    }

    /// Run `f` on an idle read connection (blocking until one is free).
    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        let conn = {
            let mut idle = self.lock();
            loop {
                if let Some(c) = idle.pop() {
                    break c;
                }
                idle = self.freed.wait(idle).unwrap_or_else(|p| p.into_inner());
            }
        };
        // Given back even if `f` panics.
        let lent = Lent {
            pool: self,
            conn: Some(conn),
        };
        #[allow(
            clippy::expect_used,
            reason = "`conn` was set just above and is taken only in Drop"
        )]
        f(lent.conn.as_ref().expect("lent connection"))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Lent<'a> {
    pool: &'a Readers,
    conn: Option<Connection>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.lock().push(c);
            self.pool.freed.notify_one();
        }
    }
}

/// Wakes the checkpointer thread after commits; dropping it stops the
/// thread.
pub struct Checkpointer {
    wake: SyncSender<()>,
}

impl Checkpointer {
    /// Start the checkpointer thread with its own connection.
    pub fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = open_conn(path)?;
        // Capacity 1: commits arriving while a checkpoint runs coalesce
        // into one more.
        let (wake, rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("ezthrottle-wal".into())
            .spawn(move || checkpoint_loop(conn, rx))
            .map_err(err)?;
        Ok(Checkpointer { wake })
    }

    /// A transaction committed: there is WAL to copy back.
    pub fn committed(&self) {
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

fn checkpoint_loop(conn: Connection, rx: Receiver<()>) {
    while rx.recv().is_ok() {
        // PASSIVE: copies what no reader still needs, without waiting for
        // readers or blocking the writer.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "storage: WAL checkpoint failed");
        }
        std::thread::sleep(CHECKPOINT_PAUSE);
    }
}

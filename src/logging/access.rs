//! The access log: one line per request, written off the request path.
//!
//! Why not a plain `tracing::info!`: through `tracing_subscriber`'s fmt
//! layer the line cost ~8% of the CPU of a proxied request (field visitors
//! through `core::fmt`, styling wrappers, the scrubber, and one `write(2)`
//! to stderr per request while the worker thread waits; docs/performance.md).
//! Here the same line — byte for byte what the fmt layer prints, text or
//! JSON, checked by the tests below — is formatted with `itoa` and direct
//! copies into a per-thread buffer, scrubbed like every other line, and
//! handed to one writer thread that writes whatever has gathered in a single
//! call.
//!
//! What a user sees differently: access lines come up to [`GATHER`] (20 ms)
//! later than other lines logged at the same moment, and when stderr cannot keep
//! up (a stalled pipe) lines beyond [`BACKLOG`] bytes are dropped and
//! counted rather than stalling requests; the count is logged with the next
//! line that gets through, and `ezthrottle_log_lines_dropped_total` shows
//! it. The backlog is written out before a graceful exit ([`flush`]); a
//! `kill -9` loses at most what was still waiting for that one write.
//!
//! Filtering is unchanged: the line is written only when `EZTHROTTLE_LOG`
//! enables `ezthrottle::access` at `info` (field-value filters in a
//! directive are not applied to it), which is asked once, when logging
//! starts ([`settle`]). On a terminal, where lines are
//! coloured, and where [`super::init`] did not run (tests, embedders), the
//! line goes through `tracing` as before.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of access lines that may wait for the writer; past this they are
/// dropped (and counted). At ~200 bytes a line, about 40,000 lines.
pub const BACKLOG: usize = 8 << 20;

/// One request's access line. Only method, domain and path: query strings
/// and headers may hold credentials.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub method: &'a str,
    pub domain: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub outcome: &'a str,
    pub error: &'a str,
    pub attempts: u32,
    pub wait_ms: u64,
    pub duration_ms: u64,
    pub workspace: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Text,
    Json,
}

static FORMAT: OnceLock<Format> = OnceLock::new();
/// Whether `EZTHROTTLE_LOG` lets access lines through, asked once the
/// subscriber is in place ([`settle`]). The filter cannot change after that
/// (there is no reload layer), and `tracing::enabled!` asks the subscriber
/// every time it runs: ~185 instructions a request through the layered
/// filters (docs/performance.md, "The seventeenth pass").
static ENABLED: OnceLock<bool> = OnceLock::new();
static SINK: OnceLock<Sink> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Send access lines through the fast path in `format`, from now on.
/// Called once by [`super::init`] (not on a terminal).
pub(super) fn start(format: Format) {
    if SINK.get().is_none() {
        let sink = SINK.get_or_init(Sink::default);
        let spawned = std::thread::Builder::new()
            .name("ezthrottle-log".into())
            .spawn(move || sink.run());
        if let Err(e) = spawned {
            // Without a writer the fast path would only fill its backlog.
            eprintln!("ezthrottle: logging: cannot start the access-log writer: {e}");
            return;
        }
    }
    let _ = FORMAT.set(format);
}

/// Ask the installed subscriber, once, whether access lines are wanted.
/// Called by [`super::init`] after it has installed its subscriber.
pub(super) fn settle() {
    let _ = ENABLED.set(tracing::enabled!(
        target: "ezthrottle::access",
        tracing::Level::INFO
    ));
}

/// Access lines dropped because stderr did not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Write out every access line taken so far; returns once they are written
/// (bounded: gives up after 2 s if stderr is stuck).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.flush(std::time::Duration::from_secs(2));
    }
}

/// Log one request.
pub fn request(a: &Access<'_>) {
    let (Some(format), Some(sink)) = (FORMAT.get(), SINK.get()) else {
        // `info!` asks the subscriber itself.
        return via_tracing(a);
    };
    let enabled = match ENABLED.get() {
        Some(&enabled) => enabled,
        None => tracing::enabled!(target: "ezthrottle::access", tracing::Level::INFO),
    };
    if !enabled {
        return;
    }
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        match format {
            Format::Text => text(&mut line, SystemTime::now(), a),
            Format::Json => json(&mut line, SystemTime::now(), a),
        }
        match super::scrub(&line) {
            std::borrow::Cow::Borrowed(clean) => sink.push(clean.as_bytes()),
            std::borrow::Cow::Owned(clean) => sink.push(clean.as_bytes()),
        }
    });
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// The line [`request`] writes for `a` at `now`, appended to `out` (before
/// scrubbing): for the micro-benchmark in `benches/hot_path.rs`.
pub fn render(a: &Access<'_>, json_format: bool, now: SystemTime, out: &mut String) {
    if json_format {
        json(out, now, a);
    } else {
        text(out, now, a);
    }
}

/// The same event through `tracing` (its fmt layer formats it): the path
/// on a terminal and without [`super::init`], and the old path the
/// micro-benchmark compares with.
pub fn via_tracing(a: &Access<'_>) {
    tracing::info!(
        target: "ezthrottle::access",
        method = %a.method,
        domain = a.domain,
        path = a.path,
        status = a.status,
        outcome = a.outcome,
        error = a.error,
        attempts = a.attempts,
        wait_ms = a.wait_ms,
        duration_ms = a.duration_ms,
        workspace = %a.workspace,
        "request"
    );
}

/// `tracing_subscriber`'s `Full` text format, without ANSI: display fields
/// as they are, `&str` fields quoted as `{:?}` quotes them.
fn text(out: &mut String, now: SystemTime, a: &Access<'_>) {
    timestamp(out, now);
    out.push_str("  INFO ezthrottle::access: request method=");
    out.push_str(a.method);
    out.push_str(" domain=");
    debug_str(out, a.domain);
    out.push_str(" path=");
    debug_str(out, a.path);
    out.push_str(" status=");
    int(out, a.status);
    out.push_str(" outcome=");
    debug_str(out, a.outcome);
    out.push_str(" error=");
    debug_str(out, a.error);
    out.push_str(" attempts=");
    int(out, a.attempts);
    out.push_str(" wait_ms=");
    int(out, a.wait_ms);
    out.push_str(" duration_ms=");
    int(out, a.duration_ms);
    out.push_str(" workspace=");
    out.push_str(a.workspace);
    out.push('\n');
}

/// `tracing_subscriber`'s JSON format (fields nested under `fields`).
fn json(out: &mut String, now: SystemTime, a: &Access<'_>) {
    out.push_str("{\"timestamp\":\"");
    timestamp(out, now);
    out.push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"method\":");
    json_str(out, a.method);
    out.push_str(",\"domain\":");
    json_str(out, a.domain);
    out.push_str(",\"path\":");
    json_str(out, a.path);
    out.push_str(",\"status\":");
    int(out, a.status);
    out.push_str(",\"outcome\":");
    json_str(out, a.outcome);
    out.push_str(",\"error\":");
    json_str(out, a.error);
    out.push_str(",\"attempts\":");
    int(out, a.attempts);
    out.push_str(",\"wait_ms\":");
    int(out, a.wait_ms);
    out.push_str(",\"duration_ms\":");
    int(out, a.duration_ms);
    out.push_str(",\"workspace\":");
    json_str(out, a.workspace);
    out.push_str("},\"target\":\"ezthrottle::access\"}\n");
}

fn int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `{:?}` of a `&str`, copied directly when nothing needs escaping (the
/// usual domain, path and outcome).
fn debug_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        use std::fmt::Write as _;
        let _ = write!(out, "{s:?}");
    }
}

/// A JSON string; serde_json does the escaping.
fn json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

/// RFC 3339 in UTC with microseconds, as `tracing_subscriber`'s default
/// timer prints it (`2026-11-30T16:36:32.609573Z`). The date part is
/// computed once per second per thread.
fn timestamp(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            cached.0 = secs;
            cached.1 = civil(secs);
        }
        out.push_str(&cached.1);
    });
    let micros = since.subsec_micros();
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(micros);
    out.push('.');
    for _ in digits.len()..6 {
        out.push('0');
    }
    out.push_str(digits);
    out.push('Z');
}

thread_local! {
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second, UTC. Days to a civil date by
/// Howard Hinnant's `civil_from_days` (public domain): a dozen lines of
/// integer arithmetic, which is why no date crate is pulled in for it.
fn civil(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Lines waiting for the writer thread.
#[derive(Default)]
struct Sink {
    state: Mutex<Backlog>,
    /// Signalled when the backlog goes from empty to not, when a write ends
    /// (for [`flush`]), and by a flush.
    changed: Condvar,
}

#[derive(Default)]
struct Backlog {
    bytes: Vec<u8>,
    /// The writer is writing a batch taken from `bytes`.
    writing: bool,
    /// Lines dropped since the last report.
    dropped: u64,
    /// A flush waits: write at once.
    flushing: bool,
}

/// How long the writer lets lines gather after the first one: a line is on
/// stderr at most this much later than it would have been.
const GATHER: std::time::Duration = std::time::Duration::from_millis(20);

impl Sink {
    fn push(&self, line: &[u8]) {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if b.bytes.len() + line.len() > BACKLOG {
            b.dropped += 1;
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let wake = b.bytes.is_empty();
        b.bytes.extend_from_slice(line);
        drop(b);
        if wake {
            self.changed.notify_all();
        }
    }

    /// The writer thread: once a line arrives, let more gather for
    /// [`GATHER`], then write everything in one call. Waking for every line
    /// would cost a thread switch per request on a proxy pinned to one core
    /// — more than the synchronous write it replaces.
    fn run(&self) {
        let mut batch = Vec::with_capacity(64 << 10);
        loop {
            let dropped = {
                let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
                while b.bytes.is_empty() {
                    b = self.changed.wait(b).unwrap_or_else(|p| p.into_inner());
                }
                if !b.flushing {
                    drop(b);
                    std::thread::sleep(GATHER);
                    b = self.state.lock().unwrap_or_else(|p| p.into_inner());
                }
                std::mem::swap(&mut b.bytes, &mut batch);
                b.writing = true;
                std::mem::take(&mut b.dropped)
            };
            let mut err = std::io::stderr().lock();
            if dropped > 0 {
                let _ = writeln!(
                    err,
                    "ezthrottle: {dropped} access log lines dropped: standard error did not keep up"
                );
            }
            let _ = err.write_all(&batch);
            drop(err);
            // Keep a batch-sized buffer, not the largest burst ever seen.
            batch.clear();
            batch.shrink_to(64 << 10);
            let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
            b.writing = false;
            drop(b);
            self.changed.notify_all();
        }
    }

    fn flush(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // From now on the writer writes without gathering first.
        b.flushing = true;
        self.changed.notify_all();
        while !b.bytes.is_empty() || b.writing {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            b = match self.changed.wait_timeout(b, left) {
                Ok((b, _)) => b,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// What `tracing_subscriber` prints for the event, without its time.
    fn reference(a: &Access<'_>, json: bool) -> String {
        let out = Captured::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .without_time()
            .with_writer(out.clone());
        let dispatch = if json {
            tracing::Dispatch::new(tracing_subscriber::layer::SubscriberExt::with(
                tracing_subscriber::registry(),
                layer.json(),
            ))
        } else {
            tracing::Dispatch::new(tracing_subscriber::layer::SubscriberExt::with(
                tracing_subscriber::registry(),
                layer,
            ))
        };
        tracing::dispatcher::with_default(&dispatch, || via_tracing(a));
        let bytes = out.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes).unwrap_or_default()
    }

    fn sample<'a>(domain: &'a str, path: &'a str, workspace: &'a str) -> Access<'a> {
        Access {
            method: "POST",
            domain,
            path,
            status: 429,
            outcome: "forwarded",
            error: "",
            attempts: 3,
            wait_ms: 1_234,
            duration_ms: u64::MAX,
            workspace,
        }
    }

    const AWKWARD: [(&str, &str, &str); 4] = [
        ("api.test", "/v1/x", "default"),
        ("-", "/", "team-a"),
        ("b\u{e9}.test", "/a\"b\\c/\u{1}\u{7f}/\u{2028}", "w"),
        ("", "", ""),
    ];

    #[test]
    fn the_text_line_is_what_the_fmt_layer_prints() {
        let now = UNIX_EPOCH + std::time::Duration::from_micros(1_764_520_592_009_573);
        for (domain, path, ws) in AWKWARD {
            let a = sample(domain, path, ws);
            let mut ours = String::new();
            text(&mut ours, now, &a);
            let (ts, rest) = ours.split_at(27);
            assert_eq!(ts, "2025-11-30T16:36:32.009573Z");
            assert_eq!(rest.trim_start(), reference(&a, false).trim_start());
        }
    }

    #[test]
    fn the_json_line_is_what_the_fmt_layer_prints() {
        let now = UNIX_EPOCH + std::time::Duration::from_micros(951_782_400_000_001);
        for (domain, path, ws) in AWKWARD {
            let a = sample(domain, path, ws);
            let mut ours = String::new();
            json(&mut ours, now, &a);
            let mut ours: serde_json::Value = serde_json::from_str(&ours).unwrap_or_default();
            let theirs: serde_json::Value =
                serde_json::from_str(&reference(&a, true)).unwrap_or_default();
            assert_eq!(ours["timestamp"], "2000-02-29T00:00:00.000001Z");
            if let Some(o) = ours.as_object_mut() {
                o.remove("timestamp");
            }
            assert!(theirs.is_object());
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn civil_dates_across_leap_years_and_centuries() {
        assert_eq!(civil(0), "1970-01-01T00:00:00");
        assert_eq!(civil(951_868_799), "2000-02-29T23:59:59");
        assert_eq!(civil(4_107_542_400), "2100-03-01T00:00:00");
        assert_eq!(civil(1_798_761_599), "2026-12-31T23:59:59");
        // The largest second a SystemTime shows here is far past any log.
        assert_eq!(civil(253_402_300_799), "9999-12-31T23:59:59");
    }

    #[test]
    fn a_full_backlog_drops_and_counts_instead_of_growing() {
        let sink = Sink::default();
        let line = vec![b'x'; 1 << 20];
        for _ in 0..(BACKLOG >> 20) {
            sink.push(&line);
        }
        let before = dropped();
        sink.push(&line);
        sink.push(b"short\n");
        let b = sink.state.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(b.bytes.len(), BACKLOG);
        assert_eq!(b.dropped, 2);
        assert!(dropped() > before);
    }

    #[test]
    fn flush_waits_for_the_writer() {
        let sink: &'static Sink = Box::leak(Box::default());
        sink.push(b"");
        sink.push(b"ezthrottle access-log flush test line\n");
        std::thread::spawn(move || sink.run());
        sink.flush(std::time::Duration::from_secs(10));
        let b = sink.state.lock().unwrap_or_else(|p| p.into_inner());
        assert!(b.bytes.is_empty() && !b.writing);
    }
}

//! Admission shared by every replica through Redis (`[storage] backend =
//! "redis"`, docs/distributed.md).
//!
//! The pace and the concurrency cap of a domain live in Redis and are
//! decided by one Lua script per admission ([`ADMIT`]), on the server's
//! clock (`TIME`), never a replica's:
//!
//! - **Pace**: a GCRA that *schedules*: the script answers "go in `d` µs"
//!   and books that slot, so the replica sleeps on a timer until then (no
//!   polling), and the sum of all replicas' starts keeps to the rate. When
//!   the rate changes (a learned limit), the booked backlog is rescaled to
//!   the new interval at once, so an old schedule never holds a raised
//!   limit back (the bug Let's Encrypt's boulder had) nor lets a lowered one
//!   through at the old pace for new requests.
//! - **Concurrency**: a slot is a lease, a member of a sorted set scored by
//!   its expiry ([`LEASE`] after the start, renewed every third of it while
//!   the request runs). A replica killed with `-9` stops renewing and its
//!   slots come back within one lease. A release removes the member and,
//!   when some replica is waiting for a slot, publishes an event so that
//!   waiters everywhere ask again at once.
//! - **Learned limits and pauses** sit in the domain's `limits` hash, which
//!   the script reads on every admission: a limit or a `Retry-After` learned
//!   through one replica governs the very next admission on every replica.
//! - **Starts are numbered** across every replica (`starts` in the `limits`
//!   hash), and the latest budget count an answer gave is kept as of its
//!   request's number (`bseq`, `brem`, `bend`): a start is granted only
//!   while the starts after the answered one leave some of it
//!   ([`super::spent`]).
//!
//! Each replica keeps its own FIFO of waiters for a concurrency slot (a
//! fair gate), so only the head of the local queue asks Redis again.
//! Every key of a domain carries the hash tag `{domain}`, so the scripts
//! also run on Redis Cluster.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::dialects::Dialect;
use super::domain::Denied;
use super::timer::{Fine, COARSE};
use crate::store::redis::Redis;
use crate::store::StoreError;

/// A concurrency slot not renewed for this long is free again: how long a
/// replica killed mid-request can hold its slots.
pub const LEASE: Duration = Duration::from_secs(10);

/// A replica that saw the cap full says so under this key for this long, so
/// releases publish an event only when someone is waiting.
const WAITING_FLAG: Duration = Duration::from_secs(2);

/// A budget pace within this share of the last one shared is not sent
/// again (until that one is half spent).
const BUDGET_SLACK: f64 = 0.02;

/// A budget count more than this many requests (or a twentieth of it, if
/// more) above what the one last shared implies is sent again: requests
/// that never reached the API were counted as spent. One below it is sent
/// at once (someone else spends the same budget).
const SPENT_SLACK: u64 = 2;

/// Dialects as the small integers the admission script carries (0: none,
/// else a position in [`Dialect::ALL`] plus one; replicas of one version
/// agree on it).
fn dialect_code(d: Dialect) -> i64 {
    Dialect::ALL
        .iter()
        .position(|x| *x == d)
        .map_or(0, |i| i as i64 + 1)
}

fn dialect_of(code: i64) -> Option<Dialect> {
    usize::try_from(code)
        .ok()
        .and_then(|c| c.checked_sub(1))
        .and_then(|i| Dialect::ALL.get(i).copied())
}

/// Bounded re-check while waiting for a slot, in case a release event is
/// lost (pub/sub is fire-and-forget) or a dead replica's lease expires.
const RECHECK_MIN: Duration = Duration::from_millis(20);
const RECHECK_MAX: Duration = Duration::from_millis(250);

/// Decide the admissions of a batch (every request of this replica for the
/// domain that asked while the previous batch was on its way), in order.
/// KEYS: gcra hash, leases zset, limits hash, waiting flag. ARGV: rps,
/// max_concurrent, burst, pinned (0 no, 1 yes, 2 no but the rps is stated:
/// a budget pace may only lower it), rps_ceiling, concurrency_ceiling,
/// lease_ms, waiting_flag_ms, channel, release message, then the number of
/// slots this replica freed since its last call and those members (released
/// first, in the same round trip), then the number of requests and a
/// (member, max_delay_us) pair for each.
/// Reply: {rps_micro, max_concurrent, held, learned_bits, now_us} then
/// {code, delay_us, start} per request, with code 0 = granted (slot booked
/// `delay_us` from now, lease taken, `start` its number across every
/// replica), 1 = the pace slot is later than max_delay (nothing taken), 2 =
/// paused for `delay_us` (nothing taken), 3 = every slot is held (nothing
/// taken; `delay_us` until the earliest lease expiry), 4 = the starts after
/// the latest answered request spent what it left (nothing taken;
/// `delay_us` until its reset); `start` is 0 unless granted. Unlike a
/// pause, 4 does not hold back the starts already booked: they are within
/// the count. Learned
/// bits: 1 rps learned, 2 concurrency learned, 4 the budget pace (`brps`
/// until `bexp`, server ms) governs, its dialect's code times 8 added.
const ADMIT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rps = tonumber(ARGV[1])
local maxc = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local pinned = ARGV[4] == '1'
local stated = ARGV[4] == '2'
local rps_ceiling = tonumber(ARGV[5])
local conc_ceiling = tonumber(ARGV[6])
local lease_us = tonumber(ARGV[7]) * 1000
local nf = tonumber(ARGV[11])
local freed = 0
for i = 12, 11 + nf do
  freed = freed + redis.call('ZREM', KEYS[2], ARGV[i])
end
if freed > 0 and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('PUBLISH', ARGV[9], ARGV[10])
end
local base = 12 + nf
local na = tonumber(ARGV[base])
local learned = 0
local paused = nil
local lim = redis.call('HMGET', KEYS[3], 'rps', 'max_concurrent', 'paused_until', 'brps', 'bexp', 'bsrc', 'starts', 'bseq', 'brem', 'bend')
local starts = tonumber(lim[7]) or 0
local spent_after, spent_left, spent_end = nil, nil, nil
if not pinned then
  local lr = tonumber(lim[1])
  if lr and lr > 0 then
    rps = math.min(math.max(lr, 0.01), rps_ceiling)
    learned = learned + 1
    stated = true
  end
  local br = tonumber(lim[4])
  local be = tonumber(lim[5])
  if br and br > 0 and be and be * 1000 > now then
    br = math.min(math.max(br, 1 / 86400), rps_ceiling)
    if not stated or br < rps then
      rps = br
      learned = learned + 4 + 8 * (tonumber(lim[6]) or 0)
    end
  end
  local lc = tonumber(lim[2])
  if lc and lc > 0 then
    maxc = math.min(math.max(math.floor(lc), 1), conc_ceiling)
    learned = learned + 2
  end
  local p = tonumber(lim[3])
  if p and p * 1000 > now then paused = p * 1000 - now end
  local bs, bm, bn = tonumber(lim[8]), tonumber(lim[9]), tonumber(lim[10])
  if bs and bm and bn and bn * 1000 > now then
    spent_after, spent_left, spent_end = bs, bm, bn * 1000
  end
end
local out = {math.floor(rps * 1000000 + 0.5), maxc, 0, learned, now}
if paused then
  for k = 1, na do
    out[#out + 1] = 2
    out[#out + 1] = paused
    out[#out + 1] = 0
  end
  return out
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local held = redis.call('ZCARD', KEYS[2])
local interval = math.ceil(1000000 / rps)
local tolerance = interval * (math.max(burst, 1) - 1)
local g = redis.call('HMGET', KEYS[1], 'tat', 'interval')
local tat = tonumber(g[1]) or now
local old = tonumber(g[2])
if old and old > 0 and old ~= interval then
  if interval < old and tat > now then
    -- Raised, with slots booked ahead: the backlog re-spaced at the new
    -- interval, so the raise applies to the very next request.
    tat = now + math.ceil((tat - now) * interval / old)
  else
    -- Lowered (or nothing booked ahead): the next start comes one new
    -- interval after the latest booked one, as the rate now demands.
    tat = tat - old + interval
  end
end
if tat < now then tat = now end
local taken = false
local full_wait = nil
local last_end = 0
for k = 0, na - 1 do
  local member = ARGV[base + 1 + 2 * k]
  local max_delay = tonumber(ARGV[base + 2 + 2 * k])
  if spent_end and starts + 1 - spent_after > spent_left then
    -- The starts after the latest answered request spent what it left:
    -- nothing more goes before its reset.
    out[#out + 1] = 4
    out[#out + 1] = spent_end - now
    out[#out + 1] = 0
  elseif held >= maxc then
    if not full_wait then
      local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
      full_wait = lease_us
      if first[2] then full_wait = math.max(tonumber(first[2]) - now, 0) end
      redis.call('SET', KEYS[4], '1', 'PX', ARGV[8])
    end
    out[#out + 1] = 3
    out[#out + 1] = full_wait
    out[#out + 1] = 0
  else
    local delay = math.max(tat - tolerance, now) - now
    if delay > max_delay then
      out[#out + 1] = 1
      out[#out + 1] = delay
      out[#out + 1] = 0
    else
      tat = tat + interval
      last_end = now + delay + lease_us
      redis.call('ZADD', KEYS[2], last_end, member)
      held = held + 1
      taken = true
      starts = starts + 1
      out[#out + 1] = 0
      out[#out + 1] = delay
      out[#out + 1] = starts
    end
  end
end
if taken then
  redis.call('HSET', KEYS[3], 'starts', starts)
  redis.call('HSET', KEYS[1], 'tat', tat, 'interval', interval)
  redis.call('PEXPIRE', KEYS[1], math.ceil((tat - now) / 1000) + 60000)
  redis.call('PEXPIRE', KEYS[2], math.ceil((last_end - now) / 1000) + 60000)
end
out[3] = held
return out
"#;

/// Free slots. KEYS: leases zset, waiting flag. ARGV: channel, message,
/// members. Publishes only when a replica is waiting for a slot.
const RELEASE_LUA: &str = r#"
local removed = 0
for i = 3, #ARGV do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
end
if removed > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return removed
"#;

/// Freed slots wait this long for an admission of their domain to carry
/// them to Redis (no round trip of their own) before the flusher sends them.
const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// Renew this replica's slots of one domain. KEYS: leases zset. ARGV:
/// lease_ms, members... Only members still present are touched (`XX`).
const RENEW_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local until_us = now + tonumber(ARGV[1]) * 1000
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', until_us, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 60000)
return n
"#;

/// Extend the domain's pause to now + ARGV[1] ms (never shorten it).
/// KEYS: limits hash. Returns the pause end (server ms).
const PAUSE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
if until_ms > cur then
  redis.call('HSET', KEYS[1], 'paused_until', until_ms)
  return until_ms
end
return cur
"#;

/// What one replica read from the API's budget headers, for every replica
/// until the budget's reset. KEYS: limits hash. ARGV: the pace (rps,
/// valid_ms, dialect code; rps '' for none), then the count (the answered
/// request's start number, requests left, ms to the reset; '' for none).
/// A count replaces the one kept only if its start is later or the kept
/// one's reset passed (a late answer must not undo a newer count). Starts
/// granted already go as booked: pausing the domain when they are more
/// than the count left held back every booked start, not just the excess
/// (a window of 50 paused after 4 when 51 were booked before the first
/// answer).
const BUDGET_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'brps', ARGV[1], 'bexp', now + tonumber(ARGV[2]), 'bsrc', ARGV[3])
end
if ARGV[4] ~= '' then
  local after = tonumber(ARGV[4])
  local cur = redis.call('HMGET', KEYS[1], 'bseq', 'bend')
  local cs, ce = tonumber(cur[1]), tonumber(cur[2])
  if not cs or not ce or after >= cs or now >= ce then
    redis.call('HSET', KEYS[1], 'bseq', after, 'brem', ARGV[5], 'bend', now + tonumber(ARGV[6]))
  end
end
return 1
"#;

static BUDGET: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(BUDGET_LUA));
static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ADMIT_LUA));
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE_LUA));
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RENEW_LUA));
static PAUSE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PAUSE_LUA));

/// The limits this replica's config gives a domain (learned values in Redis
/// override them unless pinned).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub rps: f64,
    pub max_concurrent: u32,
    pub burst: u32,
    pub pinned: bool,
    /// The rps is one someone stated (config, preset): a shared budget pace
    /// may only lower it.
    pub stated: bool,
    pub rps_ceiling: f64,
    pub concurrency_ceiling: u32,
    pub queue_capacity: usize,
}

/// What the last answer from Redis said about a domain (for the status
/// page, and the fallback when Redis goes away).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub rps: f64,
    pub max_concurrent: u32,
    /// Slots held by all replicas at that answer.
    pub held: u32,
    pub rps_learned: bool,
    pub concurrency_learned: bool,
    /// The dialect whose budget pace governs the rps, if one does.
    pub budget: Option<Dialect>,
    /// Wall-clock end of a pause seen then.
    pub paused_until: Option<SystemTime>,
}

/// This replica's side of one domain.
struct Domain {
    /// A release was announced (locally or by another replica).
    wake: Notify,
    /// FIFO among this replica's waiters for a concurrency slot.
    gate: tokio::sync::Mutex<()>,
    /// Waiters queued at the gate: newcomers queue behind them.
    blocked: AtomicUsize,
    /// Requests of this replica waiting for admission (any reason).
    waiting: AtomicUsize,
    /// Slots this replica holds.
    in_flight: AtomicU32,
    view: Mutex<Option<View>>,
    /// Slots freed here and not yet removed in Redis: the next admission of
    /// the domain carries them, else the flusher after [`FLUSH_AFTER`].
    pending: Mutex<Vec<String>>,
    /// Requests waiting to be sent in the next batch, and whether a batch
    /// is on its way (then they wait for it to come back).
    batch: Mutex<(bool, Vec<Ask>)>,
    /// The planned local start and Redis-clock booking of this replica's
    /// latest start ([`Domain::spaced`]).
    last_start: Mutex<Option<(Instant, i64)>>,
}

/// One request's question in a batch.
struct Ask {
    member: String,
    max_delay_us: u64,
    reply: tokio::sync::oneshot::Sender<Result<Answer, String>>,
}

impl Domain {
    fn new() -> Self {
        Domain {
            wake: Notify::new(),
            gate: tokio::sync::Mutex::new(()),
            blocked: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            in_flight: AtomicU32::new(0),
            view: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            batch: Mutex::new((false, Vec::new())),
            last_start: Mutex::new(None),
        }
    }

    /// One pace interval at the rate Redis last gave (else the config's):
    /// the `Retry-After` of a request refused while others wait.
    fn interval(&self, limits: &Limits) -> Duration {
        let rps = self.view().map_or(limits.rps, |v| v.rps).max(0.01);
        // rps ≥ 0.01: at most 100 s, never a panic.
        Duration::try_from_secs_f64(1.0 / rps).unwrap_or(Duration::from_secs(100))
    }

    /// The local instant to start a slot booked at `booked_us` (Redis's
    /// clock), planned for `at`: no earlier than the previous start of this
    /// replica plus the distance between the two bookings.
    fn spaced(&self, at: Instant, booked_us: i64) -> Instant {
        let mut last = self.last_start.lock().unwrap_or_else(|p| p.into_inner());
        let at = match *last {
            Some((prev_at, prev_booked)) if booked_us > prev_booked => {
                let apart = Duration::from_micros((booked_us - prev_booked) as u64);
                at.max(prev_at + apart)
            }
            _ => at,
        };
        if last.is_none_or(|(_, b)| booked_us > b) {
            *last = Some((at, booked_us));
        }
        at
    }

    /// How long the last pause seen in Redis still holds, if it does.
    fn paused_for(&self) -> Option<Duration> {
        self.view()?
            .paused_until?
            .duration_since(SystemTime::now())
            .ok()
            .filter(|d| !d.is_zero())
    }

    fn take_pending(&self) -> Vec<String> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Queue freed slots; true when the queue was empty (the flusher must
    /// be told).
    fn add_pending(&self, members: impl IntoIterator<Item = String>) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = p.is_empty();
        p.extend(members);
        was_empty && !p.is_empty()
    }

    fn set_view(&self, v: View) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
    }

    /// Change the view in place, under its lock (a read, an await and a
    /// write back would undo what an admission's answer set meanwhile).
    fn update_view(&self, f: impl FnOnce(&mut View)) {
        if let Some(v) = self.view.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            f(v);
        }
    }

    fn view(&self) -> Option<View> {
        *self.view.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Redis did not answer; the caller falls back to the local throttle.
#[derive(Debug)]
pub struct Unavailable(pub StoreError);

/// The shared admission state of this replica.
pub struct SharedSlots {
    redis: Arc<Redis>,
    domains: DashMap<String, Arc<Domain>>,
    /// Slots this replica holds: member → domain (renewed in the background).
    leases: DashMap<String, String>,
    next_member: AtomicU64,
    channel: String,
    /// How long an unrenewed slot lasts ([`LEASE`]; shorter in tests).
    lease: Duration,
    /// Domains with freed slots waiting for the flusher.
    dirty: Mutex<Vec<String>>,
    flush: Notify,
    /// Redis round trips made for admissions (benchmarks read it).
    pub round_trips: AtomicU64,
    /// The budget pace and count last shared per domain.
    budgets_sent: DashMap<String, Sent>,
}

/// A concurrency slot held in Redis; dropping it frees the slot.
pub struct SharedPermit {
    slots: Arc<SharedSlots>,
    domain: Arc<Domain>,
    name: String,
    member: String,
    /// This start's number across every replica.
    n: u64,
}

impl SharedPermit {
    pub fn start_no(&self) -> super::StartNo {
        super::StartNo::Shared(self.n)
    }
}

/// An answer's budget count, as of its request's start through Redis
/// ([`super::spent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedSpent {
    pub after: u64,
    pub remaining: u64,
    pub reset_in: Duration,
}

/// What [`SharedSlots::budget`] last sent for a domain.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    /// (rps, when, for how long, dialect).
    pace: Option<(f64, Instant, Duration, Dialect)>,
    /// The count and when its reset is.
    spent: Option<(SharedSpent, Instant)>,
}

impl Sent {
    fn pace_due(&self, rps: f64, dialect: Dialect, now: Instant) -> bool {
        match self.pace {
            None => true,
            Some((sent_rps, sent_at, sent_for, sent_dialect)) => {
                (rps / sent_rps - 1.0).abs() > BUDGET_SLACK
                    || sent_dialect != dialect
                    || now.saturating_duration_since(sent_at) * 2 >= sent_for
            }
        }
    }

    /// A count is due unless the one sent implies it: same reset (within a
    /// second), and the new one's `remaining` what the sent one's less the
    /// starts between the two would leave (up to [`SPENT_SLACK`] more).
    /// Older counts of the same window are no worse than newer ones (the
    /// admission script spends every start after them), so most answers
    /// send nothing.
    fn spent_due(&self, spent: SharedSpent, now: Instant) -> bool {
        let Some((sent, sent_end)) = self.spent else {
            return true;
        };
        let end = now + spent.reset_in;
        let moved = if end > sent_end {
            end - sent_end
        } else {
            sent_end - end
        };
        if now >= sent_end || moved > Duration::from_secs(1) {
            return true;
        }
        if spent.after < sent.after {
            return false;
        }
        let implied = sent.remaining.saturating_sub(spent.after - sent.after);
        let slack = SPENT_SLACK.max(implied / 20);
        spent.remaining < implied || spent.remaining > implied.saturating_add(slack)
    }
}

impl Drop for SharedPermit {
    fn drop(&mut self) {
        self.slots.leases.remove(&self.member);
        self.domain.in_flight.fetch_sub(1, Ordering::Relaxed);
        let member = std::mem::take(&mut self.member);
        self.slots.free(&self.name, &self.domain, member);
        // A waiter of ours asks again at once, carrying the release.
        self.domain.wake.notify_waiters();
    }
}

/// Frees a slot whose booking was sent but whose answer the caller stopped
/// waiting for (client gone): commands on the connection run in order, so
/// the release runs after the booking if it was made.
struct Booking<'a> {
    slots: &'a Arc<SharedSlots>,
    name: &'a str,
    member: Option<String>,
}

impl Drop for Booking<'_> {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            let domain = self.slots.domain(self.name);
            self.slots.free(self.name, &domain, member);
        }
    }
}

/// One answer of the admission script.
enum Answer {
    /// Start at `at` on this replica's clock (the slot Redis booked on its
    /// own, placed by [`Domain::spaced`]), as start `n` of the domain.
    Go {
        at: Instant,
        n: u64,
    },
    TooLate(Duration),
    Paused(Duration),
    /// The count an answer left is spent: wait this long, for its reset
    /// (the domain is not paused).
    Spent(Duration),
    Full(Duration),
}

/// Counts a waiter of a domain while it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SharedSlots {
    pub fn new(redis: Arc<Redis>) -> Arc<SharedSlots> {
        Self::with_lease(redis, LEASE)
    }

    pub fn with_lease(redis: Arc<Redis>, lease: Duration) -> Arc<SharedSlots> {
        Self::build(redis, lease, true)
    }

    fn build(redis: Arc<Redis>, lease: Duration, flusher: bool) -> Arc<SharedSlots> {
        let slots = Arc::new(SharedSlots {
            lease,
            dirty: Mutex::new(Vec::new()),
            flush: Notify::new(),
            channel: redis.key("events"),
            redis,
            domains: DashMap::new(),
            leases: DashMap::new(),
            next_member: AtomicU64::new(0),
            budgets_sent: DashMap::new(),
            round_trips: AtomicU64::new(0),
        });
        slots.redis.spawn(renew_forever(Arc::downgrade(&slots)));
        slots.redis.spawn(listen_forever(Arc::downgrade(&slots)));
        if flusher {
            slots.redis.spawn(flush_forever(Arc::downgrade(&slots)));
        }
        slots
    }

    fn domain(&self, name: &str) -> Arc<Domain> {
        if let Some(d) = self.domains.get(name) {
            return d.clone();
        }
        self.domains
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Domain::new()))
            .clone()
    }

    /// The last view of a domain from Redis, if any.
    pub fn view(&self, name: &str) -> Option<View> {
        self.domains.get(name).and_then(|d| d.view())
    }

    /// Slots held and requests waiting on this replica.
    pub fn local(&self, name: &str) -> (u32, usize) {
        self.domains
            .get(name)
            .map(|d| {
                (
                    d.in_flight.load(Ordering::Relaxed),
                    d.waiting.load(Ordering::Relaxed),
                )
            })
            .unwrap_or((0, 0))
    }

    /// Wait (at most `max_wait`) for a pace slot and a concurrency slot
    /// shared with every replica. `Err` when Redis does not answer: the
    /// caller then admits locally with what is left of `max_wait`.
    pub async fn acquire(
        self: &Arc<Self>,
        name: &str,
        limits: &Limits,
        max_wait: Duration,
    ) -> Result<Result<SharedPermit, Denied>, Unavailable> {
        let deadline = Instant::now() + max_wait;
        let domain = self.domain(name);
        let waiting = domain.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&domain.waiting);
        if waiting >= limits.queue_capacity {
            return Ok(Err(Denied::QueueFull {
                retry_after: domain.interval(limits) * (waiting.min(u32::MAX as usize) as u32),
            }));
        }
        // Fast path: nobody of ours queues for a slot, ask at once.
        if domain.blocked.load(Ordering::Relaxed) == 0 {
            match self.try_once(name, &domain, limits, deadline).await? {
                Step::Done(r) => return Ok(r),
                Step::Paused(until) => {
                    // Paused: wait out the pause, then queue.
                    if let Err(denied) = wait_out_pause(until, deadline).await {
                        return Ok(Err(denied));
                    }
                }
                Step::Full(_) => {}
            }
        }
        // Queue behind this replica's other waiters, in arrival order.
        domain.blocked.fetch_add(1, Ordering::Relaxed);
        let _blocked = Waiting(&domain.blocked);
        let Ok(_turn) = tokio::time::timeout_at(deadline, domain.gate.lock()).await else {
            return Ok(Err(Denied::WaitTimeout {
                retry_after: domain.interval(limits),
            }));
        };
        let mut recheck = RECHECK_MIN;
        loop {
            // Listen before asking, so a release between the answer and the
            // wait is not missed.
            let released = domain.wake.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            match self.try_once(name, &domain, limits, deadline).await? {
                Step::Done(r) => return Ok(r),
                Step::Paused(until) => {
                    if let Err(denied) = wait_out_pause(until, deadline).await {
                        return Ok(Err(denied));
                    }
                }
                Step::Full(expiry) => {
                    // Full: a release (event), the earliest lease expiry,
                    // or the bounded re-check, whichever comes first.
                    let at = (Instant::now() + recheck.min(expiry.max(RECHECK_MIN))).min(deadline);
                    tokio::select! {
                        _ = &mut released => { recheck = RECHECK_MIN; }
                        _ = tokio::time::sleep_until(at) => {
                            recheck = (recheck * 2).min(RECHECK_MAX);
                        }
                    }
                    if Instant::now() >= deadline {
                        return Ok(Err(Denied::WaitTimeout {
                            retry_after: domain.interval(limits),
                        }));
                    }
                }
            }
        }
    }

    async fn try_once(
        self: &Arc<Self>,
        name: &str,
        domain: &Arc<Domain>,
        limits: &Limits,
        deadline: Instant,
    ) -> Result<Step, Unavailable> {
        let now = Instant::now();
        let max_delay = deadline.saturating_duration_since(now);
        let member = format!(
            "{}:{}",
            self.redis.replica(),
            self.next_member.fetch_add(1, Ordering::Relaxed)
        );
        let mut booking = Booking {
            slots: self,
            name,
            member: Some(member.clone()),
        };
        // Unanswered (timeout): the booking may still have been made, so the
        // guard sends a release after it; if Redis is down, the lease lapses.
        let answer = self.ask(name, domain, limits, max_delay, &member).await?;
        let answered = Instant::now();
        match answer {
            Answer::Go { at, n } => {
                booking.member = None;
                self.leases.insert(member.clone(), name.to_string());
                domain.in_flight.fetch_add(1, Ordering::Relaxed);
                let permit = SharedPermit {
                    slots: self.clone(),
                    domain: domain.clone(),
                    name: name.to_string(),
                    member,
                    n,
                };
                // Meet the booked slot on our clock (the permit frees the
                // slot if we are dropped meanwhile).
                if at > Instant::now() + COARSE {
                    tokio::time::sleep_until(at - COARSE).await;
                }
                Fine::Precise.until(at).await;
                // A pause learned after the booking (a budget at zero or a
                // 429 through any replica) holds the booked start back: the
                // API said nothing more may go before it ends.
                while let Some(left) = domain.paused_for() {
                    tokio::time::sleep(left).await;
                }
                Ok(Step::Done(Ok(permit)))
            }
            Answer::TooLate(delay) => {
                booking.member = None;
                Ok(Step::Done(Err(Denied::WaitTimeout { retry_after: delay })))
            }
            Answer::Paused(delay) | Answer::Spent(delay) => {
                booking.member = None;
                Ok(Step::Paused(answered + delay))
            }
            Answer::Full(expiry) => {
                booking.member = None;
                Ok(Step::Full(expiry))
            }
        }
    }

    /// Ask Redis for a slot. Requests of this replica for the same domain
    /// that ask while a batch is on its way go together in the next one
    /// (one round trip and one script for all of them, decided in arrival
    /// order): no added wait when idle, fewer round trips under load.
    async fn ask(
        self: &Arc<Self>,
        name: &str,
        domain: &Arc<Domain>,
        limits: &Limits,
        max_delay: Duration,
        member: &str,
    ) -> Result<Answer, Unavailable> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let lead = {
            let mut b = domain.batch.lock().unwrap_or_else(|p| p.into_inner());
            b.1.push(Ask {
                member: member.to_string(),
                max_delay_us: max_delay.as_micros().min(u64::MAX as u128) as u64,
                reply: tx,
            });
            !std::mem::replace(&mut b.0, true)
        };
        if lead {
            // A task of its own, so that a request that gives up does not
            // take the others' answers with it.
            let (me, name, domain, limits) = (
                self.clone(),
                name.to_string(),
                domain.clone(),
                limits.clone(),
            );
            tokio::spawn(async move { me.send_batches(&name, &domain, &limits).await });
        }
        match rx.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(Unavailable(StoreError::Backend(e))),
            Err(_) => Err(Unavailable(StoreError::Backend(
                "redis: the admission batch was dropped".into(),
            ))),
        }
    }

    /// Send batches until nobody is waiting.
    async fn send_batches(&self, name: &str, domain: &Domain, limits: &Limits) {
        loop {
            let asks: Vec<Ask> = {
                let mut b = domain.batch.lock().unwrap_or_else(|p| p.into_inner());
                let asks: Vec<Ask> = std::mem::take(&mut b.1)
                    .into_iter()
                    // Gone before being asked for: nothing to book.
                    .filter(|a| !a.reply.is_closed())
                    .collect();
                if asks.is_empty() {
                    b.0 = false;
                    return;
                }
                asks
            };
            self.send_batch(name, domain, limits, asks).await;
        }
    }

    async fn send_batch(&self, name: &str, domain: &Domain, limits: &Limits, asks: Vec<Ask>) {
        let keys = [
            self.redis.domain_key(name, "gcra"),
            self.redis.domain_key(name, "leases"),
            self.redis.domain_key(name, "limits"),
            self.redis.domain_key(name, "waiting"),
        ];
        let freed = domain.take_pending();
        let carried = freed.len();
        let mut args: Vec<String> = Vec::with_capacity(13 + carried + 2 * asks.len());
        args.extend([
            limits.rps.to_string(),
            limits.max_concurrent.to_string(),
            limits.burst.to_string(),
            match (limits.pinned, limits.stated) {
                (true, _) => "1",
                (false, true) => "2",
                (false, false) => "0",
            }
            .to_string(),
            limits.rps_ceiling.to_string(),
            limits.concurrency_ceiling.to_string(),
            self.lease.as_millis().to_string(),
            WAITING_FLAG.as_millis().to_string(),
            self.channel.clone(),
            format!("rel\n{name}"),
            carried.to_string(),
        ]);
        args.extend(freed.iter().cloned());
        args.push(asks.len().to_string());
        for a in &asks {
            args.push(a.member.clone());
            args.push(a.max_delay_us.to_string());
        }
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let reply = self
            .redis
            .script::<Vec<i64>, _, _>(&ADMIT, &keys, &args)
            .await;
        let reply = match reply {
            Ok(r) if r.len() == 5 + 3 * asks.len() => r,
            other => {
                // Not known to have run: the releases go again (a second
                // ZREM of a member is harmless), and every request falls
                // back to this replica's share.
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(r) => format!("redis: unexpected admission reply {r:?}"),
                };
                if carried > 0 {
                    self.requeue(name, domain, freed);
                }
                for a in asks {
                    let _ = a.reply.send(Err(why.clone()));
                }
                return;
            }
        };
        // Each slot is `delay` after the script ran; the answer left Redis
        // then, so counting from its arrival errs late (by the trip back),
        // never early. One arrival time for the whole batch, and the slots
        // placed here, in booking order: placed by each request's task as it
        // happened to be polled, a slot whose task ran late was planned late,
        // on top of the next ones (a CI run measured 5 % of 10 ms windows at
        // the origin over `rps·w + burst` with 2000 req/s through Redis).
        let answered = Instant::now();
        let (rps_micro, maxc, held, learned, server_now) =
            (reply[0], reply[1], reply[2], reply[3], reply[4]);
        let answers: Vec<Answer> = reply[5..]
            .chunks_exact(3)
            .map(|answer| {
                let delay = Duration::from_micros(answer[1].max(0) as u64);
                match answer[0] {
                    0 => {
                        let booked_us = server_now.saturating_add(answer[1].max(0));
                        Answer::Go {
                            at: domain.spaced(answered + delay, booked_us),
                            n: answer[2].max(0) as u64,
                        }
                    }
                    1 => Answer::TooLate(delay),
                    2 => Answer::Paused(delay),
                    4 => Answer::Spent(delay),
                    _ => Answer::Full(delay),
                }
            })
            .collect();
        let paused_for = answers.iter().find_map(|a| match a {
            Answer::Paused(d) => Some(*d),
            _ => None,
        });
        // The view first, then the answers: a request that reads the view
        // once admitted sees this round trip's, not the one before (a CI
        // run caught the stale one on a busy machine).
        domain.set_view(View {
            rps: (rps_micro.max(1) as f64) / 1e6,
            max_concurrent: u32::try_from(maxc).unwrap_or(1).max(1),
            held: u32::try_from(held).unwrap_or(0),
            rps_learned: learned & 1 != 0,
            concurrency_learned: learned & 2 != 0,
            budget: (learned & 4 != 0)
                .then(|| dialect_of(learned >> 3))
                .flatten(),
            paused_until: paused_for.and_then(|d| SystemTime::now().checked_add(d)),
        });
        for (a, answer) in asks.into_iter().zip(answers) {
            if let Err(Ok(Answer::Go { .. })) = a.reply.send(Ok(answer)) {
                // Gone while the batch was on its way: free its slot.
                self.free(name, domain, a.member);
            }
        }
    }

    /// A slot of `name` is free: queue its release for the next admission
    /// of the domain or the flusher.
    fn free(&self, name: &str, domain: &Domain, member: String) {
        self.requeue(name, domain, [member]);
    }

    fn requeue(&self, name: &str, domain: &Domain, members: impl IntoIterator<Item = String>) {
        if domain.add_pending(members) {
            self.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(name.to_string());
            self.flush.notify_one();
        }
    }

    /// Send the releases no admission carried.
    async fn flush_pending(&self) {
        let names = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        for name in names {
            let Some(domain) = self.domains.get(&name).map(|d| d.clone()) else {
                continue;
            };
            let members = domain.take_pending();
            if members.is_empty() {
                continue;
            }
            let keys = [
                self.redis.domain_key(&name, "leases"),
                self.redis.domain_key(&name, "waiting"),
            ];
            let mut args = Vec::with_capacity(members.len() + 2);
            args.push(self.channel.clone());
            args.push(format!("rel\n{name}"));
            args.extend(members);
            if let Err(e) = self.redis.script::<i64, _, _>(&RELEASE, &keys, &args).await {
                // The leases then expire by themselves within the lease.
                tracing::debug!(domain = %name, error = %e, "could not free shared slots; they expire with their lease");
            }
        }
    }

    /// Pause the domain on every replica for `pause` (from now, server
    /// clock); a longer pause already set is kept.
    pub async fn pause(&self, name: &str, pause: Duration) -> Result<(), StoreError> {
        let keys = [self.redis.domain_key(name, "limits")];
        let args = [pause.as_millis().min(u64::MAX as u128) as u64];
        self.redis.script::<i64, _, _>(&PAUSE, &keys, &args).await?;
        // Waiters of other replicas learn it at their next ask; tell them to
        // refresh what they show.
        let _ = self.redis.publish("lim", name).await;
        Ok(())
    }

    /// Share what an answer said of the budget: its pace (every replica
    /// books at `rps`, below a stated limit only, until `valid_for` from
    /// now) and its count as of the answered start. Sent only when the pace
    /// differs by more than [`BUDGET_SLACK`] from the last one sent or that
    /// one is half spent, or when the count is not what the last one sent
    /// implies ([`Sent::spent_due`]): the budget headers come with every
    /// response, and most say the same again.
    pub async fn budget(
        &self,
        name: &str,
        pace: Option<(f64, Duration, Dialect)>,
        spent: Option<SharedSpent>,
    ) {
        let now = Instant::now();
        let (pace, spent) = {
            // Most answers find the domain's entry: no key allocated.
            let mut sent = match self.budgets_sent.get_mut(name) {
                Some(sent) => sent,
                None => self.budgets_sent.entry(name.to_string()).or_default(),
            };
            let pace = pace.filter(|&(rps, _, dialect)| sent.pace_due(rps, dialect, now));
            let spent = spent.filter(|&c| sent.spent_due(c, now));
            if let Some((rps, valid_for, dialect)) = pace {
                sent.pace = Some((rps, now, valid_for, dialect));
            }
            if let Some(c) = spent {
                sent.spent = Some((c, now + c.reset_in));
            }
            (pace, spent)
        };
        if pace.is_none() && spent.is_none() {
            return;
        }
        let keys = [self.redis.domain_key(name, "limits")];
        let (rps, valid_ms, dialect) = match pace {
            Some((rps, valid_for, dialect)) => (
                rps.to_string(),
                valid_for.as_millis().max(1).to_string(),
                dialect_code(dialect).to_string(),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let (after, remaining, reset_ms) = match spent {
            Some(c) => (
                c.after.to_string(),
                c.remaining.to_string(),
                c.reset_in.as_millis().max(1).to_string(),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let args = [rps, valid_ms, dialect, after, remaining, reset_ms];
        if let Err(e) = self.redis.script::<i64, _, _>(&BUDGET, &keys, &args).await {
            // Not shared this time; the next response tries again.
            self.budgets_sent.remove(name);
            tracing::debug!(domain = name, error = %e, "could not share the budget");
        }
    }

    /// Re-read a domain's learned limits and pause from Redis into the view
    /// (shown by `/api/v1/domains`), keeping what was not learned.
    async fn refresh(&self, name: &str) {
        let Some(d) = self.domains.get(name).map(|d| d.clone()) else {
            return;
        };
        if d.view().is_none() {
            return;
        }
        let cmd = redis::cmd("HMGET")
            .arg(self.redis.domain_key(name, "limits"))
            .arg("rps")
            .arg("max_concurrent")
            .arg("paused_until")
            .clone();
        let Ok(fields) = self.redis.query::<Vec<Option<String>>>(cmd).await else {
            return;
        };
        let num = |i: usize| {
            fields
                .get(i)
                .cloned()
                .flatten()
                .and_then(|f| f.parse::<f64>().ok())
        };
        let rps = num(0).filter(|r| r.is_finite() && *r > 0.0);
        let max_concurrent = num(1).filter(|c| *c >= 1.0);
        let paused_until = num(2)
            // Checked: the hash is shared, and a huge value must not panic.
            .and_then(|ms| {
                SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms.max(0.0) as u64))
            })
            .filter(|until| *until > SystemTime::now());
        // In place: an admission's answer may have updated the view (slots
        // held) during the round trip.
        d.update_view(|v| {
            if let Some(rps) = rps {
                v.rps = rps;
                v.rps_learned = true;
            }
            if let Some(c) = max_concurrent {
                v.max_concurrent = c.min(f64::from(u32::MAX)) as u32;
                v.concurrency_learned = true;
            }
            if paused_until.is_some() {
                v.paused_until = paused_until;
            }
        });
    }

    /// Tell every replica a domain's limits changed (they refresh what
    /// they show; admissions read the shared hash anyway).
    pub async fn announce(&self, name: &str) {
        let _ = self.redis.publish("lim", name).await;
    }

    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// Show what Redis said last (limits, sources, pause, slots held by
    /// all replicas) and this replica's own in-flight and waiting counts.
    pub fn overlay(&self, snap: &mut super::Snapshot) {
        let Some(d) = self.domains.get(&snap.domain) else {
            return;
        };
        snap.in_flight = d.in_flight.load(Ordering::Relaxed);
        snap.waiting = d.waiting.load(Ordering::Relaxed);
        if let Some(v) = d.view().filter(|_| !snap.pinned) {
            snap.rps = v.rps;
            snap.max_concurrent = v.max_concurrent;
            if let Some(d) = v.budget {
                snap.rps_source = super::Source::Dialect(d);
            } else if v.rps_learned {
                snap.rps_source = super::Source::Learned;
            }
            if v.concurrency_learned {
                snap.concurrency_source = super::Source::Learned;
            }
            snap.in_flight_all_replicas = Some(v.held);
            if let Some(p) = v.paused_until.filter(|p| *p > SystemTime::now()) {
                let ms = p
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                snap.paused_until = Some(snap.paused_until.map_or(ms, |l| l.max(ms)));
            }
        }
    }

    /// Forget domains nobody here uses (nothing held or waiting).
    pub fn forget_idle(&self) {
        self.domains.retain(|_, d| {
            Arc::strong_count(d) > 1
                || d.in_flight.load(Ordering::Relaxed) > 0
                || d.waiting.load(Ordering::Relaxed) > 0
        });
    }
}

/// Sleep to the end of a pause, unless it ends after the request's
/// patience: then refuse at once with the pause as `Retry-After`.
async fn wait_out_pause(until: Instant, deadline: Instant) -> Result<(), Denied> {
    if until > deadline {
        return Err(Denied::WaitTimeout {
            retry_after: until.saturating_duration_since(Instant::now()),
        });
    }
    tokio::time::sleep_until(until).await;
    Ok(())
}

enum Step {
    Done(Result<SharedPermit, Denied>),
    /// Ask again at the end of the pause.
    Paused(Instant),
    /// Ask again after a release, at the latest when the earliest lease
    /// expires (this long from now).
    Full(Duration),
}

/// Renew this replica's slots every third of a lease, one script per
/// domain, so a long request keeps its slot and a dead replica's lapse.
async fn renew_forever(slots: std::sync::Weak<SharedSlots>) {
    loop {
        let Some(every) = slots.upgrade().map(|s| s.lease / 3) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(s) = slots.upgrade() else { return };
        let mut by_domain: std::collections::HashMap<String, Vec<String>> = Default::default();
        for e in s.leases.iter() {
            by_domain
                .entry(e.value().clone())
                .or_default()
                .push(e.key().clone());
        }
        for (domain, members) in by_domain {
            let keys = [s.redis.domain_key(&domain, "leases")];
            let mut args = Vec::with_capacity(members.len() + 1);
            args.push(s.lease.as_millis().to_string());
            args.extend(members);
            if let Err(e) = s.redis.script::<i64, _, _>(&RENEW, &keys, &args).await {
                tracing::debug!(domain, error = %e, "could not renew shared slots");
            }
        }
    }
}

/// Send freed slots that no admission carried, [`FLUSH_AFTER`] after the
/// first of them: under load admissions carry nearly all releases (one
/// round trip per request); when idle a release costs one of its own.
async fn flush_forever(slots: std::sync::Weak<SharedSlots>) {
    loop {
        let Some(s) = slots.upgrade() else { return };
        // Held at most a second at a time, so a dropped SharedSlots ends
        // this task. The Notify keeps a permit when nobody waits: a release
        // meanwhile is not missed.
        if tokio::time::timeout(Duration::from_secs(1), s.flush.notified())
            .await
            .is_err()
        {
            continue;
        }
        tokio::time::sleep(FLUSH_AFTER).await;
        s.flush_pending().await;
    }
}

/// Wake this replica's waiters when any replica frees a slot.
async fn listen_forever(slots: std::sync::Weak<SharedSlots>) {
    let Some(s) = slots.upgrade() else { return };
    let mut events = s.redis.events();
    drop(s);
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Missed some: wake everyone to look again.
                let Some(s) = slots.upgrade() else { return };
                for d in s.domains.iter() {
                    d.wake.notify_waiters();
                }
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(s) = slots.upgrade() else { return };
        if event.kind == "rel" {
            if let Some(d) = s.domains.get(&event.payload) {
                d.wake.notify_waiters();
            }
        } else if event.kind == "lim" && s.domains.contains_key(&event.payload) {
            // What this replica shows follows a limit or pause learned
            // elsewhere (admissions read Redis anyway).
            s.refresh(&event.payload).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::conn::testing::Server;

    fn limits(rps: f64, max_concurrent: u32) -> Limits {
        Limits {
            rps,
            max_concurrent,
            burst: 1,
            pinned: false,
            stated: true,
            rps_ceiling: 100_000.0,
            concurrency_ceiling: 1024,
            queue_capacity: 1000,
        }
    }

    fn replica(server: &Server, lease: Duration) -> Arc<SharedSlots> {
        SharedSlots::with_lease(Redis::open(&server.config("t")).expect("open"), lease)
    }

    fn server() -> Server {
        Server::start().expect("redis-server is not installed (scripts/test installs it)")
    }

    async fn admit(s: &Arc<SharedSlots>, l: &Limits, wait: Duration) -> SharedPermit {
        match s.acquire("api.test", l, wait).await {
            Ok(Ok(p)) => p,
            Ok(Err(denied)) => panic!("not admitted: {denied:?}"),
            Err(Unavailable(e)) => panic!("redis did not answer: {e}"),
        }
    }

    fn n(p: &SharedPermit) -> u64 {
        match p.start_no() {
            crate::admission::StartNo::Shared(n) => n,
            other => panic!("not a shared start: {other:?}"),
        }
    }

    fn count(after: u64, remaining: u64) -> Option<SharedSpent> {
        Some(SharedSpent {
            after,
            remaining,
            reset_in: Duration::from_secs(30),
        })
    }

    async fn refused_at_once(s: &Arc<SharedSlots>, l: &Limits) -> bool {
        matches!(
            s.acquire("api.test", l, Duration::from_millis(200)).await,
            Ok(Err(Denied::WaitTimeout { .. }))
        )
    }

    /// A count is sent again only when the last one sent does not imply
    /// it: first, fewer left than implied (someone else spends the budget),
    /// more beyond the slack (requests that never reached the API), a moved
    /// reset (a new window) or a passed one; an answer to an earlier start
    /// sends nothing.
    #[test]
    fn a_count_is_sent_only_when_the_last_one_does_not_imply_it() {
        let now = Instant::now();
        let c = |after, remaining, reset_s: u64| SharedSpent {
            after,
            remaining,
            reset_in: Duration::from_secs(reset_s),
        };
        let mut sent = Sent::default();
        assert!(sent.spent_due(c(10, 40, 30), now), "the first count");
        sent.spent = Some((c(10, 40, 30), now + Duration::from_secs(30)));
        // 5 starts later, 35 left: implied.
        assert!(!sent.spent_due(c(15, 35, 30), now));
        // Up to the slack more: still implied (2, or a twentieth).
        assert!(!sent.spent_due(c(15, 37, 30), now));
        assert!(sent.spent_due(c(15, 38, 30), now));
        // One fewer than implied: sent at once.
        assert!(sent.spent_due(c(15, 34, 30), now));
        // An answer to an earlier start: nothing.
        assert!(!sent.spent_due(c(9, 0, 30), now));
        // The reset moved by more than a second: a new window.
        assert!(!sent.spent_due(c(15, 35, 31), now));
        assert!(sent.spent_due(c(15, 35, 32), now));
        // The sent one's reset passed.
        let later = now + Duration::from_secs(30);
        assert!(sent.spent_due(c(15, 35, 30), later));
        // A large count: the slack is a twentieth of it.
        sent.spent = Some((c(0, 10_000, 30), now + Duration::from_secs(30)));
        assert!(!sent.spent_due(c(100, 9_900 + 495, 30), now));
        assert!(sent.spent_due(c(100, 9_900 + 496, 30), now));
    }

    /// Starts are numbered across replicas; an answer's count, as of its
    /// start, is spent by every replica's later starts: once they used it
    /// up nothing more is granted, and a late answer of an earlier start
    /// does not undo a newer count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn starts_after_an_answer_spend_its_count_on_every_replica() {
        let srv = server();
        let (a, b) = (replica(&srv, LEASE), replica(&srv, LEASE));
        let l = limits(10_000.0, 100);
        let p1 = admit(&a, &l, Duration::from_secs(1)).await;
        let p2 = admit(&b, &l, Duration::from_secs(1)).await;
        let p3 = admit(&a, &l, Duration::from_secs(1)).await;
        assert_eq!((n(&p1), n(&p2), n(&p3)), (1, 2, 3));
        // Answer to 2: two left. 3 spent one; 4 spends the other.
        a.budget("api.test", None, count(2, 2)).await;
        let p4 = admit(&b, &l, Duration::from_secs(1)).await;
        assert_eq!(n(&p4), 4);
        // A late answer to 1 (five left then) changes nothing.
        b.budget("api.test", None, count(1, 5)).await;
        assert!(refused_at_once(&a, &l).await, "granted past the count");
        assert!(refused_at_once(&b, &l).await, "granted past the count");
        // A later answer that says more is left (the API never got some,
        // or its window reset) replaces it: granted again, numbered on.
        b.budget("api.test", None, count(4, 10)).await;
        let p5 = admit(&a, &l, Duration::from_secs(1)).await;
        assert_eq!(n(&p5), 5);
        drop((p1, p2, p3, p4, p5));
    }

    /// Two replicas alternating on one domain keep the domain's pace
    /// together: n starts take at least (n - 1) intervals.    /// Two replicas alternating on one domain keep the domain's pace
    /// together: n starts take at least (n - 1) intervals.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_one_pace() {
        let srv = server();
        let (a, b) = (replica(&srv, LEASE), replica(&srv, LEASE));
        let l = limits(20.0, 100);
        let started = Instant::now();
        for i in 0..11 {
            let r = if i % 2 == 0 { &a } else { &b };
            drop(admit(r, &l, Duration::from_secs(5)).await);
        }
        // 11 starts at 20/s: at least 10 × 50 ms on the server's clock
        // (minus the first answer's trip, which a replica cannot see).
        assert!(
            started.elapsed() >= Duration::from_millis(495),
            "{:?}",
            started.elapsed()
        );
    }

    /// `max_concurrent` holds across replicas; a release on one wakes a
    /// waiter on the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_concurrency_cap_is_shared_and_a_release_wakes_the_other_replica() {
        let srv = server();
        let (a, b) = (replica(&srv, LEASE), replica(&srv, LEASE));
        let l = limits(10_000.0, 2);
        let p1 = admit(&a, &l, Duration::from_secs(1)).await;
        let _p2 = admit(&a, &l, Duration::from_secs(1)).await;
        let (b2, l2) = (b.clone(), l.clone());
        let waiter = tokio::spawn(async move { admit(&b2, &l2, Duration::from_secs(20)).await });
        // B asked and saw the cap full: it waits (its view says 2 held).
        for _ in 0..500 {
            if b.local("api.test").1 == 1 && b.view("api.test").is_some_and(|v| v.held == 2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(b.view("api.test").map(|v| v.held), Some(2));
        assert!(!waiter.is_finished(), "admitted over the cap");
        drop(p1);
        let p3 = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by the release")
            .expect("task");
        assert_eq!(b.view("api.test").map(|v| v.held), Some(2));
        drop(p3);
    }

    /// A replica that dies holding slots (no release, no renewal) loses
    /// them after one lease; a live one keeps its slots past the lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_replicas_slots_expire_with_their_lease() {
        let srv = server();
        let lease = Duration::from_millis(600);
        let live = replica(&srv, lease);
        let l = limits(10_000.0, 2);
        let kept = admit(&live, &l, Duration::from_secs(1)).await;
        {
            let dead = replica(&srv, lease);
            let p = admit(&dead, &l, Duration::from_secs(1)).await;
            // Killed: neither released nor renewed any more.
            dead.leases.clear();
            std::mem::forget(p);
        }
        let other = replica(&srv, lease);
        let began = Instant::now();
        let p = admit(&other, &l, Duration::from_secs(10)).await;
        assert!(
            began.elapsed() >= Duration::from_millis(300),
            "the dead slot was free early"
        );
        // The live replica's slot outlived several leases (renewed): the cap
        // is still full for a third request.
        tokio::time::sleep(lease * 2).await;
        let r = other
            .acquire("api.test", &l, Duration::from_millis(100))
            .await
            .expect("redis");
        assert!(
            matches!(r, Err(Denied::WaitTimeout { .. })),
            "renewed slot was lost"
        );
        drop((kept, p));
    }

    /// A raised limit written by any replica applies to the next booking at
    /// once, however long the old backlog was; a lowered one too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_limit_takes_effect_at_once() {
        let srv = server();
        let a = replica(&srv, LEASE);
        let l = limits(1.0, 100);
        // Book 6 slots at 1/s: the backlog reaches ~5 s.
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (a, l) = (a.clone(), l.clone());
            tasks.push(tokio::spawn(async move {
                a.acquire("api.test", &l, Duration::from_secs(30)).await
            }));
        }
        for _ in 0..500 {
            if a.view("api.test").is_some_and(|v| v.held == 6) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let r = a.redis();
        let _: () = r
            .query(
                redis::cmd("HSET")
                    .arg(r.domain_key("api.test", "limits"))
                    .arg("rps")
                    .arg(1000.0)
                    .clone(),
            )
            .await
            .expect("hset");
        let began = Instant::now();
        let _p = admit(&a, &l, Duration::from_secs(30)).await;
        assert!(
            began.elapsed() < Duration::from_secs(4),
            "held back by the old schedule: {:?}",
            began.elapsed()
        );
        let v = a.view("api.test").expect("view");
        assert_eq!(v.rps, 1000.0);
        assert!(v.rps_learned);
        for t in tasks {
            t.abort();
        }
    }

    /// A pause set through one replica holds the other's admissions back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pause_applies_on_every_replica() {
        let srv = server();
        let (a, b) = (replica(&srv, LEASE), replica(&srv, LEASE));
        let l = limits(10_000.0, 100);
        a.pause("api.test", Duration::from_millis(400))
            .await
            .expect("pause");
        let began = Instant::now();
        let _p = admit(&b, &l, Duration::from_secs(5)).await;
        assert!(
            began.elapsed() >= Duration::from_millis(350),
            "{:?}",
            began.elapsed()
        );
        // Too short a patience: refused at once with the pause as retry.
        a.pause("api.test", Duration::from_secs(30))
            .await
            .expect("pause");
        let r = b
            .acquire("api.test", &l, Duration::from_secs(1))
            .await
            .expect("redis");
        match r {
            Err(Denied::WaitTimeout { retry_after }) => {
                assert!(retry_after > Duration::from_secs(20), "{retry_after:?}")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("admitted during a pause"),
        }
    }

    /// A client that gives up while its booking is being made leaves no
    /// slot behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_wait_frees_its_slot() {
        let srv = server();
        let a = replica(&srv, LEASE);
        let l = limits(2.0, 1);
        let _first = admit(&a, &l, Duration::from_secs(1)).await;
        // Queued behind the cap, then abandoned.
        let gone = tokio::time::timeout(
            Duration::from_millis(100),
            a.acquire("api.test", &l, Duration::from_secs(10)),
        )
        .await;
        assert!(gone.is_err(), "there was no slot to give");
        assert_eq!(a.local("api.test"), (1, 0), "the waiter left the queue");
    }

    /// An admission carries the releases queued before it: with the cap
    /// full and every holder gone, the next admission gets a slot in one
    /// round trip, with no release of its own sent (no flusher here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn releases_ride_on_the_next_admission() {
        let srv = server();
        // A lease long enough that no renewal (a script call of its own) can
        // fall between the two counts on a slow machine.
        let a = SharedSlots::build(
            Redis::open(&srv.config("t")).expect("open"),
            Duration::from_secs(600),
            false,
        );
        let l = limits(100_000.0, 3);
        let r = a.redis().clone();
        let evalsha = || async {
            let info: String = r
                .query(redis::cmd("INFO").arg("commandstats").clone())
                .await
                .expect("info");
            info.lines()
                .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let held: Vec<SharedPermit> =
            futures::future::join_all((0..3).map(|_| admit(&a, &l, Duration::from_secs(1)))).await;
        drop(held);
        let before = evalsha().await;
        let p = admit(&a, &l, Duration::from_millis(50)).await;
        assert_eq!(evalsha().await - before, 1, "one round trip");
        assert_eq!(
            a.view("api.test").map(|v| v.held),
            Some(1),
            "three freed, one taken"
        );
        drop(p);
    }

    /// Many requests of one replica at once (they go to Redis in batches):
    /// the cap holds inside a batch, and the pace spaces them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_asking_together_keep_the_cap_and_the_pace() {
        let srv = server();
        let a = replica(&srv, LEASE);
        let l = limits(20.0, 3);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (a, l) = (a.clone(), l.clone());
            tasks.push(tokio::spawn(async move {
                admit(&a, &l, Duration::from_secs(30)).await
            }));
        }
        // Three hold slots; seven wait.
        for _ in 0..1000 {
            if a.local("api.test") == (3, 7) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(a.local("api.test"), (3, 7));
        let mut done = 0;
        while done < 10 {
            // Finish whichever requests were admitted; the rest follow.
            let (finished, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut tasks)
                .into_iter()
                .partition(|t| t.is_finished());
            tasks = rest;
            for t in finished {
                drop(t.await.expect("task"));
                done += 1;
            }
            assert!(
                a.view("api.test").is_none_or(|v| v.held <= 3),
                "over the cap"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // 10 starts at 20/s: at least 9 intervals of 50 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(440),
            "{:?}",
            started.elapsed()
        );
    }

    /// A start made late by a slow answer does not squeeze the next one
    /// against it: this replica's starts stay as far apart as their
    /// bookings.
    #[test]
    fn starts_keep_the_distance_of_their_bookings() {
        let d = Domain::new();
        let t0 = Instant::now();
        // Booked at 1.0 s (Redis clock), its answer came 150 ms late.
        let first = d.spaced(t0 + Duration::from_millis(150), 1_000_000);
        assert_eq!(first, t0 + Duration::from_millis(150));
        // Booked 200 ms later, its answer on time: planned for t0 + 200 ms,
        // moved to 200 ms after the late first start.
        let second = d.spaced(t0 + Duration::from_millis(200), 1_200_000);
        assert_eq!(second, t0 + Duration::from_millis(350));
        // An earlier booking handled after a later one is not held back.
        let early = d.spaced(t0 + Duration::from_millis(100), 1_100_000);
        assert_eq!(early, t0 + Duration::from_millis(100));
        // Far apart already: unchanged.
        let later = d.spaced(t0 + Duration::from_secs(10), 6_000_000);
        assert_eq!(later, t0 + Duration::from_secs(10));
    }

    /// A release that no admission carries still reaches Redis.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_flusher_sends_releases_nobody_carried() {
        let srv = server();
        let a = replica(&srv, LEASE);
        let l = limits(100_000.0, 4);
        drop(admit(&a, &l, Duration::from_secs(1)).await);
        let r = a.redis();
        let leases = r.domain_key("api.test", "leases");
        let mut held = u64::MAX;
        for _ in 0..400 {
            held = r
                .query(redis::cmd("ZCARD").arg(&leases).clone())
                .await
                .expect("zcard");
            if held == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(held, 0, "the release was flushed");
    }

    #[tokio::test]
    async fn redis_down_is_reported_not_waited_for() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let cfg = crate::config::RedisConfig {
            url: format!("redis://127.0.0.1:{port}"),
            url_source: "config".into(),
            timeout: Duration::from_millis(100),
            prefix: "t".into(),
            cluster: false,
        };
        let a = SharedSlots::new(Redis::open(&cfg).expect("open"));
        let r = a
            .acquire("api.test", &limits(2.0, 1), Duration::from_secs(60))
            .await;
        assert!(r.is_err(), "no Redis, no shared answer");
        assert_eq!(a.local("api.test"), (0, 0));
    }
}

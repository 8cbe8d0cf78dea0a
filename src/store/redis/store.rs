//! The [`Store`] on Redis: the job queue, webhook deliveries, secrets,
//! idempotency records and learned limits that N replicas share
//! (docs/distributed.md, "Storage layout", lists every key).
//!
//! The embedded backend is the reference: every method answers as it does.
//! Where it uses a transaction, this one runs a Lua script (atomic on the
//! server, one round trip). The scripts keep the indexes that SQLite kept
//! for it: the due set, the ended set, per-workspace lists (all, and by
//! status), the uniqueness map of `(workspace, idempotent_key)` and the
//! per-status counters, each changed in the same script as the job.
//!
//! Redis Cluster: every job, delivery and index key is
//! `<prefix>:{jobs}:…`, so the hash tag `{jobs}` puts them all in one slot
//! and one script may touch any of them. Scripts get that base,
//! `<prefix>:{jobs}`, as `KEYS[1]` and derive the per-job and per-delivery
//! keys from it (their names depend on ids read inside the script, so they
//! cannot all be declared up front); being in `KEYS[1]`'s slot is what
//! Cluster requires of them. The cost: the whole queue lives on one shard.
//! Idempotency records, secrets and learned limits are single keys, each in
//! its own slot (a record, `<prefix>:idem:{<scope>}:record`, shares its
//! scope's tag with the in-flight claim of `idempotency/shared.rs`).
//!
//! Values the embedded backend seals (job spec and result, webhook URL and
//! payload, secrets, idempotency headers and body) are sealed here with the
//! same key, format and associated data (`seal.rs`), and stored as binary
//! strings.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::{Script, Value};

use super::conn::Redis;
use crate::config::EncryptionKey;
use crate::store::seal::{self, Seal};
use crate::store::{
    Delivery, DeliveryState, IdempotencyRecord, JobEnd, JobRecord, JobStatus, LearnedLimit, Store,
    StoreError, WebhookSecrets,
};

// Associated data of each sealed value: the embedded backend's
// `table.column`, so a value means the same thing in either backend.
const JOBS_SPEC: &str = "jobs.spec";
const JOBS_RESULT: &str = "jobs.result";
const DELIVERIES_URL: &str = "deliveries.url";
const DELIVERIES_PAYLOAD: &str = "deliveries.payload";
const SECRETS_PRIMARY: &str = "webhook_secrets.primary_secret";
const SECRETS_SECONDARY: &str = "webhook_secrets.secondary_secret";
const IDEMPOTENCY_HEADERS: &str = "idempotency.headers";
const IDEMPOTENCY_BODY: &str = "idempotency.body";

/// Ended jobs looked at per sweep script: a script blocks Redis while it
/// runs, so a backlog is swept in many short ones.
const SWEEP_BATCH: usize = 500;

/// Between attempts of indexing older jobs while Redis cannot be reached.
const INDEX_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Past this, an idempotency record's `expires_at` is "never" (no
/// `PEXPIREAT`): year ~285 000, and beyond what a Lua number holds exactly.
const MAX_EXPIRE_MS: u64 = 1 << 53;

/// Shared by every job script: key names under `KEYS[1]` and the index
/// upkeep around a status change.
const PRELUDE: &str = r#"
local B = KEYS[1]
local DUE = B .. ':due'
local ENDED = B .. ':ended'
local UNIQ = B .. ':uniq'
local COUNTS = B .. ':counts'
local DDUE = B .. ':deliveries:due'
local DSEQ = B .. ':deliveries:seq'
local function jk(id) return B .. ':job:' .. id end
-- The fields of the jobs an index's members name (`lmember`: padded time,
-- ':', id), skipping any deleted since.
local function jobs_of(members)
  local out = {}
  for _, m in ipairs(members) do
    local v = redis.call('HGETALL', jk(string.sub(m, 22)))
    if #v > 0 then out[#out + 1] = v end
  end
  return out
end
local function jdk(id) return B .. ':jobd:' .. id end
local function dk(id) return B .. ':delivery:' .. id end
local function wsk(ws) return B .. ':wsall:' .. ws end
local function wssk(ws, st) return B .. ':wss:' .. st .. ':' .. ws end
-- Per workspace and domain (all, and by status); the workspace is
-- length-prefixed, so neither name can run into the other.
local function wsdk(ws, d) return B .. ':wsd:' .. #ws .. ':' .. ws .. ':' .. d end
local function wsdsk(ws, d, st) return B .. ':wsds:' .. st .. ':' .. #ws .. ':' .. ws .. ':' .. d end
local function childk(parent) return B .. ':children:' .. parent end
local function uniq(ws, key) return #ws .. ':' .. ws .. key end
local function pad(n) return string.rep('0', 20 - #n) .. n end
local function lmember(created, id) return pad(created) .. ':' .. id end
local function is_final(st) return st == 'success' or st == 'failed' or st == 'cancelled' end
local function get_job(id)
  local v = redis.call('HMGET', jk(id), 'status', 'ws', 'created', 'next', 'lease', 'updated',
                      'claims', 'key', 'domain', 'parent')
  if not v[1] then return nil end
  if not (v[2] and v[3] and v[4] and v[5] and v[6] and v[7] and v[8]) then
    error('malformed job record ' .. id)
  end
  -- No domain or parent: a job without one, or stored before they were kept.
  return {status = v[1], ws = v[2], created = v[3], next = v[4], lease = v[5],
          updated = v[6], claims = v[7], key = v[8], domain = v[9] or '', parent = v[10] or ''}
end
-- The indexes that depend on a job's status: its counter, the workspace's
-- list of that status (and the workspace's list of its domain and that
-- status), the due set (queued/retrying scored by next attempt,
-- in flight by lease end: a lapsed lease is simply due again) and the
-- ended set (scored by end time, for the retention sweep).
local function index_out(id, j)
  redis.call('HINCRBY', COUNTS, j.status, -1)
  redis.call('ZREM', wssk(j.ws, j.status), lmember(j.created, id))
  if j.domain ~= '' then
    redis.call('ZREM', wsdsk(j.ws, j.domain, j.status), lmember(j.created, id))
  end
  redis.call('ZREM', DUE, id)
  redis.call('ZREM', ENDED, id)
end
local function index_in(id, j)
  redis.call('HINCRBY', COUNTS, j.status, 1)
  redis.call('ZADD', wssk(j.ws, j.status), 0, lmember(j.created, id))
  if j.domain ~= '' then
    redis.call('ZADD', wsdsk(j.ws, j.domain, j.status), 0, lmember(j.created, id))
  end
  if j.status == 'queued' or j.status == 'retrying' then
    redis.call('ZADD', DUE, j.next, id)
  elseif j.status == 'in_flight' then
    redis.call('ZADD', DUE, j.lease, id)
  elseif is_final(j.status) then
    redis.call('ZADD', ENDED, j.updated, id)
  end
end
local function update(id, j, changes)
  index_out(id, j)
  local flat = {}
  for k, v in pairs(changes) do
    j[k] = v
    flat[#flat + 1] = k
    flat[#flat + 1] = v
  end
  redis.call('HSET', jk(id), unpack(flat))
  index_in(id, j)
end
-- A job given as 15 ARGV from index i (see RedisStore::job_args).
local function job_args(i)
  return {id = ARGV[i], ws = ARGV[i + 1], key = ARGV[i + 2], status = ARGV[i + 3],
          spec = ARGV[i + 4], attempts = ARGV[i + 5], claims = ARGV[i + 6],
          next = ARGV[i + 7], lease = ARGV[i + 8], created = ARGV[i + 9],
          updated = ARGV[i + 10], has_result = ARGV[i + 11], result = ARGV[i + 12],
          domain = ARGV[i + 13], parent = ARGV[i + 14]}
end
-- The id of the job holding (ws, key), if any.
local function existing(j)
  local id = redis.call('HGET', UNIQ, uniq(j.ws, j.key))
  if id and redis.call('EXISTS', jk(id)) == 1 then return id end
  return nil
end
local function insert(j)
  local f = {'id', j.id, 'ws', j.ws, 'key', j.key, 'status', j.status, 'spec', j.spec,
             'attempts', j.attempts, 'claims', j.claims, 'next', j.next, 'lease', j.lease,
             'created', j.created, 'updated', j.updated}
  if j.has_result == '1' then
    f[#f + 1] = 'result'
    f[#f + 1] = j.result
  end
  if j.domain ~= '' then
    f[#f + 1] = 'domain'
    f[#f + 1] = j.domain
  end
  if j.parent ~= '' then
    f[#f + 1] = 'parent'
    f[#f + 1] = j.parent
  end
  redis.call('HSET', jk(j.id), unpack(f))
  redis.call('HSET', UNIQ, uniq(j.ws, j.key), j.id)
  redis.call('ZADD', wsk(j.ws), 0, lmember(j.created, j.id))
  if j.domain ~= '' then redis.call('ZADD', wsdk(j.ws, j.domain), 0, lmember(j.created, j.id)) end
  if j.parent ~= '' then redis.call('ZADD', childk(j.parent), 0, lmember(j.created, j.id)) end
  index_in(j.id, j)
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// ARGV: a job (15). Nil when inserted, else the existing job's fields.
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local j = job_args(1)
local id = existing(j)
if id then return redis.call('HGETALL', jk(id)) end
if redis.call('EXISTS', jk(j.id)) == 1 then
  return redis.error_reply('job id ' .. j.id .. ' exists with another key')
end
insert(j)
return false
"#,
    )
});

/// ARGV: now, lease_until, limit. The claimed jobs' fields, in due order.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now, lease = ARGV[1], ARGV[2]
local ids = redis.call('ZRANGEBYSCORE', DUE, '-inf', now, 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local j = get_job(id)
  if j == nil or not (j.status == 'queued' or j.status == 'retrying' or j.status == 'in_flight') then
    redis.call('ZREM', DUE, id)
  else
    update(id, j, {status = 'in_flight', lease = lease, updated = now})
    redis.call('HINCRBY', jk(id), 'claims', 1)
    out[#out + 1] = redis.call('HGETALL', jk(id))
  end
end
return out
"#,
    )
});

/// ARGV: id, claims, lease_until. 1 if renewed.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local j = get_job(id)
if j == nil or j.status ~= 'in_flight' or j.claims ~= ARGV[2] then return 0 end
redis.call('HSET', jk(id), 'lease', ARGV[3])
redis.call('ZADD', DUE, ARGV[3], id)
return 1
"#,
    )
});

/// ARGV: id, claims, status, next_attempt_at, now, calls. 1 if done.
static RESCHEDULE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local j = get_job(id)
if j == nil or j.status ~= 'in_flight' or j.claims ~= ARGV[2] then return 0 end
update(id, j, {status = ARGV[3], next = ARGV[4], lease = '0', updated = ARGV[5]})
redis.call('HINCRBY', jk(id), 'attempts', ARGV[6])
return 1
"#,
    )
});

/// ARGV: id, claims ('' for any), status, result, payload, now, calls,
/// n deliveries, n × (url, quorum), n children, n × job (15). 1 if ended.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id, now = ARGV[1], ARGV[6]
local j = get_job(id)
if j == nil or is_final(j.status) or (ARGV[2] ~= '' and j.claims ~= ARGV[2]) then return 0 end
local nd = tonumber(ARGV[8])
local ci = 9 + 2 * nd
local nc = tonumber(ARGV[ci])
local children = {}
for c = 0, nc - 1 do
  local cj = job_args(ci + 1 + 15 * c)
  -- Checked before anything is written: a script is not rolled back.
  if not existing(cj) and redis.call('EXISTS', jk(cj.id)) == 1 then
    return redis.error_reply('job id ' .. cj.id .. ' exists with another key')
  end
  children[#children + 1] = cj
end
update(id, j, {status = ARGV[3], result = ARGV[4], lease = '0', updated = now})
redis.call('HINCRBY', jk(id), 'attempts', ARGV[7])
for d = 0, nd - 1 do
  local did = tostring(redis.call('INCR', DSEQ))
  redis.call('HSET', dk(did), 'id', did, 'job', id, 'ws', j.ws, 'url', ARGV[9 + 2 * d],
             'quorum', ARGV[10 + 2 * d], 'payload', ARGV[5], 'state', 'pending',
             'attempts', '0', 'next', now, 'updated', now)
  redis.call('ZADD', DDUE, now, pad(did))
  redis.call('RPUSH', jdk(id), did)
end
for _, cj in ipairs(children) do
  if not existing(cj) then insert(cj) end
end
return 1
"#,
    )
});

/// ARGV: id, now. 1 if cancelled.
static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id = ARGV[1]
local j = get_job(id)
if j == nil or is_final(j.status) then return 0 end
update(id, j, {status = 'cancelled', lease = '0', updated = ARGV[2]})
return 1
"#,
    )
});

/// ARGV: id, now. 1 if queued again.
static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id, now = ARGV[1], ARGV[2]
local j = get_job(id)
if j == nil or not (j.status == 'failed' or j.status == 'cancelled') then return 0 end
update(id, j, {status = 'queued', next = now, lease = '0', attempts = '0', updated = now})
return 1
"#,
    )
});

/// ARGV: before, batch, offset (ended jobs kept by earlier batches).
/// Returns {deleted, kept, looked at}.
static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ids = redis.call('ZRANGEBYSCORE', ENDED, '-inf', '(' .. ARGV[1], 'LIMIT', ARGV[3], ARGV[2])
local deleted, kept = 0, 0
for _, id in ipairs(ids) do
  local dids = redis.call('LRANGE', jdk(id), 0, -1)
  local pending = false
  for _, did in ipairs(dids) do
    if redis.call('HGET', dk(did), 'state') == 'pending' then
      pending = true
      break
    end
  end
  local j = get_job(id)
  if j == nil then
    redis.call('ZREM', ENDED, id)
  elseif pending then
    kept = kept + 1
  else
    index_out(id, j)
    redis.call('ZREM', wsk(j.ws), lmember(j.created, id))
    if j.domain ~= '' then redis.call('ZREM', wsdk(j.ws, j.domain), lmember(j.created, id)) end
    if j.parent ~= '' then redis.call('ZREM', childk(j.parent), lmember(j.created, id)) end
    local u = uniq(j.ws, j.key)
    if redis.call('HGET', UNIQ, u) == id then redis.call('HDEL', UNIQ, u) end
    for _, did in ipairs(dids) do
      redis.call('DEL', dk(did))
      redis.call('ZREM', DDUE, pad(did))
    end
    redis.call('DEL', jdk(id), jk(id))
    deleted = deleted + 1
  end
end
return {deleted, kept, #ids}
"#,
    )
});

/// ARGV: workspace, status ('' for all), lex max, limit, domain ('' for
/// all). Jobs' fields.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ws, st, d = ARGV[1], ARGV[2], ARGV[5]
local idx
if d == '' and st == '' then idx = wsk(ws)
elseif d == '' then idx = wssk(ws, st)
elseif st == '' then idx = wsdk(ws, d)
else idx = wsdsk(ws, d, st) end
return jobs_of(redis.call('ZREVRANGEBYLEX', idx, ARGV[3], '-', 'LIMIT', 0, ARGV[4]))
"#,
    )
});

/// ARGV: parent id, limit. The children's fields, oldest first.
static CHILDREN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
return jobs_of(redis.call('ZRANGEBYLEX', childk(ARGV[1]), '-', '+', 'LIMIT', 0, ARGV[2]))
"#,
    )
});

/// ARGV: job ids. `{id, spec}` of each that exists and has neither a
/// domain nor a parent: stored before they were kept (or without a URL and
/// parent at all, which the index pass then leaves as they are).
static UNINDEXED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
for _, id in ipairs(ARGV) do
  local v = redis.call('HMGET', jk(id), 'spec', 'domain', 'parent')
  if v[1] and not v[2] and not v[3] then
    out[#out + 1] = id
    out[#out + 1] = v[1]
  end
end
return out
"#,
    )
});

/// ARGV: n × (id, domain, parent) ('' for none). Writes them into jobs that
/// still have neither, with the index entries `insert` would have made,
/// under the job's status as it is now. Returns how many jobs it indexed.
static INDEX_OLD: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local n = 0
for i = 1, #ARGV, 3 do
  local id, d, p = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local j = get_job(id)
  if j and j.domain == '' and j.parent == '' and (d ~= '' or p ~= '') then
    local m = lmember(j.created, id)
    if d ~= '' then
      redis.call('HSET', jk(id), 'domain', d)
      redis.call('ZADD', wsdk(j.ws, d), 0, m)
      redis.call('ZADD', wsdsk(j.ws, d, j.status), 0, m)
    end
    if p ~= '' then
      redis.call('HSET', jk(id), 'parent', p)
      redis.call('ZADD', childk(p), 0, m)
    end
    n = n + 1
  end
end
return n
"#,
    )
});

/// ARGV: now, limit. Due deliveries' fields, by time then id.
static DELIVERIES_DUE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ms = redis.call('ZRANGEBYSCORE', DDUE, '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, m in ipairs(ms) do
  local v = redis.call('HGETALL', dk((string.gsub(m, '^0+', ''))))
  if #v > 0 then out[#out + 1] = v end
end
return out
"#,
    )
});

/// ARGV: id, state, attempts, next, last_status ('' none), has_error,
/// error, updated.
static DELIVERY_UPDATE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local k = dk(ARGV[1])
if redis.call('EXISTS', k) == 0 then return 0 end
redis.call('HSET', k, 'state', ARGV[2], 'attempts', ARGV[3], 'next', ARGV[4], 'updated', ARGV[8])
if ARGV[5] == '' then redis.call('HDEL', k, 'last_status')
else redis.call('HSET', k, 'last_status', ARGV[5]) end
if ARGV[6] == '0' then redis.call('HDEL', k, 'last_error')
else redis.call('HSET', k, 'last_error', ARGV[7]) end
if ARGV[2] == 'pending' then redis.call('ZADD', DDUE, ARGV[4], pad(ARGV[1]))
else redis.call('ZREM', DDUE, pad(ARGV[1])) end
return 1
"#,
    )
});

/// ARGV: id, attempts before this one, attempts with it, updated, lease_ms.
/// Takes a pending delivery for one attempt if nobody took it since it was
/// read (its attempt count is still the one read): due again only after the
/// lease, so another replica does not send it at the same time.
static DELIVERY_BEGIN: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local k = dk(ARGV[1])
local v = redis.call('HMGET', k, 'state', 'attempts')
if v[1] ~= 'pending' or v[2] ~= ARGV[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now + tonumber(ARGV[5])
redis.call('HSET', k, 'attempts', ARGV[3], 'updated', ARGV[4], 'next', due)
redis.call('ZADD', DDUE, due, pad(ARGV[1]))
return 1
"#,
    )
});

/// ARGV: job ids. Their deliveries' fields, by job in that order, then id.
static DELIVERIES_FOR_JOBS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
for _, id in ipairs(ARGV) do
  for _, did in ipairs(redis.call('LRANGE', jdk(id), 0, -1)) do
    local v = redis.call('HGETALL', dk(did))
    if #v > 0 then out[#out + 1] = v end
  end
end
return out
"#,
    )
});

pub struct RedisStore {
    redis: Arc<Redis>,
    seal: Option<Seal>,
    /// `<prefix>:{jobs}`: `KEYS[1]` of every job script.
    base: String,
}

fn malformed(what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("redis: malformed record: {what}"))
}

/// A hash as read back (`HGETALL`): field name → raw value.
struct Fields {
    what: &'static str,
    map: HashMap<String, Vec<u8>>,
}

impl Fields {
    fn parse(what: &'static str, v: Value) -> Result<Fields, StoreError> {
        let mut map = HashMap::new();
        match v {
            Value::Nil => {}
            Value::Array(items) => {
                if items.len() % 2 != 0 {
                    return Err(malformed(format!("{what}: odd field list")));
                }
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    let k = String::from_utf8(bytes(k)?)
                        .map_err(|_| malformed(format!("{what}: field name")))?;
                    map.insert(k, bytes(v)?);
                }
            }
            Value::Map(pairs) => {
                for (k, v) in pairs {
                    let k = String::from_utf8(bytes(k)?)
                        .map_err(|_| malformed(format!("{what}: field name")))?;
                    map.insert(k, bytes(v)?);
                }
            }
            other => return Err(malformed(format!("{what}: unexpected {other:?}"))),
        }
        Ok(Fields { what, map })
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn opt_raw(&self, name: &str) -> Option<&[u8]> {
        self.map.get(name).map(|v| v.as_slice())
    }

    fn raw(&self, name: &str) -> Result<&[u8], StoreError> {
        self.opt_raw(name)
            .ok_or_else(|| malformed(format!("{}: no {name}", self.what)))
    }

    fn text(&self, name: &str) -> Result<String, StoreError> {
        text(self.raw(name)?.to_vec(), self.what, name)
    }

    fn opt_num<T: FromStr>(&self, name: &str) -> Result<Option<T>, StoreError> {
        self.opt_raw(name)
            .map(|b| {
                std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse::<T>().ok())
                    .ok_or_else(|| malformed(format!("{}: {name} is not a number", self.what)))
            })
            .transpose()
    }

    fn num<T: FromStr>(&self, name: &str) -> Result<T, StoreError> {
        self.opt_num(name)?
            .ok_or_else(|| malformed(format!("{}: no {name}", self.what)))
    }
}

fn text(b: Vec<u8>, what: &str, name: &str) -> Result<String, StoreError> {
    String::from_utf8(b).map_err(|_| malformed(format!("{what}: {name} is not UTF-8")))
}

fn bytes(v: Value) -> Result<Vec<u8>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        other => Err(malformed(format!("unexpected {other:?}"))),
    }
}

fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) | Value::Set(items) => Ok(items),
        other => Err(malformed(format!("expected a list, got {other:?}"))),
    }
}

fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("expected an integer")),
        other => Err(malformed(format!("expected an integer, got {other:?}"))),
    }
}

/// The score of the first member of `ZRANGE key 0 0 WITHSCORES`.
fn first_score(v: Value) -> Result<Option<u64>, StoreError> {
    let mut flat = Vec::new();
    for item in array(v)? {
        match item {
            Value::Array(pair) => flat.extend(pair),
            other => flat.push(other),
        }
    }
    let Some(score) = flat.into_iter().nth(1) else {
        return Ok(None);
    };
    let score = match score {
        Value::Double(d) => d,
        other => {
            let b = bytes(other)?;
            std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or_else(|| malformed("score is not a number"))?
        }
    };
    // Scores are Unix ms, exact up to 2^53; `as` saturates the rest.
    Ok(Some(score.max(0.0) as u64))
}

/// `<created_at, 20 digits>:<id>`: the workspace lists' member, whose
/// byte order is `(created_at, id)` order.
fn pad20(n: u64) -> String {
    format!("{n:020}")
}

/// `ZREVRANGEBYLEX` upper bound for the cursor of the last job of the
/// previous page (`id` empty: every job of that time and older).
fn list_max(after: Option<&(u64, String)>) -> String {
    match after {
        None => "+".into(),
        Some((t, id)) if id.is_empty() => format!("({};", pad20(*t)),
        Some((t, id)) => format!("({}:{id}", pad20(*t)),
    }
}

impl RedisStore {
    /// A store on `redis`; with `key`, values that can hold credentials are
    /// sealed. No I/O: Redis may be down now and up later.
    pub fn new(redis: Arc<Redis>, key: Option<&EncryptionKey>) -> RedisStore {
        let base = redis.key("{jobs}");
        RedisStore {
            redis,
            seal: key.map(Seal::new),
            base,
        }
    }

    /// Whether stored values are sealed with a key.
    pub fn encrypted(&self) -> bool {
        self.seal.is_some()
    }

    fn job_key(&self, id: &str) -> String {
        format!("{}:job:{id}", self.base)
    }

    fn idempotency_key(&self, scope: &str) -> String {
        self.redis.key(&format!("idem:{{{scope}}}:record"))
    }

    fn secrets_key(&self, workspace: &str) -> String {
        self.redis.key(&format!("secrets:{workspace}"))
    }

    fn domains_key(&self) -> String {
        self.redis.key("limits:domains")
    }

    fn seal_bytes(&self, purpose: &str, plain: &[u8]) -> Vec<u8> {
        match &self.seal {
            Some(s) => s.seal(purpose, plain),
            None => plain.to_vec(),
        }
    }

    fn open_bytes(&self, purpose: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        seal::unseal(self.seal.as_ref(), purpose, stored)
            .map_err(|e| StoreError::Backend(format!("{purpose}: {e}")))
    }

    fn open_text(&self, purpose: &str, stored: &[u8]) -> Result<String, StoreError> {
        text(self.open_bytes(purpose, stored)?, "value", purpose)
    }

    /// The lowest score of the sorted set `<base>:<set>` (what is due first).
    async fn earliest(&self, set: &str) -> Result<Option<u64>, StoreError> {
        let v: Value = self
            .redis
            .query(
                redis::cmd("ZRANGE")
                    .arg(format!("{}:{set}", self.base))
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .clone(),
            )
            .await?;
        first_score(v)
    }

    /// Tell the other replicas' runners there is work (a hint: they also
    /// look every `SHARED_POLL`); sent in the background.
    fn announce(&self, kind: &'static str) {
        let redis = self.redis.clone();
        self.redis.spawn(async move {
            let _ = redis.publish(kind, "").await;
        });
    }

    async fn run(&self, script: &Script, args: &[Vec<u8>]) -> Result<Value, StoreError> {
        self.redis.script(script, &[&self.base], args).await
    }

    /// A job as the 15 arguments `job_args` in the scripts reads: the
    /// domain and parent are derived from the spec here, before it is
    /// sealed ('' for none).
    fn job_args(&self, j: &JobRecord, out: &mut Vec<Vec<u8>>) {
        out.extend([
            j.id.clone().into_bytes(),
            j.workspace.clone().into_bytes(),
            j.idempotent_key.clone().into_bytes(),
            j.status.as_str().as_bytes().to_vec(),
            self.seal_bytes(JOBS_SPEC, j.spec.as_bytes()),
            j.attempts.to_string().into_bytes(),
            j.claims.to_string().into_bytes(),
            j.next_attempt_at.to_string().into_bytes(),
            j.lease_until.to_string().into_bytes(),
            j.created_at.to_string().into_bytes(),
            j.updated_at.to_string().into_bytes(),
            if j.result.is_some() { b"1" } else { b"0" }.to_vec(),
            j.result
                .as_deref()
                .map(|r| self.seal_bytes(JOBS_RESULT, r.as_bytes()))
                .unwrap_or_default(),
            crate::store::job_domain(&j.spec)
                .unwrap_or_default()
                .into_bytes(),
            crate::store::job_parent(&j.spec)
                .unwrap_or_default()
                .into_bytes(),
        ]);
    }

    fn job_from(&self, v: Value) -> Result<JobRecord, StoreError> {
        let f = Fields::parse("job", v)?;
        let status = f.text("status")?;
        Ok(JobRecord {
            id: f.text("id")?,
            workspace: f.text("ws")?,
            idempotent_key: f.text("key")?,
            status: JobStatus::parse(&status)
                .ok_or_else(|| malformed(format!("job: status {status:?}")))?,
            spec: self.open_text(JOBS_SPEC, f.raw("spec")?)?,
            attempts: f.num("attempts")?,
            claims: f.num("claims")?,
            next_attempt_at: f.num("next")?,
            lease_until: f.num("lease")?,
            created_at: f.num("created")?,
            updated_at: f.num("updated")?,
            result: f
                .opt_raw("result")
                .map(|r| self.open_text(JOBS_RESULT, r))
                .transpose()?,
        })
    }

    fn jobs_from(&self, v: Value) -> Result<Vec<JobRecord>, StoreError> {
        array(v)?.into_iter().map(|j| self.job_from(j)).collect()
    }

    fn delivery_from(&self, v: Value) -> Result<Delivery, StoreError> {
        let f = Fields::parse("delivery", v)?;
        let state = f.text("state")?;
        Ok(Delivery {
            id: f.num("id")?,
            job_id: f.text("job")?,
            workspace: f.text("ws")?,
            url: self.open_text(DELIVERIES_URL, f.raw("url")?)?,
            has_quorum_vote: f.raw("quorum")? == b"1",
            payload: self.open_bytes(DELIVERIES_PAYLOAD, f.raw("payload")?)?,
            state: DeliveryState::parse(&state)
                .ok_or_else(|| malformed(format!("delivery: state {state:?}")))?,
            attempts: f.num("attempts")?,
            next_attempt_at: f.num("next")?,
            last_status: f.opt_num("last_status")?,
            last_error: f
                .opt_raw("last_error")
                .map(|b| text(b.to_vec(), "delivery", "last_error"))
                .transpose()?,
            updated_at: f.num("updated")?,
        })
    }

    fn deliveries_from(&self, v: Value) -> Result<Vec<Delivery>, StoreError> {
        array(v)?
            .into_iter()
            .map(|d| self.delivery_from(d))
            .collect()
    }

    /// One page of a workspace's list, or of its list of `domain` ('' for
    /// every domain).
    async fn list_page(
        &self,
        workspace: &str,
        domain: &str,
        status: Option<JobStatus>,
        limit: usize,
        after: Option<(u64, String)>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let args = [
            arg(workspace),
            arg(status.map(|s| s.as_str()).unwrap_or("")),
            arg(list_max(after.as_ref())),
            arg(limit.min(i64::MAX as usize)),
            arg(domain),
        ];
        let v = self.run(&LIST, &args).await?;
        self.jobs_from(v)
    }

    /// Index the domain and parent of jobs stored before this version kept
    /// them (the Redis side of the embedded store's schema-7 backfill),
    /// once per Redis: done when `<base>:indexed:v1` exists. Walks the
    /// uniqueness map (every job has an entry) `HSCAN` batch by batch; the
    /// specs are read and unsealed here, the index entries written by a
    /// script against the job as it is then. Safe to run on several
    /// replicas at once. Returns how many jobs it indexed.
    pub async fn index_old_jobs(&self) -> Result<u64, StoreError> {
        let done = format!("{}:indexed:v1", self.base);
        let exists: i64 = self
            .redis
            .query(redis::cmd("EXISTS").arg(&done).clone())
            .await?;
        if exists == 1 {
            return Ok(0);
        }
        let uniq = format!("{}:uniq", self.base);
        let mut cursor = "0".to_string();
        let mut indexed = 0u64;
        loop {
            let (next, pairs): (String, Vec<Vec<u8>>) = self
                .redis
                .query(
                    redis::cmd("HSCAN")
                        .arg(&uniq)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(500)
                        .clone(),
                )
                .await?;
            let ids: Vec<Vec<u8>> = pairs.into_iter().skip(1).step_by(2).collect();
            if !ids.is_empty() {
                let found = array(self.run(&UNINDEXED, &ids).await?)?;
                let mut args = Vec::new();
                let mut it = found.into_iter();
                while let (Some(id), Some(spec)) = (it.next(), it.next()) {
                    let id = bytes(id)?;
                    let spec = self.open_text(JOBS_SPEC, &bytes(spec)?)?;
                    let domain = crate::store::job_domain(&spec).unwrap_or_default();
                    let parent = crate::store::job_parent(&spec).unwrap_or_default();
                    if domain.is_empty() && parent.is_empty() {
                        continue;
                    }
                    args.extend([id, domain.into_bytes(), parent.into_bytes()]);
                }
                if !args.is_empty() {
                    indexed +=
                        u64::try_from(int(&self.run(&INDEX_OLD, &args).await?)?).unwrap_or(0);
                }
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        self.redis
            .query::<Value>(redis::cmd("SET").arg(&done).arg("1").clone())
            .await?;
        Ok(indexed)
    }

    /// [`RedisStore::index_old_jobs`] in the background, again every
    /// [`INDEX_RETRY`] until it succeeds (Redis may be down at start).
    pub fn index_old_jobs_in_background(self: &Arc<Self>) {
        let store = self.clone();
        self.redis.spawn(async move {
            loop {
                match store.index_old_jobs().await {
                    Ok(0) => return,
                    Ok(n) => {
                        tracing::info!(
                            jobs = n,
                            "indexed the domain and parent of jobs stored by an older version"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot index older jobs by domain yet; trying again");
                        tokio::time::sleep(INDEX_RETRY).await;
                    }
                }
            }
        });
    }

    async fn flag(&self, script: &Script, args: &[Vec<u8>]) -> Result<bool, StoreError> {
        Ok(int(&self.run(script, args).await?)? == 1)
    }
}

fn arg(s: impl ToString) -> Vec<u8> {
    s.to_string().into_bytes()
}

#[async_trait]
impl Store for RedisStore {
    /// Every replica on this Redis writes it.
    fn shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.redis
            .query::<Value>(redis::cmd("PING").clone())
            .await
            .map(|_| ())
    }

    async fn learned_limits(&self) -> Result<Vec<LearnedLimit>, StoreError> {
        let mut domains: Vec<String> = self
            .redis
            .query(redis::cmd("SMEMBERS").arg(self.domains_key()).clone())
            .await?;
        domains.sort();
        if domains.is_empty() {
            return Ok(Vec::new());
        }
        // One command per domain, all in flight at once (the connection
        // pipelines them): each hash lives in its domain's slot, so on a
        // Redis Cluster they may sit on different nodes.
        let hashes: Vec<Value> = futures::future::try_join_all(domains.iter().map(|d| {
            self.redis.query::<Value>(
                redis::cmd("HGETALL")
                    .arg(self.redis.domain_key(d, "limits"))
                    .clone(),
            )
        }))
        .await?;
        let mut out = Vec::with_capacity(domains.len());
        for (domain, v) in domains.into_iter().zip(hashes) {
            let f = Fields::parse("learned limit", v)?;
            if f.is_empty() {
                continue;
            }
            out.push(LearnedLimit {
                domain,
                rps: f.opt_num("rps")?,
                max_concurrent: f.opt_num("max_concurrent")?,
                updated_at: f.opt_num("updated_at")?.unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn save_learned_limit(&self, limit: LearnedLimit) -> Result<(), StoreError> {
        // The set first: a domain listed without its hash is skipped, a hash
        // not listed would be forgotten. Two keys in two slots (the hash
        // shares its domain's tag with the admission state), so two writes.
        let _: i64 = self
            .redis
            .query(
                redis::cmd("SADD")
                    .arg(self.domains_key())
                    .arg(&limit.domain)
                    .clone(),
            )
            .await?;
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.redis.domain_key(&limit.domain, "limits"));
        if let Some(rps) = limit.rps {
            cmd.arg("rps").arg(rps.to_string());
        }
        if let Some(c) = limit.max_concurrent {
            cmd.arg("max_concurrent").arg(c);
        }
        cmd.arg("updated_at").arg(limit.updated_at);
        let _: i64 = self.redis.query(cmd).await?;
        Ok(())
    }

    async fn idempotency_get(
        &self,
        scope: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let v: Value = self
            .redis
            .query(
                redis::cmd("HGETALL")
                    .arg(self.idempotency_key(scope))
                    .clone(),
            )
            .await?;
        let f = Fields::parse("idempotency record", v)?;
        if f.is_empty() {
            return Ok(None);
        }
        let expires_at: u64 = f.num("expires")?;
        if expires_at <= now_ms {
            return Ok(None);
        }
        Ok(Some(IdempotencyRecord {
            scope: scope.to_string(),
            fingerprint: f.text("fingerprint")?,
            status: f.num("status")?,
            reason: f
                .opt_raw("reason")
                .map(|b| text(b.to_vec(), "idempotency record", "reason"))
                .transpose()?,
            headers: self.open_bytes(IDEMPOTENCY_HEADERS, f.raw("headers")?)?,
            body: self.open_bytes(IDEMPOTENCY_BODY, f.raw("body")?)?,
            created_at: f.num("created")?,
            expires_at,
        }))
    }

    async fn idempotency_put(&self, record: IdempotencyRecord) -> Result<(), StoreError> {
        let key = self.idempotency_key(&record.scope);
        let headers = self.seal_bytes(IDEMPOTENCY_HEADERS, &record.headers);
        let body = self.seal_bytes(IDEMPOTENCY_BODY, &record.body);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key)
            .arg("fingerprint")
            .arg(&record.fingerprint)
            .arg("status")
            .arg(record.status)
            .arg("headers")
            .arg(headers)
            .arg("body")
            .arg(body)
            .arg("created")
            .arg(record.created_at)
            .arg("expires")
            .arg(record.expires_at);
        if let Some(reason) = &record.reason {
            hset.arg("reason").arg(reason);
        }
        // Replace, not merge, and expire with the record: Redis deletes it
        // at `expires_at` (one MULTI, one key: atomic on a cluster too).
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        pipe.add_command(hset).ignore();
        if record.expires_at < MAX_EXPIRE_MS {
            pipe.cmd("PEXPIREAT")
                .arg(&key)
                .arg(record.expires_at)
                .ignore();
        }
        self.redis.pipe::<()>(pipe).await
    }

    /// Redis deletes each record itself at its `expires_at` (`PEXPIREAT`),
    /// so there is nothing left to sweep.
    async fn idempotency_sweep(&self, _now_ms: u64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn job_insert(&self, job: JobRecord) -> Result<Option<JobRecord>, StoreError> {
        let mut args = Vec::with_capacity(15);
        self.job_args(&job, &mut args);
        match self.run(&INSERT, &args).await? {
            Value::Nil => {
                self.announce("jobs");
                Ok(None)
            }
            v => self.job_from(v).map(Some),
        }
    }

    async fn job_get(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let v: Value = self
            .redis
            .query(redis::cmd("HGETALL").arg(self.job_key(id)).clone())
            .await?;
        match &v {
            Value::Nil => return Ok(None),
            Value::Array(a) if a.is_empty() => return Ok(None),
            Value::Map(m) if m.is_empty() => return Ok(None),
            _ => {}
        }
        self.job_from(v).map(Some)
    }

    async fn jobs_claim(
        &self,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let args = [
            arg(now_ms),
            arg(now_ms.saturating_add(lease_ms)),
            arg(limit.min(i64::MAX as usize)),
        ];
        let v = self.run(&CLAIM, &args).await?;
        self.jobs_from(v)
    }

    /// Nothing, on purpose: the embedded backend's one process knows at
    /// start that every in-flight job lost its runner with it. With shared
    /// storage the other replicas' leases are live runs; releasing them
    /// would run those jobs twice. A lease whose runner did die lapses, and
    /// `jobs_claim` takes the job again (the due set scores an in-flight job
    /// by its lease end).
    async fn jobs_release_leases(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn job_renew(&self, id: &str, claims: u32, lease_until: u64) -> Result<bool, StoreError> {
        self.flag(&RENEW, &[arg(id), arg(claims), arg(lease_until)])
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
        let args = [
            arg(id),
            arg(claims),
            arg(status.as_str()),
            arg(next_attempt_at),
            arg(super::super::now_ms()),
            arg(calls),
        ];
        let done = self.flag(&RESCHEDULE, &args).await?;
        if done {
            self.announce("jobs");
        }
        Ok(done)
    }

    async fn job_finish(
        &self,
        id: &str,
        claims: Option<u32>,
        end: JobEnd,
    ) -> Result<bool, StoreError> {
        let mut args = vec![
            arg(id),
            claims.map(arg).unwrap_or_default(),
            arg(end.status.as_str()),
            self.seal_bytes(JOBS_RESULT, end.result.as_bytes()),
            // Sealed once for every delivery, as the embedded backend does.
            self.seal_bytes(DELIVERIES_PAYLOAD, &end.payload),
            arg(super::super::now_ms()),
            arg(end.calls),
            arg(end.deliveries.len()),
        ];
        for d in &end.deliveries {
            args.push(self.seal_bytes(DELIVERIES_URL, d.url.as_bytes()));
            args.push(if d.has_quorum_vote { b"1" } else { b"0" }.to_vec());
        }
        args.push(arg(end.children.len()));
        for c in &end.children {
            self.job_args(c, &mut args);
        }
        let done = self.flag(&FINISH, &args).await?;
        if done && !end.deliveries.is_empty() {
            self.announce("deliveries");
        }
        if done && !end.children.is_empty() {
            self.announce("jobs");
        }
        Ok(done)
    }

    async fn jobs_list(
        &self,
        workspace: &str,
        status: Option<JobStatus>,
        limit: usize,
        after: Option<(u64, String)>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.list_page(workspace, "", status, limit, after).await
    }

    async fn jobs_list_by_domain(
        &self,
        workspace: &str,
        domain: &str,
        status: Option<JobStatus>,
        limit: usize,
        after: Option<(u64, String)>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        if domain.is_empty() {
            return Ok(Vec::new());
        }
        self.list_page(workspace, domain, status, limit, after)
            .await
    }

    async fn job_children(
        &self,
        parent_id: &str,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let v = self
            .run(
                &CHILDREN,
                &[arg(parent_id), arg(limit.min(i64::MAX as usize))],
            )
            .await?;
        self.jobs_from(v)
    }

    async fn job_requeue(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let done = self.flag(&REQUEUE, &[arg(id), arg(now_ms)]).await?;
        if done {
            self.announce("jobs");
        }
        Ok(done)
    }

    async fn jobs_sweep(&self, before_ms: u64) -> Result<u64, StoreError> {
        let mut total = 0u64;
        // Ended jobs kept (a delivery still pending) stay first in the ended
        // set: later batches start after them.
        let mut kept = 0u64;
        loop {
            let v = self
                .run(&SWEEP, &[arg(before_ms), arg(SWEEP_BATCH), arg(kept)])
                .await?;
            let r = array(v)?;
            let [deleted, k, seen] = r.as_slice() else {
                return Err(malformed("sweep answer"));
            };
            total += int(deleted)?.max(0) as u64;
            kept += int(k)?.max(0) as u64;
            if (int(seen)?.max(0) as usize) < SWEEP_BATCH {
                return Ok(total);
            }
        }
    }

    async fn job_cancel(&self, id: &str) -> Result<bool, StoreError> {
        self.flag(&CANCEL, &[arg(id), arg(super::super::now_ms())])
            .await
    }

    async fn job_counts(&self) -> Result<Vec<(JobStatus, u64)>, StoreError> {
        let counts: HashMap<String, i64> = self
            .redis
            .query(
                redis::cmd("HGETALL")
                    .arg(format!("{}:counts", self.base))
                    .clone(),
            )
            .await?;
        let mut out: Vec<(JobStatus, u64)> = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(s, n)| Some((JobStatus::parse(&s)?, n as u64)))
            .collect();
        // The embedded order: by status name.
        out.sort_by_key(|(s, _)| s.as_str());
        Ok(out)
    }

    async fn jobs_next_due(&self) -> Result<Option<u64>, StoreError> {
        self.earliest("due").await
    }

    async fn deliveries_due(&self, now_ms: u64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let v = self
            .run(
                &DELIVERIES_DUE,
                &[arg(now_ms), arg(limit.min(i64::MAX as usize))],
            )
            .await?;
        self.deliveries_from(v)
    }

    async fn delivery_update(&self, d: &Delivery) -> Result<(), StoreError> {
        let args = [
            arg(d.id),
            arg(d.state.as_str()),
            arg(d.attempts),
            arg(d.next_attempt_at),
            d.last_status.map(arg).unwrap_or_default(),
            arg(if d.last_error.is_some() { 1 } else { 0 }),
            d.last_error.clone().unwrap_or_default().into_bytes(),
            arg(d.updated_at),
        ];
        self.run(&DELIVERY_UPDATE, &args).await.map(|_| ())
    }

    async fn delivery_begin(&self, d: &Delivery, lease_ms: u64) -> Result<bool, StoreError> {
        let args = [
            arg(d.id),
            arg(d.attempts.saturating_sub(1)),
            arg(d.attempts),
            arg(d.updated_at),
            arg(lease_ms),
        ];
        let v = self.run(&DELIVERY_BEGIN, &args).await?;
        Ok(matches!(v, Value::Int(1)))
    }

    async fn deliveries_for_job(&self, job_id: &str) -> Result<Vec<Delivery>, StoreError> {
        self.deliveries_for_jobs(&[job_id.to_string()]).await
    }

    async fn deliveries_for_jobs(&self, job_ids: &[String]) -> Result<Vec<Delivery>, StoreError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let args: Vec<Vec<u8>> = job_ids.iter().map(arg).collect();
        let v = self.run(&DELIVERIES_FOR_JOBS, &args).await?;
        self.deliveries_from(v)
    }

    async fn deliveries_next_due(&self) -> Result<Option<u64>, StoreError> {
        self.earliest("deliveries:due").await
    }

    async fn secrets_get(&self, workspace: &str) -> Result<Option<WebhookSecrets>, StoreError> {
        let v: Value = self
            .redis
            .query(
                redis::cmd("HGETALL")
                    .arg(self.secrets_key(workspace))
                    .clone(),
            )
            .await?;
        let f = Fields::parse("webhook secrets", v)?;
        if f.is_empty() {
            return Ok(None);
        }
        Ok(Some(WebhookSecrets {
            workspace: workspace.to_string(),
            primary: self.open_text(SECRETS_PRIMARY, f.raw("primary")?)?,
            secondary: f
                .opt_raw("secondary")
                .map(|b| self.open_text(SECRETS_SECONDARY, b))
                .transpose()?,
        }))
    }

    async fn secrets_put(&self, secrets: WebhookSecrets) -> Result<(), StoreError> {
        let key = self.secrets_key(&secrets.workspace);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key)
            .arg("primary")
            .arg(self.seal_bytes(SECRETS_PRIMARY, secrets.primary.as_bytes()));
        if let Some(s) = &secrets.secondary {
            hset.arg("secondary")
                .arg(self.seal_bytes(SECRETS_SECONDARY, s.as_bytes()));
        }
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(&key).ignore();
        pipe.add_command(hset).ignore();
        self.redis.pipe::<()>(pipe).await
    }

    async fn secrets_delete(&self, workspace: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .redis
            .query(redis::cmd("DEL").arg(self.secrets_key(workspace)).clone())
            .await?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, contains, end, fill, job, read_back, record, PLANTED};
    use crate::store::redis::conn::testing::Server;
    use crate::store::NewDelivery;

    fn server() -> Server {
        Server::start().expect("redis-server is not installed (scripts/test installs it)")
    }

    /// A store with its own client: another replica when called twice.
    fn replica(server: &Server, key: Option<&EncryptionKey>) -> RedisStore {
        RedisStore::new(Redis::open(&server.config("t")).expect("open"), key)
    }

    async fn raw<T: redis::FromRedisValue + Send + 'static>(s: &RedisStore, cmd: &redis::Cmd) -> T {
        s.redis.query(cmd.clone()).await.expect("raw command")
    }

    /// Every key under the test prefix.
    async fn keys(s: &RedisStore) -> Vec<String> {
        let mut k: Vec<String> = raw(s, redis::cmd("KEYS").arg("t:*")).await;
        k.sort();
        k
    }

    /// Counts by status from the job hashes themselves.
    async fn scanned(s: &RedisStore) -> Vec<(JobStatus, u64)> {
        let mut counts: HashMap<&'static str, u64> = HashMap::new();
        for k in keys(s).await {
            if let Some(id) = k.strip_prefix("t:{jobs}:job:") {
                let j = s.job_get(id).await.unwrap().unwrap();
                *counts.entry(j.status.as_str()).or_default() += 1;
            }
        }
        let mut out: Vec<_> = counts
            .into_iter()
            .map(|(st, n)| (JobStatus::parse(st).unwrap(), n))
            .collect();
        out.sort_by_key(|(s, _)| s.as_str());
        out
    }

    async fn assert_counts(s: &RedisStore, step: &str) {
        assert_eq!(
            s.job_counts().await.unwrap(),
            scanned(s).await,
            "after {step}"
        );
    }

    #[tokio::test]
    async fn a_claim_takes_due_jobs_in_due_order_up_to_its_limit() {
        let server = server();
        conformance::a_claim_takes_due_jobs_in_due_order_up_to_its_limit(&replica(&server, None))
            .await;
    }

    #[tokio::test]
    async fn jobs_dedupe_claim_in_order_and_lapsed_leases_go_to_another_replica() {
        let server = server();
        let s = replica(&server, None);
        conformance::jobs_dedupe_and_claim_under_a_lease(&s).await;
        // Shared storage: releasing leases at start would steal live runs.
        assert_eq!(s.jobs_release_leases().await.unwrap(), 0);
        assert_eq!(
            s.job_get("j1").await.unwrap().unwrap().status,
            JobStatus::InFlight
        );
        // The first replica "crashed": another one takes the lapsed leases.
        let other = replica(&server, None);
        conformance::jobs_fence_finish_deliver_and_sweep(&s, &other).await;
        // Nothing of the swept jobs is left in any key.
        let left = keys(&s).await;
        assert!(
            !left
                .iter()
                .any(|k| k.contains("j1:") || k.ends_with(":j1") || k.ends_with(":j2")),
            "{left:?}"
        );
        let members: Vec<String> = raw(
            &s,
            redis::cmd("ZRANGE")
                .arg("t:{jobs}:wsall:default")
                .arg(0)
                .arg(-1),
        )
        .await;
        assert_eq!(members.len(), 2, "j9 and j1-next: {members:?}");
        let ended: Vec<String> = raw(
            &s,
            redis::cmd("ZRANGE").arg("t:{jobs}:ended").arg(0).arg(-1),
        )
        .await;
        assert_eq!(ended, ["j9"]);
    }

    #[tokio::test]
    async fn counts_stay_right_across_every_status_change() {
        let server = server();
        let s = replica(&server, None);
        conformance::counts_stay_right_through_requeue(&s, async |step| {
            assert_counts(&s, step).await
        })
        .await;
        assert_eq!(s.jobs_release_leases().await.unwrap(), 0);
        assert_eq!(s.jobs_sweep(u64::MAX / 2).await.unwrap(), 1, "j1");
        assert_counts(&s, "sweep").await;
        assert_eq!(
            s.job_counts().await.unwrap(),
            vec![
                (JobStatus::InFlight, 1),
                (JobStatus::Queued, 4),
                (JobStatus::Retrying, 1)
            ],
            "j2 j4 j5 child queued, j0 retrying, j3 still in flight"
        );
        // Requeued jobs are due again; the in-flight one when its lease lapses.
        let ids: Vec<String> = s
            .jobs_claim(1010, 1000, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(ids.len(), 6, "{ids:?}");
        assert_counts(&s, "claim all").await;
    }

    #[tokio::test]
    async fn job_list_pages_through_equal_times_with_a_status_filter() {
        let server = server();
        let s = replica(&server, None);
        conformance::job_list_pages_through_equal_times_with_a_status_filter(&s).await;
    }

    #[tokio::test]
    async fn job_list_by_domain_pages_follows_status_and_sweep() {
        let server = server();
        let s = replica(&server, None);
        conformance::job_list_by_domain_pages_follows_status_and_sweep(&s).await;
        // Nothing is left of the swept job in the domain sets.
        let left = keys(&s).await;
        for k in left.iter().filter(|k| k.contains(":wsd")) {
            let members: Vec<String> = raw(&s, redis::cmd("ZRANGE").arg(k).arg(0).arg(-1)).await;
            assert!(
                !members.iter().any(|m| m.ends_with(":a3")),
                "{k}: {members:?}"
            );
        }
    }

    #[tokio::test]
    async fn jobs_stored_before_domains_were_kept_are_indexed_once() {
        let server = server();
        for key in [None, Some(EncryptionKey::from_bytes([5; 32]))] {
            let s = replica(&server, key.as_ref());
            let _: Value = raw(&s, &redis::cmd("FLUSHALL")).await;
            for (id, url, parent) in [
                ("o1", Some("https://API.Old.test/a"), None),
                ("o2", Some("https://hooks.test/"), Some("o1")),
                ("o3", None, None),
            ] {
                let mut j = job(id, id, 1);
                let mut spec = serde_json::json!({"method": "GET"});
                if let Some(u) = url {
                    spec["url"] = u.into();
                }
                if let Some(p) = parent {
                    spec["metadata"] = serde_json::json!({"parent_job_id": p});
                }
                j.spec = spec.to_string();
                j.created_at = 5;
                s.job_insert(j).await.unwrap();
            }
            // As an older version left them: no domain, no parent, no sets.
            for id in ["o1", "o2", "o3"] {
                let _: i64 = raw(
                    &s,
                    redis::cmd("HDEL")
                        .arg(format!("t:{{jobs}}:job:{id}"))
                        .arg("domain")
                        .arg("parent"),
                )
                .await;
            }
            for k in keys(&s).await {
                if k.contains(":wsd") || k.contains(":children:") {
                    let _: i64 = raw(&s, redis::cmd("DEL").arg(&k)).await;
                }
            }
            assert!(s
                .jobs_list_by_domain("default", "api.old.test", None, 10, None)
                .await
                .unwrap()
                .is_empty());
            assert_eq!(s.index_old_jobs().await.unwrap(), 2, "o1 and o2");
            let listed = s
                .jobs_list_by_domain("default", "api.old.test", Some(JobStatus::Queued), 10, None)
                .await
                .unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].id, "o1");
            let children = s.job_children("o1", 10).await.unwrap();
            assert_eq!(children.len(), 1);
            assert_eq!(children[0].id, "o2");
            // Once per Redis, and the status lists follow from now on.
            assert_eq!(s.index_old_jobs().await.unwrap(), 0);
            assert!(s.job_cancel("o1").await.unwrap());
            let cancelled = s
                .jobs_list_by_domain(
                    "default",
                    "api.old.test",
                    Some(JobStatus::Cancelled),
                    10,
                    None,
                )
                .await
                .unwrap();
            assert_eq!(cancelled.len(), 1);
        }
    }

    #[tokio::test]
    async fn job_children_are_found_from_the_parent() {
        let server = server();
        let s = replica(&server, None);
        conformance::job_children_are_found_from_the_parent(&s).await;
    }

    #[tokio::test]
    async fn sweeps_page_past_jobs_kept_for_pending_deliveries() {
        let server = server();
        let s = replica(&server, None);
        conformance::sweeps_page_past_jobs_kept_for_pending_deliveries(&s, SWEEP_BATCH).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_claiming_at_once_never_share_a_job() {
        let server = server();
        let a = Arc::new(replica(&server, None));
        let b = Arc::new(replica(&server, None));
        let n = 200;
        for i in 0..n {
            a.job_insert(job(&format!("j{i:03}"), &format!("k{i}"), 1))
                .await
                .unwrap();
        }
        let claimer = |s: Arc<RedisStore>| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = s.jobs_claim(10, 60_000, 3).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch.into_iter().map(|j| (j.id, j.claims)));
                }
            })
        };
        let (ga, gb) = (claimer(a.clone()), claimer(b.clone()));
        let (ga, gb) = (ga.await.unwrap(), gb.await.unwrap());
        // Which replica gets how many is up to the scheduler (one may even
        // take them all on a loaded machine); what must hold is below.
        eprintln!("claimed: a {}, b {}", ga.len(), gb.len());
        let mut all: Vec<_> = ga.iter().chain(&gb).map(|(id, _)| id.clone()).collect();
        assert!(ga.iter().chain(&gb).all(|(_, claims)| *claims == 1));
        all.sort();
        let total = all.len();
        all.dedup();
        assert_eq!(total, n, "every job claimed once");
        assert_eq!(all.len(), n, "no job claimed twice");
        assert_eq!(
            a.job_counts().await.unwrap(),
            vec![(JobStatus::InFlight, n as u64)]
        );
    }

    /// A replica that starts must not take running jobs from the others:
    /// `jobs_release_leases` leaves a live lease alone.
    #[tokio::test]
    async fn starting_a_replica_keeps_the_others_leases() {
        let server = server();
        let (a, b) = (replica(&server, None), replica(&server, None));
        a.job_insert(job("j1", "k1", 1)).await.unwrap();
        let now = super::super::super::now_ms();
        let claimed = a.jobs_claim(now, 60_000, 1).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(b.jobs_release_leases().await.unwrap(), 0);
        let j = b.job_get("j1").await.unwrap().unwrap();
        assert_eq!(j.status, JobStatus::InFlight);
        assert_eq!(j.claims, 1);
        assert!(b.jobs_claim(now, 60_000, 10).await.unwrap().is_empty());
        assert!(
            a.job_renew("j1", 1, now + 120_000).await.unwrap(),
            "still a's"
        );
    }

    /// Two replicas that read the same due delivery: one attempt is taken,
    /// the other replica's is refused; the taken one is not due again until
    /// its lease ran out.
    #[tokio::test]
    async fn a_delivery_attempt_is_taken_by_one_replica_only() {
        let server = server();
        let (a, b) = (replica(&server, None), replica(&server, None));
        a.job_insert(job("j1", "k1", 1)).await.unwrap();
        let claimed = a.jobs_claim(10, 60_000, 1).await.unwrap();
        let d = NewDelivery {
            url: "http://sink.test/hook".into(),
            has_quorum_vote: true,
        };
        assert!(a
            .job_finish(
                "j1",
                Some(claimed[0].claims),
                end(JobStatus::Success, b"{}", vec![d])
            )
            .await
            .unwrap());
        let now = super::super::super::now_ms();
        let seen_a = a.deliveries_due(now, 10).await.unwrap();
        let seen_b = b.deliveries_due(now, 10).await.unwrap();
        assert_eq!(seen_a.len(), 1);
        assert_eq!(seen_a, seen_b, "both read it as due");
        let mut da = seen_a[0].clone();
        let mut db = seen_b[0].clone();
        da.attempts += 1;
        db.attempts += 1;
        assert!(a.delivery_begin(&da, 60_000).await.unwrap(), "first taker");
        assert!(
            !b.delivery_begin(&db, 60_000).await.unwrap(),
            "second refused"
        );
        let later = b.deliveries_due(now + 1_000, 10).await.unwrap();
        assert!(
            later.iter().all(|d| d.next_attempt_at > now + 1_000),
            "held by its lease: {later:?}"
        );
        // The attempt's outcome is written as usual.
        da.state = DeliveryState::Delivered;
        a.delivery_update(&da).await.unwrap();
        let after = a.deliveries_for_job("j1").await.unwrap();
        assert_eq!(after[0].state, DeliveryState::Delivered);
        assert_eq!(after[0].attempts, 1);
    }

    #[tokio::test]
    async fn secrets_round_trip() {
        let server = server();
        let s = replica(&server, None);
        conformance::secrets_round_trip_and_never_debug_print(&s).await;
    }

    #[tokio::test]
    async fn idempotency_records_round_trip_and_redis_expires_them() {
        let server = server();
        let s = replica(&server, None);
        let now = crate::store::now_ms();
        conformance::idempotency_records_round_trip_and_hide_when_expired(&s, now).await;
        let ttl: i64 = raw(&s, redis::cmd("PTTL").arg("t:idem:{live}:record")).await;
        assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");
        // Already expired: Redis never keeps it.
        assert_eq!(s.idempotency_get("old", 0).await.unwrap(), None);
        // Redis deletes at expiry (brought forward rather than waited for).
        let _: i64 = raw(
            &s,
            redis::cmd("PEXPIRE").arg("t:idem:{live}:record").arg(20),
        )
        .await;
        let mut gone = false;
        for _ in 0..200 {
            let n: i64 = raw(&s, redis::cmd("EXISTS").arg("t:idem:{live}:record")).await;
            if n == 0 {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(gone, "Redis expired the record");
        assert_eq!(s.idempotency_get("live", now).await.unwrap(), None);
        assert_eq!(s.idempotency_sweep(u64::MAX).await.unwrap(), 0);
        // The record that never expires has no PEXPIREAT (past 2^53 ms).
        let ttl: i64 = raw(&s, redis::cmd("PTTL").arg("t:idem:{forever}:record")).await;
        assert_eq!(ttl, -1);
    }

    #[tokio::test]
    async fn learned_limits_merge_in_the_shared_domain_hash() {
        let server = server();
        let s = replica(&server, None);
        conformance::save_learned_limits(&s).await;
        // Another replica reads what this one learned.
        conformance::learned_limits_merged(&replica(&server, None)).await;
        // The layout the admission script reads.
        let h: HashMap<String, String> =
            raw(&s, redis::cmd("HGETALL").arg("t:{a.test}:limits")).await;
        assert_eq!(h["rps"], "0.5");
        assert_eq!(h["max_concurrent"], "3");
        assert_eq!(h["updated_at"], "2");
        let mut domains: Vec<String> =
            raw(&s, redis::cmd("SMEMBERS").arg("t:limits:domains")).await;
        domains.sort();
        assert_eq!(domains, ["a.test", "b.test"]);
    }

    #[tokio::test]
    async fn a_malformed_record_is_an_error_not_a_panic() {
        let server = server();
        let s = replica(&server, None);
        s.job_insert(job("j1", "k1", 1)).await.unwrap();
        let _: i64 = raw(
            &s,
            redis::cmd("HSET")
                .arg("t:{jobs}:job:j1")
                .arg("claims")
                .arg("many"),
        )
        .await;
        let e = s.job_get("j1").await.unwrap_err();
        assert!(e.to_string().contains("claims"), "{e}");
        let _: i64 = raw(
            &s,
            redis::cmd("HSET")
                .arg("t:{jobs}:job:j1")
                .arg("status")
                .arg("weird"),
        )
        .await;
        assert!(s.job_get("j1").await.is_err());
        let _: i64 = raw(&s, redis::cmd("HDEL").arg("t:{jobs}:job:j1").arg("lease")).await;
        assert!(s.jobs_claim(10, 10, 10).await.is_err(), "script error");
        let _: i64 = raw(
            &s,
            redis::cmd("HSET")
                .arg("t:idem:{x}:record")
                .arg("expires")
                .arg("soon"),
        )
        .await;
        assert!(s.idempotency_get("x", 0).await.is_err());
        let _: () = raw(&s, redis::cmd("SET").arg("t:secrets:w").arg("string")).await;
        assert!(s.secrets_get("w").await.is_err());
    }

    fn key(b: u8) -> EncryptionKey {
        EncryptionKey::from_bytes([b; 32])
    }

    /// Every byte Redis holds for the test prefix, key by key (`DUMP`).
    async fn stored_bytes(s: &RedisStore) -> Vec<u8> {
        let mut all = Vec::new();
        for k in keys(s).await {
            let v: Vec<u8> = raw(s, redis::cmd("DUMP").arg(&k)).await;
            all.extend(k.into_bytes());
            all.extend(v);
        }
        all
    }

    #[tokio::test]
    async fn with_a_key_nothing_sensitive_is_stored_in_clear() {
        let server = server();
        let s = replica(&server, Some(&key(1)));
        assert!(s.encrypted());
        fill(&s).await;
        read_back(&s).await;
        let bytes = stored_bytes(&s).await;
        assert!(bytes.len() > 1000, "the store wrote something");
        assert!(!contains(&bytes, PLANTED), "planted secret found in Redis");
        // Another replica with the same key reads it all.
        read_back(&replica(&server, Some(&key(1)))).await;
        // Another key, or none: an error, never garbage.
        let e = replica(&server, Some(&key(2)))
            .job_get("j1")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot decrypt"), "{e}");
        let e = replica(&server, None).job_get("j1").await.unwrap_err();
        assert!(e.to_string().contains("encryption_key"), "{e}");
        // Control: the same data without a key is in Redis in clear.
        let plain_server = self::server();
        let p = replica(&plain_server, None);
        fill(&p).await;
        read_back(&p).await;
        assert!(contains(&stored_bytes(&p).await, PLANTED));
        // Plaintext written before a key was configured stays readable.
        read_back(&replica(&plain_server, Some(&key(1)))).await;
    }

    /// Rough memory per record, measured (`MEMORY USAGE`, and `used_memory`
    /// over many jobs for the index entries); docs/distributed.md quotes
    /// these figures. `cargo test --lib memory_per_record -- --nocapture`.
    #[tokio::test]
    async fn memory_per_record_is_bounded() {
        let server = server();
        let s = replica(&server, None);
        let used = |s: &RedisStore| {
            let r = s.redis.clone();
            async move {
                let info: String = r
                    .query(redis::cmd("INFO").arg("memory").clone())
                    .await
                    .unwrap();
                info.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .unwrap()
            }
        };
        // A typical parked POST: ~400 bytes of spec.
        let spec = format!(
            r#"{{"method":"POST","url":"https://api.example.com/v1/charges","headers":[["Authorization","Bearer {}"],["Content-Type","application/json"]],"body":"{}","max_wait_ms":60000,"retry":{{"max_attempts":5}}}}"#,
            "x".repeat(40),
            "y".repeat(200)
        );
        let n = 2000u64;
        let before = used(&s).await;
        for i in 0..n {
            let mut j = job(
                &uuid::Uuid::new_v4().simple().to_string(),
                &format!("key-{i:08}"),
                1,
            );
            j.spec = spec.clone();
            j.created_at = 1_700_000_000_000 + i;
            j.updated_at = j.created_at;
            s.job_insert(j).await.unwrap();
        }
        let per_job = (used(&s).await - before) / n as i64;
        let one_job: String = keys(&s)
            .await
            .into_iter()
            .find(|k| k.starts_with("t:{jobs}:job:"))
            .unwrap();
        let job_hash: i64 = raw(
            &s,
            redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&one_job)
                .arg("SAMPLES")
                .arg(0),
        )
        .await;

        let claimed = s.jobs_claim(10, 60_000, n as usize).await.unwrap();
        let payload = vec![b'p'; 600];
        let before = used(&s).await;
        for j in &claimed {
            let mut e = end(JobStatus::Success, &payload, vec![]);
            e.deliveries = vec![NewDelivery {
                url: "https://hooks.example.com/ezthrottle/incoming".into(),
                has_quorum_vote: false,
            }];
            e.result = r#"{"status":200,"headers":[],"body":"ok"}"#.into();
            s.job_finish(&j.id, Some(1), e).await.unwrap();
        }
        let per_finish = (used(&s).await - before) / n as i64;
        let delivery_hash: i64 = raw(
            &s,
            redis::cmd("MEMORY")
                .arg("USAGE")
                .arg("t:{jobs}:delivery:1")
                .arg("SAMPLES")
                .arg(0),
        )
        .await;

        let before = used(&s).await;
        let now = crate::store::now_ms();
        for i in 0..n {
            let mut r = record(&format!("{:064x}", i), now + 86_400_000);
            r.body = vec![b'b'; 500];
            s.idempotency_put(r).await.unwrap();
        }
        let per_record = (used(&s).await - before) / n as i64;
        eprintln!(
            "memory: job {per_job} B (hash {job_hash} B, ~400 B spec) | finish with one delivery +{per_finish} B (delivery hash {delivery_hash} B, 600 B payload) | idempotency record {per_record} B (500 B body)"
        );
        assert!(per_job > 400 && per_job < 4096, "{per_job}");
        assert!(per_finish > 600 && per_finish < 4096, "{per_finish}");
        assert!(per_record > 500 && per_record < 4096, "{per_record}");
    }
}

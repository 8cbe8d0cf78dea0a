//! The effective configuration as TOML, for `ezthrottle config check`:
//! every key with the value in force, in the file's own layout, secrets
//! masked so the output is safe to paste into a ticket.

use toml::{Table, Value};

use super::load::format_duration;
use super::*;

fn mask(secret: &str) -> String {
    let head: String = secret.chars().take(4).collect();
    format!("{head}****")
}

fn limits_table(l: &DomainLimits) -> Table {
    let mut t = Table::new();
    t.insert("rps".into(), Value::Float(l.rps));
    t.insert(
        "max_concurrent".into(),
        Value::Integer(l.max_concurrent.into()),
    );
    t.insert("burst".into(), Value::Integer(l.burst.into()));
    t.insert(
        "queue_capacity".into(),
        Value::Integer(l.queue_capacity as i64),
    );
    t.insert(
        "max_wait".into(),
        Value::String(format_duration(l.max_wait)),
    );
    t
}

fn retry_table(r: &RetryConfig) -> Table {
    let codes = |c: &[u16]| Value::Array(c.iter().map(|v| Value::Integer((*v).into())).collect());
    let mut t = Table::new();
    t.insert("max_retries".into(), Value::Integer(r.max_retries.into()));
    t.insert("max_reroutes".into(), Value::Integer(r.max_reroutes.into()));
    t.insert("retry_codes".into(), codes(&r.retry_codes));
    t.insert("reroute_codes".into(), codes(&r.reroute_codes));
    t.insert(
        "max_buffered_body".into(),
        Value::Integer(r.max_buffered_body as i64),
    );
    t
}

pub(super) fn render(c: &Config) -> String {
    let s = |v: String| Value::String(v);
    let mut root = Table::new();
    root.insert("data_dir".into(), s(c.data_dir.display().to_string()));

    let mut proxy = Table::new();
    proxy.insert("listen".into(), s(c.proxy.listen.to_string()));
    proxy.insert(
        "connect_ports".into(),
        Value::Array(
            c.proxy
                .connect_ports
                .iter()
                .map(|p| Value::Integer((*p).into()))
                .collect(),
        ),
    );
    proxy.insert(
        "allow_clients".into(),
        Value::Array(
            c.proxy
                .allow_clients
                .iter()
                .map(|n| s(n.to_string()))
                .collect(),
        ),
    );
    proxy.insert(
        "trusted_clients".into(),
        Value::Array(
            c.proxy
                .trusted_clients
                .iter()
                .map(|n| s(n.to_string()))
                .collect(),
        ),
    );
    proxy.insert(
        "drain_timeout".into(),
        s(format_duration(c.proxy.drain_timeout)),
    );
    proxy.insert(
        "connect_timeout".into(),
        s(format_duration(c.proxy.connect_timeout)),
    );
    proxy.insert(
        "read_timeout".into(),
        s(format_duration(c.proxy.read_timeout)),
    );
    proxy.insert(
        "idle_timeout".into(),
        s(format_duration(c.proxy.idle_timeout)),
    );
    proxy.insert("threads".into(), Value::Integer(c.proxy.threads as i64));
    let hl = &c.proxy.head_limits;
    for (key, v) in [
        ("max_request_line", hl.max_request_line),
        ("max_header_line", hl.max_header_line),
        ("max_head", hl.max_head),
        ("max_headers", hl.max_headers),
    ] {
        proxy.insert(key.into(), Value::Integer(v as i64));
    }
    proxy.insert(
        "head_timeout".into(),
        s(format_duration(c.proxy.head_timeout)),
    );
    proxy.insert(
        "max_buffered".into(),
        Value::Integer(c.proxy.max_buffered as i64),
    );
    root.insert("proxy".into(), Value::Table(proxy));

    let mut control = Table::new();
    control.insert("listen".into(), s(c.control.listen.to_string()));
    let keys: Table = c
        .control
        .api_keys
        .iter()
        .map(|(token, ws)| (mask(token), s(ws.clone())))
        .collect();
    control.insert("api_keys".into(), Value::Table(keys));
    root.insert("control".into(), Value::Table(control));

    let mut tls = Table::new();
    for (k, v) in [
        ("ca_cert", &c.tls.ca_cert),
        ("ca_key", &c.tls.ca_key),
        ("upstream_ca_file", &c.tls.upstream_ca_file),
    ] {
        if let Some(p) = v {
            tls.insert(k.into(), s(p.display().to_string()));
        }
    }
    tls.insert("http2".into(), Value::Boolean(c.tls.http2));
    root.insert("tls".into(), Value::Table(tls));

    let resolve: Table = c
        .resolve
        .iter()
        .map(|(h, ip)| (h.clone(), s(ip.to_string())))
        .collect();
    root.insert("resolve".into(), Value::Table(resolve));

    let mut limits = limits_table(&c.limits.defaults);
    limits.insert("rps_ceiling".into(), Value::Float(c.limits.rps_ceiling));
    limits.insert(
        "concurrency_ceiling".into(),
        Value::Integer(c.limits.concurrency_ceiling.into()),
    );
    limits.insert(
        "max_wait_ceiling".into(),
        Value::String(format_duration(c.limits.max_wait_ceiling)),
    );
    limits.insert("presets".into(), Value::Boolean(c.limits.presets));
    let mut domains = Table::new();
    for (host, d) in &c.limits.domains {
        let mut t = limits_table(&d.limits);
        t.insert("pin".into(), Value::Boolean(d.pin));
        t.insert(
            "hold_slot_while_open".into(),
            Value::Boolean(d.hold_slot_while_open),
        );
        let mode = match d.tls {
            TlsMode::Intercept => "intercept",
            TlsMode::Tunnel => "tunnel",
        };
        t.insert("tls".into(), s(mode.into()));
        t.insert(
            "upstream_protocol".into(),
            s(d.upstream_protocol.as_str().into()),
        );
        t.insert(
            "regions".into(),
            Value::Array(d.regions.iter().map(|r| s(r.clone())).collect()),
        );
        if let Some(keys) = &d.budget_key {
            // In the file's own syntax, so the output can be pasted back.
            let shown = keys
                .iter()
                .map(|h| {
                    if *h == http::header::AUTHORIZATION {
                        s("authorization".into())
                    } else {
                        s(format!("header:{h}"))
                    }
                })
                .collect();
            t.insert("budget_key".into(), Value::Array(shown));
        }
        if let Some(r) = &d.retry {
            t.insert("retry".into(), Value::Table(retry_table(r)));
        }
        domains.insert(host.clone(), Value::Table(t));
    }
    limits.insert("domains".into(), Value::Table(domains));
    root.insert("limits".into(), Value::Table(limits));

    root.insert("retry".into(), Value::Table(retry_table(&c.retry)));

    let mut idem = Table::new();
    idem.insert("ttl".into(), s(format_duration(c.idempotency.ttl)));
    idem.insert(
        "max_stored_body".into(),
        Value::Integer(c.idempotency.max_stored_body as i64),
    );
    idem.insert(
        "max_request_body".into(),
        Value::Integer(c.idempotency.max_request_body as i64),
    );
    root.insert("idempotency".into(), Value::Table(idem));

    let mut jobs = Table::new();
    jobs.insert("retention".into(), s(format_duration(c.jobs.retention)));
    jobs.insert("deadline".into(), s(format_duration(c.jobs.deadline)));
    jobs.insert("lease".into(), s(format_duration(c.jobs.lease)));
    root.insert("jobs".into(), Value::Table(jobs));

    let mut hooks = Table::new();
    if let Some(secret) = &c.webhooks.secret {
        hooks.insert("secret".into(), s(mask(secret)));
    }
    hooks.insert(
        "max_attempts".into(),
        Value::Integer(c.webhooks.max_attempts.into()),
    );
    hooks.insert("backoff".into(), s(format_duration(c.webhooks.backoff)));
    hooks.insert(
        "backoff_cap".into(),
        s(format_duration(c.webhooks.backoff_cap)),
    );
    root.insert("webhooks".into(), Value::Table(hooks));

    let regions: Table = c
        .regions
        .iter()
        .map(|(n, r)| {
            let mut t = Table::new();
            t.insert("proxy".into(), s(r.proxy.clone()));
            (n.clone(), Value::Table(t))
        })
        .collect();
    root.insert("regions".into(), Value::Table(regions));

    let mut storage = Table::new();
    match &c.storage.backend {
        StorageBackend::Embedded => {
            storage.insert("backend".into(), s("embedded".into()));
        }
        StorageBackend::Redis(r) => {
            storage.insert("backend".into(), s("redis".into()));
            // Where the URL comes from; the URL itself only masked.
            match r.url_source.split_once(':') {
                Some(("env", var)) => {
                    storage.insert("url_env".into(), s(var.to_string()));
                }
                Some(("file", path)) => {
                    storage.insert("url_file".into(), s(path.to_string()));
                }
                _ => {
                    storage.insert("url".into(), s(r.shown_url()));
                }
            }
            storage.insert("timeout".into(), s(format_duration(r.timeout)));
            storage.insert("prefix".into(), s(r.prefix.clone()));
            storage.insert("cluster".into(), Value::Boolean(r.cluster));
        }
    }
    // Where the key comes from, never the key.
    match c.storage.encryption_key_source.as_deref() {
        Some(src) if src.starts_with("file:") => {
            storage.insert("encryption_key_file".into(), s(src[5..].to_string()));
        }
        Some(src) if src.starts_with("env:") => {
            storage.insert("encryption_key_env".into(), s(src[4..].to_string()));
        }
        _ => {}
    }
    root.insert("storage".into(), Value::Table(storage));

    let mut metrics = Table::new();
    metrics.insert(
        "max_domains".into(),
        Value::Integer(c.metrics.max_domains as i64),
    );
    root.insert("metrics".into(), Value::Table(metrics));

    let rules = |rs: &[EgressRule]| {
        Value::Array(
            rs.iter()
                .map(|r| {
                    s(match r {
                        EgressRule::Net(n) => n.to_string(),
                        EgressRule::Host(h) => h.clone(),
                        EgressRule::Suffix(x) => format!("*{x}"),
                    })
                })
                .collect(),
        )
    };
    let ports = |ps: &[(u16, u16)]| {
        Value::Array(
            ps.iter()
                .map(|(lo, hi)| {
                    if lo == hi {
                        Value::Integer((*lo).into())
                    } else {
                        s(format!("{lo}-{hi}"))
                    }
                })
                .collect(),
        )
    };
    let mut egress = Table::new();
    egress.insert("allow".into(), rules(&c.egress.allow));
    egress.insert("allow_ports".into(), ports(&c.egress.allow_ports));
    egress.insert("deny".into(), rules(&c.egress.deny));
    egress.insert("deny_ports".into(), ports(&c.egress.deny_ports));
    root.insert("egress".into(), Value::Table(egress));

    toml::to_string_pretty(&root).unwrap_or_default()
}

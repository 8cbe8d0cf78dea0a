//! The config contract: the shipped example is complete and true to the
//! built-in defaults, and every kind of bad value is refused naming the
//! file, the key and the reason.

use std::time::Duration;

use super::*;

const EXAMPLE: &str = include_str!("../../conf/ezthrottle.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, "test.toml")
}

fn bad(text: &str) -> ConfigError {
    match parse(text) {
        Ok(_) => panic!("accepted bad config:\n{text}"),
        Err(e) => e,
    }
}

fn assert_bad(text: &str, key: &str, reason_has: &str) {
    let e = bad(text);
    assert_eq!(e.file, "test.toml", "{e}");
    assert_eq!(e.key, key, "{e}");
    assert!(
        e.reason.to_lowercase().contains(&reason_has.to_lowercase()),
        "reason {:?} should mention {reason_has:?}",
        e.reason
    );
    let shown = e.to_string();
    assert!(shown.starts_with("test.toml: "), "{shown}");
}

/// Lines like `# key = value` in the example, made live.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            match t.strip_prefix("# ") {
                Some(rest)
                    if rest.contains(" = ")
                        && rest
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_lowercase() || c == '"') =>
                {
                    rest.to_string()
                }
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        // storage.url is only valid with the redis backend.
        .replace("backend = \"embedded\"", "backend = \"redis\"")
}

#[test]
fn the_example_file_parses_and_matches_the_built_in_defaults() {
    let ex = parse(EXAMPLE).expect("conf/ezthrottle.toml must parse");
    let def = parse("").expect("defaults");
    assert_eq!(ex.data_dir, def.data_dir);
    assert_eq!(ex.proxy.listen, def.proxy.listen);
    assert_eq!(ex.proxy.connect_ports, def.proxy.connect_ports);
    assert_eq!(ex.proxy.allow_clients, def.proxy.allow_clients);
    assert_eq!(ex.proxy.drain_timeout, def.proxy.drain_timeout);
    assert_eq!(ex.proxy.connect_timeout, def.proxy.connect_timeout);
    assert_eq!(ex.proxy.read_timeout, def.proxy.read_timeout);
    assert_eq!(ex.control.listen, def.control.listen);
    assert_eq!(ex.limits.defaults, def.limits.defaults);
    assert_eq!(ex.limits.rps_ceiling, def.limits.rps_ceiling);
    assert_eq!(
        ex.limits.concurrency_ceiling,
        def.limits.concurrency_ceiling
    );
    assert_eq!(ex.retry, def.retry);
    assert_eq!(ex.idempotency.ttl, def.idempotency.ttl);
    assert_eq!(
        ex.idempotency.max_stored_body,
        def.idempotency.max_stored_body
    );
    assert_eq!(ex.webhooks.max_attempts, def.webhooks.max_attempts);
    assert_eq!(ex.storage.backend, def.storage.backend);
    assert_eq!(ex.metrics.max_domains, def.metrics.max_domains);

    // The SPEC §12 defaults, stated once more so a change is deliberate.
    assert_eq!(def.proxy.listen.to_string(), "127.0.0.1:4000");
    assert_eq!(def.control.listen.to_string(), "127.0.0.1:4001");
    assert_eq!(def.proxy.connect_ports, vec![443, 80]);
    assert_eq!(def.proxy.idle_timeout, Duration::from_secs(300));
    assert_eq!(
        def.limits.defaults,
        DomainLimits {
            rps: 2.0,
            max_concurrent: 2,
            burst: 1,
            queue_capacity: 10_000,
            max_wait: Duration::from_secs(60),
        }
    );
    assert_eq!(*def.retry.retry_codes, [429, 503]);
    assert_eq!(*def.retry.reroute_codes, [500, 502, 504]);
    assert_eq!(def.retry.max_buffered_body, 1024 * 1024);
    assert_eq!(def.idempotency.max_stored_body, 10 * 1024 * 1024);
    assert_eq!(def.idempotency.ttl, Duration::from_secs(24 * 3600));
}

#[test]
fn commented_examples_in_the_file_are_real_keys() {
    let live = uncommented(EXAMPLE);
    assert_ne!(live, EXAMPLE, "the example has commented keys to check");
    let c = parse(&live).unwrap_or_else(|e| panic!("uncommented example fails: {e}"));
    assert_eq!(c.proxy.threads, 4);
    assert_eq!(
        c.control.api_keys.get("tok_live_abc").map(String::as_str),
        Some("workspace-a")
    );
    assert!(c.tls.ca_cert.is_some() && c.tls.ca_key.is_some() && c.tls.upstream_ca_file.is_some());
    assert_eq!(
        c.resolve.get("api.internal.test"),
        Some(&"127.0.0.1".parse().unwrap())
    );
    assert!(c.webhooks.secret.is_some());
}

#[test]
fn every_key_the_program_knows_is_in_the_example() {
    // The effective config prints every key with its value; each must be
    // documented in conf/ezthrottle.toml.
    let live = uncommented(EXAMPLE);
    let c = parse(&live).expect("uncommented example");
    let effective = c.to_effective_toml();
    let doc_keys: Vec<String> = EXAMPLE
        .lines()
        .map(|l| l.trim_start().trim_start_matches("# ").trim_start())
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_string()))
        .collect();
    let table_doc = |t: &str| EXAMPLE.contains(&format!("[{t}]"));
    for line in effective.lines() {
        let line = line.trim();
        if let Some(table) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            assert!(
                table_doc(table) || table == "control.api_keys" || table == "resolve",
                "table [{table}] is not in conf/ezthrottle.toml"
            );
            continue;
        }
        if let Some((key, _)) = line.split_once(" = ") {
            let key = key.trim();
            if key.starts_with('"') {
                continue; // user-named entries (resolve hosts, api keys)
            }
            assert!(
                doc_keys.iter().any(|k| k == key),
                "key {key:?} is not documented in conf/ezthrottle.toml"
            );
        }
    }
}

#[test]
fn unknown_keys_are_named_with_their_table() {
    assert_bad(
        "[limits]\nmax_concurent = 3\n",
        "limits.max_concurent",
        "unknown field",
    );
    assert_bad("nonsense = 1\n", "nonsense", "unknown field");
    assert_bad(
        "[limits.domains.\"a.test\"]\nrsp = 1.0\n",
        "limits.domains.\"a.test\".rsp",
        "unknown field",
    );
    assert_bad(
        "[proxy]\nlisten = \"127.0.0.1:1\"\nport = 3\n",
        "proxy.port",
        "unknown field",
    );
}

/// The line named is the unknown key's own, also after other tables
/// (it used to be the line above).
#[test]
fn unknown_key_errors_name_the_keys_line() {
    let text = "[proxy]\nlisten = \"127.0.0.1:4000\"\n\n[limits]\nmax_wait = \"10s\"\n\n[limits.domains.\"a.com\"]\nrps = 3\nbogus = 1\n";
    let e = bad(text);
    assert_eq!(e.key, "limits.domains.\"a.com\".bogus", "{e}");
    assert!(e.reason.ends_with("(line 9)"), "{e}");
    let e = bad("[proxy]\nlisten = \"127.0.0.1:4000\"\n\n[tls]\nfoo = 1\n");
    assert_eq!(e.key, "tls.foo", "{e}");
    assert!(e.reason.ends_with("(line 5)"), "{e}");
    let e = bad("nonsense = 1\n");
    assert!(e.reason.ends_with("(line 1)"), "{e}");
    let e = bad("[limits]\nrps = \"fast\"\n");
    assert!(e.reason.ends_with("(line 2)"), "{e}");
}

#[test]
fn wrong_types_name_the_key() {
    assert_bad("[limits]\nrps = \"fast\"\n", "limits.rps", "invalid type");
    assert_bad(
        "[proxy]\nconnect_ports = 443\n",
        "proxy.connect_ports",
        "invalid type",
    );
    let e = bad("[limits\nrps = 1");
    assert_eq!(e.file, "test.toml");
}

#[test]
fn bad_durations() {
    for v in ["\"soon\"", "\"10\"", "\"0s\"", "\"-5s\""] {
        assert_bad(
            &format!("[limits]\nmax_wait = {v}\n"),
            "limits.max_wait",
            "",
        );
    }
    assert_bad(
        "[proxy]\ndrain_timeout = 30\n",
        "proxy.drain_timeout",
        "invalid type",
    );
    assert_bad("[idempotency]\nttl = \"forever\"\n", "idempotency.ttl", "");
}

#[test]
fn bad_sizes() {
    assert_bad(
        "[retry]\nmax_buffered_body = \"1 parsec\"\n",
        "retry.max_buffered_body",
        "size",
    );
    assert_bad(
        "[retry]\nmax_buffered_body = -1\n",
        "retry.max_buffered_body",
        "size",
    );
    assert_bad(
        "[idempotency]\nmax_stored_body = 1.5\n",
        "idempotency.max_stored_body",
        "size",
    );
    let c = parse(
        "[retry]\nmax_buffered_body = \"512KiB\"\n[idempotency]\nmax_stored_body = \"10MB\"\n",
    )
    .expect("sizes with units");
    assert_eq!(c.retry.max_buffered_body, 512 * 1024);
    assert_eq!(c.idempotency.max_stored_body, 10_000_000);
}

#[test]
fn bad_addresses() {
    assert_bad("[proxy]\nlisten = \"localhost:4000\"\n", "proxy.listen", "");
    assert_bad("[control]\nlisten = \"127.0.0.1\"\n", "control.listen", "");
    assert_bad(
        "[resolve]\n\"a.test\" = \"not-an-ip\"\n",
        "resolve.\"a.test\"",
        "",
    );
    assert_bad(
        "[proxy]\nallow_clients = [\"10.0.0.0/99\"]\n",
        "proxy.allow_clients[0]",
        "CIDR",
    );
    assert_bad(
        "[proxy]\nconnect_ports = [0]\n",
        "proxy.connect_ports[0]",
        "port",
    );
    assert_bad(
        "[proxy]\nconnect_ports = [70000]\n",
        "proxy.connect_ports[0]",
        "port",
    );
}

#[test]
fn bad_limit_values() {
    for (text, key) in [
        ("[limits]\nrps = -1.0\n", "limits.rps"),
        ("[limits]\nrps = 0.0\n", "limits.rps"),
        ("[limits]\nrps = nan\n", "limits.rps"),
        ("[limits]\nrps = inf\n", "limits.rps"),
        ("[limits]\nmax_concurrent = 0\n", "limits.max_concurrent"),
        ("[limits]\nburst = 0\n", "limits.burst"),
        ("[limits]\nqueue_capacity = -3\n", "limits.queue_capacity"),
        (
            "[limits.domains.\"a.test\"]\nrps = -2.0\n",
            "limits.domains.\"a.test\".rps",
        ),
        (
            "[limits.domains.\"a.test\"]\nmax_concurrent = 5000\n",
            "limits.domains.\"a.test\".max_concurrent",
        ),
        (
            "[limits.domains.\"a.test\"]\ntls = \"sometimes\"\n",
            "limits.domains.\"a.test\".tls",
        ),
        (
            "[limits.domains.\"a.test\"]\nregions = [\"mars\"]\n",
            "limits.domains.\"a.test\".regions",
        ),
        (
            "[limits.domains.\"https://a.test\"]\nrps = 1.0\n",
            "limits.domains.\"https://a.test\"",
        ),
        ("[retry]\nretry_codes = [99]\n", "retry.retry_codes"),
        ("[webhooks]\nsecret = \"short\"\n", "webhooks.secret"),
        ("[storage]\nbackend = \"postgres\"\n", "storage.backend"),
        ("[storage]\nbackend = \"redis\"\n", "storage.url"),
        (
            "[regions.local]\nproxy = \"http://127.0.0.1:1\"\n",
            "regions.local",
        ),
        ("[tls]\nca_cert = \"/x/ca.pem\"\n", "tls.ca_key"),
    ] {
        let e = bad(text);
        assert!(
            e.key == key
                || e.key.starts_with(&format!("{key}."))
                || e.key.starts_with(&format!("{key}[")),
            "{text:?}: expected key {key}, got {e}"
        );
        assert!(!e.reason.is_empty(), "{e}");
    }
}

#[test]
fn the_redis_url_comes_from_one_place_and_bad_values_name_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("redis-url");
    std::fs::write(&file, "redis://:filepass@127.0.0.1:6390/2\n").expect("write");
    let c = parse(&format!(
        "[storage]\nbackend = \"redis\"\nurl_file = {:?}\ntimeout = \"100ms\"\nprefix = \"egress-1\"\n",
        file.display().to_string()
    ))
    .expect("url from a file");
    let StorageBackend::Redis(r) = &c.storage.backend else {
        panic!("redis backend")
    };
    assert_eq!(r.url, "redis://:filepass@127.0.0.1:6390/2", "trimmed");
    assert_eq!(r.timeout, Duration::from_millis(100));
    assert_eq!(r.prefix, "egress-1");
    let shown = c.to_effective_toml();
    assert!(!shown.contains("filepass"), "{shown}");
    assert!(shown.contains("url_file"), "{shown}");
    assert!(!format!("{c:?}").contains("filepass"), "Debug leaks");

    std::env::set_var(
        "EZT_TEST_REDIS_URL_VAR",
        "rediss://u:envpass@cache.test:6380",
    );
    let c = parse("[storage]\nbackend = \"redis\"\nurl_env = \"EZT_TEST_REDIS_URL_VAR\"\n")
        .expect("url from a variable");
    let StorageBackend::Redis(r) = &c.storage.backend else {
        panic!("redis backend")
    };
    assert_eq!(r.url, "rediss://u:envpass@cache.test:6380");
    assert_eq!(r.url_source, "env:EZT_TEST_REDIS_URL_VAR");

    let missing = dir.path().join("nope").display().to_string();
    for (text, key) in [
        (
            "[storage]\nbackend = \"redis\"\nurl = \"redis://a\"\nurl_env = \"X\"\n".to_string(),
            "storage.url",
        ),
        (
            "[storage]\nbackend = \"redis\"\nurl_env = \"EZT_TEST_NO_SUCH_VAR_9\"\n".to_string(),
            "storage.url_env",
        ),
        (
            format!("[storage]\nbackend = \"redis\"\nurl_file = {missing:?}\n"),
            "storage.url_file",
        ),
        (
            "[storage]\nbackend = \"redis\"\nurl = \"http://127.0.0.1:6379\"\n".to_string(),
            "storage.url",
        ),
        (
            "[storage]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\ntimeout = \"0s\"\n"
                .to_string(),
            "storage.timeout",
        ),
        (
            "[storage]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\ntimeout = \"1h\"\n"
                .to_string(),
            "storage.timeout",
        ),
        (
            "[storage]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nprefix = \"a b\"\n"
                .to_string(),
            "storage.prefix",
        ),
        (
            "[storage]\nprefix = \"ezt\"\n".to_string(),
            "storage.prefix",
        ),
    ] {
        let e = bad(&text);
        assert_eq!(e.key, key, "{text:?}: {e}");
    }
    // A password in a bad URL is never echoed.
    let e = bad("[storage]\nbackend = \"redis\"\nurl = \"http://:pw123secret@h:1\"\n");
    assert!(!e.to_string().contains("pw123secret"), "{e}");
}

#[test]
fn secrets_are_never_printed() {
    let c = parse(
        "[webhooks]\nsecret = \"super-secret-webhook-key\"\n[control]\napi_keys = { \"tok_live_hidden\" = \"ws\" }\n[storage]\nbackend = \"redis\"\nurl = \"redis://:hunter2pass@127.0.0.1:6379\"\n",
    )
    .expect("valid");
    let shown = c.to_effective_toml();
    for secret in ["super-secret-webhook-key", "tok_live_hidden", "hunter2pass"] {
        assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
    }
}

#[test]
fn domain_tables_match_exactly_then_longest_wildcard() {
    let c = parse(
        "[limits.domains.\"API.Example.com\"]\nrps = 5.0\n\
         [limits.domains.\"*.example.com\"]\nrps = 3.0\n\
         [limits.domains.\"*.eu.example.com\"]\nrps = 4.0\nmax_concurrent = 7\n",
    )
    .expect("valid");
    assert_eq!(c.limits_for("api.example.com").rps, 5.0);
    assert_eq!(c.limits_for("other.example.com").rps, 3.0);
    assert_eq!(c.limits_for("x.eu.example.com").rps, 4.0);
    assert_eq!(c.limits_for("x.eu.example.com").max_concurrent, 7);
    assert_eq!(c.limits_for("example.com").rps, 2.0);
    assert_eq!(c.limits_for("example.com.evil.test").rps, 2.0);
    // Unset keys of a domain table come from [limits].
    assert_eq!(c.limits_for("other.example.com").max_concurrent, 2);
}

#[test]
fn cross_checks_guard_against_open_listeners() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let p = write("open-proxy.toml", "[proxy]\nlisten = \"0.0.0.0:4000\"\n");
    let e = Config::load(Some(&p), &Overrides::default()).unwrap_err();
    assert_eq!(e.key, "proxy.allow_clients");
    assert_eq!(e.file, p.display().to_string());

    let p = write(
        "open-control.toml",
        "[control]\nlisten = \"0.0.0.0:4001\"\n",
    );
    let e = Config::load(Some(&p), &Overrides::default()).unwrap_err();
    assert_eq!(e.key, "control.api_keys");

    // The same check applies when the address comes from a flag.
    let e = Config::load(
        None,
        &Overrides {
            control_listen: Some("0.0.0.0:4001".parse().unwrap()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.key, "control.api_keys");

    let p = write(
        "ok.toml",
        "[proxy]\nlisten = \"0.0.0.0:4000\"\nallow_clients = [\"10.0.0.0/8\"]\n",
    );
    let c = Config::load(Some(&p), &Overrides::default()).expect("explicit allow list is fine");
    assert_eq!(c.source.as_deref(), Some(p.as_path()));

    let missing = dir.path().join("missing.toml");
    let e = Config::load(Some(&missing), &Overrides::default()).unwrap_err();
    assert!(e.reason.contains("cannot read"), "{e}");
}

#[test]
fn storage_encryption_key_comes_from_a_file_or_variable_never_inline() {
    use base64::Engine;
    assert_bad(
        "[storage]\nencryption_key = \"c2VjcmV0\"\n",
        "storage.encryption_key",
        "must not be written in the config file",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("storage.key");
    let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    std::fs::write(&file, format!("{b64}\n")).unwrap();
    let text = format!(
        "[storage]\nencryption_key_file = {:?}\n",
        file.display().to_string()
    );
    let c = parse(&text).expect("key file");
    assert_eq!(
        c.storage.encryption_key,
        Some(crate::config::EncryptionKey::from_bytes([7u8; 32]))
    );
    let shown = c.to_effective_toml();
    assert!(
        shown.contains("encryption_key_file") && !shown.contains(&b64),
        "{shown}"
    );
    assert!(!format!("{c:?}").contains(&b64));

    std::env::set_var("EZT_TEST_STORAGE_KEY_OK", "ab".repeat(32));
    let c = parse("[storage]\nencryption_key_env = \"EZT_TEST_STORAGE_KEY_OK\"\n").unwrap();
    assert_eq!(
        c.storage.encryption_key,
        Some(crate::config::EncryptionKey::from_bytes([0xab; 32]))
    );
    assert_bad(
        "[storage]\nencryption_key_env = \"EZT_TEST_STORAGE_KEY_UNSET\"\n",
        "storage.encryption_key_env",
        "EZT_TEST_STORAGE_KEY_UNSET",
    );
    std::env::set_var("EZT_TEST_STORAGE_KEY_SHORT", "abcd");
    assert_bad(
        "[storage]\nencryption_key_env = \"EZT_TEST_STORAGE_KEY_SHORT\"\n",
        "storage.encryption_key_env",
        "expected exactly 32",
    );
    assert_bad(
        &format!("{text}encryption_key_env = \"EZT_TEST_STORAGE_KEY_OK\"\n"),
        "storage.encryption_key_file",
        "not both",
    );
    assert_bad(
        "[storage]\nencryption_key_file = \"/nonexistent/ezthrottle.key\"\n",
        "storage.encryption_key_file",
        "cannot read",
    );
}

#[test]
fn webhooks_secret_is_at_most_one_kib() {
    let ok = format!("[webhooks]\nsecret = \"{}\"\n", "s".repeat(1024));
    assert_eq!(parse(&ok).unwrap().webhooks.secret.unwrap().len(), 1024);
    for n in [1025, 1 << 20] {
        let e = bad(&format!("[webhooks]\nsecret = \"{}\"\n", "s".repeat(n)));
        assert_eq!(e.key, "webhooks.secret", "{e}");
        assert!(e.reason.contains("at most 1024 bytes"), "{}", e.reason);
        assert!(!e.reason.contains("sss"), "never echoes the secret");
    }
}

#[test]
fn max_wait_ceiling_bounds_configured_max_waits() {
    let c = parse("[limits]\nmax_wait = \"2h\"\nmax_wait_ceiling = \"3h\"\n").expect("config");
    assert_eq!(c.limits.max_wait_ceiling, Duration::from_secs(3 * 3600));
    assert_bad(
        "[limits]\nmax_wait = \"2h\"\n",
        "limits.max_wait",
        "above limits.max_wait_ceiling",
    );
    assert_bad(
        "[limits.domains.\"a.test\"]\nmax_wait = \"90m\"\n",
        "limits.domains.\"a.test\".max_wait",
        "above limits.max_wait_ceiling",
    );
    assert_bad(
        "[limits]\nmax_wait_ceiling = \"25h\"\n",
        "limits.max_wait_ceiling",
        "between",
    );
}

#[test]
fn request_head_limits_and_the_buffer_budget() {
    let def = parse("").expect("defaults");
    assert_eq!(
        def.proxy.head_limits,
        crate::config::HeadLimits {
            max_request_line: 8 * 1024,
            max_header_line: 16 * 1024,
            max_head: 64 * 1024,
            max_headers: 100,
        }
    );
    assert_eq!(def.proxy.head_timeout, Duration::from_secs(30));
    assert_eq!(def.proxy.max_buffered, 64 << 20);
    let ex = parse(EXAMPLE).expect("example");
    assert_eq!(ex.proxy.head_limits, def.proxy.head_limits);
    assert_eq!(ex.proxy.head_timeout, def.proxy.head_timeout);
    assert_eq!(ex.proxy.max_buffered, def.proxy.max_buffered);

    let c = parse(
        "[proxy]\nmax_request_line = \"4KiB\"\nmax_header_line = 2048\nmax_head = \"512KiB\"\nmax_headers = 256\nhead_timeout = \"5s\"\nmax_buffered = \"1MiB\"\n",
    )
    .expect("config");
    assert_eq!(c.proxy.head_limits.max_request_line, 4096);
    assert_eq!(c.proxy.head_limits.max_header_line, 2048);
    assert_eq!(c.proxy.head_limits.max_head, 512 * 1024);
    assert_eq!(c.proxy.head_limits.max_headers, 256);
    assert_eq!(c.proxy.head_timeout, Duration::from_secs(5));
    assert_eq!(c.proxy.max_buffered, 1 << 20);

    // pingora refuses heads over 1048575 bytes and 256 headers itself.
    assert_bad(
        "[proxy]\nmax_head = \"1MiB\"\n",
        "proxy.max_head",
        "between 64 bytes and 1048575",
    );
    assert_bad(
        "[proxy]\nmax_request_line = 10\n",
        "proxy.max_request_line",
        "between 64",
    );
    assert_bad(
        "[proxy]\nmax_headers = 0\n",
        "proxy.max_headers",
        "between 1 and 256",
    );
    assert_bad(
        "[proxy]\nmax_headers = 257\n",
        "proxy.max_headers",
        "between 1 and 256",
    );
    assert_bad(
        "[proxy]\nmax_header_line = \"32KiB\"\nmax_head = \"16KiB\"\n",
        "proxy.max_header_line",
        "larger than proxy.max_head",
    );
    assert_bad(
        "[proxy]\nmax_buffered = \"32KiB\"\n",
        "proxy.max_buffered",
        "smaller than proxy.max_head",
    );
    assert_bad(
        "[proxy]\nhead_timeout = \"0s\"\n",
        "proxy.head_timeout",
        "longer than 0",
    );
    assert_bad(
        "[proxy]\nmax_head = \"lots\"\n",
        "proxy.max_head",
        "expected a size",
    );
}

#[test]
fn presets_are_on_by_default_and_a_domain_table_replaces_them() {
    let c = parse("").expect("defaults");
    assert!(c.limits.presets);
    assert_eq!(
        c.preset("api.openai.com").map(|p| p.dialect),
        Some("openai")
    );
    assert_eq!(
        c.preset("shop.myshopify.com").map(|p| p.host),
        Some("*.myshopify.com")
    );
    assert!(c.preset("api.example.com").is_none());

    let off = parse("[limits]\npresets = false\n").expect("presets off");
    assert!(!off.limits.presets);
    assert!(off.preset("api.openai.com").is_none());
    assert!(off.budget_key("api.openai.com").is_empty());

    // Any matching table, exact or wildcard, wins over the preset.
    let c = parse(
        "[limits.domains.\"api.openai.com\"]\nrps = 1.0\n\
         [limits.domains.\"*.myshopify.com\"]\nqueue_capacity = 5\n",
    )
    .expect("tables");
    assert!(c.preset("api.openai.com").is_none());
    assert!(c.preset("shop.myshopify.com").is_none());
    assert!(c.preset("api.anthropic.com").is_some());
}

#[test]
fn budget_key_comes_from_the_table_else_the_preset_else_none() {
    use http::HeaderName;
    let auth = http::header::AUTHORIZATION;
    let c = parse("").expect("defaults");
    assert_eq!(c.budget_key("api.openai.com"), vec![auth.clone()]);
    assert_eq!(
        c.budget_key("api.anthropic.com"),
        vec![HeaderName::from_static("x-api-key")]
    );
    assert_eq!(
        c.budget_key("a.myshopify.com"),
        vec![HeaderName::from_static("x-shopify-access-token")]
    );
    assert!(c.budget_key("hooks.slack.com").is_empty());
    assert!(c.budget_key("api.example.com").is_empty());

    let c = parse(
        "[limits.domains.\"api.example.com\"]\nbudget_key = \"authorization\"\n\
         [limits.domains.\"*.example.com\"]\nbudget_key = [\"header:X-Team\", \"Authorization\"]\n\
         [limits.domains.\"api.openai.com\"]\nbudget_key = []\n\
         [limits.domains.\"api.anthropic.com\"]\nrps = 3.0\n\
         [limits.domains.\"api.github.com\"]\nbudget_key = \"header: x-api-key \"\n",
    )
    .expect("budget keys");
    let d = |h: &str| c.domain(h).expect("table").budget_key.clone();
    assert_eq!(d("api.example.com"), Some(vec![auth.clone()]));
    assert_eq!(
        d("eu.example.com"),
        Some(vec![HeaderName::from_static("x-team"), auth.clone()])
    );
    assert_eq!(d("api.openai.com"), Some(vec![]));
    assert_eq!(d("api.anthropic.com"), None);
    assert_eq!(
        d("api.github.com"),
        Some(vec![HeaderName::from_static("x-api-key")])
    );
    assert_eq!(c.budget_key("api.example.com"), vec![auth.clone()]);
    assert_eq!(c.budget_key("eu.example.com").len(), 2);
    // `budget_key = []` turns the preset's split off.
    assert!(c.budget_key("api.openai.com").is_empty());
    // A table without budget_key replaces the preset too: one budget.
    assert!(c.budget_key("api.anthropic.com").is_empty());
    // Unmatched hosts keep their preset.
    assert_eq!(c.budget_key("discord.com"), vec![auth]);
}

#[test]
fn bad_budget_keys_name_the_key_and_the_reason() {
    let t = |v: &str| format!("[limits.domains.\"api.x.com\"]\nbudget_key = {v}\n");
    let key = "limits.domains.\"api.x.com\".budget_key";
    assert_bad(&t("\"cookie:session\""), key, "unknown form");
    assert_bad(&t("\"x-api-key\""), key, "unknown form");
    assert_bad(&t("\"\""), key, "empty");
    assert_bad(&t("\"  \""), key, "empty");
    assert_bad(&t("\"header:\""), key, "names no header");
    assert_bad(&t("\"header:x api key\""), key, "not a header name");
    assert_bad(&t("\"header:x-é\""), key, "not a header name");
    assert_bad(&t("42"), key, "a string or a list of strings");
    assert_bad(&t("true"), key, "a string or a list of strings");
    assert_bad(
        &t("[\"authorization\", \"header:a\", \"header:b\", \"header:c\", \"header:d\"]"),
        key,
        "more than 4",
    );
    assert_bad(
        &t("[\"authorization\", \"header:x-\\u0000\"]"),
        &format!("{key}[1]"),
        "not a header name",
    );
    assert_bad(
        &t("[\"authorization\", 7]"),
        &format!("{key}[1]"),
        "expected",
    );
    assert_bad(&t("[\"header:\"]"), &format!("{key}[0]"), "names no header");
    assert_bad(
        &t("[\"authorization\", \"header:Authorization\"]"),
        &format!("{key}[1]"),
        "listed twice",
    );
    assert_bad(
        "[limits.domains.\"api.x.com\"]\ntls = \"tunnel\"\nbudget_key = \"authorization\"\n",
        key,
        "tunnel",
    );
    // Per domain only: [limits] has no budget_key.
    assert_bad(
        "[limits]\nbudget_key = \"authorization\"\n",
        "limits.budget_key",
        "unknown field",
    );
    assert_bad(
        "[limits]\npresets = \"yes\"\n",
        "limits.presets",
        "invalid type",
    );
    // An explicit empty list with a tunnel is fine: there is nothing to read.
    parse("[limits.domains.\"api.x.com\"]\ntls = \"tunnel\"\nbudget_key = []\n")
        .expect("empty budget_key with tunnel");
}

#[test]
fn effective_config_shows_presets_and_budget_keys_and_reads_back() {
    let c = parse(
        "[limits]\npresets = false\n\
         [limits.domains.\"api.example.com\"]\nbudget_key = [\"authorization\", \"header:X-Api-Key\"]\n\
         [limits.domains.\"api.other.com\"]\nbudget_key = []\n\
         [limits.domains.\"api.plain.com\"]\nrps = 1.0\n",
    )
    .expect("config");
    let shown = c.to_effective_toml();
    assert!(shown.contains("presets = false"), "{shown}");
    assert!(
        shown.contains("budget_key = [\n    \"authorization\",\n    \"header:x-api-key\",\n]")
            || shown.contains("budget_key = [\"authorization\", \"header:x-api-key\"]"),
        "{shown}"
    );
    assert!(shown.contains("budget_key = []"), "{shown}");
    assert_eq!(shown.matches("budget_key").count(), 2, "{shown}");
    let again = parse(&shown).expect("effective config parses");
    assert!(!again.limits.presets);
    for host in ["api.example.com", "api.other.com", "api.plain.com"] {
        assert_eq!(
            again.domain(host).map(|d| d.budget_key.clone()),
            c.domain(host).map(|d| d.budget_key.clone()),
            "{host}"
        );
    }
    assert!(parse("")
        .expect("defaults")
        .to_effective_toml()
        .contains("presets = true"));
}

//! The test support for the Redis backend works on its own (no ezthrottle
//! Redis support needed): a private redis-server starts, answers, stops
//! (connections are then refused), restarts on the same port with its AOF
//! data; `EzBuilder` writes the `[storage]` table and lets instances share
//! one CA.

mod common;

use common::harness::{EzBuilder, SharedCa};
use common::raw;
use common::redis_server::{aof_bytes, RedisOptions, RedisServer};

fn assert_refused(redis: &RedisServer) {
    let err = redis
        .try_conn()
        .err()
        .unwrap_or_else(|| panic!("redis on {} still answers after stop", redis.addr));
    assert!(
        err.is_connection_refusal(),
        "expected connection refused on {}, got {err}",
        redis.addr
    );
}

#[test]
fn aof_server_starts_stops_and_restarts_with_its_data() {
    let mut redis = RedisServer::start_aof();
    redis.ping();
    let port = redis.port;
    let server = redis.info("server");
    assert_eq!(
        server.get("tcp_port"),
        Some(&port.to_string()),
        "{server:?}"
    );
    let persistence = redis.info("persistence");
    assert_eq!(
        persistence.get("aof_enabled").map(String::as_str),
        Some("1")
    );
    let memory = redis.info("memory");
    assert_eq!(
        memory.get("maxmemory_policy").map(String::as_str),
        Some("noeviction")
    );

    let _: () = redis.cmd(&["SET", "harness:k", "v1"]);
    let v: String = redis.cmd(&["GET", "harness:k"]);
    assert_eq!(v, "v1");
    assert_eq!(redis.keys("harness:*"), vec!["harness:k".to_string()]);

    // Graceful stop: the port refuses, the AOF is on disk.
    redis.stop();
    assert!(!redis.is_running());
    assert_refused(&redis);
    assert!(
        aof_bytes(&redis.data_dir()) > 0,
        "no AOF in {:?}",
        redis.data_dir()
    );

    // Back on the same port, with the data.
    redis.restart();
    assert_eq!(redis.port, port);
    redis.ping();
    let v: String = redis.cmd(&["GET", "harness:k"]);
    assert_eq!(v, "v1");

    // A crash (SIGKILL) loses nothing either: appendfsync always.
    let _: () = redis.cmd(&["SET", "harness:k", "v2"]);
    redis.kill();
    assert_refused(&redis);
    redis.restart();
    let v: String = redis.cmd(&["GET", "harness:k"]);
    assert_eq!(v, "v2");
}

#[test]
fn default_server_keeps_nothing_across_restart() {
    let mut redis = RedisServer::start();
    let persistence = redis.info("persistence");
    assert_eq!(
        persistence.get("aof_enabled").map(String::as_str),
        Some("0")
    );
    let _: () = redis.cmd(&["SET", "gone", "1"]);
    redis.stop();
    assert_refused(&redis);
    redis.restart();
    let v: Option<String> = redis.cmd(&["GET", "gone"]);
    assert_eq!(v, None, "a server without persistence kept data");
    redis.flushall();
}

#[test]
fn password_and_frozen_server() {
    let redis = RedisServer::start_with(RedisOptions {
        password: Some("s3cret".into()),
        ..RedisOptions::default()
    });
    assert!(redis.url().starts_with("redis://:s3cret@127.0.0.1:"));
    redis.ping();
    let anon = redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port))
        .expect("client")
        .get_connection_with_timeout(std::time::Duration::from_secs(5))
        .and_then(|mut c| redis::cmd("GET").arg("x").query::<Option<String>>(&mut c));
    assert!(anon.is_err(), "a client without the password was served");

    // Frozen: the port accepts but nothing answers, so reads time out.
    redis.freeze();
    let mut conn = redis::Client::open(redis.url())
        .expect("client")
        .get_connection_with_timeout(std::time::Duration::from_millis(300));
    if let Ok(c) = conn.as_mut() {
        c.set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .expect("read timeout");
        let r = redis::cmd("PING").query::<String>(c);
        assert!(r.is_err(), "a frozen server answered: {r:?}");
    }
    redis.resume();
    redis.ping();
}

#[test]
fn builder_writes_the_redis_storage_table() {
    let redis = RedisServer::start();
    let ez = EzBuilder::new().redis(&redis).redis_prefix("t1");
    // Only the config file: whether ezthrottle runs on it is not this test's
    // business (the backend lands separately); `config check` must accept it.
    let dir = tempfile::tempdir().expect("tempdir");
    let text = ez.render_config(&dir.path().join("data"));
    assert!(
        text.contains("\n[storage]\nbackend = \"redis\"\n"),
        "{text}"
    );
    let cfg = dir.path().join("ezthrottle.toml");
    std::fs::write(&cfg, &text).expect("write config");
    let out = common::proc::run(
        common::ezthrottle_cmd()
            .arg("config")
            .arg("check")
            .arg("--config")
            .arg(&cfg),
        common::CLIENT_TIMEOUT,
    );
    assert!(out.status.success(), "{}", common::proc::show(&out));
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(effective.contains("prefix = \"t1\""), "{effective}");
    assert!(effective.contains("timeout = \"1s\""), "{effective}");
}

#[test]
fn replicas_share_one_ca() {
    let ez = EzBuilder::new().start_replicas(2);
    assert_eq!(ez.len(), 2);
    assert_ne!(ez[0].data_dir, ez[1].data_dir);
    assert_ne!(ez[0].proxy, ez[1].proxy);
    let pem = ez[0].ca_pem();
    assert_eq!(pem, ez[1].ca_pem());
    for e in &ez {
        let served = raw::get(e.control, "/ca.pem");
        assert_eq!(served.status, 200);
        assert_eq!(served.text().trim(), pem.trim(), "/ca.pem of {}", e.control);
        // ezthrottle used the configured files, not a data-dir CA of its own.
        assert!(!e.data_dir.join("ca").join("ca.pem").exists());
    }

    // ca_from: a third instance joins later with the first one's CA.
    let third = EzBuilder::new().ca_from(&ez[0]).start();
    assert_eq!(third.ca_pem(), pem);

    // An explicit SharedCa works the same way.
    let ca = SharedCa::new();
    let one = EzBuilder::new().ca_files(&ca.cert, &ca.key).start();
    assert_eq!(one.ca_pem(), ca.pem());
    assert_ne!(one.ca_pem(), pem);
}

//! The status page `GET /` on the control port (SPEC §8), in a real browser:
//! headless Chromium loads it while requests to two domains are in flight
//! and queued, saves a screenshot under the target dir, and the rendered DOM
//! (after the page's own refresh script has run) lists both domains with
//! their state.
//!
//! Chromium comes from the Debian package `chromium` (scripts/test installs
//! it). Without it this test fails, unless `EZT_SKIP_BROWSER=1`. The browser
//! is kept off the network: every name but 127.0.0.1 resolves to nothing and
//! anything not on loopback goes to a closed local proxy port.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::proc::{run, show};
use common::{closed_addr, eventually, json, raw, Ezthrottle, Origin};

/// How long the origin holds each request: far longer than the test needs,
/// the clients are killed at the end.
const HOLD_MS: u64 = 60_000;

/// `EZT_CHROMIUM`, else `chromium` / `chromium-browser` on `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EZT_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser"] {
        if let Some(p) = std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
        {
            return Some(p);
        }
    }
    None
}

/// `$CARGO_TARGET_DIR` (relative to the manifest dir if relative), else `target/`.
fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => manifest.join(dir),
        None => manifest.join("target"),
    }
}

/// Chromium, headless, isolated profile, no network but loopback.
fn browser(chromium: &Path, profile: &Path, offline_proxy: &str) -> Command {
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        // Tests run as root in CI; Chromium's sandbox refuses root.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--metrics-recording-only",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ]);
    cmd.arg(format!("--proxy-server={offline_proxy}"));
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// A curl through the proxy that the origin holds for `HOLD_MS`.
fn hold(ez: &Ezthrottle, url: &str) -> Child {
    Command::new("curl")
        .args(["-q", "-sS", "--max-time", "120", "-o", "/dev/null"])
        .arg("--proxy")
        .arg(ez.proxy_url())
        .arg(url)
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn curl")
}

/// Kills the held clients however the test ends.
struct Clients(Vec<Child>);

impl Drop for Clients {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn domain<'a>(domains: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    domains["domains"]
        .as_array()?
        .iter()
        .find(|d| d["domain"] == name)
}

/// The `<tr>` of `name` in the dumped DOM.
fn row<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("data-domain=\"{name}\""))
        .unwrap_or_else(|| panic!("no row for {name} in the rendered page:\n{dom}"));
    let end = dom[start..]
        .find("</tr>")
        .map(|e| start + e)
        .expect("row end");
    &dom[start..end]
}

fn chromium_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "chromium {what} failed: {}",
        show(out)
    );
}

#[test]
fn status_page_in_headless_chromium_lists_domains_while_traffic_flows() {
    let Some(chromium) = chromium() else {
        if std::env::var("EZT_SKIP_BROWSER").is_ok_and(|v| v == "1") {
            eprintln!("chromium not found; skipped because EZT_SKIP_BROWSER=1");
            return;
        }
        panic!(
            "chromium not found on PATH (nor EZT_CHROMIUM): it comes from the Debian package \
             `chromium`, which scripts/test installs (`apt-get install chromium`). \
             Set EZT_SKIP_BROWSER=1 to skip this test."
        );
    };

    let origin = Origin::start();
    // alpha.test: one at a time, so of three requests one is in flight and
    // two wait; beta.test: limits from the config file.
    let ez = Ezthrottle::for_origin(&origin)
        .resolve("alpha.test", "127.0.0.1")
        .resolve("beta.test", "127.0.0.1")
        .limits("rps = 1000.0\nmax_concurrent = 1")
        .extra("[limits.domains.\"beta.test\"]\nrps = 5.0\nmax_concurrent = 3\n")
        .start();

    let port = origin.http_addr.port();
    let slow = |host: &str| format!("http://{host}:{port}/slow?ms={HOLD_MS}");
    let mut clients = Clients(Vec::new());
    clients.0.push(hold(&ez, &slow("alpha.test")));
    origin.wait_slow_arrival(Duration::from_secs(30));
    clients.0.push(hold(&ez, &slow("beta.test")));
    origin.wait_slow_arrival(Duration::from_secs(30));
    clients.0.push(hold(&ez, &slow("alpha.test")));
    clients.0.push(hold(&ez, &slow("alpha.test")));

    // Queued requests reach no origin, so there is no event to await: poll
    // the domains API (bounded) until both are queued.
    eventually(
        Duration::from_secs(20),
        "alpha.test: 1 in flight, 2 waiting",
        || {
            let r = raw::get(ez.control, "/api/v1/domains");
            let v = json(&r.body);
            let a = domain(&v, "alpha.test")?;
            let b = domain(&v, "beta.test")?;
            (a["in_flight"] == 1 && a["waiting"] == 2 && b["in_flight"] == 1).then_some(())
        },
    );

    let url = ez.control_url("/");
    let plain = raw::get(ez.control, "/");
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert_eq!(
        plain.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = plain
        .header("content-security-policy")
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "CSP: {csp:?}");

    let profile = tempfile::tempdir().expect("chromium profile dir");
    let offline_proxy = format!("http://{}", closed_addr());

    // The DOM after 4 s of virtual time: the page's script has re-fetched
    // and swapped in its live section at least once by then.
    let out = run(
        browser(&chromium, profile.path(), &offline_proxy)
            .arg("--virtual-time-budget=4000")
            .arg("--dump-dom")
            .arg(&url)
            .stdin(Stdio::null()),
        Duration::from_secs(120),
    );
    chromium_ok(&out, "--dump-dom");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();

    assert!(dom.contains("<title>ezthrottle status</title>"), "{dom}");
    assert!(
        dom.contains(r#"<span id="state" class="muted">live, refreshed every 2 s</span>"#),
        "the refresh script did not run (or its fetch failed) under the page's CSP:\n{dom}"
    );
    let alpha = row(&dom, "alpha.test");
    assert!(
        alpha.contains(r#"<td class="domain">alpha.test</td>"#),
        "{alpha}"
    );
    assert!(alpha.contains(r#"<td class="in-flight">1</td>"#), "{alpha}");
    assert!(alpha.contains(r#"<td class="waiting">2</td>"#), "{alpha}");
    assert!(alpha.contains(r#"<span class="src default""#), "{alpha}");
    let beta = row(&dom, "beta.test");
    assert!(
        beta.contains(r#"<td class="domain">beta.test</td>"#),
        "{beta}"
    );
    assert!(beta.contains(r#"<td class="in-flight">1</td>"#), "{beta}");
    assert!(
        beta.contains(r#"<td class="rps">5<span class="src config""#),
        "{beta}"
    );
    assert!(
        beta.contains(r#"<td class="concurrency">3<span class="src config""#),
        "{beta}"
    );
    assert!(dom.contains(r#"<b id="count-waiting">2</b>"#), "{dom}");
    for status in [
        "queued",
        "racing",
        "in_flight",
        "retrying",
        "success",
        "failed",
        "cancelled",
    ] {
        assert!(
            dom.contains(&format!(r#"<tr data-status="{status}"><td>{status}</td>"#)),
            "jobs table lacks {status}:\n{dom}"
        );
    }

    // A screenshot for people to look at.
    let shot_dir = target_dir();
    std::fs::create_dir_all(&shot_dir).expect("create target dir");
    let shot = shot_dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = run(
        browser(&chromium, profile.path(), &offline_proxy)
            .arg("--window-size=1280,900")
            .arg(format!("--screenshot={}", shot.display()))
            .arg(&url)
            .stdin(Stdio::null()),
        Duration::from_secs(120),
    );
    chromium_ok(&out, "--screenshot");
    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}\n{}", shot.display(), show(&out)));
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG screenshot",
        shot.display()
    );
    eprintln!("status page screenshot: {}", shot.display());
    drop(clients);
}

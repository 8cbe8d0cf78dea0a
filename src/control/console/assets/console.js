// ezthrottle console (docs/console.md). Plain ES2017, no library: every
// text from the server goes in with textContent, never as markup.
"use strict";
(function () {
  var WINDOW = 900;
  var TOKEN_KEY = "ezthrottle-console-token";
  var SVG = "http://www.w3.org/2000/svg";
  var $ = function (id) { return document.getElementById(id); };

  // ---- the API: the job API's token, 401 asks for one -------------------
  function token() { try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; } }
  function api(method, path) {
    var headers = { "Accept": "application/json" };
    var t = token();
    if (t) { headers["Authorization"] = "Bearer " + t; }
    return fetch(path, { method: method, headers: headers, cache: "no-store" }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (r.status === 401) { showLogin(body); throw new Error("unauthorized"); }
        if (!r.ok) {
          var e = new Error((body.error && body.error.message) || ("HTTP " + r.status));
          e.code = body.error && body.error.code;
          throw e;
        }
        return body;
      });
    });
  }
  function showLogin(body) {
    ["overview", "jobs", "job"].forEach(function (s) { $(s).classList.add("hidden"); });
    $("login").classList.remove("hidden");
    $("login-error").textContent = token() ? ((body.error && body.error.message) || "token refused") : "";
    state("token required");
  }
  $("login-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    try { sessionStorage.setItem(TOKEN_KEY, $("token").value.trim()); } catch (e) { /* private mode */ }
    $("token").value = "";
    $("login").classList.add("hidden");
    route();
  });
  $("forget-token").addEventListener("click", function () {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing kept */ }
    route();
  });

  // ---- small DOM helpers ------------------------------------------------
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function clear(e) { while (e.firstChild) { e.removeChild(e.firstChild); } return e; }
  function state(text) { $("state").textContent = text; }
  function when(ms) { return ms ? new Date(ms).toLocaleString() : "—"; }
  function fmt(n) {
    if (n === null || n === undefined) { return "—"; }
    if (Math.abs(n) >= 100) { return String(Math.round(n)); }
    return String(Math.round(n * 100) / 100);
  }

  // ---- overview: 15 min x 1 s per domain, polled every second -----------
  var series = {};      // label -> {from, cols}
  var lastNow = 0;
  var overviewTimer = null;
  var COLS = ["admitted", "denied", "r2xx", "r429", "r5xx", "rother", "wait_p50_ms", "wait_p99_ms",
    "rps_limit", "max_concurrent", "in_flight", "waiting"];

  function merge(label, p) {
    var s = series[label];
    if (!s || p.from < s.from) { s = series[label] = { from: p.from, cols: {} }; COLS.forEach(function (c) { s.cols[c] = []; }); }
    var offset = p.from - s.from;
    COLS.forEach(function (c) {
      var col = s.cols[c];
      col.length = Math.min(col.length, offset);
      while (col.length < offset) { col.push(null); }
      Array.prototype.push.apply(col, p[c]);
    });
    var extra = s.cols.admitted.length - WINDOW;
    if (extra > 0) {
      COLS.forEach(function (c) { s.cols[c].splice(0, extra); });
      s.from += extra;
    }
  }

  // One chart: polylines, x one unit per second, y from 0 to the largest value.
  function chart(title, lines, unit) {
    var fig = el("figure", "chart");
    var cap = el("figcaption");
    cap.appendChild(el("span", null, title));
    var max = 0;
    lines.forEach(function (l) { l.data.forEach(function (v) { if (v !== null && v > max) { max = v; } }); });
    cap.appendChild(el("span", "muted", "max " + fmt(max) + (unit || "")));
    fig.appendChild(cap);
    var svg = document.createElementNS(SVG, "svg");
    var width = Math.max(1, lines[0].data.length - 1);
    svg.setAttribute("viewBox", "0 0 " + width + " 100");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", title);
    var top = max > 0 ? max * 1.1 : 1;
    lines.forEach(function (l) {
      var pts = [];
      l.data.forEach(function (v, i) {
        if (v !== null && v !== undefined) { pts.push(i + "," + (100 - (v / top) * 100).toFixed(1)); }
      });
      var pl = document.createElementNS(SVG, "polyline");
      pl.setAttribute("class", "s-" + l.cls);
      pl.setAttribute("points", pts.join(" "));
      pl.setAttribute("data-points", String(pts.length));
      svg.appendChild(pl);
    });
    fig.appendChild(svg);
    return fig;
  }

  function sum(a, b) { return a.map(function (v, i) { return (v || 0) + (b[i] || 0); }); }

  function sourceBadge(name) { return el("span", "src", name); }

  function domainCard(d) {
    var s = series[d.domain];
    var card = el("article", "domain");
    card.setAttribute("data-domain", d.domain);
    card.appendChild(el("h3", null, d.domain));
    var t = d.throttles[0];
    var paused = d.throttles.filter(function (x) { return x.paused_until; });
    if (paused.length) { card.classList.add("paused"); }
    if (t) {
      var lim = el("div", "limits");
      lim.appendChild(document.createTextNode(fmt(t.rps) + " req/s "));
      lim.appendChild(sourceBadge(t.rps_source));
      lim.appendChild(document.createTextNode(" · " + t.max_concurrent + " concurrent "));
      lim.appendChild(sourceBadge(t.concurrency_source));
      lim.appendChild(document.createTextNode(" · burst " + t.burst + (t.pinned ? " · pinned" : "")));
      if (t.budget) {
        var b = t.budget, parts = [];
        if (b.remaining !== null && b.remaining !== undefined) { parts.push(b.remaining + (b.limit ? " / " + b.limit : "") + " left"); }
        if (b.resets_at) { parts.push("resets " + new Date(b.resets_at).toLocaleTimeString()); }
        if (b.tokens_remaining !== null && b.tokens_remaining !== undefined) { parts.push(b.tokens_remaining + " tokens left"); }
        lim.appendChild(document.createTextNode(" · budget (" + b.source + "): " + parts.join(", ")));
      }
      if (d.throttle_count > 1) { lim.appendChild(document.createTextNode(" · " + d.throttle_count + " throttles")); }
      card.appendChild(lim);
    }
    paused.forEach(function (p) {
      var why = p.pause_reason || "paused by another replica";
      var line = el("div", "pause", "Paused until " + new Date(p.paused_until).toLocaleTimeString() + " — " + why);
      line.setAttribute("data-pause-reason", why);
      card.appendChild(line);
    });
    if (!s) { return card; }
    // From the domain's first second with data (at least the last minute),
    // so a domain seen two minutes ago does not sit in a 15-minute axis.
    var n = s.cols.admitted.length, first = n;
    COLS.forEach(function (k) {
      var col = s.cols[k];
      for (var i = 0; i < first; i++) { if (col[i] !== null && col[i] !== 0) { first = i; break; } }
    });
    first = Math.min(first, Math.max(0, n - 60));
    var c = {};
    COLS.forEach(function (k) { c[k] = s.cols[k].slice(first); });
    var span = n - first;
    card.appendChild(el("div", "muted span", "last " + (span >= 120 ? Math.round(span / 60) + " min" : span + " s")));
    var grid = el("div", "charts");
    grid.appendChild(chart("admitted req/s vs rps limit", [
      { cls: "admitted", data: c.admitted }, { cls: "limit", data: c.rps_limit }]));
    grid.appendChild(chart("upstream responses/s", [
      { cls: "2xx", data: c.r2xx }, { cls: "429", data: c.r429 }, { cls: "5xx", data: c.r5xx }]));
    grid.appendChild(chart("throttle wait p50 / p99", [
      { cls: "p50", data: c.wait_p50_ms }, { cls: "p99", data: c.wait_p99_ms }], " ms"));
    grid.appendChild(chart("in flight, waiting vs cap", [
      { cls: "inflight", data: c.in_flight }, { cls: "waiting", data: c.waiting }, { cls: "cap", data: c.max_concurrent }]));
    card.appendChild(grid);
    return card;
  }

  function pollOverview() {
    var q = $("domain-filter").value.trim();
    var path = "/console/api/overview?limit=24" + (lastNow ? "&since=" + lastNow : "") + (q ? "&q=" + encodeURIComponent(q) : "");
    return api("GET", path).then(function (o) {
      lastNow = o.now;
      var box = clear($("domains"));
      o.domains.forEach(function (d) { merge(d.domain, d.points); box.appendChild(domainCard(d)); });
      $("no-domains").classList.toggle("hidden", o.domains.length > 0);
      $("overview-summary").textContent = o.domains.length + " of " + o.domains_total + " domains shown · " +
        o.rings.tracked + " tracked (cap " + o.rings.cap + ", " + Math.round(o.rings.bytes / 1024) + " KiB)";
      state("live, updated " + new Date(o.now * 1000).toLocaleTimeString());
    }).catch(function (e) {
      if (e.message !== "unauthorized") { state("update failed (" + e.message + "), retrying"); }
      throw e;
    });
  }
  function startOverview() {
    stopOverview();
    var tick = function () {
      pollOverview().then(function () { overviewTimer = setTimeout(tick, 1000); },
        function (e) { if (e.message !== "unauthorized") { overviewTimer = setTimeout(tick, 3000); } });
    };
    tick();
  }
  function stopOverview() { if (overviewTimer) { clearTimeout(overviewTimer); overviewTimer = null; } }
  $("domain-filter").addEventListener("input", function () { series = {}; lastNow = 0; });

  // ---- jobs: filters and keyset paging ------------------------------------
  var cursor = "";
  var nextCursor = null;
  function jobQuery() {
    var p = [];
    var add = function (k, v) { if (v) { p.push(k + "=" + encodeURIComponent(v)); } };
    add("status", $("f-status").value);
    add("domain", $("f-domain").value.trim());
    add("workspace", $("f-workspace").value.trim());
    var since = $("f-since").value, until = $("f-until").value;
    if (since) { add("since", String(new Date(since).getTime())); }
    if (until) { add("until", String(new Date(until).getTime())); }
    add("cursor", cursor);
    return p.join("&");
  }
  function loadJobs() {
    state("loading jobs…");
    return api("GET", "/console/api/jobs?" + jobQuery()).then(function (r) {
      var ws = $("f-workspace");
      if (r.workspace_fixed) { ws.value = r.workspace; ws.disabled = true; }
      var body = clear($("job-rows"));
      r.jobs.forEach(function (j) {
        var tr = el("tr");
        tr.setAttribute("data-job", j.job_id);
        var id = el("td"), a = el("a", null, j.job_id);
        a.href = "#/job/" + encodeURIComponent(j.job_id) + (r.workspace_fixed ? "" : "?workspace=" + encodeURIComponent(r.workspace));
        id.appendChild(a);
        tr.appendChild(id);
        tr.appendChild(el("td", "st-" + j.status, j.status));
        tr.appendChild(el("td", null, (j.method || "") + " " + (j.url || "")));
        tr.appendChild(el("td", "num", j.status_code === null ? "—" : j.status_code));
        tr.appendChild(el("td", "num", j.attempts));
        var w = j.webhooks;
        tr.appendChild(el("td", null, w.total ? (w.delivered + "/" + w.total + " delivered" + (w.failed ? ", " + w.failed + " failed" : "")) : "—"));
        tr.appendChild(el("td", null, when(j.created_at)));
        tr.appendChild(el("td", null, when(j.updated_at)));
        body.appendChild(tr);
      });
      nextCursor = r.next_cursor;
      $("no-jobs").classList.toggle("hidden", r.jobs.length > 0);
      $("page-next").disabled = !nextCursor;
      $("page-first").disabled = !cursor;
      state("workspace " + r.workspace + " · " + r.jobs.length + " jobs on this page");
    }).catch(function (e) { if (e.message !== "unauthorized") { state("jobs: " + e.message); } });
  }
  $("job-filter").addEventListener("submit", function (ev) { ev.preventDefault(); cursor = ""; loadJobs(); });
  $("page-next").addEventListener("click", function () { if (nextCursor) { cursor = nextCursor; loadJobs(); } });
  $("page-first").addEventListener("click", function () { cursor = ""; loadJobs(); });

  // ---- one job ---------------------------------------------------------------
  var current = { id: "", workspace: "" };
  function jobPath(suffix) {
    return "/console/api/jobs/" + encodeURIComponent(current.id) + (suffix || "") +
      (current.workspace ? "?workspace=" + encodeURIComponent(current.workspace) : "");
  }
  function fact(dl, k, v) { dl.appendChild(el("dt", null, k)); dl.appendChild(el("dd", null, v)); }
  function loadJob() {
    return api("GET", jobPath()).then(function (j) {
      $("job-id").textContent = j.job_id;
      var st = $("job-status");
      st.textContent = j.status;
      st.className = "badge st-" + j.status;
      $("job-cancel").classList.toggle("hidden", !j.actions.cancel);
      $("job-retry").classList.toggle("hidden", !j.actions.retry);
      var dl = clear($("job-facts"));
      fact(dl, "workspace", j.workspace);
      fact(dl, "idempotent key", j.idempotent_key);
      fact(dl, "upstream calls", j.attempts);
      fact(dl, "runs", j.runs);
      fact(dl, "created", when(j.created_at));
      fact(dl, "updated", when(j.updated_at));
      if (j.next_attempt_at) { fact(dl, "next attempt", when(j.next_attempt_at)); }
      if (j.metadata && Object.keys(j.metadata).length) { fact(dl, "metadata", JSON.stringify(j.metadata)); }
      var rq = j.request;
      $("job-request").textContent = rq ? (rq.method + " " + rq.url + (rq.body ? "\n\n" + rq.body + (rq.body_truncated ? "\n… (" + rq.body_bytes + " bytes)" : "") : "")) : "(unreadable spec)";
      var hb = clear($("job-request-headers").tBodies[0]);
      (rq ? rq.headers : []).forEach(function (h) {
        var tr = el("tr");
        tr.appendChild(el("td", null, h[0]));
        tr.appendChild(el("td", null, h[1]));
        hb.appendChild(tr);
      });
      $("attempts-source").textContent = "(" + j.attempt_log_source + ")";
      var ab = clear($("attempt-rows"));
      j.attempt_log.forEach(function (a, i) {
        var tr = el("tr", "attempt");
        [i + 1, when(a.at), a.part, a.region || "default", a.status_code === null ? "no answer" : a.status_code,
          a.wait_ms === null ? "—" : a.wait_ms + " ms", a.upstream_calls, a.duration_ms + " ms", a.error || ""].forEach(function (v) {
          tr.appendChild(el("td", null, v));
        });
        ab.appendChild(tr);
      });
      var ch = clear($("job-chain"));
      var c = j.chain || {};
      if (c.parent_job_id) {
        var li = el("li", null, "follow-up of ");
        var a = el("a", null, c.parent_job_id);
        a.href = "#/job/" + encodeURIComponent(c.parent_job_id) + (current.workspace ? "?workspace=" + encodeURIComponent(current.workspace) : "");
        li.appendChild(a);
        ch.appendChild(li);
      }
      (c.fallbacks || []).forEach(function (f) { ch.appendChild(el("li", null, "fallback " + f.depth + " " + f.trigger + ": " + f.method + " " + f.url)); });
      if (c.on_success) { ch.appendChild(el("li", null, "on success: " + c.on_success.method + " " + c.on_success.url)); }
      if (c.on_failure) { ch.appendChild(el("li", null, "on failure" + (c.on_failure_timeout_ms ? " (or no success within " + c.on_failure_timeout_ms + " ms)" : "") + ": " + c.on_failure.method + " " + c.on_failure.url)); }
      (c.children || []).forEach(function (k) {
        var li = el("li", "child", "spawned" + (k.trigger ? " (" + k.trigger.replace("_", " ") + ")" : "") + ": ");
        var a = el("a", null, k.job_id);
        a.href = "#/job/" + encodeURIComponent(k.job_id) + (current.workspace ? "?workspace=" + encodeURIComponent(current.workspace) : "");
        li.appendChild(a);
        li.appendChild(document.createTextNode(" " + k.status + (k.method ? " · " + k.method + " " + k.url : "")));
        ch.appendChild(li);
      });
      if (!ch.firstChild) { ch.appendChild(el("li", "muted", "none")); }
      var r = j.response;
      $("job-response").textContent = r ? ("HTTP " + r.status_code + (r.error ? " (" + r.error + ")" : "") + "\n" +
        r.headers.map(function (h) { return h[0] + ": " + h[1]; }).join("\n") + "\n\n" + r.body + (r.body_truncated ? "\n…" : "")) : "(no response yet)";
      var q = j.webhook_quorum;
      $("quorum").textContent = q && q.voting ? "(quorum " + q.delivered_votes + "/" + q.required + (q.met ? ", met" : "") + ")" : "";
      var db = clear($("delivery-rows"));
      j.webhooks.forEach(function (d) {
        var tr = el("tr");
        tr.setAttribute("data-delivery", d.delivery_id);
        [d.url, d.state, d.attempts, d.last_status === null ? "—" : d.last_status, d.last_error || "",
          d.next_attempt_at ? when(d.next_attempt_at) : "—", d.has_quorum_vote ? "yes" : "no"].forEach(function (v) { tr.appendChild(el("td", null, v)); });
        var td = el("td");
        if (d.can_redeliver) {
          var b = el("button", "redeliver", "Redeliver");
          b.type = "button";
          b.addEventListener("click", function () { act("/deliveries/" + d.delivery_id + "/redeliver", "redelivery queued"); });
          td.appendChild(b);
        }
        tr.appendChild(td);
        db.appendChild(tr);
      });
      state("job " + j.job_id);
    }).catch(function (e) { if (e.message !== "unauthorized") { state("job: " + e.message); $("job-message").textContent = e.message; } });
  }
  function act(suffix, done) {
    $("job-message").textContent = "…";
    return api("POST", jobPath(suffix)).then(function () {
      $("job-message").textContent = done;
      return loadJob();
    }).catch(function (e) { $("job-message").textContent = e.message; });
  }
  $("job-cancel").addEventListener("click", function () { act("/cancel", "cancelled"); });
  $("job-retry").addEventListener("click", function () { act("/retry", "re-queued"); });

  // ---- routing: #/overview, #/jobs, #/job/<id>[?workspace=] -----------------
  function route() {
    var h = location.hash || "#/overview";
    stopOverview();
    ["login", "overview", "jobs", "job"].forEach(function (s) { $(s).classList.add("hidden"); });
    $("forget-token").classList.toggle("hidden", !token());
    $("nav-overview").classList.toggle("active", h.indexOf("#/overview") === 0);
    $("nav-jobs").classList.toggle("active", h.indexOf("#/job") === 0);
    var m = /^#\/job\/([^?]+)(?:\?workspace=(.*))?$/.exec(h);
    if (m) {
      current = { id: decodeURIComponent(m[1]), workspace: m[2] ? decodeURIComponent(m[2]) : "" };
      $("job-message").textContent = "";
      $("job").classList.remove("hidden");
      loadJob();
    } else if (h.indexOf("#/jobs") === 0) {
      $("jobs").classList.remove("hidden");
      loadJobs();
    } else {
      $("overview").classList.remove("hidden");
      startOverview();
    }
  }
  window.addEventListener("hashchange", route);
  route();
})();

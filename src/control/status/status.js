// ringlb's status page: asks for the admin token once (kept in sessionStorage), then draws
// GET /stats every second. Rates come from the difference of two answers' counters; each
// backend keeps the last HISTORY samples for its sparklines, in the page only. Rows are made
// once per backend and updated in place, so a button is never replaced under the pointer.
"use strict";

const HISTORY = 180; // samples (3 minutes at one per second)
const KEY = "ringlb-admin-token";
const $ = (id) => document.getElementById(id);

let previous = null; // the last /stats answer
const history = new Map(); // "pool|addr" -> {conns: [], bytes: []}
const rows = new Map(); // "pool|addr" -> <tr>
const sections = new Map(); // pool -> <section>
const listenerRows = new Map();
let lastOk = 0;

function token() { return sessionStorage.getItem(KEY); }

function showLogin(why) {
  $("app").classList.add("hidden");
  $("login").classList.remove("hidden");
  $("login-error").textContent = why || "";
  $("token").focus();
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = $("token").value.trim();
  if (!t) { $("login-error").textContent = "enter the token"; return; }
  sessionStorage.setItem(KEY, t);
  $("token").value = "";
  start();
});

$("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(); });

async function api(method, path, body) {
  const headers = {};
  if (token()) headers["Authorization"] = "Bearer " + token();
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let answer = null;
  try { answer = await r.json(); } catch (_) { answer = null; }
  return { status: r.status, body: answer };
}

function message(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "error";
}

// Numbers for people: 1234567 -> "1.23M".
function human(n, unit) {
  const u = unit || "";
  if (!isFinite(n)) return "–";
  const abs = Math.abs(n);
  if (Number.isInteger(n) && abs < 1000) return n + u;
  for (const [f, s] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (abs >= f) return (n / f).toFixed(abs >= 10 * f ? 1 : 2) + s + u;
  }
  return (abs >= 10 || n === 0 ? n.toFixed(0) : n.toFixed(1)) + u;
}

function sparkline(values) {
  const w = 90, h = 18;
  const max = Math.max(1e-9, ...values);
  const step = w / (HISTORY - 1);
  const off = HISTORY - values.length;
  const pts = values.map((v, i) => ((off + i) * step).toFixed(1) + "," + (h - 1 - (v / max) * (h - 2)).toFixed(1));
  return '<svg class="spark" width="' + w + '" height="' + h + '" viewBox="0 0 ' + w + " " + h +
    '" aria-hidden="true"><polyline points="' + pts.join(" ") + '"/></svg>';
}

function push(list, v) {
  list.push(v);
  if (list.length > HISTORY) list.shift();
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function poolSection(pool) {
  let s = sections.get(pool.name);
  if (s) return s;
  s = el("section", { class: "pool", "data-pool": pool.name });
  const h = el("h2");
  h.append(el("span", { class: "pool-name" }, pool.name), el("span", { class: "summary" }));
  h.addEventListener("click", () => s.classList.toggle("collapsed"));
  const t = el("table");
  t.innerHTML = '<thead><tr><th class="name">backend</th><th>state</th><th>weight</th>' +
    "<th>active</th><th>conn/s</th><th>bytes/s</th><th>total</th><th>connect errors</th>" +
    '<th>last check</th><th class="name">actions</th></tr></thead><tbody></tbody>';
  s.append(h, t);
  $("pools").append(s);
  sections.set(pool.name, s);
  return s;
}

function backendRow(section, b) {
  const key = b.pool + "|" + b.addr;
  let tr = rows.get(key);
  if (tr) return tr;
  tr = el("tr", { "data-addr": b.addr, "data-pool": b.pool });
  for (const c of ["name", "state", "weight", "active", "rate", "bytes", "total", "errors", "check", "actions"]) {
    tr.append(el("td", { class: c }));
  }
  tr.querySelector(".name").textContent = b.addr;
  const actions = tr.querySelector(".actions");
  for (const [cls, label] of [["drain", "drain"], ["ready", "ready"], ["weight", "weight…"], ["delete", "delete…"]]) {
    const btn = el("button", { class: cls, type: "button" }, label);
    btn.addEventListener("click", () => act(cls, b.pool, b.addr));
    actions.append(btn);
  }
  section.querySelector("tbody").append(tr);
  rows.set(key, tr);
  return tr;
}

// The confirmation dialog: resolves to null (cancelled) or the field's value ("" without one).
function confirmAction(text, field, initial) {
  return new Promise((resolve) => {
    const d = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-field").classList.toggle("hidden", !field);
    $("confirm-label").textContent = field ? field + " " : "";
    $("confirm-input").value = initial || "";
    d.returnValue = "";
    d.addEventListener("close", () => resolve(d.returnValue === "yes" ? $("confirm-input").value.trim() : null), { once: true });
    d.showModal();
    if (field) $("confirm-input").focus();
  });
}

async function act(kind, pool, addr) {
  const base = "/pools/" + encodeURIComponent(pool) + "/backends/" + encodeURIComponent(addr);
  let r;
  if (kind === "drain") {
    if ((await confirmAction("Drain " + addr + " in pool " + pool + "? It takes no new connections; open ones go on.")) === null) return;
    r = await api("POST", base + "/drain");
  } else if (kind === "ready") {
    if ((await confirmAction("Put " + addr + " in pool " + pool + " back in service?")) === null) return;
    r = await api("POST", base + "/ready");
  } else if (kind === "weight") {
    const cur = rows.get(pool + "|" + addr).dataset.weight || "1";
    const w = await confirmAction("New weight for " + addr + " in pool " + pool + " (1 to 256):", "weight", cur);
    if (w === null) return;
    r = await api("PUT", base + "/weight", { weight: Number(w) });
  } else if (kind === "delete") {
    const t = await confirmAction("Delete " + addr + " from pool " + pool + "? It drains first; connections still open after the drain timeout are closed.", "drain timeout", "5m");
    if (t === null) return;
    r = await api("DELETE", base + (t ? "?drain_timeout=" + encodeURIComponent(t) : ""));
  }
  if (r.status === 401) { showLogin("the token was refused"); return; }
  if (r.status >= 400) {
    message(kind + " " + addr + ": " + r.status + " " + ((r.body && r.body.error) || "error"), false);
  } else {
    message(kind + " " + addr + ": done (" + r.status + ")", true);
    refresh();
  }
}

function matches(filter, b) {
  if (!filter) return true;
  return (b.addr + " " + b.pool + " " + b.state + (b.protected ? " protected" : "") + (b.backup ? " backup" : "")).toLowerCase().includes(filter);
}

function draw(s) {
  const dt = previous ? Math.max(0.001, s.now - previous.now) : 0;
  const before = new Map();
  if (previous) for (const p of previous.pools) for (const b of p.backends) before.set(p.name + "|" + b.addr, b);
  const lBefore = new Map();
  if (previous) for (const l of previous.listeners) lBefore.set(l.name, l);

  $("meta").textContent = "v" + s.version + " · up " + uptime(s.uptime_seconds) + " · " + s.workers +
    " workers" + (s.stopping ? " · STOPPING" : "");

  const ltbody = $("listeners").querySelector("tbody");
  for (const l of s.listeners) {
    let tr = listenerRows.get(l.name);
    if (!tr) {
      tr = el("tr", { "data-listener": l.name });
      for (const c of ["name", "bind", "pool", "active", "rate", "total", "rejected", "denied", "nobackend"]) tr.append(el("td", { class: c }));
      ltbody.append(tr);
      listenerRows.set(l.name, tr);
    }
    const p = lBefore.get(l.name);
    const rate = p && dt ? (l.connections_total - p.connections_total) / dt : 0;
    tr.querySelector(".name").textContent = l.name;
    tr.querySelector(".bind").textContent = l.bind;
    tr.querySelector(".pool").textContent = l.pool || "(SNI routes)";
    tr.querySelector(".active").textContent = l.active_connections;
    tr.querySelector(".rate").textContent = human(rate);
    tr.querySelector(".total").textContent = human(l.connections_total);
    tr.querySelector(".rejected").textContent = l.rejected_total;
    tr.querySelector(".denied").textContent = l.denied_total;
    tr.querySelector(".nobackend").textContent = l.no_backend_total;
  }

  const filter = $("filter").value.trim().toLowerCase();
  const seen = new Set();
  for (const pool of s.pools) {
    const section = poolSection(pool);
    const counts = { up: 0, down: 0, draining: 0, starting: 0 };
    let shown = 0;
    for (const b of pool.backends) {
      const key = pool.name + "|" + b.addr;
      seen.add(key);
      counts[b.state] = (counts[b.state] || 0) + 1;
      const p = before.get(key);
      const conns = p && dt ? Math.max(0, b.connections_total - p.connections_total) / dt : 0;
      const bytes = p && dt ? Math.max(0, b.bytes_to_backend_total + b.bytes_to_client_total -
        p.bytes_to_backend_total - p.bytes_to_client_total) / dt : 0;
      let h = history.get(key);
      if (!h) { h = { conns: [], bytes: [] }; history.set(key, h); }
      if (p) { push(h.conns, conns); push(h.bytes, bytes); }

      const tr = backendRow(section, b);
      tr.dataset.weight = b.weight;
      tr.dataset.state = b.state;
      tr.dataset.protected = b.protected ? "1" : "0";
      tr.dataset.backup = b.backup ? "1" : "0";
      tr.className = b.state;
      const visible = matches(filter, b);
      tr.classList.toggle("hidden", !visible);
      if (visible) shown++;
      tr.querySelector(".state").innerHTML = '<span class="badge ' + b.state + '">' + b.state + "</span>" +
        (b.protected ? '<span class="badge protected" title="scale-in protection">protected</span>' : "") +
        (b.backup ? '<span class="badge backup" title="takes connections only while no non-backup backend of its pool is up">backup</span>' : "");
      tr.querySelector(".weight").textContent = b.effective_weight < b.weight ? b.effective_weight + " / " + b.weight : String(b.weight);
      tr.querySelector(".active").textContent = b.active_connections + (b.max_connections ? " / " + b.max_connections : "");
      tr.querySelector(".rate").innerHTML = human(conns) + sparkline(h.conns);
      tr.querySelector(".bytes").innerHTML = human(bytes, "B") + sparkline(h.bytes);
      tr.querySelector(".total").textContent = human(b.connections_total);
      tr.querySelector(".errors").textContent = b.connect_errors_total;
      const c = b.last_check;
      const check = tr.querySelector(".check");
      check.className = "check " + (c ? (c.ok ? "ok" : "fail") : "");
      check.textContent = c ? (c.ok ? "ok" : "fail") + " " + c.latency_ms.toFixed(1) + " ms" : "–";
      check.title = c && c.error ? c.error : "";
      tr.querySelector(".drain").disabled = b.state === "draining";
      tr.querySelector(".ready").disabled = b.state === "up";
    }
    const parts = Object.entries(counts).filter(([, n]) => n).map(([k, n]) => n + " " + k);
    const q = pool.queue.waiting ? " · " + pool.queue.waiting + " queued" : "";
    section.querySelector(".summary").textContent = pool.algorithm + " · " + parts.join(", ") + q +
      (filter ? " · " + shown + " shown" : "");
    section.classList.toggle("hidden", !!filter && shown === 0);
  }
  // Backends that left: their rows and histories go.
  for (const [key, tr] of rows) {
    if (!seen.has(key)) { tr.remove(); rows.delete(key); history.delete(key); }
  }
  for (const [name, sec] of sections) {
    if (!s.pools.some((p) => p.name === name)) { sec.remove(); sections.delete(name); }
  }
  previous = s;
}

function uptime(secs) {
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24, m = Math.floor(secs / 60) % 60;
  return d ? d + "d " + h + "h" : h ? h + "h " + m + "m" : m + "m " + Math.floor(secs % 60) + "s";
}

let timer = null;
async function refresh() {
  try {
    const r = await api("GET", "/stats");
    if (r.status === 401) { clearInterval(timer); timer = null; showLogin(token() ? "the token was refused" : ""); return; }
    if (r.status !== 200 || !r.body) { $("live").textContent = "stats: HTTP " + r.status; $("live").className = "live stale"; return; }
    draw(r.body);
    lastOk = Date.now();
    $("live").textContent = "live · " + new Date().toLocaleTimeString();
    $("live").className = "live";
  } catch (e) {
    $("live").textContent = "unreachable since " + (lastOk ? new Date(lastOk).toLocaleTimeString() : "start");
    $("live").className = "live stale";
  }
}

function start() {
  $("login").classList.add("hidden");
  $("app").classList.remove("hidden");
  refresh();
  if (!timer) timer = setInterval(refresh, 1000);
}

$("filter").addEventListener("input", () => {
  const filter = $("filter").value.trim().toLowerCase();
  for (const [, sec] of sections) {
    let shown = 0;
    for (const tr of sec.querySelectorAll("tbody tr")) {
      const b = { addr: tr.dataset.addr, pool: tr.dataset.pool, state: tr.dataset.state, protected: tr.dataset.protected === "1", backup: tr.dataset.backup === "1" };
      const visible = matches(filter, b);
      tr.classList.toggle("hidden", !visible);
      if (visible) shown++;
    }
    sec.classList.toggle("hidden", !!filter && shown === 0);
  }
});
$("collapse-all").addEventListener("click", () => sections.forEach((s) => s.classList.add("collapsed")));
$("expand-all").addEventListener("click", () => sections.forEach((s) => s.classList.remove("collapsed")));

// With a token in this tab, go straight on; otherwise ask whether one is needed at all.
if (token()) {
  start();
} else {
  api("GET", "/stats").then((r) => (r.status === 401 ? showLogin() : start()), () => showLogin("ringlb is unreachable"));
}

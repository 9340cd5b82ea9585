// The zlb console: views switched by the address's #fragment, never by a reload. State, log lines and
// history points are pushed by the gateway over one EventSource; lists and details are fetched a page
// at a time (the balancer pages them). The only timer re-draws heartbeat ages between pushes.
"use strict";

const TOKEN_KEY = "zlb-token";
const LOG_LINES = 200;
const NODE_LOG_LINES = 50;
const PAGE_ROWS = 50;
const VIEWS = ["servers", "requests", "failures", "history", "send"];
// Which admin actions apply in which state; a dead node has none (the balancer refuses them all).
const ACTIONS = [
  ["down", "Down", (s) => s.state === "active" || s.state === "draining"],
  ["up", "Up", (s) => s.state === "down" || s.state === "draining"],
  ["drain", "Drain", (s) => s.state === "active"],
];
// The seed's log markers, drawn as icons so no emoji font is needed.
const MARKERS = [["\u2705", "ok"], ["\u26A0", "warn"], ["\u274C", "bad"]];
const $ = (sel, root = document) => root.querySelector(sel);
const page = { info: { token_required: false, actions: {} }, last: null, receivedAt: 0, history: [], detail: null };

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
function text(el, value) { el.textContent = value; return el; }
function make(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { if (k === "text") el.textContent = v; else el.setAttribute(k, v); }
  el.append(...children);
  return el;
}

function icon(kind) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", `icon ${kind}`);
  svg.setAttribute("aria-label", kind);
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", `#i-${kind}`);
  svg.appendChild(use);
  return svg;
}

// A log message as nodes: a leading emoji marker becomes an icon, the words stay the seed's.
function withIcons(message) {
  for (const [mark, kind] of MARKERS) {
    if (message.startsWith(mark)) return [icon(kind), message.slice(mark.length).replace(/^\uFE0F?\s*/, "")];
  }
  return [message];
}

function clock(ts) { return new Date(ts * 1000).toLocaleTimeString([], { hour12: false }); }
function fmtSeconds(s) {
  if (s === null || s === undefined) return "-";
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(1)} s`;
}
function fmtAge(seconds) {
  if (seconds < 60) return `${Math.max(0, Math.floor(seconds))} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

// ---- calls to the gateway ---------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = { ...(options.body ? { "Content-Type": "application/json" } : {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  try {
    const reply = await fetch(path, { method: options.method || "GET", headers, body: options.body });
    const type = reply.headers.get("content-type") || "";
    const body = type.includes("json") ? await reply.json() : await reply.text();
    if (reply.status === 401) showTokenBox("this needs the gateway's token");
    return { ok: reply.ok, status: reply.status, body };
  } catch (err) {
    return { ok: false, status: 0, body: { error: `no answer from the gateway (${err})` } };
  }
}
function failure(reply) { return `${reply.status || "error"}: ${(reply.body && reply.body.error) || reply.body}`; }

function showTokenBox(why) {
  $("#auth-box").hidden = false;
  if (why) text($("#action-result"), why);
  for (const note of document.querySelectorAll(".needs-token")) note.hidden = false;
}

// ---- servers --------------------------------------------------------------------------------

const SERVER_CELLS = [
  ["id", "ID"], ["state", "State"], ["load", "Load"], ["handled", "Handled"], ["failures", "Failed"],
  ["requeues", "Re-queued"], ["age", "Heartbeat"], ["pid", "PID"], ["host", "Host"], ["services", "Services"],
  ["actions", "Actions"],
];

function heartbeatAge(server) {
  if (server.state === "dead" || server.last_heartbeat_ms_ago === undefined) return "-";
  return `${Math.round(server.last_heartbeat_ms_ago + (Date.now() - page.receivedAt))} ms`;
}

function stateSince(server) {
  if (server.state_since === null || server.state_since === undefined) {
    const since = page.info.watching_since;
    return since ? `since before ${clock(since)}` : "";
  }
  return `for ${fmtAge(Date.now() / 1000 - server.state_since)}`;
}

// Rows are built once per server and updated in place, so a push never swaps a button under a click.
function makeRow(serverId) {
  const row = make("tr");
  row.dataset.serverId = serverId;
  for (const [cls, label] of SERVER_CELLS) row.appendChild(make("td", { class: cls, "data-label": label }));
  row.querySelector(".load").append(make("span", { class: "bar" }, make("span")), make("span", { class: "n" }));
  row.querySelector(".state").append(make("span", { class: "dot" }), make("span", { class: "word" }), make("span", { class: "since" }));
  const actions = row.querySelector(".actions");
  for (const [verb, label] of ACTIONS) {
    const button = make("button", { type: "button", "data-verb": verb, text: label });
    button.addEventListener("click", () => act(verb, serverId, row));
    actions.appendChild(button);
  }
  actions.append(make("div", { class: "hint muted" }), make("div", { class: "row-error", role: "alert" }));
  text(row.querySelector(".id"), serverId);
  return row;
}

function updateRow(row, server) {
  row.dataset.state = server.state;
  text(row.querySelector(".state .word"), server.state);
  text(row.querySelector(".since"), stateSince(server));
  const load = server.capacity ? Math.min(1, server.in_flight / server.capacity) : 0;
  row.querySelector(".bar > span").style.width = `${Math.round(load * 100)}%`;
  text(row.querySelector(".load .n"), `${server.in_flight}/${server.capacity}`);
  text(row.querySelector(".handled"), server.handled_requests);
  text(row.querySelector(".failures"), server.failures ?? "-");
  text(row.querySelector(".requeues"), server.requeues ?? "-");
  text(row.querySelector(".age"), heartbeatAge(server));
  text(row.querySelector(".pid"), server.pid ?? "-");
  text(row.querySelector(".host"), server.host || "-");
  text(row.querySelector(".services"), (server.services || []).join(", ") || "-");
  const dead = server.state === "dead";
  for (const [verb, , applies] of ACTIONS) {
    const button = row.querySelector(`button[data-verb="${verb}"]`);
    button.hidden = dead; // nothing is offered for a dead node: the balancer would refuse it
    button.disabled = dead || !applies(server);
  }
  text(row.querySelector(".hint"), dead ? `start it again: zlb server --id ${server.server_id}` : "");
}

function renderServers(servers) {
  const body = $("#servers tbody");
  const rows = new Map([...body.children].map((row) => [row.dataset.serverId, row]));
  const wanted = servers.map((server) => {
    const row = rows.get(String(server.server_id)) || makeRow(server.server_id);
    updateRow(row, server);
    return row;
  });
  if (wanted.length !== body.children.length || wanted.some((row, i) => body.children[i] !== row)) {
    body.replaceChildren(...wanted);
  }
  // The services column shows only once a node offers a service.
  const services = servers.some((s) => s.services && s.services.length);
  for (const cell of document.querySelectorAll("#servers .services")) cell.hidden = !services;
  text($("#servers-note"), servers.length ? "" : "No server has joined. Start one (zlb server) or use Configure under Send.");
}

async function act(verb, serverId, row) {
  const error = row.querySelector(".row-error");
  text(error, "");
  const reply = await api(`/server_${verb}/${serverId}`, { method: "POST" });
  if (!reply.ok) text(error, failure(reply));
  text($("#action-result"), reply.ok ? reply.body.message : failure(reply));
}

function renderState(state) {
  page.last = state;
  page.receivedAt = Date.now();
  text($("#balancer"), state.up ? `balancer up ${fmtSeconds(state.status.uptime_s)}` : `balancer away: ${state.error}`);
  if (!state.up) return;
  const servers = state.servers || [];
  renderServers(servers);
  const active = servers.filter((s) => s.active).length;
  text($("#servers-summary"), `${active}/${servers.length} active`);
  const status = state.status;
  renderAlerts(status);
  text($("#queue"), `${status.queue_depth} waiting, ${status.in_flight} in flight`);
  const prios = Object.entries(status.queue_by_priority || {}).map(([p, n]) => `p${p}: ${n}`);
  text($("#queue-by-priority"), prios.length ? prios.join("  ") : "nothing waiting");
  // Per service: waiting (and a warning when no live server offers it), expired, cancelled, dead.
  const services = Object.entries(status.services || {}).map(([name, s]) =>
    `${name}: ${s.waiting} waiting${s.nodes ? "" : " (no live server)"}, ${s.expired} expired, ${s.cancelled} cancelled, ${s.dead} dead`);
  text($("#queue-by-service"), services.join(" · "));
  const rates = status.rates || {};
  text($("#rate"), `${rates.processed_per_s ?? 0} req/s`);
  const r = status.requests || {};
  text($("#totals"), `submitted ${r.submitted ?? 0}, processed ${r.processed ?? 0}, failed ${r.failed ?? 0}, re-queued ${r.requeued ?? 0}`);
  const lat = state.latency || {};
  text($("#latency"), lat.count ? `p50 ${fmtSeconds(lat.p50)}  p90 ${fmtSeconds(lat.p90)}` : "-");
  renderHa(status);
}

// An HA group's leader (zlb balancer --ha): who leads with which epoch, its standby, the last takeover.
function renderHa(status) {
  const ha = status.ha;
  const card = $("#ha-card");
  card.hidden = status.role !== "leader" || !ha;
  if (card.hidden) return;
  text($("#ha"), `${ha.in_sync ? "leader + standby" : "leader ALONE"}, epoch ${status.epoch}`);
  const parts = [`leader ${ha.name}`];
  parts.push(ha.in_sync ? `standby ${ha.standby} in sync, lag ${ha.lag_records} records / ${ha.lag_ms} ms`
    : "no standby in sync: losing this host loses answered work");
  const took = ha.last_takeover;
  if (took && took.at) parts.push(`leading since ${clock(took.at)} (start ${took.start_s} s)`);
  text($("#ha-detail"), parts.join("; "));
}

// Problems the balancer reports while they last (a failing journal, a degraded log), above everything else.
function renderAlerts(status) {
  const alerts = [];
  const journal = status.journal;
  if (journal && !journal.healthy) {
    alerts.push(`Journal failing since ${clock(journal.since)}: ${journal.reason}; new requests refused (busy), results held`);
  }
  const log = status.log || {};
  if (log.problem) alerts.push(`Log degraded: ${log.path}: ${log.problem}; lines are dropped and counted`);
  if (status.role === "leader" && status.ha && !status.ha.in_sync) {
    alerts.push(`HA leader ${status.ha.name} is alone: no standby in sync, so losing its host would lose answered work`);
  }
  const box = $("#alerts");
  box.replaceChildren(...alerts.map((line) => make("li", { text: line })));
  box.hidden = alerts.length === 0;
}

// ---- the log: every line, and node and system lines apart so a death is not buried ---------------

function logItem(line) {
  const item = make("li", { class: line.level || "INFO", "data-kind": line.kind });
  item.append(make("time", { text: clock(line.ts) }), make("span", {}, ...withIcons(line.message)));
  return item;
}

function appendTo(list, items, keep) {
  list.append(...items);
  while (list.children.length > keep) list.removeChild(list.firstChild);
  list.scrollTop = list.scrollHeight;
}

function appendLog(lines) {
  appendTo($("#log"), lines.map(logItem), LOG_LINES);
  const nodeLines = lines.filter((line) => !line.kind.startsWith("request."));
  appendTo($("#node-log"), nodeLines.map(logItem), NODE_LOG_LINES);
  filterLog();
}

function filterLog() {
  const show = $("#log-requests").checked;
  for (const item of $("#log").children) item.hidden = !show && item.dataset.kind.startsWith("request.");
}

// ---- request lists (requests, failures), a page at a time -------------------------------------

function makeList(name, view, query) {
  return { name, view, query, table: $(`#${name}`), pages: [""], at: 0, next: null };
}
const lists = {
  requests: makeList("requests", $("#view-requests"), requestFilters),
  failures: makeList("failures", $("#view-failures"), () => ({ status: "failures" })),
};

function requestFilters() {
  const form = $("#request-filters");
  const out = {};
  for (const name of ["status", "client", "priority", "id"]) {
    const value = form.elements[name].value.trim();
    if (value !== "") out[name] = value;
  }
  return out;
}

async function loadList(list) {
  const params = new URLSearchParams({ ...list.query(), limit: PAGE_ROWS, after: list.pages[list.at] });
  const where = $('[data-page="where"]', list.view);
  text(where, "loading…");
  const reply = await api(`/api/requests?${params}`);
  if (!reply.ok) { text(where, failure(reply)); return; }
  list.next = reply.body.next;
  const rows = reply.body.requests;
  list.table.tBodies[0].replaceChildren(...rows.map((row) => requestRow(row, list)));
  text(where, `page ${list.at + 1}: ${rows.length} row${rows.length === 1 ? "" : "s"}${list.next ? ", more follow" : ""}`);
  $('[data-page="prev"]', list.view).disabled = list.at === 0;
  $('[data-page="next"]', list.view).disabled = !list.next;
}

function requestRow(row, list) {
  const tr = make("tr", { "data-client": row.client_id, "data-request": row.request_id, "data-status": row.status });
  const cells = [["Client", row.client_id], ["Request", row.request_id], ["Priority", row.priority],
    ["Status", row.status], ["Server", row.server_id ?? "-"], ["Attempts", row.attempts]];
  for (const [label, value] of cells) tr.appendChild(make("td", { "data-label": label, text: String(value) }));
  if (list.name === "failures" && failureVerbs().length) tr.appendChild(failureActions(row));
  tr.addEventListener("click", (event) => {
    if (event.target.closest("button")) return;
    location.hash = `#request/${row.client_id}/${row.request_id}`;
  });
  return tr;
}

// Retry and drop come with the work-model issue: offered only when the gateway says they exist.
function failureVerbs() {
  return [["retry", "Retry"], ["drop", "Drop"]].filter(([verb]) => page.info.actions && page.info.actions[verb]);
}

function failureActions(row) {
  const cell = make("td", { class: "fail-actions actions", "data-label": "Actions" });
  for (const [verb, label] of failureVerbs()) {
    const button = make("button", { type: "button", text: label });
    button.addEventListener("click", async () => {
      const reply = await api(`/api/requests/${row.client_id}/${row.request_id}/${verb}`, { method: "POST" });
      text(cell.querySelector(".row-error"), reply.ok ? "" : failure(reply));
      if (reply.ok) loadList(lists.failures);
    });
    cell.appendChild(button);
  }
  cell.appendChild(make("div", { class: "row-error", role: "alert" }));
  return cell;
}

function pager(list) {
  $('[data-page="prev"]', list.view).addEventListener("click", () => { if (list.at > 0) { list.at -= 1; loadList(list); } });
  $('[data-page="next"]', list.view).addEventListener("click", () => {
    if (!list.next) return;
    list.pages[list.at + 1] = list.next;
    list.at += 1;
    loadList(list);
  });
}

// ---- one request in detail ---------------------------------------------------------------------

function previewBlock(title, body, note) {
  if (!body) return [make("h3", { text: title }), make("p", { class: "muted", text: note })];
  const cut = body.shown < body.bytes ? `, first ${body.shown} shown` : "";
  const kind = body.encoding === "hex" ? ", binary: hex" : "";
  return [make("h3", { text: `${title} (${body.bytes} bytes${cut}${kind})` }), make("pre", { class: "preview", text: body.text })];
}

async function showDetail(clientId, requestId) {
  const box = $("#request-detail");
  box.hidden = false;
  box.replaceChildren(make("p", { class: "muted", text: `Request ${requestId} of client ${clientId}…` }));
  for (const tr of document.querySelectorAll("#requests tbody tr")) {
    tr.classList.toggle("chosen", tr.dataset.client === String(clientId) && tr.dataset.request === String(requestId));
  }
  const reply = await api(`/api/request?client=${clientId}&id=${requestId}`);
  if (!reply.ok) { box.replaceChildren(make("p", { class: "row-error", text: failure(reply) })); return; }
  const d = reply.body;
  page.detail = d;
  const fields = make("dl", { class: "fields" });
  for (const [label, value] of [["Client", d.client_id], ["Request", d.request_id], ["Priority", d.priority],
    ["Status", d.status], ["Server", d.server_id ?? "-"], ["Attempts", d.attempts]]) {
    fields.append(make("dt", { text: label }), make("dd", { text: String(value) }));
  }
  const finished = d.status !== "pending" && d.status !== "assigned";
  const payloadNote = finished ? `Let go when the result came (its digest ${d.payload_digest || "-"} is kept).` : "No payload.";
  const resultNote = finished ? "The result is no longer kept." : "No result yet.";
  const attempts = make("table", { class: "rows attempts" },
    make("thead", {}, make("tr", {}, ...["Attempt", "Server", "Assigned", "Ended", "Outcome"].map((h) => make("th", { text: h })))),
    make("tbody", {}, ...d.attempt_log.map((a) => make("tr", {},
      make("td", { "data-label": "Attempt", text: String(a.attempt) }),
      make("td", { "data-label": "Server", text: String(a.server_id) }),
      make("td", { "data-label": "Assigned", text: clock(a.assigned_at) }),
      make("td", { "data-label": "Ended", text: a.ended_at ? `${clock(a.ended_at)} (${fmtSeconds(a.ended_at - a.assigned_at)})` : "-" }),
      make("td", { "data-label": "Outcome", text: a.outcome || "running" })))));
  const events = make("ol", { class: "log events" }, ...d.events.map((e) => logItem({ ...e, level: "INFO" })));
  const seen = `Events and attempt times as this gateway saw them (it watches since ${clock(d.watching_since)}).`;
  box.replaceChildren(make("h2", { text: `Request ${d.request_id} of client ${d.client_id}` }), fields,
    ...previewBlock("Payload", d.payload, payloadNote), ...previewBlock("Result", d.result, resultNote),
    make("h3", { text: "Attempts" }), attempts, make("h3", { text: "Events" }), events, make("p", { class: "muted", text: seen }));
  if (box.getBoundingClientRect().top > window.innerHeight / 2 || box.getBoundingClientRect().top < 0) box.scrollIntoView();
}

// ---- history: charts of the last 15 minutes, kept by the gateway ---------------------------------

const CHARTS = [
  ["#chart-rate", [["processed_per_s", ""]], (v) => `${v} req/s`],
  ["#chart-queue", [["queue_depth", ""]], (v) => `${v} waiting`],
  ["#chart-latency", [["p50_s", "p50"], ["p90_s", "p90"], ["p99_s", "p99"]], (v) => fmtSeconds(v)],
  ["#chart-nodes", [["servers_active", ""]], (v) => `${v} active`],
];

function addHistory(points) {
  const window_s = (page.info.history && page.info.history.window_s) || 900;
  const last = page.history.length ? page.history[page.history.length - 1].ts : -Infinity;
  page.history.push(...points.filter((p) => p.ts > last)); // a pushed point the fetch also held comes once
  const newest = page.history.length ? page.history[page.history.length - 1].ts : 0;
  while (page.history.length && newest - page.history[0].ts > window_s) page.history.shift();
  drawHistory();
}

function drawHistory() {
  const points = page.history;
  const window_s = (page.info.history && page.info.history.window_s) || 900;
  const end = points.length ? points[points.length - 1].ts : Date.now() / 1000;
  // The x axis spans what is kept, at least a minute, at most the window: a young history is not a sliver.
  const span = Math.min(window_s, Math.max(60, points.length ? end - points[0].ts : 0));
  for (const [sel, series, show] of CHARTS) {
    const figure = $(sel);
    const svg = $("svg", figure);
    const values = series.flatMap(([key]) => points.map((p) => p[key]).filter((v) => v !== null && v !== undefined));
    const top = Math.max(1e-9, ...values) * 1.1;
    svg.replaceChildren(...series.map(([key, cls]) => {
      const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      const xy = points.filter((p) => p[key] !== null && p[key] !== undefined)
        .map((p) => `${(300 * (1 - (end - p.ts) / span)).toFixed(1)},${(100 - (100 * p[key]) / top).toFixed(1)}`);
      line.setAttribute("points", xy.join(" "));
      if (cls) line.setAttribute("class", cls);
      return line;
    }));
    svg.dataset.points = String(points.length);
    svg.dataset.firstTs = points.length ? String(points[0].ts) : "";
    const latest = points.length ? points[points.length - 1][series[series.length - 1][0]] : null;
    text($(".now", figure), latest === null || latest === undefined ? "-" : show(latest));
    text($(".axis", figure), values.length ? `top ${show(+(top / 1.1).toPrecision(3))}, from ${clock(end - span)}` : "");
  }
  text($("#history-span"), points.length ? `${points.length} points from ${clock(points[0].ts)} to ${clock(end)}` : "no points yet");
}

// The past from the gateway, then whatever was pushed meanwhile (the stream is open before this asks).
async function loadHistory() {
  const reply = await api("/api/history");
  if (!reply.ok) return;
  const pushed = page.history;
  page.history = [];
  addHistory(reply.body.points);
  addHistory(pushed);
}

// A link cannot carry the token, so the file is fetched and handed over from memory.
async function downloadCsv() {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const reply = await fetch("/api/history.csv", { headers });
  if (!reply.ok) { text($("#history-span"), `${reply.status}: cannot download`); return; }
  const link = make("a", { href: URL.createObjectURL(await reply.blob()), download: "zlb_history.csv" });
  link.click();
  URL.revokeObjectURL(link.href);
}

// ---- sending and configuring -------------------------------------------------------------------

function formNumbers(form, names) {
  const out = {};
  for (const name of names) {
    const raw = form.elements[name].value.trim();
    if (raw !== "") out[name] = Number(raw);
  }
  return out;
}

async function submitForm(form, path, body) {
  const output = $("output", form);
  output.classList.remove("bad");
  text(output, "sending…");
  const reply = await api(path, { method: "POST", body: JSON.stringify(body) });
  output.classList.toggle("bad", !reply.ok);
  text(output, reply.ok ? (reply.body.message || JSON.stringify(reply.body)) : failure(reply));
}

function sendRequest(event) {
  event.preventDefault();
  const form = event.target;
  const body = formNumbers(form, ["client_id", "request_id", "priority", "cost_ms"]);
  const raw = form.elements.payload.value.trim();
  if (raw) {
    try { body.payload = JSON.parse(raw); } catch (err) {
      text($("output", form), `the payload is not JSON: ${err.message}`);
      return;
    }
  }
  submitForm(form, "/send_request", body);
}

function configure(event) {
  event.preventDefault();
  submitForm(event.target, "/configure", formNumbers(event.target, ["num_servers", "num_clients", "requests_per_client"]));
}

// ---- views, the event stream, start ------------------------------------------------------------

function route() {
  const [head, ...rest] = location.hash.slice(1).split("/");
  const view = head === "request" ? "requests" : VIEWS.includes(head) ? head : "servers";
  for (const section of document.querySelectorAll("main > section[data-view]")) section.hidden = section.dataset.view !== view;
  for (const link of document.querySelectorAll("#views a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  if (view === "requests" && !lists.requests.loaded) { lists.requests.loaded = true; loadList(lists.requests); }
  if (view === "failures") loadList(lists.failures);
  if (view === "history") drawHistory();
  if (head === "request" && rest.length === 2) showDetail(Number(rest[0]), Number(rest[1]));
  else window.scrollTo(0, 0); // a view's name is also its table's id: the browser would scroll to it
}

function connect() {
  const query = token() ? `?token=${encodeURIComponent(token())}` : "";
  const stream = new EventSource(`/events${query}`);
  const conn = $("#conn");
  stream.onopen = () => { conn.className = "badge live"; text(conn, "live"); };
  stream.onerror = () => { conn.className = "badge off"; text(conn, "reconnecting"); };
  stream.addEventListener("state", (e) => renderState(JSON.parse(e.data)));
  stream.addEventListener("log", (e) => appendLog(JSON.parse(e.data)));
  stream.addEventListener("history", (e) => addHistory([JSON.parse(e.data)]));
  return stream;
}

async function start() {
  const info = await api("/api/console");
  if (info.ok) page.info = info.body;
  if (page.info.token_required) showTokenBox(token() ? "" : "changes need the gateway's token");
  $("#failures th.fail-actions").hidden = failureVerbs().length === 0;
  let stream = connect();
  $("#token").value = token();
  $("#auth-box").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    text($("#action-result"), "token kept for this tab");
    stream.close();
    stream = connect();
    loadHistory();
  });
  $("#log-requests").addEventListener("change", filterLog);
  $("#request-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    Object.assign(lists.requests, { pages: [""], at: 0, loaded: true });
    loadList(lists.requests);
  });
  pager(lists.requests);
  pager(lists.failures);
  $("#history-csv").addEventListener("click", downloadCsv);
  $("#send-form").addEventListener("submit", sendRequest);
  $("#configure-form").addEventListener("submit", configure);
  window.addEventListener("hashchange", route);
  route();
  loadHistory();
  setInterval(() => {
    if (!page.last || !page.last.up) return;
    document.querySelectorAll("#servers tbody tr").forEach((row, i) => {
      const server = page.last.servers[i];
      if (server) text(row.querySelector(".age"), heartbeatAge(server));
    });
  }, 500);
}

start();

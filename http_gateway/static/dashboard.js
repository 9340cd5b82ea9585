// The zlb dashboard: state and log lines are pushed by the gateway over one EventSource;
// the only timer here re-draws heartbeat ages locally between pushes.
"use strict";

const TOKEN_KEY = "zlb-token";
const LOG_LINES = 100;
const $ = (sel) => document.querySelector(sel);
let lastState = null;
let receivedAt = 0;

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function text(el, value) { el.textContent = value; }

function fmtSeconds(s) {
  if (s === null || s === undefined) return "-";
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(1)} s`;
}

function heartbeatAge(server) {
  if (server.state === "dead" || server.last_heartbeat_ms_ago === undefined) return "-";
  return `${Math.round(server.last_heartbeat_ms_ago + (Date.now() - receivedAt))} ms`;
}

// Rows are built once per server and updated in place, so a push never swaps a button under a click.
function makeRow(serverId) {
  const row = document.createElement("tr");
  row.dataset.serverId = serverId;
  row.innerHTML = '<td class="id"></td><td class="state"></td>' +
    '<td><span class="bar"><span></span></span><span class="load"></span></td>' +
    '<td class="handled"></td><td class="age"></td><td class="services"></td><td class="actions"></td>';
  text(row.querySelector(".id"), serverId);
  for (const [verb, label] of [["down", "Down"], ["up", "Up"], ["drain", "Drain"]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.verb = verb;
    text(button, label);
    button.addEventListener("click", () => act(verb, serverId));
    row.querySelector(".actions").appendChild(button);
  }
  return row;
}

function updateRow(row, server) {
  row.dataset.state = server.state;
  text(row.querySelector(".state"), server.state);
  const load = server.capacity ? Math.min(1, server.in_flight / server.capacity) : 0;
  row.querySelector(".bar > span").style.width = `${Math.round(load * 100)}%`;
  text(row.querySelector(".load"), `${server.in_flight}/${server.capacity}`);
  text(row.querySelector(".handled"), server.handled_requests);
  text(row.querySelector(".age"), heartbeatAge(server));
  text(row.querySelector(".services"), (server.services || ["default"]).join(", "));
  for (const button of row.querySelectorAll("button")) {
    button.disabled = (button.dataset.verb === "up") === (server.state === "active");
  }
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
}

function renderState(state) {
  lastState = state;
  receivedAt = Date.now();
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
}

// Problems the balancer reports while they last (a failing journal, a degraded log), above everything else.
function renderAlerts(status) {
  const alerts = [];
  const journal = status.journal;
  if (journal && !journal.healthy) {
    const since = new Date(journal.since * 1000).toLocaleTimeString();
    alerts.push(`Journal failing since ${since}: ${journal.reason}; new requests refused (busy), results held`);
  }
  const log = status.log || {};
  if (log.problem) alerts.push(`Log degraded: ${log.path}: ${log.problem}; lines are dropped and counted`);
  const box = $("#alerts");
  box.replaceChildren(...alerts.map((line) => { const item = document.createElement("li"); text(item, line); return item; }));
  box.hidden = alerts.length === 0;
}

function appendLog(lines) {
  const log = $("#log");
  for (const line of lines) {
    const item = document.createElement("li");
    const when = new Date(line.ts * 1000).toLocaleTimeString();
    text(item, `${when} ${line.message}`);
    log.appendChild(item);
  }
  while (log.children.length > LOG_LINES) log.removeChild(log.firstChild);
  log.scrollTop = log.scrollHeight;
}

async function act(verb, serverId) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const result = $("#action-result");
  try {
    const reply = await fetch(`/server_${verb}/${serverId}`, { method: "POST", headers });
    const body = await reply.json();
    text(result, reply.ok ? body.message : `${reply.status}: ${body.error}`);
  } catch (err) {
    text(result, `failed: ${err}`);
  }
}

function connect() {
  const query = token() ? `?token=${encodeURIComponent(token())}` : "";
  const stream = new EventSource(`/events${query}`);
  const conn = $("#conn");
  stream.onopen = () => { conn.className = "badge live"; text(conn, "live"); };
  stream.onerror = () => { conn.className = "badge off"; text(conn, "reconnecting"); };
  stream.addEventListener("state", (e) => renderState(JSON.parse(e.data)));
  stream.addEventListener("log", (e) => appendLog(JSON.parse(e.data)));
  return stream;
}

let stream = connect();
$("#token").value = token();
$("#token-save").addEventListener("click", () => {
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  text($("#action-result"), "token kept for this tab");
  stream.close();
  stream = connect();
});
setInterval(() => {
  if (!lastState || !lastState.up) return;
  document.querySelectorAll("#servers tbody tr").forEach((row, i) => {
    const server = lastState.servers[i];
    if (server) text(row.querySelector(".age"), heartbeatAge(server));
  });
}, 500);

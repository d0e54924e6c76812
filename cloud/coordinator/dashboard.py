"""The coordinator's /ui page: plain HTML and a little JS polling /v1/pools once a second."""

DASHBOARD_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>splitasr coordinator</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
 table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
 th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
 th { background: #f3f3f3; } td.l, th.l { text-align: left; }
 .open { color: #b00; font-weight: bold; } .spare { color: #777; } .draining { color: #a60; }
</style>
</head>
<body>
<h1>splitasr coordinator</h1>
<p id="status">loading…</p>
<div id="pools"></div>
<script>
function cell(v) { return v === null || v === undefined ? "–" : v; }
function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }
function render(data) {
  let html = "";
  for (const p of data.pools) {
    html += `<h2 class="pool" data-model="${esc(p.model)}">${esc(p.model)} <small>(${esc(p.languages.join(", "))})</small></h2>`;
    html += `<table class="summary"><tr><th>replicas</th><th>desired</th><th>spares</th><th>starting</th>` +
      `<th>sessions</th><th>queue delay ms</th><th>FINAL p50 ms</th><th>FINAL p95 ms</th><th>FINAL p99 ms</th><th>cold start s</th></tr>` +
      `<tr><td class="replicas">${p.replicas}</td><td>${cell(p.desired)}</td><td>${p.spares}</td><td>${p.starting}</td>` +
      `<td class="sessions">${p.sessions}</td><td>${p.queue_delay_ms}</td><td class="p50">${cell(p.final_p50_ms)}</td>` +
      `<td class="p95">${cell(p.final_p95_ms)}</td><td class="p99">${cell(p.final_p99_ms)}</td><td>${p.cold_start_s}</td></tr></table>`;
    const r = p.rollout;
    const flags = (p.flags || []).map(f => JSON.stringify(Object.fromEntries(Object.entries(f.set).filter(([, v]) => v !== null))) +
      " for " + Math.round(f.share * 100) + "% of devices").join("; ");
    html += `<table class="version"><tr><th class="l">version</th><th class="l">rollout</th><th class="l">flags</th><th class="l">ladder</th></tr>` +
      `<tr><td class="l poolversion">${esc(p.version || "default")}</td>` +
      `<td class="l rollout">${r ? esc(r.stable + " → " + r.canary + ": " + r.status + ", canary share " + Math.round(r.share * 100) + "% " + r.reason) : "–"}</td>` +
      `<td class="l flags">${flags ? esc(flags) : "–"}</td>` +
      `<td class="l ladder">${p.ladder ? esc(p.ladder.level + " " + p.ladder.name) : "–"}</td></tr></table>`;
    html += `<table class="stages"><tr><th class="l">stage pool</th><th>replicas</th><th>desired</th><th>starting</th>` +
      `<th>busy cores</th><th>queue delay ms</th><th class="l">last decision</th></tr>`;
    for (const [name, st] of Object.entries(p.stages || {})) {
      const last = st.decisions.length ? st.decisions[st.decisions.length - 1] : null;
      html += `<tr><td class="l stagename">${esc(name)}</td><td class="stagereplicas">${st.replicas}</td>` +
        `<td>${cell(st.desired)}</td><td>${st.starting}</td><td class="stagebusy">${st.busy}</td>` +
        `<td>${st.queue_delay_ms}</td><td class="l">${last ? esc(last.reason) : "–"}</td></tr>`;
    }
    html += `</table>`;
    html += `<table class="shards"><tr><th class="l">shard</th><th class="l">stage</th><th class="l">zone</th>` +
      `<th class="l">state</th><th>sessions</th><th>queue ms</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>heartbeat age s</th></tr>`;
    for (const s of p.shards) {
      const state = s.draining ? "draining" : s.spare ? "spare" : s.breaker;
      html += `<tr class="${esc(state)}"><td class="l shard">${esc(s.shard_id)}</td><td class="l">${esc(s.stage)}</td>` +
        `<td class="l">${esc(s.zone)}</td><td class="l state">${esc(state)}</td><td>${s.sessions}</td>` +
        `<td>${(s.queue_delay_s * 1000).toFixed(1)}</td><td>${s.final_p50_ms.toFixed(0)}</td>` +
        `<td>${s.final_p95_ms.toFixed(0)}</td><td>${s.final_p99_ms.toFixed(0)}</td><td>${s.heartbeat_age_s.toFixed(1)}</td></tr>`;
    }
    const now = p.decisions.length ? p.decisions[p.decisions.length - 1] : null;
    html += `</table><p class="current">autoscaler now: ${now ? now.replicas + " replicas (" + esc(now.reason) + ")" : "–"}</p>`;
    html += `<table class="scaling"><tr><th class="l">time</th><th>replicas</th><th class="l">reason</th></tr>`;
    for (const d of p.scaling.slice(-10).reverse()) {
      html += `<tr><td class="l">${clock(d.time)}</td><td class="to">${d.replicas}</td><td class="l reason">${esc(d.reason)}</td></tr>`;
    }
    html += `</table>`;
  }
  html += `<h2>rollouts and flags</h2><table class="changes"><tr><th class="l">time</th><th class="l">pool</th><th class="l">event</th><th class="l">detail</th></tr>`;
  for (const e of (data.changes || []).slice(-10).reverse()) {
    html += `<tr><td class="l">${clock(e.time)}</td><td class="l">${esc(e.pool)}</td><td class="l change">${esc(e.event)}</td><td class="l">${esc(e.detail)}</td></tr>`;
  }
  html += `</table>`;
  html += `<h2>breaker events</h2><table class="events"><tr><th class="l">time</th><th class="l">shard</th><th class="l">breaker</th><th class="l">reason</th></tr>`;
  for (const e of data.events.slice(-10).reverse()) {
    html += `<tr><td class="l">${clock(e.time)}</td><td class="l">${esc(e.shard_id)}</td><td class="l">${esc(e.breaker)}</td><td class="l">${esc(e.reason)}</td></tr>`;
  }
  html += `</table>`;
  document.getElementById("pools").innerHTML = html;
  document.getElementById("status").textContent = "updated " + new Date().toLocaleTimeString();
}
async function refresh() {
  try {
    const resp = await fetch("/v1/pools");
    render(await resp.json());
  } catch (err) {
    document.getElementById("status").textContent = "coordinator unreachable: " + err;
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""

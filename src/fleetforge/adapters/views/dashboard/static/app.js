// FleetForge built-in dashboard: read-only views over the analytics tables and the run store.
"use strict";

const charts = {};
const $ = (sel) => document.querySelector(sel);
const fmt = (v, d = 0) => (v === null || v === undefined || Number.isNaN(v)) ? "–"
  : Number(v).toLocaleString(undefined, { maximumFractionDigits: d, minimumFractionDigits: d });
const pct = (v) => (v === null || v === undefined) ? "–" : `${fmt(100 * v, 1)} %`;
const usd = (v) => `$${fmt(v, 4)}`;
const secs = (v) => v === null || v === undefined ? "–" : (v < 1 ? `${fmt(1000 * v)} ms` : `${fmt(v, 2)} s`);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const EFFECT_COLORS = { allow: "#3fb950", modify: "#d29922", deny: "#f85149" };

let range = { from: 0, to: 0 };
const timeAxis = () => ({ type: "time", min: range.from * 1000, max: range.to * 1000 });

function params() {
  const to = Math.floor(Date.now() / 1000);
  range = { from: to - Number($("#range").value), to };
  const p = new URLSearchParams({ from: String(range.from), to: String(range.to) });
  if ($("#workspace").value) p.set("workspace", $("#workspace").value);
  if ($("#app").value) p.set("app", $("#app").value);
  return p;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${await r.text()}`);
  return r.json();
}

function rowsOf(result) {
  return result.rows.map((r) => Object.fromEntries(result.columns.map((c, i) => [c, r[i]])));
}

function chart(id) {
  const el = document.getElementById(`chart-${id}`);
  if (!charts[id]) charts[id] = echarts.init(el, "dark", { renderer: "canvas" });
  return charts[id];
}

function markPanel(id, points) {
  const el = document.querySelector(`[data-panel="${id}"]`);
  el.dataset.points = String(points);
  el.dataset.loaded = "true";
}

function emptyChart(id, message) {
  chart(id).clear();
  chart(id).setOption({ backgroundColor: "transparent", title: { text: message, left: "center", top: "middle",
    textStyle: { color: "#8a96a3", fontSize: 13, fontWeight: "normal" } } });
  markPanel(id, 0);
}

const base = { backgroundColor: "transparent", tooltip: { trigger: "axis" }, legend: { top: 0 },
  grid: { left: 60, right: 60, top: 36, bottom: 30 } };

function renderStats(o) {
  const items = [
    ["runs", fmt(o.runs), o.runs], ["success SLO", pct(o.success_rate), o.success_rate],
    ["within tier target", pct(o.slo_rate), o.slo_rate], ["MTTR", secs(o.mttr_s), o.mttr_s],
    ["attempts (retries)", `${fmt(o.attempts)} (${fmt(o.retries)})`, `${o.attempts}/${o.retries}`],
    ["tokens used", fmt(o.tokens_used), o.tokens_used], ["cost used", usd(o.cost_used), o.cost_used],
    ["policy denies", fmt(o.denies), o.denies],
  ];
  $("#stats").innerHTML = items.map(([k, v, raw]) =>
    `<div class="stat" data-stat="${esc(k)}" data-raw="${esc(raw)}"><div class="v">${esc(v)}</div>` +
    `<div class="k">${esc(k)}</div></div>`).join("");
}

function renderRunSlo(rows) {
  if (!rows.length) return emptyChart("run_slo", "no runs in this range");
  const t = (r) => r.t * 1000;
  chart("run_slo").setOption({ ...base,
    xAxis: timeAxis(),
    yAxis: [{ type: "value", name: "success", min: 0, max: 100, axisLabel: { formatter: "{value} %" } },
            { type: "value", name: "seconds" }],
    series: [
      { name: "success rate", type: "line", data: rows.map((r) => [t(r), r.success_rate === null ? null : 100 * r.success_rate]) },
      { name: "within SLO", type: "line", data: rows.map((r) => [t(r), r.slo_rate === null ? null : 100 * r.slo_rate]) },
      { name: "MTTR", type: "bar", barMaxWidth: 24, yAxisIndex: 1, data: rows.map((r) => [t(r), r.mttr_s]) },
      { name: "p95 duration", type: "line", yAxisIndex: 1, lineStyle: { type: "dashed" }, data: rows.map((r) => [t(r), r.p95_s]) },
    ] }, true);
  markPanel("run_slo", rows.length);
}

function renderHeatmap(rows) {
  if (!rows.length) return emptyChart("retry_heatmap", "no attempts in this range");
  const xs = [...new Set(rows.map((r) => `${r.step_type}/${r.status}`))].sort();
  const ys = [...new Set(rows.map((r) => r.attempt))].sort((a, b) => a - b);
  const data = rows.map((r) => [xs.indexOf(`${r.step_type}/${r.status}`), ys.indexOf(r.attempt), r.steps]);
  chart("retry_heatmap").setOption({ backgroundColor: "transparent", tooltip: { position: "top" },
    grid: { left: 70, right: 80, top: 20, bottom: 70 },
    xAxis: { type: "category", data: xs, axisLabel: { rotate: 30 } },
    yAxis: { type: "category", data: ys.map((a) => `attempt ${a}`) },
    visualMap: { min: 0, max: Math.max(...rows.map((r) => r.steps)), calculable: true, orient: "vertical",
      right: 0, top: "middle", itemHeight: 120, textStyle: { color: "#8a96a3" } },
    series: [{ name: "attempts", type: "heatmap", data, label: { show: true } }] }, true);
  markPanel("retry_heatmap", data.length);
}

function renderPolicy(rows) {
  if (!rows.length) return emptyChart("policy_bursts", "no policy decisions in this range");
  const effects = ["allow", "modify", "deny"];
  chart("policy_bursts").setOption({ ...base, xAxis: timeAxis(), yAxis: { type: "value" },
    series: effects.map((e) => ({ name: e, type: "bar", stack: "d", barMaxWidth: 24, color: EFFECT_COLORS[e],
      data: rows.filter((r) => r.effect === e).map((r) => [r.t * 1000, r.decisions]) })) }, true);
  markPanel("policy_bursts", rows.length);
}

function renderBudget(rows) {
  if (!rows.length) {
    $("#note-budget_burndown").textContent = "";
    return emptyChart("budget_burndown", "no budget activity in this range");
  }
  const keys = [...new Set(rows.map((r) => `${r.workspace}/${r.app}`))].sort();
  const series = keys.map((k) => ({ name: k, type: "line", step: "end",
    data: rows.filter((r) => `${r.workspace}/${r.app}` === k).map((r) => [r.t * 1000, r.tokens_used_cum]) }));
  const notes = [];
  for (const k of keys) {
    const own = rows.filter((r) => `${r.workspace}/${r.app}` === k);
    const last = own[own.length - 1];
    const limited = last.tokens_limit > last.tokens_used_cum;  // a shared (app) limit still ahead
    if (limited) {
      series.push({ name: `${k} limit`, type: "line", symbol: "none", lineStyle: { type: "dotted" },
        data: [[own[0].t * 1000, last.tokens_limit], [range.to * 1000, last.tokens_limit]] });
    }
    if (limited && last.exhaustion_t) {
      series.push({ name: `${k} projected`, type: "line", symbol: "none", lineStyle: { type: "dashed" },
        data: [[last.t * 1000, last.tokens_used_cum], [last.exhaustion_t * 1000, last.tokens_limit]] });
    }
    notes.push(`${k}: ${fmt(last.tokens_used_cum)} tokens and ${usd(last.cost_used_cum)} used` +
      (limited ? ` of ${fmt(last.tokens_limit)}` : "") +
      (limited && last.exhaustion_t ? `, exhausted by ${new Date(last.exhaustion_t * 1000).toLocaleString()} at this rate` : ""));
  }
  chart("budget_burndown").setOption({ ...base, xAxis: timeAxis(), yAxis: { type: "value", name: "tokens" },
    series }, true);
  $("#note-budget_burndown").textContent = notes.join(" · ");
  markPanel("budget_burndown", rows.length);
}

function renderTools(rows) {
  const table = $("#table-tool_flakes");
  table.querySelector("thead").innerHTML =
    "<tr><th>tool</th><th>provider</th><th>calls</th><th>failures</th><th>flake rate</th><th>top error</th><th>p95 latency</th>" +
    "<th>by agents</th><th>agent denied</th></tr>";
  table.querySelector("tbody").innerHTML = rows.length ? rows.map((r) =>
    `<tr data-tool="${esc(r.tool)}"><td>${esc(r.tool)}</td><td>${esc(r.provider)}</td><td class="num">${fmt(r.calls)}</td>` +
    `<td class="num">${fmt(r.failures)}</td><td class="num">${pct(r.flake_rate)}</td><td>${esc(r.top_error)}</td>` +
    `<td class="num">${fmt(r.p95_ms)} ms</td><td class="num">${fmt(r.agent_calls)}</td>` +
    `<td class="num">${fmt(r.agent_denied)}</td></tr>`).join("")
    : `<tr><td colspan="9" class="empty">no tool calls in this range</td></tr>`;
  markPanel("tool_flakes", rows.length);
}

function renderAgentTurns(rows) {
  if (!rows.length) return emptyChart("agent_turns", "no agent turns in this range");
  const t = (r) => r.t * 1000;
  chart("agent_turns").setOption({ ...base, xAxis: timeAxis(),
    yAxis: [{ type: "value", name: "turns" }, { type: "value", name: "tokens" }],
    series: [
      { name: "turns ok", type: "bar", stack: "t", barMaxWidth: 24, color: "#3fb950", data: rows.map((r) => [t(r), r.turns_ok]) },
      { name: "turns failed", type: "bar", stack: "t", barMaxWidth: 24, color: "#f85149", data: rows.map((r) => [t(r), r.turns_failed]) },
      { name: "retried", type: "line", data: rows.map((r) => [t(r), r.turn_retries]) },
      { name: "agents finished", type: "line", data: rows.map((r) => [t(r), r.agents_finished]) },
      { name: "tokens", type: "line", yAxisIndex: 1, lineStyle: { type: "dashed" }, data: rows.map((r) => [t(r), r.turn_tokens]) },
    ] }, true);
  markPanel("agent_turns", rows.length);
}
function renderAgentTools(rows) {
  const table = $("#table-agent_tool_calls");
  table.querySelector("thead").innerHTML =
    "<tr><th>tool</th><th>calls</th><th>ok</th><th>failed</th><th>denied</th><th>failure rate</th><th>deny rate</th><th>retries</th></tr>";
  table.querySelector("tbody").innerHTML = rows.length ? rows.map((r) =>
    `<tr data-tool="${esc(r.tool)}"><td>${esc(r.tool)}</td><td class="num">${fmt(r.calls)}</td><td class="num">${fmt(r.ok)}</td>` +
    `<td class="num">${fmt(r.failed)}</td><td class="num">${fmt(r.denied)}</td><td class="num">${pct(r.failure_rate)}</td>` +
    `<td class="num">${pct(r.deny_rate)}</td><td class="num">${fmt(r.retries)}</td></tr>`).join("")
    : `<tr><td colspan="8" class="empty">no agent tool calls in this range</td></tr>`;
  markPanel("agent_tool_calls", rows.length);
}
function renderRuns(runs) {
  $("#runs tbody").innerHTML = runs.length ? runs.map((r) =>
    `<tr class="click" data-run="${esc(r.run_id)}"><td><code>${esc(r.run_id.slice(0, 8))}</code></td>` +
    `<td>${esc(r.workspace)}/${esc(r.app)}</td><td class="s-${esc(r.status)}">${esc(r.status)}</td>` +
    `<td>${esc(r.created_at)}</td><td class="num">${secs(r.duration_s)}</td><td>${esc(r.error_kind)}</td></tr>`).join("")
    : `<tr><td colspan="6" class="empty">no runs yet</td></tr>`;
  document.querySelectorAll("#runs tr.click").forEach((tr) => tr.addEventListener("click", () => {
    if (location.hash === `#run=${tr.dataset.run}`) drill(tr.dataset.run);
    else location.hash = `run=${tr.dataset.run}`;  // drill.js opens it
  }));
}

async function loadMeta() {
  const meta = await getJSON("api/meta");
  for (const [id, values] of [["workspace", meta.workspaces], ["app", meta.apps]]) {
    const sel = document.getElementById(id);
    const keep = sel.value;
    sel.innerHTML = `<option value="">all</option>` + values.map((v) => `<option>${esc(v)}</option>`).join("");
    sel.value = values.includes(keep) ? keep : "";
  }
}

const renderers = { run_slo: renderRunSlo, retry_heatmap: renderHeatmap, policy_bursts: renderPolicy,
  budget_burndown: renderBudget, tool_flakes: renderTools, agent_turns: renderAgentTurns,
  agent_tool_calls: renderAgentTools };

async function refresh() {
  const p = params();
  $("#status").textContent = "loading…";
  try {
    await loadMeta();
    const [overview, runs, ...panels] = await Promise.all([
      getJSON(`api/panel/overview?${p}`), getJSON(`api/runs?${p}`),
      ...Object.keys(renderers).map((id) => getJSON(`api/panel/${id}?${p}`)),
    ]);
    renderStats(rowsOf(overview)[0] || {});
    Object.keys(renderers).forEach((id, i) => renderers[id](rowsOf(panels[i])));
    renderRuns(runs);
    document.body.dataset.loaded = "true";
    $("#status").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("#status").textContent = `error: ${e.message}`;
    document.body.dataset.error = e.message;
  }
}

let timer = null;
function schedule() {
  clearInterval(timer);
  if ($("#auto").checked) timer = setInterval(refresh, 10000);
}
["range", "workspace", "app"].forEach((id) => document.getElementById(id).addEventListener("change", refresh));
$("#auto").addEventListener("change", schedule);
window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));
refresh().then(schedule);

// FleetForge dashboard: the run drill-down (steps, inputs and outputs, agent transcripts).
// Every value from the store is put in the page as text (DOM text nodes), never parsed as markup.
"use strict";

// An element with `attrs` (names from this file only) and `children`: nodes, or strings shown as text.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// Operator buttons: only when the dashboard was given a control token, which puts a per-load anti-CSRF value
// in the page (the token itself stays in the dashboard process). Each button POSTs to the dashboard.
const CSRF = document.querySelector('meta[name="fleetforge-csrf"]')?.content || null;

async function act(runId, path, body) {
  const r = await fetch(`api/runs/${encodeURIComponent(runId)}/${path}`, {
    method: "POST", cache: "no-store", body: JSON.stringify(body || {}),
    headers: { "content-type": "application/json", "x-fleetforge-csrf": CSRF },
  });
  const doc = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(doc.error || `HTTP ${r.status}`);
  return doc;
}

// Buttons [label, path, sends the reason] acting on `runId`; the drill-down reloads after each answer.
function controlsEl(runId, buttons, withReason) {
  if (!CSRF) return null;
  const reason = withReason ? h("input", { class: "reason", type: "text", placeholder: "reason", maxlength: 500 })
    : null;
  const msg = h("span", { class: "control-msg", role: "status" });
  const click = (path, sendsReason) => async (ev) => {
    ev.target.disabled = true;
    try {
      await act(runId, path, sendsReason && reason.value ? { reason: reason.value } : {});
      await drill(runId);
    } catch (e) {
      msg.textContent = e.message;
      ev.target.disabled = false;
    }
  };
  const els = buttons.map(([label, path, sendsReason]) => {
    const b = h("button", { type: "button", class: `control ${label}`, "data-action": label }, label);
    b.addEventListener("click", click(path, sendsReason));
    return b;
  });
  return h("div", { class: "controls" }, reason, els, msg);
}

function approvalEl(runId, unit) {
  if (unit.status !== "waiting_approval") return null;
  const step = `steps/${encodeURIComponent(unit.step_id)}`;
  return controlsEl(runId, [["approve", `${step}/approve`, true], ["deny", `${step}/deny`, true]], true);
}

const OPEN_RUN = ["queued", "running"];

function runControlsEl(r) {
  if (OPEN_RUN.includes(r.status)) return controlsEl(r.run_id, [["pause", "pause", false]], false);
  if (r.status === "paused") return controlsEl(r.run_id, [["resume", "resume", false]], false);
  return null;
}

const num = (v) => (v === null || v === undefined ? "–" : fmt(v));

// A stored value as the server cut it: {text, bytes, truncated}.
function payloadEl(p, cls) {
  if (!p) return null;
  return h("div", { class: `payload ${cls || ""}` }, h("pre", {}, p.text),
    p.truncated ? h("p", { class: "trunc", "data-bytes": p.bytes },
      `truncated, ${p.bytes} bytes in all; the start is shown`) : null);
}

function tableEl(title, rows, cols) {
  if (!rows.length) return null;
  return h("div", {}, h("h2", {}, title), h("table", {},
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, cols.map((c) =>
      h("td", { class: c === "status" || c === "effect" ? `s-${r[c]}` : null }, r[c] ?? "")))))));
}

function decisionsEl(decisions) {
  if (!decisions || !decisions.length) return null;
  return h("ul", { class: "decisions" }, decisions.map((d) =>
    h("li", { "data-effect": d.effect }, h("span", { class: `s-${d.effect}` }, d.effect), ` ${d.pack} (${d.hook}): `,
      d.reason)));
}

// Tokens (input + output = total) and cost, when any; attempts and model when given.
function usageText(u) {
  if (!u) return "no ledger row";
  const parts = u.tokens || u.cost
    ? [`${num(u.input_tokens)} in + ${num(u.output_tokens)} out = ${num(u.tokens)} tokens`, usd(u.cost)] : [];
  if (u.attempts) parts.push(`${u.attempts} attempt${u.attempts === 1 ? "" : "s"}`);
  if (u.model) parts.push(u.model);
  return parts.join(" · ");
}

function unitHead(label, u) {
  return h("div", { class: "unit-head" }, h("strong", {}, label), " ",
    h("span", { class: `s-${u.status}` }, u.status), u.error_kind ? ` (${u.error_kind})` : "",
    " · ", h("code", {}, u.step_id));
}

function callEl(runId, c) {
  return h("div", { class: "call", "data-tool": c.name, "data-step": c.step_id },
    unitHead(`tool call ${c.name}`, c), approvalEl(runId, c),
    h("div", { class: "usage" }, `call id ${c.call_id} · ${usageText(c.usage)}`),
    h("div", { class: "label" }, "arguments"), payloadEl(c.arguments, "arguments"),
    h("div", { class: "label" }, "result (as the model received it)"),
    c.result ? payloadEl(c.result, "result") : h("p", { class: "muted" }, "not answered yet"),
    decisionsEl(c.decisions));
}

function turnEl(runId, t) {
  const u = t.usage || {};
  return h("div", { class: "turn", "data-step": t.step_id, "data-turn": t.turn, "data-tokens": u.tokens ?? "",
    "data-cost": u.cost ?? "" },
    unitHead(`Turn ${t.turn}`, t),
    h("div", { class: "usage" }, usageText(t.usage)),
    t.message ? h("div", { class: "msg role-assistant" }, h("div", { class: "label" }, "assistant"),
      t.message.text ? payloadEl(t.message) : h("p", { class: "muted" }, `(no text: ${t.calls.length} tool call(s))`))
      : h("p", { class: "muted" }, "no answer yet"),
    decisionsEl(t.decisions),
    t.calls.map((c) => callEl(runId, c)));
}

function transcriptEl(runId, tr) {
  return h("div", { class: "transcript" }, h("h3", {}, "Transcript"),
    tr.prompt.map((m) => h("div", { class: `msg role-${m.role}` }, h("div", { class: "label" }, m.role),
      payloadEl(m.content))),
    tr.turns.map((t) => turnEl(runId, t)),
    tr.final ? h("div", { class: "msg final" }, h("div", { class: "label" }, "final answer"), payloadEl(tr.final))
      : null,
    tr.failure ? h("p", { class: "s-failed" }, `ended without an answer: ${tr.failure}`) : null);
}

function stepEl(runId, s) {
  return h("section", { class: "step", "data-step": s.step_id },
    h("h2", {}, h("code", {}, s.step_id), ` · ${s.type} · `, h("span", { class: `s-${s.status}` }, s.status),
      s.error_kind ? ` (${s.error_kind})` : ""),
    approvalEl(runId, s),
    h("div", { class: "usage" }, usageText(s.usage)),
    s.units ? h("div", { class: "usage", "data-units": s.units, "data-tokens": s.units_usage.tokens },
      `${s.units} units below: ${usageText(s.units_usage)}`) : null,
    h("details", { open: s.type !== "agent" ? "" : null }, h("summary", {}, "inputs"),
      s.inputs_note ? h("p", { class: "muted" }, s.inputs_note) : null, payloadEl(s.inputs, "inputs")),
    s.output ? h("details", {}, h("summary", {}, "output"), payloadEl(s.output, "output")) : null,
    decisionsEl(s.decisions),
    s.transcript ? transcriptEl(runId, s.transcript) : null);
}

async function drill(runId) {
  const body = $("#drill-body");
  let r;
  try {
    r = await getJSON(`api/runs/${encodeURIComponent(runId)}`);
  } catch (e) {
    body.replaceChildren(h("p", { class: "s-failed" }, `cannot load run ${runId}: ${e.message}`));
    $("#drill").showModal();
    return;
  }
  const b = r.budget;
  body.replaceChildren(...[
    h("h1", {}, "Run ", h("code", {}, r.run_id)),
    h("p", {}, `${r.workspace}/${r.app} · `, h("span", { class: `s-${r.status}` }, r.status),
      ` · tier ${r.slo_tier} · created ${r.created_at} · trace `, h("code", {}, r.trace_id)),
    runControlsEl(r),
    h("p", {}, `budget: ${fmt(b.tokens_used)} tokens used of ${b.tokens_limit ? fmt(b.tokens_limit) : "∞"} · ` +
      `${usd(b.cost_used)} of ${b.cost_limit ? usd(b.cost_limit) : "∞"}`),
    r.inputs ? h("details", {}, h("summary", {}, "run inputs"), payloadEl(r.inputs)) : null,
    r.outputs ? h("details", {}, h("summary", {}, "run outputs"), payloadEl(r.outputs)) : null,
    tableEl("Steps", r.steps, ["step_id", "type", "status", "attempts", "error_kind"]),
    ...r.steps.map((s) => stepEl(r.run_id, s)),
    tableEl("Attempts", r.attempts, ["step_id", "attempt", "status", "error_kind", "tokens_reserved", "tokens_used",
      "cost_used", "tool", "provider", "model"]),
    tableEl("Policy decisions", r.policy_decisions, ["step_id", "attempt", "pack", "hook", "effect", "reason"]),
  ].filter(Boolean));
  body.dataset.run = r.run_id;
  if (!$("#drill").open) $("#drill").showModal();
}

// The drill-down is linkable: #run=<id> opens it; closing it drops the fragment.
function drillFromHash() {
  const m = /^#run=([\w.-]{1,100})$/.exec(location.hash);
  if (m) drill(m[1]);
}
window.addEventListener("hashchange", drillFromHash);
$("#drill").addEventListener("close", () => {
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
});
drillFromHash();

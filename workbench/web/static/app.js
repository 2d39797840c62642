// txwatch workbench: live alerts and figures on the dashboard. No framework, no inline script
// (the Content-Security-Policy forbids it); every value goes into the page as text, never HTML.
"use strict";

function fmtUsd(v) { const n = Number(v); return isFinite(n) ? "$" + Math.round(n).toLocaleString("en-US") : ""; }

function cell(tr, text) { const td = document.createElement("td"); td.textContent = text == null ? "" : String(text); tr.appendChild(td); return td; }

function startLive() {
  const table = document.getElementById("live-alerts");
  if (!table || !window.EventSource) return;
  const body = table.querySelector("tbody");
  const state = document.getElementById("live-state");
  const src = new EventSource(table.dataset.src);
  src.onopen = () => { state.textContent = "live"; };
  src.onerror = () => { state.textContent = "reconnecting…"; };
  src.addEventListener("alert", (msg) => {
    let a; try { a = JSON.parse(msg.data); } catch (e) { return; }
    const tr = document.createElement("tr");
    tr.className = "fresh live-alert";
    tr.dataset.eventId = a.event_id || "";
    const t = Number(a.ts); cell(tr, isFinite(t) ? new Date(t).toISOString().slice(0, 19).replace("T", " ") : "");
    cell(tr, a.account_id);
    cell(tr, (a.type || "") + " " + fmtUsd(a.usd_value));
    cell(tr, isFinite(Number(a.score)) ? Number(a.score).toFixed(3) : "").className = "num";
    cell(tr, a.top_reason);
    body.insertBefore(tr, body.firstChild);
    while (body.children.length > 20) body.removeChild(body.lastChild);
    const total = document.getElementById("fig-total");
    if (total) total.textContent = String((Number(total.textContent) || 0) + 1);
  });
}

function setText(id, text) { const el = document.getElementById(id); if (el) el.textContent = text; }

function drawBars(counts) {
  const svg = document.getElementById("per-minute");
  if (!svg) return;
  const peak = Math.max(1, ...counts);
  const rects = svg.querySelectorAll("rect");
  counts.forEach((n, i) => {
    const r = rects[i]; if (!r) return;
    const h = n / peak * 110;
    r.setAttribute("y", String(120 - h)); r.setAttribute("height", String(h));
    const title = r.querySelector("title"); if (title) title.textContent = String(n);
  });
}

function rows(id, items, key) {
  const table = document.getElementById(id); if (!table) return;
  table.replaceChildren(...items.map((it) => { const tr = document.createElement("tr"); cell(tr, it[key]); cell(tr, it.alerts).className = "num"; return tr; }));
}

async function refreshFigures() {
  const box = document.getElementById("figures");
  if (!box) return;
  try {
    const r = await fetch(box.dataset.src, { credentials: "same-origin" });
    if (!r.ok) return;
    const f = await r.json();
    setText("fig-open", String(f.open_cases));
    setText("fig-oldest", f.oldest_unworked ? Math.round(f.oldest_unworked.age_s / 60) + " min" : "none");
    setText("fig-ttd", f.median_time_to_decision_s == null ? "n/a" : (f.median_time_to_decision_s / 60).toFixed(1) + " min");
    setText("fig-fpr", f.false_positive_rate == null ? "n/a" : (f.false_positive_rate * 100).toFixed(1) + " %");
    setText("fig-rate", f.alert_rate == null ? "n/a" : (f.alert_rate * 100).toFixed(2) + " %");
    setText("fig-total", String(f.alerts_total));
    drawBars(f.alerts_per_minute);
    rows("by-reason", f.by_reason, "reason");
    rows("by-scenario", f.by_scenario, "scenario");
  } catch (e) { /* the next refresh tries again */ }
}

document.addEventListener("DOMContentLoaded", () => {
  startLive();
  if (document.getElementById("figures")) setInterval(refreshFigures, 5000);
});

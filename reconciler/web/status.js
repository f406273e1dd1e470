// The status page: polls api/status every second and writes what it read as text
// (textContent only: task titles and messages are outside text, never HTML).
"use strict";
const SPARK = "▁▂▃▄▅▆▇█";
const REFRESH_MS = 1000;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
}

function sparkline(counts) {
  const top = Math.max(0, ...counts);
  return counts.map(c => SPARK[top ? Math.min(SPARK.length - 1,
    Math.round(c / top * (SPARK.length - 1))) : 0]).join("");
}

function clock(at) {
  return new Date(at * 1000).toLocaleTimeString([], {hour12: false});
}

function render(s) {
  document.title = "reconciler · " + s.pool;
  document.getElementById("pool").textContent = "pool " + s.pool;
  const verdict = document.getElementById("verdict");
  verdict.textContent = s.ok ? "ok" : s.problems.length + " problem(s)";
  verdict.className = "badge " + (s.ok ? "ok" : "bad");
  const queue = document.getElementById("queue");
  queue.replaceChildren(...["queued", "running", "succeeded", "failed", "cancelled"].map(k => {
    const tile = el("div", null, "tile");
    tile.dataset.status = k;
    tile.append(el("div", s.queue[k], "n"), el("div", k, "label"));
    return tile;
  }));
  const done = s.completed_last_hour;
  document.getElementById("spark").textContent = sparkline(done);
  document.getElementById("completed").textContent = done.reduce((a, b) => a + b, 0);
  document.getElementById("eta").textContent =
    s.queue.queued + s.queue.running === 0 ? "queue empty" : age(s.eta_seconds);
  document.getElementById("spend").textContent = "$" + s.spend_today_usd.toFixed(2) +
    (s.budget_per_day_usd ? " of $" + s.budget_per_day_usd.toFixed(2) : "") +
    (s.claiming_paused_until ? " · claiming paused: " + (s.claiming_paused_reason || "") : "");
  const c = s.controller;
  document.getElementById("controller").textContent =
    c.running ? (c.busy ? "running, busy: " + c.busy.with : "running")
              : (c.enabled ? "down" : "disabled");
  document.getElementById("problems").replaceChildren(...s.problems.map(p => el("li", p)));
  const rows = s.workers.map(w => {
    const tr = el("tr");
    tr.dataset.worker = w.id;
    const task = w.current_task === null ? "-" :
      (w.current_task + " " + (w.task_title || "")).trim();
    tr.append(el("td", w.id), el("td", w.health, "h-" + w.health), el("td", task, "task"),
      el("td", age(w.task_for)), el("td", age(w.output_age)), el("td", age(w.heartbeat_age)),
      el("td", w.restarts, "num"),
      el("td", w.cpu_percent === null ? "-" : Math.round(w.cpu_percent) + "%", "num"),
      el("td", w.memory_bytes === null ? "-" : Math.round(w.memory_bytes / 1048576) + " MB",
         "num"));
    return tr;
  });
  document.querySelector("#workers tbody").replaceChildren(...rows);
  document.getElementById("events").replaceChildren(...s.events.slice().reverse().map(e =>
    el("li", [clock(e.at), e.kind, e.worker_id, e.task_id === null ? null : "task " + e.task_id,
              e.message].filter(x => x !== null && x !== "").join("  "), e.severity || "")));
  document.getElementById("updated").textContent = "updated " + clock(s.observed_at);
}

async function refresh() {
  try {
    const answer = await fetch("api/status", {cache: "no-store"});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    render(await answer.json());
  } catch (error) {
    document.getElementById("updated").textContent = "cannot reach the controller (" +
      error.message + "): retrying";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();

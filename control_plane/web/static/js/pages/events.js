// The event log: a live tail from /api/v1/events/stream (server-sent events) with filters by type,
// framework, agent and task, pause/resume, paging back through history, a jump to an index, and a notice
// when the client asked for events that retention no longer keeps (the stream's `gap` message, or 410).

import { h, idLink, replace, fmtTime } from "../dom.js";
import { api, ApiError, eventStream } from "../api.js";
import { errorView } from "../views.js";

const KEEP_ROWS = 500; // rows kept on screen while tailing; older ones are a click on "Older" away
const FILTERS = ["type", "framework", "agent", "task"];

function compact(value, depth = 0) {
  if (value === null || value === undefined) return "";
  if (typeof value !== "object") return String(value);
  if (depth > 2) return "…";
  if (Array.isArray(value)) return `[${value.slice(0, 4).map((v) => compact(v, depth + 1)).join(", ")}${value.length > 4 ? ", …" : ""}]`;
  return Object.entries(value).filter(([, v]) => v !== "" && v !== null && v !== undefined && !(Array.isArray(v) && !v.length))
    .slice(0, 8).map(([k, v]) => `${k}=${compact(v, depth + 1)}`).join(" ");
}

// One line about an event: the status of a status update, else its payload compacted.
export function eventSummary(e) {
  const p = e.payload || {};
  if (p.status && p.status.state) {
    return [p.status.state, p.status.reason, p.status.message].filter(Boolean).join(" · ");
  }
  if (p.task && p.task.task_id) {
    const r = Object.fromEntries((p.task.resources || []).filter((x) => x.scalar).map((x) => [x.name, x.scalar]));
    return compact({ name: p.task.name, ...r });
  }
  const rest = { ...p };
  for (const key of ["framework_id", "agent_id", "task_id"]) delete rest[key];
  const text = compact(rest);
  return text.length > 160 ? `${text.slice(0, 160)}…` : text;
}

function row(e) {
  const ids = (kind, id) => id ? idLink(`/${kind}/${encodeURIComponent(id)}`, id) : "";
  const taskLink = e.task_id
    ? idLink(`/tasks/${encodeURIComponent(e.framework_id ? `${e.framework_id}/${e.task_id}` : e.task_id)}`, e.task_id)
    : "";
  return h("tr", { "data-seq": e.seq, "data-type": e.type, "data-task": e.task_id || "" },
    h("td", { class: "num" }, `#${e.seq}`),
    h("td", { class: "muted" }, fmtTime(e.time)),
    h("td", {}, e.type),
    h("td", {}, ids("frameworks", e.framework_id)),
    h("td", {}, ids("agents", e.agent_id)),
    h("td", {}, taskLink),
    h("td", { class: "payload", title: JSON.stringify(e.payload) }, eventSummary(e)));
}

export async function eventsPage(view, _params, { signal, query }) {
  const filters = Object.fromEntries(FILTERS.map((f) => [f, query.get(f) || ""]));
  const jump = query.get("around") || query.get("at") || "";
  let live = !jump;
  let pausedTail = false; // paused from the live tail (resume goes on from there)
  let source = null;
  let lastSeq = 0;
  let firstSeq = 0;
  let head = 0;

  const rows = h("tbody");
  const notices = h("div", { "aria-live": "polite" });
  const status = h("span", { "data-testid": "events-status" });
  const pauseBtn = h("button", { type: "button", "data-testid": "events-pause" });
  const olderBtn = h("button", { type: "button" }, "‹ Older");
  const newerBtn = h("button", { type: "button" }, "Newer ›");
  const jumpInput = h("input", { type: "text", name: "jump", value: jump, size: 10, placeholder: "index",
                                 "aria-label": "Event index to jump to", inputmode: "numeric" });

  function saveUrl(extra = {}) {
    const q = new URLSearchParams();
    for (const f of FILTERS) if (filters[f]) q.set(f, filters[f]);
    for (const [k, v] of Object.entries(extra)) if (v) q.set(k, v);
    const text = q.toString();
    history.replaceState(null, "", `/events${text ? `?${text}` : ""}`);
  }

  function drawStatus() {
    replace(status, live
      ? [h("span", { class: "live-dot", "aria-hidden": "true" }), "live", head ? ` · log head #${head}` : ""]
      : [h("span", { class: "live-dot paused", "aria-hidden": "true" }), "paused", head ? ` · log head #${head}` : ""]);
    replace(pauseBtn, live ? "Pause" : "Resume live tail");
  }

  function notice(kind, text) {
    notices.append(h("div", { class: `notice ${kind}`, role: kind === "warn" ? "alert" : "status",
                              "data-testid": kind === "warn" ? "events-gap" : null }, text));
  }

  function show(items, { append = false } = {}) {
    if (!append) replace(rows);
    const empty = rows.querySelector("td.empty");
    if (empty) empty.closest("tr").remove();
    for (const e of items) rows.append(row(e));
    while (rows.children.length > KEEP_ROWS) rows.firstElementChild.remove();
    const first = rows.firstElementChild;
    const last = rows.lastElementChild;
    firstSeq = first ? Number(first.dataset.seq) : firstSeq;
    lastSeq = last ? Number(last.dataset.seq) : lastSeq;
    if (!rows.children.length) rows.append(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No events match.")));
  }

  function params(extra) {
    const p = { ...extra };
    for (const f of FILTERS) if (filters[f]) p[f] = filters[f];
    return p;
  }

  function stopStream() {
    if (source) source.close();
    source = null;
  }

  function startStream() {
    stopStream();
    source = eventStream(params({ from: lastSeq + 1 }), {
      onEvent: (e) => {
        head = Math.max(head, e.seq);
        show([e], { append: true });
        if (live) rows.lastElementChild.scrollIntoView({ block: "nearest" });
        drawStatus();
      },
      onHeartbeat: (hb) => { head = hb.last_index; drawStatus(); },
      onGap: (g) => notice("warn", `Fell behind what is kept: events from #${g.requested} to #${g.first_index - 1} ` +
                                    `were removed by retention; the tail goes on from #${g.first_index}. ${g.message || ""}`),
    });
  }

  async function load(p) {
    try {
      const page = await api.events(params(p), { signal });
      head = page.last_index;
      return page;
    } catch (err) {
      if (err.name === "AbortError") throw err;
      if (err instanceof ApiError && err.code === "history_pruned") {
        notice("warn", `Those events are no longer kept: the log starts at #${err.extra.first_index}.`);
      } else {
        replace(notices, errorView(err));
      }
      return null;
    }
  }

  async function goLive() {
    live = true;
    saveUrl();
    const page = await load({ limit: 100 });
    if (page) {
      show(page.items);
      lastSeq = Math.max(lastSeq, page.last_index);
    }
    startStream();
    drawStatus();
  }

  async function jumpTo(text) {
    const n = text.trim().replace(/^#/, "");
    if (!/^\d{1,19}$/.test(n)) {
      replace(notices, h("div", { class: "notice error", role: "alert", "data-testid": "error" },
        `"${text}" is not an event index: give a number such as 42 or #42.`));
      return;
    }
    replace(notices);
    live = false;
    pausedTail = false;
    stopStream();
    saveUrl({ around: n });
    const page = await load({ after: Math.max(0, Number(n) - 1), limit: 100 });
    if (page) show(page.items);
    drawStatus();
  }

  // Pause keeps the place: resuming streams from the first event not shown (what happened meanwhile
  // arrives in order, or the gap notice says retention removed it). After paging or a jump, resuming
  // starts again at the head of the log.
  pauseBtn.addEventListener("click", () => {
    if (live) {
      live = false; pausedTail = true; stopStream(); saveUrl(); drawStatus();
    } else if (pausedTail) {
      live = true; pausedTail = false; replace(notices); startStream(); drawStatus();
    } else {
      replace(notices); goLive();
    }
  });
  olderBtn.addEventListener("click", async () => {
    live = false; pausedTail = false; stopStream(); drawStatus();
    const page = await load({ before: firstSeq || head + 1, limit: 100 });
    if (page) show(page.items);
  });
  newerBtn.addEventListener("click", async () => {
    live = false; pausedTail = false; stopStream(); drawStatus();
    const page = await load({ after: lastSeq, limit: 100 });
    if (page && page.items.length) show(page.items);
  });

  const filterInputs = FILTERS.map((f) => {
    let timer = null;
    return h("label", {}, f === "type" ? "Types (comma-separated)" : f,
      h("input", { type: "search", name: f, value: filters[f],
                   placeholder: f === "type" ? "TaskLaunched,TaskStatusUpdated" : `${f} id`,
                   oninput: (e) => {
                     clearTimeout(timer);
                     timer = setTimeout(() => {
                       filters[f] = e.target.value.trim();
                       lastSeq = 0;
                       replace(notices);
                       if (live) goLive(); else jumpTo(String(firstSeq || 1));
                     }, 300);
                   } }));
  });

  replace(view,
    h("h1", {}, "Event log"),
    h("div", { class: "toolbar" }, filterInputs,
      h("form", { onsubmit: (e) => { e.preventDefault(); jumpTo(jumpInput.value); }, style: "display:flex;gap:6px;align-items:end" },
        h("label", {}, "Jump to index", jumpInput), h("button", { type: "submit" }, "Go")),
      pauseBtn, olderBtn, newerBtn, status),
    notices,
    h("div", { class: "table-wrap" }, h("table", { class: "events-list", "data-testid": "events-table" },
      h("thead", {}, h("tr", {}, ["Index", "Time (UTC)", "Type", "Framework", "Agent", "Task", "Details"]
        .map((t, i) => h("th", { scope: "col", class: i === 0 ? "num" : "" }, t)))),
      rows)));
  drawStatus();
  if (jump) await jumpTo(jump);
  else await goLive();
  return stopStream;
}

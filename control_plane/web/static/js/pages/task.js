// One task: its facts, status history, timeline (the events about it and the gaps between them), its
// trace as a waterfall (framework call → master → Raft commit → agent → process) and its output's tail.

import { h, link, replace, fmtTime, fmtDuration, fmtResource } from "../dom.js";
import { api, ApiError } from "../api.js";
import { errorView, facts, loading, notLeaderView, pageHeader, stateBadge } from "../views.js";
import { eventSummary } from "./events.js";

function statusTable(statuses) {
  if (!statuses || !statuses.length) return h("p", { class: "muted" }, "No status updates recorded.");
  return h("div", { class: "table-wrap" }, h("table", { "data-testid": "task-statuses" },
    h("thead", {}, h("tr", {}, ["Index", "Time", "State", "Source", "Reason", "Message"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, statuses.map((s) => h("tr", {},
      h("td", {}, link(`/events?around=${s.index}`, `#${s.index}`)),
      h("td", { class: "nowrap" }, fmtTime(s.time)),
      h("td", {}, stateBadge(s.state), s.healthy === true ? " healthy" : s.healthy === false ? " unhealthy" : ""),
      h("td", { class: "muted" }, (s.source || "").replace(/^SOURCE_/, "").toLowerCase() || "–"),
      h("td", { class: "muted" }, (s.reason || "").replace(/^REASON_/, "").toLowerCase() || "–"),
      h("td", {}, s.message || ""))))));
}

function timelineView(data) {
  const items = data.items || [];
  if (!items.length) return h("p", { class: "muted" }, "No events name this task.");
  const maxGap = Math.max(0.001, ...items.map((e) => e.gap_seconds || 0));
  return [
    h("ol", { class: "timeline", "data-testid": "task-timeline" }, items.map((e) => h("li", {},
      h("span", {}, link(`/events?around=${e.seq}`, `#${e.seq}`)),
      h("span", { class: "muted" }, fmtTime(e.time)),
      h("span", { class: "gap", title: "time since the previous event" },
        e.gap_seconds === null || e.gap_seconds === undefined ? "start"
          : [h("i", { style: `width:${Math.max(2, Math.round(60 * Math.sqrt(e.gap_seconds / maxGap)))}px` }),
             `+${fmtDuration(e.gap_seconds)}`]),
      h("span", {}, h("strong", {}, e.type), " ", h("span", { class: "muted" }, eventSummary(e)))))),
    data.truncated ? h("p", { class: "muted" }, "Only the first 10,000 events are shown.") : null,
  ];
}

function waterfall(trace) {
  const spans = trace.spans || [];
  const start = Math.min(trace.start, ...spans.map((s) => s.start));
  const end = Math.max(trace.end, ...spans.map((s) => s.end));
  const total = Math.max(1e-6, end - start);
  const ids = new Set(spans.map((s) => s.span_id));
  const depth = new Map();
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const depthOf = (s, seen = 0) => {
    if (depth.has(s.span_id)) return depth.get(s.span_id);
    const parent = s.parent_span_id && ids.has(s.parent_span_id) && seen < 50 ? byId.get(s.parent_span_id) : null;
    const d = parent ? depthOf(parent, seen + 1) + 1 : 0;
    depth.set(s.span_id, d);
    return d;
  };
  return h("div", { class: "panel waterfall", "data-testid": "trace-waterfall", "data-trace": trace.trace_id,
                    style: "margin-bottom:10px" },
    h("h2", {}, "Trace ", h("code", {}, trace.trace_id), h("span", { class: "muted" }, ` · ${fmtDuration(total)}`)),
    spans.map((s) => {
      const left = ((s.start - start) / total) * 100;
      const width = Math.max(0.3, ((s.end - s.start) / total) * 100);
      const raft = s.name === "raft.commit";
      const attrs = Object.entries(s.attributes || {}).map(([k, v]) => `${k}=${v}`).join(" ");
      return h("div", { class: `span-row${raft ? " raft" : ""}${s.status === "ERROR" ? " error" : ""}`,
                        "data-span": s.name, title: `${s.name} (${s.service}) ${attrs}` },
        h("span", { class: "span-name", style: `padding-left:${depthOf(s) * 14}px` },
          s.name, " ", h("span", { class: "muted" }, s.service),
          raft && s.attributes && s.attributes["raft.index"] !== undefined
            ? h("span", { class: "muted", title: "raft index" }, ` @${s.attributes["raft.index"]}`) : null),
        h("span", { class: "lane" }, h("b", { style: `left:${left.toFixed(2)}%;width:${width.toFixed(2)}%` })),
        h("span", { class: "num muted" }, fmtDuration(s.duration_ms / 1000)));
    }));
}

async function fill(box, promise, draw, what) {
  replace(box, loading());
  try {
    replace(box, draw(await promise));
  } catch (err) {
    if (err.name === "AbortError") return;
    if (err instanceof ApiError && err.code === "not_leader") replace(box, notLeaderView(err, what));
    else if (err instanceof ApiError && err.status === 404) replace(box, h("p", { class: "muted" }, err.message));
    else replace(box, errorView(err));
  }
}

function outputView(out) {
  return [
    out.truncated ? h("p", { class: "muted" }, `… the last ${out.data.length} characters of ${out.size} bytes`) : null,
    h("pre", { class: "tail", "data-testid": `output-${out.stream}` }, out.data || h("span", { class: "muted" }, "(empty)")),
  ];
}

// Spans are kept by the leader only: a follower links to the leader's page instead of asking (its 503
// would be a failed request in the console).
async function traceOrLink(ref, signal) {
  const here = await api.cluster({ signal });
  if (here.master && !here.master.is_leader) {
    throw new ApiError(503, "not_leader", "traces are kept by the leader", null,
                       { leader_url: here.leader ? here.leader.ui_url : null });
  }
  return api.trace(ref, { signal });
}

export async function taskPage(view, [ref], { signal }) {
  const task = await api.task(ref, { signal });
  const res = task.resources || {};
  const timelineBox = h("div");
  const traceBox = h("div");
  const stdoutBox = h("div");
  const stderrBox = h("div");
  replace(view,
    pageHeader(`Task ${task.id}`, [link("/tasks", "Tasks"), task.ref]),
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", {}, "Task"), facts([
        ["Id", h("code", { "data-testid": "task-ref" }, task.ref)],
        ["Name", task.name || "–"],
        ["State", [stateBadge(task.state), task.completed ? h("span", { class: "muted" }, " (completed)") : null]],
        task.message ? ["Message", task.message] : null,
        task.reason ? ["Reason", task.reason] : null,
        ["Framework", task.framework ? link(`/frameworks/${encodeURIComponent(task.framework.id)}`,
          task.framework.name || task.framework.id) : task.framework_id],
        ["Agent", task.agent ? link(`/agents/${encodeURIComponent(task.agent.id)}`, task.agent.hostname || task.agent.id)
          : task.agent_id || "–"],
        ["Role", task.role || "–"],
        ["Resources", ["cpus", "mem", "disk"].filter((n) => res[n]).map((n) => `${n} ${fmtResource(n, res[n])}`).join(" · ") || "–"],
        ["Launched", fmtTime(task.launched_at)],
        ["Updated", fmtTime(task.updated_at)],
        ["Events", link(`/events?task=${encodeURIComponent(task.id)}`, "this task's events")],
      ])),
      h("section", { class: "panel" }, h("h2", {}, "Status history"), statusTable(task.statuses))),
    h("section", { class: "panel", style: "margin-top:14px" }, h("h2", {}, "Timeline"), timelineBox),
    h("section", { style: "margin-top:14px" }, h("h2", {}, "Trace"), traceBox),
    h("div", { class: "grid", style: "margin-top:14px" },
      h("section", { class: "panel" }, h("h2", {}, "stdout (tail)"), stdoutBox),
      h("section", { class: "panel" }, h("h2", {}, "stderr (tail)"), stderrBox)));
  await Promise.all([
    fill(timelineBox, api.timeline(task.ref, { signal }), timelineView, "Timelines"),
    fill(traceBox, traceOrLink(task.ref, signal),
      (t) => (t.traces || []).length ? t.traces.map(waterfall) : h("p", { class: "muted" }, "No spans."), "Traces"),
    fill(stdoutBox, api.output(task.ref, "stdout", { signal }), outputView, "Outputs"),
    fill(stderrBox, api.output(task.ref, "stderr", { signal }), outputView, "Outputs"),
  ]);
}

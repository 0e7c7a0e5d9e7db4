// Tasks: sorted, filtered and paged by the server; kept current without a reload — the live event stream
// says when a task changed (the table reloads its one page), and a slow poll covers a stream that is down.

import { h, idLink, link, replace, fmtTime } from "../dom.js";
import { api, eventStream } from "../api.js";
import { serverTable } from "../table.js";
import { stateBadge } from "../views.js";

export function taskHref(item) {
  return `/tasks/${encodeURIComponent(item.ref)}`;
}

export const TASK_STATES = [["", "any"], ["active", "active"], ["terminal", "terminal"], ["running", "running"],
  ["staging", "staging"], ["starting", "starting"], ["killing", "killing"], ["finished", "finished"],
  ["failed", "failed"], ["killed", "killed"], ["lost", "lost"], ["unreachable", "unreachable"]];

export function taskColumns({ withFramework = true, withAgent = true } = {}) {
  return [
    { key: "id", label: "Task", sort: "id", cell: (t) => [link(taskHref(t), t.id), t.name && t.name !== t.id
      ? h("div", { class: "muted" }, t.name) : null] },
    { key: "state", label: "State", sort: "state", cell: (t) => [stateBadge(t.state),
      t.healthy === true ? h("span", { class: "state ok" }, "healthy") : t.healthy === false
        ? h("span", { class: "state bad" }, "unhealthy") : null] },
    withFramework && { key: "framework", label: "Framework", sort: "framework",
      cell: (t) => idLink(`/frameworks/${encodeURIComponent(t.framework_id)}`, t.framework_id) },
    withAgent && { key: "agent", label: "Agent", sort: "agent",
      cell: (t) => t.agent_id ? idLink(`/agents/${encodeURIComponent(t.agent_id)}`, t.agent_id) : "–" },
    { key: "cpus", label: "CPUs", sort: "cpus", num: true, cell: (t) => (t.resources || {}).cpus ?? "–" },
    { key: "mem", label: "Mem", sort: "mem", num: true, cell: (t) => (t.resources || {}).mem ? `${t.resources.mem} MiB` : "–" },
    { key: "launched_at", label: "Launched", sort: "launched_at", defaultOrder: "desc", cell: (t) => fmtTime(t.launched_at) },
    { key: "updated_at", label: "Updated", sort: "updated_at", defaultOrder: "desc", cell: (t) => fmtTime(t.updated_at) },
  ].filter(Boolean);
}

// Reload `table` when an event about a task arrives (debounced), and at least every `pollMs`.
export function keepCurrent(table, signal, { fixed = {}, pollMs = 5000 } = {}) {
  let timer = null;
  const soon = () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; table.load(); }, 150);
  };
  const source = eventStream(fixed, { onEvent: (e) => { if (e.task_id || e.type.startsWith("Task")) soon(); } });
  const poll = setInterval(() => table.load(), pollMs);
  const stop = () => { source.close(); clearInterval(poll); clearTimeout(timer); };
  signal.addEventListener("abort", stop);
  return stop;
}

export async function tasksPage(view, _params, { signal }) {
  const box = h("div");
  replace(view, h("h1", {}, "Tasks"), box);
  const table = serverTable(box, {
    testid: "tasks-table",
    columns: taskColumns(),
    filters: [
      { name: "q", label: "Search", type: "search", placeholder: "task, name, framework or agent id" },
      { name: "state", label: "State", type: "select", options: TASK_STATES },
    ],
    fetchPage: (q, sig) => api.tasks(q, { signal: sig }),
    defaultSort: "launched_at",
    defaultOrder: "desc",
    empty: "No tasks match.",
  }, signal);
  await table.load();
  return keepCurrent(table, signal);
}

// The tasks of one agent or one framework (`fixed`: {agent: ID} or {framework: ID}) on its page, kept current.
export async function tasksOf(box, fixed, { testid, empty }, signal) {
  const table = serverTable(box, {
    testid,
    columns: taskColumns({ withAgent: !fixed.agent, withFramework: !fixed.framework }),
    filters: [{ name: "state", label: "State", type: "select", options: TASK_STATES }],
    fetchPage: (q, sig) => api.tasks(q, { signal: sig }),
    fixed,
    defaultSort: "launched_at",
    defaultOrder: "desc",
    empty,
  }, signal);
  await table.load();
  return keepCurrent(table, signal, { fixed });
}

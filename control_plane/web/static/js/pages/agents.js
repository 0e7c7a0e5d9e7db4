// Agents: the table (server-side sort, filter, pages) with resource bars, and one agent's page with its
// resources and its tasks.

import { h, idLink, link, replace, fmtTime, fmtDuration } from "../dom.js";
import { api } from "../api.js";
import { resourceBar } from "../charts.js";
import { serverTable } from "../table.js";
import { facts, pageHeader, stateBadge } from "../views.js";
import { tasksOf } from "./tasks.js";

const AGENT_STATES = [["", "any"], ["active", "active"], ["draining", "draining"], ["unreachable", "unreachable"],
  ["removed", "removed"]];

function usage(item, name) {
  return resourceBar(name, (item.used || {})[name] || 0, (item.total || {})[name] || 0, { compact: true });
}

function usageCell(item, name) {
  const used = (item.used || {})[name] || 0;
  const total = (item.total || {})[name] || 0;
  return h("span", {}, usage(item, name), h("span", { class: "muted" }, ` ${Math.round(used * 100) / 100}/${total}`));
}

export async function agentsPage(view, _params, { signal }) {
  const box = h("div");
  replace(view, h("h1", {}, "Agents"), box);
  const table = serverTable(box, {
    testid: "agents-table",
    columns: [
      { key: "id", label: "Agent", sort: "id", cell: (a) => idLink(`/agents/${encodeURIComponent(a.id)}`, a.id) },
      { key: "hostname", label: "Host", sort: "hostname", cell: (a) => a.hostname },
      { key: "state", label: "State", sort: "state", cell: (a) => [stateBadge(a.state),
        a.draining ? h("span", { class: "state warn" }, "draining") : null] },
      { key: "tasks", label: "Tasks", sort: "tasks", num: true,
        cell: (a) => link(`/tasks?q=${encodeURIComponent(a.id)}`, String(a.tasks)) },
      { key: "cpus", label: "CPUs", sort: "cpus", cell: (a) => usageCell(a, "cpus") },
      { key: "mem", label: "Mem (MiB)", sort: "mem", cell: (a) => usageCell(a, "mem") },
      { key: "registered_at", label: "Registered", sort: "registered_at", defaultOrder: "desc",
        cell: (a) => fmtTime(a.registered_at) },
    ],
    filters: [
      { name: "q", label: "Search", type: "search", placeholder: "id or hostname" },
      { name: "state", label: "State", type: "select", options: AGENT_STATES },
    ],
    fetchPage: (q, sig) => api.agents(q, { signal: sig }),
    defaultSort: "id",
  }, signal);
  await table.load();
  const poll = setInterval(() => table.load(), 3000);
  return () => clearInterval(poll);
}

export async function agentPage(view, [id], { signal }) {
  const agent = await api.agent(id, { signal });
  const total = agent.total || {};
  const used = agent.used || {};
  const tasksBox = h("div");
  replace(view,
    pageHeader(`Agent ${agent.hostname || agent.id}`, [link("/agents", "Agents"), agent.id]),
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", {}, "Agent"), facts([
        ["Id", h("code", {}, agent.id)],
        ["Hostname", agent.hostname],
        ["State", [stateBadge(agent.state), agent.draining ? h("span", { class: "state warn" }, "draining") : null]],
        ["Registered", fmtTime(agent.registered_at)],
        agent.connected !== null && agent.connected !== undefined
          ? ["Connected", agent.connected ? `yes (heartbeat ${fmtDuration(agent.last_heartbeat_age)} ago)` : "no"]
          : ["Connected", h("span", { class: "muted" }, "known to the leader only")],
        ["File service", agent.files_address || "–"],
        ["Attributes", Object.entries(agent.attributes || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "–"],
      ])),
      h("section", { class: "panel" }, h("h2", {}, "Resources"),
        ["cpus", "mem", "disk"].filter((n) => total[n]).map((n) => resourceBar(n, used[n] || 0, total[n])),
        (total.ports || []).length ? h("p", { class: "muted" }, "ports ",
          total.ports.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(", ")) : null)),
    h("h2", { style: "margin-top:16px" }, "Tasks on this agent"), tasksBox);
  return tasksOf(tasksBox, { agent: agent.id }, { testid: "agent-tasks", empty: "No tasks on this agent." }, signal);
}

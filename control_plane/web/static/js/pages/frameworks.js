// Frameworks: the table and one framework's page with its allocation and its tasks.

import { h, idLink, link, replace, fmtTime, fmtResource } from "../dom.js";
import { api } from "../api.js";
import { serverTable } from "../table.js";
import { facts, pageHeader, stateBadge } from "../views.js";
import { tasksOf } from "./tasks.js";

const FRAMEWORK_STATES = [["", "any"], ["connected", "connected"], ["disconnected", "disconnected"],
  ["removed", "removed"]];

function resourcesText(r) {
  const parts = ["cpus", "mem", "disk"].filter((n) => r && r[n]).map((n) => `${n} ${fmtResource(n, r[n])}`);
  return parts.join(" · ") || "–";
}

export async function frameworksPage(view, _params, { signal }) {
  const box = h("div");
  replace(view, h("h1", {}, "Frameworks"), box);
  const table = serverTable(box, {
    testid: "frameworks-table",
    columns: [
      { key: "id", label: "Framework", sort: "id",
        cell: (f) => idLink(`/frameworks/${encodeURIComponent(f.id)}`, f.id) },
      { key: "name", label: "Name", sort: "name", cell: (f) => f.name },
      { key: "state", label: "State", sort: "state", cell: (f) => stateBadge(f.state) },
      { key: "roles", label: "Roles", cell: (f) => (f.roles || []).join(", ") },
      { key: "principal", label: "Principal", cell: (f) => f.principal || "–" },
      { key: "tasks", label: "Tasks", sort: "tasks", num: true,
        cell: (f) => link(`/frameworks/${encodeURIComponent(f.id)}`, String(f.tasks)) },
      { key: "cpus", label: "CPUs used", sort: "cpus", num: true, cell: (f) => (f.used || {}).cpus ?? 0 },
      { key: "mem", label: "Mem used", sort: "mem", num: true, cell: (f) => fmtResource("mem", (f.used || {}).mem || 0) },
      { key: "subscribed_at", label: "Subscribed", sort: "subscribed_at", defaultOrder: "desc",
        cell: (f) => fmtTime(f.subscribed_at) },
    ],
    filters: [
      { name: "q", label: "Search", type: "search", placeholder: "id or name" },
      { name: "state", label: "State", type: "select", options: FRAMEWORK_STATES },
    ],
    fetchPage: (q, sig) => api.frameworks(q, { signal: sig }),
    defaultSort: "id",
  }, signal);
  await table.load();
  const poll = setInterval(() => table.load(), 3000);
  return () => clearInterval(poll);
}

export async function frameworkPage(view, [id], { signal }) {
  const fw = await api.framework(id, { signal });
  const tasksBox = h("div");
  replace(view,
    pageHeader(`Framework ${fw.name || fw.id}`, [link("/frameworks", "Frameworks"), fw.id]),
    h("section", { class: "panel" }, facts([
      ["Id", h("code", {}, fw.id)],
      ["Name", fw.name],
      ["State", stateBadge(fw.state)],
      ["Principal", fw.principal || "–"],
      ["Roles", (fw.roles || []).join(", ") || "–"],
      ["Suppressed", (fw.suppressed_roles || []).join(", ") || "–"],
      ["Subscribed", fmtTime(fw.subscribed_at)],
      fw.failover_deadline ? ["Failover deadline", fmtTime(fw.failover_deadline)] : null,
      ["Used", resourcesText(fw.used)],
      ["Offered", resourcesText(fw.offered)],
      ["Key/value state", `${fw.state_keys} keys, ${fw.state_bytes} bytes`],
      ["Events", link(`/events?framework=${encodeURIComponent(fw.id)}`, "this framework's events")],
    ])),
    h("h2", { style: "margin-top:16px" }, "Tasks"), tasksBox);
  return tasksOf(tasksBox, { framework: fw.id }, { testid: "framework-tasks", empty: "No tasks." }, signal);
}

// Services: the service framework's apps (desired vs running vs healthy, the deployment), and one app.

import { h, link, replace } from "../dom.js";
import { api } from "../api.js";
import { facts, pageHeader, stateBadge } from "../views.js";

function countBar(n, of) {
  return h("span", {}, h("meter", { min: 0, max: Math.max(1, of), value: n, "aria-label": `${n} of ${of}` }), ` ${n}/${of}`);
}

function servicesTable(data) {
  if (!data.framework_id) {
    return h("div", { class: "notice info", "data-testid": "services-none" },
      "No service framework is registered. Start one with ", h("code", {}, "tessera services"), " (docs/services.md).");
  }
  const items = data.items || [];
  return [
    h("p", { class: "muted" }, "Service framework ", link(`/frameworks/${encodeURIComponent(data.framework_id)}`, data.framework_id)),
    items.length ? h("div", { class: "table-wrap" }, h("table", { "data-testid": "services-table" },
      h("thead", {}, h("tr", {}, ["Service", "Wanted", "Running", "Healthy", "Deployment", "Version", "Why"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, items.map((s) => h("tr", {},
        h("td", {}, link(`/services/${encodeURIComponent(s.id)}`, s.id)),
        h("td", { class: "num" }, s.wanted),
        h("td", {}, countBar(s.running, s.wanted)),
        h("td", {}, countBar(s.healthy, s.wanted)),
        h("td", {}, stateBadge(s.deployment)),
        h("td", {}, h("code", {}, s.version || "–")),
        h("td", { class: "muted" }, [s.reason, s.unplaced].filter(Boolean).join(" · ") || ""))))))
      : h("p", { class: "muted" }, "No services defined."),
  ];
}

export async function servicesPage(view, _params, { signal }) {
  const box = h("div");
  replace(view, h("h1", {}, "Services"), box);
  const load = async () => replace(box, servicesTable(await api.services({ signal })));
  await load();
  const poll = setInterval(() => load().catch(() => {}), 3000);
  return () => clearInterval(poll);
}

export async function servicePage(view, [id], { signal }) {
  const data = await api.service(id, { signal });
  const st = data.status || {};
  replace(view,
    pageHeader(`Service ${data.id}`, [link("/services", "Services"), data.id]),
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", {}, "Status"), facts(Object.entries(st)
        .filter(([, v]) => typeof v !== "object" || v === null)
        .map(([k, v]) => [k, String(v ?? "–")]))),
      h("section", { class: "panel" }, h("h2", {}, "Definition"),
        h("pre", { class: "tail" }, JSON.stringify(data.definition, null, 2)))),
    Object.entries(st).filter(([, v]) => v && typeof v === "object").map(([k, v]) =>
      h("section", { class: "panel", style: "margin-top:14px" }, h("h2", {}, k), h("pre", { class: "tail" }, JSON.stringify(v, null, 2)))));
}

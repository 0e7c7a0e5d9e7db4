// Services: the service framework's apps (desired vs running vs healthy, the deployment), and one app.

import { h, link, replace, fmtTime } from "../dom.js";
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

function deploymentFacts(d) {
  if (!d) return h("p", { class: "muted" }, "No deployment.");
  return facts([
    ["State", stateBadge(d.state)],
    ["Version", h("code", {}, d.version || "–")],
    ["Steps", d.steps ?? "–"],
    ["Started", fmtTime(d.started)],
    ["Finished", d.finished ? fmtTime(d.finished) : "–"],
    d.reason ? ["Reason", d.reason] : null,
  ]);
}

function instancesTable(instances, frameworkId) {
  if (!instances || !instances.length) return h("p", { class: "muted" }, "No instances.");
  return h("div", { class: "table-wrap" }, h("table", { "data-testid": "service-instances" },
    h("thead", {}, h("tr", {}, ["Task", "Agent", "State", "Health", "Version", "Launched"].map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, instances.map((i) => h("tr", {},
      h("td", {}, frameworkId ? link(`/tasks/${encodeURIComponent(`${frameworkId}/${i.task_id}`)}`, i.task_id) : i.task_id),
      h("td", {}, i.agent_id ? link(`/agents/${encodeURIComponent(i.agent_id)}`, i.hostname || i.agent_id) : "–"),
      h("td", {}, stateBadge(i.state), i.killing ? h("span", { class: "state warn" }, "killing") : null),
      h("td", {}, i.healthy === true ? h("span", { class: "state ok" }, "healthy")
        : i.healthy === false ? h("span", { class: "state bad" }, "unhealthy") : h("span", { class: "muted" }, "–")),
      h("td", {}, h("code", {}, i.version || "–")),
      h("td", { class: "nowrap" }, fmtTime(i.launched_at)))))));
}

export async function servicePage(view, [id], { signal }) {
  const [data, list] = await Promise.all([api.service(id, { signal }), api.services({ signal })]);
  const st = data.status || {};
  const history = st.history || [];
  replace(view,
    pageHeader(`Service ${data.id}`, [link("/services", "Services"), data.id]),
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", {}, "Status"), facts([
        ["Wanted", st.wanted ?? "–"],
        ["Running", st.running !== undefined ? countBar(st.running, st.wanted || 0) : "–"],
        ["Healthy", st.healthy !== undefined ? countBar(st.healthy, st.wanted || 0) : "–"],
        ["Waiting", st.waiting ?? "–"],
        ["Failures", st.failures ?? "–"],
        ["Version", h("code", {}, st.version || "–")],
        st.unplaced ? ["Unplaced", st.unplaced] : null,
      ])),
      h("section", { class: "panel" }, h("h2", {}, "Deployment"), deploymentFacts(st.deployment))),
    h("section", { class: "panel", style: "margin-top:14px" }, h("h2", {}, "Instances"),
      instancesTable(st.instances, list.framework_id)),
    history.length ? h("section", { class: "panel", style: "margin-top:14px" }, h("h2", {}, "Deployment history"),
      history.map((d) => h("div", { style: "margin-bottom:8px" }, deploymentFacts(d)))) : null,
    h("section", { class: "panel", style: "margin-top:14px" }, h("h2", {}, "Definition"),
      h("pre", { class: "tail" }, JSON.stringify(data.definition, null, 2))));
}

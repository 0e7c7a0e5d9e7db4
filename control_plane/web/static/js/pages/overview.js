// Overview: the quorum (leader, term, each master's applied index), counts, resources used versus
// total, and the allocation share per role (weighted DRF dominant shares), redrawn on every
// /api/v1/cluster answer (once a second).

import { h, link, replace, fmtNumber } from "../dom.js";
import { resourceBar, shareChart } from "../charts.js";
import { cluster, onCluster } from "../cluster.js";
import { eventStream } from "../api.js";
import { errorView, loading, stateBadge } from "../views.js";

function quorumTable(data) {
  return h("table", { "data-testid": "quorum" },
    h("thead", {}, h("tr", {},
      ["Master", "Role", "Term", "Commit index", "Applied index", "Event index", "UI"].map((t, i) =>
        h("th", { scope: "col", class: i >= 2 && i <= 5 ? "num" : "" }, t)))),
    h("tbody", {}, (data.masters || []).map((m) => h("tr", { "data-master": m.name || m.grpc_address,
                                                            "data-leader": m.is_leader ? "true" : "false" },
      h("td", {}, h("strong", {}, m.name || m.grpc_address), m.is_self ? h("span", { class: "muted" }, " (this one)") : null,
        h("div", { class: "muted mono" }, m.grpc_address)),
      h("td", {}, !m.reachable ? h("span", { class: "state bad", title: m.error }, "unreachable")
        : m.is_leader ? h("span", { class: "state ok" }, "leader") : h("span", { class: "state" }, "follower")),
      h("td", { class: "num" }, m.reachable ? m.term : "–"),
      h("td", { class: "num" }, m.reachable ? fmtNumber(m.commit_index) : "–"),
      h("td", { class: "num" }, m.reachable ? fmtNumber(m.applied_index) : "–"),
      h("td", { class: "num" }, m.reachable ? fmtNumber(m.event_index) : "–"),
      h("td", {}, m.ui_url && !m.is_self ? h("a", { href: m.ui_url }, "open") : "")))));
}

function byState(map) {
  const entries = Object.entries(map || {}).sort((a, b) => b[1] - a[1]);
  if (!entries.length) return null;
  return h("div", { class: "muted" }, entries.map(([state, n], i) => [i ? " · " : "", stateBadge(state), ` ${n}`]));
}

function counts(data) {
  const c = data.counts || {};
  const item = (n, what, href, detail) => h("div", { class: "count" },
    h("span", { class: "n", "data-testid": `count-${what}` }, fmtNumber(n ?? 0)),
    href ? link(href, what) : h("span", { class: "what" }, what), detail);
  return h("div", { class: "counts" },
    item(c.agents, "agents", "/agents", byState(c.agents_by_state)),
    item(c.frameworks, "frameworks", "/frameworks", byState(c.frameworks_by_state)),
    item(c.tasks, "tasks", "/tasks", byState(c.tasks_by_state)),
    item(c.offers, "offers", null, null));
}

function resources(data) {
  const r = data.resources || {};
  return ["cpus", "mem", "disk"].filter((name) => r[name]).map((name) =>
    h("div", {}, resourceBar(name, r[name].used, r[name].total),
      r[name].offered ? h("div", { class: "muted", style: "margin-left:54px;font-size:12px" },
        `offered: ${fmtNumber(r[name].offered, 2)}`) : null));
}

function roles(data) {
  const rows = (data.roles || []).map((r) => ({ label: `${r.role} (w ${fmtNumber(r.weight, 2)})`, share: r.dominant_share }));
  return shareChart(rows, { title: "Weighted DRF dominant share per role" });
}

export async function overviewPage(view, _params, { signal }) {
  const leaderLine = h("p", { "data-testid": "overview-leader" });
  const quorum = h("div", { class: "table-wrap" });
  const countBox = h("div");
  const resBox = h("div");
  const roleBox = h("div");
  const errorBox = h("div");
  replace(view,
    h("h1", {}, "Overview"),
    errorBox,
    h("section", { class: "panel", style: "margin-bottom:14px" }, h("h2", {}, "Quorum"), leaderLine, quorum),
    h("div", { style: "margin-bottom:14px" }, countBox),
    h("div", { class: "grid" },
      h("section", { class: "panel" }, h("h2", {}, "Resources used"), resBox),
      h("section", { class: "panel" }, h("h2", {}, "Allocation by role"), roleBox)));
  replace(quorum, loading());

  const stop = onCluster((data, err) => {
    if (signal.aborted) return;
    if (!data) {
      replace(errorBox, errorView(err));
      return;
    }
    replace(errorBox);
    const leader = data.leader;
    replace(leaderLine, leader
      ? ["Leader: ", h("strong", { "data-testid": "overview-leader-name" }, leader.name || leader.grpc_address),
         ` · term ${data.master ? data.master.term : "?"} · ${(data.masters || []).length} masters`]
      : h("strong", { class: "lag-bad", "data-testid": "overview-leader-name" }, "No leader known"));
    replace(quorum, quorumTable(data));
    replace(countBox, counts(data));
    replace(resBox, resources(data));
    replace(roleBox, roles(data));
  });
  // A new leader is an event in the log: show it as soon as it is committed, not at the next answer.
  const elected = eventStream({ type: "LeaderElected" }, {
    onEvent: (e) => cluster.leaderElected && cluster.leaderElected(e.payload),
  });
  return () => { stop(); elected.close(); };
}

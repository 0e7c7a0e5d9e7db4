// Views every page shares: not found, errors, loading, state badges, key/value facts.

import { h, link } from "./dom.js";

export function notFoundView(message) {
  return h("section", { class: "panel", "data-testid": "not-found" },
    h("h1", {}, "Not found"),
    h("p", {}, message || "Nothing here."),
    h("p", {}, link("/", "Back to the overview"), " · ",
      h("a", { href: "#", onclick: (e) => { e.preventDefault(); history.back(); } }, "Go back")));
}

export function errorView(err) {
  const lines = [h("strong", {}, err.status ? `Error ${err.status}` : "Error"), ": ", err.message];
  if (err.field) lines.push(h("span", { class: "muted" }, ` (parameter ${err.field})`));
  return h("div", { class: "notice error", role: "alert", "data-testid": "error" }, lines);
}

// A "not leader" answer names the leader's UI: link to the same page there.
export function notLeaderView(err, what) {
  const url = err.extra && err.extra.leader_url;
  return h("div", { class: "notice info", role: "status" },
    `${what} are kept by the leading master only. `,
    url ? h("a", { href: new URL(location.pathname + location.search, url).href }, "Open this page on the leader")
      : "No leader is known right now.");
}

export function loading(text = "Loading…") {
  return h("p", { class: "muted", "aria-busy": "true" }, text);
}

const OK = new Set(["TASK_RUNNING", "TASK_FINISHED", "AGENT_ACTIVE", "FRAMEWORK_CONNECTED", "done", "finished", "succeeded"]);
const WARN = new Set(["TASK_STAGING", "TASK_STARTING", "TASK_KILLING", "TASK_UNREACHABLE", "AGENT_DRAINING",
                      "FRAMEWORK_DISCONNECTED", "AGENT_UNREACHABLE", "deploying", "running", "waiting"]);
const BAD = new Set(["TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR", "TASK_DROPPED", "TASK_GONE",
                     "AGENT_REMOVED", "FRAMEWORK_REMOVED", "failed"]);

export function stateBadge(state) {
  const text = (state || "?").replace(/^(TASK|AGENT|FRAMEWORK)_/, "").toLowerCase();
  const kind = OK.has(state) ? "ok" : WARN.has(state) ? "warn" : BAD.has(state) ? "bad" : "";
  return h("span", { class: `state ${kind}`, title: state }, text);
}

export function facts(rows) {
  return h("dl", { class: "facts" }, rows.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export function pageHeader(title, crumbs = []) {
  return [
    crumbs.length ? h("div", { class: "crumbs" }, crumbs.map((c, i) => [i ? " / " : "", c])) : null,
    h("h1", {}, title),
  ];
}

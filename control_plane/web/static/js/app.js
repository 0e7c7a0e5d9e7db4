// The single-page shell: routes on location.pathname (the server serves index.html for every UI route),
// keeps the master bar (which master answers, who leads, how far behind) and the insecure banner current,
// and gives each page a fresh <main> and an AbortSignal that fires when the user navigates away.

import { api, ApiError } from "./api.js";
import { h, replace } from "./dom.js";
import { routes } from "./routes.js";
import { cluster } from "./cluster.js";
import { notFoundView, errorView } from "./views.js";

const main = document.getElementById("main");
const bar = document.getElementById("master-bar");
const banner = document.getElementById("insecure-banner");
const logout = document.getElementById("logout");


let current = null; // { controller, cleanup }

function match(pathname) {
  for (const route of routes) {
    const m = route.pattern.exec(pathname);
    if (m) return { route, params: m.slice(1).map((p) => decodeURIComponent(p)) };
  }
  return null;
}

function markNav(name) {
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.dataset.nav === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

async function render() {
  if (current) {
    current.controller.abort();
    if (current.cleanup) current.cleanup();
  }
  const controller = new AbortController();
  current = { controller, cleanup: null };
  const found = match(location.pathname);
  const view = h("div", { class: "page" });
  replace(main, view);
  if (!found) {
    markNav(null);
    document.title = "Not found · Tessera";
    replace(view, notFoundView(`No page at ${location.pathname}.`));
    return;
  }
  markNav(found.route.nav);
  document.title = `${found.route.title} · Tessera`;
  const ctx = { signal: controller.signal, query: new URLSearchParams(location.search), cluster };
  try {
    const cleanup = await found.route.page(view, found.params, ctx);
    if (controller.signal.aborted) {
      if (cleanup) cleanup();
    } else {
      current.cleanup = cleanup || null;
    }
  } catch (err) {
    if (err.name === "AbortError" || controller.signal.aborted) return;
    replace(view, err instanceof ApiError && err.status === 404 ? notFoundView(err.message) : errorView(err));
  }
}

function navigate(href) {
  history.pushState(null, "", href);
  render();
  main.focus({ preventScroll: true });
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-link]");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", render);
window.addEventListener("tessera:navigate", (e) => navigate(e.detail));

// --- the master bar ----------------------------------------------------------------------------------

function masterBar(data) {
  const me = data.master || {};
  const leader = data.leader;
  const behind = data.behind;
  const others = (data.masters || []).filter((m) => !m.is_self && m.ui_url);
  return [
    h("span", {}, "On master ", h("strong", { "data-testid": "self-master" }, me.name || me.grpc_address || "?"),
      me.is_leader ? h("span", { class: "state ok" }, "leader") : h("span", { class: "state" }, "follower")),
    h("span", {}, "Leader ", leader
      ? (leader.ui_url && !me.is_leader
        ? h("a", { href: leader.ui_url, "data-testid": "leader-master" }, leader.name || leader.grpc_address)
        : h("strong", { "data-testid": "leader-master" }, leader.name || leader.grpc_address))
      : h("strong", { class: "lag-bad", "data-testid": "leader-master" }, "none known")),
    h("span", {}, "Term ", h("strong", {}, me.term ?? "–")),
    h("span", {}, "Event index ", h("strong", {}, data.index ?? "–")),
    h("span", {}, "Behind ", behind === null || behind === undefined
      ? h("strong", { class: "lag-bad" }, "unknown")
      : h("strong", { class: behind > 100 ? "lag-bad" : "" }, `${behind} event${behind === 1 ? "" : "s"}`)),
  ];
}

function lostBar(err) {
  const known = cluster.last ? (cluster.last.masters || []).filter((m) => !m.is_self && m.ui_url) : [];
  return [
    h("span", { class: "conn-lost" }, `Connection to this master lost (${err.message}).`),
    known.length ? h("span", {}, "Try another master: ",
      known.map((m, i) => [i ? ", " : "", h("a", { href: m.ui_url }, m.name || m.grpc_address)])) : null,
  ];
}

// Asked once a second, the next question a second after the last answer (a slow answer — a member not
// answering costs the server its probe's timeout — does not pile requests up); asked at once when a page
// knows something changed (cluster.refresh). An answer older than one already shown is dropped.
let asked = 0;
let shown = 0;
let timer = null;

async function refreshCluster() {
  const mine = ++asked;
  clearTimeout(timer);
  try {
    const data = withElected(await api.cluster());
    if (mine < shown) return;
    shown = mine;
    cluster.last = data;
    cluster.failed = false;
    banner.hidden = !data.insecure;
    logout.hidden = Boolean(data.insecure);
    replace(bar, masterBar(data));
    cluster.notify(data, null);
  } catch (err) {
    if (mine < shown) return;
    shown = mine;
    cluster.failed = true;
    replace(bar, lostBar(err));
    cluster.notify(null, err);
  } finally {
    if (mine === asked) timer = setTimeout(refreshCluster, 1000);
  }
}

// A LeaderElected event (the overview follows them) names the new leader as soon as the log has it; this
// master's own view of the quorum can lag it by a second or two. Until an answer reaches the event's term
// with the same leader, answers show the elected leader (never a flip back to the dead one).
let elected = null; // the latest LeaderElected payload not yet confirmed by an answer

function withElected(data) {
  if (!elected || !data || !data.master) return data;
  const term = data.master.term || 0;
  const agrees = data.leader && data.leader.grpc_address === elected.grpc_address;
  if (term > elected.term || (term === elected.term && agrees)) {
    elected = null;
    return data;
  }
  const member = (data.masters || []).find((m) => m.grpc_address === elected.grpc_address) || {};
  return {
    ...data,
    leader: { name: elected.name || member.name, grpc_address: elected.grpc_address, raft_address: elected.master,
              ui_url: member.ui_url || null },
    masters: (data.masters || []).map((m) => ({ ...m, is_leader: m.grpc_address === elected.grpc_address })),
    master: { ...data.master, is_leader: data.master.grpc_address === elected.grpc_address, term: elected.term },
    behind: null,
  };
}

function leaderElected(payload) {
  const term = Number(payload && payload.term);
  if (!payload || !payload.grpc_address || !(term > 0)) return refreshCluster();
  if (elected && elected.term >= term) return refreshCluster();
  elected = { ...payload, term };
  const data = withElected(cluster.last);
  if (!data) return refreshCluster();
  shown = asked;
  cluster.last = data;
  replace(bar, masterBar(data));
  cluster.notify(data, null);
  return refreshCluster();
}

refreshCluster();
cluster.refresh = refreshCluster;
cluster.leaderElected = leaderElected;
render();

// Time travel: the cluster as of a point in history (an event index, or a time) — the same answer as
// `tessera state --at POINT --json` (GET /api/v1/state) — and what changed between two points
// (`--diff`, GET /api/v1/diff). A slider moves over the indexes the answering master keeps, or over the
// times they were recorded (GET /api/v1/events' first_time/last_time; the point sent is `@<unix>`).

import { h, link, replace, fmtTime, fmtResource, shortId } from "../dom.js";
import { api, ApiError } from "../api.js";
import { errorView, loading, stateBadge } from "../views.js";

function scalar(resources, name) {
  const r = (resources || []).find((x) => x.name === name);
  return r ? r.scalar || 0 : 0;
}

function sum(list, name) {
  return list.reduce((acc, r) => acc + scalar(r, name), 0);
}

// A point as the API takes it: a bare number is an event index.
function checkPoint(text) {
  const t = text.trim();
  if (!t) return { error: "Give an event index (42 or #42), a time (@1700000000, 2026-12-07T05:40:00Z) or an age (10m)." };
  if (t.length > 64) return { error: "That point is too long to be an index or a time." };
  return { point: t };
}

const PAGE = 100;  // tasks (and changes) per page: the API answers one page and how many in all

function pager(testid, offset, shown, total, go) {
  if (total <= shown && offset === 0) return null;
  return h("div", { class: "toolbar", "data-testid": testid },
    h("span", { class: "muted" }, `${total ? offset + 1 : 0}–${offset + shown} of ${total}`),
    h("button", { type: "button", disabled: offset <= 0, onclick: () => go(Math.max(0, offset - PAGE)) }, "Previous"),
    h("button", { type: "button", disabled: offset + shown >= total, onclick: () => go(offset + PAGE) }, "Next"));
}

function stateView(data, goTasks) {
  const st = data.state || {};
  const agents = st.agents || [];
  const frameworks = st.frameworks || [];
  const tasks = st.tasks || [];
  const at = data.at || {};
  const table = (testid, heads, rows, empty) => rows.length
    ? h("div", { class: "table-wrap" }, h("table", { "data-testid": testid },
      h("thead", {}, h("tr", {}, heads.map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows)))
    : h("p", { class: "muted" }, empty);
  return [
    h("p", { "data-testid": "tt-at" },
      "As of event ", h("strong", { "data-testid": "tt-index" }, `#${at.index || 0}`),
      at.requested_index && at.requested_index !== at.index ? ` (asked for #${at.requested_index}; an entry is atomic)` : "",
      ` · ${fmtTime(at.time)} · leader then: ${st.leader || "–"} · term ${st.term || "–"}`,
      h("span", { class: "muted" }, ` · rebuilt from ${at.snapshot_index && at.snapshot_index !== "0"
        ? `snapshot #${at.snapshot_index}` : "the empty state"} by replaying ${at.replayed_events || 0} events`)),
    h("div", { class: "counts", style: "margin-bottom:12px" },
      [["agents", agents.length], ["frameworks", frameworks.length], ["tasks", data.tasks_total ?? tasks.length]].map(([what, n]) =>
        h("div", { class: "count" }, h("span", { class: "n", "data-testid": `tt-count-${what}` }, n), h("span", { class: "what" }, what)))),
    h("h2", {}, "Agents"),
    table("tt-agents", ["Agent", "Host", "State", "CPUs used/total", "Mem used/total"], agents.map((a) => h("tr", {},
      h("td", {}, h("code", {}, a.agent_id)), h("td", {}, (a.info || {}).hostname || ""), h("td", {}, stateBadge(a.state)),
      h("td", {}, `${sum([a.used], "cpus").toFixed(2)} / ${scalar((a.info || {}).resources, "cpus")}`),
      h("td", {}, `${fmtResource("mem", scalar(a.used, "mem"))} / ${fmtResource("mem", scalar((a.info || {}).resources, "mem"))}`))),
      "No agents."),
    h("h2", { style: "margin-top:12px" }, "Frameworks"),
    table("tt-frameworks", ["Framework", "Name", "State", "Roles"], frameworks.map((f) => h("tr", {},
      h("td", {}, h("code", {}, f.framework_id)), h("td", {}, (f.info || {}).name || ""), h("td", {}, stateBadge(f.state)),
      h("td", {}, ((f.info || {}).roles || []).join(", ")))), "No frameworks."),
    h("h2", { style: "margin-top:12px" }, "Tasks"),
    pager("tt-tasks-pager", data.offset || 0, tasks.length, data.tasks_total ?? tasks.length, goTasks),
    table("tt-tasks", ["Task", "Framework", "Agent", "State", "CPUs", "Mem"], tasks.map((t) => {
      const info = t.task || {};
      return h("tr", { "data-task": info.task_id },
        h("td", {}, h("code", {}, info.task_id), info.name && info.name !== info.task_id ? h("span", { class: "muted" }, ` ${info.name}`) : null),
        h("td", {}, shortId(info.framework_id)), h("td", {}, shortId(info.agent_id)), h("td", {}, stateBadge(t.state)),
        h("td", {}, scalar(info.resources, "cpus")), h("td", {}, fmtResource("mem", scalar(info.resources, "mem"))));
    }), "No tasks."),
  ];
}

function diffView(data, goChanges) {
  const changes = data.changes || [];
  const total = data.changes_total ?? changes.length;
  const from = data.diff_from || {};
  const to = data.at || {};
  return [
    h("p", {}, `From #${from.index || 0} (${fmtTime(from.time)}) to #${to.index || 0} (${fmtTime(to.time)}): `,
      h("strong", { "data-testid": "tt-diff-count" }, `${total} change${total === 1 ? "" : "s"}`)),
    pager("tt-diff-pager", data.offset || 0, changes.length, total, goChanges),
    changes.length ? h("div", { class: "table-wrap" }, h("table", { "data-testid": "tt-diff" },
      h("thead", {}, h("tr", {}, ["Kind", "Id", "Change", "Fields"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, changes.map((c) => h("tr", {},
        h("td", {}, c.kind), h("td", {}, h("code", {}, c.id)),
        h("td", { class: `diff-${c.change}` }, c.change),
        h("td", {}, (c.fields || []).map((f) => h("div", {}, h("code", {}, f.field), ": ",
          h("span", { class: "diff-removed" }, f.before ?? ""), " → ", h("span", { class: "diff-added" }, f.after ?? "")))))))))
      : h("p", { class: "muted" }, "Nothing changed."),
  ];
}

export async function timeTravelPage(view, _params, { signal, query }) {
  const head = await api.events({ limit: 1 }, { signal });
  const first = Math.max(1, head.first_index || 1);
  const last = head.last_index || 0;
  const at = query.get("at") || String(last);
  const from = query.get("from") || "";

  // the slider runs over event indexes or, with times known, over seconds from the first kept event's
  // time to the last one's (a point `@<unix>`: the state after the last event recorded by then)
  const firstTime = head.first_time == null ? null : Math.floor(head.first_time);
  const lastTime = head.last_time == null ? null : Math.ceil(head.last_time);
  const canTime = firstTime != null && lastTime != null;
  let mode = canTime && /^@\d+(\.\d+)?$/.test(at) ? "time" : "index";
  const slider = h("input", { type: "range", step: 1, "data-testid": "tt-slider" });
  const sliderLabel = h("span", { class: "muted", "data-testid": "tt-slider-label" });
  const modeSelect = h("select", { "aria-label": "Slide over", "data-testid": "tt-mode", disabled: !canTime },
    h("option", { value: "index" }, "event index"), h("option", { value: "time" }, "time"));
  modeSelect.value = mode;

  function labelSlider() {
    sliderLabel.textContent = mode === "time"
      ? ` ${new Date(Number(slider.value) * 1000).toISOString().replace(".000Z", "Z")}`
      : ` #${slider.value}`;
  }

  function setSlider(index, time) {
    if (mode === "time") {
      slider.min = firstTime;
      slider.max = Math.max(firstTime, lastTime);
      slider.setAttribute("aria-label", "Time");
      slider.value = time == null ? lastTime : Math.round(time);
    } else {
      slider.min = first;
      slider.max = Math.max(first, last);
      slider.setAttribute("aria-label", "Event index");
      slider.value = index == null ? last : index;
    }
    labelSlider();
  }
  setSlider(/^\d+$/.test(at) ? Number(at) : null, /^@\d+(\.\d+)?$/.test(at) ? Number(at.slice(1)) : null);
  const atInput = h("input", { type: "text", name: "at", value: at, size: 24, "data-testid": "tt-at-input" });
  const fromInput = h("input", { type: "text", name: "from", value: from, size: 24, placeholder: "e.g. 1 or 10m",
                                 "data-testid": "tt-from-input" });
  const stateBox = h("div");
  const diffBox = h("div");
  let timer = null;
  let taskOffset = 0;
  let changeOffset = 0;

  function saveUrl() {
    const q = new URLSearchParams();
    if (atInput.value.trim()) q.set("at", atInput.value.trim());
    if (fromInput.value.trim()) q.set("from", fromInput.value.trim());
    history.replaceState(null, "", `/timetravel?${q}`);
  }

  async function show(keepPages = false) {
    saveUrl();
    if (!keepPages) taskOffset = changeOffset = 0;
    const checked = checkPoint(atInput.value);
    if (checked.error) {
      replace(stateBox, h("div", { class: "notice error", role: "alert", "data-testid": "error" }, checked.error));
      return;
    }
    replace(stateBox, loading("Rebuilding the state…"));
    try {
      const data = await api.stateAt(checked.point, { signal }, { offset: taskOffset, limit: PAGE });
      replace(stateBox, stateView(data, (offset) => { taskOffset = offset; show(true); }));
      // a time point leaves a time slider where it was (the answer's event was recorded at or before it)
      const timePoint = mode === "time" && checked.point.startsWith("@");
      if (data.at && data.at.index && !timePoint) setSlider(Number(data.at.index), data.at.time);
    } catch (err) {
      if (err.name === "AbortError") return;
      replace(stateBox, errorView(err instanceof ApiError ? err : new ApiError(0, "error", String(err))));
    }
    if (fromInput.value.trim()) await showDiff();
    else replace(diffBox, h("p", { class: "muted" }, "Give a second point to see what changed between them."));
  }

  async function showDiff() {
    const f = checkPoint(fromInput.value);
    if (f.error) {
      replace(diffBox, h("div", { class: "notice error", role: "alert" }, f.error));
      return;
    }
    replace(diffBox, loading("Comparing…"));
    try {
      const data = await api.diff(f.point, atInput.value.trim(), { signal }, { offset: changeOffset, limit: PAGE });
      replace(diffBox, diffView(data, (offset) => { changeOffset = offset; showDiff(); }));
    } catch (err) {
      if (err.name === "AbortError") return;
      replace(diffBox, errorView(err));
    }
  }

  modeSelect.addEventListener("change", () => {
    mode = modeSelect.value;
    setSlider(null, null);
  });

  slider.addEventListener("input", () => {
    labelSlider();
    atInput.value = mode === "time" ? `@${slider.value}` : slider.value;
    clearTimeout(timer);
    timer = setTimeout(show, 250);
  });

  replace(view,
    h("h1", {}, "Time travel"),
    h("section", { class: "panel", style: "margin-bottom:14px" },
      h("p", { class: "muted", "data-testid": "tt-kept" }, `This master keeps events #${first} to #${last}`,
        canTime ? ` (${fmtTime(head.first_time)} to ${fmtTime(head.last_time)})` : "",
        ". A point is an event index (42, #42), ",
        "unix seconds (@1700000000), an ISO-8601 time (UTC unless it says otherwise) or an age (10m, 2h ago)."),
      h("div", { class: "toolbar" }, h("label", {}, "Slide over ", modeSelect), slider, sliderLabel),
      h("form", { class: "toolbar", style: "margin-top:10px",
                  onsubmit: (e) => { e.preventDefault(); show(); } },
        h("label", {}, "State at", atInput),
        h("label", {}, "Diff from (optional)", fromInput),
        h("button", { class: "primary", type: "submit" }, "Show"),
        h("button", { type: "button", onclick: () => { atInput.value = String(last); fromInput.value = ""; show(); } }, "Latest"),
        link("/events", "event log"))),
    h("div", { class: "grid", style: "grid-template-columns: 1fr" },
      h("section", { class: "panel" }, h("h2", {}, "Cluster at this point"), stateBox),
      h("section", { class: "panel" }, h("h2", {}, "Changes"), diffBox)));
  await show();
  return () => clearTimeout(timer);
}

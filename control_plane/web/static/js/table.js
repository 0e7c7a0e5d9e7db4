// A table sorted, filtered and paged by the server (docs/http-api.md: q, state, sort, order, offset,
// limit): the page keeps its settings in the URL (shareable, back/forward work) and asks only for the
// rows it shows, so 10,000 tasks cost the browser one page of them.

import { h, replace } from "./dom.js";
import { errorView } from "./views.js";

const PAGE_SIZES = [25, 50, 100, 250];

// columns: [{ key, label, sort (server sort key or null), num, cell(item) }]
// filters: [{ name, label, type: "search" | "select", options: [[value, label]] }]
// fetchPage(params, signal) -> {total, offset, limit, items}
export function serverTable(view, { columns, filters = [], fetchPage, defaultSort, defaultOrder = "asc",
                                    testid, empty = "Nothing matches.", fixed = {} }, signal) {
  const params = new URLSearchParams(location.search);
  const settings = {
    sort: params.get("sort") || defaultSort,
    order: params.get("order") || defaultOrder,
    offset: Number(params.get("offset") || 0) || 0,
    limit: Number(params.get("limit") || 50) || 50,
  };
  for (const f of filters) settings[f.name] = params.get(f.name) || "";

  const status = h("span", { class: "muted", "aria-live": "polite" });
  const body = h("tbody");
  const head = h("thead");
  const table = h("table", { "data-testid": testid }, head, body);
  const errorBox = h("div");
  const pager = h("div", { class: "pager" });
  let latest = 0;
  let lastItems = null;

  function saveToUrl() {
    const q = new URLSearchParams();
    for (const f of filters) if (settings[f.name]) q.set(f.name, settings[f.name]);
    if (settings.sort !== defaultSort) q.set("sort", settings.sort);
    if (settings.order !== defaultOrder) q.set("order", settings.order);
    if (settings.offset) q.set("offset", settings.offset);
    if (settings.limit !== 50) q.set("limit", settings.limit);
    const text = q.toString();
    history.replaceState(null, "", location.pathname + (text ? `?${text}` : ""));
  }

  function drawHead() {
    replace(head, h("tr", {}, columns.map((c) => {
      const sorted = c.sort && settings.sort === c.sort;
      const attrs = { class: c.num ? "num" : "", scope: "col",
                      "aria-sort": sorted ? (settings.order === "asc" ? "ascending" : "descending") : null };
      if (!c.sort) return h("th", attrs, c.label);
      return h("th", attrs, h("button", {
        class: "sort", type: "button", "data-sort": c.sort,
        onclick: () => {
          if (settings.sort === c.sort) settings.order = settings.order === "asc" ? "desc" : "asc";
          else { settings.sort = c.sort; settings.order = c.defaultOrder || "asc"; }
          settings.offset = 0;
          saveToUrl();
          drawHead();
          load();
        },
      }, c.label));
    })));
  }

  function drawPager(page) {
    const from = page.total ? page.offset + 1 : 0;
    const to = page.offset + page.items.length;
    replace(pager,
      h("button", { type: "button", disabled: page.offset <= 0, "aria-label": "Previous page",
                    onclick: () => { settings.offset = Math.max(0, settings.offset - settings.limit); saveToUrl(); load(); } },
        "‹ Prev"),
      h("span", { "data-testid": `${testid}-range` }, `${from}–${to} of ${page.total.toLocaleString("en-US")}`),
      h("button", { type: "button", disabled: to >= page.total, "aria-label": "Next page",
                    onclick: () => { settings.offset += settings.limit; saveToUrl(); load(); } },
        "Next ›"),
      h("label", {}, "Rows ",
        h("select", { onchange: (e) => { settings.limit = Number(e.target.value); settings.offset = 0; saveToUrl(); load(); } },
          PAGE_SIZES.map((n) => h("option", { value: n, selected: n === settings.limit }, n)))));
  }

  async function load() {
    const mine = ++latest;
    const q = { ...fixed, sort: settings.sort, order: settings.order, offset: settings.offset, limit: settings.limit };
    for (const f of filters) if (settings[f.name]) q[f.name] = settings[f.name];
    try {
      const page = await fetchPage(q, signal);
      if (mine !== latest || signal.aborted) return;
      replace(errorBox);
      // a page beyond the end (rows went away): go to the last page that has rows
      if (!page.items.length && page.total && settings.offset >= page.total) {
        settings.offset = Math.max(0, Math.floor((page.total - 1) / settings.limit) * settings.limit);
        saveToUrl();
        return load();
      }
      lastItems = page.items;
      replace(body, page.items.length
        ? page.items.map((item) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : "" }, c.cell(item)))))
        : h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty)));
      drawPager(page);
      replace(status, `updated ${new Date().toISOString().slice(11, 19)}Z`);
    } catch (err) {
      if (err.name === "AbortError" || signal.aborted || mine !== latest) return;
      replace(errorBox, errorView(err));
    }
  }

  const filterInputs = filters.map((f) => {
    let timer = null;
    const onInput = (e) => {
      clearTimeout(timer);
      timer = setTimeout(() => { settings[f.name] = e.target.value.trim(); settings.offset = 0; saveToUrl(); load(); }, 250);
    };
    if (f.type === "select") {
      return h("label", {}, f.label, h("select", { name: f.name, onchange: onInput },
        f.options.map(([value, label]) => h("option", { value, selected: value === settings[f.name] }, label))));
    }
    return h("label", {}, f.label, h("input", { type: "search", name: f.name, value: settings[f.name],
                                                 placeholder: f.placeholder || "", oninput: onInput }));
  });

  drawHead();
  replace(view, h("div", { class: "toolbar" }, filterInputs, status), errorBox,
    h("div", { class: "table-wrap" }, table), pager);
  return { load, items: () => lastItems };
}

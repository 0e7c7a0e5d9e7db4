// Small DOM helpers: build elements from data, never from HTML strings, so text from the cluster
// (task names, framework names, event payloads) can never become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// An in-app link: the router intercepts clicks on a[data-link].
export function link(href, ...children) {
  return h("a", { href, "data-link": "" }, ...children);
}

export function fmtNumber(n, digits = 1) {
  if (n === undefined || n === null || Number.isNaN(n)) return "–";
  if (Number.isInteger(n)) return n.toLocaleString("en-US");
  return n.toLocaleString("en-US", { maximumFractionDigits: digits });
}

export function fmtMem(mib) {
  if (mib === undefined || mib === null) return "–";
  if (mib >= 1024 * 1024) return `${(mib / 1024 / 1024).toFixed(1)} TiB`;
  if (mib >= 1024) return `${(mib / 1024).toFixed(1)} GiB`;
  return `${Math.round(mib)} MiB`;
}

export function fmtResource(name, value) {
  if (name === "mem" || name === "disk") return fmtMem(value);
  return fmtNumber(value, 2);
}

// Times are shown in UTC, as the CLI prints them.
export function fmtTime(seconds) {
  if (!seconds) return "–";
  return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function fmtDuration(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  if (seconds < 0.001) return `${(seconds * 1e6).toFixed(0)} µs`;
  if (seconds < 1) return `${(seconds * 1000).toFixed(1)} ms`;
  if (seconds < 120) return `${seconds.toFixed(2)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function shortId(id) {
  if (!id) return "–";
  // "framework-69995f16b08a47e50000000e" → "framework-6999…000e": the kind, and enough to tell apart
  const dash = id.indexOf("-");
  const head = dash >= 5 && dash <= 11 ? dash + 5 : 12;
  return id.length > 22 ? `${id.slice(0, head)}…${id.slice(-4)}` : id;
}

// An in-app link to an id shown shortened, the whole id in its title.
export function idLink(href, id) {
  return h("a", { href, "data-link": "", title: id }, shortId(id));
}

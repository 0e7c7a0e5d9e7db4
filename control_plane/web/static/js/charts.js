// Charts as inline SVG: a used-versus-total bar and a horizontal bar chart. No library, no canvas:
// they are readable by screen readers through their <title> and the text beside them.

import { h, s, fmtResource } from "./dom.js";

// A resource bar: `used` of `total`, with the numbers written beside it.
export function resourceBar(name, used, total, { compact = false } = {}) {
  const fraction = total > 0 ? Math.min(1, Math.max(0, used / total)) : 0;
  const pct = Math.round(fraction * 100);
  const label = `${name}: ${fmtResource(name, used)} of ${fmtResource(name, total)} (${pct}%)`;
  const width = compact ? 80 : 200;
  const level = fraction > 0.9 ? "high" : fraction > 0.7 ? "mid" : "low";
  const svg = s("svg", { class: `bar bar-${level}`, width, height: compact ? 8 : 12, viewBox: `0 0 ${width} 12`,
                         preserveAspectRatio: "none", role: "img", "aria-label": label },
    s("title", {}, label),
    s("rect", { class: "bar-track", x: 0, y: 0, width, height: 12, rx: 3 }),
    s("rect", { class: "bar-fill", x: 0, y: 0, width: (width * fraction).toFixed(1), height: 12, rx: 3 }));
  if (compact) return h("span", { class: "resbar compact", title: label }, svg);
  return h("div", { class: "resbar" },
    h("span", { class: "resbar-name" }, name),
    svg,
    h("span", { class: "resbar-text" }, `${fmtResource(name, used)} / ${fmtResource(name, total)}`,
      h("span", { class: "muted" }, ` ${pct}%`)));
}

// Horizontal bars for named shares in [0, 1] (dominant shares per role).
export function shareChart(rows, { title = "" } = {}) {
  if (!rows.length) return h("p", { class: "muted" }, "Nothing allocated.");
  const barWidth = 260;
  const rowHeight = 26;
  const labelWidth = 130;
  const height = rows.length * rowHeight + 4;
  const width = labelWidth + barWidth + 70;
  const svg = s("svg", { class: "share-chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                         "aria-label": title || "shares" },
    s("title", {}, title),
    rows.map((row, i) => {
      const y = i * rowHeight + 4;
      const share = Math.max(0, Math.min(1, row.share || 0));
      return s("g", { class: "share-row" },
        s("text", { x: labelWidth - 8, y: y + 14, "text-anchor": "end", class: "share-label" }, row.label),
        s("rect", { x: labelWidth, y, width: barWidth, height: 18, rx: 3, class: "bar-track" }),
        s("rect", { x: labelWidth, y, width: (barWidth * share).toFixed(1), height: 18, rx: 3,
                    class: `share-fill share-${i % 6}` }),
        s("text", { x: labelWidth + barWidth + 8, y: y + 14, class: "share-value" },
          `${(share * 100).toFixed(1)}%`));
    }));
  return h("figure", { class: "chart" }, svg, title ? h("figcaption", {}, title) : null);
}

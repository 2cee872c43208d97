// Charts drawn as SVG by the page itself. Every label is set as text, never as markup.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs) {
    const node = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      node.setAttribute(key, String(value));
    }
    return node;
  }

  function text(x, y, label, attrs) {
    const node = svg("text", Object.assign({ x: x, y: y }, attrs || {}));
    node.textContent = label;
    return node;
  }

  // A bar per minute of the last hour; `values` oldest first.
  function series(title, values, format) {
    const width = 360, height = 120, left = 4, bottom = 18, top = 18;
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    });
    const max = Math.max(...values, 0);
    const total = values.reduce((a, b) => a + b, 0);
    root.appendChild(text(left, 12, `${title}: ${format(total)} in the last hour`,
      { class: "chart-title" }));
    const plot = height - bottom - top;
    const step = (width - left * 2) / Math.max(values.length, 1);
    values.forEach((value, index) => {
      const h = max > 0 ? (value / max) * plot : 0;
      const bar = svg("rect", {
        x: left + index * step, y: top + plot - h, width: Math.max(step - 1, 1),
        height: Math.max(h, value > 0 ? 1 : 0), class: "bar",
      });
      const tip = svg("title");
      tip.textContent = `${values.length - index - 1} min ago: ${format(value)}`;
      bar.appendChild(tip);
      root.appendChild(bar);
    });
    root.appendChild(svg("line", {
      x1: left, y1: top + plot, x2: width - left, y2: top + plot, class: "axis",
    }));
    root.appendChild(text(left, height - 4, "60 min ago", { class: "tick" }));
    root.appendChild(text(width - left, height - 4, "now",
      { class: "tick", "text-anchor": "end" }));
    if (max > 0) {
      root.appendChild(text(width - left, top - 2, `max ${format(max)}/min`,
        { class: "tick", "text-anchor": "end" }));
    }
    return root;
  }

  // Horizontal bars: [[label, count], ...], largest first.
  function bars(title, entries) {
    const rowHeight = 18, width = 360, labelWidth = 130;
    const shown = entries.slice(0, 8);
    const height = 22 + Math.max(shown.length, 1) * rowHeight;
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    });
    root.appendChild(text(4, 12, title, { class: "chart-title" }));
    if (!shown.length) {
      root.appendChild(text(4, 34, "no trips yet", { class: "tick" }));
      return root;
    }
    const max = Math.max(...shown.map((e) => e[1]));
    shown.forEach(([label, count], index) => {
      const y = 20 + index * rowHeight;
      const name = label.length > 20 ? label.slice(0, 19) + "…" : label;
      root.appendChild(text(4, y + 12, name, { class: "tick" }));
      const w = ((width - labelWidth - 30) * count) / max;
      root.appendChild(svg("rect", {
        x: labelWidth, y: y + 2, width: Math.max(w, 1), height: rowHeight - 5, class: "bar trip",
      }));
      root.appendChild(text(labelWidth + w + 4, y + 12, String(count), { class: "tick" }));
    });
    return root;
  }

  // The hand-offs of a task: one lane per agent, its calls left to right in order, a line
  // from each call to the next (a hop where the agent changes).
  function handoffs(calls) {
    const agents = [];
    for (const call of calls) {
      if (!agents.includes(call.agent)) agents.push(call.agent);
    }
    const lane = 26, left = 110, step = 18;
    const width = Math.max(left + calls.length * step + 20, 360);
    const height = 10 + Math.max(agents.length, 1) * lane;
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, class: "chart handoffs", role: "img",
      width: width, height: height,
    });
    agents.forEach((agent, index) => {
      const y = 10 + index * lane + lane / 2;
      root.appendChild(text(4, y + 4, agent.length > 14 ? agent.slice(0, 13) + "…" : agent,
        { class: "tick" }));
      root.appendChild(svg("line", { x1: left - 6, y1: y, x2: width - 6, y2: y, class: "lane" }));
    });
    let previous = null;
    calls.forEach((call, index) => {
      const x = left + index * step;
      const y = 10 + agents.indexOf(call.agent) * lane + lane / 2;
      if (previous) {
        root.appendChild(svg("line", {
          x1: previous[0], y1: previous[1], x2: x, y2: y,
          class: previous[1] === y ? "link" : "link hop",
        }));
      }
      const dot = svg("circle", {
        cx: x, cy: y, r: 5, class: call.outcome === "ok" ? "dot" : "dot bad",
      });
      const tip = svg("title");
      tip.textContent = `${call.agent} · ${call.model} · ${call.outcome}`;
      dot.appendChild(tip);
      root.appendChild(dot);
      previous = [x, y];
    });
    return root;
  }

  window.TripwireCharts = { series, bars, handoffs };
})();

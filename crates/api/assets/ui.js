// moxnet web UI: training charts (uPlot), the call form, the chat and live updates. Pages read
// without it; it talks only to this node (same origin): /v2 for calls, /v1 for the chat.
"use strict";

(function () {
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const el = (tag, attrs, text) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const readJson = (id) => {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  };

  // Training history: one chart per metric, zoomable (drag; double-click resets), log scale
  // for losses (when every value is positive).
  function charts() {
    const data = readJson("history-data");
    const box = document.getElementById("charts");
    if (!data || !box || typeof uPlot === "undefined") return;
    const palette = ["#3056d3", "#d3303a", "#1d7a46", "#b5651d", "#7b3fb3", "#00838f"];
    const plots = [];
    data.metrics.forEach((metric, i) => {
      const values = metric.values.map((v) => (v === null ? null : Number(v)));
      const positive = values.every((v) => v === null || v > 0);
      const log = /loss|perplexity/i.test(metric.name) && positive;
      const cell = el("div", { class: "panel chart", "data-metric": metric.name });
      box.appendChild(cell);
      const axis = { stroke: css("--muted"), grid: { stroke: css("--line") }, ticks: { stroke: css("--line") } };
      const opts = {
        title: metric.name + (log ? " (log scale)" : ""),
        width: Math.max(280, cell.clientWidth - 24),
        height: 200,
        scales: { x: { time: false }, y: { distr: log ? 3 : 1 } },
        axes: [Object.assign({ label: "step" }, axis), axis],
        series: [{ label: "step" }, { label: metric.name, stroke: palette[i % palette.length], width: 2, spanGaps: true }],
      };
      plots.push([new uPlot(opts, [data.steps, values], cell), cell]);
    });
    window.addEventListener("resize", () => {
      for (const [plot, cell] of plots) plot.setSize({ width: Math.max(280, cell.clientWidth - 24), height: 200 });
    });
  }

  // Credits: the balance after each receipt, over time.
  function balanceChart() {
    const data = readJson("balance-data");
    const box = document.getElementById("balance-chart");
    if (!data || !box || typeof uPlot === "undefined") return;
    const axis = { stroke: css("--muted"), grid: { stroke: css("--line") }, ticks: { stroke: css("--line") } };
    const width = () => Math.max(280, box.clientWidth - 24);
    const plot = new uPlot({
      width: width(),
      height: 240,
      // Wide enough for "-12,345,678": negative balances keep their sign.
      axes: [axis, Object.assign({ size: 80, values: (u, ticks) => ticks.map((v) => v.toLocaleString("en")) }, axis)],
      series: [{}, { label: "balance (credits)", stroke: css("--accent"), width: 2, fill: "rgba(48, 86, 211, 0.08)" }],
    }, [data.t, data.v], box);
    window.addEventListener("resize", () => plot.setSize({ width: width(), height: 240 }));
  }

  // The shape to send for `count` items of an input declared with `declared` (numbers fixed,
  // names chosen per call): named dimensions are 1 but the last, which takes the rest.
  function fillShape(declared, count) {
    const fixed = declared.filter((d) => typeof d === "number").reduce((a, b) => a * b, 1);
    const named = declared.map((d, i) => (typeof d === "number" ? -1 : i)).filter((i) => i >= 0);
    if (named.length === 0) return declared.slice();
    const shape = declared.map((d) => (typeof d === "number" ? d : 1));
    shape[named[named.length - 1]] = Math.max(1, Math.round(count / fixed));
    return shape;
  }

  function nested(value, shape, out) {
    if (Array.isArray(value)) {
      shape.push(value.length);
      value.forEach((v, i) => nested(v, i === 0 ? shape : [], out));
    } else {
      out.push(Number(value));
    }
  }

  function callForm() {
    const form = document.getElementById("call-form");
    const box = document.getElementById("call");
    const iface = readJson("interface-data");
    if (!form || !box || !iface) return;
    const result = document.getElementById("call-result");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      result.replaceChildren(el("p", { class: "muted" }, "Calling…"));
      try {
        const inputs = iface.inputs.map((spec) => {
          const field = document.getElementById("in-" + spec.name);
          const kind = field.dataset.kind;
          if (kind === "bytes") {
            const lines = field.value.split("\n").filter((l) => l.length > 0);
            return { name: spec.name, datatype: "BYTES", shape: fillShape(spec.shape, lines.length), data: lines };
          }
          if (kind === "grid") {
            const data = Array.from(field.querySelectorAll("input")).map((i) => Number(i.value));
            return { name: spec.name, datatype: spec.datatype, shape: fillShape(spec.shape, data.length), data };
          }
          const shape = [];
          const data = [];
          nested(JSON.parse(field.value || "[]"), shape, data);
          return { name: spec.name, datatype: spec.datatype, shape, data };
        });
        const query = new URLSearchParams();
        if (form.elements.on.value) query.set("on", form.elements.on.value);
        if (form.elements.verify.checked) query.set("verify", "true");
        const url = "/v2/models/" + encodeURIComponent(box.dataset.model) + "/infer" + (query.size ? "?" + query : "");
        const response = await fetch(url, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ inputs }),
        });
        const answer = await response.json();
        if (!response.ok) throw new Error(answer.error || response.statusText);
        const p = answer.parameters || {};
        const facts = el("dl", { class: "facts", id: "call-facts" });
        const fact = (k, v) => {
          if (v === undefined || v === null) return;
          facts.append(el("dt", {}, k), el("dd", { class: "mono", "data-fact": k }, String(v)));
        };
        fact("ran on", p.provider || "this node");
        fact("engine", p.backend);
        fact("fuel", p.fuel);
        fact("cost", p.cost);
        fact("output hash", p.output_hash);
        fact("verified", p.verified || (p.verified_by ? "by " + p.verified_by.join(", ") : undefined));
        fact("elapsed", p.elapsed_ms !== undefined ? Number(p.elapsed_ms).toFixed(2) + " ms" : undefined);
        const outs = (answer.outputs || []).map((o) => {
          const shown = o.data.slice(0, 64).map((v) => (typeof v === "number" ? Number(v.toPrecision(6)) : v));
          return el("pre", { class: "out", "data-output": o.name },
            o.name + " " + o.datatype + " [" + o.shape.join(", ") + "]\n" + JSON.stringify(shown) + (o.data.length > 64 ? " …" : ""));
        });
        result.replaceChildren(facts, ...outs);
      } catch (e) {
        result.replaceChildren(el("p", { class: "bad", id: "call-error" }, String(e.message || e)));
      }
    });
  }

  function chat() {
    const box = document.getElementById("chat");
    const form = document.getElementById("chat-form");
    if (!box || !form) return;
    const log = document.getElementById("chat-log");
    const status = document.getElementById("chat-status");
    const messages = [];
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = form.elements.message.value.trim();
      if (!text) return;
      form.elements.message.value = "";
      messages.push({ role: "user", content: text });
      log.append(el("div", { class: "msg user" }, text));
      const reply = el("div", { class: "msg assistant" }, "");
      log.append(reply);
      status.textContent = "generating…";
      try {
        const response = await fetch("/v1/chat/completions", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ model: box.dataset.model, messages, max_tokens: 512, stream: true, stream_options: { include_usage: true } }),
        });
        if (!response.ok) {
          const answer = await response.json().catch(() => ({}));
          throw new Error(answer.error || response.statusText);
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        let last = null;
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
            if (!data || data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) throw new Error(chunk.error.error || "the generation failed");
            const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
            if (delta && delta.content) reply.textContent += delta.content;
            if (chunk.usage || chunk.moxnet) last = chunk;
          }
        }
        messages.push({ role: "assistant", content: reply.textContent });
        const m = (last && last.moxnet) || {};
        const u = (last && last.usage) || {};
        status.textContent = (u.completion_tokens || 0) + " tokens · " + (m.engine || "") + " on " + (m.provider || m.ran_on || "this node");
      } catch (e) {
        reply.classList.add("bad");
        reply.textContent = String(e.message || e);
        status.textContent = "";
      }
    });
  }

  // Parts marked data-live="MS" are re-read from the page every MS milliseconds (while the
  // tab is visible), so offers, peers and new models appear without a reload.
  function live() {
    const parts = Array.from(document.querySelectorAll("[data-live]"));
    if (parts.length === 0) return;
    const every = Math.max(2000, Math.min(...parts.map((p) => Number(p.dataset.live) || 5000)));
    setInterval(async () => {
      if (document.hidden) return;
      try {
        const response = await fetch(location.href, { headers: { Accept: "text/html" } });
        if (!response.ok) return;
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const part of document.querySelectorAll("[data-live]")) {
          const next = fresh.getElementById(part.id);
          if (next && next.innerHTML !== part.innerHTML) part.replaceWith(document.importNode(next, true));
        }
      } catch (e) {
        // The node may be restarting: try again next time.
      }
    }, every);
  }

  document.addEventListener("DOMContentLoaded", () => {
    charts();
    balanceChart();
    callForm();
    chat();
    live();
  });
})();

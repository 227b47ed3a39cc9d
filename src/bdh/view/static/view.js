// bdh view: the page. Vanilla JS over the JSON API of bdh.view.app (or, in an exported page, over the data
// embedded in window.BDH_EMBED). Charts: Apache ECharts (static/echarts.min.js, shipped with the package).
"use strict";
(function () {
  const EMBED = window.BDH_EMBED || null;
  const $ = (id) => document.getElementById(id);
  const S = { info: null, text: null, sel: null, kind: "xy" };
  const charts = {};

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of kids) e.append(c);
    return e;
  }
  const PALETTE = ["#5470c6", "#91cc75", "#fac858", "#ee6666", "#73c0de", "#3ba272", "#fc8452", "#9a60b4", "#ea7ccc", "#333"];
  const nl = (s) => s.replace(/\n/g, "↵");
  // a zoom slider under a chart's x-axis labels: the grid's bottom leaves room for the labels above the slider
  // (its handles and move bar included)
  const SLIDER = { type: "slider", xAxisIndex: 0, height: 18, bottom: 8 };
  const SLIDER_GRID_BOTTOM = 72;
  const fmt = (x, d) => (x === null || x === undefined ? "–" : Number(x).toFixed(d === undefined ? 4 : d));

  function showError(msg) {
    const e = $("error");
    if (!msg) { e.hidden = true; e.textContent = ""; return; }
    e.hidden = false;
    e.textContent = msg;
  }

  async function api(path, body) {
    if (EMBED) throw new Error("this exported page is static: run `bdh view --model DIR` for this view");
    const opts = body === undefined ? {} : { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
    const r = await fetch(path, opts);
    let j;
    try { j = await r.json(); } catch (e) { throw new Error(`HTTP ${r.status}`); }
    if (!r.ok) throw new Error(j.error || `HTTP ${r.status}`);
    return j;
  }

  function chart(id) {
    const div = $(id);
    div.hidden = false;
    if (!charts[id]) charts[id] = echarts.init(div, null, { renderer: "canvas" });
    return charts[id];
  }
  function setChart(id, option) {
    const c = chart(id);
    const div = $(id);
    div.dataset.rendered = "0";
    c.off("finished");
    c.on("finished", () => { div.dataset.rendered = "1"; });
    c.setOption(option, true);
  }

  // ------------------------------------------------------------------------------------------ tabs
  function showTab(name) {
    for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
    for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== "tab-" + name;
    for (const c of Object.values(charts)) c.resize();
  }

  // ------------------------------------------------------------------------------------------ info
  function renderInfo(info) {
    S.info = info;
    const live = info.bdh ? " · exported page (static; the Neuron and Synapse views need the live server: bdh view --model DIR)"
                          : " · exported page (static)";
    const sizes = info.bdh ? `L=${info.n_layer}, h=${info.n_head}, N=${info.N}, d=${info.d}, damping=${info.damping === null ? "none" : info.damping}`
                           : `L=${info.n_layer}, h=${info.n_head}`;
    $("model-info").textContent = `${info.model_type} · ${sizes} · ${info.params.toLocaleString()} parameters` +
      (info.index ? ` · neuron index: ${info.index.n_tokens.toLocaleString()} tokens of ${info.index.corpus}` : "") +
      (EMBED ? live : "");
    for (const e of document.querySelectorAll(".bdh-only")) e.hidden = !info.bdh;
    if (EMBED) for (const e of document.querySelectorAll(".live-only")) e.hidden = true;
    if (info.note) { $("note").hidden = false; $("note").textContent = `${info.model_type} model: per-token loss, top-k and attention apply; ${info.note}.`; }
    for (const id of ["n-layer", "s-layer", "c-layer"]) $(id).max = info.n_layer - 1;
    if (info.bdh) { $("n-head").max = info.n_head - 1; $("n-neuron").max = info.N - 1; }
    if (info.examples && !$("c-concept").value) {
      $("c-concept").value = info.examples.concept.join("\n");
      $("c-contrast").value = info.examples.contrast.join("\n");
    }
  }

  // ------------------------------------------------------------------------------------------ Text view
  function lossColour(x, hi) {
    if (x === null) return "#eee";
    const a = Math.min(1, x / hi);
    return `rgba(220, 60, 40, ${0.08 + 0.6 * a})`;
  }

  const LEGEND_STEPS = 5;
  function renderLossLegend(hi) {
    const box = $("loss-legend");
    box.textContent = "";
    box.dataset.max = hi;
    box.append(el("span", { text: "token colour: its loss, nats (darkest: the largest in this text)" }));
    for (let i = 0; i < LEGEND_STEPS; i++) {
      const v = (hi * i) / (LEGEND_STEPS - 1);
      const s = el("span", { class: "swatch", "data-loss": v, text: fmt(v, 2) });
      s.style.background = lossColour(v, hi);
      box.append(s);
    }
    const none = el("span", { class: "swatch", "data-loss": "", text: "none (first token)" });
    none.style.background = lossColour(null, hi);
    box.append(none);
    box.hidden = false;
  }

  function renderText(r) {
    S.text = r;
    S.sel = null;
    $("summary").textContent = `${r.n_tokens} tokens · mean loss ${fmt(r.mean_loss)} nats/token`;
    $("summary").dataset.meanLoss = r.mean_loss;
    const box = $("tokens");
    box.textContent = "";
    const hi = Math.max(1e-6, ...r.loss.filter((x) => x !== null));
    r.tokens.forEach((s, t) => {
      const span = el("span", { class: "tok", "data-t": t, text: s, title: `#${t} loss ${fmt(r.loss[t])}` });
      span.style.background = lossColour(r.loss[t], hi);
      span.addEventListener("click", () => selectToken(t));
      box.append(span);
    });
    renderLossLegend(hi);
    if (r.activity) { renderHeatmap(); renderActivityTable(); }
    $("token-panel").textContent = "";
    $("token-panel").append(el("em", { text: "Click a token." }));
    $("attention-panel").hidden = true;
    $("tokens").dataset.ready = "1";
  }

  function renderHeatmap() {
    const r = S.text, A = r.activity, kind = S.kind;
    const rows = [], data = [];
    let vmax = 0;
    for (let l = 0; l < A.n_layer; l++) for (let h = 0; h < A.n_head; h++) {
      const y = rows.length;
      rows.push(`L${l}.H${h}`);
      A.frac[kind][l][h].forEach((v, t) => { data.push([t, y, v]); if (v > vmax) vmax = v; });
    }
    const labels = r.tokens.map((s, t) => `${t}:${s}`);
    setChart("heatmap", {
      animation: false,
      title: { text: `fraction of active neurons: ${kind} (per layer.head, per token)`, textStyle: { fontSize: 13 } },
      tooltip: { formatter: (p) => `${rows[p.value[1]]} · token ${labels[p.value[0]]}<br>${kind} active: ${fmt(p.value[2])}` },
      grid: { left: 60, right: 110, top: 30, bottom: r.n_tokens > 120 ? SLIDER_GRID_BOTTOM : 40 },
      xAxis: { type: "category", data: labels, axisLabel: { interval: "auto", fontSize: 10 } },
      yAxis: { type: "category", data: rows, inverse: true, axisLabel: { fontSize: 10 } },
      visualMap: { min: 0, max: vmax || 1, precision: 3, calculable: true, orient: "vertical", right: 10, top: 30, itemHeight: 180,
                   inRange: { color: ["#f7fbff", "#6baed6", "#08306b"] } },
      dataZoom: r.n_tokens > 120 ? [{ ...SLIDER, start: 0, end: Math.min(100, 100 * 120 / r.n_tokens) },
                                    { type: "inside", xAxisIndex: 0 }] : [],
      series: [{ type: "heatmap", data, progressive: 0 }],
    });
    const c = chart("heatmap");
    c.off("click");
    c.on("click", (p) => selectToken(p.value[0]));
  }

  function renderActivityTable() {
    const A = S.text.activity, tab = $("activity-table");
    tab.textContent = "";
    tab.append(el("tr", {}, el("th", { text: "layer" }), el("th", { text: "head" }), ...A.kinds.map((k) => el("th", { text: k }))));
    for (let l = 0; l < A.n_layer; l++) for (let h = 0; h < A.n_head; h++) {
      tab.append(el("tr", {}, el("td", { text: l }), el("td", { text: h }),
        ...A.kinds.map((k) => el("td", { class: "act", "data-kind": k, "data-layer": l, "data-head": h, text: fmt(A.mean[k][l][h]) }))));
    }
  }

  function selectToken(t) {
    const r = S.text;
    S.sel = t;
    for (const s of document.querySelectorAll(".tok.sel")) s.classList.remove("sel");
    const span = document.querySelector(`.tok[data-t="${t}"]`);
    if (span) { span.classList.add("sel"); span.scrollIntoView({ block: "nearest" }); }
    const p = $("token-panel");
    p.textContent = "";
    p.dataset.t = t;
    p.append(el("h3", { text: `token #${t} ${JSON.stringify(r.tokens[t])}` }));
    p.append(el("div", { id: "token-loss", "data-value": r.loss[t] === null ? "" : r.loss[t],
                         text: r.loss[t] === null ? "loss: – (first token)" : `loss: ${fmt(r.loss[t])} nats` }));
    const tk = el("table", { id: "topk" }, el("tr", {}, el("th", { text: "next token" }), el("th", { text: "p" })));
    for (const c of r.topk[t]) tk.append(el("tr", {}, el("td", { class: "l", text: JSON.stringify(c.token) }), el("td", { text: fmt(c.p) })));
    p.append(el("h3", { text: "top next tokens" }), tk);
    if (r.neurons) {
      p.append(el("h3", { text: `most active neurons (${r.neurons.kind}, all layers and heads)` }));
      const nt = el("table", { id: "token-neurons" },
        el("tr", {}, el("th", { text: "layer" }), el("th", { text: "head" }), el("th", { text: "neuron" }), el("th", { text: "value" })));
      for (const [l, h, n, v] of r.neurons.top[t]) {
        const row = { class: "neuron-row", "data-layer": l, "data-head": h, "data-neuron": n, "data-value": v };
        if (!EMBED) Object.assign(row, { class: "click neuron-row", onclick: () => openNeuron(l, h, n) });  // no Neuron view in an export
        nt.append(el("tr", row,
          el("td", { text: l }), el("td", { text: h }), el("td", { text: n }), el("td", { text: fmt(v) })));
      }
      if (!r.neurons.top[t].length) nt.append(el("tr", {}, el("td", { colspan: 4, text: "no active neuron" })));
      p.append(nt);
    }
    if (!EMBED && t < S.info.limits.max_attention_tokens) {
      p.append(el("button", { id: "show-attention", text: "attention of this token", onclick: () => showAttention(t) }));
    }
  }

  async function showAttention(t) {
    try {
      const r = await api("api/attention", { text: S.text.text, t });
      showError(null);
      $("attention-panel").hidden = false;
      $("attention-title").textContent = `token #${t}: ${r.kind}, per layer.head over earlier tokens`;
      const rows = [], data = [];
      r.weights.forEach((heads, l) => heads.forEach((w, h) => { const y = rows.length; rows.push(`L${l}.H${h}`); w.forEach((v, s) => data.push([s, y, v])); }));
      const vals = data.map((d) => d[2]);
      setChart("attention", {
        animation: false, tooltip: {}, grid: { left: 60, right: 110, top: 10, bottom: 30 },
        xAxis: { type: "category", data: r.tokens.map((s, i) => `${i}:${s}`) },
        yAxis: { type: "category", data: rows, inverse: true },
        visualMap: { min: Math.min(0, ...vals), max: Math.max(1e-9, ...vals), precision: 3, calculable: true, right: 10, top: 10, itemHeight: 140 },
        series: [{ type: "heatmap", data }],
      });
    } catch (e) { showError(e.message); }
  }

  async function runText() {
    const text = $("text").value;
    $("run").disabled = true;
    $("tokens").dataset.ready = "0";
    try {
      renderText(await api("api/text", { text, neuron_kind: S.kind }));
      showError(null);
    } catch (e) { showError(e.message); }
    finally { $("run").disabled = false; }
  }

  // ------------------------------------------------------------------------------------------ Neuron view
  function openNeuron(l, h, n) {
    $("n-layer").value = l; $("n-head").value = h; $("n-neuron").value = n;
    showTab("neuron");
    loadNeuron();
  }

  function neighbourTable(list, title) {
    const t = el("table", {}, el("tr", {}, el("th", { colspan: 3, text: title })),
                  el("tr", {}, el("th", { text: "head" }), el("th", { text: "neuron" }), el("th", { text: "weight" })));
    for (const e of list) {
      t.append(el("tr", { class: "click", onclick: () => openNeuron(+$("n-layer").value, e.head, e.neuron) },
        el("td", { text: e.head }), el("td", { text: e.neuron }), el("td", { text: fmt(e.weight) })));
    }
    return t;
  }

  async function loadNeuron() {
    const l = $("n-layer").value, h = $("n-head").value, n = $("n-neuron").value;
    const p = $("neuron-panel");
    p.dataset.ready = "0";
    let r;
    try { r = await api(`api/neuron?layer=${encodeURIComponent(l)}&head=${encodeURIComponent(h)}&neuron=${encodeURIComponent(n)}`); showError(null); }
    catch (e) { showError(e.message); return; }
    p.textContent = "";
    p.append(el("h3", { id: "neuron-title", text: `layer ${r.layer} · head ${r.head} · neuron ${r.neuron} (global ${r.global})` }));
    const ro = r.rope;
    p.append(el("div", { id: "neuron-rope", "data-freq": ro.freq_turns_per_token, "data-band": ro.band,
      text: `RoPE: ${ro.freq_turns_per_token.toExponential(4)} turns/token (period ${fmt(ro.period_tokens, 1)} tokens), band ${ro.band} of ${ro.n_bands} ` +
            `(1/ω in [${fmt(ro.band_range[0], 1)}, ${fmt(ro.band_range[1], 1)}))` }));
    p.append(el("div", { class: "cols" },
      neighbourTable(r.graph.x.out, "G_x out (this y → x)"), neighbourTable(r.graph.x.in, "G_x in (y → this x)"),
      neighbourTable(r.graph.y.out, "G_y out"), neighbourTable(r.graph.y.in, "G_y in")));
    if (!r.index) {
      p.append(el("p", { text: "No neuron index (started with --no-index): top contexts and histogram are not available." }));
      $("hist").hidden = true;
    } else {
      for (const [kind, k] of Object.entries(r.index.kinds)) {
        p.append(el("h3", { text: `${kind}: top contexts in ${r.index.corpus} (active on ${fmt(100 * k.fraction_active, 2)}% of ${r.index.n_tokens.toLocaleString()} tokens)` }));
        const box = el("div", { class: "contexts", "data-kind": kind });
        for (const c of k.contexts) {
          box.append(el("div", { class: "ctx", "data-value": c.value }, `${fmt(c.value, 3)}  `, nl(c.before), el("b", { text: nl(c.token) }), nl(c.after)));
        }
        if (!k.contexts.length) box.append(el("em", { text: "never active" }));
        p.append(box);
      }
      const e = r.index.hist_edges_log2, kinds = Object.keys(r.index.kinds);
      const cats = e.slice(0, -1).map((a) => `2^${a}`);
      setChart("hist", {
        animation: false, title: { text: "activation histogram over the corpus (non-zero values, octaves; the end bins include the tails)", textStyle: { fontSize: 13 } },
        legend: { top: 0, right: 0 }, tooltip: { trigger: "axis" }, grid: { left: 50, right: 20, top: 30, bottom: 40 },
        xAxis: { type: "category", data: cats }, yAxis: { type: "value" },
        series: kinds.map((k) => ({ type: "bar", name: k, data: r.index.kinds[k].hist })),
      });
    }
    p.dataset.ready = "1";
  }

  // ------------------------------------------------------------------------------------------ Synapse view
  async function runSigma() {
    const pairs = $("s-pairs").value.split(";").map((s) => s.trim()).filter((s) => s).map((s) => s.split(",").map((x) => parseInt(x, 10)));
    try {
      const r = await api("api/sigma", { text: $("text").value, layer: parseInt($("s-layer").value, 10), pairs });
      showError(null);
      setChart("sigma", {
        animation: false, legend: { top: 0 }, tooltip: { trigger: "axis" }, grid: { left: 60, right: 20, top: 40, bottom: SLIDER_GRID_BOTTOM },
        xAxis: { type: "category", data: r.tokens.map((s, i) => `${i}:${s}`) }, yAxis: { type: "value", name: `σ layer ${r.layer}` },
        dataZoom: [SLIDER, { type: "inside", xAxisIndex: 0 }],
        series: r.values.map((v, q) => ({ type: "line", name: r.labels[q], data: v, showSymbol: false })),
      });
      $("sigma").dataset.pairs = JSON.stringify(r.pairs);
    } catch (e) { showError(e.message); }
  }

  async function runConcepts() {
    const lines = (id) => $(id).value.split("\n").map((s) => s.trim()).filter((s) => s);
    const out = $("concept-result");
    out.textContent = "searching…";
    try {
      const r = await api("api/concepts", { concept: lines("c-concept"), contrast: lines("c-contrast"), layer: parseInt($("c-layer").value, 10) });
      showError(null);
      out.textContent = "";
      out.append(el("p", { text: `${r.n_searched_pairs.toLocaleString()} pairs searched on ${r.split.concept_search} + ${r.split.contrast_search} sentences; tested on the held-out ${r.split.concept_test} + ${r.split.contrast_test}.` }));
      const t = el("table", { id: "concept-table" }, el("tr", {}, ...["i (y, layer-1)", "j (x, layer)", "p-value", "rank-biserial", "U / Umax", "mean σ concept", "mean σ contrast"].map((s) => el("th", { text: s }))));
      for (const c of r.candidates) {
        t.append(el("tr", { "data-p": c.test.p_value, "data-r": c.test.rank_biserial },
          el("td", { text: `${c.head_i}.${c.neuron_i}` }), el("td", { text: `${c.head_j}.${c.neuron_j}` }),
          el("td", { class: "pval", text: Number(c.test.p_value).toPrecision(3) }), el("td", { class: "rb", text: fmt(c.test.rank_biserial, 3) }),
          el("td", { text: `${c.test.U}/${c.test.U_max}` }), el("td", { text: fmt(c.mean_concept) }), el("td", { text: fmt(c.mean_contrast) })));
      }
      out.append(t);
    } catch (e) { out.textContent = ""; showError(e.message); }
  }

  // ------------------------------------------------------------------------------------------ State view
  function renderState(r) {
    const box = $("state-charts");
    box.textContent = "";
    const L = r.series[0].norms.length;
    for (let l = 0; l < L; l++) {
      const id = `state-${l}`;
      delete charts[id];
      box.append(el("div", { id, class: "chart state-chart", style: "height:260px" }));
      const series = [];
      for (const s of r.series) s.norms[l].forEach((v, h) => series.push({ type: "line", name: `H${h}` + (s.model ? "" : " (" + s.label + ")"), data: v, showSymbol: false,
                                                                              color: PALETTE[h % PALETTE.length], lineStyle: { type: s.model ? "solid" : "dashed" } }));
      setChart(id, {
        animation: false, title: { text: `layer ${l}: ‖ρ‖ per head — solid: ${r.series[0].label}, dashed: ${r.series[1].label}`, textStyle: { fontSize: 13 } },
        tooltip: { trigger: "axis" }, grid: { left: 60, right: 20, top: 45, bottom: 30 },
        legend: { data: r.series[0].norms[l].map((_, h) => `H${h}`), top: 20, right: 10 },
        xAxis: { type: "category", data: r.positions.map((t) => `${t}:${r.tokens[t]}`) }, yAxis: { type: "value", name: "‖ρ‖" }, series,
      });
    }
    box.dataset.ready = "1";
  }

  async function runState() {
    try { renderState(await api("api/state", { text: $("text").value })); showError(null); }
    catch (e) { showError(e.message); }
  }

  // ------------------------------------------------------------------------------------------ start
  async function start() {
    for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
    $("run").addEventListener("click", runText);
    $("kind").addEventListener("change", () => {
      S.kind = $("kind").value;
      if (EMBED) { renderHeatmap(); } else if (S.text) { runText(); }
    });
    $("n-show").addEventListener("click", loadNeuron);
    $("s-run").addEventListener("click", runSigma);
    $("c-run").addEventListener("click", runConcepts);
    $("st-run").addEventListener("click", runState);
    window.addEventListener("resize", () => { for (const c of Object.values(charts)) c.resize(); });
    if (EMBED) {
      renderInfo(EMBED.info);
      $("text").value = EMBED.text.text;
      $("text").readOnly = true;
      $("run").hidden = true;
      S.kind = EMBED.text.neurons ? EMBED.text.neurons.kind : "xy";
      $("kind").value = S.kind;
      renderText(EMBED.text);
      if (EMBED.state) renderState(EMBED.state);
      $("st-run").hidden = true;
      document.body.dataset.ready = "1";
      return;
    }
    try { renderInfo(await api("api/info")); } catch (e) { showError(e.message); return; }
    document.body.dataset.ready = "1";
  }
  start();
})();

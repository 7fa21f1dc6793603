// The dashboard's pages. Data from the API is only ever put into the page as text
// (textContent, attribute values): never as HTML. Each page exposes what the browser tests
// check on window.dashboard.
"use strict";
(function () {
  const D = (window.dashboard = { errors: [] });
  const main = document.getElementById("main");
  const statusLine = document.getElementById("status");

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else node.setAttribute(k, v);
    }
    for (const c of children || []) node.append(c);
    return node;
  }
  async function api(path) {
    const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) { location.assign("/dashboard/login"); throw new Error("logged out"); }
    if (!r.ok) throw new Error(path + ": " + r.status);
    return r.json();
  }
  function say(text) { statusLine.textContent = text; }
  function fmt(v, digits) {
    if (v === null || v === undefined) return "-";
    return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(digits ?? 2)) : String(v);
  }
  function age(s) { return s === null || s === undefined ? "-" : s < 120 ? s.toFixed(0) + " s" : (s / 60).toFixed(0) + " min"; }
  function every(ms, fn) {
    let busy = false;
    const tick = async () => {
      if (busy) return;
      busy = true;
      try { await fn(); } catch (e) { say(String(e.message || e)); } finally { busy = false; }
    };
    tick();
    return setInterval(tick, ms);
  }
  function table(columns, rows, sortState, onSort) {
    const head = el("tr", {}, columns.map((c) => {
      const mark = sortState && sortState.key === c.key ? (sortState.dir > 0 ? " \u25b2" : " \u25bc") : "";
      const th = el("th", { scope: "col" }, [c.sort === false || !onSort ? c.label :
        el("button", { type: "button", text: c.label + mark, on: { click: () => onSort(c.key) } })]);
      if (mark) th.setAttribute("aria-sort", sortState.dir > 0 ? "ascending" : "descending");
      return th;
    }));
    const body = rows.map((r) => el("tr", {}, columns.map((c) => {
      const v = c.cell ? c.cell(r) : fmt(r[c.key]);
      return el("td", {}, [v]);
    })));
    return el("div", { class: "scroll" }, [el("table", {}, [el("thead", {}, [head]), el("tbody", {}, body)])]);
  }
  function chart(target, opts, data) {
    const width = () => Math.max(280, target.clientWidth || main.clientWidth - 32);
    const plot = new uPlot({ width: width(), height: opts.height || 300, ...opts }, data, target);
    window.addEventListener("resize", () => plot.setSize({ width: width(), height: opts.height || 300 }));
    return plot;
  }
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

  // ---- fleet -----------------------------------------------------------------------------
  function fleetPage() {
    main.append(el("h1", { text: "Fleet" }));
    const holder = el("div");
    main.append(holder);
    const sort = { key: "agent", dir: 1 };
    let rows = [];
    const cols = [
      { key: "site", label: "site" },
      { key: "agent", label: "agent", cell: (r) => el("a", {
        href: "/dashboard/agent?site=" + encodeURIComponent(r.site) + "&agent=" + encodeURIComponent(r.agent),
        text: r.agent }) },
      { key: "online", label: "state", cell: (r) => el("span", {
        class: r.online ? "online" : "offline", "data-agent": r.site + "/" + r.agent,
        text: r.online ? "online" : "offline" }) },
      { key: "heartbeat_age_s", label: "last heartbeat", cell: (r) => age(r.heartbeat_age_s) },
      { key: "version", label: "version (desired/actual)", cell: (r) => (r.version_desired || "-") + " / " + (r.version || "-") },
      { key: "config_revision", label: "config rev" },
      { key: "buffer_readings", label: "buffered" },
      { key: "oldest_age_s", label: "oldest", cell: (r) => age(r.oldest_age_s) },
      { key: "drain_eta_s", label: "drain ETA", cell: (r) => age(r.drain_eta_s) },
      { key: "readings_per_s", label: "readings/s" },
      { key: "dead_letters", label: "dead letters" },
      { key: "last_error", label: "last error" },
    ];
    const draw = () => {
      const sorted = [...rows].sort((a, b) => {
        const x = a[sort.key], y = b[sort.key];
        return (x > y ? 1 : x < y ? -1 : 0) * sort.dir;
      });
      holder.replaceChildren(el("p", { text: rows.length + " agents, " + rows.filter((r) => r.online).length + " online" }),
        table(cols, sorted, sort, (key) => { sort.dir = sort.key === key ? -sort.dir : 1; sort.key = key; draw(); }));
      D.fleet = rows;
    };
    every(2000, async () => { rows = await api("/api/fleet"); draw(); say("updated " + new Date().toLocaleTimeString()); });
  }

  // ---- agent -----------------------------------------------------------------------------
  function agentPage() {
    const q = new URLSearchParams(location.search);
    const site = q.get("site") || "", agent = q.get("agent") || "";
    main.append(el("h1", { text: "Agent " + site + "/" + agent }));
    const holder = el("div");
    main.append(holder);
    every(2000, async () => {
      const s = await api("/api/agent?site=" + encodeURIComponent(site) + "&agent=" + encodeURIComponent(agent));
      D.agent = s;
      const acct = (s.accounting && s.accounting.sources) || {};
      const rows = Object.entries(acct).map(([name, a]) => ({ source: name, ...a,
        dropped_total: Object.values(a.dropped || {}).reduce((x, y) => x + y, 0) }));
      const b = s.buffer || {}, u = s.uplink || {};
      holder.replaceChildren(
        el("div", { class: "cards" }, [
          card("ready", s.ready ? "yes" : "no"), card("version", s.bundle || s.version),
          card("config revision", s.config_revision), card("buffered readings", b.readings),
          card("drain ETA", age(u.drain_eta_s)), card("last error", s.last_error || "-"),
        ]),
        el("h2", { text: "Sources: received = published + buffered + dropped + dead-lettered" }),
        table([
          { key: "source", label: "source" }, { key: "received", label: "received" },
          { key: "published", label: "published" }, { key: "buffered", label: "buffered" },
          { key: "dropped_total", label: "dropped", cell: (r) => fmt(r.dropped_total) + " " + JSON.stringify(r.dropped || {}) },
          { key: "dead_lettered", label: "dead-lettered" },
          { key: "reconciles", label: "reconciles", cell: (r) => (r.reconciles ? "yes" : "NO") },
        ], rows),
        el("h2", { text: "Intake" }),
        el("pre", { class: "preview", text: JSON.stringify(s.intake, null, 1) }));
    });
  }
  function card(label, value) { return el("div", { class: "card" }, [label, el("b", { text: fmt(value) })]); }

  // ---- dead letters ----------------------------------------------------------------------
  function deadLettersPage() {
    main.append(el("h1", { text: "Dead letters" }));
    const summary = el("p"), target = el("div"), holder = el("div");
    main.append(summary, el("h2", { text: "Per minute, by reason (latest 1000)" }), target, el("h2", { text: "Latest" }), holder);
    let plot = null, reasons = "";
    every(5000, async () => {
      const d = await api("/api/deadletters?limit=1000");
      D.deadLetters = d;
      summary.textContent = d.total + " in the DLQ stream; by reason: " +
        (Object.entries(d.by_reason).map(([r, n]) => r + " " + n).join(", ") || "none");
      const names = Object.keys(d.by_reason).sort();
      const times = [...new Set(d.per_minute.map((p) => p[0] / 1e9))].sort((a, b) => a - b);
      const index = new Map(times.map((t, i) => [t, i]));
      const data = [times, ...names.map(() => times.map(() => 0))];
      for (const [t, r, n] of d.per_minute) data[1 + names.indexOf(r)][index.get(t / 1e9)] = n;
      if (plot === null || reasons !== names.join()) {
        if (plot) plot.destroy();
        reasons = names.join();
        plot = chart(target, { height: 200, scales: { x: { time: true,
          range: (u, lo, hi) => (lo === hi ? [lo - 300, hi + 300] : [lo, hi]) } }, series: [{}, ...names.map((n, i) => ({ label: n, stroke: COLORS[i % COLORS.length],
          paths: uPlot.paths.bars ? uPlot.paths.bars({ size: [0.6] }) : undefined }))] }, data);
      } else plot.setData(data);
      holder.replaceChildren(table([
        { key: "time_ns", label: "time", cell: (r) => new Date(r.time_ns / 1e6).toISOString() },
        { key: "reason", label: "reason" }, { key: "detail", label: "detail" },
        { key: "source", label: "source" }, { key: "subject", label: "subject" },
        { key: "size", label: "bytes" },
        { key: "preview", label: "payload (as text)", cell: (r) => el("pre", { class: "preview", text: r.preview }) },
      ], d.latest.slice(0, 100)));
    });
  }

  // ---- pipeline --------------------------------------------------------------------------
  function pipelinePage() {
    main.append(el("h1", { text: "Pipeline health" }));
    const cards = el("div", { class: "cards" }), target = el("div"), holder = el("div");
    main.append(cards, el("h2", { text: "Rates" }), target, el("h2", { text: "Aggregator consumers (lag)" }), holder);
    const data = [[], [], [], []];
    let prev = null, late = 0;
    const plot = chart(target, { height: 220, series: [{}, { label: "readings/s in", stroke: COLORS[0] },
      { label: "windows/s out", stroke: COLORS[2] }, { label: "consumer lag", stroke: COLORS[1], scale: "lag" }],
      axes: [{}, {}, { scale: "lag", side: 1 }] }, data);
    every(10000, async () => {
      const d = await api("/api/deadletters?limit=1000");
      late = Object.entries(d.by_reason).filter(([r]) => r.startsWith("late_")).reduce((x, [, n]) => x + n, 0);
    });
    every(2000, async () => {
      const p = await api("/api/pipeline");
      const agg = p.streams.find((s) => s.name === "AGG") || { last_seq: 0 };
      const lag = p.consumers.reduce((x, c) => x + c.pending, 0);
      let wps = null;
      if (prev) wps = (agg.last_seq - prev.agg) / ((p.time_ns - prev.t) / 1e9);
      prev = { agg: agg.last_seq, t: p.time_ns };
      D.pipeline = { ...p, windows_per_s: wps, late, lag };
      cards.replaceChildren(card("readings/s in", p.readings_per_s), card("windows/s out", wps),
        card("consumer lag (messages)", lag), card("late readings (latest 1000 dead letters)", late),
        ...p.streams.map((s) => card(s.name + " messages", s.messages)));
      data[0].push(p.time_ns / 1e9); data[1].push(p.readings_per_s); data[2].push(wps); data[3].push(lag);
      if (data[0].length > 900) data.forEach((a) => a.shift());
      plot.setData(data);
      holder.replaceChildren(table([{ key: "name", label: "consumer" }, { key: "pending", label: "pending" },
        { key: "ack_pending", label: "ack pending" }, { key: "delivered_seq", label: "delivered seq" }], p.consumers));
    });
  }

  // ---- series ----------------------------------------------------------------------------
  const RANGES = { "15m": 900, "1h": 3600, "1d": 86400, "1w": 604800 };
  function seriesPage() {
    main.append(el("h1", { text: "Series" }));
    const state = { catalog: [], keys: [], chosen: [], range: "1h", from: null, to: null, result: [], plot: null, es: null };
    D.series = state;
    const search = el("input", { type: "search", id: "series-search", placeholder: "search site/device/metric",
      "aria-label": "search series", "aria-controls": "series-results", autocomplete: "off" });
    const results = el("ul", { id: "series-results", role: "listbox", "aria-label": "matching series" });
    results.hidden = true;
    const chips = el("div", { class: "chips", "aria-label": "series on the chart" });
    const range = el("select", { id: "range", "aria-label": "time range" },
      ["15m", "1h", "1d", "1w", "custom"].map((r) => el("option", { value: r, text: r === "custom" ? "custom" : "last " + r })));
    range.value = "1h";
    const from = el("input", { type: "datetime-local", id: "from", "aria-label": "from (UTC)", step: "1" });
    const to = el("input", { type: "datetime-local", id: "to", "aria-label": "to (UTC)", step: "1" });
    from.hidden = to.hidden = true;
    const csv = el("button", { type: "button", id: "csv", text: "Download CSV" });
    const target = el("div", { id: "chart" });
    const info = el("p", { id: "chart-info" });
    main.append(el("div", { class: "controls" }, [el("div", { class: "picker" }, [search, results]), range, from, to, csv]),
      chips, target, info);

    function find(text) {
      const t0 = performance.now();
      const terms = text.toLowerCase().split(/[\s/]+/).filter(Boolean);
      const out = [];
      for (let i = 0; i < state.keys.length && out.length < 50; i++) {
        const k = state.keys[i];
        if (terms.every((t) => k.includes(t))) out.push(state.catalog[i]);
      }
      results.replaceChildren(...out.map((s) => el("li", { role: "option" }, [el("button", { type: "button",
        text: s.site + " / " + s.device + " / " + s.metric, on: { click: () => add(s) } })])));
      results.hidden = out.length === 0 || text === "";
      D.lastSearchMs = performance.now() - t0;
      D.lastSearchCount = out.length;
    }
    search.addEventListener("input", () => find(search.value));
    search.addEventListener("keydown", (e) => {
      if (e.key === "ArrowDown") { const b = results.querySelector("button"); if (b) { e.preventDefault(); b.focus(); } }
      if (e.key === "Escape") results.hidden = true;
    });
    results.addEventListener("keydown", (e) => {
      const li = document.activeElement.parentElement;
      if (e.key === "ArrowDown" && li.nextElementSibling) { e.preventDefault(); li.nextElementSibling.firstChild.focus(); }
      if (e.key === "ArrowUp") { e.preventDefault(); (li.previousElementSibling ? li.previousElementSibling.firstChild : search).focus(); }
    });
    function add(s) {
      if (!state.chosen.some((c) => c.site === s.site && c.device === s.device && c.metric === s.metric)) state.chosen.push(s);
      results.hidden = true; search.value = "";
      drawChips(); load();
    }
    function drawChips() {
      chips.replaceChildren(...state.chosen.map((s, i) => el("button", { type: "button",
        "aria-label": "remove " + s.site + "/" + s.device + "/" + s.metric,
        text: s.site + "/" + s.device + "/" + s.metric + " \u00d7",
        on: { click: () => { state.chosen.splice(i, 1); drawChips(); load(); } } })));
    }
    range.addEventListener("change", () => { from.hidden = to.hidden = range.value !== "custom"; if (range.value !== "custom") load(); });
    from.addEventListener("change", load); to.addEventListener("change", load);
    csv.addEventListener("click", download);

    function bounds() {
      if (range.value !== "custom") { const now = Date.now(); return [now - RANGES[range.value] * 1000, now, true]; }
      const f = Date.parse(from.value + "Z"), t = to.value ? Date.parse(to.value + "Z") : Date.now();
      return [f, t, !to.value || t >= Date.now()];
    }
    D.setRange = (fromMs, toMs) => { range.value = "custom"; from.hidden = to.hidden = false;
      from.value = new Date(fromMs).toISOString().slice(0, 19); to.value = toMs ? new Date(toMs).toISOString().slice(0, 19) : ""; return load(); };
    D.add = (site, device, metric) => add({ site, device, metric });

    let loading = 0;
    async function load() {
      const mine = ++loading;
      const t0 = performance.now();
      const [f, t, live] = bounds();
      if (!(f < t) || state.chosen.length === 0) { state.result = []; draw(); live || closeLive(); return; }
      // About one window per 3 pixels: the API picks the coarsest width giving at least that many.
      const points = Math.max(50, Math.min(1000, Math.floor((target.clientWidth || 800) / 3)));
      // A range up to now is asked without `to` (the server's "now"): see docs/dashboard.md.
      const query = (s) => {
        const q = { site: s.site, device: s.device, metric: s.metric, from: String(f) + "000000", points: String(points) };
        if (!live) q.to = String(t) + "000000";
        return "/api/series?" + new URLSearchParams(q);
      };
      let res;
      try {
        res = await Promise.all(state.chosen.map((s) => api(query(s))));
      } catch (e) {
        say("could not load the series (" + String(e.message || e) + "); retrying");
        setTimeout(() => { if (mine === loading) load(); }, 3000);
        return;
      }
      D.lastQueries = state.chosen.map(query);
      if (mine !== loading) return;
      state.result = res; state.from = f; state.to = t;
      draw();
      D.lastLoadMs = performance.now() - t0;
      info.textContent = res.map((r) => r.site + "/" + r.device + "/" + r.metric + ": " + r.times.length + " windows of " + r.window).join("; ");
      if (live) openLive(); else closeLive();
    }
    function columns() {
      // One x axis (seconds) for every series: the union of their window starts.
      const xs = [...new Set(state.result.flatMap((r) => r.times))].sort((a, b) => a - b);
      const at = new Map(xs.map((x, i) => [x, i]));
      const data = [xs.map((x) => x / 1e9)];
      for (const r of state.result) {
        for (const k of ["min", "max", "mean", "p95"]) {
          const col = new Array(xs.length).fill(null);
          r.times.forEach((x, i) => { col[at.get(x)] = r[k][i]; });
          data.push(col);
        }
      }
      return data;
    }
    function draw() {
      const data = columns();
      D.chartData = data;
      const series = [{}], bands = [];
      state.result.forEach((r, i) => {
        const c = COLORS[i % COLORS.length], name = r.device + "/" + r.metric, base = 1 + i * 4;
        series.push({ label: name + " min", stroke: c + "55", width: 1 }, { label: name + " max", stroke: c + "55", width: 1 },
          { label: name + " mean", stroke: c, width: 2 }, { label: name + " p95", stroke: c, width: 1, dash: [4, 4] });
        bands.push({ series: [base + 1, base], fill: c + "22" });
      });
      const key = series.map((s) => s.label).join("|");
      if (state.plot && state.plotKey === key) { state.plot.setData(data); return; }
      if (state.plot) state.plot.destroy();
      state.plotKey = key;
      state.plot = chart(target, { height: 320, series, bands, scales: { x: { time: true } } }, data);
    }
    // Live: one EventSource for the chart's window width, filtered here to the chosen series;
    // updates are merged into the columns and drawn at most once per animation frame.
    let pending = false;
    function openLive() {
      const widths = [...new Set(state.result.map((r) => r.window))];
      const want = widths.length === 1 ? widths[0] : null;
      if (state.es && state.esWindow === want) return;
      closeLive();
      if (!want) return;
      state.esWindow = want;
      state.es = new EventSource("/api/live?window=" + encodeURIComponent(want));
      state.es.addEventListener("window", (e) => {
        const w = JSON.parse(e.data);
        const r = state.result.find((x) => x.site === w.site && x.device === w.device && x.metric === w.metric);
        if (!r || w.start_ns < state.from * 1e6) return;
        const i = r.times.indexOf(w.start_ns);
        const put = (k, v) => { if (i >= 0) r[k][i] = v; else r[k].push(v); };
        if (i < 0 && r.times.length && w.start_ns < r.times[r.times.length - 1]) return;
        if (i < 0) r.times.push(w.start_ns);
        put("mean", w.mean); put("min", w.min); put("max", w.max); put("p95", w.p95); put("count", w.count);
        D.liveUpdates = (D.liveUpdates || 0) + 1;
        if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); }
      });
    }
    function closeLive() { if (state.es) state.es.close(); state.es = null; state.esWindow = undefined; }
    function download() {
      const lines = ["site,device,metric,window,start,mean,min,max,p95,count"];
      for (const r of state.result)
        r.times.forEach((t, i) => lines.push([r.site, r.device, r.metric, r.window, new Date(t / 1e6).toISOString(),
          r.mean[i], r.min[i], r.max[i], r.p95[i], r.count[i]].join(",")));
      D.lastCsv = lines.join("\n") + "\n";
      const a = el("a", { href: URL.createObjectURL(new Blob([D.lastCsv], { type: "text/csv" })), download: "series.csv" });
      document.body.append(a); a.click(); a.remove();
    }
    api("/api/catalog").then((cat) => {
      state.catalog = cat;
      state.keys = cat.map((s) => (s.site + "/" + s.device + "/" + s.metric).toLowerCase());
      D.catalogReady = true;
      say(cat.length + " series");
    }).catch((e) => say(String(e.message || e)));
  }

  const page = document.body.dataset.page;
  for (const a of document.querySelectorAll("[data-nav]")) if (a.dataset.nav === page) a.setAttribute("aria-current", "page");
  ({ series: seriesPage, fleet: fleetPage, agent: agentPage, deadletters: deadLettersPage, pipeline: pipelinePage }[page] || seriesPage)();
})();

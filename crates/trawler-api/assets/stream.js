// The page of a stream job: its health (rates computed here from the
// counters of GET /api/v1/streams/{job}, read every second) and, for one
// group key (an experiment), every value (variant) of it side by side: a
// chart of one series or formula over time, and a table of the latest
// closed window. Every name comes from the job (the StreamInfo in the
// page's meta tag); values from the API are only ever written with
// textContent, never as HTML.
(() => {
  'use strict';

  const INFO = JSON.parse(document.querySelector('meta[name="trawler-stream-info"]').content);
  const API = `/api/v1/streams/${encodeURIComponent(INFO.name)}`;
  const KEY = INFO.key_label;
  const VALUE = INFO.value_label;
  const SERIES = INFO.series || [];
  const FORMULAS = INFO.formulas || [];
  const NAMES = [...SERIES, ...FORMULAS.map((f) => f.name)];
  const EXPR = new Map(FORMULAS.map((f) => [f.name, f.expr]));
  const $ = (id) => document.getElementById(id);

  const STATS_MS = 1000;
  const GROUPS_MS = 10e3;
  const VARIANTS_MS = 5e3;
  const HEALTH_KEEP_MS = 15 * 60e3;
  const COLORS = ['#2563eb', '#f59e0b', '#16a34a', '#dc2626', '#7c3aed', '#0891b2', '#db2777', '#65a30d', '#ea580c', '#475569'];
  // Ranges of event time, ending at the watermark (the stream's own clock:
  // a backfill of last year's events is drawn where its events are).
  const RANGES = [
    { label: '1h', span: 3600e3 },
    { label: '6h', span: 6 * 3600e3 },
    { label: '24h', span: 86400e3 },
  ];
  // The windows read for the table: enough to find the latest closed one.
  const TABLE_SPAN_MS = Math.max(3600e3, 4 * (INFO.window_ms + INFO.lateness_ms));

  // ---- formatting -----------------------------------------------------------
  const fmtInt = (n) => (n == null ? '–' : Math.round(n).toLocaleString('en-US'));
  const fmtRate = (n) => (n == null ? '–' : n.toLocaleString('en-US', { maximumFractionDigits: n < 10 ? 1 : 0 }));
  const fmtValue = (v) => {
    if (v == null || !Number.isFinite(v)) return '–';
    if (Math.abs(v) >= 1000) return v.toLocaleString('en-US', { maximumFractionDigits: 0 });
    return v.toLocaleString('en-US', { maximumSignificantDigits: 4 });
  };
  const fmtMs = (ms) => {
    if (ms == null) return '–';
    const a = Math.abs(ms);
    if (a < 1000) return `${Math.round(ms)} ms`;
    if (a < 120e3) return `${(ms / 1000).toFixed(1)} s`;
    if (a < 7200e3) return `${Math.round(ms / 60e3)} min`;
    if (a < 172800e3) return `${(ms / 3600e3).toFixed(1)} h`;
    return `${Math.round(ms / 86400e3)} d`;
  };
  const fmtTime = (t) => (t == null ? '–' : new Date(t).toISOString().replace('T', ' ').replace(/:\d\d\.\d+Z$/, ' UTC'));
  const natural = (a, b) => a.localeCompare(b, 'en', { numeric: true });

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { accept: 'application/json' } });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const error = new Error((body && body.error && body.error.message) || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // ---- the job's names into the page ----------------------------------------
  for (const n of document.querySelectorAll('.key-label')) n.textContent = KEY;
  for (const n of document.querySelectorAll('.value-label')) n.textContent = VALUE;
  for (const n of document.querySelectorAll('.job-name')) n.textContent = INFO.name;
  $('job-window').textContent = `${fmtMs(INFO.window_ms)} windows · ${fmtMs(INFO.lateness_ms)} lateness · ${INFO.source}`;
  $('pick-key').setAttribute('aria-label', KEY);

  // ---- charts ---------------------------------------------------------------
  const charts = new Map();

  function lineChart(container, series, data, axes) {
    const old = charts.get(container);
    if (old) old.destroy();
    container.replaceChildren();
    const chart = new uPlot({
      width: Math.max(container.clientWidth, 200),
      height: 240,
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: true } },
      series: [{}, ...series.map((s) => ({ width: 2, spanGaps: true, points: { show: data[0].length < 60 }, ...s }))],
      axes: axes || [{}, { size: 70 }],
    }, data, container);
    charts.set(container, chart);
    return chart;
  }

  function emptyChart(container, message) {
    const old = charts.get(container);
    if (old) { old.destroy(); charts.delete(container); }
    delete container.dataset.drawn;
    container.replaceChildren(el('div', { class: 'empty', text: message }));
  }

  window.addEventListener('resize', () => {
    for (const [container, chart] of charts) {
      chart.setSize({ width: Math.max(container.clientWidth, 200), height: 240 });
    }
  });

  // ---- health ----------------------------------------------------------------
  const COUNTERS = ['accepted', 'filtered', 'late', 'malformed'];
  let previous = null; // { t, stats }
  let lastStats = null;
  const health = []; // { t, accepted, filtered, late }

  function card(name) { return document.querySelector(`.card[data-stat="${name}"] .value`); }
  function sub(name, text) { document.querySelector(`.sub[data-stat="${name}"]`).textContent = text; }

  function renderStats(s, rates) {
    for (const c of COUNTERS) {
      card(`${c}_per_s`).textContent = rates ? fmtRate(rates[c]) : '–';
      sub(c, `${fmtInt(s[c])} total`);
    }
    card('watermark_lag').textContent = fmtMs(s.watermark_lag_ms);
    sub('watermark', s.watermark_ms == null ? 'no event yet' : `at ${fmtTime(s.watermark_ms)}`);
    card('open_windows').textContent = fmtInt(s.open_windows);
    sub('windows_closed', `${fmtInt(s.windows_closed)} closed`);
    card('close_latency_p99').textContent = s.close_latency_p99_ms == null ? '–' : fmtMs(s.close_latency_p99_ms);
    sub('close_latency_p50', s.close_latency_p50_ms == null ? 'no window closed yet' : `p50 ${fmtMs(s.close_latency_p50_ms)}`);
    card('groups').textContent = fmtInt(s.groups);
    sub('samples', `${fmtInt(s.samples)} samples stored`);
    const errors = $('sink-errors');
    errors.hidden = !s.sink_errors;
    if (s.sink_errors) errors.textContent = `${fmtInt(s.sink_errors)} store writes failed (retried)`;
  }

  function drawHealth() {
    const container = $('chart-health');
    if (health.length < 2) { emptyChart(container, 'measuring…'); return; }
    const old = charts.get(container);
    const data = [
      health.map((h) => h.t / 1000),
      health.map((h) => h.accepted),
      health.map((h) => h.filtered),
      health.map((h) => h.late),
    ];
    if (old) { old.setData(data); return; }
    lineChart(container, [
      { label: 'accepted/s', stroke: '#2563eb' },
      { label: 'filtered/s', stroke: '#94a3b8', dash: [6, 4] },
      { label: 'late/s', stroke: '#dc2626' },
    ], data);
  }

  let statsBusy = false;
  async function pollStats() {
    if (statsBusy) return;
    statsBusy = true;
    const live = $('live');
    try {
      const job = await getJSON(API);
      const now = performance.now();
      const s = job.stats;
      let rates = null;
      if (previous) {
        const dt = (now - previous.t) / 1000;
        rates = {};
        for (const c of COUNTERS) rates[c] = Math.max(0, s[c] - previous.stats[c]) / dt;
        health.push({ t: Date.now(), ...rates });
        while (health.length && health[0].t < Date.now() - HEALTH_KEEP_MS) health.shift();
        drawHealth();
      }
      previous = { t: now, stats: s };
      const firstStats = lastStats == null;
      lastStats = s;
      renderStats(s, rates);
      live.textContent = 'live';
      live.className = 'live on';
      if (firstStats) loadVariants();
    } catch (e) {
      live.textContent = `offline: ${e.message}`;
      live.className = 'live off';
    } finally {
      statsBusy = false;
    }
  }

  // ---- pickers ---------------------------------------------------------------
  let groups = new Map(); // key → [values]
  const pickKey = $('pick-key');
  const pickMetric = $('pick-metric');

  {
    const series = el('optgroup', { label: 'series' });
    for (const n of SERIES) series.append(new Option(n, n));
    const formulas = el('optgroup', { label: 'formulas' });
    for (const f of FORMULAS) {
      const o = new Option(f.name, f.name);
      o.title = `${f.name} = ${f.expr}`;
      formulas.append(o);
    }
    if (FORMULAS.length) pickMetric.append(formulas);
    if (SERIES.length) pickMetric.append(series);
  }

  // The choice lives in the address: #/KEY/METRIC/RANGE.
  function fromHash() {
    const [key, metric, range] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
    return { key: key || null, metric: NAMES.includes(metric) ? metric : null, range: RANGES.find((r) => r.label === range) || null };
  }
  let choice = fromHash();
  if (!choice.metric) choice.metric = FORMULAS.length ? FORMULAS[0].name : SERIES[0];
  if (!choice.range) choice.range = RANGES[0];
  pickMetric.value = choice.metric;

  function writeHash() {
    const hash = `#/${[choice.key || '', choice.metric, choice.range.label].map(encodeURIComponent).join('/')}`;
    if (location.hash !== hash) history.replaceState(null, '', hash);
  }

  const rangeHost = document.querySelector('.ranges[data-target="variants"]');
  const rangeButtons = RANGES.map((r) => {
    const b = el('button', { type: 'button', text: r.label, 'data-range': r.label });
    b.addEventListener('click', () => { choice.range = r; paintRanges(); writeHash(); loadVariants(); });
    return b;
  });
  const paintRanges = () => rangeButtons.forEach((b, i) => b.classList.toggle('active', RANGES[i] === choice.range));
  rangeHost.replaceChildren(...rangeButtons);
  paintRanges();

  pickKey.addEventListener('change', () => { choice.key = pickKey.value; writeHash(); loadVariants(); });
  pickMetric.addEventListener('change', () => { choice.metric = pickMetric.value; writeHash(); loadVariants(); });

  async function loadGroups() {
    try {
      const body = await getJSON(`${API}/groups`);
      const next = new Map();
      for (const g of body.groups) {
        const k = String(g[KEY]);
        if (!next.has(k)) next.set(k, []);
        next.get(k).push(String(g[VALUE]));
      }
      for (const values of next.values()) values.sort(natural);
      const keys = [...next.keys()].sort(natural);
      const changed = keys.join('\u0000') !== [...groups.keys()].sort(natural).join('\u0000')
        || keys.some((k) => (groups.get(k) || []).join('\u0000') !== next.get(k).join('\u0000'));
      groups = next;
      if (!keys.length) {
        pickKey.replaceChildren(new Option(`no ${KEY} seen yet`, ''));
        pickKey.disabled = true;
        return;
      }
      pickKey.disabled = false;
      if (changed || pickKey.options.length !== keys.length) {
        pickKey.replaceChildren(...keys.map((k) => new Option(`${k} (${next.get(k).length})`, k)));
      }
      if (!choice.key || !next.has(choice.key)) {
        choice.key = keys[0];
        writeHash();
      }
      pickKey.value = choice.key;
      if (changed) loadVariants();
    } catch (e) {
      console.warn('groups', e);
    }
  }

  // ---- one key's values side by side ----------------------------------------
  let generation = 0;

  function seriesPath(value, names, from, to, live) {
    const params = new URLSearchParams();
    params.set(KEY, choice.key);
    params.set(VALUE, value);
    params.set('metrics', names.join(','));
    params.set('from', String(Math.max(0, Math.floor(from))));
    params.set('to', String(Math.ceil(to)));
    if (live) params.set('live', 'true');
    return `${API}/series?${params}`;
  }

  async function loadVariants() {
    const key = choice.key;
    const metric = choice.metric;
    const range = choice.range;
    const values = groups.get(key);
    for (const n of document.querySelectorAll('.metric-name')) n.textContent = metric;
    $('formula-expr').textContent = EXPR.has(metric) ? `${metric} = ${EXPR.get(metric)}` : '';
    if (!key || !values || !lastStats) return;
    const gen = ++generation;
    // Event time: the stream's watermark (wall clock before any event).
    const end = (lastStats.watermark_ms ?? Date.now()) + INFO.window_ms;
    try {
      const [chartAnswers, tableAnswers] = await Promise.all([
        Promise.all(values.map((v) => getJSON(seriesPath(v, [metric], end - range.span, end, true)))),
        Promise.all(values.map((v) => getJSON(seriesPath(v, NAMES, end - TABLE_SPAN_MS, end, false)))),
      ]);
      if (gen !== generation) return;
      drawVariants(values, metric, chartAnswers);
      fillTable(values, tableAnswers);
      document.body.dataset.loaded = `${key}/${metric}/${range.label}`;
    } catch (e) {
      if (gen !== generation) return;
      emptyChart($('chart-variants'), e.message);
    }
  }

  function drawVariants(values, metric, answers) {
    const container = $('chart-variants');
    // One column per window start seen by any value; a value without a
    // point there is a gap (spanned).
    const perValue = answers.map((a) => {
      const s = a.series.find((x) => x.name === metric) || { points: [], open: [] };
      return new Map([...s.points, ...(s.open || [])]);
    });
    const xs = [...new Set(perValue.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
    container.dataset.series = String(values.length);
    if (!xs.length) { emptyChart(container, `no ${metric} in this range yet`); return; }
    const data = [xs.map((t) => t / 1000), ...perValue.map((m) => xs.map((t) => (m.has(t) ? m.get(t) : null)))];
    // The same lines again (the periodic refresh): new data, same chart.
    const drawn = JSON.stringify([metric, values]);
    const old = charts.get(container);
    if (old && container.dataset.drawn === drawn) { old.setData(data); return; }
    lineChart(container, values.map((v, i) => ({ label: v, stroke: COLORS[i % COLORS.length] })), data);
    container.dataset.drawn = drawn;
  }

  function fillTable(values, answers) {
    // The latest window any value has a stored point in.
    const maps = answers.map((a) => new Map(a.series.map((s) => [s.name, new Map(s.points)])));
    let latest = null;
    for (const m of maps) {
      for (const points of m.values()) for (const t of points.keys()) if (latest == null || t > latest) latest = t;
    }
    const table = $('latest');
    table.tHead.rows[0].replaceChildren(el('th', { text: 'metric' }),
      ...values.map((v) => el('th', { class: 'num', 'data-variant': v, text: v })));
    $('latest-window').textContent = latest == null ? 'none closed yet' : `${fmtTime(latest)}, ${fmtMs(INFO.window_ms)}`;
    table.dataset.window = latest == null ? '' : String(latest);
    const rows = NAMES.map((name) => {
      const isFormula = EXPR.has(name);
      const head = el('th', { text: name, scope: 'row' });
      if (isFormula) { head.title = `${name} = ${EXPR.get(name)}`; head.className = 'formula'; }
      const cells = maps.map((m, i) => {
        const v = latest == null ? undefined : m.get(name)?.get(latest);
        return el('td', { class: 'num', 'data-variant': values[i], text: fmtValue(v) });
      });
      return el('tr', { 'data-metric': name, class: name === choice.metric ? 'chosen' : '' }, head, ...cells);
    });
    table.tBodies[0].replaceChildren(...rows);
  }

  emptyChart($('chart-health'), 'measuring…');
  pollStats();
  loadGroups();
  setInterval(pollStats, STATS_MS);
  setInterval(loadGroups, GROUPS_MS);
  setInterval(loadVariants, VARIANTS_MS);
})();

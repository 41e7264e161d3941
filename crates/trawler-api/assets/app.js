// trawler dashboard. Reads the public JSON API and the event stream of the
// server that serves it; charts are drawn by uPlot (vendored). Values from
// the API are only ever written with textContent, never as HTML.
(() => {
  'use strict';

  // The job's names (GET /api/v1/{job}), written into the page by the
  // server: the page knows no job of its own.
  const INFO = JSON.parse(document.querySelector('meta[name="trawler-job-info"]').content);
  const JOB = INFO.name;
  const RANK = INFO.rankMetric;
  const METRICS = INFO.metrics;
  const KEY = INFO.keyName;
  const KEYS = `${KEY}s`;
  const LABEL = INFO.labelName;
  const FLAG = INFO.flag;
  const capital = (s) => s.charAt(0).toUpperCase() + s.slice(1);
  const KEY_PATTERN = INFO.stringKeys ? /^[A-Za-z0-9._~:@+!-]{1,256}$/ : /^\d{1,19}$/;
  const API = `/api/v1/${encodeURIComponent(JOB)}`;
  const $ = (id) => document.getElementById(id);

  const RANGES = [
    { label: '1h', span: 3600e3, step: null },
    { label: '24h', span: 86400e3, step: '5m' },
    { label: '7d', span: 7 * 86400e3, step: '1h' },
    { label: '30d', span: 30 * 86400e3, step: '6h' },
  ];
  const HEALTH_WINDOW_MS = 15 * 60e3;
  const LIST_REFRESH_MS = 10e3;
  const CHART_REFRESH_MS = 30e3;

  // ---- the job's names into the page --------------------------------------
  for (const node of document.querySelectorAll('.key-name')) node.textContent = KEY;
  for (const node of document.querySelectorAll('.flag-name')) node.textContent = FLAG || '';
  for (const node of document.querySelectorAll('.flag-only')) node.hidden = !FLAG;
  document.getElementById('search-pk').placeholder = INFO.stringKeys ? KEY : `${KEY}, a number`;

  // ---- formatting ---------------------------------------------------------
  const fmtInt = (n) => (n == null ? '–' : Math.round(n).toLocaleString('en-US'));
  const fmtNum = (n, digits = 2) =>
    n == null ? '–' : Number(n).toLocaleString('en-US', { maximumFractionDigits: digits });
  const fmtBytes = (b) => {
    if (b == null) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return `${b.toFixed(i ? 1 : 0)} ${units[i]}`;
  };
  const fmtTime = (t) => (t == null ? '–' : new Date(t).toLocaleString());
  const fmtSigned = (n) => (n > 0 ? `+${fmtInt(n)}` : fmtInt(n));

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
  const setText = (id, text) => { const n = $(id); if (n) n.textContent = text; };
  const accountLink = (pk, label) => el('a', { href: `#/account/${pk}`, text: label || String(pk) });
  const entityLink = (e) => accountLink(e[KEY], (LABEL && e[LABEL]) || e[KEY]);

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

  for (const n of document.querySelectorAll('.rank-metric')) n.textContent = RANK;

  // ---- charts ---------------------------------------------------------------
  const charts = new Map();

  // Draws a line chart in `container`. `data` is uPlot's columnar form:
  // [xs in seconds, ys...]; `xRange` ([from, to] in seconds) pins the time
  // axis to the range asked for, so a few points do not fill the width.
  function lineChart(container, series, data, { axes, xRange } = {}) {
    const old = charts.get(container);
    // A live chart with a free time axis only gets new data (keeps hover).
    if (old && !xRange && old.series.length === series.length + 1 && (data[0].length < 60) === old.sparse) {
      old.setData(data);
      return;
    }
    if (old) old.destroy();
    container.replaceChildren();
    const width = Math.max(container.clientWidth, 200);
    const sparse = data[0].length < 60;
    const chart = new uPlot({
      width,
      height: 220,
      cursor: { drag: { x: true, y: false } },
      scales: { x: xRange ? { time: true, range: () => xRange } : { time: true } },
      series: [{}, ...series.map((s) => ({ stroke: s.color, width: 2, points: { show: sparse }, ...s }))],
      axes: axes || [{}, { size: 70 }],
    }, data, container);
    chart.sparse = sparse;
    charts.set(container, chart);
  }

  function emptyChart(container, message) {
    const old = charts.get(container);
    if (old) { old.destroy(); charts.delete(container); }
    container.replaceChildren(el('div', { class: 'empty', text: message }));
  }

  window.addEventListener('resize', () => {
    for (const [container, chart] of charts) {
      chart.setSize({ width: Math.max(container.clientWidth, 200), height: 220 });
    }
  });

  function rangeButtons(target, onPick) {
    const host = document.querySelector(`.ranges[data-target="${target}"]`);
    let current = RANGES[0];
    const buttons = RANGES.map((r) => {
      const b = el('button', { type: 'button', text: r.label, 'data-range': r.label });
      b.addEventListener('click', () => { current = r; paint(); onPick(r); });
      return b;
    });
    const paint = () => buttons.forEach((b, i) => b.classList.toggle('active', RANGES[i] === current));
    host.replaceChildren(...buttons);
    paint();
    return () => current;
  }

  // The server's clock minus this browser's, from the stats samples' `t`:
  // ranges end at the server's now (its job clock may run ahead, e.g. with
  // --clock-offset, or this machine's clock may be behind), else the
  // newest samples would fall outside the range.
  let serverSkew = 0;
  function serverNow() { return Date.now() + serverSkew; }
  function noteServerTime(t) { if (Number.isFinite(t)) serverSkew = t - Date.now(); }

  // The API path of a series read over `range` ending now, and the time
  // axis to draw it on.
  function seriesRead(base, range, extra) {
    // A second past now: a sample is never stamped later than its read,
    // and the skew is only known to within the stats' delivery time.
    const to = serverNow() + 1000;
    const from = to - range.span;
    const params = new URLSearchParams({ ...extra, from: String(from), to: String(to) });
    if (range.step) params.set('step', range.step);
    return { path: `${base}?${params}`, xRange: [from / 1000, to / 1000] };
  }

  // uPlot's columns from [[ms, value], …]; a pause of more than three
  // usual spacings (trawler was stopped) becomes a break in the line.
  function columns(points) {
    const xs = [];
    const ys = [];
    let spacing = Infinity;
    for (let i = 1; i < points.length; i++) spacing = Math.min(spacing, points[i][0] - points[i - 1][0]);
    points.forEach(([t, v], i) => {
      if (i > 0 && t - points[i - 1][0] > 3 * spacing) {
        xs.push((points[i - 1][0] + t) / 2000);
        ys.push(null);
      }
      xs.push(t / 1000);
      ys.push(v);
    });
    return [xs, ys];
  }

  // ---- crawl health, live -------------------------------------------------
  const health = [];

  function renderStats(s) {
    setText('stat-tracked', fmtInt(s.trackedAccounts));
    setText('stat-polls-per-second', fmtNum(s.pollsPerSecond, 0));
    setText('stat-polls', fmtInt(s.polls));
    setText('stat-lag', s.lagP99Ms == null ? '–' : `${fmtNum(s.lagP50Ms, 1)} / ${fmtNum(s.lagP99Ms, 1)} ms`);
    setText('stat-errors', fmtInt(s.errors));
    setText('stat-gaps', fmtInt(s.gaps));
    setText('stat-invalid', fmtInt(s.invalidAccounts));
    setText('stat-samples', fmtInt(s.samplesStored));
    setText('stat-disk', fmtBytes(s.bytesOnDisk));
    setText('stat-bps', fmtNum(s.bytesPerSample, 3));
    if (FLAG) {
      const count = s[`${FLAG}Count`];
      const sweep = s[`last${capital(FLAG)}SweepProgress`];
      setText('stat-suspicious', fmtInt(count));
      setText('stat-sweep', sweep == null ? 'off' : `${fmtNum(100 * sweep, 1)} %`);
      setText('suspicious-count', count == null ? '' : `(${fmtInt(count)})`);
    }
    // Said plainly when the target (or max_rate) cannot keep up.
    const behind = $('behind');
    behind.hidden = !s.behindSchedule;
    if (s.behindSchedule) {
      behind.textContent = `The schedule cannot be held: it needs ${fmtNum(s.neededPerSecond, 0)} polls/s, `
        + `the target allows ${fmtNum(s.achievedPerSecond, 0)}/s, so each account is read about every `
        + `${fmtNum(s.effectiveIntervalMs / 1000, 1)} s instead of every ${fmtNum(s.intervalMs / 1000, 1)} s.`;
    }
  }

  function drawHealth() {
    const container = $('chart-health');
    if (!health.length) { emptyChart(container, 'waiting for the first sample…'); return; }
    lineChart(container, [
      { label: 'polls/s', color: '#2563eb', scale: 'y' },
      { label: 'lag p99 ms', color: '#f59e0b', scale: 'ms' },
    ], [
      health.map((s) => s.t / 1000),
      health.map((s) => s.pollsPerSecond),
      health.map((s) => s.lagP99Ms),
    ], { axes: [{}, { scale: 'y', size: 60 }, { scale: 'ms', side: 1, size: 50, grid: { show: false } }] });
  }

  function addHealth(sample) {
    health.push(sample);
    const cutoff = sample.t - HEALTH_WINDOW_MS;
    while (health.length && health[0].t < cutoff) health.shift();
  }

  async function loadHealthHistory() {
    try {
      const history = await getJSON(`${API}/health/history`);
      const seen = new Set(health.map((s) => s.seq));
      for (const s of history.samples) if (!seen.has(s.seq)) health.push(s);
      health.sort((a, b) => a.t - b.t);
      if (health.length) renderStats(health[health.length - 1]);
      drawHealth();
    } catch (e) {
      emptyChart($('chart-health'), `history unavailable: ${e.message}`);
    }
  }

  // ---- average -------------------------------------------------------------
  const averageRange = rangeButtons('average', () => loadAverage());
  async function loadAverage() {
    const container = $('chart-average');
    try {
      const read = seriesRead(`${API}/average/series`, averageRange());
      const body = await getJSON(read.path);
      if (!body.points.length) { emptyChart(container, 'no averages yet (one per minute)'); return; }
      lineChart(container, [{ label: `average ${RANK}`, color: '#7c3aed' }], columns(body.points), read);
    } catch (e) {
      emptyChart(container, e.message);
    }
  }

  // ---- leaderboard, movers, suspicious ---------------------------------------
  async function loadLists() {
    try {
      const top = await getJSON(`${API}/top?by=${encodeURIComponent(RANK)}&limit=20`);
      $('leaderboard').tBodies[0].replaceChildren(...top.entries.map((e) => el('tr', {},
        el('td', { text: fmtInt(e.rank) }),
        el('td', {}, entityLink(e)),
        el('td', { class: 'num', text: fmtInt(e[RANK]) }))));
      for (const by of ['gain1h', 'loss1h', 'gain24h', 'loss24h']) {
        const body = await getJSON(`${API}/top?by=${by}&limit=10`);
        const rows = body.entries.map((e) => el('tr', {},
          el('td', {}, entityLink(e)),
          el('td', { class: `num ${e.gain >= 0 ? 'gain' : 'loss'}`, text: fmtSigned(e.gain) })));
        if (!rows.length) rows.push(el('tr', {}, el('td', { class: 'empty', text: 'needs an hour of data' })));
        $(`movers-${by}`).tBodies[0].replaceChildren(...rows);
      }
      if (FLAG) {
        const flagged = await getJSON(`${API}/${encodeURIComponent(FLAG)}?limit=200`);
        const links = flagged[KEYS].map((key) => accountLink(key));
        $('suspicious').replaceChildren(...(links.length ? links : [el('span', { text: 'none found yet' })]));
      }
    } catch (e) {
      console.warn('lists', e);
    }
  }

  // ---- account page --------------------------------------------------------
  let accountPk = null;
  let accountLoadedAt = 0;
  // A chart found no points yet (the account was just tracked or not yet
  // stored): the next live update tries again instead of waiting 30 s.
  let accountChartsEmpty = false;
  const accountRange = rangeButtons('account', () => loadAccountCharts());

  const chartBox = new Map();
  for (const metric of METRICS) {
    const box = el('div', { class: 'chart', id: `chart-${metric}` });
    chartBox.set(metric, box);
    $('account-charts').append(el('div', { class: 'panel' }, el('h3', { text: metric }), box));
    $('account-cards').insertBefore(
      el('div', { class: 'card' }, el('span', { class: 'label', text: metric }),
        el('span', { class: 'value', id: `account-${metric}`, text: '–' })),
      $('account-suspicious').parentElement);
  }

  async function loadAccount() {
    const pk = accountPk;
    try {
      const e = await getJSON(`${API}/${pk}`);
      if (pk !== accountPk) return;
      $('account-error').hidden = true;
      setText('account-username', (LABEL && e[LABEL]) || '');
      setText('account-rank', e.rank == null ? '–' : `#${fmtInt(e.rank)}`);
      for (const metric of METRICS) {
        const v = e[metric];
        setText(`account-${metric}`, v == null ? '–' : Number.isInteger(v) ? fmtInt(v) : fmtNum(v, 3));
      }
      if (FLAG) {
        const flag = $('account-suspicious');
        const answer = e[FLAG];
        const checkedAt = e[`${FLAG}CheckedAt`];
        flag.textContent = answer == null ? 'not checked yet' : answer ? 'yes' : 'no';
        flag.className = `value${answer ? ' yes' : ''}`;
        flag.title = checkedAt ? `checked ${fmtTime(checkedAt)}` : '';
      }
      setText('account-crawled', fmtTime(e.lastCrawledAt));
      return true;
    } catch (err) {
      if (pk !== accountPk) return;
      $('account-error').hidden = false;
      $('account-error').textContent = err.message;
      return false;
    }
  }

  async function loadAccountCharts() {
    const pk = accountPk;
    const range = accountRange();
    accountChartsEmpty = false;
    await Promise.all(METRICS.map(async (metric) => {
      const box = chartBox.get(metric);
      try {
        const read = seriesRead(`${API}/${pk}/series`, range, { metric });
        const body = await getJSON(read.path);
        if (pk !== accountPk) return;
        if (!body.points.length) {
          accountChartsEmpty = true;
          emptyChart(box, 'no points in this range yet');
          return;
        }
        lineChart(box, [{ label: metric, color: '#2563eb' }], columns(body.points), read);
      } catch (e) {
        // Tried again on the next stats event, like an empty chart.
        accountChartsEmpty = true;
        emptyChart(box, e.message);
      }
    }));
    accountLoadedAt = Date.now();
    document.body.dataset.account = String(pk);
  }

  async function showAccount(pk) {
    accountPk = pk;
    $('overview').hidden = true;
    $('account').hidden = false;
    setText('account-pk', String(pk));
    setText('account-username', '');
    $('search-pk').value = String(pk);
    if (await loadAccount()) await loadAccountCharts();
    else for (const box of chartBox.values()) emptyChart(box, '');
  }

  function showOverview() {
    accountPk = null;
    $('account').hidden = true;
    $('overview').hidden = false;
    // Charts drawn while hidden have zero width.
    window.dispatchEvent(new Event('resize'));
  }

  function route() {
    const m = location.hash.match(/^#\/account\/(.+)$/);
    if (m && KEY_PATTERN.test(m[1])) showAccount(m[1]);
    else showOverview();
  }

  $('search').addEventListener('submit', (event) => {
    event.preventDefault();
    const pk = $('search-pk').value.trim();
    if (!KEY_PATTERN.test(pk)) {
      $('search-pk').setCustomValidity(INFO.stringKeys
        ? `a ${KEY} is letters, digits and - . _ ~ : @ + !` : `a ${KEY} is a number`);
      $('search-pk').reportValidity();
      return;
    }
    $('search-pk').setCustomValidity('');
    if (location.hash === `#/account/${pk}`) route();
    else location.hash = `#/account/${pk}`;
  });
  window.addEventListener('hashchange', route);

  // ---- the event stream ----------------------------------------------------
  function connect() {
    const live = $('live');
    const source = new EventSource('/api/v1/events');
    source.addEventListener('open', () => { live.textContent = 'live'; live.className = 'live on'; });
    source.addEventListener('error', () => { live.textContent = 'reconnecting'; live.className = 'live off'; });
    source.addEventListener('stats', (event) => {
      const sample = JSON.parse(event.data);
      noteServerTime(sample.t);
      renderStats(sample);
      addHealth(sample);
      if (!$('overview').hidden) drawHealth();
      if (accountPk != null) {
        loadAccount();
        if (accountChartsEmpty || Date.now() - accountLoadedAt > CHART_REFRESH_MS) loadAccountCharts();
      }
    });
  }

  route();
  loadHealthHistory().then(connect);
  loadAverage();
  loadLists();
  setInterval(loadLists, LIST_REFRESH_MS);
  setInterval(loadAverage, 60e3);
})();

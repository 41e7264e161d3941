// The page of a batch job (`trawler crawl`): a progress bar, the recent
// rates of done, dead and retried URLs, the ETA, dead letters by kind and
// the busiest hosts, read every second from GET /api/v1/batch/{job} and
// GET /api/v1/batch/{job}/hosts. Values from the API are only ever written
// with textContent, never as HTML.
(() => {
  'use strict';

  const INFO = JSON.parse(document.querySelector('meta[name="trawler-batch-info"]').content);
  const API = `/api/v1/batch/${encodeURIComponent(INFO.name)}`;
  const HOSTS = 20;
  const POLL_MS = 1000;
  const KEEP_MS = 15 * 60e3;
  const $ = (id) => document.getElementById(id);

  // ---- formatting -----------------------------------------------------------
  const fmtInt = (n) => (n == null ? '–' : Math.round(n).toLocaleString('en-US'));
  const fmtRate = (n) => (n == null ? '–' : n.toLocaleString('en-US', { maximumFractionDigits: n < 10 ? 1 : 0 }));
  const fmtMB = (b) => (b / 1e6).toLocaleString('en-US', { maximumFractionDigits: 1 });
  const fmtPct = (f) => `${(f * 100).toFixed(f < 0.1 ? 1 : 0)}%`;
  const fmtDuration = (s) => {
    if (s == null || !Number.isFinite(s)) return '–';
    s = Math.round(s);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.round(s / 86400)} d`;
  };

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
      throw new Error((body && body.error && body.error.message) || `HTTP ${response.status}`);
    }
    return body;
  }

  for (const n of document.querySelectorAll('.job-name')) n.textContent = INFO.name;

  // ---- the chart of recent rates --------------------------------------------
  const rates = []; // { t, done, dead, retries }
  let chart = null;

  function drawRates() {
    const container = $('chart-rates');
    if (rates.length < 2) {
      container.replaceChildren(el('div', { class: 'empty', text: 'measuring…' }));
      return;
    }
    const data = [
      rates.map((r) => r.t / 1000),
      rates.map((r) => r.done),
      rates.map((r) => r.dead),
      rates.map((r) => r.retries),
    ];
    if (chart) { chart.setData(data); return; }
    container.replaceChildren();
    chart = new uPlot({
      width: Math.max(container.clientWidth, 200),
      height: 240,
      scales: { x: { time: true } },
      series: [{},
        { label: 'done/s', stroke: '#16a34a', width: 2 },
        { label: 'dead/s', stroke: '#dc2626', width: 2 },
        { label: 'retries/s', stroke: '#f59e0b', width: 2, dash: [6, 4] }],
      axes: [{}, { size: 70 }],
    }, data, container);
  }
  window.addEventListener('resize', () => {
    if (chart) chart.setSize({ width: Math.max($('chart-rates').clientWidth, 200), height: 240 });
  });

  // ---- the figures ----------------------------------------------------------
  function card(name, value, sub) {
    const c = document.querySelector(`.card[data-stat="${name}"]`);
    c.querySelector('.value').textContent = value;
    c.querySelector('.sub').textContent = sub;
  }

  function renderStatus(s) {
    const fraction = Math.max(0, Math.min(1, s.fraction_done));
    $('bar-fill').style.width = `${(fraction * 100).toFixed(1)}%`;
    $('bar').setAttribute('aria-valuenow', (fraction * 100).toFixed(0));
    $('bar-text').textContent = `${fmtPct(fraction)} · ${fmtInt(s.done + s.dead)} URLs with an outcome`;
    $('state').textContent = `${s.state} · ${fmtDuration(s.elapsed_s)}`;
    document.body.dataset.state = s.state;
    card('done', fmtRate(s.done_per_s), `${fmtInt(s.done)} done`);
    card('dead', fmtRate(s.dead_per_s), `${fmtInt(s.dead)} dead`);
    card('retries', fmtRate(s.retries_per_s), `${fmtInt(s.retries)} retried`);
    card('eta', s.state === 'finished' ? 'finished' : fmtDuration(s.eta_s), s.eta_s == null ? 'not known yet' : 'at the rate since the start');
    card('rate', fmtRate(s.urls_per_s), `${fmtDuration(s.elapsed_s)} running`);
    card('in_flight', fmtInt(s.in_flight), `${fmtInt(s.downloading)} downloading`);
    card('bytes', `${fmtMB(s.bytes)} MB`, `${fmtInt(s.hosts)} hosts`);
    card('input', fmtPct(s.input_fraction), `${fmtInt(s.lines)} lines · ${fmtInt(s.duplicates)} duplicates`);

    const kinds = Object.entries(s.dead_by_kind).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    $('dead-total').textContent = `${fmtInt(s.dead)} in all`;
    $('dead').tBodies[0].replaceChildren(...(kinds.length
      ? kinds.map(([kind, n]) => el('tr', { 'data-kind': kind },
        el('td', { text: kind }), el('td', { class: 'num', text: fmtInt(n) }),
        el('td', { class: 'num', text: fmtPct(n / Math.max(1, s.dead)) })))
      : [el('tr', {}, el('td', { colspan: '3', class: 'muted', text: 'none yet' }))]));
  }

  function hostRow(h, rest) {
    return el('tr', rest ? { class: 'rest' } : { 'data-host': h.host },
      el('td', { text: rest ? 'all other hosts' : h.host, title: h.complete || rest ? '' : 'counted since it became one of the busiest; its earlier URLs are in the last row' }),
      el('td', { class: 'num', text: fmtInt(h.urls) }),
      el('td', { class: 'num', text: fmtInt(h.done) }),
      el('td', { class: 'num', text: fmtInt(h.dead) }),
      el('td', { class: 'num', text: fmtInt(h.retries) }),
      el('td', { class: 'num', text: fmtMB(h.bytes) }),
      el('td', { class: 'num', text: fmtInt(h.in_flight) }),
      el('td', { class: 'num', text: fmtRate(h.per_s) }));
  }

  function renderHosts(a) {
    const rows = a.hosts.map((h) => hostRow(h, false));
    if (a.rest.urls > 0) rows.push(hostRow(a.rest, true));
    $('hosts').tBodies[0].replaceChildren(...rows);
    $('hosts-note').textContent = `by URLs started · ${a.tracked} of at most ${fmtInt(a.capacity)} hosts counted one by one`;
  }

  let busy = false;
  async function poll() {
    if (busy) return;
    busy = true;
    const live = $('live');
    try {
      const [s, h] = await Promise.all([getJSON(API), getJSON(`${API}/hosts?limit=${HOSTS}`)]);
      renderStatus(s);
      renderHosts(h);
      rates.push({ t: Date.now(), done: s.done_per_s, dead: s.dead_per_s, retries: s.retries_per_s });
      while (rates.length && rates[0].t < Date.now() - KEEP_MS) rates.shift();
      drawRates();
      document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
      live.textContent = 'live';
      live.className = 'live on';
    } catch (e) {
      live.textContent = `offline: ${e.message}`;
      live.className = 'live off';
    } finally {
      busy = false;
    }
  }

  drawRates();
  poll();
  setInterval(poll, POLL_MS);
})();

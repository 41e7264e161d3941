// Drives a real Chromium (Debian's package) against a running stream job
// (the `expo` A/B-test monitor, fed by `trawler gen expo`) and checks its
// page as a person would see it. Run by crates/trawler/tests/dashboard.rs:
//
//   node stream.mjs BASE_URL ARTIFACT_DIR [SHOT_PREFIX]
//
// The job's names (its key and value labels, series, formulas) are read
// from the page itself. Expects at least one closed window. Prints one JSON
// line of what it saw; exits non-zero with a reason on the first failed
// check. Screenshots go to ARTIFACT_DIR: SHOT_PREFIX.png and
// SHOT_PREFIX-phone.png (default prefix `stream`).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, artifacts, prefix = 'stream'] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node stream.mjs BASE_URL ARTIFACT_DIR [SHOT_PREFIX]');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const fail = (message) => { throw new Error(message); };
const number = (text) => {
  const t = String(text).replace(/,/g, '').trim();
  return /^-?\d+(\.\d+)?(e-?\d+)?$/.test(t) ? Number(t) : NaN;
};

// The page says which key/metric/range its chart and table show once drawn.
const loadedAs = (prefix) => (document.body.dataset.loaded || '').startsWith(prefix);

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });
  page.on('response', (r) => { if (r.status() >= 400) pageErrors.push(`${r.status()} ${r.url()}`); });

  await page.goto(base, { waitUntil: 'load' });
  const info = JSON.parse(await page.getAttribute('meta[name="trawler-stream-info"]', 'content'));
  seen.job = info.name;
  const api = `/api/v1/streams/${encodeURIComponent(info.name)}`;

  // The health strip: counters read from the API, every second.
  await page.waitForSelector('#live.on', { timeout: 20_000 })
    .catch(() => fail('the live indicator never turned on: the job cannot be read'));
  // (Predicates are functions: the page's CSP forbids evaluating strings.)
  await page.waitForFunction(() => {
    const total = (stat) => Number(document.querySelector(`.sub[data-stat="${stat}"]`).textContent.replace(/\D/g, ''));
    return total('accepted') > 0 && total('filtered') > 0;
  }, null, { timeout: 20_000 })
    .catch(() => fail('accepted or filtered stayed at zero'));
  seen.accepted = number((await page.textContent('.sub[data-stat="accepted"]')).replace(' total', ''));
  seen.filtered = number((await page.textContent('.sub[data-stat="filtered"]')).replace(' total', ''));
  seen.lag = await page.textContent('.card[data-stat="watermark_lag"] .value');
  seen.openWindows = await page.textContent('.card[data-stat="open_windows"] .value');

  // Live rates: events posted now show as accepted/s and filtered/s without
  // a reload (inside an open window: just before the watermark).
  await page.evaluate(() => { window.__notReloaded = true; });
  const posted = await page.evaluate(async ([api, key, value]) => {
    const job = await (await fetch(api)).json();
    const groups = (await (await fetch(`${api}/groups`)).json()).groups;
    const ts = job.stats.watermark_ms - 1000;
    const exp = { [groups[0][key]]: groups[0][value] };
    const lines = [];
    for (let i = 0; i < 200; i++) {
      lines.push(JSON.stringify({ ts, user: `browser${i}`, type: i % 2 ? 'page_view' : 'heartbeat', exp }));
    }
    const r = await fetch(`${api}/events`, { method: 'POST', body: lines.join('\n'), headers: { 'content-type': 'application/x-ndjson' } });
    return r.ok ? r.json() : { status: r.status };
  }, [api, info.key_label, info.value_label]);
  if (!(posted.accepted > 0 && posted.filtered > 0)) fail(`posting events: ${JSON.stringify(posted)}`);
  await page.waitForFunction(() => {
    const rate = (stat) => Number(document.querySelector(`.card[data-stat="${stat}"] .value`).textContent.replace(/,/g, ''));
    return rate('accepted_per_s') > 0 && rate('filtered_per_s') > 0;
  }, null, { timeout: 20_000 })
    .catch((e) => fail(`accepted/s or filtered/s stayed at zero after posting events: ${e.message}`));
  seen.ratesSeen = true;
  if (!(await page.evaluate(() => window.__notReloaded === true))) fail('the page reloaded');

  // The key selector lists the keys seen (from the API's groups).
  const groups = await page.evaluate(async (api) => (await (await fetch(`${api}/groups`)).json()).groups, api);
  const byKey = new Map();
  for (const g of groups) {
    const k = g[info.key_label];
    if (!byKey.has(k)) byKey.set(k, new Set());
    byKey.get(k).add(g[info.value_label]);
  }
  await page.waitForFunction((n) => document.querySelectorAll('#pick-key option').length === n && !document.getElementById('pick-key').disabled,
    byKey.size, { timeout: 20_000 })
    .catch(async () => fail(`the selector lists ${await page.locator('#pick-key option').count()} keys, the API ${byKey.size}`));
  const listed = await page.$$eval('#pick-key option', (os) => os.map((o) => o.value));
  const missing = [...byKey.keys()].filter((k) => !listed.includes(k));
  if (missing.length) fail(`keys missing from the selector: ${missing.join(', ')}`);
  seen.keys = listed.length;

  // The chart: one line per value of the chosen key.
  const chosen = await page.inputValue('#pick-key');
  const metric = await page.inputValue('#pick-metric');
  seen.chosen = chosen;
  seen.metric = metric;
  await page.waitForFunction(loadedAs, `${chosen}/${metric}/`, { timeout: 20_000 })
    .catch(() => fail(`the chart of ${chosen} ${metric} never loaded`));
  await page.waitForSelector('#chart-variants canvas', { timeout: 10_000 })
    .catch(async () => fail(`no chart: ${await page.textContent('#chart-variants')}`));
  const legend = await page.$$eval('#chart-variants .u-legend .u-series .u-label', (ls) => ls.map((l) => l.textContent));
  const variants = [...byKey.get(chosen)].sort();
  seen.chartSeries = legend.slice(1);
  if (JSON.stringify([...seen.chartSeries].sort()) !== JSON.stringify(variants)) {
    fail(`the chart of ${chosen} has series ${JSON.stringify(seen.chartSeries)}, its values are ${JSON.stringify(variants)}`);
  }

  // The table: values as columns, every series and formula as a row, and a
  // finite conversion for every value that has visitors.
  await page.waitForSelector('#latest tbody tr[data-metric]', { timeout: 10_000 });
  const table = await page.evaluate(() => {
    const columns = [...document.querySelectorAll('#latest thead th[data-variant]')].map((th) => th.dataset.variant);
    const rows = {};
    for (const tr of document.querySelectorAll('#latest tbody tr[data-metric]')) {
      rows[tr.dataset.metric] = Object.fromEntries([...tr.querySelectorAll('td[data-variant]')].map((td) => [td.dataset.variant, td.textContent]));
    }
    return { columns, rows, window: document.getElementById('latest').dataset.window };
  });
  if (!table.window) fail('the table shows no closed window');
  if (JSON.stringify([...table.columns].sort()) !== JSON.stringify(variants)) fail(`table columns ${table.columns}`);
  const names = [...info.series, ...info.formulas.map((f) => f.name)];
  const missingRows = names.filter((n) => !table.rows[n]);
  if (missingRows.length) fail(`rows missing from the table: ${missingRows.join(', ')}`);
  seen.conversion = {};
  let withVisitors = 0;
  for (const v of variants) {
    const visitors = number(table.rows.visitors[v]);
    if (!(visitors > 0)) continue;
    withVisitors++;
    const c = number(table.rows.conversion[v]);
    if (!Number.isFinite(c)) fail(`${chosen} ${v} has ${visitors} visitors and conversion "${table.rows.conversion[v]}"`);
    seen.conversion[v] = c;
  }
  if (!withVisitors) fail(`no value of ${chosen} has visitors in the latest window`);
  await page.waitForSelector('#chart-health canvas', { timeout: 10_000 })
    .catch(() => fail('no events/s chart'));
  await page.screenshot({ path: join(artifacts, `${prefix}.png`), fullPage: true });

  // Another key and another metric redraw from the API.
  if (listed.length > 1) {
    await page.selectOption('#pick-key', listed[1]);
    await page.selectOption('#pick-metric', 'visitors');
    await page.waitForFunction(loadedAs, `${listed[1]}/visitors/`, { timeout: 20_000 })
      .catch(() => fail(`choosing ${listed[1]} / visitors did not redraw`));
    const n = await page.$$eval('#chart-variants .u-legend .u-series', (s) => s.length - 1);
    if (n !== byKey.get(listed[1]).size) fail(`${listed[1]}: ${n} series for ${byKey.get(listed[1]).size} values`);
    seen.second = { key: listed[1], series: n };
  }

  // Readable on a phone: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(base, { waitUntil: 'load' });
  await page.waitForSelector('body[data-loaded]', { timeout: 20_000 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) fail(`on a phone the page is ${overflow}px wider than the screen`);
  await page.screenshot({ path: join(artifacts, `${prefix}-phone.png`), fullPage: true });

  if (pageErrors.length) fail(`the page logged errors: ${pageErrors.join(' | ')}`);
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}

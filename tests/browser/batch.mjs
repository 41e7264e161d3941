// Drives a real Chromium (Debian's package) against a running batch job
// (`trawler crawl` over the image simulator) and checks its page as a
// person would see it. Run by crates/trawler/tests/dashboard.rs:
//
//   node batch.mjs BASE_URL ARTIFACT_DIR [SHOT_PREFIX]
//
// Expects a crawl slow enough to be watched for a few seconds. Prints one
// JSON line of what it saw; exits non-zero with a reason on the first
// failed check. Screenshots go to ARTIFACT_DIR: SHOT_PREFIX.png and
// SHOT_PREFIX-phone.png (default prefix `batch`).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, artifacts, prefix = 'batch'] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node batch.mjs BASE_URL ARTIFACT_DIR [SHOT_PREFIX]');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const fail = (message) => { throw new Error(message); };
const number = (text) => Number(String(text).replace(/[^0-9.]/g, ''));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Waits for a condition read from the page (a loop of evaluate: see
// browser_scripts_never_wait_on_an_async_predicate).
async function until(page, what, fn, arg, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await page.evaluate(fn, arg);
    if (v) return v;
    if (Date.now() > deadline) fail(`${what}: not within ${timeoutMs / 1000} s`);
    await sleep(250);
  }
}

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
  const info = JSON.parse(await page.getAttribute('meta[name="trawler-batch-info"]', 'content'));
  seen.job = info.name;
  const api = `/api/v1/batch/${encodeURIComponent(info.name)}`;
  await page.waitForSelector('#live.on', { timeout: 20_000 })
    .catch(() => fail('the live indicator never turned on: the job cannot be read'));

  // The figures are the API's: done on the page within what the API said
  // just before and just after reading it.
  const done = () => Number(document.querySelector('.card[data-stat="done"] .sub').textContent.replace(/\D/g, ''));
  const first = await until(page, 'some URLs done', (f) => {
    const n = Number(document.querySelector('.card[data-stat="done"] .sub').textContent.replace(/\D/g, ''));
    return n > 0 ? n : null;
  });
  const before = await page.evaluate(async (api) => (await (await fetch(api)).json()).done, api);
  const shown = await page.evaluate(done);
  const after = await page.evaluate(async (api) => (await (await fetch(api)).json()).done, api);
  if (!(shown <= after && first <= shown)) fail(`done on the page ${shown}, the API ${before}..${after}`);
  seen.done = shown;

  // They move while it runs, without a reload.
  await page.evaluate(() => { window.__notReloaded = true; });
  seen.moved = await until(page, 'done moving on the page', (n) => {
    const now = Number(document.querySelector('.card[data-stat="done"] .sub').textContent.replace(/\D/g, ''));
    return now > n ? now : null;
  }, shown);
  if (!(await page.evaluate(() => window.__notReloaded === true))) fail('the page reloaded');
  const bar = await until(page, 'the progress bar moving', () => {
    const v = Number(document.getElementById('bar').getAttribute('aria-valuenow'));
    return v > 0 ? v : null;
  });
  seen.bar = bar;
  seen.donePerS = number(await until(page, 'a done rate', () => {
    const t = document.querySelector('.card[data-stat="done"] .value').textContent;
    return Number(t.replace(/,/g, '')) > 0 ? t : null;
  }));
  seen.eta = await page.textContent('.card[data-stat="eta"] .value');
  if (seen.eta === '–') fail('no ETA shown');

  // The busiest hosts: the API's, in its order.
  const hosts = await until(page, 'the hosts table', () => {
    const rows = [...document.querySelectorAll('#hosts tbody tr[data-host]')];
    return rows.length ? rows.map((r) => r.dataset.host) : null;
  });
  const apiHosts = await page.evaluate(async (api) => (await (await fetch(`${api}/hosts?limit=20`)).json()).hosts.map((h) => h.host), api);
  const known = new Set(apiHosts);
  if (hosts.length !== apiHosts.length) fail(`${hosts.length} host rows, the API lists ${apiHosts.length}`);
  const strangers = hosts.filter((h) => !known.has(h));
  if (strangers.length) fail(`hosts the API does not list: ${strangers.join(', ')}`);
  seen.hosts = hosts.length;

  // Dead letters by kind, as the API counts them.
  await until(page, 'a dead-letter kind', () => document.querySelector('#dead tbody tr[data-kind]') !== null);
  const kinds = await page.$$eval('#dead tbody tr[data-kind]', (rs) => rs.map((r) => r.dataset.kind));
  const apiKinds = await page.evaluate(async (api) => (await (await fetch(api)).json()).dead_by_kind, api);
  const unknownKinds = kinds.filter((k) => !(apiKinds[k] > 0));
  if (unknownKinds.length) fail(`dead-letter kinds the API does not count: ${unknownKinds.join(', ')}`);
  seen.deadKinds = kinds;
  await until(page, 'the rates chart', () => document.querySelector('#chart-rates canvas') !== null);
  await page.screenshot({ path: join(artifacts, `${prefix}.png`), fullPage: true });

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

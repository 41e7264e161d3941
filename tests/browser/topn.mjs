// Drives a real Chromium (Debian's package) against a running top-N job
// (the `comments` job) and checks its page as a person would see it: the
// hottest keys' lists appear, and a change is pushed without a reload.
// Run by crates/trawler/tests/dashboard.rs:
//
//   node topn.mjs BASE_URL ARTIFACT_DIR
//
// Prints one JSON line of what it saw; exits non-zero with a reason on the
// first failed check. Screenshot: ARTIFACT_DIR/topn.png.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node topn.mjs BASE_URL ARTIFACT_DIR');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const fail = (message) => { throw new Error(message); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Waits in a loop of page.evaluate (never on an async predicate).
async function until(page, fn, arg, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await page.evaluate(fn, arg)) return;
    if (Date.now() > deadline) fail(what);
    await sleep(100);
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
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
  await until(page, () => document.querySelector('#live.on') !== null, null,
    'the subscription never went live');
  await until(page, () => document.querySelectorAll('.card.topn li').length > 0, null,
    'no list was shown');
  seen.keys = await page.evaluate(() => [...document.querySelectorAll('.card.topn')].map((c) => c.dataset.key));
  const key = seen.keys[0];
  // A new member overtakes on the hottest key: the page must show it
  // without a reload, pushed over the subscription.
  const api = `/api/v1/streams/${encodeURIComponent(info.name)}`;
  await page.evaluate(async ({ api, key }) => {
    const now = Date.now();
    const body = Array.from({ length: 500 }, () =>
      JSON.stringify({ ts: now, post: key, user: 'browser-pushed', words: 1 })).join('\n');
    const r = await fetch(`${api}/events`, { method: 'POST', body });
    if (!r.ok) throw new Error(`POST events: ${r.status}`);
  }, { api, key });
  await until(page, (key) => {
    const li = document.querySelector(`.card.topn[data-key="${key}"] li`);
    return li !== null && li.textContent.startsWith('browser-pushed');
  }, key, 'the pushed change never showed');
  seen.pushed = true;
  seen.accepted = await page.evaluate(() => document.querySelector('.sub[data-stat="accepted"]').textContent);
  await page.screenshot({ path: join(artifacts, 'topn.png'), fullPage: true });
  if (pageErrors.length) fail(`page errors: ${pageErrors.join('; ')}`);
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}

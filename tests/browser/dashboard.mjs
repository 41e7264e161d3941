// Drives a real Chromium (Debian's package) against a running trawler and
// checks the dashboard as a person would see it. Run by
// crates/trawler/tests/dashboard.rs:
//
//   node dashboard.mjs BASE_URL ARTIFACT_DIR KEY [SHOT_PREFIX]
//
// Any job: the page's names (key, ranked metric) are read from the page
// itself. Prints one JSON line of what it saw; exits non-zero with a reason
// on the first failed check. Screenshots go to ARTIFACT_DIR, named
// SHOT_PREFIX.png, SHOT_PREFIX-account.png, SHOT_PREFIX-phone.png
// (default prefix `dashboard`).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, artifacts, pk, prefix = 'dashboard'] = process.argv.slice(2);
if (!base || !artifacts || !pk) {
  console.error('usage: node dashboard.mjs BASE_URL ARTIFACT_DIR KEY [SHOT_PREFIX]');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const fail = (message) => { throw new Error(message); };
const number = (text) => Number(String(text).replace(/[^0-9.\-]/g, ''));

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
  // Failed requests are judged by URL below; other console errors are bugs.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(m.text());
  });
  page.on('response', (r) => {
    const expected404 = r.status() === 404 && /\/api\/v1\/[^/]+\/1(\/series.*)?$/.test(new URL(r.url()).pathname);
    if (r.status() >= 400 && !expected404) pageErrors.push(`${r.status()} ${r.url()}`);
  });

  await page.goto(base, { waitUntil: 'load' });
  // A marker that a reload would wipe: live numbers must change without one.
  await page.evaluate(() => { window.__notReloaded = true; });

  // The event stream connects and the health numbers are real.
  await page.waitForSelector('#live.on', { timeout: 20_000 })
    .catch(() => fail('the live indicator never turned on: no event stream'));
  await page.waitForFunction(() => Number(document.getElementById('stat-polls').textContent.replace(/\D/g, '')) > 0,
    null, { timeout: 20_000 }).catch(() => fail('polls stayed at zero'));
  const polls1 = number(await page.textContent('#stat-polls'));
  seen.tracked = number(await page.textContent('#stat-tracked'));
  if (!(seen.tracked > 0)) fail(`tracked accounts shown as ${seen.tracked}`);
  seen.pollsPerSecond = number(await page.textContent('#stat-polls-per-second'));

  // A live number changes without a reload.
  await page.waitForFunction((before) => Number(document.getElementById('stat-polls').textContent.replace(/\D/g, '')) > before,
    polls1, { timeout: 20_000 }).catch(() => fail(`polls stayed at ${polls1} for 20 s`));
  const polls2 = number(await page.textContent('#stat-polls'));
  if (!(await page.evaluate(() => window.__notReloaded === true))) fail('the page reloaded');
  seen.polls = [polls1, polls2];

  // Charts and lists are filled.
  await page.waitForSelector('#chart-health canvas', { timeout: 20_000 })
    .catch(() => fail('no health chart'));
  await page.waitForSelector('#leaderboard tbody tr td a', { timeout: 20_000 })
    .catch(() => fail('the leaderboard stayed empty'));
  seen.leaderboardRows = await page.locator('#leaderboard tbody tr').count();
  const firstRank = await page.textContent('#leaderboard tbody tr td');
  if (number(firstRank) !== 1) fail(`the leaderboard starts at rank ${firstRank}`);
  await page.waitForTimeout(1_500); // let the charts settle for the picture
  await page.screenshot({ path: join(artifacts, `${prefix}.png`), fullPage: true });

  // Searching a pk shows its chart, rank and status — once the account has
  // been crawled (its first slot may come up to one interval after start).
  const info = JSON.parse(await page.getAttribute('meta[name="trawler-job-info"]', 'content'));
  const job = info.name;
  const metric = info.rankMetric;
  seen.job = job;
  // (A loop, not waitForFunction: an async predicate returns a Promise,
  // which waitForFunction takes as true at once; that let this check pass
  // before the account had a stored point, and the chart came up empty.)
  const crawledBy = Date.now() + 60_000;
  for (;;) {
    const points = await page.evaluate(async ([job, pk, metric]) => {
      const r = await fetch(`/api/v1/${job}/${pk}/series?metric=${metric}`);
      return r.ok ? (await r.json()).points.length : 0;
    }, [job, pk, metric]);
    if (points > 0) break;
    if (Date.now() > crawledBy) fail(`account ${pk} has no stored point after 60 s`);
    await page.waitForTimeout(250);
  }
  await page.fill('#search-pk', pk);
  await page.click('#search button[type=submit]');
  await page.waitForSelector(`body[data-account="${pk}"]`, { timeout: 20_000 })
    .catch(() => fail(`searching ${pk} did not load the account`));
  await page.waitForSelector(`#chart-${metric} canvas`, { timeout: 10_000 })
    .catch(async () => fail(`no ${metric} chart on the account page: ${await page.textContent(`#chart-${metric}`)}`));
  seen.accountRank = await page.textContent('#account-rank');
  if (!/^#\d/.test(seen.accountRank)) fail(`account rank shown as ${seen.accountRank}`);
  seen.accountValue = number(await page.textContent(`#account-${metric}`));
  if (!(seen.accountValue >= 0)) fail(`no ${metric} on the account page`);
  // Another range redraws from the API.
  await page.click('.ranges[data-target="account"] button[data-range="24h"]');
  await page.waitForSelector('.ranges[data-target="account"] button.active[data-range="24h"]');
  await page.screenshot({ path: join(artifacts, `${prefix}-account.png`), fullPage: true });

  // An unknown account says so instead of breaking.
  await page.fill('#search-pk', '1');
  await page.click('#search button[type=submit]');
  await page.waitForSelector('#account-error:not([hidden])', { timeout: 10_000 })
    .catch(() => fail('an untracked pk showed no error'));
  seen.untrackedMessage = await page.textContent('#account-error');

  // Readable on a phone: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${base}/#/`, { waitUntil: 'load' });
  await page.waitForSelector('#live.on', { timeout: 20_000 });
  await page.waitForTimeout(500);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) fail(`on a phone the page is ${overflow}px wider than the screen`);
  await page.screenshot({ path: join(artifacts, `${prefix}-phone.png`) });

  if (pageErrors.length) fail(`the page logged errors: ${pageErrors.join(' | ')}`);
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}

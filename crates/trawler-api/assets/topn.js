// The page of a top-N job: health from the job's statistics, and the
// hottest keys' lists, live, from the same subscription endpoint clients
// use (GET …/subscribe, server-sent events). Every few seconds the hottest
// keys are read again; when they change, the subscription's keys are
// replaced without reconnecting (POST …/subscriptions/{id}).
"use strict";

const info = JSON.parse(document.querySelector('meta[name="trawler-stream-info"]').content);
const base = `/api/v1/streams/${encodeURIComponent(info.name)}`;
const topn = info.topn;
const HOT = 12;

document.querySelectorAll(".key-label").forEach((e) => (e.textContent = topn.key_label));
document.getElementById("job-window").textContent =
  `top ${topn.n} ${topn.member_label}s per ${topn.key_label}, last ${fmtDuration(topn.window_ms)}, sliding every ${fmtDuration(topn.slide_ms)}`;

function fmtDuration(ms) {
  if (ms % 60000 === 0) return `${ms / 60000} min`;
  if (ms % 1000 === 0) return `${ms / 1000} s`;
  return `${ms} ms`;
}
function fmt(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Math.round(n * 10) / 10 + "";
}
function setCard(stat, value, sub) {
  const card = document.querySelector(`.card[data-stat="${stat}"]`);
  if (!card) return;
  card.querySelector(".value").textContent = value;
  const s = card.querySelector(".sub");
  if (s && sub !== undefined) s.textContent = sub;
}

let previous = null;
async function health() {
  try {
    const r = await fetch(base);
    const job = await r.json();
    const s = job.stats;
    const now = performance.now();
    if (previous) {
      const dt = (now - previous.at) / 1000;
      for (const k of ["accepted", "late", "malformed"]) {
        setCard(`${k}_per_s`, fmt((s[k] - previous.s[k]) / dt), `${fmt(s[k])} in all`);
      }
    }
    previous = { at: now, s };
    setCard("watermark_lag", s.watermark_lag_ms == null ? "–" : fmt(s.watermark_lag_ms / 1000) + " s",
      s.watermark_ms == null ? "no event yet" : new Date(s.watermark_ms).toISOString());
    setCard("open_windows", fmt(s.open_windows), `${fmt(s.groups)} ${topn.key_label}s`);
  } catch (e) {
    /* the next tick retries */
  }
}

// key -> its card
const cards = new Map();
function card(key) {
  let c = cards.get(key);
  if (!c) {
    c = document.createElement("div");
    c.className = "card topn";
    c.dataset.key = key;
    c.innerHTML = `<span class="label"></span><span class="value"></span><ol class="small"></ol>`;
    c.querySelector(".label").textContent = `${topn.key_label} ${key}`;
    document.getElementById("lists").appendChild(c);
    cards.set(key, c);
  }
  return c;
}
function show(list) {
  const c = cards.get(list.key);
  if (!c) return;
  c.querySelector(".value").textContent = `${fmt(list.total)} ${topn.weighted ? "" : "events"}`;
  const ol = c.querySelector("ol");
  ol.replaceChildren(
    ...list.top.map((m) => {
      const li = document.createElement("li");
      li.textContent = `${m.member} · ${fmt(m.value)}`;
      return li;
    }),
  );
}

let source = null;
let subscription = null;
let keys = [];
const live = document.getElementById("live");

function subscribe(want) {
  if (source) source.close();
  keys = want;
  subscription = null;
  source = new EventSource(`${base}/subscribe?keys=${want.map(encodeURIComponent).join(",")}`);
  source.addEventListener("subscribed", (e) => {
    subscription = JSON.parse(e.data).id;
    live.textContent = "live";
    live.className = "live on";
  });
  for (const kind of ["snapshot", "update"]) {
    source.addEventListener(kind, (e) => JSON.parse(e.data).lists.forEach(show));
  }
  source.onerror = () => {
    live.textContent = "reconnecting";
    live.className = "live off";
  };
}

async function hottest() {
  try {
    const r = await fetch(`${base}/hot?limit=${HOT}`);
    const hot = (await r.json()).lists;
    const want = hot.map((l) => l.key);
    document.getElementById("hot-note").textContent = want.length ? "" : "no events in the window yet";
    // Cards in the order of the totals; lists as read, until pushes come.
    for (const k of [...cards.keys()]) {
      if (!want.includes(k)) {
        cards.get(k).remove();
        cards.delete(k);
      }
    }
    want.forEach((k) => document.getElementById("lists").appendChild(card(k)));
    hot.forEach(show);
    const same = want.length === keys.length && want.every((k) => keys.includes(k));
    if (!want.length || same) return;
    if (subscription && source && source.readyState === EventSource.OPEN) {
      const r = await fetch(`${base}/subscriptions/${subscription}`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ keys: want }),
      });
      if (r.ok) {
        keys = want;
        return;
      }
    }
    subscribe(want);
  } catch (e) {
    /* the next tick retries */
  }
}

health();
hottest();
setInterval(health, 1000);
setInterval(hottest, 5000);

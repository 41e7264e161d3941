// The page of a stream job: live statistics and, per group, its series.
"use strict";
(function () {
  const info = JSON.parse(document.querySelector('meta[name="trawler-stream-info"]').content);
  const base = "/api/v1/streams/" + encodeURIComponent(info.name);
  async function refresh() {
    const job = await (await fetch(base)).json();
    const s = job.stats;
    const el = document.getElementById("stats");
    el.textContent = "";
    for (const [k, v] of Object.entries(s)) {
      const row = document.createElement("div");
      row.dataset.stat = k;
      row.textContent = k + ": " + (v === null ? "–" : v);
      el.appendChild(row);
    }
  }
  refresh();
  setInterval(refresh, 1000);
})();

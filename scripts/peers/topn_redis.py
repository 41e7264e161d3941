"""The top-N peer: the same windowed top-N in Redis, the way it is usually
built with sorted sets, driven by the same event file as trawler.

Per post a sorted set `t:{post}` of users' counts over the window (ZINCRBY
per event), and per slide a hash `s:{slide}` of the (post, user)
increments made in it, so that a slide leaving the window is subtracted
(ZINCRBY -n) and zeros removed (ZREMRANGEBYSCORE). Commands are pipelined
in batches. Admission is trawler's rule (docs/TOPN.md): an event more than
the lateness behind the newest accepted one, or whose slide has left the
window, is dropped; so the answers must be identical.

    python topn_redis.py --file events.ndjson --port 6379 --window-ms 300000 \
        --slide-ms 1000 --lateness-ms 10000 --n 10 --out lists.json

Prints `redis: events=… seconds=… events_per_s=…`; writes every post's
top-N (ties by user text) to --out as {"post": [["user", count], …]}.
"""

import argparse
import json
import time

import redis


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--window-ms", type=int, required=True)
    ap.add_argument("--slide-ms", type=int, required=True)
    ap.add_argument("--lateness-ms", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=2000)
    a = ap.parse_args()

    r = redis.Redis(port=a.port)
    r.flushall()
    width = a.window_ms // a.slide_ms
    horizon = None
    first = None  # oldest slide that may hold entries
    end = None  # the window is slides [end - width, end)
    pipe = r.pipeline(transaction=False)
    pending = 0
    events = 0
    posts = set()

    def expire_to(new_end):
        nonlocal first, pending
        pipe.execute()
        pending = 0
        while first < new_end - width:
            key = f"s:{first}"
            entries = r.hgetall(key)
            if entries:
                p = r.pipeline(transaction=False)
                touched = set()
                for field, n in entries.items():
                    post, user = field.decode().split("\t", 1)
                    p.zincrby(f"t:{post}", -int(n), user)
                    touched.add(post)
                for post in touched:
                    p.zremrangebyscore(f"t:{post}", "-inf", 0)
                p.delete(key)
                p.execute()
            first += 1

    started = time.perf_counter()
    with open(a.file, "rb") as f:
        for line in f:
            e = json.loads(line)
            ts, post, user = e["ts"], str(e["post"]), str(e["user"])
            slide = ts // a.slide_ms
            if horizon is not None and (
                ts < horizon - a.lateness_ms or slide <= horizon // a.slide_ms - width
            ):
                continue
            horizon = ts if horizon is None else max(horizon, ts)
            new_end = horizon // a.slide_ms + 1
            if end is None:
                first = new_end - width
                end = new_end
            elif new_end > end:
                end = new_end
                expire_to(end)
            pipe.zincrby(f"t:{post}", 1, user)
            pipe.hincrby(f"s:{slide}", f"{post}\t{user}", 1)
            posts.add(post)
            events += 1
            pending += 1
            if pending >= a.batch:
                pipe.execute()
                pending = 0
    pipe.execute()
    seconds = time.perf_counter() - started

    lists = {}
    for post in posts:
        nth = r.zrevrange(f"t:{post}", a.n - 1, a.n - 1, withscores=True)
        low = nth[0][1] if nth else 1
        members = r.zrangebyscore(f"t:{post}", low, "+inf", withscores=True)
        ranked = sorted(
            ((m.decode(), int(s)) for m, s in members if s > 0),
            key=lambda x: (-x[1], x[0].encode()),
        )[: a.n]
        if ranked:
            lists[post] = ranked
    with open(a.out, "w") as f:
        json.dump(lists, f)
    print(f"redis: events={events} seconds={seconds:.3f} events_per_s={events / seconds:.0f}")


if __name__ == "__main__":
    main()

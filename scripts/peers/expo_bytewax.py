#!/usr/bin/env python3
"""The expo stream job (docs/STREAMS.md) as an idiomatic bytewax dataflow
over an NDJSON file (`.gz` too), writing the same CSV as expo_duckdb.py.

The setup, meant as a fair one: bytewax 0.21, one worker (what
`python -m bytewax.run -w 1 expo_bytewax:flow` runs; main() calls the same
cli_main), lines parsed with the standard json module, one item per
experiment membership keyed "experiment/variant", an EventClock on `ts`
waiting `lateness`, a TumblingWindower of `window` aligned to the epoch,
and fold_window into exact aggregates (a Python set per distinct metric, a
sorted list for the quantiles).

Where bytewax's semantics differ from the contract, on purpose left
idiomatic: its clock is per key (max_ts per group, not global), and it
drops an item as late when ts < max_ts - lateness, where the contract
drops it when its whole window has closed (window end + lateness <=
max_ts). On the generator's late events (back by <= 20 s, or by 2 to 5
minutes) both decide alike. Like the contract's max_ts, the clock sees
only the useful events (the filter comes first) and a late item, being
older than the watermark, does not move it. The clock's system time is frozen so the
watermark follows event time only, whatever the speed of the file read.

    target/peers-venv/bin/python scripts/peers/expo_bytewax.py e.ndjson --out bytewax.csv
"""

import argparse
import gzip
import json
import sys
import time
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main

import expo_common as ec

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class _Lines(StatefulSourcePartition):
    def __init__(self, path, resume_line):
        opener = gzip.open if path.endswith(".gz") else open
        self._f = opener(path, "rt")
        self._line = 0
        for _ in range(resume_line or 0):
            self._f.readline()
            self._line += 1

    def next_batch(self):
        batch = self._f.readlines(1 << 20)
        if not batch:
            raise StopIteration()
        self._line += len(batch)
        return batch

    def snapshot(self):
        return self._line

    def close(self):
        self._f.close()


class NdjsonSource(FixedPartitionedSource):
    """The lines of one file (plain or gzip), in order, as one partition."""

    def __init__(self, path, counter):
        self._path = path
        self._counter = counter

    def list_parts(self):
        return ["file"]

    def build_part(self, step_id, for_part, resume_state):
        return _Lines(self._path, resume_state)


class _Collect(StatelessSinkPartition):
    def __init__(self, rows):
        self._rows = rows

    def write_batch(self, items):
        for key, (window_id, acc) in items:
            self._rows.append((key, acc))


class ListSink(DynamicSink):
    def __init__(self, rows):
        self._rows = rows

    def build(self, step_id, worker_index, worker_count):
        return _Collect(self._rows)


class Acc:
    """One window's aggregates of one group."""

    __slots__ = ("views", "visitors", "clicks", "carts", "purchasers", "amounts", "start")

    def __init__(self):
        self.views = self.clicks = self.carts = 0
        self.visitors, self.purchasers = set(), set()
        self.amounts = []
        self.start = None

    def add(self, e):
        t = e["type"]
        if t == "page_view":
            self.views += 1
            self.visitors.add(e["user"])
        elif t == "click":
            self.clicks += 1
        elif t == "add_to_cart":
            self.carts += 1
        else:
            self.purchasers.add(e["user"])
            self.amounts.append(e["amount"])
        return self

    def merge(self, other):
        self.views += other.views
        self.clicks += other.clicks
        self.carts += other.carts
        self.visitors |= other.visitors
        self.purchasers |= other.purchasers
        self.amounts += other.amounts
        return self

    def metrics(self):
        m = {}
        if self.views:
            m["views"], m["visitors"] = self.views, len(self.visitors)
        if self.clicks:
            m["clicks"] = self.clicks
        if self.carts:
            m["carts"] = self.carts
        if self.amounts:
            a = sorted(self.amounts)
            m["purchases"], m["purchasers"] = len(a), len(self.purchasers)
            m["revenue"] = sum(self.amounts)
            m["order_min"], m["order_max"] = a[0], a[-1]
            m["order_mean"] = m["revenue"] / len(a)
            for name, q in ec.QUANTILES:
                m[name] = ec.quantile_rank(a, q)
        return m


def build(path, window_ms, lateness_ms, rows, counter):
    flow = Dataflow("expo")
    lines = op.input("read", flow, NdjsonSource(path, counter))

    def parse(line):
        counter[0] += 1
        e = json.loads(line)
        return e if e["type"] in ec.USEFUL else None

    events = op.filter_map("parse_and_filter", lines, parse)
    members = op.flat_map(
        "per_membership", events, lambda e: [(f"{x}/{v}", e) for x, v in e["exp"].items()]
    )
    clock = EventClock(
        ts_getter=lambda e: EPOCH + timedelta(milliseconds=e["ts"]),
        wait_for_system_duration=timedelta(milliseconds=lateness_ms),
        now_getter=lambda: EPOCH,
        to_system_utc=lambda _t: None,
    )
    windower = TumblingWindower(length=timedelta(milliseconds=window_ms), align_to=EPOCH)
    out = fold_window("aggregate", members, clock, windower, Acc, Acc.add, Acc.merge)

    def stamp(key_id_acc):
        key, (window_id, acc) = key_id_acc
        acc.start = window_id * window_ms
        return key, (window_id, acc)

    op.output("collect", op.map("stamp", out.down, stamp), ListSink(rows))
    return flow


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--window", type=float, default=ec.WINDOW_MS / 1000, help="seconds")
    p.add_argument("--lateness", type=float, default=ec.LATENESS_MS / 1000, help="seconds")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rows, counter = [], [0]
    flow = build(a.file, int(a.window * 1000), int(a.lateness * 1000), rows, counter)
    started = time.monotonic()
    cli_main(flow, workers_per_process=1)
    out = []
    for key, acc in rows:
        experiment, variant = key.split("/", 1)
        out.extend(ec.rows_of(acc.start, experiment, variant, acc.metrics()))
    seconds = time.monotonic() - started
    ec.write_csv(a.out, out)
    events = counter[0]
    print(f"bytewax: events={events} seconds={seconds:.3f} events_per_s={events / seconds:.0f}", file=sys.stderr)


if __name__ == "__main__":
    main()

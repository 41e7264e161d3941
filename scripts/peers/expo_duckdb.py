#!/usr/bin/env python3
"""The expo stream job (docs/STREAMS.md) as one DuckDB query over an NDJSON
file (`.gz` too): per tumbling window and (experiment, variant), the job's
metrics and formulas, written as a CSV that compare.py reads.

The window semantics are replicated exactly, arrival order being line
order: an event is dropped as late iff its window [s, e) was already closed
by an earlier event, that is iff e + lateness <= max_ts, where max_ts is the
largest event time among the *accepted* lines before it (the engine's rule,
docs/STREAMS.md): lines of a type no metric uses, lines without a group or
time (filtered, malformed) and late lines do not move it.

    target/peers-venv/bin/python scripts/peers/expo_duckdb.py e.ndjson --out duckdb.csv
"""

import argparse
import sys
import time

import duckdb

import expo_common as ec


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--window", type=float, default=ec.WINDOW_MS / 1000, help="seconds")
    p.add_argument("--lateness", type=float, default=ec.LATENESS_MS / 1000, help="seconds")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    w, late = int(a.window * 1000), int(a.lateness * 1000)

    started = time.monotonic()
    con = duckdb.connect()
    # A table's rowid is insertion order, which is file order as long as
    # insertion order is preserved (DuckDB's default, set to be sure).
    con.execute("SET preserve_insertion_order = true")
    con.execute(
        """CREATE TABLE ev AS SELECT * FROM read_ndjson(?, columns = {
             ts: 'BIGINT', "user": 'VARCHAR', type: 'VARCHAR', amount: 'DOUBLE',
             exp: 'MAP(VARCHAR, VARCHAR)'})""",
        [a.file],
    )
    events = con.execute("SELECT count(*) FROM ev").fetchone()[0]
    # The engine's quantile rank, floor(q * (n - 1)) (expo_common), from the
    # sorted amounts; DuckDB's quantile_disc ranks differently.
    quantiles = ",\n".join(
        f"amounts[floor({q} * (len(amounts) - 1))::BIGINT + 1] AS {name}" for name, q in ec.QUANTILES
    )
    useful = ", ".join(f"'{t}'" for t in ec.USEFUL)
    # "Not late" depends on max_ts, and max_ts on what was not late: a
    # recursion, which a SQL window cannot express directly (a recursive CTE
    # over millions of rows would be slow; a single pass in Python over the
    # rows in order would do). It is not needed: a late event never raises
    # max_ts anyway. If an event is late, ts < e <= e + lateness <= M, with
    # M the largest time of the accepted events before it; so the running
    # max over the *useful* events before it (late ones included) equals the
    # running max over the accepted ones, by induction over the lines. Hence
    # one window function over the useful, well-formed lines, in file order,
    # is exact; the filtered and malformed lines are left out before it.
    rows = con.execute(
        f"""
        WITH useful AS (
            SELECT ts, "user", type, amount, exp, (ts // {w}) * {w} AS ws,
                   max(ts) OVER (ORDER BY rowid ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS max_before
            FROM ev
            WHERE type IN ({useful}) AND ts IS NOT NULL AND cardinality(exp) > 0
        ),
        kept AS (
            SELECT * FROM useful
            WHERE max_before IS NULL OR ws + {w} + {late} > max_before
        ),
        member AS (
            SELECT ws, "user", type, amount,
                   unnest(map_keys(exp)) AS experiment, unnest(map_values(exp)) AS variant
            FROM kept
        )
        , cells AS (
        SELECT ws, experiment, variant,
            count(*) FILTER (type = 'page_view') AS views,
            count(DISTINCT "user") FILTER (type = 'page_view') AS visitors,
            count(*) FILTER (type = 'click') AS clicks,
            count(*) FILTER (type = 'add_to_cart') AS carts,
            count(*) FILTER (type = 'purchase') AS purchases,
            count(DISTINCT "user") FILTER (type = 'purchase') AS purchasers,
            sum(amount) FILTER (type = 'purchase') AS revenue,
            min(amount) FILTER (type = 'purchase') AS order_min,
            max(amount) FILTER (type = 'purchase') AS order_max,
            avg(amount) FILTER (type = 'purchase') AS order_mean,
            list(amount ORDER BY amount) FILTER (type = 'purchase') AS amounts
        FROM member
        GROUP BY ALL
        )
        SELECT * EXCLUDE (amounts), {quantiles} FROM cells
        """
    )
    names = [d[0] for d in rows.description]
    out = []
    for r in rows.fetchall():
        rec = dict(zip(names, r))
        metrics = {
            m: rec[m] for m, t in ec.METRIC_TYPES.items() if rec[ec.TYPE_COUNT[t]] > 0
        }
        out.extend(ec.rows_of(rec["ws"], rec["experiment"], rec["variant"], metrics))
    seconds = time.monotonic() - started
    ec.write_csv(a.out, out)
    print(f"duckdb: events={events} seconds={seconds:.3f} events_per_s={events / seconds:.0f}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""What both peers share: the expo job's metrics (docs/STREAMS.md, jobs/expo.toml),
its formulas, the engine's quantile rank, and the result CSV.

A result row is `window_start_ms,experiment,variant,metric,value`. A metric
has a row only where its input events exist in that window and group; a
formula only where its denominator is > 0 (missing numerator inputs are 0).
"""

import csv
import math

WINDOW_MS = 60_000
LATENESS_MS = 30_000
USEFUL = ("page_view", "click", "add_to_cart", "purchase")
QUANTILES = (("order_value_p50", 0.5), ("order_value_p90", 0.9), ("order_value_p99", 0.99))

# metric -> the event type it reads (every metric of the job names one).
METRIC_TYPES = {
    "views": "page_view",
    "visitors": "page_view",
    "clicks": "click",
    "carts": "add_to_cart",
    "purchases": "purchase",
    "purchasers": "purchase",
    "revenue": "purchase",
    "order_min": "purchase",
    "order_max": "purchase",
    "order_mean": "purchase",
    **{name: "purchase" for name, _ in QUANTILES},
}
# Counts of the input type, to know whether a metric has a row.
TYPE_COUNT = {"page_view": "views", "click": "clicks", "add_to_cart": "carts", "purchase": "purchases"}
DISTINCT = {"visitors", "purchasers"}
FORMULAS = (
    ("conversion", "purchasers", "visitors"),
    ("ctr", "clicks", "views"),
    ("cart_rate", "carts", "visitors"),
    ("revenue_per_visitor", "revenue", "visitors"),
    ("revenue_per_purchaser", "revenue_per_visitor", "conversion"),
)
# Formulas whose value involves a distinct metric (compare.py's tolerance).
FORMULA_DISTINCT = {"conversion", "cart_rate", "revenue_per_visitor", "revenue_per_purchaser"}


def quantile_rank(sorted_values, q):
    """The engine's quantile (crates/trawler-stream/src/agg.rs): the value
    at 0-based rank floor(q * (n - 1)) — what DDSketch approximates within
    1 %. DuckDB's quantile_disc takes rank ceil(n * q) - 1 instead, which
    differs on small windows (n = 2, q = 0.9: the larger value, not the
    smaller one), so both peers use this one."""
    n = len(sorted_values)
    return sorted_values[math.floor(q * (n - 1))]


def rows_of(window_start_ms, experiment, variant, metrics):
    """The CSV rows of one window and group from its metric values (a dict
    holding every metric whose input events exist)."""
    values = dict(metrics)
    for name, num, den in FORMULAS:
        d = values.get(den, 0)
        if d > 0:
            values[name] = values.get(num, 0) / d
    return [(window_start_ms, experiment, variant, m, v) for m, v in values.items()]


def fmt(v):
    return str(v) if isinstance(v, int) else repr(float(v))


def write_csv(path, rows):
    rows = sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3]))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["window_start_ms", "experiment", "variant", "metric", "value"])
        for r in rows:
            w.writerow([r[0], r[1], r[2], r[3], fmt(r[4])])

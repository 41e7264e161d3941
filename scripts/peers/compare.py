#!/usr/bin/env python3
"""Compares two result CSVs of the expo job (window_start_ms, experiment,
variant, metric, value): the same rows, and values equal within the
tolerance of each kind of metric. Prints the first 10 mismatches and
`match=true|false`; exits 1 on a mismatch.

Counts, sums, min, max, mean and formulas of them: relative --rel-tol.
Distinct metrics (an engine may use HyperLogLog): relative --distinct-tol;
formulas involving one: 2 x --distinct-tol. Quantiles: --quantile-tol.

    python3 scripts/peers/compare.py duckdb.csv trawler.csv --distinct-tol 0
"""

import argparse
import csv
import sys

import expo_common as ec


def load(path):
    with open(path, newline="") as f:
        return {
            (int(r["window_start_ms"]), r["experiment"], r["variant"], r["metric"]): float(r["value"])
            for r in csv.DictReader(f)
        }


def tolerance(metric, a):
    if metric in ec.DISTINCT:
        return a.distinct_tol
    if metric in ec.FORMULA_DISTINCT:
        return 2 * a.distinct_tol
    if metric.startswith("order_value_p"):
        return a.quantile_tol
    return a.rel_tol


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--rel-tol", type=float, default=1e-9)
    p.add_argument("--distinct-tol", type=float, default=0.05)
    p.add_argument("--quantile-tol", type=float, default=0.02)
    a = p.parse_args()
    left, right = load(a.a), load(a.b)
    mismatches = []
    for key in sorted(left.keys() | right.keys()):
        if key not in right:
            mismatches.append(f"{key}: only in {a.a} ({left[key]})")
        elif key not in left:
            mismatches.append(f"{key}: only in {a.b} ({right[key]})")
        else:
            x, y = left[key], right[key]
            tol = tolerance(key[3], a)
            if abs(x - y) > tol * max(abs(x), abs(y)) + 1e-12:
                mismatches.append(f"{key}: {x} vs {y} (relative tolerance {tol})")
    for m in mismatches[:10]:
        print(m)
    print(f"rows={len(left)}/{len(right)} mismatches={len(mismatches)} match={'true' if not mismatches else 'false'}")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()

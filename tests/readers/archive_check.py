#!/usr/bin/env python3
"""Reads the collector's archive with the readers researchers use (DuckDB and pyarrow) and
compares it with what the database holds.

    archive_check.py <archive dir> <expected.json>

expected.json: {"tables": {"<table>": [row, ...]}, "queries": [{"name", "duckdb" | "python", "rows"}]}
where a row maps each column to its canonical value: decimals as normalized text ("0.35",
"10", "0"), times as microseconds since the Unix epoch, text and booleans as they are, NULL as
null. Each table's rows must match as a multiset in both readers (the `date` hive column
dropped, the `exact` column's texts taking the place of the NULL decimals they stand for).
Each query (`{dir}` replaced by the archive dir) must return `rows` (in order, and at least one)
in DuckDB, or for a Python snippet, in the list of dicts it leaves in `rows`. Exit 1 with the
differences on any mismatch.
"""
import datetime
import decimal
import json
import os
import sys

import duckdb
import pyarrow.parquet as pq


def canon(v):
    if isinstance(v, decimal.Decimal):
        n = v.normalize()
        s = format(n, "f")
        return "0" if n == 0 else s
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        delta = v - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    return v


def canon_row(row):
    row = dict(row)
    row.pop("date", None)
    exact = row.pop("exact", None)
    out = {k: canon(v) for k, v in row.items()}
    if exact:
        for k, text in json.loads(exact).items():
            out[k] = canon(decimal.Decimal(text))
    return out


def key(row):
    return json.dumps(row, sort_keys=True, default=str)


def compare(label, got, want):
    g = sorted(key(r) for r in got)
    w = sorted(key(r) for r in want)
    if g == w:
        return True
    missing = sorted(set(w) - set(g))[:5]
    extra = sorted(set(g) - set(w))[:5]
    print(f"{label}: {len(got)} rows read, {len(want)} expected", file=sys.stderr)
    for m in missing:
        print(f"  missing {m}", file=sys.stderr)
    for e in extra:
        print(f"  extra   {e}", file=sys.stderr)
    if not missing and not extra:
        print("  (the same rows, a different number of times)", file=sys.stderr)
    return False


def main():
    root, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = json.load(f)
    ok = True
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for table, want in expected.get("tables", {}).items():
        path = os.path.join(root, table)
        if not os.path.isdir(path):
            ok &= compare(f"{table} (no directory)", [], want)
            continue
        rel = con.execute(f"SELECT * FROM read_parquet('{path}/*/*.parquet', hive_partitioning = true)")
        cols = [d[0] for d in rel.description]
        duck = [canon_row(dict(zip(cols, r))) for r in rel.fetchall()]
        ok &= compare(f"{table} (duckdb)", duck, want)
        arrow = [canon_row(r) for r in pq.read_table(path, partitioning="hive").to_pylist()]
        ok &= compare(f"{table} (pyarrow)", arrow, want)
    for q in expected.get("queries", []):
        if "duckdb" in q:
            rel = con.execute(q["duckdb"].replace("{dir}", root))
            got = [[canon(v) for v in r] for r in rel.fetchall()]
        else:
            ns = {}
            exec(q["python"].replace("{dir}", root), ns)
            got = [[canon(v) for v in r.values()] for r in ns["rows"]]
        want = q["rows"]
        if got != want:
            print(f"query {q['name']} ({'duckdb' if 'duckdb' in q else 'python'}): gave {got[:5]}, the database {want[:5]}", file=sys.stderr)
            ok = False
        elif not want:
            print(f"query {q['name']}: no row (a query that finds nothing proves nothing)", file=sys.stderr)
            ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

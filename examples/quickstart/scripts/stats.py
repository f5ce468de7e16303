"""Per-city statistic of one column, as JSON."""
import csv
import json
import statistics
import sys

src, column, dst = sys.argv[1], sys.argv[2], sys.argv[3]
values: dict[str, list[float]] = {}
with open(src) as f:
    for row in csv.DictReader(f):
        values.setdefault(row["city"], []).append(float(row[column]))
summary = {city: {"mean": round(statistics.mean(v), 2), "max": max(v)} for city, v in sorted(values.items())}
with open(dst, "w") as f:
    json.dump({"column": column, "cities": summary}, f, indent=2, sort_keys=True)

"""A small text report from the per-column statistics."""
import json
import sys

threshold = float(open(sys.argv[1]).read().split("=")[1])
out = sys.argv[-1]
lines = ["Weather report", "=============="]
for path in sys.argv[2:-1]:
    stats = json.load(open(path))
    lines.append(f"\n{stats['column']}:")
    for city, s in stats["cities"].items():
        flag = "  <- above threshold" if s["mean"] > threshold else ""
        lines.append(f"  {city:<6} mean {s['mean']:>6}  max {s['max']:>6}{flag}")
open(out, "w").write("\n".join(lines) + "\n")
print(f"wrote {out}")

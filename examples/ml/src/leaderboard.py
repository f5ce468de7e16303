"""The models' metrics as one ranked Markdown table."""
import json
import os
import sys

rows = []
for path in sys.argv[1:]:
    with open(path) as f:
        m = json.load(f)
    rows.append((m["accuracy"], m["f1"], os.path.basename(path)[: -len(".json")], m["kind"]))
print("| rank | model | kind | accuracy | macro F1 |")
print("|---:|---|---|---:|---:|")
for i, (acc, f1, name, kind) in enumerate(sorted(rows, reverse=True), 1):
    print(f"| {i} | {name} | {kind} | {acc:.4f} | {f1:.4f} |")

"""Drop rows with missing values; keep the columns we use."""
import csv
import sys

src, dst = sys.argv[1], sys.argv[2]
with open(src) as f, open(dst, "w", newline="") as out:
    writer = csv.writer(out)
    writer.writerow(["city", "day", "temp_c", "rain_mm"])
    for row in csv.DictReader(f):
        if all(row[k] for k in ("temp_c", "rain_mm")):
            writer.writerow([row["city"], row["day"], row["temp_c"], row["rain_mm"]])

"""Read the CSVs data.py writes: features, then the label."""
import csv


def load(path):
    X, y = [], []
    with open(path) as f:
        for row in csv.reader(f):
            X.append([float(v) for v in row[:-1]])
            y.append(int(row[-1]))
    return X, y

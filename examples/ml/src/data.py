"""Split one of scikit-learn's bundled data sets into train and test CSVs."""
import csv
import sys

from sklearn import datasets
from sklearn.model_selection import train_test_split

name, test_size, seed, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
for part, rows, labels in (("train", X_train, y_train), ("test", X_test, y_test)):
    with open(f"{out}/{part}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        for row, label in zip(rows, labels):
            writer.writerow([*(f"{v:.6g}" for v in row), int(label)])

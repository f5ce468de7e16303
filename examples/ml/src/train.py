"""Train one model and write it with its test metrics."""
import argparse
import json
import pickle
import time

from dataset import load
from models import make
from sklearn.metrics import accuracy_score, f1_score

p = argparse.ArgumentParser()
p.add_argument("--kind", required=True)
p.add_argument("--k", type=int, default=5)
p.add_argument("--depth", type=int, default=0)
p.add_argument("--trees", type=int, default=10)
p.add_argument("--C", type=float, default=1.0)
p.add_argument("--seed", type=int, default=0)
p.add_argument("data")
p.add_argument("model")
p.add_argument("metrics")
a = p.parse_args()

X, y = load(f"{a.data}/train.csv")
X_test, y_test = load(f"{a.data}/test.csv")
started = time.time()
model = make(a.kind, a.k, a.depth, a.trees, a.C, a.seed).fit(X, y)
predicted = model.predict(X_test)
with open(a.model, "wb") as f:
    pickle.dump(model, f)
with open(a.metrics, "w") as f:
    json.dump({"accuracy": round(accuracy_score(y_test, predicted), 4), "f1": round(f1_score(y_test, predicted, average="macro"), 4), "kind": a.kind}, f)
print(f"{a.model}: accuracy {accuracy_score(y_test, predicted):.3f} in {time.time() - started:.2f}s")

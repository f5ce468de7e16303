"""Estimators by kind: imported by train.py, so editing it rebuilds every model."""
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier


def make(kind: str, k: int, depth: int, trees: int, C: float, seed: int):
    if kind == "knn":
        return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k))
    if kind == "tree":
        return DecisionTreeClassifier(max_depth=depth or None, random_state=seed)
    if kind == "forest":
        return RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1)
    if kind == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    raise SystemExit(f"unknown model kind {kind!r}")

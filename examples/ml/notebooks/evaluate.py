# %% [markdown]
# # Evaluation report
#
# One model, on the held-out test set: its accuracy, and where it goes wrong.

# %% tags=["parameters"]
model = "knn5"

# %%
import pickle
import sys

sys.path.insert(0, "src")
from dataset import load  # noqa: E402

X_test, y_test = load("data/test.csv")
with open(f"models/{model}.pkl", "rb") as f:
    estimator = pickle.load(f)
predicted = estimator.predict(X_test)
accuracy = sum(int(p == t) for p, t in zip(predicted, y_test)) / len(y_test)
print(f"{model}: accuracy {accuracy:.3f} on {len(y_test)} test rows")

# %% [markdown]
# ## Confusion matrix (rows: true class, columns: predicted)

# %%
from IPython.display import HTML  # noqa: E402

classes = sorted(set(y_test))
counts = {(t, p): 0 for t in classes for p in classes}
for t, p in zip(y_test, predicted):
    counts[(t, int(p))] += 1
head = "".join(f"<th>{c}</th>" for c in classes)
body = "".join("<tr><th>" + str(t) + "</th>" + "".join(f"<td>{counts[(t, p)]}</td>" for p in classes) + "</tr>" for t in classes)
HTML(f"<table><tr><th></th>{head}</tr>{body}</table>")

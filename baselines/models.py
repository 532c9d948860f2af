"""Model baselines (paper §5.2): GaussianNB, KNeighbors, SVC, RandomForest as sklearn Pipelines.

Hyper-parameters are chosen on the validation split (fit on train, score on val); the
chosen pipeline is then refit on train and scored once on test. Test rows never reach fit.
"""
from __future__ import annotations

from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from cache.store import UserError

MODEL_NAMES = {"gnb": "GaussianNB", "knn": "KNeighbors", "svc": "SVC", "rf": "RandomForest"}


def candidates(name: str, seed: int = 0) -> list[Pipeline]:
    """The grid searched on validation for each model."""
    if name == "gnb":
        return [Pipeline([("nb", GaussianNB(var_smoothing=v))]) for v in (1e-9, 1e-6, 1e-3)]
    if name == "knn":
        return [Pipeline([("scale", StandardScaler()), ("knn", KNeighborsClassifier(n_neighbors=k, weights=w))])
                for k in (1, 5, 15) for w in ("uniform", "distance")]
    if name == "svc":
        return [Pipeline([("scale", StandardScaler()), ("svc", SVC(C=c, kernel="rbf", gamma="scale"))])
                for c in (0.1, 1.0, 10.0)]
    if name == "rf":
        return [Pipeline([("rf", RandomForestClassifier(n_estimators=n, max_features="sqrt", random_state=seed,
                                                        n_jobs=-1))]) for n in (100, 300)]
    raise UserError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def select_and_fit(pipes, x_train, y_train, x_val, y_val):
    """Best candidate by validation accuracy (first wins ties), refit on train; returns (model, params, val acc)."""
    best, best_acc = None, -1.0
    # a neighbour count above the training set's size cannot be fit: such candidates are skipped
    # (1-NN always remains), so a small labelled set still gets its KNN baseline
    pipes = [p for p in pipes if "knn" not in p.named_steps or p.named_steps["knn"].n_neighbors <= len(y_train)]
    for pipe in pipes:
        model = clone(pipe).fit(x_train, y_train)
        acc = float((model.predict(x_val) == y_val).mean())
        if acc > best_acc:
            best, best_acc = model, acc
    params = {k: v for k, v in best.get_params().items() if "__" in k and not callable(v)
              and isinstance(v, (int, float, str, type(None)))}
    return best, params, best_acc

"""Model baselines (paper §5.2): GaussianNB, KNeighbors, SVC, RandomForest as sklearn Pipelines.

Hyper-parameters are chosen on the validation split by scikit-learn's own `GridSearchCV` with a
`PredefinedSplit` (fit on train, score accuracy on val; the first of equal scores wins); the
chosen pipeline is then refit on train alone and scored once on test. Test rows never reach fit.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, ParameterGrid, PredefinedSplit
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from runtime.errors import UserError

MODEL_NAMES = {"gnb": "GaussianNB", "knn": "KNeighbors", "svc": "SVC", "rf": "RandomForest"}


def candidates(name: str, seed: int = 0) -> tuple[Pipeline, dict]:
    """The pipeline and the parameter grid searched on validation for each model."""
    if name == "gnb":
        return Pipeline([("nb", GaussianNB())]), {"nb__var_smoothing": [1e-9, 1e-6, 1e-3]}
    if name == "knn":
        return (Pipeline([("scale", StandardScaler()), ("knn", KNeighborsClassifier())]),
                {"knn__n_neighbors": [1, 5, 15], "knn__weights": ["uniform", "distance"]})
    if name == "svc":
        return (Pipeline([("scale", StandardScaler()), ("svc", SVC(kernel="rbf", gamma="scale"))]),
                {"svc__C": [0.1, 1.0, 10.0]})
    if name == "rf":
        return (Pipeline([("rf", RandomForestClassifier(max_features="sqrt", random_state=seed, n_jobs=-1))]),
                {"rf__n_estimators": [100, 300]})
    raise UserError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def select_and_fit(space: tuple[Pipeline, dict], x_train, y_train, x_val, y_val):
    """Best grid point by validation accuracy, refit on train; returns (model, params, val accuracy)."""
    pipe, grid = space
    # a neighbour count above the training set's size cannot be fit: such grid points are left
    # out (1-NN always remains), so a small labelled set still gets its KNN baseline
    points = [p for p in ParameterGrid(grid) if p.get("knn__n_neighbors", 0) <= len(y_train)]
    search = GridSearchCV(pipe, [{k: [v] for k, v in p.items()} for p in points], refit=False,
                          cv=PredefinedSplit(np.r_[np.full(len(y_train), -1), np.zeros(len(y_val))]),
                          error_score="raise")
    search.fit(np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]))
    best = clone(pipe).set_params(**search.best_params_).fit(x_train, y_train)
    params = {k: v for k, v in best.get_params().items() if "__" in k and not callable(v)
              and isinstance(v, (int, float, str, type(None)))}
    return best, params, float(search.best_score_)

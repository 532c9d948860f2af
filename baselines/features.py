"""Feature baselines of Table 1 from what the store holds (paper §5.2).

- Tag [18]: the hashtags of an influencer's posts (TF-IDF) with a linear classifier.
- Text&Social [27, 28]: profile counts, posting behaviour (frequency, likes, comments,
  caption length, hashtags) and caption words, with gradient-boosted trees.
- Image [34]: a per-post image classifier trained on the labelled posts; its votes over an
  influencer's posts (influencer categories only) decide.
- User [12]: needs profile pictures and a like graph; the release has neither.
"""
from __future__ import annotations

import re

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import TruncatedSVD
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

HASHTAG = re.compile(r"#(\w+)", re.UNICODE)
USER_NOTE = "n/a: needs profile pictures and a like graph, which the release does not have"


def influencer_texts(store, influencers: np.ndarray) -> tuple[list[str], list[str], np.ndarray]:
    """Per influencer: all hashtags, all caption text, and social/behaviour numbers."""
    offsets = store.offsets()
    caps, ts = store["posts/caption"], store["posts/timestamp"]
    likes, comments = store["posts/likes"], store["posts/comments"]
    follow = [store[f"influencers/{k}"][:] for k in ("followers", "followees", "posts_total")]
    tags, texts, social = [], [], []
    for j in influencers:
        rows = slice(int(offsets[j]), int(offsets[j + 1]))
        c = [str(x) for x in caps[rows]]
        t = ts[rows].astype(np.float64)
        span_days = max((t.max() - t.min()) / 86400.0, 1.0) if len(t) else 1.0
        h = [m.lower() for x in c for m in HASHTAG.findall(x)]
        tags.append(" ".join(h))
        texts.append(" ".join(c))
        n = max(len(c), 1)
        social.append([np.log1p(max(follow[0][j], 0)), np.log1p(max(follow[1][j], 0)), np.log1p(max(follow[2][j], 0)),
                       len(c) / span_days,
                       np.log1p(np.maximum(likes[rows], 0)).mean() if len(c) else 0.0,
                       np.log1p(np.maximum(comments[rows], 0)).mean() if len(c) else 0.0,
                       sum(len(x) for x in c) / n, len(h) / n, sum(1 for x in c if not x.strip()) / n])
    return tags, texts, np.array(social, dtype=np.float64)


def tag_model(seed: int = 0) -> Pipeline:
    return Pipeline([("tfidf", TfidfVectorizer(token_pattern=r"\S+", min_df=1, sublinear_tf=True)),
                     ("clf", LogisticRegression(max_iter=2000, C=10.0, random_state=seed))])


class ClippedSVD(TruncatedSVD):
    """TruncatedSVD whose n_components is cut, at fit time, to what the data allow (a small labelled
    set has fewer words and rows than the 64 components asked for)."""

    def fit_transform(self, X, y=None):
        wanted = self.n_components
        self.n_components = max(1, min(wanted, X.shape[1] - 1, X.shape[0] - 1))
        try:
            return super().fit_transform(X, y)
        finally:
            self.n_components = wanted


def text_social_matrix(texts: list[str], social: np.ndarray) -> np.ndarray:
    """One row per influencer: column 0 its captions' text, then its social/behaviour numbers."""
    x = np.empty((len(texts), 1 + social.shape[1]), dtype=object)
    x[:, 0] = texts
    x[:, 1:] = social
    return x


def text_social_model(seed: int = 0, components: int = 64) -> Pipeline:
    """Caption words (TF-IDF → SVD) next to social/behaviour numbers, into gradient-boosted trees;
    fit and predict on `text_social_matrix` rows."""
    words = Pipeline([("tfidf", TfidfVectorizer(min_df=2, max_features=20000, sublinear_tf=True)),
                      ("svd", ClippedSVD(n_components=components, random_state=seed))])
    columns = ColumnTransformer([("words", words, 0), ("social", "passthrough", slice(1, None))])
    return Pipeline([("columns", columns), ("to_float", FunctionTransformer(_as_float)),
                     ("gbt", HistGradientBoostingClassifier(random_state=seed, max_iter=200, min_samples_leaf=5))])


def _as_float(x):
    return np.asarray(x, dtype=np.float64)


def image_votes(post_clf, store, influencers: np.ndarray, x_posts_fn, post_to_infl: np.ndarray,
                n_classes: int) -> np.ndarray:
    """Majority of per-post predictions mapped to influencer categories (other/product abstain)."""
    preds = []
    for j in influencers:
        x = x_posts_fn(j)
        if len(x) == 0:
            preds.append(0)
            continue
        mapped = post_to_infl[post_clf.predict(x)]
        votes = np.bincount(mapped[mapped >= 0], minlength=n_classes)
        preds.append(int(votes.argmax()) if votes.any() else 0)
    return np.array(preds)


def image_post_classifier(seed: int = 0) -> Pipeline:
    return Pipeline([("clf", LogisticRegression(max_iter=1000, C=1.0, random_state=seed))])

"""Stage two: the Influencer Profiler (paper §3.3–3.6) trained, evaluated and applied from the cache.

`from heads import InfluencerProfilerClassifier` gives the scikit-learn estimator on in-memory arrays
(heads/estimator.py); it is imported on first use, so the command lines start without it."""

__all__ = ["InfluencerProfilerClassifier"]


def __getattr__(name):
    if name == "InfluencerProfilerClassifier":
        from heads.estimator import InfluencerProfilerClassifier
        return InfluencerProfilerClassifier
    raise AttributeError(f"module 'heads' has no attribute {name!r}")

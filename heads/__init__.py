"""Stage two: the Influencer Profiler (paper §3.3–3.6) trained, evaluated and applied from the cache."""

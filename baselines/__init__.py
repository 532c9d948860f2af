"""The paper's Table 1 and Table 2 baselines, on the same store, features and splits as the heads."""

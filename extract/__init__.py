"""Stage one: the release format, the sample dataset, `index`, and the feature encoders."""

"""The runtime layer every stage shares, below the store: errors, the console (one logging set-up
per command line, one-line errors), progress, dask scheduling, devices and precisions, digests, and the scores and Table 1/2 layout every
stage reports (runtime.reporting).

It imports nothing of the project, so `cache` (the store) can use it and stay the layer that
`extract`, `heads` and `baselines` build on. torch is imported only by `runtime.device`.
"""

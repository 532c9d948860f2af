"""The prepared GPU check (`make bench-gpu`): extraction on CUDA against plain loops, in one short run.

    python -m benchmarks.gpu [--posts 20000] [--out DIR] [--dry-run]

On a GPU machine (offline; zarr, numcodecs and dask installed from the wheels in .whl/ by
`make bench-gpu`), on a release-like sample built here (360 px photo-like JPEGs of about 15 KB,
the sample's captions), it measures:
- `extract text` (BERT-base shape, random weights: throughput is the same as the real model's)
  against a plain loop on the same GPU (pad to 128, batch 32, fp32);
- `extract images` with PIL decoding workers and with `--decoder nvjpeg`, against a plain loop
  (PIL full decode, torchvision transforms, batch 32, fp32); decode-only rates (one process, the
  job's worker count) and the model alone on synthetic tensors, so the bottleneck is named;
- features computed on CUDA against a CPU fp32 reference on a few hundred posts (cosine);
- how often each job's loop makes the host wait for the GPU (torch.profiler, one block of each);
- `heads fit` and `heads predict` on CUDA;
- `--compile` (torch.compile) against the same model uncompiled, steady state after a warm-up pass
  (text encoder on tokenised captions; Inception on synthetic tensors), last, since compiling takes
  minutes; the README keeps it off by default until this has shown it pays;
and prints one table (captions/s, images/s, ratio to the plain loop, GPU memory peak and busy
share sampled with nvidia-smi, decode workers) with the extrapolation to 10.2 M posts per GPU.
Every step is timed and its failure recorded, so one broken path does not lose the others.
`--dry-run` runs the same code on the CPU with tiny sizes (a test runs it, so it cannot rot).

Modules: common (step, sampler, floors), sample (the sample), rates (the jobs and plain loops),
checks (agreement), table (the table and the choices), __main__ (the order of the steps).
"""
from benchmarks.gpu.checks import store_cosines
from benchmarks.gpu.rates import finetune_encoder
from benchmarks.gpu.sample import build, repeated
from benchmarks.gpu.table import choice_items

__all__ = ["build", "choice_items", "finetune_encoder", "repeated", "store_cosines"]

"""Devices and precisions, resolved the same way by every stage (extraction, fine-tuning, heads)."""
from __future__ import annotations

import contextlib
import hashlib

import torch

from runtime.console import warn
from runtime.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX): there bf16 is measured about 2x faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(device: str, slow_on_cpu: bool = False) -> torch.device:
    """'auto' is CUDA where torch sees a GPU, else the CPU; asking for CUDA without one is a user error,
    and so is a GPU torch sees but cannot start (busy in exclusive mode, a broken driver): one line,
    not a traceback at the first copy. `slow_on_cpu` (the extraction stages, 100x slower there): 'auto'
    falling back to the CPU on a machine that has an NVIDIA GPU says so, with torch's reason."""
    if device == "auto":
        if torch.cuda.is_available():
            return _started(torch.device("cuda"))
        if slow_on_cpu:
            unused = _unused_gpu()
            if unused:
                warn(f"WARNING: {unused}; running on the CPU, about two orders of magnitude slower "
                     f"(pass --device cuda to make this an error, --device cpu to silence it)")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        unused = _unused_gpu()
        raise UserError(f"--device {device} asked for, but torch sees no GPU" + (f" ({unused})" if unused else ""))
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r} is not a device torch knows (auto, cpu, cuda, cuda:N)") from None
    return _started(dev) if dev.type == "cuda" else dev


def _started(dev: torch.device) -> torch.device:
    """The CUDA device, initialised here so that a GPU that cannot be used fails with one line."""
    try:
        torch.cuda.init()
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {dev} asked for, but torch sees {torch.cuda.device_count()} GPU(s) "
                            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    except RuntimeError as e:
        raise UserError(f"cannot use the GPU {dev}: {str(e).strip().splitlines()[0][:300]}") from None
    return dev


def _unused_gpu() -> str | None:
    """Why torch runs on the CPU although the machine has an NVIDIA GPU (a device node under /dev), or
    None: no GPU, or CUDA_VISIBLE_DEVICES hides them on purpose."""
    import glob
    import os
    import warnings
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1") or not glob.glob("/dev/nvidia[0-9]*"):
        return None
    if torch.version.cuda is None:
        return f"this machine has an NVIDIA GPU but this torch ({torch.__version__}) is a CPU-only build"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.is_available()
    reason = next((str(w.message).strip().splitlines()[0] for w in caught), "torch.cuda.is_available() is False")
    return f"this machine has an NVIDIA GPU but torch (built for CUDA {torch.version.cuda}) cannot use it: {reason[:300]}"


def pick_precision(precision: str, device: torch.device, bf16_on_cpu: bool = False) -> str:
    """'auto' is bf16 on GPUs; on CPUs fp32, or bf16 where the CPU has it natively and the caller has shown
    that bf16 keeps its features there (`bf16_on_cpu`: the text job, cosine 0.99992 to fp32 on such a
    CPU, about 2× faster); fp16 is for GPUs only.

    The image job does not pass `bf16_on_cpu`: on a CPU with native bf16 (AMX, AVX512-BF16), measured on 2026-12-02, the
    image job's bf16 features of the sample (an encoder fine-tuned one epoch at 107 px) were at a min
    cosine of 0.982 to fp32's, median 0.990, 20 of 44 rows under 0.99, and the GPU bench's dry run at
    0.909: far outside the rule bf16 must meet to be a default (at most 0.5 % of rows under 0.99; the
    H200 met it). `--precision bf16` still asks for it."""
    if precision != "auto":
        if precision not in DTYPES:
            raise UserError(f"--precision must be auto, {', '.join(DTYPES)}; got {precision!r}")
        if precision == "fp16" and device.type == "cpu":
            raise UserError("--precision fp16 is for GPUs; use bf16 or fp32 on the CPU")
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if bf16_on_cpu and cpu_has_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision; fp32 on CUDA without TF32 (`ieee_fp32`)."""
    if precision == "fp32":
        return ieee_fp32() if device.type == "cuda" else contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


@contextlib.contextmanager
def ieee_fp32():
    """fp32 that is fp32 on a GPU: torch lets cuDNN run fp32 convolutions on TF32 tensor cores by
    default (torch.backends.cudnn.allow_tf32; a 10-bit mantissa, errors of ~1e-3), so `--precision
    fp32` would not have been the reference it says it is (and Inception is convolutions). Inside, TF32
    is off for convolutions and matmuls; the settings are put back after."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def to_device(x, device: torch.device) -> torch.Tensor:
    """A host array (or CPU tensor) on `device`, without making the host wait for the GPU.

    A copy from pageable host memory (`tensor.to("cuda")`) makes the CPU wait until every kernel
    already queued on the stream has finished, so one index or token copy per batch serialises the
    host's work on the next batch with the GPU's on this one. Staged in pinned memory and copied with
    `non_blocking`, the copy is queued like a kernel; the caching host allocator keeps the pinned
    buffer alive until the copy is done. Elsewhere a plain copy."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
    if device.type != "cuda":
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


# What torch raises when a device allocation fails (CUDA, and other accelerators); a subclass of RuntimeError
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def shrinking_on_oom(run, size: int, least: int, what: str, device: torch.device, option: str):
    """run(size) retried with size halved while the device runs out of memory: a GPU smaller than the
    default batches assume (a 5 GB MIG slice; the image job at 256 images a batch peaked at 5.2 GB on
    an H200), or one shared with another process. Returns (run's result, the size that worked); says
    at each halving what it did and the option that starts there. Out of memory at `least` (batches
    as small as they go) is a UserError naming the device. The retry runs outside the `except`, so
    the failed attempt's tensors (held by its traceback) are freed first."""
    while True:
        try:
            return run(size), size
        except OUT_OF_MEMORY:
            pass
        if size <= least:
            raise UserError(f"out of {device} memory with batches of {size} {what}{'s' * (size != 1)}, as small as "
                            f"they go: the device is too small or in use by another process (nvidia-smi shows "
                            f"which); free it or pass --device cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        smaller = max(least, size // 2)
        warn(f"out of {device} memory with batches of {size} {what}s; going on with {smaller} "
             f"(pass {option} {smaller} to start there)")
        size = smaller


def maybe_compile(fn, enabled: bool):
    """torch.compile(fn) when asked (shapes that vary become dynamic after the first recompile), else fn.

    Off by default: on an H200 the text model gained nothing and Inception alone 2.1x, and the image
    job with its padded batches has not yet been measured there (benchmarks/gpu; README)."""
    return torch.compile(fn) if enabled else fn


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, in name order: two encoders agree iff their weights do."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:20]

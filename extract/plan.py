"""`extract plan STORE --shards N`: the shard commands, and ready-to-edit batch launchers.

One shard job per GPU. Writes, for each stage asked for:
- `slurm_{stage}.sh`: a SLURM job array (one task per shard, one GPU each; submit with `sbatch`);
- `k8s_{stage}.yaml`: a Kubernetes Indexed Job (completions = parallelism = N; the shard is the
  pod's JOB_COMPLETION_INDEX; apply with `kubectl apply -f`).
Every job can be rerun as it is: done blocks are skipped, so a failed task is simply resubmitted.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from cache.blocks import Shard, pending_blocks
from cache.store import Store
from runtime.errors import UserError
from runtime.files import write_text

STAGES = ("images", "text")
# /dev/shm for the image decoding workers: 16 workers × 4 batches × 69 MB, with room to spare
SHM_SIZE = "8Gi"


@dataclass
class PlanSettings:
    shards: int
    stages: tuple[str, ...] = STAGES
    encoder: str = "encoder.pt"
    model: str = "bert-base-uncased"
    container: str = "influencer-profiler:latest"
    cpus: int = 16
    memory: str = "64G"
    time: str = "08:00:00"


def stage_args(stage: str, url: str, s: PlanSettings) -> list[str]:
    if stage == "images":
        return ["extract", "images", url, "--encoder", s.encoder]
    if stage == "text":
        return ["extract", "text", url, "--model", s.model]
    raise UserError(f"unknown stage {stage!r}; expected images or text")


def commands(url: str, s: PlanSettings) -> dict[str, list[str]]:
    return {stage: [shlex.join(stage_args(stage, url, s) + ["--shard", f"{i}/{s.shards}"]) for i in range(s.shards)]
            for stage in s.stages}


def slurm_script(stage: str, url: str, s: PlanSettings) -> str:
    cmd = shlex.join(stage_args(stage, url, s))
    workers = f' --workers "${{SLURM_CPUS_PER_TASK:-{s.cpus}}}"' if stage == "images" else ""
    return f"""#!/bin/bash
# SLURM job array: `extract {stage}` in {s.shards} shards, one GPU each. Submit: sbatch slurm_{stage}.sh
# Rerunnable as is: done blocks are skipped, so resubmit failed tasks with --array=<ids>.
#SBATCH --job-name=ip-{stage}
#SBATCH --array=0-{s.shards - 1}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task={s.cpus}
#SBATCH --mem={s.memory}
#SBATCH --time={s.time}
#SBATCH --output=logs/{stage}-%A_%a.log
set -euo pipefail
# Edit: the environment that has the project installed.
# source /path/to/influencer-profiler/.venv/bin/activate
export HF_HUB_OFFLINE=${{HF_HUB_OFFLINE:-1}}
exec {cmd} --shard "${{SLURM_ARRAY_TASK_ID}}/{s.shards}"{workers}
"""


def k8s_manifest(stage: str, url: str, s: PlanSettings) -> str:
    """The Indexed Job as a dict, written by PyYAML's safe_dump (no YAML built from strings)."""
    import yaml
    args = stage_args(stage, url, s)
    if stage == "images":
        args += ["--workers", str(s.cpus)]
    cmd = shlex.join(args) + f' --shard "${{JOB_COMPLETION_INDEX}}/{s.shards}"'
    mounts = [{"name": "data", "mountPath": "/data"}]
    # edit: the claim that holds the store and the dataset
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "influencer-data"}}]
    if stage == "images":
        # the decoding workers hand batches (69 MB each on a GPU) over in /dev/shm; a pod's default is
        # 64 MB, so the job would stop at once (extract.images.prefetch_for); counted in the pod's memory
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}})
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"ip-{stage}"},
           "spec": {"completionMode": "Indexed", "completions": s.shards, "parallelism": s.shards,
                    "backoffLimitPerIndex": 3,
                    "template": {"spec": {"restartPolicy": "Never", "containers": [{
                        "name": "extract", "image": s.container, "command": ["/bin/sh", "-c"], "args": [cmd],
                        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
                        "resources": {"limits": {"nvidia.com/gpu": 1, "cpu": str(s.cpus),
                                                 "memory": s.memory.replace("G", "Gi")}},
                        "volumeMounts": mounts}], "volumes": volumes}}}}
    head = (f"# Kubernetes Indexed Job: `extract {stage}` in {s.shards} shards, one GPU per pod.\n"
            f"# Apply: kubectl apply -f k8s_{stage}.yaml. Edit the image and the volume (claim influencer-data)\n"
            f"# that holds the store and dataset. Rerunnable as is: done blocks are skipped; a failed index is\n"
            f"# retried up to backoffLimitPerIndex times.\n")
    return head + yaml.safe_dump(job, sort_keys=False, default_flow_style=False)


def write_plan(store: Store, url: str, out: str, s: PlanSettings) -> dict:
    if s.shards < 1:
        raise UserError("--shards must be at least 1")
    unknown = [st for st in s.stages if st not in STAGES]
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(unknown)}; expected images and/or text")
    os.makedirs(out, exist_ok=True)
    written, pending = [], {}
    modality = {"images": "image", "text": "text"}
    for stage in s.stages:
        per = [len(pending_blocks(store, modality[stage], Shard(i, s.shards))) for i in range(s.shards)]
        pending[stage] = per
        for name, text in ((f"slurm_{stage}.sh", slurm_script(stage, url, s)),
                           (f"k8s_{stage}.yaml", k8s_manifest(stage, url, s))):
            path = os.path.join(out, name)
            write_text(path, text)
            if name.endswith(".sh"):
                os.chmod(path, 0o755)
            written.append(path)
    return {"files": written, "pending_blocks": pending, "commands": commands(url, s)}

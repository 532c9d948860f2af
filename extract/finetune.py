"""`extract finetune-images`: the paper's image encoder, trained on the store's labelled posts (§3.3, §5.1),
or, with `labels="influencers"`, on weak labels: posts of labelled influencers, each labelled with its
owner's category (for users who hold the release and no hand-labelled posts).

Inception-v3 (ImageNet weights), only the top `trainable_blocks` inception blocks trained
(the paper: two, torchvision's Mixed_7b and Mixed_7c), global average pooling, Linear
2048→1024 + ReLU (the image feature), dropout 0.5, and a classifier over the ten post
categories; Adam at 1e-3; heavy augmentation (rotation, shift, flip, zoom, channel shift).
Trains on the train split, keeps the epoch with the best validation accuracy, and writes
one encoder file. `trainable_blocks=0` trains the new layers only: the paper's "no
fine-tuning" ablation.

Images are decoded and augmented in DataLoader worker processes; the frozen stem runs under
no_grad. After every epoch a checkpoint (`OUT.ckpt`) is written, so a killed run picks up
after its last finished epoch when the same command is run again.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from cache.schema import SPLITS, Status
from cache.store import open_store
from extract.encoder_file import default_preprocessing, save_encoder
from extract.config import FinetuneConfig
from extract.imaging import ImageError, decode, normalize
from extract.inception import ImageEncoder, load_imagenet_backbone
from runtime.console import say, warn
from runtime.device import OUT_OF_MEMORY, autocast, pick_device, pick_precision
from runtime.cpus import usable_cpus
from runtime.errors import UserError
from runtime.files import atomic_write, dataset_file
from runtime.options import check_options
from runtime.progress import Progress


class Augment:
    """Keras ImageDataGenerator's five, as the paper lists them: rotation, shift, flip, zoom, channel shift."""

    def __init__(self, rotation=20.0, shift=0.1, zoom=0.15, channel_shift=20):
        from torchvision.transforms import v2
        self.affine = v2.RandomAffine(degrees=rotation, translate=(shift, shift), scale=(1 - zoom, 1 + zoom))
        self.flip = v2.RandomHorizontalFlip()
        self.channel_shift = channel_shift

    def __call__(self, x: torch.Tensor) -> torch.Tensor:   # (3, H, W) uint8
        x = self.flip(self.affine(x))
        shift = torch.randint(-self.channel_shift, self.channel_shift + 1, (3, 1, 1), dtype=torch.int16)
        return (x.to(torch.int16) + shift).clamp_(0, 255).to(torch.uint8)


class LabelledImages(torch.utils.data.Dataset):
    """(pixels HWC uint8, label, ok) per labelled post; decoded (and augmented) in the worker."""

    def __init__(self, root: str, paths: list[str], labels: np.ndarray, resize: int, crop: int, augment: bool):
        self.root, self.paths, self.labels = root, paths, labels
        self.resize, self.crop = resize, crop
        self.augment = Augment() if augment else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            path = dataset_file(self.root, str(self.paths[i]))     # never a file outside the dataset
            if path is None:
                raise ImageError(Status.UNREADABLE, "path_outside_dataset")
            x = torch.from_numpy(decode(path, self.resize, self.crop)).permute(2, 0, 1)
            ok = True
        except ImageError:
            x, ok = torch.zeros(3, self.crop, self.crop, dtype=torch.uint8), False
        if ok and self.augment is not None:
            x = self.augment(x)
        return x.permute(1, 2, 0), int(self.labels[i]), ok


def _split_rows(store, split: str) -> tuple[list[str], np.ndarray]:
    label = store["posts/label"][:]
    code = store["posts/split"][:]
    rows = np.flatnonzero((label >= 0) & (code == SPLITS[split]))
    if not len(rows):
        return [], np.zeros(0, np.int64)
    paths = store["posts/image"].get_orthogonal_selection((rows,))
    keep = np.array([bool(str(p)) for p in paths], dtype=bool)
    return [str(p) for p in paths[keep]], label[rows[keep]].astype(np.int64)


def _weak_rows(store, split: str, per_influencer: int, seed: int, balance: bool) -> tuple[list[str], np.ndarray]:
    """Weak labels: posts of the split's labelled influencers, each labelled with its owner's category.

    Up to `per_influencer` posts with an image are sampled per influencer (seeded), so prolific
    influencers do not dominate; with `balance`, every category is then cut to the size of the
    smallest, so the encoder is not pulled towards the commonest category.
    """
    label, code = store["influencers/label"][:], store["influencers/split"][:]
    offsets = store.offsets()
    to_post = np.array([store.post_categories.index(c) for c in store.influencer_categories], dtype=np.int64)
    rng = np.random.default_rng(seed)
    rows, ys = [], []
    for j in np.flatnonzero((label >= 0) & (code == SPLITS[split])):
        r = np.arange(offsets[j], offsets[j + 1])
        rows.append(rng.permutation(r))
        ys.append(np.full(len(rows[-1]), to_post[label[j]], np.int64))
    if not rows:
        return [], np.zeros(0, np.int64)
    owner = np.concatenate([np.full(len(r), k) for k, r in enumerate(rows)])
    rows, ys = np.concatenate(rows), np.concatenate(ys)
    paths = store["posts/image"].get_orthogonal_selection((rows,)) if len(rows) else np.zeros(0, object)
    has = np.array([bool(str(p)) for p in paths], dtype=bool)
    keep = np.zeros(len(rows), bool)
    for k in np.unique(owner):
        keep[np.flatnonzero((owner == k) & has)[:per_influencer]] = True
    if balance and keep.any():
        present = np.unique(ys[keep])
        least = min(int((keep & (ys == c)).sum()) for c in present)
        for c in present:
            idx = np.flatnonzero(keep & (ys == c))
            keep[rng.permutation(idx)[least:]] = False
    return [str(p) for p in paths[keep]], ys[keep]


def _loader(ds, batch_size, shuffle, workers, seed, device):
    from extract.images import PREFETCH, SHM, prefetch_for, shared_memory_free
    g = torch.Generator()
    g.manual_seed(seed)
    # the training and the validation loader keep their workers (and their batches in /dev/shm) alive
    # side by side: each gets half the shared memory (extract.images.prefetch_for)
    prefetch = prefetch_for(2 * workers, batch_size * ds.crop * ds.crop * 3, shared_memory_free())
    if prefetch < PREFETCH and shuffle:
        warn(f"finetune: {SHM} has room for {prefetch} batch(es) per worker, not {PREFETCH} "
             f"(raise the shared memory: docker run --shm-size=8g)")
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, drop_last=False, generator=g, num_workers=workers,
        multiprocessing_context="spawn" if workers else None, persistent_workers=bool(workers),
        prefetch_factor=prefetch if workers else None, pin_memory=device.type == "cuda")


def _to_input(x: torch.Tensor, device, pre) -> torch.Tensor:
    return normalize(x.to(device, non_blocking=True), pre["mean"], pre["std"]).contiguous(
        memory_format=torch.channels_last)


@torch.no_grad()
def calibrate_batchnorm(encoder: ImageEncoder, loader, device, pre, max_images: int = 512) -> int:
    """A random Inception's batch-norm statistics from real images (a cumulative average over the
    first batches), so its activations stay in range; without this they reach 1e10 and overflow
    float16. Only for --weights random."""
    bns = [m for m in encoder.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    encoder.backbone.train()
    seen = 0
    for x, _, ok in loader:
        x = x[ok]
        if len(x):
            encoder.backbone(_to_input(x, device, pre))
            seen += len(x)
        if seen >= max_images:
            break
    for m in bns:
        m.momentum = 0.1
    encoder.eval()
    return seen


@torch.no_grad()
def evaluate(encoder, loader, device, pre, amp) -> tuple[float, np.ndarray, np.ndarray]:
    encoder.eval()
    ys, ps = [], []
    for x, y, ok in loader:
        x, y = x[ok], y[ok]
        if not len(x):
            continue
        with amp():
            logits = encoder(_to_input(x, device, pre))
        ys.append(y.numpy())
        ps.append(logits.float().argmax(1).cpu().numpy())
    y = np.concatenate(ys) if ys else np.zeros(0, np.int64)
    p = np.concatenate(ps) if ps else np.zeros(0, np.int64)
    return (float((y == p).mean()) if len(y) else float("nan")), y, p


def _trainable_state(encoder: ImageEncoder) -> dict:
    names = tuple(f"backbone.{n}." for n in encoder.trainable_names) + ("proj.", "classifier.")
    return {k: v.detach().clone() for k, v in encoder.state_dict().items() if k.startswith(names)}


def _labelled_sets(store, url: str, cfg: FinetuneConfig) -> tuple:
    """(train paths, train labels, val paths, val labels, what they are, the labels' record)."""
    categories = store.post_categories
    recorded = store.attrs.get("labels") or {}
    if cfg.labels == "posts":
        train_paths, train_y = _split_rows(store, "train")
        val_paths, val_y = _split_rows(store, "val")
        what = "labelled train posts"
        label_info = {"kind": "posts", "source": "hand-labelled posts",
                      "file": (recorded.get("posts") or {}).get("file")}
    else:
        train_paths, train_y = _weak_rows(store, "train", cfg.posts_per_influencer, cfg.seed, balance=True)
        val_paths, val_y = _weak_rows(store, "val", cfg.posts_per_influencer, cfg.seed + 1, balance=False)
        what = "weakly labelled posts of train influencers"
        rec = recorded.get("influencers") or {}
        label_info = {"kind": "influencers", "weak": True,
                      "source": f"each post labelled with its owner's category; influencer labels from "
                                f"{rec.get('source', 'hand')}" + (f" ({rec['file']})" if rec.get("file") else ""),
                      "posts_per_influencer": cfg.posts_per_influencer, "class_balanced": True,
                      "classes": sorted({categories[int(c)] for c in np.unique(train_y)})}
    if len(train_paths) < 2 or len(val_paths) < 1:
        raise UserError(f"{url}: {len(train_paths)} {what} and {len(val_paths)} val posts have an "
                        f"image; fine-tuning needs some of each (see `cache info`)")
    return train_paths, train_y, val_paths, val_y, what, label_info


def _new_encoder(cfg: FinetuneConfig, n_classes: int, log) -> tuple[ImageEncoder, str]:
    """Inception-v3 with the new layers, from ImageNet weights (or random ones, said loudly); its source."""
    encoder = ImageEncoder(n_classes, cfg.trainable_blocks, cfg.weights != "random", cfg.dropout,
                           init_weights=cfg.weights == "random")
    if cfg.weights != "random":
        return encoder, load_imagenet_backbone(encoder, cfg.weights)
    log("WARNING: --weights random: Inception-v3 with RANDOM weights. Its features are UNTRAINED below the "
        "trained blocks: fine for smoke runs, meaningless for results.")
    return encoder, "random (untrained)"


def _resume(ckpt_path: str, settings: dict, encoder, optimizer, log) -> tuple[list, dict, int]:
    """(history, best, first epoch): from the checkpoint of an interrupted run with the same options."""
    if not os.path.exists(ckpt_path):
        return [], {"val_accuracy": -1.0, "epoch": 0, "state": None}, 1
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("settings"), dict):
            raise ValueError("no settings")
    except Exception as e:      # a payload (refused by the weights-only loader), a truncated or foreign file
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"{ckpt_path}: not a readable fine-tuning checkpoint ({why}); delete it to start over") from None
    if ckpt["settings"] != settings:
        diff = sorted(k for k in settings if ckpt["settings"].get(k) != settings[k])
        raise UserError(f"{ckpt_path} is a checkpoint of a run with other options ({', '.join(diff)}); "
                        f"rerun with the same options to resume, or delete it to start over")
    try:
        encoder.load_state_dict(ckpt["encoder"])
        optimizer.load_state_dict(ckpt["optimizer"])
        history, best, epoch = ckpt["history"], ckpt["best"], int(ckpt["epoch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{ckpt_path}: a damaged fine-tuning checkpoint ({str(e).splitlines()[0][:160]}); "
                        f"delete it to start over") from None
    log(f"resuming from {ckpt_path} after epoch {ckpt['epoch']}")
    return history, best, epoch + 1


def _train_epoch(encoder, loader, optimizer, device, pre, prec: str, progress: Progress) -> dict:
    """One pass over the training posts; unreadable images are skipped and counted."""
    loss_fn = nn.CrossEntropyLoss()
    encoder.train()
    total, correct, seen, skipped = 0.0, 0, 0, 0
    for x, y, ok in loader:
        skipped += int((~ok).sum())
        x, y = x[ok], y[ok].to(device)
        if len(x) < 2:       # batch norm in the trained blocks needs two images
            progress.update(len(ok))
            continue
        with autocast(device, prec):
            logits = encoder(_to_input(x, device, pre))
            loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        progress.update(len(ok), failures=int((~ok).sum()))
    progress.close()
    return {"loss": total / max(seen, 1), "train_accuracy": correct / max(seen, 1), "unreadable": skipped}


def finetune(url: str, out: str, cfg: FinetuneConfig, log=say, quiet: bool = False) -> dict:
    device = pick_device(cfg.device, slow_on_cpu=True)
    prec = pick_precision(cfg.precision, device)
    check_options(cfg)       # again: fields may have been changed since the config was made
    pre = default_preprocessing(cfg.image_size)
    store = open_store(url, "r")
    root = cfg.dataset or store.attrs.get("dataset_root") or ""
    if not os.path.isdir(root):
        raise UserError(f"dataset root {root!r} (recorded in {url}) is not a folder; pass --dataset PATH")
    if "posts/label" not in store:
        raise UserError(f"{url} has no labels: run `cache labels` first")
    categories = store.post_categories
    train_paths, train_y, val_paths, val_y, what, label_info = _labelled_sets(store, url, cfg)
    workers = min(usable_cpus(), 8) if cfg.workers is None else cfg.workers

    torch.manual_seed(cfg.seed)
    encoder, source = _new_encoder(cfg, len(categories), log)
    encoder.to(device).to(memory_format=torch.channels_last)
    train_ds = LabelledImages(root, train_paths, train_y, pre["resize"], pre["crop"], cfg.augment)
    val_ds = LabelledImages(root, val_paths, val_y, pre["resize"], pre["crop"], False)
    train_loader = _loader(train_ds, cfg.batch_size, True, workers, cfg.seed, device)
    val_loader = _loader(val_ds, cfg.batch_size, False, workers, cfg.seed, device)
    if cfg.weights == "random":
        calibrate_batchnorm(encoder, val_loader if len(val_ds) >= len(train_ds) else train_loader, device, pre)
    optimizer = torch.optim.Adam(encoder.trainable_parameters(), lr=cfg.lr)
    # What a checkpoint must agree on to be resumed (the number of decoding workers need not).
    settings = {k: v for k, v in asdict(cfg).items() if k != "workers"}
    recorded = (store.attrs.get("labels") or {}).get("posts" if cfg.labels == "posts" else "influencers") or {}
    settings.update(store=store.location, label_digest=recorded.get("arrays"))
    ckpt_path = f"{out}.ckpt"
    history, best, first_epoch = _resume(ckpt_path, settings, encoder, optimizer, log)

    n_train = sum(p.numel() for p in encoder.trainable_parameters())
    log(f"fine-tuning {', '.join(encoder.trainable_names) or 'no inception blocks'} + proj + classifier "
        f"({n_train:,} trainable parameters) on {len(train_ds)} {what}, selecting on {len(val_ds)} val "
        f"posts; {device}, {prec}, input {pre['crop']}px, {workers} decoding workers")
    for epoch in range(first_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 1000 + epoch)
        train_loader.generator.manual_seed(cfg.seed * 1000 + epoch)
        progress = Progress(len(train_ds), "images", f"finetune epoch {epoch}/{cfg.epochs}", quiet=quiet)
        try:
            row = _train_epoch(encoder, train_loader, optimizer, device, pre, prec, progress)
            val_acc, _, _ = evaluate(encoder, val_loader, device, pre, lambda: autocast(device, prec))
        except OUT_OF_MEMORY:
            # not halved as extraction's batches are: the batch size is part of the training recipe
            raise UserError(f"out of {device} memory training at --batch-size {cfg.batch_size} (epoch {epoch}): "
                            f"pass a smaller --batch-size" + (f" and delete {ckpt_path}, whose finished epochs "
                            f"were trained at this one" if os.path.exists(ckpt_path) else "")) from None
        row = {"epoch": epoch, "loss": row["loss"], "train_accuracy": row["train_accuracy"], "val_accuracy": val_acc,
               "seconds": round(time.perf_counter() - t0, 1), "unreadable": row["unreadable"]}
        history.append(row)
        improved = val_acc > best["val_accuracy"]
        if improved:
            best = {"val_accuracy": val_acc, "epoch": epoch, "state": _trainable_state(encoder)}
        log(f"epoch {epoch}/{cfg.epochs}: loss {row['loss']:.3f}, train acc {row['train_accuracy']:.3f}, "
            f"val acc {val_acc:.3f}{' (best)' if improved else ''}, {row['seconds']} s")
        with atomic_write(ckpt_path, "wb") as f:
            torch.save({"settings": settings, "epoch": epoch, "encoder": encoder.state_dict(),
                        "optimizer": optimizer.state_dict(), "history": history, "best": best}, f)

    encoder.load_state_dict(best["state"], strict=False)
    run = {"source": source, "labels": label_info, "settings": settings, "history": history,
           "train_posts": len(train_ds), "val_posts": len(val_ds)}
    metrics = _write_encoder_file(out, encoder, cfg, val_loader, val_y, device=device, pre=pre, categories=categories,
                                  best=best, run=run)
    os.remove(ckpt_path)
    log(f"wrote {out}: val post accuracy {metrics['val_accuracy']:.3f} (fp32, best epoch {best['epoch']}; "
        f"majority class {metrics['val_majority_baseline']:.3f})")
    return metrics


def _write_encoder_file(out, encoder, cfg: FinetuneConfig, val_loader, val_y, *, device, pre, categories, best,
                        run: dict) -> dict:
    """Score the kept state on validation in fp32 and write the encoder file with its record; the metrics."""
    val_acc, y, p = evaluate(encoder, val_loader, device, pre, lambda: autocast(device, "fp32"))
    encoder.to("cpu").to(memory_format=torch.contiguous_format)
    per_class = {categories[c]: float((p[y == c] == c).mean()) for c in range(len(categories)) if (y == c).any()}
    majority = float(np.bincount(val_y, minlength=len(categories)).max() / len(val_y))
    metrics = {"val_accuracy": val_acc, "best_epoch": best["epoch"], "val_accuracy_per_class": per_class,
               "val_majority_baseline": majority, "train_posts": run["train_posts"], "val_posts": run["val_posts"],
               "labels": run["labels"]}
    meta = {"categories": categories, "weights_source": run["source"], "labels": run["labels"],
            "model": {"arch": "inception_v3", "trainable_blocks": cfg.trainable_blocks,
                      "trainable": encoder.trainable_names, "transform_input": cfg.weights != "random",
                      "dropout": cfg.dropout, "feature": "relu(Linear(2048, 1024)(avgpool))"},
            "preprocessing": pre, "training": run["settings"], "history": run["history"], "metrics": metrics,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    save_encoder(out, encoder, meta)
    return metrics

"""Text features (paper §3.3): the last layer's [CLS] output of BERT-base, captions cut at 128 tokens.

Fast the way inference stacks are: within a block, captions are sorted by token length and
batched under a token budget (dynamic padding) and put back in order afterwards;
tokenising the next block overlaps the model (extract.jobs; in `--workers` processes with
extract.tokenise); bf16 where the hardware has
it; PyTorch's scaled-dot-product attention; inference mode.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle

import numpy as np
import torch

from cache.blocks import carried_rows
from cache.schema import Status
from cache.store import Store
from extract.tokenise import Prepared, Tokeniser, TokenisingWorkers
from runtime.console import warn
from runtime.cpus import usable_cpus
from runtime.device import (DTYPES, autocast, maybe_compile, pick_device, pick_precision, shrinking_on_oom, to_device,
                            weights_digest)
from runtime.errors import EncoderLoadError, UserError

DEFAULT_MODEL = "bert-base-uncased"
VOCAB_CAPTIONS = 200_000   # captions the `random` mode trains its WordPiece vocabulary on


def random_vocab(captions, size: int = 30522) -> dict[str, int]:
    """A WordPiece vocabulary built deterministically from captions: BERT's special tokens, every
    character seen (alone and as a ##continuation), then the most frequent words.

    Deterministic by construction (ties broken by the word itself), so every shard job of a
    store builds the same vocabulary and the encoder fingerprints agree; a trained
    WordPiece (tokenizers' trainer) is not reproducible across processes.
    """
    from collections import Counter
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    norm = BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    pre = BertPreTokenizer()
    counts: Counter = Counter()
    for c in captions:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(c)))
    chars = sorted({ch for w in counts for ch in w})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + ch for ch in chars]
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    tokens += words[:max(0, size - len(tokens))]
    return {t: i for i, t in enumerate(tokens)}


def _random_encoder(captions):
    """BERT-base's shape with random (seeded) weights and a vocabulary built from the captions."""
    from transformers import BertConfig, BertModel, BertTokenizer
    tokenizer = BertTokenizer(vocab=random_vocab(captions), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), attn_implementation="sdpa")
    return tokenizer, BertModel(config, add_pooling_layer=False)


def _pretrained(name: str):
    from transformers import AutoModel, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModel.from_pretrained(name, attn_implementation="sdpa", add_pooling_layer=False)
    except (OSError, ValueError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as e:
        # a refused pickle payload or a truncated pytorch_model.bin too (transformers loads weights-only)
        where = "local folder" if os.path.isdir(name) else "Hugging Face hub name"
        raise EncoderLoadError(
            f"cannot load text model {name!r} ({where}): {str(e).splitlines()[0][:200]}. Without network, "
            f"pass --model PATH to a folder saved with save_pretrained, or --model random for an "
            f"untrained smoke run") from None
    return tokenizer, model


class TextEncoder:
    def __init__(self, name: str, tokenizer, model, device: torch.device, precision: str, *,
                 max_length: int, batch_tokens: int, compile: bool = False):
        self.name, self.tokenizer, self.device, self.precision = name, tokenizer, device, precision
        self.max_length, self.batch_tokens, self.compiled = max_length, batch_tokens, compile
        self.dim = model.config.hidden_size
        self.fingerprint = {
            "kind": "text", "model": name, "weights_sha256": weights_digest(model),
            "tokenizer_sha256": hashlib.sha256(repr(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:20],
            "pooling": "cls_last_layer", "max_length": max_length, "precision": precision,
        }
        self.model = model.to(device=device, dtype=DTYPES[precision]).eval()
        self.forward = maybe_compile(self.model, compile)
        # SDPA takes a 4-D boolean mask as it is (encode); other attentions get the usual 2-D one
        self.sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
        self.tokenise = Tokeniser(tokenizer, max_length)

    def prepare(self, captions: list[str]) -> Prepared:
        """Tokenise captions here, in this process (extract.tokenise)."""
        return self.tokenise(captions)

    def batches(self, lengths: np.ndarray, skip: np.ndarray | None = None):
        """Row indices sorted by length, cut so that rows × longest row ≤ the token budget; rows in
        `skip` (carried over, cache.blocks.carried_rows) are left out."""
        order = np.argsort(lengths, kind="stable")
        if skip is not None:
            order = order[~skip[order]]
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end + 1 - start) * lengths[order[end]] <= self.batch_tokens:
                end += 1
            yield order[start:end]
            start = end

    def padded(self, prepared: Prepared):
        """The block's batches as (rows, token ids, mask of the real tokens), padded with numpy alone."""
        lengths, offsets, flat = prepared.lengths, prepared.offsets, prepared.flat
        pad = self.tokenizer.pad_token_id or 0
        for rows in self.batches(lengths, prepared.carried):
            width = int(lengths[rows].max())
            if self.compiled:       # widths in steps of 16: a few shapes to compile, not one per length
                width = min(-(-width // 16) * 16, self.max_length)
            cols = np.arange(width)
            valid = cols[None, :] < lengths[rows][:, None]
            # positions past a row's end are clamped into the array and then replaced by padding
            at = np.minimum(offsets[rows][:, None] + cols[None, :], len(flat) - 1)
            yield rows, np.where(valid, flat[at], pad), valid

    @torch.inference_mode()
    def encode(self, prepared: Prepared) -> tuple[np.ndarray, np.ndarray]:
        """[CLS] features of a block (float16, as the store keeps them) and its statuses.

        One synchronisation per block: the [CLS] vectors stay on the device until the block is done,
        and nothing in the loop makes the host wait for the GPU, so the host pads and queues the next
        batch while the GPU computes this one. Copies go through runtime.device.to_device (pinned,
        non-blocking), and the attention mask is given as the 4-D boolean mask SDPA takes (None for a
        batch without padding): from a 2-D mask, transformers asks the GPU whether it masks anything,
        which waits for the previous batch."""
        dev = self.device
        out = torch.empty((len(prepared.lengths), self.dim), dtype=torch.float32, device=dev)

        def block(budget: int) -> None:
            self.batch_tokens = budget
            for rows, batch, valid in self.padded(prepared):
                if valid.all():
                    mask = None
                elif self.sdpa:
                    mask = to_device(np.ascontiguousarray(valid[:, None, None, :]), dev)
                else:                   # another attention: the 2-D mask transformers expands itself
                    mask = to_device(valid.astype(np.int64), dev)
                hidden = self.forward(input_ids=to_device(batch, dev), attention_mask=mask).last_hidden_state
                out[to_device(rows, dev)] = hidden[:, 0].float()
        # out of device memory: the block again with half the token budget (kept for the next blocks);
        # fp32 on a GPU without TF32 (the weights carry the precision; autocast only for that)
        with autocast(dev, "fp32") if self.precision == "fp32" else contextlib.nullcontext():
            shrinking_on_oom(block, self.batch_tokens, min(self.batch_tokens, self.max_length), "token", dev,
                             "--batch-tokens")
        # float16 on the device: half the bytes to copy back, and torch converts 3-4x faster than numpy
        return out.half().cpu().numpy(), prepared.status


def _store_captions(store: Store, limit: int):
    arr = store["posts/caption"]
    step = 65536
    for start in range(0, min(limit, arr.shape[0]), step):
        for c in arr[start:min(start + step, limit)]:
            yield str(c)


def load_text_encoder(name: str, store: Store | None = None, *, device: str = "auto", precision: str = "auto",
                      max_length: int = 128, batch_tokens: int | None = None, compile: bool = False) -> TextEncoder:
    dev = pick_device(device, slow_on_cpu=True)
    prec = pick_precision(precision, dev, bf16_on_cpu=True)
    if max_length < 2 or max_length > 512:
        raise UserError("--max-length must be between 2 and 512")
    if name == "random":
        if store is None:
            raise UserError("--model random trains its vocabulary on a store's captions")
        warn("WARNING: --model random: BERT-base shape with RANDOM weights and a vocabulary built from this "
             "store's captions. Its features are UNTRAINED: fine for smoke runs, meaningless for results.")
        tokenizer, model = _random_encoder(_store_captions(store, VOCAB_CAPTIONS))
    else:
        tokenizer, model = _pretrained(name)
    if model.config.hidden_size != 768:
        raise UserError(f"text model {name!r} has hidden size {model.config.hidden_size}; the store's "
                         f"features/text is 768-d (BERT-base)")
    if batch_tokens is None:
        batch_tokens = 65536 if dev.type == "cuda" else 4096
    return TextEncoder(name, tokenizer, model, dev, prec, max_length=max_length, batch_tokens=batch_tokens,
                       compile=compile)


class TextJob:
    """`extract text` as a shard job (extract.jobs.BlockJob): captions in, [CLS] features out.
    With `workers`, blocks are read and tokenised ahead in that many processes (extract.tokenise);
    without, in run_shard's prefetch thread."""
    modality, unit = "text", "captions"
    waited = 0.0                                # tokenising happens in prepare, timed by run_shard

    def __init__(self, encoder: TextEncoder, store: Store, workers: int = 0):
        self.encoder, self.store, self.workers = encoder, store, workers
        self.captions = store["posts/caption"]
        self.fingerprint = encoder.fingerprint
        self.pool: TokenisingWorkers | None = None

    def plan(self, blocks: list[int]) -> None:
        if self.workers and blocks:
            self.pool = TokenisingWorkers(self.encoder.tokenise, self.store.url,
                                          [self.store.block_rows(b) for b in blocks], self.workers)

    def prepare(self, rows: slice) -> Prepared:
        if self.pool is not None:
            prepared = self.pool.next(rows)
        else:
            prepared = self.encoder.prepare([str(c) for c in self.captions[rows]])
        prepared.start = rows.start
        carried = carried_rows(self.store, "text", rows)
        prepared.carried = carried if carried.any() else None
        return prepared

    def encode(self, prepared: Prepared):
        features, status = self.encoder.encode(prepared)
        failed = np.flatnonzero(status == Status.UNREADABLE)
        return features, status, [(int(prepared.start + i), "caption", "the tokenizer refused it") for i in failed]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def run_text(url: str, shard: str, *, model: str = DEFAULT_MODEL, max_length: int = 128,
             batch_tokens: int | None = None, device: str = "auto", precision: str = "auto",
             compile: bool = False, workers: int | None = None, quiet: bool = False):
    from cache.blocks import parse_shard
    from cache.store import open_store
    from extract.jobs import run_shard
    sh = parse_shard(shard)
    if workers is not None and workers < 0:
        raise UserError("--workers must be >= 0")
    if batch_tokens is not None and batch_tokens < max_length:
        raise UserError(f"--batch-tokens must be at least --max-length ({max_length}), got {batch_tokens}")
    if not 1 <= max_length <= 512:
        raise UserError(f"--max-length must be 1..512 (BERT's positions), got {max_length}")
    store = open_store(url, "r+")
    encoder = load_text_encoder(model, store, device=device, precision=precision, max_length=max_length,
                                batch_tokens=batch_tokens, compile=compile)
    if workers is None:
        workers = default_text_workers(encoder.device)
    return run_shard(store, sh, TextJob(encoder, store, workers), quiet=quiet)


def default_text_workers(device: torch.device, cpus: int | None = None) -> int:
    """`extract text`'s tokenising processes when --workers is not given: on a GPU half the usable
    cores, at most 8 (the GPU bench's `text_job_workers`: 8 on a 16-core H200 node ran 1.85x and
    1.76x the one-process job in two runs, 20,514 and 19,741 captions/s, the same features on every
    row; benchmarks/results/gpu-h200-2026-11-27-run*.json); 0 with fewer than 4 cores, and on the
    CPU, where the cores are the model's."""
    if torch.device(device).type != "cuda":
        return 0
    cpus = usable_cpus() if cpus is None else cpus
    return min(8, cpus // 2) if cpus >= 4 else 0

import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cache.inspect import verify
from cache.schema import Status
from cache.store import StoreError, open_store
from extract.cli import app as extract_app
from extract.text import load_text_encoder, run_text
from tests.conftest import build_store


def _reference(path, captions):
    """transformers' own BertModel on each caption alone: no padding, no batching, fp32."""
    from transformers import AutoTokenizer, BertModel
    tok = AutoTokenizer.from_pretrained(path)
    model = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    out = []
    with torch.no_grad():
        for c in captions:
            enc = tok(c, truncation=True, max_length=128, return_tensors="pt")
            out.append(model(**enc).last_hidden_state[0, 0].numpy())
    return np.stack(out)


def test_fp32_features_equal_transformers_within_float16(fp32_store, tiny_bert):
    s = open_store(fp32_store)
    captions = [str(c) for c in s["posts/caption"][:]]
    got = s["features/text"][:].astype(np.float32)
    ref = _reference(tiny_bert, captions)
    np.testing.assert_allclose(got, ref.astype(np.float16).astype(np.float32), rtol=2e-3, atol=2e-3)
    status = s["features/text_status"][:]
    empty = np.array([not c.strip() for c in captions])
    assert empty.any() and (status[empty] == Status.NO_INPUT).all() and (status[~empty] == Status.OK).all()
    assert verify(s) == []
    assert any(len(c.split()) > 200 for c in captions), "captions past 128 tokens are in the test"


@pytest.mark.slow
def test_compiled_model_gives_the_same_features(sample, tiny_bert, fp32_store, tmp_path):
    """--compile (torch.compile, widths padded to steps of 16) stores what the plain model stores, within
    float16 rounding; the padding is masked, so [CLS] does not see it."""
    path = build_store(sample, str(tmp_path / "s.zarr"), block=64)
    run_text(path, "0/1", model=tiny_bert, precision="fp32", device="cpu", batch_tokens=512, compile=True, quiet=True)
    got, ref = open_store(path), open_store(fp32_store)
    np.testing.assert_array_equal(got["features/text_status"][:], ref["features/text_status"][:])
    np.testing.assert_allclose(got["features/text"][:].astype(np.float32), ref["features/text"][:].astype(np.float32),
                               rtol=2e-3, atol=2e-3)


def test_default_mode_cosine(sample, tiny_bert, tmp_path):
    path = build_store(sample, str(tmp_path / "s.zarr"))
    run_text(path, "0/1", model=tiny_bert, quiet=True)
    s = open_store(path)
    got = s["features/text"][:].astype(np.float32)
    ref = _reference(tiny_bert, [str(c) for c in s["posts/caption"][:]])
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, cos.min()


def test_other_encoder_is_refused(fp32_store, tiny_bert):
    with pytest.raises(StoreError, match="another encoder.*precision"):
        run_text(fp32_store, "0/1", model=tiny_bert, precision="bf16", device="cpu", quiet=True)


def test_untokenisable_caption_gets_status_3(tiny_bert):
    enc = load_text_encoder(tiny_bert, device="cpu", precision="fp32")
    prepared = enc.prepare(["pasta tonight", "bad \ud83d surrogate", "", "  "])
    feats, status = enc.encode(prepared)
    assert status.tolist() == [Status.OK, Status.UNREADABLE, Status.NO_INPUT, Status.NO_INPUT]
    assert np.isfinite(feats).all()


def test_4d_boolean_mask_gives_what_the_2d_mask_gives(tiny_bert, store_path):
    """encode hands SDPA a 4-D boolean mask (no host sync on a GPU) and none for a batch without
    padding; the features equal those of the usual 2-D mask that transformers expands itself, and
    come back as float16, as the store keeps them."""
    s = open_store(store_path)
    enc = load_text_encoder(tiny_bert, device="cpu", precision="fp32", batch_tokens=2048)
    assert enc.sdpa
    prepared = enc.prepare([str(c) for c in s["posts/caption"][:]])
    masks = [valid for _, _, valid in enc.padded(prepared)]
    assert any(m.all() for m in masks) and any(not m.all() for m in masks), "both kinds of batch are in the test"
    feats, _ = enc.encode(prepared)
    enc.sdpa = False
    ref, _ = enc.encode(prepared)
    assert feats.dtype == np.float16
    np.testing.assert_allclose(feats.astype(np.float32), ref.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_batches_respect_the_token_budget(tiny_bert):
    enc = load_text_encoder(tiny_bert, device="cpu", precision="fp32", batch_tokens=100)
    lengths = np.array([3, 50, 7, 7, 2, 30, 12, 128])
    seen = []
    for rows in enc.batches(lengths):
        assert len(rows) == 1 or len(rows) * lengths[rows].max() <= 100
        assert (np.diff(lengths[rows]) >= 0).all()
        seen += rows.tolist()
    assert sorted(seen) == list(range(len(lengths)))


def test_cli_unloadable_model_says_what_to_pass(store_path, tmp_path):
    r = CliRunner().invoke(extract_app, ["text", store_path, "--shard", "0/1", "--model", str(tmp_path / "none")])
    assert r.exit_code == 2 and "--model random" in r.output
    r = CliRunner().invoke(extract_app, ["text", store_path, "--shard", "2/2", "--model", "random"])
    assert r.exit_code == 2 and "0 <= i < N" in r.output


def test_random_vocabulary_is_the_same_in_every_process(store_path):
    code = ("from cache.store import open_store; from extract.text import _store_captions, random_vocab; "
            f"import hashlib; v = random_vocab(_store_captions(open_store({store_path!r}), 10**6)); "
            "print(len(v), hashlib.sha256(repr(sorted(v.items())).encode()).hexdigest())")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout for _ in range(2)}
    assert len(outs) == 1 and int(next(iter(outs)).split()[0]) > 100


def test_tokenising_workers_write_what_the_thread_writes(sample, tiny_bert, fp32_store, tmp_path, monkeypatch):
    """`extract text --workers 2`: blocks read and tokenised ahead in two processes give the very
    features and statuses the in-process job gives (a lone surrogate is refused in a worker too)."""
    from extract.tokenise import TokenisingWorkers
    taken = []
    plain_next = TokenisingWorkers.next
    monkeypatch.setattr(TokenisingWorkers, "next", lambda self, rows: taken.append(rows) or plain_next(self, rows))
    path = build_store(sample, str(tmp_path / "s.zarr"), block=64)
    r = CliRunner().invoke(extract_app, ["text", path, "--shard", "0/1", "--model", tiny_bert, "--precision", "fp32",
                                         "--device", "cpu", "--batch-tokens", "512", "--workers", "2"])
    assert r.exit_code == 0, r.output
    s, ref = open_store(path), open_store(fp32_store)
    assert len(taken) == s.n_blocks > 1                     # every block came from the workers
    np.testing.assert_array_equal(s["features/text_status"][:], ref["features/text_status"][:])
    np.testing.assert_array_equal(s["features/text"][:], ref["features/text"][:])
    assert verify(s) == []


def test_tokenising_workers_default_to_half_the_cores_on_a_gpu_only(sample, tiny_bert, tmp_path, monkeypatch):
    """Without --workers: on a GPU half the usable cores, at most 8 (what the GPU bench measured:
    1.76-1.85x the one-process job on a 16-core H200 node), none on the CPU, none with under 4 cores;
    an explicit --workers 0 is kept."""
    import torch

    from extract import text
    from extract.text import default_text_workers
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert [default_text_workers(cuda, c) for c in (1, 3, 4, 8, 16, 64)] == [0, 0, 2, 4, 8, 8]
    assert default_text_workers(cpu, 64) == 0
    made = []
    plain = text.TextJob.__init__
    monkeypatch.setattr(text.TextJob, "__init__", lambda self, enc, store, workers=0: made.append(workers)
                        or plain(self, enc, store, workers))
    path = build_store(sample, str(tmp_path / "s.zarr"), block=64)
    for extra in ([], ["--workers", "0"]):
        r = CliRunner().invoke(extract_app, ["text", path, "--shard", "0/1", "--model", tiny_bert, "--device", "cpu",
                                             "--precision", "fp32", "--batch-tokens", "512", *extra])
        assert r.exit_code == 0, r.output
    assert made == [0, 0]


def test_tokeniser_gives_the_transformers_ids(tiny_bert, store_path):
    """The Rust batch call is used only when it agrees with the transformers call; on the sample's
    captions (emoji, accents, long ones cut at 128) they agree id for id, and pickling (how worker
    processes get it) keeps the fast path."""
    import pickle

    from transformers import AutoTokenizer
    enc = load_text_encoder(tiny_bert, device="cpu", precision="fp32")
    assert enc.tokenise._fast is not None
    captions = [str(c) for c in open_store(store_path)["posts/caption"][:]]
    want = AutoTokenizer.from_pretrained(tiny_bert)(captions, truncation=True, max_length=128)["input_ids"]
    assert enc.prepare(captions).ids == [list(x) for x in want]
    again = pickle.loads(pickle.dumps(enc.tokenise))
    assert again._fast is not None and again(captions).ids == [list(x) for x in want]


_TEXT = "abc xyz ééñ 日本語 한국어 🍝#@!.,\t\n\u3000\u0301 "


@pytest.mark.parametrize("max_length", [8, 16])
def test_tokeniser_cut_long_captions_gives_the_whole_captions_ids(tiny_bert, max_length):
    """Long captions are tokenised cut at a space past 6 characters a token, and again whole when the
    cut part falls short of max_length tokens: on random captions of words, CJK, Hangul (several tokens
    per syllable), combining accents, tabs, newlines, wide spaces and words of hundreds of letters, the
    ids equal transformers' call on the whole caption, with the cut taken and the fallback taken."""
    import random

    from transformers import AutoTokenizer
    from extract.tokenise import CUT_CHARS_PER_TOKEN, Tokeniser
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    t = Tokeniser(tok, max_length)
    assert t._cut == CUT_CHARS_PER_TOKEN * max_length
    rng = random.Random(max_length)
    captions = []
    for _ in range(600):
        n = rng.choice([5, 40, t._cut - 3, t._cut + 1, 2 * t._cut, 5 * t._cut])
        word = rng.choice([1, 3, 8, 30, 200])
        letters = [rng.choice(_TEXT) for _ in range(n)]
        for k in range(0, n, word):                       # spaces every `word` characters at most
            letters[k] = " " if rng.random() < 0.7 else letters[k]
        captions.append("".join(letters))
    cuts, falls = [], []
    plain_fast = t._fast
    t._fast = lambda cs: (cuts.append(len(cs)) if not cuts else falls.append(len(cs))) or plain_fast(cs)
    got = t(captions).ids
    assert got == [list(x) for x in tok(captions, truncation=True, max_length=max_length)["input_ids"]]
    assert sum(len(c) > t._cut for c in captions) > 100 and falls and falls[0] > 0


def test_tokeniser_cut_only_where_a_prefix_of_words_is_a_prefix_of_tokens(tiny_bert):
    """A tokenizer whose pre-tokeniser is not BERT's (here: bytes, as GPT-2's) is never cut."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer
    from extract.tokenise import Tokeniser
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    t = Tokeniser(tok, 16)
    assert t._fast is not None and t._cut is None          # the Rust call still, whole captions
    long = "word " * 200
    assert t([long]).ids == [tok([long], truncation=True, max_length=16)["input_ids"][0]]


def test_out_of_device_memory_halves_the_token_budget(sample, tiny_bert, fp32_store, tmp_path, monkeypatch, capsys):
    """The text model raises torch's out-of-memory error for batches over 300 tokens: the job encodes
    the block again with half the token budget until it fits (1024 → 512 → 256), says so with the
    option to pass, and stores what the reference job stores. Out of memory for batches as small as
    they go (one caption): one line naming the device, no traceback."""
    import extract.text as text
    from runtime.device import OUT_OF_MEMORY
    limit = {"tokens": 300}

    def small_device(model, enabled):
        def forward(input_ids, attention_mask):
            if input_ids.numel() > limit["tokens"]:
                raise OUT_OF_MEMORY("CUDA out of memory. Tried to allocate 1.50 GiB")
            return model(input_ids=input_ids, attention_mask=attention_mask)
        return forward
    monkeypatch.setattr(text, "maybe_compile", small_device)
    path = build_store(sample, str(tmp_path / "s.zarr"), block=64)
    run_text(path, "0/1", model=tiny_bert, precision="fp32", device="cpu", batch_tokens=1024, quiet=True)
    err = capsys.readouterr().err
    assert "out of cpu memory with batches of 1024 tokens; going on with 512 (pass --batch-tokens 512" in err
    assert "going on with 256" in err and "going on with 128" not in err
    got, ref = open_store(path), open_store(fp32_store)
    np.testing.assert_array_equal(got["features/text_status"][:], ref["features/text_status"][:])
    np.testing.assert_allclose(got["features/text"][:].astype(np.float32), ref["features/text"][:].astype(np.float32),
                               rtol=2e-3, atol=2e-3)
    limit["tokens"] = 0
    path = build_store(sample, str(tmp_path / "t.zarr"), block=64)
    r = CliRunner().invoke(extract_app, ["text", path, "--shard", "0/1", "--model", tiny_bert, "--device", "cpu",
                                         "--batch-tokens", "256"])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.strip().splitlines() if x.startswith("error")]
    assert len(lines) == 1 and "out of cpu memory with batches of 128 tokens, as small as they go" in lines[0], r.output
    assert "Traceback" not in r.output

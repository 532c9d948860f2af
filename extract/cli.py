"""`extract`: sample data, index, and the feature extraction jobs. Parses and calls only."""
from __future__ import annotations

import typer

from cache import schema
from cache.console import clean_errors, say

app = typer.Typer(help="Stage one: read the release format and extract features into the store.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.command("sample-data")
@clean_errors
def sample_data(out: str = typer.Argument(..., help="folder to write the dataset into"),
                influencers: int = typer.Option(48, help="number of influencers"),
                posts: int = typer.Option(30, help="posts per influencer (some get fewer)"),
                seed: int = typer.Option(0),
                image_size: int = typer.Option(256, help="image side in pixels"),
                clean: bool = typer.Option(False, help="leave out the planted bad inputs")):
    """Write a synthetic dataset in the exact release format, plus labels/*.csv."""
    from extract.sample import make_sample
    counts = make_sample(out, influencers, posts, seed, image_size=image_size, clean=clean)
    say(f"wrote {out}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


@app.command()
@clean_errors
def index(dataset: str = typer.Argument(..., help="dataset root (influencers.txt, mapping, info/, image/)"),
          store: str = typer.Argument(..., help="store path or URL to create"),
          max_posts: int = typer.Option(300, help="newest posts kept per influencer"),
          block: int = typer.Option(schema.DEFAULT_BLOCK, help="rows per block (Zarr shard)"),
          workers: int = typer.Option(None, help="JSON parsing processes (default: all cores)"),
          overwrite: bool = typer.Option(False, help="re-index a store that already holds features")):
    """Index the release into a new store: tables, full-size NaN feature arrays, done flags."""
    from extract.index import run_index
    report = run_index(dataset, store, max_posts=max_posts, block=block, workers=workers, overwrite=overwrite)
    say(report.summary())


@app.command()
@clean_errors
def text(store: str = typer.Argument(..., help="store path or URL"),
         shard: str = typer.Option(..., help="i/N: this job's share of the blocks"),
         model: str = typer.Option("bert-base-uncased", help="hub name, local folder, or 'random'"),
         max_length: int = typer.Option(128, help="tokens per caption, [CLS] and [SEP] included"),
         batch_tokens: int = typer.Option(None, help="token budget per batch (default 4096 CPU, 65536 GPU)"),
         device: str = typer.Option("auto", help="auto, cpu or cuda"),
         precision: str = typer.Option("auto", help="auto (bf16 on GPUs and bf16-capable CPUs), fp32, bf16, fp16"),
         throttle: float = typer.Option(0.0, hidden=True)):
    """BERT [CLS] features of every caption in the shard's blocks, resumable block by block."""
    from extract.text import EncoderLoadError, run_text
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"--precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    try:
        report = run_text(store, shard, model=model, max_length=max_length, batch_tokens=batch_tokens,
                          device=device, precision=precision, throttle=throttle)
    except EncoderLoadError as e:
        raise ValueError(str(e)) from None
    say(f"text {shard}: {report.summary('captions')}")

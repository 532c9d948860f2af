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

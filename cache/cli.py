"""`cache`: labels, info, verify. Parses arguments and calls the library; nothing else."""
from __future__ import annotations

import json

import typer

from cache.console import SCHEDULER_HELP, clean_errors, say
from cache.inspect import format_info, info as store_info, verify as store_verify
from cache.labels import apply_labels
from cache.store import open_store

app = typer.Typer(help="The feature store: labels, information, verification.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


@app.command()
@clean_errors
def labels(store: str = typer.Argument(..., help="store path or URL"),
           influencers: str = typer.Option(None, help="influencers.csv: username,category[,split]"),
           posts: str = typer.Option(None, help="posts.csv: post_id,category[,split]"),
           seed: int = typer.Option(0, help="seed of the stratified split for rows without one")):
    """Read hand labels from CSV, assign missing splits (stratified, seeded), store both."""
    if not influencers and not posts:
        raise ValueError("give --influencers and/or --posts")
    summary = apply_labels(open_store(store, "r+"), influencers, posts, seed)
    for table, s in summary.items():
        say(f"{table}: {s['labelled']} labelled; splits {s['splits']}")
        if "replaced" in s:
            say(f"{table}: replaced the previous labels ({s['replaced']['labelled']} labelled, "
                f"from {s['replaced']['file']})")


@app.command()
@clean_errors
def info(store: str = typer.Argument(..., help="store path or URL"),
         as_json: bool = typer.Option(False, "--json", help="print JSON instead of text"),
         scheduler: str = typer.Option(None, help=SCHEDULER_HELP)):
    """Sizes, extraction progress per modality, failures, problems, labels and splits."""
    d = store_info(open_store(store), scheduler)
    typer.echo(json.dumps(d, indent=2) if as_json else format_info(d))


@app.command()
@clean_errors
def verify(store: str = typer.Argument(..., help="store path or URL"),
           scheduler: str = typer.Option(None, help=SCHEDULER_HELP)):
    """Check done blocks hold no NaN rows, statuses agree, tables are consistent. Exit 1 if not."""
    errors = store_verify(open_store(store, allow_incomplete=True), scheduler, quiet=False)
    for e in errors:
        typer.echo(f"FAIL {e}")
    if errors:
        raise typer.Exit(1)
    typer.echo("ok: store verified")

"""`cache`: labels, info, verify, export, import. Parses arguments and calls the library; nothing else."""
from __future__ import annotations

import json

import typer

from cache.inspect import format_info, info as store_info, verify as store_verify
from cache.labels import ReleaseDraw, apply_labels
from cache.store import open_store
from runtime.console import SCHEDULER_HELP, clean_errors, say, setup_logging
from runtime.errors import UserError

app = typer.Typer(help="The feature store: labels, information, verification.", no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None)

@app.callback()
def main():
    """The feature store."""
    setup_logging()          # once per command line: plain lines on stderr (runtime.console)


@app.command()
@clean_errors
def labels(store: str = typer.Argument(..., help="store path or URL"),
           *, influencers: str = typer.Option(None, help="influencers.csv: username,category[,split]"),
           posts: str = typer.Option(None, help="posts.csv: post_id,category[,split]"),
           from_release: bool = typer.Option(False, "--from-release",
                                             help="draw influencer labels from influencers.txt's categories (the "
                                                  "paper's protocol); a hand label from --influencers wins"),
           per_category: int = typer.Option(200, help="--from-release: influencers drawn per category (train + val)"),
           val_fraction: float = typer.Option(0.2, help="--from-release: share of each category's draw for val"),
           test: int = typer.Option(1142, help="--from-release: test influencers drawn at random from the rest"),
           seed: int = typer.Option(0, help="seed of the draw and of the stratified split for rows without one")):
    """Store labels and splits: hand labels from CSV, and/or labels drawn from the release's own categories."""
    if not influencers and not posts and not from_release:
        raise UserError("give --influencers and/or --posts, or --from-release")
    draw = ReleaseDraw(per_category, val_fraction, test) if from_release else None
    summary = apply_labels(open_store(store, "r+"), influencers, posts, seed, release=draw)
    for table, s in summary.items():
        say(f"{table}: {s['labelled']} labelled ({s['source']}); splits {s['splits']}")
        r = s.get("from_release")
        if r:
            ex = r["excluded"]
            say(f"{table}: drew {r['drawn']} of {r['eligible']} eligible influencers from the release's categories "
                f"({r['per_category']} per category, val share {r['val_fraction']}, {r['test']} test, seed "
                f"{r['seed']}); never drawn: {ex['other']} 'other', {ex['no category']} without a category, "
                f"{ex['no posts']} without posts; "
                f"{ex['misspelt, fixed at index']} misspelt categories were fixed at index time")
            d = r.get("hand_vs_release")
            if d and d["differ"]:
                say(f"{table}: {d['differ']} of {d['compared']} hand labels differ from the release's category "
                    f"(e.g. {'; '.join(d['first'])}); the hand labels are kept")
        if "replaced" in s:
            say(f"{table}: replaced the previous labels ({s['replaced']['labelled']} labelled, "
                f"{s['replaced']['source']}, from {s['replaced']['file'] or 'the release'})")


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


@app.command()
@clean_errors
def export(store: str = typer.Argument(..., help="store path or URL"),
           out: str = typer.Argument(..., help="HDF5 file to write"),
           labelled_only: bool = typer.Option(False, "--labelled-only",
                                              help="only the labelled influencers' bags and the labelled posts"),
           compress: bool = typer.Option(False, help="lzf-compress the image features (smaller file, slower)")):
    """The store as one HDF5 file (arrays, attributes, layout), streamed a block at a time."""
    from cache.exchange import export_store
    r = export_store(store, out, labelled_only, compress)
    say(f"exported {r['posts']:,} posts of {r['influencers']:,} influencers to {r['out']} "
        f"({r['bytes'] / 1e6:.1f} MB, {r['seconds']:.1f}s" + (f"; {r['partial_bags']} influencers with only their "
                                                               f"labelled posts" if labelled_only else "") + ")")


@app.command("import")
@clean_errors
def import_(path: str = typer.Argument(..., help="HDF5 file written by `cache export`"),
            store: str = typer.Argument(..., help="new store path or URL (must not exist)")):
    """A store from a `cache export` file."""
    from cache.exchange import import_store
    r = import_store(path, store)
    say(f"imported {r['posts']:,} posts into {r['store']} ({r['seconds']:.1f}s)")

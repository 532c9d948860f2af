"""`heads`: fit, eval, predict, similar, search, ablate, report. Parses arguments and calls the library; nothing else."""
from __future__ import annotations

import typer

from heads.config import FitConfig
from runtime.console import SCHEDULER_HELP, clean_errors, say, setup_logging
from runtime.errors import UserError
from runtime.options import options_from

app = typer.Typer(help="Stage two: the Influencer Profiler trained from the cache.", no_args_is_help=True,
                  pretty_exceptions_enable=False, rich_markup_mode=None)

@app.callback()
def main():
    """Stage two."""
    setup_logging()          # once per command line: plain lines on stderr (runtime.console)


@app.command()
@clean_errors
@options_from(FitConfig)
def fit(ctx: typer.Context,
        store: str = typer.Argument(..., help="store path or URL"),
        out: str = typer.Option(..., help="run folder to write (whole or absent: built in OUT.partial, swapped in at "
                                "the end)"),
        overwrite: bool = typer.Option(False, help="replace the finished run already in --out"),
        config: str = typer.Option(None, help="replay a run: every option of RUN/config.json (options given here "
                                   "override it)"),
        standardize: bool = typer.Option(False, help="the same as --normalize feature (kept for old scripts)"),
        options: dict = None):
    """Train on the train split, select on validation, score on test; write the run folder.
    Every other option is a field of heads.config.FitConfig (its default, help and bounds)."""
    from heads.train import fit as run_fit
    if standardize:
        options["normalize"] = "feature"
    m = run_fit(store, out, _fit_config(ctx, options, config), log=say, overwrite=overwrite)
    ref = m["reference"]
    say(f"test: influencer accuracy {100 * m['influencer']['accuracy']:.2f}% (macro F1 "
        f"{m['influencer']['macro_f1']:.3f}, n={m['influencer']['n']}); post accuracy "
        f"{100 * m['post']['accuracy']:.2f}% (n={m['post']['n']}); logistic-regression reference "
        f"{100 * ref['influencer']['accuracy']:.2f}%; report in {out}/report.md")
    if "warning" in m:
        say("warning: " + m["warning"])


def _fit_config(ctx: typer.Context, given: dict, config: str | None):
    """FitConfig from the options; with --config, every option of that run's config.json (validated by the
    run-folder reader) except those given on this command line (timm's args.yaml habit)."""
    import os

    from cache.runs import RunFolder
    if not config:
        return FitConfig(**given)
    folder = os.path.dirname(config) if os.path.basename(config) == "config.json" else config
    replayed = RunFolder.open(folder, finished=False).fit
    options = {k: v for k, v in replayed.items() if k in FitConfig.__dataclass_fields__}
    if "instance_loss" not in replayed and replayed.get("instance_weight"):
        options["instance_loss"] = "on"     # a run from before --instance-loss: a weight > 0 meant on
    for name, value in given.items():
        source = ctx.get_parameter_source("standardize" if name == "normalize" and given[name] == "feature"
                                          and ctx.params.get("standardize") else name)
        if getattr(source, "name", None) == "COMMANDLINE" or name not in options:   # typer vendors click
            options[name] = value
    return FitConfig(**options)


@app.command("eval")
@clean_errors
def eval_(run: str = typer.Argument(..., help="a `heads fit` run folder"),
          posts: str = typer.Option("20,50,100,300", help="posts per influencer to try"),
          seed: int = typer.Option(0),
          store: str = typer.Option(None, help="store to read (default: the one the run was fit on)")):
    """Test accuracy against the number of posts per influencer (paper Figure 5a)."""
    from heads.evaluate import posts_curve
    try:
        counts = [int(p) for p in posts.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"--posts must be a comma-separated list of positive integers, got {posts!r}") from None
    if not counts or min(counts) < 1:
        raise UserError("--posts must be a comma-separated list of positive integers")
    typer.echo(f"{'posts':>6} {'influencers':>12} {'accuracy':>9}")
    for r in posts_curve(run, counts, seed=seed, store_url=store):
        typer.echo(f"{r['posts']:>6} {r['influencers']:>12} {100 * r['accuracy']:>8.2f}%")


@app.command()
@clean_errors
def predict(run: str = typer.Argument(..., help="a `heads fit` run folder"),
            store: str = typer.Argument(..., help="store to label (every influencer and post)"),
            out: str = typer.Option(None, help="folder for influencers.csv and posts.csv (default RUN/predictions)"),
            scheduler: str = typer.Option(None, help=SCHEDULER_HELP),
            device: str = typer.Option("cpu", help="cpu, cuda or auto (on each worker)"),
            batch_size: int = typer.Option(64, help="influencers per forward pass"),
            overwrite: bool = typer.Option(False, help="replace another run's predictions in the store")):
    """Label every influencer and post of the store; keep the posts that drove each decision."""
    from heads.predict import agreement_line, predict as run_predict
    r = run_predict(run, store, out, scheduler=scheduler, device=device, batch_size=batch_size, overwrite=overwrite)
    say(f"predicted {r['influencers']} influencers and {r['posts']} posts in {r['seconds']:.1f}s ({r['scheduler']}) "
        f"({r['unusable_influencers']} influencers with no usable post); CSVs in {r['out']}; "
        f"arrays in {store}/predictions")
    say(agreement_line(r["release_agreement"]))
    if not r["post_head_trained"]:
        say("post categories left empty: the run's post head was not trained (no labelled posts)")


@app.command()
@clean_errors
def similar(run: str = typer.Argument(..., help="the run whose `heads predict` labelled STORE"),
            store: str = typer.Argument(..., help="a predicted store"),
            username: str = typer.Argument(..., help="the influencer to find lookalikes of"),
            *, k: int = typer.Option(20, "--k", help="lookalikes listed"),
            category: str = typer.Option(None, help="only influencers predicted in this category"),
            tier: str = typer.Option(None, help="only these follower tiers, comma-separated: nano,micro,macro,mega"),
            min_engagement: float = typer.Option(None, help="only an engagement rate (likes + comments per post "
                                                 "over followers) of at least this"),
            min_followers: int = typer.Option(None, help="only at least this many followers"),
            include_self: bool = typer.Option(False, "--include-self", help="list USERNAME itself too (first)"),
            out: str = typer.Option(None, help="also write the list as a CSV file")):
    """The influencers nearest USERNAME by cosine on the influencer embeddings h (attention-pooled, 256-d)."""
    from cache.store import open_store
    from heads.discover import Directory, Filters, parse_tiers, similar as find_similar
    f = Filters(category=category, tiers=parse_tiers(tier), min_engagement=min_engagement,
                min_followers=min_followers)
    _show(find_similar(Directory(open_store(store), run, need_embeddings=True), username, k, f, include_self), out)


@app.command()
@clean_errors
def search(run: str = typer.Argument(..., help="the run whose `heads predict` labelled STORE"),
           store: str = typer.Argument(..., help="a predicted store"),
           *, category: str = typer.Option(None, help="only influencers predicted in this category"),
           min_probability: float = typer.Option(None, help="only a predicted probability of at least this"),
           tier: str = typer.Option(None, help="only these follower tiers, comma-separated: nano,micro,macro,mega"),
           min_engagement: float = typer.Option(None, help="only an engagement rate of at least this"),
           min_followers: int = typer.Option(None, help="only at least this many followers"),
           max_sponsored: float = typer.Option(None, help="only a sponsored share of posts of at most this (0-1; "
                                               "influencers whose paid posts are unknown do not pass)"),
           sort: str = typer.Option("probability", help="probability, engagement or followers"),
           top: int = typer.Option(50, help="influencers listed"),
           out: str = typer.Option(None, help="also write the list as a CSV file")):
    """The ranked list a brief asks for: filtered by category, probability, tier, engagement, sponsored share."""
    from cache.store import open_store
    from heads.discover import Directory, Filters, parse_tiers, search as run_search
    f = Filters(category=category, tiers=parse_tiers(tier), min_engagement=min_engagement,
                min_followers=min_followers, min_probability=min_probability, max_sponsored=max_sponsored)
    _show(run_search(Directory(open_store(store), run), f, sort=sort, top=top), out)


def _show(rows: list[dict], out: str | None) -> None:
    """A query's rows as a table on the terminal, and as a CSV file when asked."""
    from heads.discover import table, write_csv
    typer.echo(table(rows))
    if out:
        write_csv(rows, out)
        say(f"wrote {len(rows)} rows to {out}")


@app.command()
@clean_errors
def ablate(store: str = typer.Argument(..., help="store path or URL"),
           out: str = typer.Option(..., help="folder for one run per cell"),
           no_finetune_store: str = typer.Option(None, help="store whose image features come from an encoder "
                                                 "trained with --trainable-blocks 0"),
           epochs: int = typer.Option(None, help="fixed epochs per run (default: early stopping)"),
           seed: int = typer.Option(0)):
    """Figure 5b: text / image / both × full model / no attention / no fine-tuning, one table."""
    from heads.ablate import ablate as run_ablate
    typer.echo(run_ablate(store, out, no_finetune_store=no_finetune_store, epochs=epochs, seed=seed, log=say))


@app.command()
@clean_errors
def report(run: str = typer.Argument(..., help="a `heads fit` run folder"),
           store: str = typer.Argument(..., help="the store the run was fitted on (and predicted, for the explorer)"),
           *, out: str = typer.Option(..., help="folder to write index.html and assets/ into"),
           baselines: str = typer.Option(None, help="`baselines run` output folder (results.json)"),
           predictions: str = typer.Option(None, help="`heads predict` output folder (summary.json)"),
           ablate: str = typer.Option(None, help="`heads ablate` output folder (ablation.json)"),
           cards: int = typer.Option(12, help="influencers shown per category"),
           dataset: str = typer.Option(None, help="dataset root for thumbnails, if it moved since `extract index`")):
    """One self-contained HTML report: run, Tables 1-2, figures, agreement, explorer, cards."""
    from heads.webreport import write_report
    r = write_report(run, store, out, baselines=baselines, predictions=predictions, ablate=ablate, cards=cards,
                     dataset=dataset, log=say)
    say(f"report: {r['index']} ({r['influencers']:,} influencers, {r['thumbnails']} thumbnails, "
        f"{r['placeholders']} placeholders, {r['bytes'] / 1e6:.1f} MB, {r['seconds']:.1f}s)")

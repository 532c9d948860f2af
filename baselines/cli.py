"""`baselines`: run the paper's baselines. Parses arguments and calls the library; nothing else."""
from __future__ import annotations

import typer

from runtime.console import SCHEDULER_HELP, clean_errors, say, setup_logging

app = typer.Typer(help="The paper's Table 1 and 2 baselines on the store's features and splits.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.callback()
def main():
    """Baselines."""
    setup_logging()          # once per command line: plain lines on stderr (runtime.console)


@app.command()
@clean_errors
def run(store: str = typer.Argument(..., help="store path or URL"),
        *, out: str = typer.Option(..., help="folder for results.json, results.md, predictions.csv"),
        models: str = typer.Option("gnb,knn,svc,rf", help="comma-separated: gnb, knn, svc, rf"),
        inputs: str = typer.Option("text,image,both", help="comma-separated: text, image, both"),
        feature_baselines: bool = typer.Option(True, help="also the Tag, Text&Social and Image baselines"),
        scheduler: str = typer.Option(None, help=SCHEDULER_HELP),
        compare: list[str] = typer.Option(None, help="a `heads fit` run folder to add to the tables (repeatable)"),
        seed: int = typer.Option(0)):
    """Model baselines (GaussianNB, KNN, SVC, RandomForest) and feature baselines, test-scored."""
    from baselines.run import run_baselines
    r = run_baselines(store, out, models=[m.strip() for m in models.split(",") if m.strip()],
                      inputs=[i.strip() for i in inputs.split(",") if i.strip()], feature_baselines=feature_baselines,
                      scheduler=scheduler, compare=compare, seed=seed, log=say)
    typer.echo(open(f"{out}/results.md").read())
    say(f"baselines done in {r['seconds']:.1f}s; results in {out}")

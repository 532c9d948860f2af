"""`extract`: sample-data, index, text, finetune-images, images, plan. Parses and calls only."""
from __future__ import annotations

import typer

from cache import schema
from extract.config import FinetuneConfig
from runtime.choices import DatasetFormat, Decoder, Precision
from runtime.console import clean_errors, say, setup_logging
from runtime.errors import UserError
from runtime.options import options_from

app = typer.Typer(help="Stage one: read the release format and extract features into the store.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)

@app.callback()
def main():
    """Stage one."""
    setup_logging()          # once per command line: plain lines on stderr (runtime.console)


@app.command("sample-data")
@clean_errors
def sample_data(out: str = typer.Argument(..., help="folder to write the dataset into"),
                influencers: int = typer.Option(48, help="number of influencers"),
                posts: int = typer.Option(30, help="posts per influencer (some get fewer)"),
                seed: int = typer.Option(0),
                image_size: int = typer.Option(256, help="image side in pixels"),
                clean: bool = typer.Option(False, help="leave out the planted bad inputs"),
                format: DatasetFormat = typer.Option("release", "--format", help="release (the exact release "
                                                     "format) or instaloader (as instaloader writes a crawl)")):
    """Write a synthetic dataset in the release format (or as an instaloader crawl), plus labels/*.csv."""
    if format == DatasetFormat.jsonl:
        raise UserError("--format: sample-data writes release or instaloader")
    if format == DatasetFormat.instaloader:
        from extract.sample_crawl import make_crawl_sample
        counts = make_crawl_sample(out, influencers, posts, seed, image_size=image_size, clean=clean)
    else:
        from extract.sample import make_sample
        counts = make_sample(out, influencers, posts, seed, image_size=image_size, clean=clean)
    say(f"wrote {out}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


@app.command()
@clean_errors
def index(dataset: str = typer.Argument(..., help="dataset root: the release, an instaloader crawl or a posts.jsonl "
                                               "folder (docs/dataset.md)"),
          store: str = typer.Argument(..., help="store path or URL to create"),
          *, max_posts: int = typer.Option(None, help="newest posts kept per influencer (default 300; with --update "
                                        "the store's own)"),
          block: int = typer.Option(schema.DEFAULT_BLOCK, help="rows per block (Zarr shard)"),
          workers: int = typer.Option(None, help="JSON parsing processes (default: all cores)"),
          overwrite: bool = typer.Option(False, help="re-index a store that already holds features"),
          format: DatasetFormat = typer.Option(None, "--format", help="release, instaloader or jsonl (default: "
                                               "the one format found in DATASET)"),
          update: bool = typer.Option(False, "--update", help="re-read a grown crawl into an existing STORE, keeping "
                                      "the features, labels and statuses of every unchanged post"),
          images_by_path: bool = typer.Option(False, "--images-by-path", help="--update of a store indexed before "
                                              "image sizes and times were kept: an unchanged path is an unchanged "
                                              "image")):
    """Index a dataset into a new store (tables, full-size NaN feature arrays, done flags), or with --update
    refresh an existing store from a grown dataset."""
    fmt = format.value if format else None
    if update:
        if overwrite:
            raise UserError("--update keeps the store's features; --overwrite discards them: pass one")
        from extract.update import run_update
        say(run_update(dataset, store, max_posts=max_posts, workers=workers, format=fmt,
                       images_by_path=images_by_path).summary())
        return
    from extract.index import run_index
    report = run_index(dataset, store, max_posts=300 if max_posts is None else max_posts, block=block, workers=workers,
                       overwrite=overwrite,
                       format=fmt)
    say(report.summary())


@app.command()
@clean_errors
def text(store: str = typer.Argument(..., help="store path or URL"),
         *, shard: str = typer.Option(..., help="i/N: this job's share of the blocks"),
         model: str = typer.Option("bert-base-uncased", help="hub name, local folder, or 'random'"),
         max_length: int = typer.Option(128, help="tokens per caption, [CLS] and [SEP] included"),
         batch_tokens: int = typer.Option(None, help="token budget per batch (default 4096 CPU, 65536 GPU)"),
         device: str = typer.Option("auto", help="auto, cpu or cuda"),
         precision: Precision = typer.Option("auto", help="auto: bf16 on GPUs and on CPUs with native bf16"),
         compile: bool = typer.Option(False, "--compile", help="torch.compile the model (off by default until "
                                      "shown to pay on a GPU; README)"),
         workers: int = typer.Option(None, help="processes that read and tokenise blocks ahead (0: one thread; "
                                     "default: half the cores, at most 8, on a GPU; 0 on the CPU)")):
    """BERT [CLS] features of every caption in the shard's blocks, resumable block by block."""
    from extract.text import run_text
    report = run_text(store, shard, model=model, max_length=max_length, batch_tokens=batch_tokens,
                      device=device, precision=precision.value, compile=compile, workers=workers)
    say(f"text {shard}: {report.summary('captions')}")


@app.command("finetune-images")
@clean_errors
@options_from(FinetuneConfig)
def finetune_images(store: str = typer.Argument(..., help="store path or URL (labelled, see `cache labels`)"),
                    out: str = typer.Option(..., help="encoder file to write"),
                    options: dict = None):
    """Train the image encoder on labelled posts (or weakly, on influencers' labels); keep the best epoch on
    validation; write one file. Every other option is a field of extract.config.FinetuneConfig."""
    from extract.finetune import finetune
    finetune(store, out, FinetuneConfig(**options), log=say)


@app.command()
@clean_errors
def images(store: str = typer.Argument(..., help="store path or URL"),
           *, shard: str = typer.Option(..., help="i/N: this job's share of the blocks"),
           encoder: str = typer.Option(..., help="encoder file from `extract finetune-images`"),
           batch_size: int = typer.Option(None, help="images per model call (default 32 CPU, 256 GPU)"),
           workers: int = typer.Option(None, help="decoding processes (default: cores, at most 16; 0 decodes "
                                                  "in this process)"),
           device: str = typer.Option("auto", help="auto, cpu or cuda"),
           precision: Precision = typer.Option("auto", help="auto: bf16 on GPUs, fp32 on CPUs"),
           decoder: Decoder = typer.Option("pil", help="pil (JPEG draft mode in the workers) or nvjpeg "
                                                   "(torchvision.io.decode_jpeg on the device)"),
           exact: bool = typer.Option(False, help="full decode and torchvision's resize, fp32: reference output"),
           dataset: str = typer.Option(None, help="dataset root, if it moved since `extract index`"),
           compile: bool = typer.Option(False, "--compile", help="torch.compile the model (off by default until "
                                        "shown to pay on a GPU; README)")):
    """1024-d image features of every post in the shard's blocks, resumable block by block."""
    from extract.images import run_images
    report = run_images(store, shard, encoder_path=encoder, batch_size=batch_size, workers=workers,
                        device=device, precision=precision.value, decoder=decoder.value, exact=exact, dataset=dataset,
                        compile=compile)
    say(f"images {shard}: {report.summary('images')}")


@app.command()
@clean_errors
def plan(store: str = typer.Argument(..., help="store path or URL, as the jobs will see it"),
         *, shards: int = typer.Option(..., help="number of shard jobs (one per GPU)"),
         out: str = typer.Option("launch", help="folder for the launcher files"),
         stages: str = typer.Option("images,text", help="images and/or text"),
         encoder: str = typer.Option("encoder.pt", help="the image encoder file, as the jobs will see it"),
         model: str = typer.Option("bert-base-uncased", help="the text model, as the jobs will see it"),
         container: str = typer.Option("influencer-profiler:latest", help="container image (Kubernetes)"),
         cpus: int = typer.Option(16, help="CPU cores per job (image decoding workers)"),
         memory: str = typer.Option("64G", help="memory per job"),
         time_limit: str = typer.Option("08:00:00", "--time", help="SLURM time limit per task")):
    """Print the shard commands; write a SLURM job array script and a Kubernetes Indexed Job per stage."""
    from cache.store import open_store
    from extract.plan import PlanSettings, write_plan
    settings = PlanSettings(shards=shards, stages=tuple(x.strip() for x in stages.split(",") if x.strip()),
                            encoder=encoder, model=model, container=container, cpus=cpus, memory=memory,
                            time=time_limit)
    result = write_plan(open_store(store, "r"), store, out, settings)
    for stage, cmds in result["commands"].items():
        pending = result["pending_blocks"][stage]
        typer.echo(f"# {stage}: {sum(pending)} blocks pending over {shards} shards "
                   f"({min(pending)}-{max(pending)} per shard)")
        for c in cmds:
            typer.echo(c)
    say("wrote " + ", ".join(result["files"]) + "; progress of all shards: cache info " + store)

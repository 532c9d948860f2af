"""`python -m extract.cli_main …` runs the `extract` command line (same as the console script)."""
from extract.cli import app

if __name__ == "__main__":
    app()

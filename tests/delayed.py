"""Crash drills' launcher: run a console command with a wait after each committed block injected
into the shard jobs (extract.jobs.after_block), so that the drill can kill it mid-run.

    python tests/delayed.py SECONDS MODULE [ARGS...]     e.g. 0.5 extract.cli_main text STORE --shard 0/1
"""
import runpy
import sys
import time

if __name__ == "__main__":
    seconds, module = float(sys.argv[1]), sys.argv[2]
    import extract.jobs
    extract.jobs.after_block = lambda block: time.sleep(seconds)
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)

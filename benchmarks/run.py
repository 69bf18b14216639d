"""``python benchmarks/run.py ...`` == ``portrait-engine bench ...``."""

import sys

from portrait_engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

"""Entry point for `accelerate launch hftl/run.py recipes/<name>.yaml [dotted.key=value ...]`."""

import os
import sys

# Run as a script, Python puts hftl/ itself on sys.path; put the project root there instead, so
# `import hftl` works from a checkout and no module in hftl/ shadows a library of the same name.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

from hftl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

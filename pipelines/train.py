"""Entry point for `accelerate launch pipelines/train.py ...` / `torchrun pipelines/train.py ...` (same as `maskcd-train`)."""

import sys

from maskcd.cli.train import main

if __name__ == "__main__":
    sys.exit(main())

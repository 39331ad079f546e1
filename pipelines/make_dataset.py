"""Entry point for `python pipelines/make_dataset.py ...` (same as `maskcd-dataset`)."""

import sys

from maskcd.cli.dataset import main

if __name__ == "__main__":
    sys.exit(main())

"""Checkpoints shipped with the package.

``demo/``: a small MaskCD (``maskcd-demo`` preset: tiny Swin, 128² tiles, 1 m GSD, 8-bit RGB) trained on CPU by
``pipelines/train_demo.py`` on synthetic mining-site pairs (:mod:`maskcd.data.synthetic`); ``training.json`` records
the run and the whole-scene F1 on fresh 1024² pairs. Load it with ``maskcd.models.load_model(DEMO_CHECKPOINT)``.
"""

from pathlib import Path

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "demo"

"""Entry point: ``python -m benchmarks.loc [--quick] [--out DIR]`` (the same as
``python benchmarks/localization.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

# the benchmark's modules import their siblings as top-level ``common`` and ``loc``
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localization import main  # noqa: E402

main()

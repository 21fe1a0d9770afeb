"""What ``explain`` does when not told: plain values, no torch, so that the command line can
show them in its help without importing torch.

They were chosen on the demo scenes' validation split by a stated rule
(``benchmarks/results/localization.md``).
"""

from __future__ import annotations

DEFAULT_SCALE: tuple[float, ...] = (1.0, 2.0)
DEFAULT_MAPS = "cells"
DEFAULT_PAD = "features"
DEFAULT_CLAMP = False
#: The box is the largest region above this fraction of the heatmap's range, per map kind.
BOX_FRACTION: dict[str, float] = {"scores": 0.65, "cells": 0.4}

"""Ray Data on a local 2-CPU instance vs the local CLI (images/s, same folder, same records).

Placeholder: the Ray work (issue 9, part 6) fills this section in.
"""

from __future__ import annotations

from .core import Bench


def run(b: Bench) -> None:
    b.section("Ray Data vs the local CLI")
    b.md += ["Not measured yet: this section is filled in with `fcn_cam.distributed.explain_dataset`."]
    b.target("Ray Data on a local 2-CPU instance ≥ 80 % of the local CLI's images/s", "–", None,
             "section not implemented in this run")

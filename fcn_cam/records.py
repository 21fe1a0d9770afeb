"""Committing one explained image: the one writer every executor shares.

The local run (:mod:`fcn_cam.jobs`) and each Ray actor (:mod:`fcn_cam.distributed`) hand
every :class:`~fcn_cam.explanation.Result` to :func:`commit`, which writes it through the
output folder (or, without one, only checks it) and keeps nothing but its record, so
memory stays bounded however many images a run has.
"""

from __future__ import annotations

from .explanation import Result, failure
from .outputs import AlreadyDone, OutputDir, record_of


def commit(out: OutputDir | None, r: Result) -> Result:
    """Write ``r`` through ``out`` (overlays, maps, then its line), or check it (finite)
    when there is no folder; set ``r.record``, ``r.skipped`` (done meanwhile by another
    process) or ``r.error`` (this image only: the disk, non-finite maps, anything), and drop
    the image and its maps."""
    if r.error is None and r.record is None and r.skipped is None:  # (Ray: an actor wrote it)
        try:
            r.record = record_of(out, r.explanation, r.image)
        except AlreadyDone as e:
            r.skipped = str(e)
        except (OSError, ValueError) as e:  # the folder's and the maps' own one-line messages
            r.error = str(e)
        except Exception as e:  # noqa: BLE001 - an unexpected failure stays this image's
            r.error = failure(r.path, e)
    r.image = r.explanation = None
    return r

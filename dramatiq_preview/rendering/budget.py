"""The per-job output byte cap, ``PREVIEW_MAX_OUTPUT_BYTES``, counted before each write.

One :class:`OutputBudget` per render.  It is counted in three places: the render child
(which stops before sending the output that would cross the cap, and stays usable), the
pool (which writes what the child sends and does not trust it to have counted), and
:func:`~dramatiq_preview.rendering.render_in_process`.  Whoever raises
:class:`~dramatiq_preview.errors.OutputTooLarge` has written nothing past the cap; the
caller deletes what it wrote before, so a job over the cap keeps none of its outputs.

This module does not import Wand.
"""

from __future__ import annotations

from ..errors import OutputTooLarge


class OutputBudget:
    """The bytes a job's outputs may still take.

    Parameters:
      limit: ``PREVIEW_MAX_OUTPUT_BYTES``: the most the outputs may take together.
      outputs: How many outputs the job has (for the message).
    """

    def __init__(self, limit: int, outputs: int) -> None:
        self.limit = limit
        self.outputs = outputs
        self.used = 0
        self.counted = 0

    def take(self, size: int) -> None:
        """Count one more output of ``size`` bytes, before it is written or sent.

        Raises:
          OutputTooLarge: the outputs so far and this one would exceed the limit; this one
            is not counted.
        """
        if self.used + size > self.limit:
            raise OutputTooLarge(
                f"the outputs of this job would take more than {self.limit} bytes together "
                f"(PREVIEW_MAX_OUTPUT_BYTES): {self.used + size} bytes with "
                f"{self.counted + 1} of {self.outputs}; none of them is kept"
            )
        self.used += size
        self.counted += 1

"""Plain data types shared by validation, the actor, rendering and the job API."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: File extension of each output format.
EXTENSIONS = {"webp": "webp", "jpeg": "jpg", "png": "png", "avif": "avif"}
#: Content type of each output format.
CONTENT_TYPES = {
    "webp": "image/webp",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "avif": "image/avif",
}
PRIORITIES = ("high", "normal", "low")
FITS = ("contain", "cover", "fill")
DEFAULT_QUALITY = 82


@dataclass(frozen=True)
class OutputSpec:
    """One requested output: the pixel box, the format and how the image fits the box."""

    width: int
    height: int
    format: str
    fit: str = "contain"
    quality: int = DEFAULT_QUALITY

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


@dataclass(frozen=True)
class JobSpec:
    """A validated, normalised job payload."""

    job_id: str
    outputs: tuple[OutputSpec, ...]
    source_path: str | None = None
    source_url: str | None = None
    page: int = 0
    priority: str = "normal"
    metadata: dict[str, str] = field(default_factory=dict)
    #: Compute a :class:`Placeholder` of the first output.
    placeholder: bool = False

    @classmethod
    def from_payload(cls, payload: dict[str, Any], *, job_id: str | None = None) -> JobSpec:
        """Build from a payload that already passed validation, filling in the defaults.

        Parameters:
          payload: the job payload.
          job_id: the job's id (default: the payload's ``jobId``, which must then be there).
        """
        source = payload["source"]
        return cls(
            job_id=payload["jobId"] if job_id is None else job_id,
            source_path=source.get("path"),
            source_url=source.get("url"),
            outputs=tuple(
                OutputSpec(
                    width=o["width"],
                    height=o["height"],
                    format=o["format"],
                    fit=o.get("fit", "contain"),
                    quality=o.get("quality", DEFAULT_QUALITY),
                )
                for o in payload["outputs"]
            ),
            page=payload.get("page", 0),
            priority=payload.get("priority", "normal"),
            metadata=dict(payload.get("metadata", {})),
            placeholder=payload.get("placeholder", False),
        )


@dataclass(frozen=True)
class Placeholder:
    """What a page can paint while the preview loads: a BlurHash of 4x3 components and
    the average colour (``#rrggbb``), both of one output's pixels over white."""

    blurhash: str
    color: str

    def to_dict(self) -> dict[str, str]:
        return {"blurhash": self.blurhash, "color": self.color}


@dataclass(frozen=True)
class RenderedOutput:
    """A file the renderer wrote.  ``path`` is relative to ``PREVIEW_OUTPUT_DIR``."""

    path: str
    width: int
    height: int
    format: str
    bytes: int
    #: The placeholder of this output, when the job asked for one (its first output only).
    #: Not part of :meth:`to_dict`: the job's result carries it beside the outputs.
    placeholder: Placeholder | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "bytes": self.bytes,
        }


class JobResult(dict[str, Any]):
    """The result of a render, ``{"outputs": [...]}`` as recorded in the job's status, with
    ``"placeholder": {"blurhash", "color"}`` when the job asked for one (the key is absent
    otherwise, so results of jobs without it look as they always did).

    ``stats`` carries facts about the render for the metrics (``input_format``,
    ``source_bytes``, ``stages`` in seconds); they are never stored.
    """

    def __init__(
        self,
        outputs: list[dict[str, Any]],
        stats: dict[str, Any],
        placeholder: Placeholder | None = None,
    ) -> None:
        super().__init__(outputs=outputs)
        if placeholder is not None:
            self["placeholder"] = placeholder.to_dict()
        self.stats = stats


def relative_output_path(job_id: str, index: int, output: OutputSpec) -> Path:
    """Where output ``index`` of a job lives, relative to ``PREVIEW_OUTPUT_DIR``."""
    return Path(job_id) / f"{index}.{output.extension}"

"""Reading our payload out of a Dramatiq message (middleware, the dead letters, the actor)."""

from __future__ import annotations

import re
from typing import Any

from .names import ACTOR_NAME

_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def is_preview_message(message: Any) -> bool:
    """Whether ``message`` is a ``render_preview`` message (middleware ignore the others)."""
    return bool(getattr(message, "actor_name", None) == ACTOR_NAME)


def payload_of(message: Any) -> Any:
    """The payload argument (whatever it is; validation decides whether it is usable)."""
    args = message.args
    if len(args) == 1 and not message.kwargs:
        return args[0]
    return {"args": list(args), "kwargs": dict(message.kwargs)}


def job_id_of(message: Any) -> str:
    """The payload's ``jobId``; a message without a usable one is named by its message id."""
    payload = payload_of(message)
    if isinstance(payload, dict):
        job_id = payload.get("jobId")
        if isinstance(job_id, str) and _JOB_ID.fullmatch(job_id):
            return job_id
    return str(message.message_id).replace("-", "")

"""PayloadValidation: the JSON Schema check at both ends of the broker, and the webhook guard
at the sending end."""

from __future__ import annotations

from typing import Any

import dramatiq

from ..config import Settings, get_settings
from ..errors import InvalidPayload, ValidationIssue
from ..messages import is_preview_message, payload_of
from ..names import RECORDED
from ..netguard import check_webhook
from ..validation import validation_issues


class PayloadValidation(dramatiq.Middleware):
    """Validate ``render_preview`` payloads against the JSON Schema.

    ``before_enqueue`` raises :class:`~dramatiq_preview.errors.InvalidPayload` in the caller
    of ``render_preview.send(bad)``, so nothing invalid reaches the broker; that includes a
    ``webhook.url`` the webhook guard refuses (:func:`~dramatiq_preview.netguard.check_webhook`,
    as a submit).  The schema check runs again when a worker receives the message, because
    messages can come from anywhere; a bad one fails permanently (no retry) and is
    dead-lettered.  The webhook guard does not run there: each delivery attempt runs it.

    Parameters:
      settings: the settings of the webhook guard; by default the process-wide ones, read
        at use time.
    """

    def __init__(self, *, settings: Settings | None = None) -> None:
        self._settings = settings

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: Any) -> None:
        # A recorded message was validated when it was submitted (or first sent).
        if is_preview_message(message) and not message.options.get(RECORDED):
            self._check(message)
            check_webhook(payload_of(message), self.settings)

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if is_preview_message(message):
            self._check(message)

    @staticmethod
    def _check(message: Any) -> None:
        if len(message.args) != 1 or message.kwargs:
            raise InvalidPayload(
                [ValidationIssue("", "render_preview takes exactly one argument: the payload")]
            )
        issues = validation_issues(payload_of(message))
        if issues:
            raise InvalidPayload(issues)

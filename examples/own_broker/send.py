"""Send one preview through the host's broker and chain the host's own actor after it.

    python -m examples.own_broker.send [--timeout 120]

Needs the worker of ``examples.own_broker.tasks`` running (README.md next to this file).
Exit status: 0 when the preview succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import uuid

import dramatiq_preview

from .tasks import broker, preview_and_notify


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send one preview through the host's broker.")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait")
    args = parser.parse_args(argv)
    # The actor lives on the host's broker now: no second broker in this process.
    assert dramatiq_preview.render_preview.broker is broker
    job_id = preview_and_notify(
        {
            "jobId": f"own-broker-{uuid.uuid4().hex[:8]}",
            "source": {"path": "picture.webp"},
            "outputs": [{"width": 200, "height": 200, "format": "png"}],
        }
    )
    print(f"sent {job_id} on the host's broker ({broker.namespace})")
    status = dramatiq_preview.wait_for_preview(job_id, timeout=args.timeout)
    print(f"{job_id}: {status['state']}")
    return 0 if status["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())

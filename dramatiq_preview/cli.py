"""The ``dramatiq-preview`` command.

Exit codes: 0 success; 1 the input or the request was refused (invalid payload, unknown
job, conflict; for ``gc``, storage refused the credentials or the permission); 2 the input
file could not be read or the command line is wrong; 3 Redis, the broker or (``gc``) the
output storage is unavailable; 4 the configuration is invalid.

``submit --wait`` and ``status --wait`` follow the job's events until it ends and print its
final status: exit 0 when it succeeded, 3 when it failed or was cancelled, or was not final
within ``--timeout`` (then nothing more is printed on standard output and a line on
standard error says what state it is in).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import redis

from .broker import actor_broker
from .client import (
    cancel_preview,
    default_client,
    get_status,
    submit_preview,
    wait_for_preview,
)
from .config import get_settings
from .dlq import DeadLetters, dead_letters
from .errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidPayload,
    JobConflict,
    JobNotFound,
    StateStoreUnavailable,
    StorageError,
    StorageForbidden,
)
from .health import check_health
from .retention import SweepReport, sweep
from .state import STATES, get_store
from .validation import validation_issues

EXIT_OK, EXIT_REFUSED, EXIT_UNREADABLE, EXIT_UNAVAILABLE, EXIT_CONFIG = 0, 1, 2, 3, 4
#: ``--wait``: the job failed, was cancelled or was not final in time (contract §10).
EXIT_NOT_SUCCEEDED = 3
#: ``--wait`` interrupted (Ctrl-C), as shells report SIGINT.
EXIT_INTERRUPTED = 130

#: The longest ``health --timeout``: a probe that needs longer is a down backend.
MAX_HEALTH_TIMEOUT = 60.0


class _Unreadable(Exception):
    pass


class _NotUtf8(Exception):
    """Readable input that is not UTF-8: invalid JSON (exit 1), not unreadable (exit 2)."""


def _read(path: str, stdin: TextIO) -> str:
    if path == "-":
        try:
            return stdin.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise _Unreadable(f"-: cannot read standard input: {exc}") from None
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise _Unreadable(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _NotUtf8(
            f"{path}: invalid JSON: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _parse(text: str, name: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text, parse_constant=_no_constants), None
    except json.JSONDecodeError as exc:
        return None, f"{name}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    except RecursionError:
        return None, f"{name}: invalid JSON: nested too deeply"
    except (UnicodeEncodeError, ValueError) as exc:
        return None, f"{name}: invalid JSON: {exc}"


def _load(path: str, stdin: TextIO, report: TextIO) -> tuple[Any, bool]:
    """Read and parse a JSON payload; ``(payload, True)``, or ``(None, False)`` after
    printing why it is not JSON.  An unreadable file raises ``_Unreadable``."""
    try:
        text = _read(path, stdin)
    except _NotUtf8 as exc:
        print(str(exc), file=report)
        return None, False
    payload, problem = _parse(text, path)
    if problem:
        print(problem, file=report)
        return None, False
    return payload, True


def _cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    payload, ok = _load(args.file, stdin, out)
    if not ok:
        return EXIT_REFUSED
    issues = validation_issues(payload)
    for issue in issues:
        print(f"{issue.path or '(root)'}: {issue.message}", file=out)
    if issues:
        return EXIT_REFUSED
    print("valid", file=out)
    return EXIT_OK


def _cmd_submit(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    if not _wait_options_fit(args, err):
        return EXIT_UNREADABLE
    payload, ok = _load(args.file, stdin, err)
    if not ok:
        return EXIT_REFUSED
    # An invalid payload is reported by main(), one line per issue (exit 1).
    submission = submit_preview(payload)
    print(submission.job_id, file=out, flush=args.wait)
    if submission.duplicate:
        print(f"duplicate: job {submission.job_id} is {submission.state}", file=err)
    if args.wait:
        return _wait(submission.job_id, args.timeout, out, err)
    return EXIT_OK


def _cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    if not _wait_options_fit(args, err):
        return EXIT_UNREADABLE
    if args.wait:
        return _wait(args.job_id, args.timeout, out, err)
    print(json.dumps(get_status(args.job_id), indent=2), file=out)
    return EXIT_OK


def _wait_options_fit(args: argparse.Namespace, err: TextIO) -> bool:
    if args.timeout is not None and not args.wait:
        print(f"{args.command}: --timeout goes with --wait", file=err)
        return False
    return True


def _wait(job_id: str, timeout: float | None, out: TextIO, err: TextIO) -> int:
    """Print the job's final status once it ends; exit 0 only when it succeeded."""
    try:
        status = wait_for_preview(job_id, timeout)
    except TimeoutError as exc:
        print(str(exc), file=err)
        return EXIT_NOT_SUCCEEDED
    except KeyboardInterrupt:
        print(f"interrupted; job {job_id} goes on", file=err)
        return EXIT_INTERRUPTED
    print(json.dumps(status, indent=2), file=out)
    return EXIT_OK if status["state"] == "succeeded" else EXIT_NOT_SUCCEEDED


def _wait_timeout(text: str) -> float:
    """The ``--timeout`` of ``--wait``: seconds, more than 0.

    Raises:
      argparse.ArgumentTypeError: anything else (argparse exits 2 with the message).
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a finite number of seconds, more than 0")
    return value


def _add_wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait until the job ends and print its final status; exit 0 if it succeeded, "
        "3 otherwise",
    )
    parser.add_argument(
        "--timeout",
        type=_wait_timeout,
        metavar="SECONDS",
        help="with --wait: give up after this long (exit 3); default: no limit",
    )


def _cmd_cancel(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    print(json.dumps(cancel_preview(args.job_id)), file=out)
    return EXIT_OK


def _cmd_jobs(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    for status in default_client().recent_jobs(state=args.state, limit=args.limit):
        if args.json:
            print(json.dumps(status), file=out)
            continue
        error = (status["error"] or {}).get("type", "")
        line = [status["jobId"], status["state"], status["createdAt"] or "-", error]
        print("\t".join(line).rstrip("\t"), file=out)
    return EXIT_OK


def _jobs_limit(text: str) -> int:
    """The ``jobs --limit`` argument: an integer from 1 to 1000."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be from 1 to 1000, not {value}")
    return value


def _dead_letters() -> DeadLetters:
    return dead_letters(actor_broker(), get_store(get_settings()))


def _cmd_dlq(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    dlq = _dead_letters()
    if args.dlq_command == "list":
        for letter in dlq.list():
            print(json.dumps(letter.to_dict()) if args.json else letter.line(), file=out)
        return EXIT_OK
    if args.dlq_command == "requeue":
        if not args.all and not args.job_id:
            print("dlq requeue: give a JOB_ID or --all", file=err)
            return EXIT_UNREADABLE

        def skipped(job_id: str, error: Exception) -> None:
            print(f"{job_id}: not requeued: {error}", file=err)

        replayed = dlq.requeue(None if args.all else args.job_id, on_skip=skipped)
        for job_id in replayed:
            print(job_id, file=out)
        print(f"requeued {len(replayed)} job(s)", file=err)
        return EXIT_OK
    count = dlq.purge()
    print(f"purged {count} dead message(s)", file=out)
    return EXIT_OK


def _health_timeout(text: str) -> float:
    """The ``health --timeout`` argument: seconds, more than 0 and at most 60.

    Raises:
      argparse.ArgumentTypeError: anything else (argparse exits 2 with the message), so a
        mistyped timeout is never reported as "degraded" (1) or "down" (3).
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("must be a finite number of seconds")
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    if value > MAX_HEALTH_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_HEALTH_TIMEOUT:g} seconds")
    return value


def _cmd_health(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    report = check_health(get_settings(), actor_broker(), timeout=args.timeout)
    print(json.dumps(report.body, indent=2), file=out)
    return {"ok": EXIT_OK, "degraded": EXIT_REFUSED}.get(report.status, EXIT_UNAVAILABLE)


def _cmd_gc(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    # An operator asked: sweep now, without the workers' lock (a sweep running elsewhere at
    # the same time only deletes the same orphans twice).
    settings = get_settings()
    report = SweepReport(dry_run=args.dry_run)
    paths: list[str] = []

    def listed(key: str) -> None:
        if args.json:
            paths.append(key)
        else:
            print(key, file=out, flush=True)

    try:
        sweep(
            settings,
            dry_run=args.dry_run,
            on_output=listed if args.dry_run else None,
            report=report,
        )
    except (StorageForbidden, StorageError) as exc:
        refused = isinstance(exc, StorageForbidden)
        what = "refused" if refused else "unavailable"
        print(f"dramatiq-preview gc: output storage {what}: {exc.message}", file=err)
        if report.outputs:
            print(f"{report.summary()} before the error", file=err)
        return EXIT_REFUSED if refused else EXIT_UNAVAILABLE
    if args.json:
        body = report.to_dict()
        if args.dry_run:
            body["paths"] = paths
        print(json.dumps(body), file=out)
    else:
        print(report.summary(), file=out)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dramatiq-preview",
        description="Validate, submit and inspect dramatiq-preview jobs.",
        epilog="Configuration comes from PREVIEW_* environment variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a job payload against the JSON Schema")
    p.add_argument("file", metavar="FILE|-", help="JSON file, or - for standard input")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("submit", help="submit a job payload; prints its jobId")
    p.add_argument("file", metavar="FILE|-", help="JSON file, or - for standard input")
    _add_wait_options(p)
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("status", help="print a job's status as JSON")
    p.add_argument("job_id", metavar="JOB_ID")
    _add_wait_options(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id", metavar="JOB_ID")
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser("health", help="print the health report; exit 0 ok, 1 degraded, 3 down")
    p.add_argument(
        "--timeout",
        type=_health_timeout,
        default=1.0,
        help=f"seconds, more than 0 and at most {MAX_HEALTH_TIMEOUT:g} (default 1)",
    )
    p.set_defaults(func=_cmd_health)

    p = sub.add_parser(
        "jobs", help="the newest jobs, one line each: jobId, state, createdAt, error type"
    )
    p.add_argument("--state", choices=STATES, help="only jobs in this state")
    p.add_argument("--limit", type=_jobs_limit, default=50, help="at most N (default 50)")
    p.add_argument("--json", action="store_true", help="one status object per line")
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser("dlq", help="inspect and replay the dead-letter queue")
    dlq = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    q = dlq.add_parser("list", help="one line per dead job, starting with its jobId")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q = dlq.add_parser("requeue", help="put dead jobs back as queued")
    q.add_argument("job_id", nargs="?", metavar="JOB_ID")
    q.add_argument("--all", action="store_true", help="requeue every dead job")
    dlq.add_parser("purge", help="delete every dead message")
    p.set_defaults(func=_cmd_dlq)

    p = sub.add_parser(
        "gc",
        help="delete the outputs of jobs whose record expired",
        description=(
            "Delete, on disk or in S3, every output under PREVIEW_OUTPUT_DIR whose job record "
            "no longer exists. Workers run the same sweep every PREVIEW_GC_INTERVAL_SECONDS, "
            "one at a time; this command runs at once, whether or not a worker holds the lock."
        ),
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the outputs that would go; remove nothing"
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=_cmd_gc)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Run the command line; returns the exit code."""
    out, err, inp = stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin
    args = build_parser().parse_args(argv)

    try:
        code: int = args.func(args, out, err, inp)
        return code
    except _Unreadable as exc:
        print(str(exc), file=err)
        return EXIT_UNREADABLE
    except ConfigError as exc:
        print(f"dramatiq-preview: configuration error: {exc.message}", file=err)
        return EXIT_CONFIG
    except (JobNotFound, JobConflict) as exc:
        print(exc.message, file=err)
        return EXIT_REFUSED
    except InvalidPayload as exc:
        for issue in exc.issues:
            print(f"{issue.path or '(root)'}: {issue.message}", file=err)
        return EXIT_REFUSED
    except (StateStoreUnavailable, BrokerUnavailable) as exc:
        print(exc.message, file=err)
        return EXIT_UNAVAILABLE
    except Exception as exc:
        if _is_connection_error(exc):
            print(f"unavailable: {type(exc).__name__}: {exc}", file=err)
            return EXIT_UNAVAILABLE
        raise


def _is_connection_error(exc: BaseException) -> bool:
    names = {"AMQPConnectionError", "ConnectionClosed", "StreamLostError"}
    return isinstance(exc, (redis.RedisError, ConnectionError)) or type(exc).__name__ in names


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

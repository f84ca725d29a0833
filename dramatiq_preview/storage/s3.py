"""An S3 bucket (or a prefix of one) as storage, through boto3.

The client reads the standard AWS configuration: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_PROFILE``, the shared
files, and ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` for S3-compatible servers.  Only the
timeouts come from our settings (``PREVIEW_FETCH_CONNECT_TIMEOUT_MS`` and
``PREVIEW_FETCH_READ_TIMEOUT_MS``).

Errors are classified once, here (:func:`classify`): a missing key is "missing"; refused
credentials, a denied permission or a missing bucket are "refused" (permanent, the message
names the bucket and what was refused); 5xx, throttling, timeouts and refused connections
are "transient".

boto3 is the ``s3`` extra: it is imported when the first S3 root is opened, so a web
process or worker with local roots only never needs it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import S3Location
from ..errors import (
    PreviewError,
    SourceForbidden,
    SourceNotFound,
    SourceUnavailable,
    StorageError,
    StorageForbidden,
)
from .base import (
    JOB_ID_RE,
    OUTPUT_CACHE_CONTROL,
    ObjectInfo,
    Storage,
    StoredObject,
    source_key,
    spool,
    too_large,
)

_CHUNK = 1024 * 1024
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
#: S3 error codes of refused credentials, with what to check.
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId": "S3 does not know the access key id: check AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": (
        "the request signature does not match: AWS_SECRET_ACCESS_KEY is not the secret of "
        "AWS_ACCESS_KEY_ID"
    ),
    "InvalidToken": "the session token is malformed: check AWS_SESSION_TOKEN",
    "ExpiredToken": "the session token has expired: renew the credentials",
    "TokenRefreshRequired": "the session token has expired: renew the credentials",
    "RequestTimeTooSkewed": "this host's clock differs too much from S3's: fix the clock",
    "AccountProblem": "the account behind these credentials is disabled",
    "AllAccessDisabled": "all access to this bucket has been disabled",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequests",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
}
_MISSING_CODES = {"NoSuchKey", "NotFound", "404"}
#: Answers about the key itself (too long, a name the server will not take): the job's
#: path is at fault, not the credentials.
_BAD_KEY_CODES = {"KeyTooLongError", "InvalidObjectName", "InvalidRequest", "InvalidArgument"}


def classify(exc: BaseException) -> tuple[str, str]:
    """``("missing" | "bad_key" | "refused" | "transient", why)`` for an exception of
    boto3/botocore."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = str(error.get("Code") or "")
        status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket":
            return "refused", "the bucket does not exist (NoSuchBucket)"
        if code in _MISSING_CODES or (status == 404 and code not in _CREDENTIAL_CODES):
            return "missing", f"no such key ({code or status})"
        if code in _CREDENTIAL_CODES:
            return "refused", f"{_CREDENTIAL_CODES[code]} ({code})"
        if code in _BAD_KEY_CODES:
            return "bad_key", f"S3 does not take this key ({code})"
        if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
            return "transient", f"S3 answered {status} {code}".rstrip()
        if code in ("AccessDenied", "Forbidden") or status in (401, 403):
            if code in ("", "403"):
                # A HEAD answer has no body to say why.
                return "refused", "access denied or credentials refused (403)"
            return "refused", f"access denied ({code})"
        return "refused", f"S3 refused the request ({code or status})"
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return "refused", (
            "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            f"AWS_PROFILE ({name})"
        )
    if name == "NoRegionError":
        return "refused", "no AWS region: set AWS_REGION"
    # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError,
    # IncompleteReadError, ResponseStreamingError, urllib3's protocol errors...
    return "transient", f"S3 did not answer ({name})"


class S3Storage(Storage):
    """Objects under ``s3://bucket/prefix``.

    Parameters:
      location: The bucket and prefix.
      connect_timeout, read_timeout: Seconds, for every request.
    """

    kind = "s3"

    def __init__(self, location: S3Location, *, connect_timeout: float, read_timeout: float):
        self.location = location
        self.bucket = location.bucket
        self._prefix = f"{location.prefix}/" if location.prefix else ""
        self._timeouts = (connect_timeout, read_timeout)
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"S3Storage({str(self.location)!r})"

    # --- the client ---------------------------------------------------------------------

    def client(self, purpose: str = "jobs") -> Any:
        """The boto3 client (``"ping"``: one attempt only, for health checks)."""
        client = self._clients.get(purpose)
        if client is None:
            with self._lock:
                client = self._clients.get(purpose)
                if client is None:
                    client = self._clients[purpose] = self._make_client(purpose)
        return client

    def _make_client(self, purpose: str) -> Any:
        # Optional dependency (the s3 extra), needed only once an S3 root is used.
        try:
            import boto3.session
            import botocore.config
        except ImportError:
            # Permanent: every retry would fail the same way until the host is fixed.
            raise StorageForbidden(
                f"{self.location} needs boto3: pip install 'dramatiq-preview[s3]'"
            ) from None

        options: dict[str, Any] = {
            "connect_timeout": self._timeouts[0],
            "read_timeout": self._timeouts[1],
            "max_pool_connections": 32,
            # SigV4 everywhere, presigned URLs included (SigV2 is deprecated).
            "signature_version": "s3v4",
        }
        if purpose == "ping":
            options["retries"] = {"mode": "standard", "total_max_attempts": 1}
        try:
            session = boto3.session.Session()
            return session.client("s3", config=botocore.config.Config(**options))
        except Exception as exc:
            _, why = classify(exc)
            raise StorageForbidden(f"cannot use {self.location}: {why}") from None

    def key(self, relative: str) -> str:
        """The object key of ``relative`` (a guarded, normalised relative key)."""
        key = self._prefix + relative
        if not key.startswith(self._prefix) or ".." in key.split("/"):
            raise SourceForbidden("the source path leaves PREVIEW_SOURCE_ROOT")
        return key

    def _error(
        self, exc: BaseException, permission: str, *, transient: type[PreviewError] = StorageError
    ) -> PreviewError:
        kind, why = classify(exc)
        if kind == "transient":
            return transient(f"{permission} on bucket {self.bucket!r} failed: {why}")
        return StorageForbidden(f"S3 refused {permission} on bucket {self.bucket!r}: {why}")

    # --- sources ---------------------------------------------------------------------

    def open_source(
        self, relative: str, *, max_bytes: int, spool_dir: Path | None, deadline: float
    ) -> tuple[int, int]:
        normalised = source_key(relative)
        shown = repr(relative[:200])
        if _CONTROL_RE.search(relative):
            raise SourceForbidden("the source path contains control characters")
        if "\\" in relative:
            # Some S3-compatible servers read "\" as "/": "..\x" would be "../x" there.
            raise SourceForbidden("the source path must not contain a backslash")
        if normalised.endswith("/"):
            raise SourceNotFound(f"source {shown} names a directory, not a file")
        key = self.key(normalised)
        with self.timed("get"):
            try:
                response = self.client().get_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                kind, why = classify(exc)
                if kind == "missing":
                    raise SourceNotFound(f"source file {shown} not found") from None
                if kind == "bad_key":
                    raise SourceForbidden(f"source path {shown} refused: {why}") from None
                raise self._error(exc, "s3:GetObject", transient=SourceUnavailable) from None
            body = response["Body"]
            try:
                size = int(response.get("ContentLength") or 0)
                if size > max_bytes:
                    # Found from the answer's headers: nothing of the body is read.
                    raise too_large(max_bytes, declared=size)
                try:
                    fd, total = spool(
                        body.iter_chunks(_CHUNK),
                        max_bytes=max_bytes,
                        spool_dir=spool_dir,
                        deadline=deadline,
                        shown=f"source {shown}",
                    )
                except PreviewError:
                    raise
                except Exception as exc:
                    raise SourceUnavailable(
                        f"source {shown} broke off while downloading ({type(exc).__name__})"
                    ) from None
            finally:
                body.close()
            if total != size:
                os.close(fd)
                raise SourceUnavailable(
                    f"source {shown} broke off while downloading ({total} of {size} bytes)"
                )
            return fd, total

    # --- outputs ---------------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str) -> None:
        # One PutObject is atomic: a reader gets the previous object or this one.
        with self.timed("put"):
            try:
                self.client().put_object(
                    Bucket=self.bucket,
                    Key=self._prefix + key,
                    Body=data,
                    ContentType=content_type,
                    CacheControl=OUTPUT_CACHE_CONTROL,
                )
            except Exception as exc:
                raise self._error(exc, "s3:PutObject") from None

    def delete(self, keys: list[str]) -> None:
        with self.timed("delete"):
            for start in range(0, len(keys), 1000):
                batch = [{"Key": self._prefix + k} for k in keys[start : start + 1000]]
                try:
                    answer = self.client().delete_objects(
                        Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                    )
                except Exception as exc:
                    raise self._error(exc, "s3:DeleteObject") from None
                errors = answer.get("Errors") or []
                if errors:
                    first = errors[0]
                    code = str(first.get("Code") or "")
                    fake = {"Error": {"Code": code}, "ResponseMetadata": {}}
                    raise self._error(_Answer(fake), "s3:DeleteObject")

    def job_keys(self, job_id: str) -> list[str]:
        if not JOB_ID_RE.fullmatch(job_id):
            return []
        keys: list[str] = []
        for page in self._pages(Prefix=f"{self._prefix}{job_id}/"):
            for item in page.get("Contents") or []:
                keys.append(str(item["Key"])[len(self._prefix) :])
        return sorted(keys)

    def job_ids(self) -> Iterator[str]:
        for page in self._pages(Prefix=self._prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes") or []:
                name = str(common["Prefix"])[len(self._prefix) :].rstrip("/")
                if JOB_ID_RE.fullmatch(name):
                    yield name

    def _pages(self, **query: str) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            with self.timed("list"):
                try:
                    page = self.client().list_objects_v2(Bucket=self.bucket, **query, **extra)
                except Exception as exc:
                    raise self._error(exc, "s3:ListBucket") from None
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def head(self, key: str) -> ObjectInfo | None:
        with self.timed("head"):
            try:
                answer = self.client().head_object(Bucket=self.bucket, Key=self._prefix + key)
            except Exception as exc:
                if classify(exc)[0] == "missing":
                    return None
                raise self._error(exc, "s3:GetObject") from None
        return _info(key, answer)

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> StoredObject | None:
        query: dict[str, str] = {"Bucket": self.bucket, "Key": self._prefix + key}
        if byte_range is not None:
            query["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
        with self.timed("get"):
            try:
                answer = self.client().get_object(**query)
            except Exception as exc:
                if classify(exc)[0] == "missing":
                    return None
                raise self._error(exc, "s3:GetObject") from None
        info = _info(key, answer)
        if byte_range is not None:
            total = str(answer.get("ContentRange") or "").rpartition("/")[2]
            if total.isdigit():
                info = ObjectInfo(info.key, int(total), info.etag, info.modified, info.content_type)
        body = answer["Body"]
        return StoredObject(info=info, chunks=_chunks(body), span=byte_range, release=body.close)

    def presigned_url(self, key: str, ttl_seconds: int) -> str | None:
        try:
            url = self.client().generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._prefix + key},
                ExpiresIn=ttl_seconds,
            )
        except Exception as exc:
            raise self._error(exc, "s3:GetObject") from None
        return str(url)

    def prepare(self) -> None:
        self.client("ping")

    def ping(self) -> None:
        # A one-key listing under the prefix, not HeadBucket: it works with a ListBucket
        # permission limited to the prefix, and its error answers have a body that says why.
        with self.timed("ping"):
            try:
                self.client("ping").list_objects_v2(
                    Bucket=self.bucket, Prefix=self._prefix, MaxKeys=1
                )
            except Exception as exc:
                raise self._error(exc, "s3:ListBucket") from None


class _Answer(Exception):
    """An error answer that arrived inside a 200 (``DeleteObjects``' ``Errors``)."""

    def __init__(self, response: dict[str, Any]) -> None:
        super().__init__(response)
        self.response = response


def _info(key: str, answer: dict[str, Any]) -> ObjectInfo:
    etag = answer.get("ETag")
    return ObjectInfo(
        key=key,
        size=int(answer.get("ContentLength") or 0),
        etag=str(etag).strip('"') if etag else None,
        modified=answer.get("LastModified"),
        content_type=answer.get("ContentType"),
    )


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(_CHUNK)
    finally:
        body.close()

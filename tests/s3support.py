"""Helpers shared by the S3 storage tests (tests/test_storage.py, tests/test_s3_end_to_end.py).

Everything here talks to a real S3-compatible server (SeaweedFS, :class:`S3Server`).
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dramatiq_preview.config import S3Location
from dramatiq_preview.storage import S3Storage
from dramatiq_preview.testing import S3Server

#: Long enough for a loaded machine, short enough for a stopped server to fail fast.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 10.0


@contextmanager
def aws_environment(server: S3Server, **overrides: str) -> Iterator[None]:
    """``server``'s ``AWS_*`` variables (with ``overrides``) in this process's environment,
    for as long as the block lasts: boto3 reads them when a storage makes its client."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**server.environment(), **overrides}.items():
            patch.setenv(name, value)
        yield


def s3_storage(bucket: str, prefix: str = "") -> S3Storage:
    """A fresh storage (its own client, made from the environment at first use)."""
    return S3Storage(
        S3Location(bucket=bucket, prefix=prefix),
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
    )


def bucket_keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    """Every key of ``bucket`` that starts with ``prefix``, read with a plain boto3 client."""
    keys: list[str] = []
    for page in (
        server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    ):
        keys += [str(item["Key"]) for item in page.get("Contents") or []]
    return sorted(keys)


def read_object(server: S3Server, bucket: str, key: str) -> tuple[bytes, dict[str, Any]]:
    """The bytes and the answer (ContentType, CacheControl...) of one object."""
    answer = server.client().get_object(Bucket=bucket, Key=key)
    return answer["Body"].read(), answer


def read_fd(fd: int) -> bytes:
    """All the bytes behind an open descriptor (read with ``pread``, from 0)."""
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0)


def files_under(directory: Path) -> list[str]:
    """Every entry below ``directory`` (files and directories), relative, sorted."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def deadline(seconds: float = 30) -> float:
    return time.monotonic() + seconds


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``, scraped from a
    worker's Prometheus exposition on 127.0.0.1:``port`` (OSError until it listens)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    wanted = set(labels.items())
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and wanted <= set(sample.labels.items())
    )

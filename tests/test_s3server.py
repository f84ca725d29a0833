"""The private S3 server the storage tests run against (SeaweedFS ``weed mini``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from dramatiq_preview.testing import S3Server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


def test_objects_keep_their_content_type_and_cache_control(s3: S3Server) -> None:
    # Given a fresh bucket
    bucket = s3.create_bucket()
    client = s3.client()
    # When an object is put with its headers
    client.put_object(
        Bucket=bucket,
        Key="job/0.webp",
        Body=b"RIFF....WEBP",
        ContentType="image/webp",
        CacheControl="public, max-age=3600",
    )
    # Then it reads back with them
    got = client.get_object(Bucket=bucket, Key="job/0.webp")
    assert got["Body"].read() == b"RIFF....WEBP"
    assert (got["ContentType"], got["CacheControl"]) == ("image/webp", "public, max-age=3600")


def test_a_wrong_secret_and_a_missing_key_are_told_apart(s3: S3Server) -> None:
    bucket = s3.create_bucket()
    s3.client().put_object(Bucket=bucket, Key="a", Body=b"x")
    with pytest.raises(ClientError) as wrong:
        s3.client(aws_secret_access_key="not-the-secret").get_object(Bucket=bucket, Key="a")
    assert wrong.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as missing:
        s3.client().get_object(Bucket=bucket, Key="nope")
    assert missing.value.response["Error"]["Code"] == "NoSuchKey"


def test_a_restart_keeps_the_data_on_the_same_port(s3: S3Server) -> None:
    # Given an object
    bucket = s3.create_bucket()
    s3.client().put_object(Bucket=bucket, Key="kept", Body=b"still here")
    # When the server stops, Then a client cannot reach it
    s3.stop()
    with pytest.raises(EndpointConnectionError):
        s3.client(config=_no_retries()).get_object(Bucket=bucket, Key="kept")
    # When it starts again, Then the object is there
    s3.start()
    assert s3.client().get_object(Bucket=bucket, Key="kept")["Body"].read() == b"still here"


def _no_retries() -> object:
    from botocore.config import Config

    return Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1)


def test_a_second_server_starts_while_the_first_ones_credentials_are_set(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given this process's AWS_* pointing at the first server (as a test's worker env does)
    for name, value in s3.environment().items():
        monkeypatch.setenv(name, value)
    # When a second server starts / Then it serves its own identity, not the inherited one
    with S3Server() as other:
        bucket = other.create_bucket()
        other.client().put_object(Bucket=bucket, Key="k", Body=b"v")
        assert other.client().get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"

"""Storage backends against real servers: a local directory and S3 (SeaweedFS), contract §9.

Each behaviour both backends share runs on both (``backend`` parameter): the source key
guard, what a path names, the size limit, atomic overwrites and the per-job listing.  What
only S3 has (content type and Cache-Control of an object, refused credentials, a stopped
server, a missing bucket) runs against S3 alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from s3support import (
    aws_environment,
    bucket_keys,
    deadline,
    files_under,
    read_fd,
    s3_storage,
)

from dramatiq_preview.config import S3Location
from dramatiq_preview.errors import (
    PreviewError,
    SourceForbidden,
    SourceNotFound,
    SourceTooLarge,
    SourceUnavailable,
    StorageError,
    StorageForbidden,
)
from dramatiq_preview.models import JobSpec
from dramatiq_preview.storage import (
    OUTPUT_CACHE_CONTROL,
    LocalStorage,
    Storage,
    classify,
    destinations,
    remove_outputs,
)
from dramatiq_preview.testing import S3Server

BACKENDS = ["local", "s3"]
PNG_A = b"\x89PNG\r\n\x1a\n" + b"a.png" * 100
PNG_B = b"\x89PNG\r\n\x1a\n" + b"a/b.png" * 100
CANARY = b"\x89PNG\r\n\x1a\n" + b"CANARY-must-never-be-read" * 10
BIG_SIZE = 20 * 1024 * 1024
#: Objects beside the source root (``src``): a key guard that leaks reaches one of them.
BESIDE = {"canary.png": CANARY, "src2/x.png": CANARY, "src-x.png": CANARY}
#: Objects inside the source root, by relative key.
INSIDE = {"a.png": PNG_A, "a/b.png": PNG_B, "sub/n.png": PNG_A}


@pytest.fixture(scope="module")
def aws(s3_server: S3Server) -> Iterator[S3Server]:
    """The session S3 server's ``AWS_*`` variables in this process for the whole module."""
    with aws_environment(s3_server):
        yield s3_server


@pytest.fixture(scope="module")
def source_trees(
    aws: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Storage, Any]]:
    """The same layout on disk and in a bucket: a root ``src`` with :data:`INSIDE`, a 20 MB
    ``big.bin``, and :data:`BESIDE` next to the root (a canary any leak would reach)."""
    base = tmp_path_factory.mktemp("storage-sources")
    for name, data in {**BESIDE, **{f"src/{k}": v for k, v in INSIDE.items()}}.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(data)
    with open(base / "src" / "big.bin", "wb") as fh:
        fh.truncate(BIG_SIZE)
    bucket = aws.create_bucket()
    client = aws.client()
    for name, data in {**BESIDE, **{f"src/{k}": v for k, v in INSIDE.items()}}.items():
        client.put_object(Bucket=bucket, Key=name, Body=data)
    client.put_object(Bucket=bucket, Key="src/big.bin", Body=b"\0" * BIG_SIZE)
    return {
        "local": (LocalStorage(base / "src"), base),
        "s3": (s3_storage(bucket, "src"), bucket),
    }


@pytest.fixture(params=BACKENDS)
def sources(request: pytest.FixtureRequest, source_trees: dict[str, Any]) -> Storage:
    storage: Storage = source_trees[request.param][0]
    return storage


def open_bytes(storage: Storage, path: str, spool_dir: Path | None = None) -> bytes:
    fd, size = storage.open_source(
        path, max_bytes=BIG_SIZE, spool_dir=spool_dir, deadline=deadline()
    )
    try:
        data = read_fd(fd)
    finally:
        os.close(fd)
    assert len(data) == size
    return data


# --- the source key guard ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../canary.png",
        "/canary.png",
        "/src/a.png",
        "a/../../x",
        "a/../a.png",
        "sub/../../canary.png",
        "",
        "a\x00.png",
        "a.png\x00",
    ],
)
def test_a_path_that_is_empty_absolute_or_climbs_is_forbidden(
    sources: Storage, path: str, tmp_path: Path
) -> None:
    # Given a source root holding a.png, with a canary beside it
    # When a job names the source by a path that is empty, absolute, has a NUL or a ".."
    with pytest.raises(SourceForbidden) as caught:
        sources.open_source(path, max_bytes=BIG_SIZE, spool_dir=tmp_path, deadline=deadline())
    # Then it is refused as forbidden (permanent), and nothing was spooled
    assert caught.value.type == "source_forbidden" and caught.value.retryable is False
    assert "CANARY" not in caught.value.message
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    "path",
    [
        "../canary.png",
        "./../canary.png",
        "..//canary.png",
        "/../canary.png",
        "//canary.png",
        "../src2/x.png",
        "2/x.png",  # "src" + "2/x.png" if the prefix lost its "/"
        "-x.png",  # "src" + "-x.png" likewise
        "%2e%2e/canary.png",
        "..%2fcanary.png",
        "..\\canary.png",
        "\\..\\canary.png",
        "a/../../canary.png",
        "sub/./../../canary.png",
        "canary.png",
    ],
)
def test_no_path_reads_the_canary_beside_the_root(sources: Storage, path: str) -> None:
    # Given objects beside the root (canary.png, src2/x.png, src-x.png) and none in it by
    # those names
    # When a job names a path that might reach them
    # Then the open fails permanently as the path's fault (forbidden or not found, never
    # a storage refusal): the canary's bytes are never returned
    with pytest.raises(PreviewError) as caught:
        open_bytes(sources, path)
    assert caught.value.retryable is False
    assert caught.value.type in ("source_forbidden", "source_not_found")
    if "\\" in path and sources.kind == "s3":
        # Refused before any request: some servers read "\\" as "/".
        assert "backslash" in caught.value.message


@pytest.mark.parametrize(
    ("path", "expected"),
    [("./a.png", PNG_A), ("a//b.png", PNG_B), ("a/./b.png", PNG_B), ("./sub//n.png", PNG_A)],
)
def test_dot_segments_and_doubled_slashes_name_the_file_as_a_file_system_would(
    sources: Storage, path: str, expected: bytes
) -> None:
    # Given a.png and a/b.png in the root
    # When a path with "." segments or a doubled "/" names them
    # Then it opens the file a file system would (on S3: the normalised key)
    assert open_bytes(sources, path) == expected


@pytest.mark.parametrize("path", ["a.png/", "a.png/.", "a/"])
def test_a_path_ending_in_a_slash_is_not_the_file(sources: Storage, path: str) -> None:
    # Given a.png (and the "directory" a/) in the root
    # When the path ends as a directory's does
    with pytest.raises(SourceNotFound) as caught:
        open_bytes(sources, path)
    # Then it is not found (permanent), and the message names the path given
    assert caught.value.retryable is False
    assert repr(path) in caught.value.message


def test_a_missing_source_is_not_found(sources: Storage) -> None:
    with pytest.raises(SourceNotFound, match=r"nope\.png") as caught:
        open_bytes(sources, "sub/nope.png")
    assert caught.value.retryable is False


def test_a_source_is_spooled_into_an_unlinked_file_in_the_spool_dir(
    source_trees: dict[str, Any], tmp_path: Path
) -> None:
    # Given an S3 source root
    storage: Storage = source_trees["s3"][0]
    # When a source is opened with a spool directory
    fd, size = storage.open_source(
        "a/b.png", max_bytes=BIG_SIZE, spool_dir=tmp_path, deadline=deadline()
    )
    try:
        # Then its bytes are behind the descriptor, in a file of that directory that has
        # no name there (nothing to clean up, even if the worker dies now)
        assert (read_fd(fd), size) == (PNG_B, len(PNG_B))
        where = os.readlink(f"/proc/self/fd/{fd}")
        assert where.startswith(str(tmp_path) + "/") and where.endswith(" (deleted)"), where
        assert files_under(tmp_path) == []
    finally:
        os.close(fd)


def test_a_source_over_the_size_limit_is_refused_before_its_download(
    sources: Storage, tmp_path: Path
) -> None:
    # Given a 20 MB source, and a spool directory that does not exist: writing a single
    # byte of a download would fail there
    spool_dir = tmp_path / "never-created"
    # When it is opened with a limit of 1 byte
    with pytest.raises(SourceTooLarge) as caught:
        sources.open_source("big.bin", max_bytes=1, spool_dir=spool_dir, deadline=deadline())
    # Then it is refused from its declared size (the message gives it), permanently, before
    # anything was downloaded or spooled
    assert caught.value.retryable is False
    assert f"{BIG_SIZE} bytes" in caught.value.message
    assert "PREVIEW_MAX_SOURCE_BYTES" in caught.value.message
    assert not spool_dir.exists()
    # and the storage still serves the next read
    assert open_bytes(sources, "a.png") == PNG_A


# --- outputs -----------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def outputs(
    request: pytest.FixtureRequest, aws: S3Server, tmp_path: Path
) -> tuple[Storage, Storage]:
    """A fresh output root and a sibling root whose name starts with the root's name
    (``out-X`` and ``out-X2``): what is in the sibling is never the root's."""
    if request.param == "local":
        return LocalStorage(tmp_path / "out"), LocalStorage(tmp_path / "out2")
    bucket = aws.create_bucket()
    return s3_storage(bucket, "out"), s3_storage(bucket, "out2")


def test_put_sets_the_content_type_and_cache_control_of_the_object(
    aws: S3Server, tmp_path: Path
) -> None:
    # Given an S3 output root
    bucket = aws.create_bucket()
    storage = s3_storage(bucket, "previews")
    # When an output is stored
    storage.put("job-1/0.webp", b"RIFF....WEBPVP8 ", "image/webp")
    # Then S3 holds it under the prefix, with its image type and our Cache-Control
    assert bucket_keys(aws, bucket) == ["previews/job-1/0.webp"]
    head = aws.client().head_object(Bucket=bucket, Key="previews/job-1/0.webp")
    assert head["ContentType"] == "image/webp"
    assert head["CacheControl"] == OUTPUT_CACHE_CONTROL
    # and reading it back through the storage gives the bytes and the type
    stored = storage.get("job-1/0.webp")
    assert stored is not None
    try:
        assert b"".join(stored.chunks) == b"RIFF....WEBPVP8 "
        assert stored.info.content_type == "image/webp"
        assert stored.info.size == 16
    finally:
        stored.close()


def test_an_overwrite_is_atomic_for_a_concurrent_reader(outputs: tuple[Storage, Storage]) -> None:
    # Given an output and two different payloads of different sizes (over one read chunk)
    storage, _ = outputs
    first, second = b"1" * 1_500_000, b"2" * 2_600_000
    storage.put("job/0.png", first, "image/png")
    seen: list[bytes] = []
    torn: list[tuple[int, bytes]] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                stored = storage.get("job/0.png")
                assert stored is not None, "the object vanished during an overwrite"
                try:
                    data = b"".join(stored.chunks)
                finally:
                    stored.close()
                if data in (first, second):
                    if data not in seen:
                        seen.append(data)
                else:
                    torn.append((len(data), data[:1] + data[-1:]))
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    # When it is overwritten again and again, alternating the payloads, while a reader loops
    try:
        puts, until = 0, deadline(2)
        while not torn and (puts < 30 or time.monotonic() < until):
            storage.put("job/0.png", second if puts % 2 == 0 else first, "image/png")
            puts += 1
    finally:
        done.set()
        thread.join(timeout=60)
    # Then the reader only ever saw one of the two payloads whole, and saw both
    assert failures == []
    assert torn == [], f"{len(torn)} torn reads (size, first+last byte): {torn[:5]}"
    assert len(seen) == 2, "the reader never saw an overwrite: the test proved nothing"


def test_job_listing_and_removal_stay_inside_the_root(outputs: tuple[Storage, Storage]) -> None:
    # Given two jobs' outputs, names that are not job ids, and a sibling root's job
    storage, sibling = outputs
    for key in ("j1/0.webp", "j1/1.png", "j2/0.jpg", "not a job/0.png", "stray.png"):
        storage.put(key, b"x" * 3, "image/png")
    sibling.put("j3/0.png", b"y", "image/png")
    # Then the listing shows the two jobs and their keys, nothing else
    assert sorted(storage.job_ids()) == ["j1", "j2"]
    assert storage.job_keys("j1") == ["j1/0.webp", "j1/1.png"]
    assert storage.job_keys("j") == []  # "j" is not a prefix of "j1/"
    assert storage.job_keys("j3") == []
    # When a job is removed
    assert storage.remove_job("j1") == 2
    # Then its outputs are gone, and only those (SeaweedFS may still list the emptied
    # "j1/" as a common prefix: no listed job but j2 has a key)
    assert storage.job_keys("j1") == [] and storage.get("j1/0.webp") is None
    assert [j for j in sorted(storage.job_ids()) if storage.job_keys(j)] == ["j2"]
    assert storage.job_keys("j2") == ["j2/0.jpg"]
    assert storage.remove_job("j1") == 0
    # and names that are not job ids remove nothing, here or beside the root
    for name in ("..", ".", "", "not a job", "../out2/j3", "j3/..", "*"):
        assert storage.remove_job(name) == 0, name
    assert storage.head("not a job/0.png") is not None
    assert storage.head("stray.png") is not None
    assert sibling.job_keys("j3") == ["j3/0.png"]


def test_removing_a_job_takes_only_what_the_library_wrote(
    outputs: tuple[Storage, Storage],
) -> None:
    # Given a job's outputs beside a file of someone else's under the same name
    storage, _ = outputs
    for key in ("j1/0.webp", "j1/12.jpg", "j1/readme.txt", "j1/0.webp.orig"):
        storage.put(key, b"x", "image/png")
    # When the job is removed (cancelled, or expired)
    removed = storage.remove_job("j1")
    # Then its outputs are gone and the other files stay, with their directory
    assert removed == 2
    assert storage.job_keys("j1") == ["j1/0.webp.orig", "j1/readme.txt"]


def test_removing_outputs_while_s3_is_down_is_logged_not_raised(
    stopped_s3: tuple[S3Server, str], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a job cancelled while S3 does not answer
    server, bucket = stopped_s3
    with aws_environment(server):
        # When its outputs are removed
        removed = remove_outputs(S3Location(bucket, "out"), "j1")
    # Then the cancellation goes on (nothing raised), and the failure is in the log; the
    # retention sweep removes the outputs once the record has expired
    assert removed == 0
    assert any(
        "could not remove the outputs of job j1" in r.getMessage()
        and repr(bucket) in r.getMessage()
        for r in caplog.records
    )


def test_an_empty_root_lists_no_job(outputs: tuple[Storage, Storage]) -> None:
    # Given an output root nothing was written to (on disk: not even created)
    storage, _ = outputs
    # Then it lists no job and removes nothing, without an error
    assert list(storage.job_ids()) == []
    assert storage.job_keys("j1") == []
    assert storage.remove_job("j1") == 0
    assert storage.head("j1/0.png") is None and storage.get("j1/0.png") is None


# --- classify() and the errors of refused or unreachable S3 ----------------------------------


def raw_error(client: Any, bucket: str, key: str = "src/a.png") -> BaseException:
    """The exception boto3 raises for a GetObject with ``client``."""
    try:
        client.get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        return exc
    raise AssertionError("GetObject succeeded")


def test_classify_says_a_missing_key_is_missing(
    aws: S3Server, source_trees: dict[str, Any]
) -> None:
    # Given a GetObject of a key that does not exist
    bucket = source_trees["s3"][1]
    exc = raw_error(aws.client(), bucket, "src/nope.png")
    assert isinstance(exc, ClientError) and exc.response["Error"]["Code"] == "NoSuchKey"
    # Then it is "missing" (a source that is not found), not a refusal
    assert classify(exc)[0] == "missing"


REFUSALS = {
    # case: (AWS_* overrides, bucket or None for the sources' bucket, S3 code, words of why)
    "wrong secret": (
        {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
        None,
        "SignatureDoesNotMatch",
        "AWS_SECRET_ACCESS_KEY",
    ),
    "unknown access key": (
        {"AWS_ACCESS_KEY_ID": "nobody-knows-me"},
        None,
        "InvalidAccessKeyId",
        "AWS_ACCESS_KEY_ID",
    ),
    "missing bucket": ({}, "no-such-bucket-here", "NoSuchBucket", "does not exist"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_credentials_or_a_missing_bucket_are_permanent_and_explained(
    aws: S3Server, source_trees: dict[str, Any], case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides, bucket, code, why = REFUSALS[case]
    bucket = bucket or source_trees["s3"][1]
    # Given a client and a storage made with these credentials or this bucket
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    exc = raw_error(aws.client(**_client_overrides(overrides)), bucket)
    assert isinstance(exc, ClientError) and exc.response["Error"]["Code"] == code
    # Then classify() calls the answer a refusal and says what to check
    kind, reason = classify(exc)
    assert (kind, code in reason, why in reason) == ("refused", True, True), reason
    # and a source read through the storage fails permanently, naming the bucket and why
    with pytest.raises(StorageForbidden) as caught:
        open_bytes(s3_storage(bucket, "src"), "a.png")
    error = caught.value
    assert (error.type, error.retryable) == ("storage_forbidden", False)
    assert repr(bucket) in error.message and why in error.message, error.message


def _client_overrides(env: dict[str, str]) -> dict[str, str]:
    names = {
        "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
        "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    }
    return {names[k]: v for k, v in env.items()}


@pytest.fixture(scope="module")
def stopped_s3() -> Iterator[tuple[S3Server, str]]:
    """A private S3 server with a bucket holding src/a.png, stopped (its port refuses)."""
    server = S3Server().start()
    try:
        bucket = server.create_bucket()
        server.client().put_object(Bucket=bucket, Key="src/a.png", Body=PNG_A)
        server.stop()
        yield server, bucket
    finally:
        server.close()


def test_a_stopped_server_is_transient_for_sources_and_outputs(
    stopped_s3: tuple[S3Server, str],
) -> None:
    server, bucket = stopped_s3
    # Given a storage whose S3 server is stopped
    with aws_environment(server):
        storage = s3_storage(bucket, "src")
        exc = raw_error(server.client(), bucket)
        # Then classify() calls it transient
        assert classify(exc)[0] == "transient", classify(exc)
        # and reading a source or writing an output fails with an error that is retried
        with pytest.raises(SourceUnavailable) as read:
            open_bytes(storage, "a.png")
        with pytest.raises(StorageError) as write:
            storage.put("job/0.png", PNG_A, "image/png")
    assert read.value.retryable and write.value.retryable
    assert read.value.type == "source_unavailable" and write.value.type == "storage_error"
    assert repr(bucket) in read.value.message and repr(bucket) in write.value.message


# --- ping() ------------------------------------------------------------------------------


def test_ping_passes_for_a_reachable_root(outputs: tuple[Storage, Storage]) -> None:
    # Given a usable output root (on disk not created yet) / Then ping() says nothing
    storage, _ = outputs
    storage.ping()


def test_ping_fails_when_the_local_root_is_under_a_file(tmp_path: Path) -> None:
    # Given an output root below a regular file
    (tmp_path / "file").write_text("x")
    # Then ping() raises a transient storage error
    with pytest.raises(StorageError) as caught:
        LocalStorage(tmp_path / "file" / "out").ping()
    assert caught.value.retryable is True


def test_ping_fails_permanently_for_a_missing_bucket(aws: S3Server) -> None:
    # Given an S3 root whose bucket does not exist
    # When it is pinged / Then the refusal is permanent and names the bucket and why
    with pytest.raises(StorageForbidden) as caught:
        s3_storage("no-such-bucket-to-ping", "out").ping()
    assert "'no-such-bucket-to-ping'" in caught.value.message
    assert "does not exist" in caught.value.message


def test_ping_fails_permanently_for_a_wrong_secret(
    aws: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an existing bucket and a wrong secret key
    bucket = aws.create_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    # When it is pinged / Then the refusal is permanent and names the bucket
    with pytest.raises(StorageForbidden) as caught:
        s3_storage(bucket, "out").ping()
    assert repr(bucket) in caught.value.message


def test_ping_fails_transiently_when_the_server_is_stopped(
    stopped_s3: tuple[S3Server, str],
) -> None:
    # Given an S3 root whose server is stopped
    server, bucket = stopped_s3
    # When it is pinged / Then the error is transient and names the bucket
    with aws_environment(server), pytest.raises(StorageError) as caught:
        s3_storage(bucket, "out").ping()
    assert caught.value.retryable is True and repr(bucket) in caught.value.message


def test_the_time_spent_writing_outputs_is_counted_apart_from_the_render(
    stopped_s3: tuple[S3Server, str],
) -> None:
    # Given a job's outputs in an S3 that does not answer
    server, bucket = stopped_s3
    spec = JobSpec.from_payload(
        {"source": {"path": "a.png"}, "outputs": [{"width": 8, "height": 8, "format": "png"}]},
        job_id="slow-s3",
    )
    with aws_environment(server):
        targets = destinations(S3Location(bucket, "out"), spec)
        started = time.monotonic()
        # When a write fails after its retries
        with pytest.raises(StorageError):
            targets.write(0, PNG_A)
        elapsed = time.monotonic() - started
    # Then the time it took is in write_seconds (jobs.run_job leaves it out when it judges
    # whether the render itself overran the time limit: a slow S3 is not a time bomb)
    assert 0 < targets.write_seconds <= elapsed
    assert targets.write_seconds > 0.9 * elapsed

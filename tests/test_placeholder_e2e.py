"""AVIF outputs and placeholders end to end: the HTTP API, a real worker, real files.

A Flask app with the extension (Flask's test client) submits to the session's real
`dramatiq dramatiq_preview` worker over the private Redis; outputs are downloaded through
the API and decoded by Pillow (its AVIF plugin: libavif with dav1d, not the libheif that
wrote them).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import blurhash  # type: ignore[import-untyped]
import imagegen
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from dramatiq_preview.flask import PreviewExtension

pytestmark = pytest.mark.usefixtures("worker")

PREFIX = "/api/preview"
#: As in tests/rendering/test_placeholder.py: per 8-bit sRGB channel.
TOLERANCE = 6


@pytest.fixture(scope="module")
def client() -> FlaskClient:
    app = Flask("placeholder-e2e")
    PreviewExtension(app)
    return app.test_client()


@pytest.fixture(scope="module")
def picture() -> str:
    """A 400x300 gradient PNG in the source root (red across, green down)."""
    from support import SOURCE_ROOT

    pixels = [[(x * 255 // 399, y * 255 // 299, 96, 255) for x in range(400)] for y in range(300)]
    path = SOURCE_ROOT / "e2e-placeholder" / "gradient.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(imagegen.png(pixels, alpha=False))
    return "e2e-placeholder/gradient.png"


def linear_mean(data: bytes) -> tuple[int, ...]:
    """The mean colour of 8-bit RGB samples in linear light, as 8-bit sRGB."""
    count = len(data) // 3
    return tuple(
        blurhash.linear_to_srgb(sum(blurhash.srgb_to_linear(v) for v in data[c::3][:count]) / count)
        for c in range(3)
    )


def near(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(abs(x - y) <= TOLERANCE for x, y in zip(a, b, strict=True))


def submit(client: FlaskClient, payload: dict[str, Any]) -> Any:
    return client.post(f"{PREFIX}/job", json=payload)


def final_status(client: FlaskClient, job_id: str, wait_for: Any) -> dict[str, Any]:
    wait_for(job_id)
    response = client.get(f"{PREFIX}/job/{job_id}/status")
    assert response.status_code == 200
    status: dict[str, Any] = response.json
    return status


def test_a_placeholder_and_an_avif_output_reach_the_status_and_the_download(
    client: FlaskClient, picture: str, job_id: str, wait_for: Any
) -> None:
    # Given a job asking for a placeholder, with an AVIF first output and a WebP second
    payload = {
        "jobId": job_id,
        "source": {"path": picture},
        "outputs": [
            {"width": 200, "height": 200, "format": "avif", "quality": 60},
            {"width": 64, "height": 64, "format": "webp"},
        ],
        "placeholder": True,
    }
    # When it is submitted over HTTP and the worker renders it
    assert submit(client, payload).status_code == 202
    status = final_status(client, job_id, wait_for)
    # Then the status result has the AVIF output and the first output's placeholder
    assert status["state"] == "succeeded", status
    result = status["result"]
    first = result["outputs"][0]
    assert (first["format"], first["width"], first["height"]) == ("avif", 200, 150)
    assert first["path"] == f"{job_id}/0.avif"
    placeholder = result["placeholder"]
    assert set(placeholder) == {"blurhash", "color"}
    assert blurhash.components(placeholder["blurhash"]) == (4, 3)
    assert re.fullmatch(r"#[0-9a-f]{6}", placeholder["color"])
    # And the download is an image/avif that another decoder reads, whose mean colour is
    # the placeholder's colour and the BlurHash's
    with client.get(first["url"]) as download:
        assert download.status_code == 200
        assert download.mimetype == "image/avif"
        data = download.data
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == ("AVIF", (200, 150))
        mean = linear_mean(image.convert("RGB").tobytes())
    color = placeholder["color"]
    assert near(tuple(int(color[i : i + 2], 16) for i in (1, 3, 5)), mean), (color, mean)
    decoded = blurhash.decode(placeholder["blurhash"], 32, 24)
    hashed = linear_mean(bytes(v for row in decoded for pixel in row for v in pixel))
    assert near(hashed, mean), (hashed, mean)


def test_without_placeholder_the_result_has_no_placeholder_key(
    client: FlaskClient, picture: str, job_id: str, wait_for: Any, output_dir: Path
) -> None:
    # Given a job that does not ask for a placeholder
    payload = {
        "jobId": job_id,
        "source": {"path": picture},
        "outputs": [{"width": 32, "height": 32, "format": "avif"}],
    }
    # When it is rendered
    assert submit(client, payload).status_code == 202
    status = final_status(client, job_id, wait_for)
    # Then its result is the outputs alone, as before placeholders existed
    assert status["state"] == "succeeded", status
    assert set(status["result"]) == {"outputs"}
    assert (output_dir / status["result"]["outputs"][0]["path"]).read_bytes()[4:12] == (b"ftypavif")


@pytest.mark.parametrize("value", ["yes", 1, None, {"enabled": True}])
def test_a_placeholder_that_is_not_a_boolean_is_refused(
    client: FlaskClient, picture: str, job_id: str, value: object
) -> None:
    # Given a payload whose placeholder is not true or false
    payload = {
        "jobId": job_id,
        "source": {"path": picture},
        "outputs": [{"width": 32, "height": 32, "format": "png"}],
        "placeholder": value,
    }
    # When it is submitted
    response = submit(client, payload)
    # Then it is a 422 naming the field, and no job exists
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"
    assert response.json["details"] == [{"path": "placeholder", "message": "must be a boolean"}]
    assert client.get(f"{PREFIX}/job/{job_id}/status").status_code == 404


def test_false_and_absent_are_the_same_job_and_true_is_another(
    client: FlaskClient, picture: str, job_id: str
) -> None:
    # Given a job submitted without placeholder
    payload = {
        "jobId": job_id,
        "source": {"path": picture},
        "outputs": [{"width": 16, "height": 16, "format": "png"}],
    }
    assert submit(client, payload).status_code == 202
    # When the same jobId comes with placeholder false, then it is a duplicate
    again = submit(client, {**payload, "placeholder": False})
    assert again.status_code == 200 and again.json["duplicate"] is True
    # When it comes with placeholder true, then it is another job: a conflict
    other = submit(client, {**payload, "placeholder": True})
    assert other.status_code == 409 and other.json["error"] == "conflict"


def test_the_openapi_document_describes_avif_and_the_placeholder(client: FlaskClient) -> None:
    # Given the API's OpenAPI document
    document = client.get(f"{PREFIX}/openapi.json").json
    schemas = document["components"]["schemas"]
    # Then the request takes avif outputs and a boolean placeholder
    request = schemas["JobRequest"]["properties"]
    assert "avif" in request["outputs"]["items"]["properties"]["format"]["enum"]
    assert request["placeholder"] == {**request["placeholder"], "type": "boolean"}
    # And the status result may carry the placeholder, downloads may be image/avif
    result = schemas["Result"]["properties"]
    assert result["placeholder"]["$ref"].endswith("/Placeholder")
    assert set(schemas["Placeholder"]["required"]) == {"blurhash", "color"}
    output = document["paths"]["/job/{jobId}/outputs/{index}"]["get"]["responses"]["200"]
    assert "image/avif" in output["content"]

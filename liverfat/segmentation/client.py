"""A small client of ``liverfat serve`` (standard library only: urllib).

>>> client = SegmentationClient("http://127.0.0.1:8000")            # doctest: +SKIP
>>> mask, readout = client.segment({"water": "w.nii.gz", "fat": "f.nii.gz"})  # doctest: +SKIP
>>> readout["liver_volume_ml"], readout["liver_pdff_pct"]            # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from liverfat.data.io import read_volume, write_volume
from liverfat.errors import LiverfatError, one_line

#: What one image may be: a NIfTI file, a zip of one DICOM series, a DICOM folder, an image.
ImageInput = str | os.PathLike[str] | sitk.Image
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServerError(LiverfatError):
    """The server answered with an error: ``status`` (HTTP) and its one-line ``error``."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(f"server answered {status}: {error}")
        self.status = status
        self.error = error


class SegmentationClient:
    """Talks to one ``liverfat serve`` at ``base_url``; ``timeout`` in seconds per request."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, timeout: float = 600.0) -> None:
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise LiverfatError(f"base_url must be http(s)://HOST:PORT, got {base_url!r}")
        if timeout <= 0:
            raise LiverfatError(f"timeout must be positive, got {timeout} s")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # a proxy from the environment must not carry requests for this machine elsewhere
        handlers = [urllib.request.ProxyHandler({})] if parsed.hostname in LOOPBACK_HOSTS else []
        self._opener = urllib.request.build_opener(*handlers)

    def health(self) -> dict[str, Any]:
        """``GET /health``: status, engine, channels, form fields, queue, in flight."""
        return self._request(urllib.request.Request(f"{self.base_url}/health"))

    def segment(
        self, images: ImageInput | Mapping[str, ImageInput], *, subject_id: str | None = None
    ) -> tuple[sitk.Image, dict[str, Any]]:
        """Segment one subject; return the liver mask (uint8 on the input grid) and the readout.

        ``images`` is one image (field ``file``, for a single-channel engine) or a mapping of
        channel name to image. Each image is a NIfTI file, a zip of one DICOM series, a folder
        holding one DICOM series (zipped here), or a SimpleITK image (sent as NIfTI).

        Raises
        ------
        ServerError
            The server's status and one-line error (400 bad upload, 413 too large, 422 refused
            image, 503 busy: retry later).
        LiverfatError
            The server cannot be reached or its answer cannot be read.
        """
        fields = dict(images) if isinstance(images, Mapping) else {"file": images}
        parts = {name: _encode(value, name) for name, value in fields.items()}
        body, content_type = encode_form(parts, subject_id)
        request = urllib.request.Request(
            f"{self.base_url}/segment",
            data=body,
            headers={"Content-Type": content_type},
            method="POST",
        )
        answer = self._request(request)
        try:
            mask_bytes = base64.b64decode(answer["mask_nii_gz_base64"], validate=True)
            return _decode_mask(mask_bytes), answer["readout"]
        except (KeyError, TypeError, ValueError) as exc:
            raise LiverfatError(f"unexpected answer from {self.base_url}: {one_line(exc)}") from exc

    def _request(self, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ServerError(exc.code, _error_text(exc)) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LiverfatError(f"cannot reach {self.base_url}: {one_line(reason)}") from exc
        except ValueError as exc:
            raise LiverfatError(f"{self.base_url} answered no JSON: {one_line(exc)}") from exc


def _error_text(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        return one_line(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return one_line(raw.decode("utf-8", errors="replace") or exc.reason, limit=300)


def _encode(value: ImageInput, name: str) -> tuple[str, bytes]:
    """(file name, bytes) of one image to upload."""
    if isinstance(value, sitk.Image):
        with tempfile.TemporaryDirectory(prefix="liverfat-client-") as tmp:
            return f"{name}.nii.gz", write_volume(value, Path(tmp) / "image.nii.gz").read_bytes()
    path = Path(value)
    if path.is_dir():
        return f"{path.name or name}.zip", _zip_folder(path)
    if not path.is_file():
        raise LiverfatError(f"{name}: {path} is neither a file nor a folder")
    return path.name, path.read_bytes()


def _zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def encode_form(
    parts: Mapping[str, tuple[str, bytes]], subject_id: str | None = None
) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type: ``parts`` maps each field to (file
    name, bytes); ``subject_id`` is sent as a text field when given."""
    boundary = f"liverfat-{uuid.uuid4().hex}"
    chunks = []
    for name, (filename, data) in parts.items():
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename) or "upload"  # no quotes, no CR/LF
        chunks += [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_token(name)}"; '
            f'filename="{safe}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode(),
            data,
            b"\r\n",
        ]
    if subject_id is not None:
        chunks += [
            f'--{boundary}\r\nContent-Disposition: form-data; name="subject_id"\r\n\r\n'.encode(),
            subject_id.encode("utf-8"),
            b"\r\n",
        ]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _token(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise LiverfatError(f"channel name {name!r}: use letters, digits, '_', '.', '-'")
    return name


def _decode_mask(data: bytes) -> sitk.Image:
    with tempfile.TemporaryDirectory(prefix="liverfat-client-") as tmp:
        path = Path(tmp) / "mask.nii.gz"
        path.write_bytes(data)
        return read_volume(path, allow_empty=True)

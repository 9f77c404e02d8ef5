"""The segmentation engine's inference server: ``liverfat serve --engine DIR`` (FastAPI + uvicorn).

``POST /segment`` takes a multipart form: for a single-channel engine a field ``file`` (or the
channel's own name), for a multi-channel engine one field per channel (``water``, ``fat``), each a
NIfTI file (``.nii``, ``.nii.gz``) or a zip of one DICOM series, plus an optional text field
``subject_id``. The answer is JSON::

    {"subject_id": "...", "readout": {...}, "mask_nii_gz_base64": "..."}

the readout of :meth:`SegmentationEngine.segment` (volume in mL, fat fractions in %) and the
liver mask (uint8, 1 = liver, on the upload's grid) as a gzipped NIfTI file, base64-encoded.
``GET /health`` says which engine is served and how busy it is. Every error is a JSON body
``{"error": "one line"}``: 400 for an unreadable upload or a wrong set of fields, 413 for an
upload over the size limit, 422 for images on different grids or an image the engine refuses,
503 when the queue of segmentations is full, 500 for a bug (logged; the server keeps serving).

Segmentation is CPU- or GPU-bound torch work, so it runs in one worker thread, one at a time,
off the event loop: ``/health`` answers while a segmentation runs. At most ``queue`` requests are
in flight (reading, waiting or segmenting); one more is refused at once with 503.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from liverfat.data.geometry import check_same_geometry
from liverfat.data.io import write_volume
from liverfat.data.uploads import read_upload
from liverfat.errors import GeometryError, ImageError, LiverfatError, one_line
from liverfat.segmentation.asgi import UploadLimit, bind_socket, error_response

LOG = logging.getLogger("liverfat.serve")

#: The form field of a single-channel engine's image (its channel name is accepted too).
SINGLE_FIELD = "file"
#: The optional text field naming the subject in the readout.
SUBJECT_FIELD = "subject_id"
MAX_SUBJECT_ID_CHARS = 200
#: Optional image fields: the engine reads the liver fat fraction (%) from ``fat_fraction``, else
#: from ``water`` and ``fat``; a network channel among them is required instead.
READOUT_FIELDS = ("fat_fraction", "water", "fat")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Segmenter(Protocol):
    """What the server needs of an engine (:class:`SegmentationEngine` has it)."""

    channels_: tuple[str, ...]

    def segment(self, images: Mapping[str, sitk.Image], *, subject_id: str) -> Any: ...


class Refused(LiverfatError):
    """A request the server answers with ``status`` and a one-line error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(one_line(message))
        self.status = status


class SegmentationService:
    """The engine, its single worker thread and the count of requests in flight."""

    def __init__(self, engine: Segmenter, *, name: str, queue: int) -> None:
        self.engine = engine
        self.name = name
        self.channels = tuple(engine.channels_)
        self.queue = queue
        self.in_flight = 0  # only touched on the event loop, so no lock
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="liverfat-segment")

    def fields(self) -> tuple[str, ...]:
        """The form fields that carry images: ``file`` for one channel, else the channels."""
        return (SINGLE_FIELD,) if len(self.channels) == 1 else self.channels

    def field_channels(self) -> dict[str, str]:
        """Required form field -> channel (a single channel's own name is accepted too)."""
        if len(self.channels) == 1:
            return {SINGLE_FIELD: self.channels[0], self.channels[0]: self.channels[0]}
        return {channel: channel for channel in self.channels}

    def optional_fields(self) -> tuple[str, ...]:
        """Images the readout can use besides the network's channels (:data:`READOUT_FIELDS`)."""
        return tuple(f for f in READOUT_FIELDS if f not in self.channels)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "engine": self.name,
            "channels": list(self.channels),
            "fields": list(self.fields()),
            "optional_fields": list(self.optional_fields()),
            "queue": self.queue,
            "in_flight": self.in_flight,
        }

    def run(self, uploads: Mapping[str, UploadFile], subject_id: str) -> dict[str, Any]:
        """Read the uploads, segment, encode the answer (in the worker thread)."""
        with tempfile.TemporaryDirectory(prefix="liverfat-serve-") as tmp:
            images = {
                channel: _read_field(upload, Path(tmp), channel)
                for channel, upload in uploads.items()
            }
            _check_grids(images)
            result = self.engine.segment(images, subject_id=subject_id)
            mask_path = write_volume(result.mask, Path(tmp) / "mask.nii.gz")
            mask = base64.b64encode(mask_path.read_bytes()).decode("ascii")
        readout = result.readout  # a LiverReadout (as_dict) or a plain mapping
        readout = readout.as_dict() if hasattr(readout, "as_dict") else dict(readout)
        return {"subject_id": subject_id, "readout": jsonable(readout), "mask_nii_gz_base64": mask}


def _read_field(upload: UploadFile, tmp: Path, channel: str) -> sitk.Image:
    raw = tmp / f"{channel}.upload"
    upload.file.seek(0)
    with open(raw, "wb") as sink:
        shutil.copyfileobj(upload.file, sink, 2**20)
    return read_upload(raw, tmp, label=channel)  # all zeros is the engine's to judge


def _check_grids(images: Mapping[str, sitk.Image]) -> None:
    names = list(images)
    for name in names[1:]:
        check_same_geometry(images[names[0]], images[name], names=(names[0], name))


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and NaN or infinities as None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def form_uploads(form: FormData, service: SegmentationService) -> tuple[dict[str, UploadFile], str]:
    """The images of a form by channel, and its subject id; :class:`Refused` (400) otherwise."""
    names = service.field_channels()
    optional = service.optional_fields()
    given = [key for key in form if key != SUBJECT_FIELD]
    need = f"this engine needs {' and '.join(repr(f) for f in service.fields())}"
    unknown = sorted(set(given) - set(names) - set(optional))
    if unknown:
        extra = f" (optional: {', '.join(optional)})" if optional else ""
        raise Refused(400, f"unexpected form field(s) {', '.join(unknown)}: {need}{extra}")
    if any(len(form.getlist(key)) > 1 for key in {*given, SUBJECT_FIELD}):
        raise Refused(400, "a form field is given more than once")
    present = [key for key in given if key in names]
    channels = [names[key] for key in present]
    missing = [c for c in service.channels if c not in channels]
    if missing or len(channels) != len(set(channels)):
        raise Refused(400, f"{need}, got {', '.join(map(repr, present)) or 'none'}")
    uploads = {names[key]: form[key] for key in present}
    uploads |= {key: form[key] for key in given if key in optional}
    for channel, value in uploads.items():
        if not isinstance(value, UploadFile):
            raise Refused(400, f"form field for {channel!r} must be a file, not text")
    return uploads, _subject_id(form.get(SUBJECT_FIELD))


def _subject_id(value: object) -> str:
    if value is None:
        return "upload"
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_SUBJECT_ID_CHARS:
        raise Refused(400, f"{SUBJECT_FIELD} must be text of 1 to {MAX_SUBJECT_ID_CHARS} chars")
    return one_line(value)


def status_of(exc: LiverfatError) -> int:
    """The HTTP status of a user error: unreadable upload 400, refused image 422."""
    if isinstance(exc, Refused):
        return exc.status
    if isinstance(exc, GeometryError):
        return 422
    return 400 if isinstance(exc, ImageError) else 422


async def segment_request(request: Request, service: SegmentationService) -> JSONResponse:
    """Admit, parse, segment in the worker thread, answer; errors become one-line JSON."""
    if service.in_flight >= service.queue:
        await _discard_body(request)
        return error_response(
            503,
            f"busy: {service.in_flight} segmentation(s) in flight, the queue holds "
            f"{service.queue}; retry later",
            headers={"Retry-After": "1"},
        )
    service.in_flight += 1
    try:
        return await _segment_admitted(request, service)
    except ClientDisconnect:
        return error_response(400, "the client went away before its upload was complete")
    finally:
        service.in_flight -= 1


async def _segment_admitted(request: Request, service: SegmentationService) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        await _discard_body(request)
        return error_response(400, f"expected multipart/form-data, got {content_type or 'none'}")
    n_fields = len(service.field_channels()) + len(service.optional_fields()) + 1  # + subject_id
    form = await request.form(max_files=n_fields, max_fields=n_fields)  # no unbounded forms
    try:
        uploads, subject_id = form_uploads(form, service)
        loop = asyncio.get_running_loop()
        body = await loop.run_in_executor(service.pool, service.run, uploads, subject_id)
    except LiverfatError as exc:
        return error_response(status_of(exc), str(exc))
    except Exception as exc:  # a bug must cost one request, not the server
        LOG.exception("segmentation failed")
        return error_response(500, f"internal error: {one_line(exc, limit=300)}")
    finally:
        await form.close()
    return JSONResponse(body)


async def _discard_body(request: Request) -> None:
    """Read a refused request's body, so the client can read the answer (bounded by the limit)."""
    with contextlib.suppress(ClientDisconnect):
        async for _ in request.stream():
            pass


def create_app(
    engine: Segmenter, *, name: str = "segmentation", max_upload_bytes: int, queue: int
) -> FastAPI:
    """The FastAPI application serving ``engine`` (any object with ``channels_`` and
    ``segment``); uploads over ``max_upload_bytes`` (bytes) get 413, requests beyond ``queue``
    in flight get 503."""
    check_options(port=0, max_upload_mb=max_upload_bytes / 2**20, queue=queue)
    service = SegmentationService(engine, name=name, queue=queue)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="liverfat segmentation", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_middleware(UploadLimit, max_bytes=max_upload_bytes)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, f"invalid request: {one_line(exc, limit=300)}")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health() | {"max_upload_mb": max_upload_bytes / 2**20}

    @app.post("/segment")
    async def segment(request: Request) -> JSONResponse:
        return await segment_request(request, service)

    return app


def serve(
    engine_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 512.0,
    queue: int = 4,
    log_level: str = "info",
) -> None:
    """Load the engine saved in ``engine_dir`` and serve it until interrupted (SIGINT, SIGTERM).

    ``port`` 0 takes a free port; the address is printed (``listening on http://HOST:PORT``)
    once the socket is bound. ``max_upload_mb`` is the largest request body in MiB.
    """
    from liverfat.segmentation.engine import SegmentationEngine  # create_app takes any Segmenter

    check_options(port=port, max_upload_mb=max_upload_mb, queue=queue)  # before the slow load
    engine = SegmentationEngine.load(engine_dir)
    app = create_app(
        engine,
        name=Path(engine_dir).resolve().name,
        max_upload_bytes=int(max_upload_mb * 2**20),
        queue=queue,
    )
    sock = bind_socket(host, port)
    if host not in LOOPBACK:
        print(
            f"warning: serving on {host}, not loopback: anyone who reaches it can use it "
            "(no authentication)",
            file=sys.stderr,
            flush=True,
        )
    shown = f"[{host}]" if ":" in host else host
    channels = ", ".join(engine.channels_)
    print(f"listening on http://{shown}:{sock.getsockname()[1]} (channels: {channels})", flush=True)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=30)
    uvicorn.Server(config).run(sockets=[sock])


def check_options(*, port: int, max_upload_mb: float, queue: int) -> None:
    """:class:`LiverfatError` for a port outside 0-65535, a limit (MiB) or queue below one."""
    if not 0 <= port <= 65535:
        raise LiverfatError(f"port must be 0 to 65535, got {port}")
    if not max_upload_mb * 2**20 >= 1:  # also refuses NaN
        raise LiverfatError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if queue < 1:
        raise LiverfatError(f"queue must be at least 1, got {queue}")

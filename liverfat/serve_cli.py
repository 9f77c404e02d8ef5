"""``liverfat serve --engine DIR``: the segmentation engine's inference server.

A top-level command, so it lives here rather than in ``liverfat/segmentation/``: importing that
package loads torch, and building ``liverfat``'s parser must not.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve a fitted segmentation engine over HTTP (POST /segment, GET /health)",
        description="Serve a saved segmentation engine: POST /segment takes a multipart form "
        "(NIfTI or a zip of one DICOM series per channel) and answers JSON with the readout and "
        "the liver mask as base64 NIfTI (see docs/segmentation.md).",
    )
    serve.add_argument("--engine", required=True, metavar="DIR", help="saved, fitted engine")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s: loopback)"
    )
    serve.add_argument(
        "--port", type=int, default=8000, help="TCP port, 0 for a free one (default %(default)s)"
    )
    serve.add_argument(
        "--max-upload-mb",
        type=float,
        default=512.0,
        metavar="MB",
        help="largest request body in MiB; larger ones get 413 (default %(default)g)",
    )
    serve.add_argument(
        "--queue",
        type=int,
        default=4,
        metavar="N",
        help="segmentation requests in flight (one runs, the rest wait); more get 503 "
        "(default %(default)s)",
    )
    serve.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from liverfat.segmentation.server import serve

    serve(
        args.engine,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        queue=args.queue,
    )
    return 0

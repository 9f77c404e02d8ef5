"""A zip bomb with false size fields: memory stays bounded, one line naming the subject."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _lying_zip(path: Path, real_bytes: int, declared: int) -> None:
    """A zip whose one member holds ``real_bytes`` zeros but declares ``declared`` bytes."""
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("series/slice.dcm", "w", force_zip64=False) as member,
    ):
        block = bytes(2**20)
        for _ in range(real_bytes // len(block)):
            member.write(block)
    data = bytearray(path.read_bytes())
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, declared)  # uncompressed size, local header
    struct.pack_into("<I", data, central + 24, declared)  # and in the central directory
    path.write_bytes(bytes(data))


def test_a_lying_member_is_stopped_with_bounded_memory(tmp_path):
    bomb = tmp_path / "1000001_20201_2_0.zip"
    _lying_zip(bomb, real_bytes=400 * 2**20, declared=4096)  # 400 MiB of zeros in ~0.4 MiB
    assert bomb.stat().st_size < 2**20
    code = textwrap.dedent(
        f"""
        import json, resource
        from liverfat.data.ukbiobank.zipsafe import read_zip_members
        from liverfat.errors import ImageError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_zip_members({str(bomb)!r}, "1000001_2")
            message = ""
        except ImageError as exc:
            message = str(exc)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"message": message, "peak_mib": (after - before) / 1024}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["message"].startswith("1000001_2: member series/slice.dcm")
    assert "\n" not in result["message"]
    assert result["peak_mib"] < 64, result  # not the 400 MiB the member really holds

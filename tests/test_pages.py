"""Pages of a bundle's weights given back after load (runtime/pages.py): only mappings nobody wrote."""

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseq.runtime.pages import clean_mappings, drop_loaded_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")


def resident_kb(view: mmap.mmap) -> int:
    """The resident kB of the mapping that holds `view` (from /proc/self/smaps)."""
    import ctypes

    address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    found = False
    for line in open("/proc/self/smaps"):
        parts = line.split()
        if "-" in parts[0] and ":" not in parts[0]:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            found = start <= address < end
        elif found and parts[0] == "Rss:":
            return int(parts[1])
    raise AssertionError("mapping not found")


def test_unwritten_mappings_are_dropped_and_read_back_the_same(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, size=4 << 20, dtype=np.uint8)
    (tmp_path / "weights.bin").write_bytes(data.tobytes())
    (tmp_path / "other.bin").write_bytes(data.tobytes())
    with open(tmp_path / "weights.bin", "rb") as f, open(tmp_path / "other.bin", "rb") as g:
        clean = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private, writable: as ONNX Runtime maps
        written = mmap.mmap(g.fileno(), 0, access=mmap.ACCESS_COPY)
    assert bytes(clean[:]) == data.tobytes() and bytes(written[:]) == data.tobytes()  # every page read
    written[100:104] = b"edge"  # this mapping's page is now the only copy of what was written
    assert resident_kb(clean) >= 4000
    ranges = clean_mappings(tmp_path)
    assert len(ranges) == 1  # the written mapping is left alone
    assert drop_loaded_pages(tmp_path) == ranges[0][1] - ranges[0][0]
    assert resident_kb(clean) < 100
    assert bytes(clean[:]) == data.tobytes()  # read back from the file
    assert bytes(written[100:104]) == b"edge" and bytes(written[:100]) == data[:100].tobytes()
    clean.close()
    written.close()


def test_mappings_outside_the_folder_are_not_touched(tmp_path):
    inside, outside = tmp_path / "bundle", tmp_path / "bundle-other"
    inside.mkdir()
    outside.mkdir()
    (outside / "weights.bin").write_bytes(b"x" * (1 << 20))
    with open(outside / "weights.bin", "rb") as f:
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    assert bytes(view[:1]) == b"x"
    assert clean_mappings(inside) == [] and drop_loaded_pages(inside) == 0  # (a sibling whose name it prefixes)
    assert clean_mappings(outside)
    view.close()


def test_smaps_parsing(tmp_path):
    smaps = tmp_path / "smaps"
    smaps.write_text(
        "7f0000000000-7f0000100000 rw-p 00003000 fe:00 12 /b/x/weights.bin\nRss: 1024 kB\nAnonymous: 0 kB\n"
        "7f0000200000-7f0000300000 rw-p 00003000 fe:00 12 /b/x/weights.bin\nRss: 1024 kB\nAnonymous: 4 kB\n"
        "7f0000400000-7f0000500000 rw-s 00003000 fe:00 12 /b/x/weights.bin\nRss: 1024 kB\nAnonymous: 0 kB\n"
        "7f0000600000-7f0000700000 r--p 00000000 fe:00 13 /b/x/with space.bin\nAnonymous: 0 kB\n"
        "7f0000800000-7f0000900000 rw-p 00000000 00:00 0 \nAnonymous: 0 kB\n"
    )
    got = clean_mappings(Path("/b/x"), str(smaps))
    assert got == [(0x7F0000000000, 0x7F0000100000), (0x7F0000600000, 0x7F0000700000)]

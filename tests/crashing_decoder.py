"""Decoders for IsolatedDecoder's worker that fail the way native code can, and the file that stalls libjpeg.

`decode` kills its process on a file named *crash*, never returns on one named *hang* (after
creating PATH.started), and otherwise is the
intake's own `load_image`. `decode_without_scan_limit` is `load_image` without its defence against progressive
JPEGs with absurdly many scans, so that `stalling_jpeg()` stalls it the way it stalls libjpeg.
"""

from __future__ import annotations

import ctypes
import io
import os
import struct
import time

from PIL import Image

from alexnet_viz import images
from alexnet_viz.images import load_image


def decode(path: str) -> Image.Image:
    name = os.path.basename(path)
    if "crash" in name:
        ctypes.string_at(0)  # a read of address 0: SIGSEGV, as a decoder bug would
    if "hang" in name:
        open(path + ".started", "w").close()  # tells the test this worker is busy with it now
        time.sleep(3600)
    return load_image(path)


def decode_without_scan_limit(path: str) -> Image.Image:
    images.MAX_JPEG_SCANS = 1 << 30  # in this worker process only
    return load_image(path)


def pid(path: str) -> int:
    return os.getpid()


def stalling_jpeg(side: int = 6000, repeats: int = 12_000) -> tuple[bytes, int]:
    """A valid grey progressive JPEG of side x side pixels whose first AC scan is repeated `repeats` times, and
    its number of scans. Each repeat is 59 bytes, but libjpeg decodes every scan over the whole image (1.8 ms
    a scan at 6000x6000 here; draft() does not help): the file of issue #11 (22 s for 12,000 repeats).

    Made in 0.2 s: a flat image encodes to one DC scan and a few tiny AC scans, which are then repeated.
    """
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    segments, i = [], 2  # (marker, start, end) after SOI
    while data[i + 1] != 0xD9:
        marker = data[i + 1]
        end = i + 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xDA:  # a scan: its entropy-coded data runs to the next marker that is not 0xFF00
            end = data.index(b"\xff", end)
            while data[end + 1] == 0x00:
                end = data.index(b"\xff", end + 2)
        segments.append((marker, i, end))
        i = end
    scans = [s for s in segments if s[0] == 0xDA]
    _, ac_start, ac_end = scans[1]  # the first AC scan (after the DC scan); its Huffman table precedes it
    return data[:ac_end] + data[ac_start:ac_end] * (repeats - 1) + b"\xff\xd9", 1 + repeats

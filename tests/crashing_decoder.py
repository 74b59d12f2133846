"""A decoder for IsolatedDecoder's worker that fails the way native code can: it kills its process on a file
named *crash*, never returns on one named *hang*, and otherwise is the intake's own `load_image`."""

from __future__ import annotations

import ctypes
import os
import time

from PIL import Image

from alexnet_viz.images import load_image


def decode(path: str) -> Image.Image:
    name = os.path.basename(path)
    if "crash" in name:
        ctypes.string_at(0)  # a read of address 0: SIGSEGV, as a decoder bug would
    if "hang" in name:
        time.sleep(3600)
    return load_image(path)


def pid(path: str) -> int:
    return os.getpid()

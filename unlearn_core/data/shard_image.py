"""The one decoder of a shard row's pixels: ``image_u8`` (raw H*W*3 uint8 bytes) + ``image_hw``."""

from __future__ import annotations

from typing import Any

import numpy as np


def decode_image_u8(raw: Any, hw: Any, where: str = "row") -> np.ndarray | None:
    """``[H, W, 3]`` uint8 view of the raw pixels (no copy), or None for a text-only row.

    A byte count that does not match ``image_hw`` raises a ``ValueError`` naming ``where``.
    """
    if raw is None or hw is None or len(raw) == 0:
        return None
    h, w = int(hw[0]), int(hw[1])
    pixels = np.frombuffer(
        raw if isinstance(raw, bytes | bytearray | memoryview) else bytes(raw), dtype=np.uint8
    )
    if pixels.size != h * w * 3:
        raise ValueError(f"{where}: image_u8 has {pixels.size} bytes, image_hw {[h, w]} needs {h * w * 3}")
    return pixels.reshape(h, w, 3)

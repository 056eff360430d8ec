"""Zero-copy safetensors reading: tensors are views of a private memory map of the file.

A parameter that needs no transform then *is* the file's pages (as HF does), so a load costs about one
copy of the weights. The header is validated so a truncated or corrupt file gives a clear error.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import torch

from hookscope.convert.engine import ConversionError

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsFile:
    """Lazy, memory-mapped access to one ``.safetensors`` file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path} is not a safetensors file (corrupt or truncated?): too short")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ConversionError(f"{path} is corrupt or truncated: header of {n} bytes, file of {size}")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ConversionError(f"{path} is corrupt or truncated: unreadable header ({err})") from None
        header.pop("__metadata__", None)
        self.start = 8 + n
        self.entries = header
        for key, entry in header.items():
            end = entry["data_offsets"][1]
            if self.start + end > size:
                raise ConversionError(
                    f"{path} is corrupt or truncated: tensor {key!r} ends at byte {self.start + end}, "
                    f"the file has {size}"
                )
            if entry["dtype"] not in _DTYPES:
                raise ConversionError(f"{path}: tensor {key!r} has unsupported dtype {entry['dtype']}")
        with open(path, "rb") as f:  # ACCESS_COPY: writable private pages, the file is never modified
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None

    def keys(self) -> list[str]:
        return list(self.entries)

    def get(self, key: str) -> torch.Tensor:
        entry = self.entries[key]
        dtype = _DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        shape = entry["shape"]
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        flat = torch.frombuffer(self._map, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                offset=self.start + begin)
        return flat.view(shape)

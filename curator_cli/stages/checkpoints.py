"""Reading weights from a local file: a torch state dict (``.pth``/``.pt``/``.bin``) or ``.safetensors``.

Built-in stages accept a path wherever they accept a named set of weights, so a machine with no
network can run them from files copied onto it. ``.safetensors`` is read here directly (the format
is a JSON header and raw little-endian tensors), so it needs no extra package.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")

# Common wrappers training scripts put around a state dict.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module")

_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def looks_like_path(value: str) -> bool:
    """True when ``value`` names a weights file rather than a registry name or tag."""
    return value.lower().endswith(WEIGHT_SUFFIXES) or "/" in value or "\\" in value or Path(value).is_file()


def read_safetensors(path: Path) -> dict[str, Any]:
    """Tensors of a ``.safetensors`` file, by name (on the CPU)."""
    import torch

    raw = path.read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{str(path)!r} is not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", raw[:8])
    try:
        header = json.loads(raw[8:8 + header_len])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{str(path)!r} is not a safetensors file (bad header)") from None
    body = memoryview(raw)[8 + header_len:]
    tensors: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype_name = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype_name is None:
            raise ValueError(f"{str(path)!r}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        begin, end = info["data_offsets"]
        dtype = getattr(torch, dtype_name)
        chunk = bytearray(body[begin:end])
        flat = torch.frombuffer(chunk, dtype=dtype) if chunk else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(info["shape"])
    return tensors


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """The state dict in a local weights file, unwrapped from ``{"state_dict": ...}``-style
    containers and with DataParallel's ``module.`` prefix removed; ValueError when unreadable."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} not found")
    if path.suffix.lower() == ".safetensors":
        state: Any = read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(f"cannot read weights file {str(path)!r}: {type(exc).__name__}: {first_line}") from None
    for key in _CONTAINER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"weights file {str(path)!r} does not hold a state dict (name -> tensor)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state

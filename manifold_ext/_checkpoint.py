"""Verified checkpoints: a content hash and the model/run config in a readable header.

One file layout for every checkpoint the library writes (diffusion models and
training state, hierarchical-flow training state)::

    b"manifold_ext checkpoint\\n"      magic line (24 bytes)
    uint64 little-endian              length H of the header
    H bytes of UTF-8 JSON             {"format": 1, "payload_bytes": n, "sha256": ..., "meta": {...}}
    n bytes                           torch.save of the payload (tensors and plain data only)

``sha256`` covers the canonical JSON of ``meta`` and the payload bytes, so a
flipped byte anywhere is caught. ``meta`` holds what the file is (``kind``),
the model's class, constructor config and state-dict signature (key, shape,
dtype of every tensor), the schedule and the run's settings: everything a
caller needs to decide whether the file fits *before* any weight is copied
into a model. Every problem (missing, empty, truncated, foreign or corrupted
file, a field that differs from the caller's) raises one :class:`CheckpointError`
naming the file and what is wrong; on failure neither the file nor the
caller's objects are touched. Files are written atomically (a temporary file
beside the target, then a rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from manifold_ext._atomic import _replace_atomically

MAGIC = b"manifold_ext checkpoint\n"
FORMAT_VERSION = 1
_LENGTH = struct.Struct("<Q")
# Modules whose classes a checkpoint may name for rebuilding a model from its config.
_BUILDABLE_PREFIX = "manifold_ext."


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, corrupted, or does not fit the caller's model or run.

    ``path`` is the file and ``problem`` what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"checkpoint {self.path}: {problem}")


# ---------------------------------------------------------------------------
# Reading and writing the container
# ---------------------------------------------------------------------------


def _canonical(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _digest(meta: dict, payload: bytes) -> str:
    return hashlib.sha256(_canonical(meta) + payload).hexdigest()


def _check_plain(value: Any, where: str) -> None:
    """Payloads hold tensors and plain data only, so that they load with ``torch.load(weights_only=True)``."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.Size)):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint payload: key {key!r} in {where} must be a str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"checkpoint payload: {where} is a {type(value).__name__}; only tensors and plain data "
        "(None, bool, int, float, str, lists, dicts) can be stored (convert it, e.g. with float() or .tolist())"
    )


def write_checkpoint(path: str | os.PathLike, payload: dict, meta: dict) -> Path:
    """Write ``payload`` (tensors and plain data) with the JSON-able ``meta`` and their sha256, atomically."""
    if not isinstance(meta, dict) or "kind" not in meta:
        raise ValueError("write_checkpoint: meta must be a dict with a 'kind' entry")
    _check_plain(payload, "payload")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    try:
        header = json.dumps(
            {"format": FORMAT_VERSION, "payload_bytes": len(body), "sha256": _digest(meta, body), "meta": meta},
            allow_nan=False,
        ).encode()
    except (TypeError, ValueError) as error:
        raise TypeError(f"write_checkpoint: meta must be plain JSON data (no NaN/inf): {error}") from error

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as file:
            file.write(MAGIC + _LENGTH.pack(len(header)) + header + body)
            file.flush()
            os.fsync(file.fileno())

    return _replace_atomically(path, write)


def _parse(path: Path, blob: bytes) -> tuple[dict, bytes]:
    """(header, payload bytes) of a checkpoint file's contents, every structural problem a CheckpointError."""
    if not blob:
        raise CheckpointError(path, "the file is empty (0 bytes)")
    if not blob.startswith(MAGIC):
        if MAGIC.startswith(blob):
            raise CheckpointError(path, f"truncated: only {len(blob)} bytes, inside the magic line")
        hint = (
            " (a zip archive: a plain torch.save file, which carries no content hash or config)"
            if blob.startswith(b"PK\x03\x04")
            else ""
        )
        raise CheckpointError(path, f"not a manifold_ext checkpoint: it starts with {blob[:16]!r}{hint}")
    offset = len(MAGIC) + _LENGTH.size
    if len(blob) < offset:
        raise CheckpointError(path, f"truncated: {len(blob)} bytes, the header length needs {offset}")
    (header_bytes,) = _LENGTH.unpack_from(blob, len(MAGIC))
    if len(blob) < offset + header_bytes:
        raise CheckpointError(
            path,
            f"truncated: the header needs {header_bytes} bytes after byte {offset}, "
            f"the file ends {len(blob) - offset} bytes after it",
        )
    try:
        header = json.loads(blob[offset : offset + header_bytes].decode())
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
        payload_bytes, stored_hash, meta = header["payload_bytes"], header["sha256"], header["meta"]
        version = header["format"]
    except (UnicodeDecodeError, ValueError, KeyError) as error:
        raise CheckpointError(path, f"unreadable header (corrupted?): {error!r}") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(path, f"format version {version!r}; this manifold_ext reads version {FORMAT_VERSION}")
    body = blob[offset + header_bytes :]
    if len(body) < payload_bytes:
        raise CheckpointError(
            path, f"truncated: the header announces {payload_bytes} payload bytes, the file holds {len(body)}"
        )
    if len(body) > payload_bytes:
        raise CheckpointError(
            path, f"{len(body) - payload_bytes} unexpected bytes after the payload ({payload_bytes} announced)"
        )
    computed = _digest(meta, body)
    if computed != stored_hash:
        raise CheckpointError(
            path,
            f"content hash mismatch (stored sha256 {str(stored_hash)[:16]}..., "
            f"computed {computed[:16]}...): the file was modified or corrupted",
        )
    return header, body


def read_header(path: str | os.PathLike) -> dict:
    """The verified header (``meta``, ``sha256``, ``payload_bytes``): the whole file is hashed, nothing unpickled."""
    return _parse(Path(path), _read_bytes(path))[0]


def read_meta(path: str | os.PathLike) -> dict:
    """The verified ``meta`` of a checkpoint (the whole file is hashed; the payload is not unpickled)."""
    return read_header(path)["meta"]


def _read_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file")
    if not path.is_file():
        raise CheckpointError(path, "not a regular file")
    try:
        return path.read_bytes()
    except OSError as error:
        raise CheckpointError(path, f"cannot be read: {error}") from error


def read_checkpoint(path: str | os.PathLike, map_location="cpu", sha256: str | None = None) -> tuple[dict, dict]:
    """(payload, meta) of a verified checkpoint; CheckpointError for any problem with the file.

    ``sha256`` (optional): the content hash the caller expects, e.g. the one a
    driver read before shipping the path to workers; a different file is refused.
    """
    path = Path(path)
    header, body = _parse(path, _read_bytes(path))
    if sha256 is not None and header["sha256"] != sha256:
        raise CheckpointError(
            path,
            f"holds content sha256 {header['sha256'][:16]}..., expected {sha256[:16]}... "
            "(the file differs from the one the caller read: replaced, or another "
            "machine's copy)",
        )
    try:
        payload = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(path, f"the payload could not be loaded: {error}") from error
    if not isinstance(payload, dict):
        raise CheckpointError(path, f"the payload is a {type(payload).__name__}, expected a dict")
    return payload, header["meta"]


# ---------------------------------------------------------------------------
# Comparing what a file holds with what the caller has
# ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` as it reads back from the JSON header (tuples become lists, dataclasses dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value))


def _first_difference(saved: Any, current: Any, where: str) -> tuple[str, Any, Any] | None:
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in [*current, *(key for key in saved if key not in current)]:  # the caller's order first
            if key not in saved or key not in current:
                return f"{where}.{key}", saved.get(key, "(absent)"), current.get(key, "(absent)")
            found = _first_difference(saved[key], current[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(saved, list) and isinstance(current, list):
        if len(saved) != len(current):
            return f"{where} (length)", len(saved), len(current)
        for index, (a, b) in enumerate(zip(saved, current)):
            found = _first_difference(a, b, f"{where}[{index}]")
            if found:
                return found
        return None
    if type(saved) is not type(current) and not (
        isinstance(saved, (int, float))
        and isinstance(current, (int, float))
        and not isinstance(saved, bool)
        and not isinstance(current, bool)
    ):
        return where, saved, current
    return None if saved == current else (where, saved, current)


def require_match(path: str | os.PathLike, saved: dict, current: dict, remedy: str = "") -> None:
    """CheckpointError naming the first field where the file's ``saved`` meta and the caller's ``current`` differ.

    Only the keys of ``current`` are compared (the caller says what must agree).
    """
    for key in current:
        found = _first_difference(_plain(saved.get(key, "(absent)")), _plain(current[key]), key)
        if found:
            field, old, new = found
            raise CheckpointError(
                path,
                f"{field} differs: the file has {old!r}, this call has {new!r}" + (f"; {remedy}" if remedy else ""),
            )


def require_fields_match(
    path: str | os.PathLike, meta: dict, run: dict, section: str, fields: tuple[str, ...], remedy: str = ""
) -> None:
    """``require_match`` on some ``fields`` of one ``section`` only (e.g. a model's class and config, not its
    parameter count): the file's ``meta[section]`` against this call's ``run[section]``."""
    saved = meta.get(section, {})
    require_match(
        path,
        {section: {key: saved.get(key) for key in fields}},
        {section: {key: run[section][key] for key in fields}},
        remedy,
    )


# ---------------------------------------------------------------------------
# Models: what they are, and loading weights only when everything fits
# ---------------------------------------------------------------------------


def model_config(model: nn.Module) -> dict | None:
    """The model's constructor keyword arguments (``model.config``, a dict or dataclass), or None."""
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return dict(config) if isinstance(config, dict) else None


def state_signature(state: dict) -> list[list]:
    """[key, shape, dtype] of every tensor of a state dict: the architecture as the weights see it."""
    return [
        [key, list(value.shape), str(value.dtype).removeprefix("torch.")]
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    ]


def model_record(model: nn.Module, config: dict | None = None) -> dict:
    """What a checkpoint stores about a model: class, constructor config (None if it has none), signature.

    ``config`` overrides ``model.config`` (for a class that does not keep its constructor arguments).
    """
    cls = type(model)
    return {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "config": _plain(config if config is not None else model_config(model)),
        "signature": state_signature(model.state_dict()),
    }


def check_state_dict(path: str | os.PathLike, module: nn.Module, state: dict, what: str = "model") -> None:
    """CheckpointError unless ``state`` has exactly ``module``'s keys with the same shapes and dtypes.

    Run it before ``load_state_dict``: PyTorch's own check copies the matching
    tensors first and raises afterwards, leaving the module half-loaded.
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise CheckpointError(
            path,
            f"{what} weights do not fit this model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}",
        )
    for key, value in expected.items():
        saved = state[key]
        if not isinstance(saved, torch.Tensor) or saved.shape != value.shape or saved.dtype != value.dtype:
            got = f"{list(saved.shape)} {saved.dtype}" if isinstance(saved, torch.Tensor) else type(saved).__name__
            raise CheckpointError(
                path, f"{what} weight '{key}' is {got} in the file, {list(value.shape)} {value.dtype} in this model"
            )


def load_weights(path: str | os.PathLike, module: nn.Module, state: dict, what: str = "model") -> nn.Module:
    """``module.load_state_dict(state)`` after :func:`check_state_dict` (all or nothing)."""
    check_state_dict(path, module, state, what)
    module.load_state_dict(state)
    return module


def build_model(path: str | os.PathLike, record: dict) -> nn.Module:
    """A fresh model of the recorded class from its recorded config (manifold_ext classes only)."""
    target, config = record.get("class", "?"), record.get("config")
    module_name, _, qualname = str(target).partition(":")
    if config is None or not module_name.startswith(_BUILDABLE_PREFIX):
        raise CheckpointError(
            path,
            f"holds a {qualname or target} without a manifold_ext constructor config, "
            f"so it cannot be rebuilt from the file; pass model=<a {qualname} instance> "
            "to load the weights into it",
        )
    try:
        cls = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        return cls(**config)
    except Exception as error:
        raise CheckpointError(path, f"cannot rebuild {target} from its config {config}: {error!r}") from error


def model_from_checkpoint(
    path: str | os.PathLike, payload: dict, meta: dict, model: nn.Module | None = None, state_key: str | None = None
) -> nn.Module:
    """The checkpoint's model with its weights, in eval mode.

    With ``model`` given, the file's class, config and signature must match it
    (checked before anything is copied); otherwise the model is rebuilt from
    the recorded class and config.
    """
    record = meta.get("model")
    if not isinstance(record, dict):
        raise CheckpointError(path, f"holds no model (kind {meta.get('kind')!r})")
    state_key = state_key or record.get("state_key", "model")
    if state_key not in payload:
        raise CheckpointError(path, f"the payload has no '{state_key}' weights")
    if model is None:
        model = build_model(path, record)
    else:
        current = model_record(model)
        compared = {"class": current["class"]}
        if current["config"] is not None:  # a model that knows its config must have the file's
            compared["config"] = current["config"]
        require_match(path, {"model": {key: record.get(key) for key in compared}}, {"model": compared})
    load_weights(path, model, payload[state_key])
    return model.eval()


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    kind: str = "model",
    meta: dict | None = None,
    extra: dict | None = None,
    config: dict | None = None,
) -> Path:
    """Save ``model``'s weights with its class, config and signature (plus ``meta``; ``extra`` in the payload).

    Any module works; one without a ``config`` (constructor keyword arguments,
    from ``model.config`` or the ``config`` argument) is loaded back into an
    instance the caller passes (``load_model(path, model=...)``).
    """
    record = model_record(model, config)
    extra = dict(extra or {})
    if "model" in extra:
        raise ValueError("save_model: 'model' is reserved for the weights; name the extra entry differently")
    return write_checkpoint(
        path, {"model": model.state_dict(), **extra}, {"kind": kind, "model": record, **(meta or {})}
    )


def load_model(
    path: str | os.PathLike, model: nn.Module | None = None, map_location="cpu", kind: str | None = None
) -> tuple[nn.Module, dict, dict]:
    """(model in eval mode, meta, payload) from a checkpoint written by :func:`save_model` or a training run."""
    payload, meta = read_checkpoint(path, map_location=map_location)
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(path, f"holds a {meta.get('kind')!r} checkpoint, expected {kind!r}")
    return model_from_checkpoint(path, payload, meta, model), meta, payload


def tensor_fingerprint(data: torch.Tensor) -> dict:
    """Shape, dtype and sha256 of a tensor's values: tells a resumed run whether its data changed."""
    flat = data.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.sha256(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"").hexdigest()
    return {"shape": list(data.shape), "dtype": str(data.dtype).removeprefix("torch."), "sha256": digest}


__all__ = [
    "CheckpointError",
    "build_model",
    "check_state_dict",
    "load_model",
    "load_weights",
    "model_config",
    "model_from_checkpoint",
    "model_record",
    "read_checkpoint",
    "read_header",
    "read_meta",
    "require_fields_match",
    "require_match",
    "save_model",
    "state_signature",
    "tensor_fingerprint",
    "write_checkpoint",
]

"""One encode/decode pair for callables and one for values (params and results).

A value that JSON represents exactly is stored as JSON text, so GigQ's tools can
read it; anything else picklable is stored as pickle bytes. An encoded value is
the pair `(text, blob)` with exactly one side set (both None means "no value").
"""

from __future__ import annotations

import importlib
import json
import math
import os
import pickle
import struct
import sys
import types
from json.encoder import encode_basestring_ascii
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .errors import SerializationError

Encoded = Tuple[Optional[str], Optional[bytes]]
StoredResult = Tuple[Optional[str], Optional[bytes], Optional[str]]  # text, blob, file path

SPILL_BYTES = 1 << 20  # pickled results this large go to a file
_SPILL_MAGIC = b"gigq_mp-result-1\n"

_JSON_SCALARS = (str, int, bool, type(None))  # by exact type (a tuple: a type need not be hashable)


def _cloudpickle() -> Any:
    """cloudpickle, imported on first use: a worker process whose results are all JSON
    starts without it (unpickling what it pickled imports it as needed)."""
    import cloudpickle

    return cloudpickle


def is_exact_json(value: Any) -> bool:
    """True when json.loads(json.dumps(value)) gives back an equal value of the same types."""
    kind = type(value)
    if kind in _JSON_SCALARS:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        for item in value:  # a loop, and no call for a scalar: most params are a flat dict
            if type(item) not in _JSON_SCALARS and not is_exact_json(item):
                return False
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or (type(item) not in _JSON_SCALARS and not is_exact_json(item)):
                return False
        return True
    return False


def _exact_json_encoder() -> Optional[Callable[[Any, int], Any]]:
    """The C encoder json.dumps builds anew on every call, built once with json.dumps's default
    settings (building it costs twice as much as encoding a small value). No circular-reference
    check: it only encodes what is_exact_json accepted, which walked the whole value. None where
    there is no C encoder, or where it does not write what json.dumps writes."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encoder = make(None, json.JSONEncoder().default, encode_basestring_ascii, None, ": ", ", ", False, False, True)
        probe = {"a": [1, -2.5e-300, None, True, "\u00e9\n\"", 10**30], "b": {}, "c": ""}
        return encoder if "".join(encoder(probe, 0)) == json.dumps(probe) else None
    except (TypeError, ValueError):  # another Python's signature: json.dumps it is
        return None


_EXACT_JSON_ENCODER = _exact_json_encoder()


def dumps_exact(value: Any) -> str:
    """json.dumps(value) for a value is_exact_json accepts, three times faster for a small one."""
    if _EXACT_JSON_ENCODER is None:
        return json.dumps(value)
    return "".join(_EXACT_JSON_ENCODER(value, 0))


def encode_value(value: Any, what: str = "value") -> Encoded:
    """Encode a param dict or a result; SerializationError names the type that failed."""
    if value is None or (type(value) is dict and not value):  # most jobs' params, most results: no need to walk them
        return ("null" if value is None else "{}"), None
    if is_exact_json(value):
        return dumps_exact(value), None
    try:
        return None, _cloudpickle().dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"{what} of type {type(value).__name__} cannot be serialized: {type(exc).__name__}: {exc}"
        ) from exc


def encode_ids(ids: Sequence[str]) -> str:
    """json.dumps of a list of job ids, the same text, at a fraction of its cost per call."""
    if not ids:
        return "[]"
    try:  # encode_basestring_ascii takes only strings: anything else goes to json.dumps
        return "[" + ", ".join(map(encode_basestring_ascii, ids)) + "]"
    except TypeError:
        return json.dumps(list(ids))


def decode_value(text: Optional[str], blob: Optional[bytes], path: Optional[str] = None) -> Any:
    """Inverse of encode_value and encode_result; nothing set decodes to None."""
    if path is not None:
        return load_spilled(path)
    if blob is not None:
        return pickle.loads(blob)
    if text is None:
        return None
    return loads_json(text)


_DECODER = json.JSONDecoder()


def loads_json(text: Any) -> Any:
    """json.loads(text), four times faster for a text as json.dumps writes it (one value, no
    whitespace around it): json.loads costs more in its wrapper than in parsing a small value."""
    if type(text) is str:
        try:
            value, end = _DECODER.raw_decode(text)
        except json.JSONDecodeError:
            return json.loads(text)  # whitespace first, or not JSON: json.loads decides
        if end == len(text):
            return value
    return json.loads(text)


def encode_result(value: Any, spill_path: Optional[str]) -> StoredResult:
    """Encode a job's result; a large pickle is written to `spill_path` (when given)."""
    if is_exact_json(value) or spill_path is None:
        text, blob = encode_value(value, what="result")
        return text, blob, None
    buffers: List[pickle.PickleBuffer] = []
    try:
        head = _cloudpickle().dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise SerializationError(
            f"result of type {type(value).__name__} cannot be serialized: {type(exc).__name__}: {exc}"
        ) from exc
    views = [b.raw() for b in buffers]
    if len(head) + sum(v.nbytes for v in views) < SPILL_BYTES:
        return None, _cloudpickle().dumps(value, protocol=pickle.HIGHEST_PROTOCOL), None
    os.makedirs(os.path.dirname(spill_path), mode=0o700, exist_ok=True)
    partial = spill_path + ".partial"
    with open(partial, "wb") as f:
        f.write(_SPILL_MAGIC + struct.pack("<QI", len(head), len(views)) + head)
        for view in views:
            f.write(struct.pack("<Q", view.nbytes))
            f.write(view)
    os.replace(partial, spill_path)
    return None, None, spill_path


def load_spilled(path: str) -> Any:
    """Read a result written by encode_result; its buffers are read straight into memory."""
    with open(path, "rb") as f:
        if f.read(len(_SPILL_MAGIC)) != _SPILL_MAGIC:
            raise SerializationError(f"{path} is not a gigq_mp result file")
        head_len, count = struct.unpack("<QI", f.read(12))
        head = f.read(head_len)
        buffers = []
        for _ in range(count):
            (size,) = struct.unpack("<Q", f.read(8))
            buffer = bytearray(size)
            if f.readinto(buffer) != size:
                raise SerializationError(f"result file {path} is truncated")
            buffers.append(buffer)
    return pickle.loads(head, buffers=buffers)


def dump_callable(function: Callable) -> Tuple[str, bytes]:
    """Pickle a callable; return (key, bytes) where key is a digest of the bytes.

    A function its module gives back by name is pickled by reference with the standard
    pickle: the same bytes cloudpickle writes for it, without importing cloudpickle
    (9 ms, paid by every process's first submission). Everything else, and functions of
    modules registered with cloudpickle to go by value, goes through cloudpickle.
    """
    try:
        if _by_reference(function):
            blob = pickle.dumps(function, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            blob = _cloudpickle().dumps(function, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"callable {describe_callable(function)} cannot be serialized: {type(exc).__name__}: {exc}"
        ) from exc
    import hashlib  # here, not at the top: worker processes never need it, and it loads OpenSSL

    return hashlib.sha256(blob).hexdigest()[:32], blob


def _by_reference(function: Callable) -> bool:
    """True for a plain function that cloudpickle would pickle by reference: defined at the
    top of (or in a class of) an imported module other than __main__, found there by its
    name, and that module not registered with cloudpickle to be pickled by value."""
    if not isinstance(function, types.FunctionType):
        return False
    module_name = function.__module__
    module = sys.modules.get(module_name) if module_name and module_name != "__main__" else None
    if module is None:
        return False
    target: Any = module
    for part in function.__qualname__.split("."):
        target = getattr(target, part, None)
    if target is not function:
        return False  # a closure, a lambda, or a name now bound to something else
    cloudpickle = sys.modules.get("cloudpickle")  # not loaded: nothing can be registered with it
    if cloudpickle is not None:
        by_value = cloudpickle.list_registry_pickle_by_value()
        name = module.__name__  # as cloudpickle checks it (an alias in sys.modules may differ)
        if any(name == registered or name.startswith(registered + ".") for registered in by_value):
            return False
    return True


def load_callable(blob: Optional[bytes], module: str, name: str) -> Callable:
    """Unpickle a stored callable, or import it by module and name (GigQ's layout)."""
    if blob is not None:
        return pickle.loads(blob)
    target: Any = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    return target


def describe_callable(function: Callable) -> str:
    """`module.qualname` of a callable, for messages and GigQ's columns."""
    module = getattr(function, "__module__", None) or "?"
    name = getattr(function, "__qualname__", None) or type(function).__name__
    return f"{module}.{name}"

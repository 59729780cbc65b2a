"""One encode/decode pair for callables and one for values (params and results).

A value that JSON represents exactly is stored as JSON text, so GigQ's tools can
read it; anything else picklable is stored as pickle bytes. An encoded value is
the pair `(text, blob)` with exactly one side set (both None means "no value").
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import pickle
from typing import Any, Callable, Optional, Tuple

import cloudpickle

from .errors import SerializationError

Encoded = Tuple[Optional[str], Optional[bytes]]

_JSON_SCALARS = (str, int, bool, type(None))


def is_exact_json(value: Any) -> bool:
    """True when json.loads(json.dumps(value)) gives back an equal value of the same types."""
    kind = type(value)
    if kind in _JSON_SCALARS:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(is_exact_json(item) for item in value)
    if kind is dict:
        return all(type(key) is str and is_exact_json(item) for key, item in value.items())
    return False


def encode_value(value: Any, what: str = "value") -> Encoded:
    """Encode a param dict or a result; SerializationError names the type that failed."""
    if is_exact_json(value):
        return json.dumps(value), None
    try:
        return None, cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"{what} of type {type(value).__name__} cannot be serialized: {type(exc).__name__}: {exc}"
        ) from exc


def decode_value(text: Optional[str], blob: Optional[bytes]) -> Any:
    """Inverse of encode_value; (None, None) decodes to None."""
    if blob is not None:
        return pickle.loads(blob)
    if text is None:
        return None
    return json.loads(text)


def dump_callable(function: Callable) -> Tuple[str, bytes]:
    """Cloudpickle a callable; return (key, bytes) where key is a digest of the bytes."""
    try:
        blob = cloudpickle.dumps(function, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"callable {describe_callable(function)} cannot be serialized: {type(exc).__name__}: {exc}"
        ) from exc
    return hashlib.sha256(blob).hexdigest()[:32], blob


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

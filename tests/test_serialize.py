"""Values stored as JSON text, pickle bytes or a spilled file decode to what was encoded."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest

from gigq_mp import serialize
from gigq_mp.serialize import decode_value, dumps_exact, encode_ids, encode_result, encode_value, loads_json
from gigq_mp.tracking import decode_ids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEXTS = [
    "1", " 1", "1 ", "\n[1, 2]\t", "NaN", "-Infinity", "1e400", "123456789012345678901234567890", '"s"',
    '{"a": [1, 2], "b": null}', "[]", "true", b"3", b'{"x": 1}', "1, 2", "", "[1", "tru", '"open', "1 2",
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("text", TEXTS)
def test_loads_json_gives_what_json_loads_gives_or_the_same_error(text):
    try:
        expected = json.loads(text)
    except json.JSONDecodeError:
        with pytest.raises(json.JSONDecodeError):
            loads_json(text)
        return
    assert repr(loads_json(text)) == repr(expected)  # repr: NaN equals itself there


@pytest.mark.timeout(30)
def test_values_of_every_kind_decode_to_what_was_encoded(tmp_path):
    values = [1, "two", None, {"three": [3.5, True]}, {1, 2}, b"\x00bytes", [], bytearray(2_000_000)]
    stored = [encode_result(v, str(tmp_path / f"{i}.pickle")) for i, v in enumerate(values)]
    for kind in range(3):  # some of each: JSON text, pickle bytes, a spilled file
        assert any(s[kind] is not None for s in stored)
    assert [decode_value(*s) for s in stored] == values
    assert decode_value(None, None, None) is None


class _EqualityMeta(type):
    def __eq__(cls, other):  # and so no __hash__: the class cannot go in a set
        return cls is other


class _Unhashable(metaclass=_EqualityMeta):
    def __eq__(self, other):
        return isinstance(other, _Unhashable)


@pytest.mark.timeout(30)
def test_a_value_whose_class_cannot_be_hashed_gets_the_error_that_names_its_type():
    """Not JSON (the check must not hash its class), and cloudpickle cannot take it either."""
    from gigq_mp.errors import SerializationError

    with pytest.raises(SerializationError, match="result of type dict cannot be serialized"):
        encode_result({"a": [_Unhashable()], "b": 1}, None)


@pytest.mark.timeout(30)
def test_lists_of_job_ids_encode_as_json_dumps_does_and_decode_back():
    class Id(str):
        pass

    lists = [[], ["a"], ['quote"d', "back\\slash", "é-ünïcode", "tab\there"], ["x", "y", "z"], [Id("sub"), "str"],
             [7, "mixed"], ["mixed", 7, None]]
    for ids in lists:
        assert encode_ids(ids) == json.dumps(ids)
    for ids in lists[:4]:
        assert decode_ids(encode_ids(ids)) == ids
    assert decode_ids(None) == [] and decode_ids(" [\"a\"] ") == ["a"]


EXACT = [
    0, -1, 10**40, 1.5, -0.0, 1e308, 5e-324, "", "é\u2028\x00\"\\", True, False, None, [], {}, [1, [2, [3, []]]],
    {"i": 5}, {"a": {"b": [1.0, None, "x"]}, "é": "ü", "": 0},
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("built_once", [True, False])
def test_exact_json_values_are_written_as_json_dumps_writes_them(monkeypatch, built_once):
    if not built_once:  # a Python without the C encoder: json.dumps itself
        monkeypatch.setattr(serialize, "_EXACT_JSON_ENCODER", None)
    for value in EXACT:
        assert dumps_exact(value) == json.dumps(value)
        assert encode_value(value) == (json.dumps(value), None)
        assert loads_json(dumps_exact(value)) == value


@pytest.mark.timeout(30)
def test_resume_keys_are_the_documented_hash_so_a_new_version_finds_old_rows():
    """A workflow run again after an upgrade must find the rows of its earlier run: the key is
    sha256(callable key, params text (or pickle), then b"\\0" + each parent's key), 40 hex digits,
    numbered from the second identical job on."""
    import hashlib

    from gigq_mp import Job
    from gigq_mp.resume import callable_key, job_keys

    a = Job("a", json.dumps, params={"obj": 1})
    b = Job("b", json.dumps, params={"obj": 1})  # identical to a
    c = Job("c", json.loads, params={"s": "[]"}, dependencies=[a.id, "from-outside"])
    keys = job_keys([a, b, c])

    def expected(function, params, parents=()):
        data = callable_key(function).encode() + params.encode() + b"".join(b"\0" + p.encode() for p in parents)
        return hashlib.sha256(data).hexdigest()[:40]

    assert keys[a.id] == expected(json.dumps, '{"obj": 1}')
    assert keys[b.id] == keys[a.id] + "#2"
    assert keys[c.id] == expected(json.loads, '{"s": "[]"}', [keys[a.id], "from-outside"])


@pytest.mark.timeout(60)
def test_a_module_function_is_pickled_as_cloudpickle_would_without_importing_it():
    """By reference, with the same bytes (so function keys and resume keys do not change);
    a fresh interpreter, so that no earlier test has imported cloudpickle already."""
    code = (
        "import sys, pickle\n"
        "from gigq_mp.serialize import dump_callable\n"
        "from tests import jobs\n"
        "key, blob = dump_callable(jobs.add)\n"
        "assert 'cloudpickle' not in sys.modules, 'cloudpickle was imported'\n"
        "assert pickle.loads(blob) is jobs.add\n"
        "import cloudpickle\n"
        "assert blob == cloudpickle.dumps(jobs.add, protocol=pickle.HIGHEST_PROTOCOL)\n"
        "assert dump_callable(jobs.add) == (key, blob)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=50)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.timeout(30)
def test_closures_lambdas_and_modules_registered_by_value_still_go_through_cloudpickle():
    import cloudpickle

    from tests import jobs

    def closure():
        return 41 + 1

    for function in (closure, lambda: 42):
        _, blob = serialize.dump_callable(function)
        assert pickle.loads(blob)() == 42
    by_reference = pickle.dumps(jobs.add, protocol=pickle.HIGHEST_PROTOCOL)
    cloudpickle.register_pickle_by_value(jobs)
    try:
        _, blob = serialize.dump_callable(jobs.add)
    finally:
        cloudpickle.unregister_pickle_by_value(jobs)
    assert blob != by_reference  # the function itself, not its name
    assert pickle.loads(blob)(2, 3) == jobs.add(2, 3)
    assert serialize.dump_callable(jobs.add)[1] == by_reference

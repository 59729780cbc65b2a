"""The supervisor's cache of small parent results: pure bookkeeping, no processes."""

import pytest

from gigq_mp.resultcache import ENTRY_OVERHEAD, ResultCache

E = ENTRY_OVERHEAD

pytestmark = pytest.mark.timeout(10)


def test_a_result_serves_each_waiting_child_once():
    cache = ResultCache(max_bytes=100 + 2 * E, max_item_bytes=40)
    cache.put("p", ("1", None, None), children=2)
    assert [cache.take("p"), cache.take("p"), cache.take("p")] == [("1", None, None), ("1", None, None), None]
    assert (len(cache), cache.size) == (0, 0)


def test_only_small_results_held_in_memory_are_kept():
    cache = ResultCache(max_bytes=100 + 2 * E, max_item_bytes=40)
    cache.put("big", ("x" * 41, None, None), children=1)
    cache.put("file", (None, None, "/results/f"), children=1)
    cache.put("nobody", ("1", None, None), children=0)
    assert (len(cache), cache.size) == (0, 0)


def test_when_full_the_oldest_results_go_first():
    cache = ResultCache(max_bytes=100 + 2 * E, max_item_bytes=40)
    for i in range(3):
        cache.put(f"b{i}", (None, b"y" * 40, None), children=1)
    assert (len(cache), cache.size) == (2, 80 + 2 * E)
    assert cache.take("b0") is None  # the oldest made room
    assert cache.take("b2") == (None, b"y" * 40, None)


def test_a_result_put_again_replaces_the_first_and_clear_forgets_all():
    cache = ResultCache(max_bytes=100 + 2 * E, max_item_bytes=40)
    cache.put("p", ("old", None, None), children=1)
    cache.put("p", ("new!", None, None), children=1)
    assert cache.size == 4 + E
    assert cache.take("p") == ("new!", None, None)
    cache.put("q", ("1", None, None), children=3)
    cache.clear()
    assert (len(cache), cache.size, cache.take("q")) == (0, 0, None)


def test_many_tiny_results_are_bounded_by_their_entries():
    cache = ResultCache(max_bytes=10 * E, max_item_bytes=40)
    for i in range(100):
        cache.put(f"t{i}", ("1", None, None), children=1)
    assert len(cache) == 9  # 9 * (E + 1) bytes fit in 10 * E, a tenth would not


def test_take_many_takes_once_per_mention_and_frees_what_is_used_up():
    cache = ResultCache(max_bytes=100 + 4 * E, max_item_bytes=40)
    cache.put("a", ("1", None, None), children=2)
    cache.put("b", (None, b"xy", None), children=1)
    # two claims need "a" (it is named twice), one needs "b"; "gone" was never kept
    assert cache.take_many(["a", "b", "gone", "a"]) == {"a": ("1", None, None), "b": (None, b"xy", None)}
    assert (len(cache), cache.size) == (0, 0)
    cache.put("c", ("12", None, None), children=3)
    assert cache.take_many(["c"]) == {"c": ("12", None, None)}
    assert (len(cache), cache.size) == (1, 2 + E)  # two claims left


def test_parent_results_are_packed_only_when_every_one_is_kept_json_text():
    from gigq_mp.messages import PackedResults
    from gigq_mp.supervisor import PACK_MIN_PARENTS, _parent_results

    many = [f"m{i}" for i in range(PACK_MIN_PARENTS)]
    kept = {"p1": ("[1, 2]", None, None), "p2": ('"x"', None, None), "p3": (None, b"pickle", None)}
    kept.update((m, (str(i), None, None)) for i, m in enumerate(many))
    stored = {"p4": ("4", None, None)}
    texts = ",".join(str(i) for i in range(2, PACK_MIN_PARENTS))
    assert _parent_results(["p2", "p1", *many[2:]], kept, stored) == PackedResults(
        ("p2", "p1", *many[2:]), f'["x",[1, 2],{texts}]'
    )
    # fewer parents, a pickled result, or one read from the database: a tuple per parent, in order
    assert _parent_results(many[:2], kept, stored) == (("m0", "0", None, None), ("m1", "1", None, None))
    assert _parent_results(["p3", *many[1:]], kept, stored)[:2] == (("p3", None, b"pickle", None), ("m1", "1", None, None))
    assert _parent_results([*many[1:], "p4", "p5"], kept, stored)[-3:] == (
        (many[-1], str(PACK_MIN_PARENTS - 1), None, None), ("p4", "4", None, None), ("p5", None, None, None),
    )

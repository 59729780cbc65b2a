"""The pure scheduler: readiness, priority order and retry delays, without processes or a clock."""

import pytest

from gigq_mp.scheduler import Scheduler, order_key

pytestmark = pytest.mark.timeout(10)


def key(priority, seq):
    return order_key(priority, "2026-01-01T00:00:00", seq)


def test_ready_jobs_come_out_by_priority_then_age():
    s = Scheduler()
    s.add("low-old", key(0, 1), [])
    s.add("high", key(5, 2), [])
    s.add("low-new", key(0, 3), [])
    assert s.pop_ready(now=0.0, limit=10) == ["high", "low-old", "low-new"]
    assert s.pop_ready(now=0.0, limit=10) == []


def test_a_job_waits_for_every_parent_and_then_competes_by_priority():
    s = Scheduler()
    s.add("a", key(0, 1), [])
    s.add("b", key(0, 2), [])
    s.add("child", key(9, 3), ["a", "b"])
    s.add("plain", key(1, 4), [])
    assert s.pop_ready(0.0, 1) == ["plain"]  # child is not ready yet despite its priority
    assert s.pop_ready(0.0, 2) == ["a", "b"]
    s.parent_completed("a")
    assert s.pop_ready(0.0, 5) == []
    s.parent_completed("b")
    assert s.pop_ready(0.0, 5) == ["child"]


def test_limit_is_respected_and_the_rest_stay_ready():
    s = Scheduler()
    for i in range(5):
        s.add(f"j{i}", key(0, i), [])
    assert s.pop_ready(0.0, 2) == ["j0", "j1"]
    assert s.ready_count(0.0) == 3
    assert s.pop_ready(0.0, 10) == ["j2", "j3", "j4"]


def test_retry_is_not_ready_before_its_delay():
    s = Scheduler()
    s.add("j", key(0, 1), [])
    assert s.pop_ready(0.0, 1) == ["j"]
    s.retry("j", eligible_at=10.0)
    assert s.pop_ready(9.9, 1) == []
    assert s.next_eligible_at() == 10.0
    assert s.pop_ready(10.0, 1) == ["j"]


def test_discarded_jobs_never_come_out():
    s = Scheduler()
    s.add("a", key(0, 1), [])
    s.add("b", key(0, 2), ["x"])
    s.discard("a")
    s.discard("b")
    s.parent_completed("x")
    assert s.pop_ready(0.0, 10) == []
    assert len(s) == 0


def test_external_parents_are_reported():
    s = Scheduler()
    s.add("a", key(0, 1), [])
    s.add("b", key(0, 2), ["a", "elsewhere"])
    assert s.external_parents() == {"elsewhere"}


def test_a_job_discarded_and_added_again_still_waits_for_every_parent():
    s = Scheduler()
    s.add("child", key(0, 3), ["a", "b"])
    s.discard("child")  # e.g. cancelled by a cascade, later revived by requeue_job
    s.add("child", key(0, 3), ["a", "b"])
    s.parent_completed("a")
    assert s.pop_ready(0.0, 5) == []  # a stale entry from the first add must not count twice
    s.parent_completed("b")
    assert s.pop_ready(0.0, 5) == ["child"]


def test_ties_in_priority_go_to_the_older_created_at_then_submission_order():
    s = Scheduler()
    s.add("newer", order_key(0, "2026-01-02T00:00:00", 1), [])
    s.add("older", order_key(0, "2026-01-01T00:00:00", 2), [])
    s.add("older-later-row", order_key(0, "2026-01-01T00:00:00", 3), [])
    assert s.pop_ready(0.0, 5) == ["older", "older-later-row", "newer"]


def test_parent_completed_counts_the_children_that_waited():
    s = Scheduler()
    s.add("p", key(0, 0), [])
    s.add("c1", key(0, 1), ["p"])
    s.add("c2", key(0, 2), ["p", "q"])
    s.add("gone", key(0, 3), ["p"])
    s.discard("gone")
    assert s.parent_completed("p") == 2
    assert s.parent_completed("p") == 0



def test_a_capped_pop_ends_at_the_first_job_whose_kind_does_not_fit():
    s = Scheduler()
    for i in range(4):
        s.add(f"quick{i}", key(1, i), [], kind="quick")
    s.add("slow0", key(0, 10), [], kind="slow")
    s.add("quick-after", key(0, 11), [], kind="quick")
    s.add("slow1", key(0, 12), [], kind="slow")
    asked = []

    def cap(kind):
        asked.append(kind)
        return {"quick": 100, "slow": 2}[kind]

    # four quick jobs are already more than a batch with a slow job may hold: it waits, and
    # so does the quick job behind it (the order holds)
    assert s.pop_ready(0.0, 10, cap) == ["quick0", "quick1", "quick2", "quick3"]
    assert asked == ["quick", "slow"]  # asked once per kind and call
    assert s.ready_count(0.0) == 3
    # a batch that starts with the slow job holds two jobs
    assert s.pop_ready(0.0, 10, cap) == ["slow0", "quick-after"]
    assert s.pop_ready(0.0, 10, cap) == ["slow1"]
    assert s.pop_ready(0.0, 10, cap) == []


def test_a_cap_of_zero_takes_nothing_and_loses_nothing():
    s = Scheduler()
    s.add("slow", key(0, 1), [], kind="slow")
    assert s.pop_ready(0.0, 10, lambda kind: 0) == []
    assert s.state("slow") == "ready"
    assert s.pop_ready(0.0, 10) == ["slow"]


def test_jobs_taken_before_a_cap_raises_are_ready_again():
    s = Scheduler()
    s.add("a", key(0, 1), [], kind="ok")
    s.add("b", key(0, 2), [], kind="boom")

    def cap(kind):
        if kind == "boom":
            raise KeyboardInterrupt
        return 10

    with pytest.raises(KeyboardInterrupt):
        s.pop_ready(0.0, 10, cap)
    assert s.state("a") == "ready" and s.state("b") == "ready"
    assert s.ready_count(0.0) == 2
    assert s.pop_ready(0.0, 10) == ["a", "b"]

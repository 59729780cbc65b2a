"""@task: its forms, its options, what it refuses and what it accepts."""

from __future__ import annotations

import re

import pytest

from gigq_mp import Job, JobQueue, Workflow, task

VALID_OPTIONS = ("name", "priority", "max_attempts", "timeout", "description", "retry_delay")


def double(x):
    return x * 2


def test_bare_decorator_keeps_function_callable_with_defaults():
    @task
    def triple(x):
        """Multiply by three."""
        return x * 3

    assert triple(4) == 12
    assert triple.__name__ == "triple"
    assert triple.__doc__ == "Multiply by three."
    job = triple.to_job(x=5)
    assert isinstance(job, Job)
    assert job.name == "triple"
    assert job.params == {"x": 5}
    assert job.priority == 0
    assert job.max_attempts == 3
    assert job.timeout == 300
    assert job.description == ""
    assert job.retry_delay == 0
    assert job.dependencies == []


def test_empty_parentheses_form():
    @task()
    def inc(x):
        return x + 1

    assert inc(1) == 2
    assert inc.to_job(x=1).name == "inc"


def test_options_reach_the_job():
    @task(name="custom", priority=5, max_attempts=2, timeout=10, description="d", retry_delay=1)
    def f(x):
        return x

    job = f.to_job(x=1)
    assert (job.name, job.priority, job.max_attempts, job.timeout, job.description, job.retry_delay) == (
        "custom", 5, 2, 10, "d", 1,
    )
    # Each to_job() is a new job with its own id.
    assert f.to_job(x=1).id != job.id


def test_extension_options_are_accepted():
    @task(retry_backoff=True, max_memory_mb=256)
    def f():
        return 1

    job = f.to_job()
    assert job.retry_backoff is True
    assert job.max_memory_mb == 256


def test_unknown_option_is_a_type_error_listing_valid_options():
    with pytest.raises(TypeError) as excinfo:
        @task(bogus=1, priority=2)
        def f():
            return 1

    message = str(excinfo.value)
    assert "bogus" in message
    for option in VALID_OPTIONS:
        assert option in message, f"{option!r} missing from {message!r}"


def test_async_function_refused():
    with pytest.raises(TypeError, match=r"(?i)async|coroutine"):
        @task
        async def f():
            return 1


def test_generator_function_refused():
    with pytest.raises(TypeError, match=r"(?i)generator"):
        @task()
        def f():
            yield 1


def test_non_callable_refused():
    with pytest.raises(TypeError, match=r"(?i)callable"):
        task(42)
    with pytest.raises(TypeError, match=r"(?i)callable"):
        task()("not a function")


def test_double_task_refused():
    @task
    def f():
        return 1

    with pytest.raises(TypeError, match=r"(?i)twice|already|more than once"):
        task(f)
    with pytest.raises(TypeError, match=r"(?i)twice|already|more than once"):
        task(priority=3)(f)


def test_repr_shows_name_and_options():
    @task(name="renamed", priority=7, timeout=42, max_attempts=4)
    def original():
        return 1

    text = repr(original)
    assert "renamed" in text
    assert re.search(r"priority\W{1,3}7\b", text), text
    assert re.search(r"timeout\W{1,3}42\b", text), text
    assert re.search(r"max_attempts\W{1,3}4\b", text), text


def test_lambda_closure_and_nested_function_accepted():
    lam = task(lambda x: x + 1)
    assert lam(1) == 2
    assert lam.to_job(x=1).params == {"x": 1}

    factor = 10

    @task
    def scaled(x):
        return x * factor

    assert scaled(2) == 20

    def outer():
        @task(name="inner")
        def inner():
            return "in"

        return inner

    inner = outer()
    assert inner() == "in"
    assert inner.to_job().name == "inner"


def test_task_on_module_level_function():
    t = task(double)
    assert t(21) == 42
    assert t.to_job(x=1).name == "double"


def test_submit_returns_id_and_stores_params(db_path):
    @task(name="adder", priority=3)
    def adder(a, b):
        return a + b

    queue = JobQueue(db_path)
    job_id = adder.submit(queue, a=1, b=2)
    assert isinstance(job_id, str)
    status = queue.get_status(job_id)
    assert status["exists"] is True
    assert status["name"] == "adder"
    assert status["params"] == {"a": 1, "b": 2}
    assert status["priority"] == 3
    assert status["status"] == "pending"
    queue.close()


def test_submit_queue_is_positional_only(db_path):
    """A job parameter may itself be called 'queue'."""

    @task
    def uses_queue(queue):
        return queue

    q = JobQueue(db_path)
    job_id = uses_queue.submit(q, queue="name-of-a-queue")
    assert q.get_status(job_id)["params"] == {"queue": "name-of-a-queue"}
    q.close()


def test_add_task_refuses_plain_function():
    wf = Workflow("wf")
    with pytest.raises(TypeError):
        wf.add_task(double, params={"x": 1})
    assert wf.jobs == []


def test_add_task_builds_jobs_with_dependencies():
    @task(priority=2)
    def f(x=0):
        return x

    wf = Workflow("wf")
    a = wf.add_task(f, params={"x": 1})
    b = wf.add_task(f, params={"x": 2}, depends_on=[a], pass_parent_results=False)
    assert isinstance(a, Job) and isinstance(b, Job)
    assert b.dependencies == [a.id]
    assert b.params == {"x": 2}
    assert b.priority == 2
    assert b.pass_parent_results is False
    assert a.pass_parent_results is None
    assert wf.job_map == {a.id: a, b.id: b}

"""A small pipeline for `gigq-mp run` (see examples/Makefile).

Run it twice: the second run reuses every job. Edit `clean` or change SIZE and
run again: only that job and the ones downstream of it run.
"""

from gigq_mp import Workflow, task

SIZE = 200_000


@task()
def generate(seed, size):
    numbers, x = [], seed
    for _ in range(size):
        x = (1103515245 * x + 12345) % 2**31
        numbers.append(x % 1000)
    return numbers


@task()
def clean(parent_results):
    (numbers,) = parent_results.values()
    return [n for n in numbers if n % 7]


@task()
def summarize(parent_results):
    values = [v for part in parent_results.values() for v in part]
    return {"count": len(values), "mean": sum(values) / len(values)}


pipeline = Workflow("numbers")
parts = [
    pipeline.add_task(clean, depends_on=[pipeline.add_task(generate, params={"seed": seed, "size": SIZE})])
    for seed in range(4)
]
pipeline.add_task(summarize, depends_on=parts)

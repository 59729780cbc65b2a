"""Every SQL statement of gigq_mp but the schema's (schema.py): one method per operation.

The tables `jobs` and `job_executions` keep GigQ 0.5's columns, so GigQ's tools
read our databases and GigQ's databases open here; the columns we add are
appended in place. Callables are stored once per distinct pickle in
`functions`; `job_dependencies` holds the DAG's edges for descendant queries.
Only the supervisor changes job state after submission, each change a guarded
UPDATE whose row count is checked (successes in batches: which jobs are still
ours is read first, inside the same write transaction).
"""

from __future__ import annotations

import functools
import os
import shutil
import sqlite3
import tempfile
import threading
import uuid
import weakref
from contextlib import contextmanager, nullcontext
from operator import itemgetter
from typing import Any, Callable, ContextManager, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Type, TypeVar, Union

from .capture import Output
from .errors import GigqMpError, ValidationError
from .log import get_logger
from .memory import release_memory
from .model import FINAL, now_iso
from .schema import migrate
from .serialize import StoredResult, encode_ids

logger = get_logger(__name__)

CHANGES_KEPT = 50_000  # change-log rows kept; a supervisor further behind rescans instead

# A job's attempts, whoever wrote them: `:id` is the job id. The job id is checked too: a
# deleted job's rowid may be reused, and GigQ's clear_completed leaves attempt rows behind.
_EXECUTIONS_OF = """(
    SELECT e.rowid FROM job_executions e JOIN jobs j ON e.job_seq = j.rowid AND e.job_id = j.id WHERE j.id = :id
    UNION ALL SELECT rowid FROM job_executions WHERE job_seq IS NULL AND job_id = :id)"""

# What the scheduler needs to know of a job it may track.
_STATE_FIELDS = "id, status, priority, created_at, rowid AS seq, retry_after, dependencies, function_module, function_name"

_DESCENDANTS = """
WITH RECURSIVE down(id) AS (
    SELECT job_id FROM job_dependencies WHERE depends_on = ?
    UNION
    SELECT d.job_id FROM job_dependencies d JOIN down ON d.depends_on = down.id
)"""

BUSY_SECONDS = 5.0  # SQLite's own wait for a lock, before we log and wait again
CACHE_KIB = 16 * 1024  # SQLite page cache of a connection
BULK_CACHE_KIB = 32 * 1024  # ... while a large submission inserts at random places in the indexes
BULK_ROWS = 10_000  # a submission this large counts as large
_CHUNK = 900  # stay far below SQLite's limit on bound variables
# Guards are written `+status` so the planner looks rows up by id, never by scanning the status index.

_open_stores: "weakref.WeakSet[Store]" = weakref.WeakSet()
F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R", bound=tuple)


class JobRow(NamedTuple):
    """A validated, encoded job ready to insert (a tuple: 100,000 of them stay small)."""

    id: str
    name: str
    function_name: str
    function_module: str
    function_key: str
    params: Optional[str]
    params_blob: Optional[bytes]
    priority: int
    dependencies: List[str]
    max_attempts: int
    timeout: float
    description: str
    created_at: str
    pass_parent_results: Optional[int]
    retry_delay: float
    retry_backoff: int
    max_memory_mb: Optional[float]
    job_key: Optional[str]
    workflow: Optional[str]


class Claimed(NamedTuple):
    """What the supervisor needs to run an attempt of a job it just claimed (a plain tuple
    from SQLite: a row read by column name costs 0.1 us a field, 15 fields a job)."""

    seq: int  # the job's rowid
    id: str
    name: str
    attempts: int  # this attempt's number
    max_attempts: int
    timeout: float
    retry_delay: Optional[float]
    retry_backoff: Optional[int]
    function_key: Optional[str]
    function_module: str
    function_name: str
    params: Optional[str]
    params_blob: Optional[bytes]
    pass_parent_results: Optional[int]
    dependencies: Optional[str]  # JSON list of ids
    max_memory_mb: Optional[float]


_CLAIM_FIELDS = ", ".join(("rowid",) + Claimed._fields[1:])


class Submission(NamedTuple):
    """Jobs just inserted, and where they landed: a supervisor started right after takes
    them from here instead of reading them back (tracking.Tracker)."""

    rows: List[JobRow]  # in the order inserted
    first_seq: int  # their rowids: first_seq, first_seq + 1, ...
    cursor: Tuple[int, int]  # the change cursor right after the insert (see change_cursor)

    @property
    def seqs(self) -> range:
        return range(self.first_seq, self.first_seq + len(self.rows))


class Success(NamedTuple):
    """An attempt that succeeded, as Store.record_successes writes it."""

    ref: "AttemptRef"
    pid: Optional[int]
    result: StoredResult
    output: Output


class Outcome(NamedTuple):
    """How a job ended (or where it stands), as Store.outcomes reads it (the error, of the
    few that failed, comes from Store.statuses)."""

    id: str
    status: str
    result: Optional[str]
    result_blob: Optional[bytes]
    result_path: Optional[str]


class AttemptRef(NamedTuple):
    """One claimed attempt: the job (by id and rowid), its execution row and its supervisor."""

    job_id: str
    seq: int  # the job's rowid
    execution_id: str
    worker_id: str

    @property
    def job_key(self) -> Tuple[int, str, str]:
        return (self.seq, self.job_id, self.worker_id)


def close_all() -> None:
    """Close every store this process opened."""
    for store in list(_open_stores):
        store.close()


def _stored_output(output: Output) -> Tuple[Optional[str], Optional[str]]:
    """Captured output as stored: None for a stream the job did not write to."""
    return (output[0] or None, output[1] or None)


def _create_private(path: str) -> None:
    """Create a new database file readable and writable by its owner only: it holds pickled
    code, so whoever can write it can run code as the supervisor's user."""
    if path in ("", ":memory:") or path.startswith("file:") or os.path.exists(path):
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise GigqMpError(f"cannot create database {path!r}: directory {directory!r} does not exist")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return  # created by someone else meanwhile: open it as it is
    except OSError as exc:
        raise GigqMpError(f"cannot create database {path!r}: {exc.strerror}") from exc


def remove_file(path: str) -> None:
    """Delete a result file that nothing refers to any more."""
    try:
        os.remove(path)
    except FileNotFoundError:
        logger.debug("result file %s was already gone", path)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _queue_write(method: F) -> F:
    """A queue operation (submit, cancel, ...): counted once written, see Store.data_version."""

    @functools.wraps(method)
    def counted(self: "Store", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            self._queue_writes += 1

    return counted  # type: ignore[return-value]


class Store:
    """One SQLite database: its schema and every read and write of job state."""

    def __init__(self, path: str, initialize: bool = True):
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0  # nesting of transaction()
        # Queue operations (submit, cancel, requeue, clear) done on this connection: a
        # supervisor sharing it must see them, and SQLite's data_version does not count them.
        self._queue_writes = 0
        self._closed = False
        self._results_dir: Optional[str] = None
        self._owns_results_dir = False  # a throwaway directory of an in-memory database
        # Attempt ids: a random prefix per connection and a counter (uuid4 per attempt is slow).
        self._attempt_prefix = uuid.uuid4().hex[:16]
        self._attempt_count = 0
        _create_private(path)
        try:
            self._conn = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise GigqMpError(f"cannot open database {path!r}: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint less often: the same hot pages (status index, running rows) are then
            # copied back once per checkpoint instead of once per few commits.
            self._conn.execute("PRAGMA wal_autocheckpoint=8000")
            # Ids are random (uuid4), so index pages are touched at random: keep more of them
            # in memory than SQLite's default 2 MB, or large DAGs thrash the page cache.
            self._conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            if initialize:
                self._initialize()
        except (sqlite3.DatabaseError, GigqMpError) as exc:
            self._conn.close()
            if isinstance(exc, GigqMpError):
                raise
            raise GigqMpError(f"{path!r} is not a usable gigq_mp database: {exc}") from exc
        _open_stores.add(self)

    # -- schema ---------------------------------------------------------------------------------

    def _initialize(self) -> None:
        with self.transaction() as db:
            migrate(db, self.path)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE) that rolls back on any exception.

        Nested uses join the outermost one, so a caller can batch many operations
        into one commit. (Not savepoints: those cost ~10 % of a run of short jobs, each
        page written twice. An operation that may be repeated after an interruption is
        written so that doing it twice is harmless: record_successes.)
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._begin()
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0
            self._conn.execute("COMMIT")

    @contextmanager
    def _savepoint(self, db: sqlite3.Connection) -> Iterator[None]:
        """Inside a transaction: undo what the block wrote if it does not finish (a Ctrl-C
        between two statements of one operation), keep the rest of the transaction."""
        db.execute("SAVEPOINT operation")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK TO operation")
            db.execute("RELEASE operation")
            raise
        db.execute("RELEASE operation")

    def _all_or_none(self, db: sqlite3.Connection) -> ContextManager[None]:
        """For an operation of several statements: inside an open batch, a savepoint, so that
        an interruption half-way (a Ctrl-C) undoes the operation and keeps the batch; alone,
        its transaction's rollback does that already. A savepoint copies every page it changes
        to a statement journal: used for rare operations, and for claim, where it costs nothing
        measurable; not for record_successes (15 % of a run of short jobs), made repeatable."""
        return self._savepoint(db) if self._depth > 1 else nullcontext()

    def begin_batch(self) -> None:
        """Open a write transaction that stays open across calls until commit_batch()."""
        self._lock.acquire()
        try:
            if self._depth == 0:
                self._begin()
            self._depth += 1
        except BaseException:
            self._lock.release()
            raise

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, waiting as long as another process holds the write lock. Nothing
        is left open if it fails (a Ctrl-C just after BEGIN, say)."""
        waited = 0.0
        try:
            while True:
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    waited += BUSY_SECONDS
                    logger.warning(
                        "database %s is locked by another process (%.0f s so far); waiting", self.path, waited
                    )
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def commit_batch(self) -> None:
        """Close the batch opened by begin_batch(), committing when it is the outermost
        (rolled back if the commit fails)."""
        if self._depth == 0:
            raise RuntimeError("commit_batch() without an open batch")
        try:
            self._depth -= 1
            if self._depth == 0:
                try:
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")  # so the next batch starts clean
                    raise
        finally:
            self._lock.release()

    def rollback_batch(self) -> None:
        """Abandon the batch opened by begin_batch() (after an error); nothing to do when it
        was closed already (a commit that failed rolled it back)."""
        if self._depth == 0:
            return
        try:
            self._depth -= 1
            if self._depth == 0 and self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        finally:
            self._lock.release()

    def _read_in(self, sql: str, ids: Sequence[str], *tail: Any, row: Optional[Type[R]] = None) -> Iterator[Any]:
        """Rows of `sql`, whose `{marks}` is bound to `ids` a chunk at a time (then `tail`);
        as `row` tuples when given (see _rows_as)."""
        for chunk in _chunks(list(ids)):
            query, args = sql.format(marks=",".join("?" * len(chunk))), [*chunk, *tail]
            yield from self._read(query, args) if row is None else self._rows_as(row, query, args)

    def _read(self, sql: str, args: Union[Iterable[Any], Dict[str, Any]] = ()) -> List[sqlite3.Row]:
        """Rows of one query; `args` binds `?` marks in order, or `:name` marks (a dict)."""
        with self._lock:
            return self._conn.execute(sql, args if isinstance(args, dict) else tuple(args)).fetchall()

    def _rows_as(self, row: Type[R], sql: str, args: Iterable[Any] = ()) -> List[R]:
        """Rows of one statement (a query, or a write with RETURNING) as `row` tuples: a
        NamedTuple of the selected columns, in order (reading a sqlite3.Row by column name
        costs 0.1 us a field)."""
        with self._lock:
            cursor = self._conn.cursor()
            cursor.row_factory = None
            try:
                return list(map(row._make, cursor.execute(sql, tuple(args)).fetchall()))
            finally:
                # A Ctrl-C between execute and fetchall would leave the statement running while
                # the traceback keeps the cursor: no savepoint or transaction could end then.
                cursor.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._closed = True
        _open_stores.discard(self)
        if self._owns_results_dir and self._results_dir is not None:
            shutil.rmtree(self._results_dir, ignore_errors=True)

    def data_version(self) -> Tuple[int, int]:
        """Changes when another connection commits a write (PRAGMA data_version), or when a
        queue operation writes through this one (a cancel from another thread or from a
        progress callback: SQLite's data_version does not count the connection's own writes)."""
        return self._read("PRAGMA data_version")[0][0], self._queue_writes

    # -- submission -----------------------------------------------------------------------------

    def has_jobs(self) -> bool:
        return bool(self._read("SELECT 1 FROM jobs LIMIT 1"))

    def has_keyed_jobs(self) -> bool:
        """Is there any job a workflow could reuse (one stored with a resume key)?"""
        return bool(self._read("SELECT 1 FROM jobs WHERE job_key IS NOT NULL LIMIT 1"))

    def find_keys(self, keys: Sequence[str]) -> Dict[str, Tuple[str, str]]:
        """job key -> (id, status) of the newest job with that key."""
        rows = self._read_in(
            "SELECT job_key, id, status, MAX(rowid) FROM jobs WHERE job_key IN ({marks}) GROUP BY job_key", keys
        )
        return {row[0]: (row[1], row[2]) for row in rows}

    def jobs_of(self, workflow: Optional[str]) -> List[sqlite3.Row]:
        """Every job (of one workflow), oldest first: id, name, status, dependencies."""
        if workflow is None:
            return self._read("SELECT id, name, status, dependencies FROM jobs ORDER BY rowid")
        return self._read(
            "SELECT id, name, status, dependencies FROM jobs WHERE workflow = ? ORDER BY rowid", (workflow,)
        )

    def existing_ids(self, ids: Sequence[str]) -> set:
        return {r[0] for r in self._read_in("SELECT id FROM jobs WHERE id IN ({marks})", ids)}

    @_queue_write
    def insert_jobs(self, rows: List[JobRow], functions: Dict[str, bytes]) -> Optional[Submission]:
        """Insert fully validated job rows (parents first) and their callables, all or nothing.

        Returns where they landed; None in the rare case their rowids are not consecutive
        (SQLite picks random rowids once the largest possible one is taken).
        """
        now = now_iso()
        bulk = len(rows) > BULK_ROWS
        try:
            # In an open batch (a submission from a progress callback): undone alone if refused.
            with self.transaction() as db, self._all_or_none(db):
                if bulk:
                    db.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
                (before,) = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM jobs").fetchone()
                db.executemany(
                    "INSERT OR IGNORE INTO functions (key, blob) VALUES (?, ?)", list(functions.items())
                )
                db.executemany(
                    """INSERT INTO jobs (id, name, function_name, function_module, function_key, params,
                        params_blob, priority, dependencies, max_attempts, timeout, description, status,
                        created_at, updated_at, attempts, pass_parent_results, retry_delay, retry_backoff,
                        max_memory_mb, job_key, workflow)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, 0, ?, ?, ?, ?, ?, ?)""",
                    (
                        (
                            r.id, r.name, r.function_name, r.function_module, r.function_key, r.params,
                            r.params_blob, r.priority, encode_ids(r.dependencies),
                            r.max_attempts, r.timeout,
                            r.description, r.created_at, now, r.pass_parent_results, r.retry_delay,
                            r.retry_backoff, r.max_memory_mb, r.job_key, r.workflow,
                        )
                        for r in rows
                    ),
                )
                # In the order of their index (by parent): its B-tree then grows at a few places,
                # not at a random page per edge (-10 % of this statement at 300,000 edges).
                db.executemany(
                    "INSERT INTO job_dependencies (job_id, depends_on, position) VALUES (?, ?, ?)",
                    sorted(
                        ((r.id, dep, position) for r in rows for position, dep in enumerate(r.dependencies)),
                        key=itemgetter(1),
                    ),
                )
                cursor = self.change_cursor()
                landed = rows and db.execute(
                    "SELECT (SELECT id FROM jobs WHERE rowid = ?), (SELECT id FROM jobs WHERE rowid = ?)",
                    (before + 1, before + len(rows)),
                ).fetchone()
        except sqlite3.IntegrityError as exc:
            # The primary key is the check (no read of every id first); nothing was written.
            already = self.existing_ids([r.id for r in rows]) if "jobs.id" in str(exc) else None
            if not already:
                raise
            raise ValidationError(f"jobs already submitted: {', '.join(sorted(already))}") from None
        finally:
            if bulk:
                with self._lock:
                    if not self.closed:
                        self._conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")  # gives the extra pages back
        if bulk:
            release_memory()
        if rows and (cursor[1] != before + len(rows) or tuple(landed) != (rows[0].id, rows[-1].id)):
            return None
        return Submission(rows, before + 1, cursor)

    # -- queries for users ----------------------------------------------------------------------

    def get_job(self, job_id: str) -> Optional[sqlite3.Row]:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def executions(self, job_id: str) -> List[sqlite3.Row]:
        return self._read(
            f"SELECT * FROM job_executions WHERE rowid IN {_EXECUTIONS_OF} ORDER BY started_at, rowid",
            {"id": job_id},
        )

    def list_jobs(self, status: Optional[str], limit: int) -> List[sqlite3.Row]:
        if status is None:
            return self._read("SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,))
        return self._read(
            "SELECT * FROM jobs WHERE status = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (status, limit),
        )

    def count_by_status(self) -> Dict[str, int]:
        return {r[0]: r[1] for r in self._read("SELECT status, COUNT(*) FROM jobs GROUP BY status")}

    def statuses(self, ids: Sequence[str]) -> Dict[str, sqlite3.Row]:
        """id -> row(id, name, status, error) for those ids that exist."""
        rows = self._read_in("SELECT id, name, status, error FROM jobs WHERE id IN ({marks})", ids)
        return {row["id"]: row for row in rows}

    def count_status(self, ids: Sequence[str], status: str) -> int:
        """How many of these jobs have `status`."""
        sql = "SELECT COUNT(*) FROM jobs WHERE id IN ({marks}) AND status = ?"
        return sum(row[0] for row in self._read_in(sql, ids, status))

    def results(self, ids: Sequence[str]) -> Dict[str, StoredResult]:
        """id -> encoded result (text, blob, file) of those ids that are completed."""
        rows = self._read_in(
            "SELECT id, result, result_blob, result_path FROM jobs WHERE +status = 'completed' AND id IN ({marks})",
            ids,
        )
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    def outcomes(self, ids: Sequence[str], seqs: Optional[range] = None) -> Dict[str, Outcome]:
        """id -> Outcome for those of `ids` that exist. Rows at the rowids `seqs` (a
        submission's, say) are read in one sequential pass, the rest of `ids` by id."""
        fields = ", ".join(Outcome._fields)
        found: Dict[str, Outcome] = {}
        if seqs:
            wanted = set(ids)
            sql = f"SELECT {fields} FROM jobs WHERE rowid BETWEEN ? AND ?"
            found = {row.id: row for row in self._rows_as(Outcome, sql, (seqs[0], seqs[-1])) if row.id in wanted}
        rest = [i for i in ids if i not in found]
        sql = f"SELECT {fields} FROM jobs WHERE id IN ({{marks}})"
        found.update((row.id, row) for row in self._read_in(sql, rest, row=Outcome))
        return found

    def is_temporary(self) -> bool:
        """An in-memory database: nothing in it outlives this process."""
        return self.path in ("", ":memory:") or self.path.startswith("file:")

    def results_dir(self) -> str:
        """Where large result files go: beside the database (the worker process that first
        needs it creates it), or a throwaway directory for an in-memory database."""
        if self._results_dir is None:
            if self.is_temporary():
                self._results_dir = tempfile.mkdtemp(prefix="gigq_mp-results-")
                self._owns_results_dir = True
            else:
                self._results_dir = os.path.abspath(self.path) + "-results"
        return self._results_dir

    # -- user actions ---------------------------------------------------------------------------

    @_queue_write
    def cancel(self, job_id: str, running_too: bool = False) -> List[str]:
        """Cancel a pending job (or a running one, with `running_too`: its supervisor sees the
        change and kills it) and its pending descendants; [] when nothing was cancelled."""
        now = now_iso()
        statuses = ("pending", "running") if running_too else ("pending",)
        with self.transaction() as db:
            done = db.execute(
                "UPDATE jobs SET status = 'cancelled', updated_at = ?, completed_at = ?, "
                f"error = 'cancelled by user' WHERE id = ? AND +status IN ({','.join('?' * len(statuses))})",
                (now, now, job_id, *statuses),
            ).rowcount
            if not done:
                return []
            return [job_id] + self._cascade(db, job_id, "cancelled")

    def cascade(self, job_id: str, status: str) -> List[str]:
        """Cancel the pending descendants of a job that ended `status`; return their ids."""
        with self.transaction() as db:
            return self._cascade(db, job_id, status)

    def _cascade(self, db: sqlite3.Connection, job_id: str, status: str) -> List[str]:
        name_row = db.execute("SELECT name FROM jobs WHERE id = ?", (job_id,)).fetchone()
        name = name_row[0] if name_row else "?"
        now = now_iso()
        rows = db.execute(
            _DESCENDANTS
            + """UPDATE jobs SET status = 'cancelled', error = ?, blocked_by = ?, updated_at = ?,
                    completed_at = ?
                 WHERE id IN (SELECT id FROM down) AND +status = 'pending' RETURNING id""",
            (job_id, f"upstream job {name} ({job_id}) ended {status}", job_id, now, now),
        ).fetchall()
        return [r[0] for r in rows]

    def block(self, job_id: str, error: str, upstream: str) -> bool:
        """Cancel one pending job whose parent can never complete."""
        now = now_iso()
        with self.transaction() as db:
            return bool(
                db.execute(
                    "UPDATE jobs SET status = 'cancelled', error = ?, blocked_by = ?, updated_at = ?, "
                    "completed_at = ? WHERE id = ? AND +status = 'pending'",
                    (error, upstream, now, now, job_id),
                ).rowcount
            )

    @_queue_write
    def requeue(self, job_id: str) -> bool:
        """failed/timeout/cancelled -> pending, attempts reset; revive what its end cancelled."""
        now = now_iso()
        with self.transaction() as db:
            done = db.execute(
                "UPDATE jobs SET status = 'pending', attempts = 0, error = NULL, retry_after = NULL, "
                "blocked_by = NULL, completed_at = NULL, updated_at = ? "
                "WHERE id = ? AND +status IN ('failed', 'timeout', 'cancelled')",
                (now, job_id),
            ).rowcount
            if done:
                db.execute(
                    "UPDATE jobs SET status = 'pending', attempts = 0, error = NULL, retry_after = NULL, "
                    "blocked_by = NULL, completed_at = NULL, updated_at = ? "
                    "WHERE blocked_by = ? AND +status = 'cancelled'",
                    (now, job_id),
                )
            return bool(done)

    @_queue_write
    def clear_completed(self, before: Optional[str]) -> int:
        with self.transaction() as db:
            where = "status IN ('completed', 'cancelled')" + (" AND completed_at < ?" if before else "")
            args = (before,) if before else ()
            db.execute(
                f"DELETE FROM job_executions WHERE job_seq IN (SELECT rowid FROM jobs WHERE {where}) "
                f"OR (job_seq IS NULL AND job_id IN (SELECT id FROM jobs WHERE {where}))",
                args + args,
            )
            db.execute(
                f"DELETE FROM job_dependencies WHERE job_id IN (SELECT id FROM jobs WHERE {where})", args
            )
            files = [r[0] for r in db.execute(f"SELECT result_path FROM jobs WHERE {where} AND result_path IS NOT NULL", args)]
            deleted = db.execute(f"DELETE FROM jobs WHERE {where}", args).rowcount
            if deleted:
                db.execute("INSERT INTO job_changes (job_id) VALUES (NULL)")  # rowids may be reused
        for path in files:
            remove_file(path)
        return deleted

    # -- the supervisor's operations ------------------------------------------------------------

    def pending_ids(self) -> List[str]:
        """The id of every pending job."""
        return [r[0] for r in self._read("SELECT id FROM jobs WHERE status = 'pending'")]

    def pending_states(self, chunk: int) -> Iterator[List[sqlite3.Row]]:
        """What the scheduler needs of every pending job, `chunk` rows at a time."""
        with self._lock:
            cursor = self._conn.execute(f"SELECT {_STATE_FIELDS} FROM jobs WHERE status = 'pending'")
            while True:
                rows = cursor.fetchmany(chunk)
                if not rows:
                    return
                yield rows

    def register_supervisor(self, supervisor_id: str, pid: int, process_start: float, host: str) -> None:
        now = now_iso()
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO supervisors (id, pid, process_start, host, started_at, heartbeat) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (supervisor_id, pid, process_start, host, now, now),
            )

    def heartbeat(self, supervisor_id: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE supervisors SET heartbeat = ? WHERE id = ?", (now_iso(), supervisor_id))

    def unregister_supervisor(self, supervisor_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM supervisors WHERE id = ?", (supervisor_id,))

    def supervisors(self) -> List[sqlite3.Row]:
        return self._read("SELECT * FROM supervisors")

    def orphaned_running_jobs(self) -> List[sqlite3.Row]:
        """Running jobs with their supervisor's registration (NULL columns when it has none)."""
        return self._read(
            "SELECT j.id, j.rowid AS seq, j.worker_id, j.started_at, j.timeout, s.id AS supervisor "
            "FROM jobs j LEFT JOIN supervisors s ON s.id = j.worker_id WHERE j.status = 'running'"
        )

    def reclaim(self, jobs: Sequence[sqlite3.Row], reason: str) -> int:
        """Put running jobs of a dead supervisor back to pending; their open attempt is
        recorded as interrupted and not counted. Returns how many were reclaimed."""
        now = now_iso()
        count = 0
        with self.transaction() as db, self._all_or_none(db):
            for job in jobs:
                done = db.execute(
                    "UPDATE jobs SET status = 'pending', attempts = MAX(attempts - 1, 0), updated_at = ? "
                    "WHERE rowid = ? AND +id = ? AND +status = 'running' AND worker_id IS ?",
                    (now, job["seq"], job["id"], job["worker_id"]),
                ).rowcount
                if done:
                    count += 1
                    db.execute(
                        "UPDATE job_executions SET status = 'interrupted', completed_at = :now, error = :error "
                        "WHERE (job_seq = :seq OR job_seq IS NULL) AND job_id = :id AND status = 'running'",
                        {"now": now, "error": reason.format(worker_id=job["worker_id"]), "seq": job["seq"], "id": job["id"]},
                    )
        return count

    def change_cursor(self) -> Tuple[int, int]:
        """(newest change-log entry, highest job rowid): where to read new changes from."""
        row = self._read(
            "SELECT (SELECT COALESCE(MAX(seq), 0) FROM job_changes), (SELECT COALESCE(MAX(rowid), 0) FROM jobs)"
        )[0]
        return row[0], row[1]

    def changes_since(self, cursor: Tuple[int, int]) -> Optional[Tuple[Tuple[int, int], List[sqlite3.Row]]]:
        """The jobs inserted or changed (by anyone) after `cursor`, and the new cursor.

        None when the log no longer reaches back to `cursor` (pruned, or rows were
        deleted): the caller must read every pending job instead.
        """
        seq, rowid = cursor
        changes = self._read("SELECT seq, job_id FROM job_changes WHERE seq > ? ORDER BY seq", (seq,))
        if changes and (changes[0][0] != seq + 1 or any(r[1] is None for r in changes)):
            return None
        inserted = self._read(f"SELECT {_STATE_FIELDS} FROM jobs WHERE rowid > ?", (rowid,))
        changed = self.job_states(list({r[1] for r in changes}))
        new_cursor = (changes[-1][0] if changes else seq, max([rowid] + [r["seq"] for r in inserted]))
        return new_cursor, inserted + changed

    def prune_changes(self) -> None:
        """Keep only the newest CHANGES_KEPT change-log entries."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM job_changes WHERE seq <= (SELECT MAX(seq) FROM job_changes) - ?",
                (CHANGES_KEPT,),
            )

    def job_states(self, ids: Sequence[str]) -> List[sqlite3.Row]:
        """What the scheduler needs of these jobs, whatever their status."""
        return list(self._read_in(f"SELECT {_STATE_FIELDS} FROM jobs WHERE id IN ({{marks}})", ids))

    def claim(self, jobs: Sequence[Tuple[str, int]], worker_id: str) -> List[Tuple[Claimed, "AttemptRef"]]:
        """Move pending jobs, given as (id, rowid), to running and open an attempt for each;
        skip jobs no longer pending. Rows are found by rowid: no index lookup per job. A row
        is only taken if its id is one of the jobs given (rows deleted meanwhile leave their
        rowids to new jobs).

        Returns (job, attempt) for each job claimed, in the order given.
        """
        now = now_iso()
        rows: Dict[str, Claimed] = {}
        with self.transaction() as db, self._all_or_none(db):  # its two statements
            for chunk in _chunks(list(jobs), _CHUNK // 2):  # two variables a job
                marks = ",".join("?" * len(chunk))
                returned = self._rows_as(
                    Claimed,
                    f"""UPDATE jobs SET status = 'running', attempts = attempts + 1, worker_id = ?,
                            started_at = ?, updated_at = ?, retry_after = NULL
                        WHERE rowid IN ({marks}) AND +status = 'pending' AND +id IN ({marks})
                        RETURNING {_CLAIM_FIELDS}""",
                    (worker_id, now, now, *[seq for _, seq in chunk], *[job_id for job_id, _ in chunk]),
                )
                rows.update((row.id, row) for row in returned)
            claimed = []
            for job_id, _ in jobs:
                row = rows.get(job_id)
                if row is not None:
                    self._attempt_count += 1
                    execution_id = f"{self._attempt_prefix}-{self._attempt_count:010d}"
                    claimed.append((row, AttemptRef(job_id, row.seq, execution_id, worker_id)))
            db.executemany(
                "INSERT INTO job_executions (id, job_id, job_seq, worker_id, status, started_at, attempt) "
                "VALUES (?, ?, ?, ?, 'running', ?, ?)",
                [(ref.execution_id, ref.job_id, ref.seq, worker_id, now, row.attempts) for row, ref in claimed],
            )
        return claimed

    def function_blob(self, key: str) -> Optional[bytes]:
        rows = self._read("SELECT blob FROM functions WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    # Each of these closes one attempt. The job row is found by rowid and must still be
    # running under this attempt's supervisor; False when it no longer was.
    _OURS = "WHERE rowid = ? AND +id = ? AND +status = 'running' AND worker_id = ?"

    def record_successes(self, successes: Sequence[Success]) -> List[bool]:
        """running -> completed with its result (and what it printed), for each attempt;
        False for a job no longer running under its attempt's supervisor (its attempt is
        closed all the same). One statement of each kind for all of them; the rows are
        read back only when some job was not ours any more (someone cancelled it, say).

        Doing it again after an interruption half-way, in the same open batch, is harmless:
        a job this supervisor already marked completed counts as recorded (nobody else
        completes a job that runs under another supervisor's id).
        """
        now = now_iso()
        with self.transaction() as db:
            done = db.executemany(
                "UPDATE jobs SET status = 'completed', result = ?, result_blob = ?, result_path = ?, "
                "error = NULL, completed_at = ?, updated_at = ? "
                "WHERE rowid = ? AND +id = ? AND +status IN ('running', 'completed') AND worker_id = ?",
                [(*s.result, now, now, *s.ref.job_key) for s in successes],
            ).rowcount
            if done == len(successes):
                recorded = [True] * len(successes)
            else:  # which ones: a job ours is now completed under our id, the others were not touched
                ours = set()
                for chunk in _chunks([s.ref.seq for s in successes]):
                    marks = ",".join("?" * len(chunk))
                    rows = db.execute(
                        f"SELECT rowid, id, worker_id FROM jobs WHERE rowid IN ({marks}) AND +status = 'completed'",
                        chunk,
                    )
                    ours.update(tuple(row) for row in rows)
                recorded = [s.ref.job_key in ours for s in successes]
            db.executemany(
                "UPDATE job_executions SET status = 'completed', completed_at = ?, result = ?, pid = ?, "
                "stdout = ?, stderr = ? WHERE id = ?",
                [(now, s.result[0], s.pid, *_stored_output(s.output), s.ref.execution_id) for s in successes],
            )
        return recorded

    def record_failure(
        self,
        ref: "AttemptRef",
        pid: Optional[int],
        output: Output,
        attempt_status: str,
        error: str,
        job_status: str,
        retry_after: Optional[str] = None,
    ) -> Tuple[bool, List[str]]:
        """Close a failed attempt; the job goes to `job_status` (pending again or final). A final
        status cancels the job's pending descendants in the same step, all or none.

        Returns (whether the job was still ours and changed, the descendants cancelled).
        """
        now = now_iso()
        final = job_status in FINAL
        with self.transaction() as db, self._all_or_none(db):
            done = db.execute(
                f"UPDATE jobs SET status = ?, error = ?, retry_after = ?, updated_at = ?, completed_at = ? {self._OURS}",
                (job_status, error, retry_after, now, now if final else None, *ref.job_key),
            ).rowcount
            db.execute(
                "UPDATE job_executions SET status = ?, completed_at = ?, error = ?, pid = ?, stdout = ?, "
                "stderr = ? WHERE id = ?",
                (attempt_status, now, error, pid, *_stored_output(output), ref.execution_id),
            )
            cancelled = self._cascade(db, ref.job_id, job_status) if done and final else []
        return bool(done), cancelled

    def record_interrupted(self, ref: "AttemptRef", pid: Optional[int], reason: str) -> bool:
        """A stop killed this attempt: the job is pending again and the attempt is not counted."""
        now = now_iso()
        with self.transaction() as db, self._all_or_none(db):
            done = db.execute(
                f"UPDATE jobs SET status = 'pending', attempts = MAX(attempts - 1, 0), updated_at = ? {self._OURS}",
                (now, *ref.job_key),
            ).rowcount
            db.execute(
                "UPDATE job_executions SET status = 'interrupted', completed_at = ?, error = ?, pid = ? "
                "WHERE id = ?",
                (now, reason, pid, ref.execution_id),
            )
        return bool(done)

    def close_attempt(self, ref: "AttemptRef", pid: Optional[int], status: str, error: str, output: Output) -> None:
        """Close an attempt whose job row someone else already changed."""
        with self.transaction() as db:
            db.execute(
                "UPDATE job_executions SET status = ?, completed_at = ?, error = ?, pid = ?, stdout = ?, "
                "stderr = ? WHERE id = ?",
                (status, now_iso(), error, pid, *_stored_output(output), ref.execution_id),
            )

    def release_unstarted(self, ref: "AttemptRef") -> bool:
        """A claimed job never started (its worker process ended first): pending again, no attempt."""
        with self.transaction() as db, self._all_or_none(db):
            done = db.execute(
                f"UPDATE jobs SET status = 'pending', attempts = MAX(attempts - 1, 0), updated_at = ? {self._OURS}",
                (now_iso(), *ref.job_key),
            ).rowcount
            db.execute("DELETE FROM job_executions WHERE id = ?", (ref.execution_id,))
        return bool(done)

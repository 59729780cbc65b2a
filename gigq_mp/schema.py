"""The schema of a gigq_mp database and its migrations, in one place.

A database may have been created by GigQ 0.5, by an earlier gigq_mp, or not
at all: `migrate` brings any of them to this version in place, inside the
caller's transaction, and refuses a database written by a newer gigq_mp.
GigQ's tables keep their columns (GigQ's tools still read them); ours are
added beside them.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Sequence

from .errors import GigqMpError

SCHEMA_VERSION = 1

_GIGQ_JOBS = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    function_name TEXT NOT NULL,
    function_module TEXT NOT NULL,
    params TEXT,
    priority INTEGER DEFAULT 0,
    dependencies TEXT,
    max_attempts INTEGER DEFAULT 3,
    timeout INTEGER DEFAULT 300,
    description TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    attempts INTEGER DEFAULT 0,
    result TEXT,
    error TEXT,
    started_at TEXT,
    completed_at TEXT,
    worker_id TEXT,
    pass_parent_results INTEGER,
    retry_delay INTEGER DEFAULT 0,
    retry_after TEXT
)"""

_GIGQ_EXECUTIONS = """
CREATE TABLE IF NOT EXISTS job_executions (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    completed_at TEXT,
    result TEXT,
    error TEXT,
    FOREIGN KEY (job_id) REFERENCES jobs (id)
)"""

# Columns added to GigQ's tables, created in place on databases that lack them.
_ADDED_COLUMNS = {
    "jobs": [
        ("pass_parent_results", "INTEGER"),
        ("retry_delay", "INTEGER DEFAULT 0"),
        ("retry_after", "TEXT"),
        ("function_key", "TEXT"),
        ("params_blob", "BLOB"),
        ("result_blob", "BLOB"),
        ("result_path", "TEXT"),
        ("retry_backoff", "INTEGER DEFAULT 0"),
        ("max_memory_mb", "REAL"),
        ("blocked_by", "TEXT"),
        ("job_key", "TEXT"),  # stable identity for resuming a workflow (resume.py)
        ("workflow", "TEXT"),  # the name of the Workflow that submitted it
    ],
    "job_executions": [
        ("attempt", "INTEGER"),
        ("pid", "INTEGER"),
        ("stdout", "TEXT"),
        ("stderr", "TEXT"),
        ("job_seq", "INTEGER"),  # the job's rowid (NULL in rows other programs wrote)
    ],
}

_OUR_TABLES = [
    "CREATE TABLE IF NOT EXISTS gigq_mp_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS functions (key TEXT PRIMARY KEY, blob BLOB NOT NULL)",
    # Live supervisors, so that a new one can tell which `running` jobs lost theirs.
    """CREATE TABLE IF NOT EXISTS supervisors (
        id TEXT PRIMARY KEY, pid INTEGER NOT NULL, process_start REAL NOT NULL, host TEXT NOT NULL,
        started_at TEXT NOT NULL, heartbeat TEXT NOT NULL)""",
    # Edges of the DAG, parent -> child lookups only (cascades); submission already
    # refuses duplicate dependencies, so no second index keeps them unique.
    """CREATE TABLE IF NOT EXISTS job_dependencies (
        job_id TEXT NOT NULL, depends_on TEXT NOT NULL, position INTEGER NOT NULL)""",
    # The change log: which jobs changed status (except into `running`), written by a
    # trigger so that writes by any program, GigQ's included, are seen. A supervisor reads
    # what is past its cursor instead of rescanning every pending job. New jobs need no
    # entry: they are the rows past the highest rowid it has seen. A NULL job_id says rows
    # were deleted (rowids may be reused): read everything again.
    "CREATE TABLE IF NOT EXISTS job_changes (seq INTEGER PRIMARY KEY, job_id TEXT)",
    """CREATE TRIGGER IF NOT EXISTS job_changes_on_status AFTER UPDATE OF status ON jobs
        WHEN NEW.status IS NOT OLD.status AND NEW.status != 'running'
        BEGIN INSERT INTO job_changes (job_id) VALUES (NEW.id); END""",
]

_INDEXES = [
    # Only unfinished jobs are looked up by status on a hot path, and a full status index
    # would take an insert into its ever-growing `completed` region for every job.
    "CREATE INDEX IF NOT EXISTS idx_jobs_active ON jobs (status) WHERE status = 'pending' OR status = 'running'",
    # Only jobs a failure cancelled have blocked_by; the rest stay out of its index.
    "CREATE INDEX IF NOT EXISTS idx_jobs_blocked ON jobs (blocked_by) WHERE blocked_by IS NOT NULL",
    "DROP INDEX IF EXISTS idx_jobs_blocked_by",  # what earlier versions indexed instead
    "CREATE INDEX IF NOT EXISTS idx_jobs_job_key ON jobs (job_key)",
    "CREATE INDEX IF NOT EXISTS idx_job_dependencies_parent ON job_dependencies (depends_on)",
    # A job's attempts are found by the job's rowid, which grows as jobs are submitted: an index
    # on the random job ids would take a write at a random page for every attempt. Rows that
    # other programs (GigQ) wrote have no job_seq and are found by job id in a partial index.
    "CREATE INDEX IF NOT EXISTS idx_job_executions_seq ON job_executions (job_seq)",
    "CREATE INDEX IF NOT EXISTS idx_job_executions_foreign ON job_executions (job_id) WHERE job_seq IS NULL",
    "DROP INDEX IF EXISTS idx_job_executions_job",  # what earlier versions indexed instead
]


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Create or bring up to date every table, column, index and trigger (idempotent)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'gigq_mp_meta'").fetchone():
        row = db.execute("SELECT value FROM gigq_mp_meta WHERE key = 'schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise GigqMpError(
                f"database {path!r} has schema version {row[0]}, newer than this "
                f"gigq_mp understands ({SCHEMA_VERSION}); upgrade gigq_mp"
            )
    db.execute(_GIGQ_JOBS)
    db.execute(_GIGQ_EXECUTIONS)
    had_edges = bool(db.execute("SELECT 1 FROM sqlite_master WHERE name = 'job_dependencies'").fetchone())
    for ddl in _OUR_TABLES:
        db.execute(ddl)
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns:
            if name not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    for ddl in _INDEXES:
        db.execute(ddl)
    db.execute("DROP TRIGGER IF EXISTS job_changes_on_insert")
    db.execute(
        "INSERT OR REPLACE INTO gigq_mp_meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
    )
    if not had_edges:  # a GigQ database: derive the edges from the JSON lists
        for job_id, deps in db.execute("SELECT id, dependencies FROM jobs").fetchall():
            insert_edges(db, job_id, json.loads(deps or "[]"))


def insert_edges(db: sqlite3.Connection, job_id: str, deps: Sequence[str]) -> None:
    """The DAG edges of one job, in the order of its dependencies."""
    db.executemany(
        "INSERT INTO job_dependencies (job_id, depends_on, position) VALUES (?, ?, ?)",
        [(job_id, dep, position) for position, dep in enumerate(deps)],
    )

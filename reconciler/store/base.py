"""The SQLite plumbing shared by every part of a pool's store.

Rules (DESIGN.md rules 4-6): WAL journal, a ``busy_timeout`` so concurrent
workers wait instead of failing, ``BEGIN IMMEDIATE`` for every read-then-write,
files 0600 (SQLite gives ``-wal`` and ``-shm`` the database file's mode).

Faults (issue 7 items 3 and 8):

- A *read-only* open (``Database(path, readonly=True)``) never writes: no
  schema creation, no migration, no ``journal_mode``; SQLite's ``mode=ro`` plus
  ``query_only``.  It works on a read-only file system or a full disk too; when
  SQLite cannot set up its shared memory there (no ``-shm``, and a directory it
  cannot write or no space to size one), the store is read as ``immutable``
  provided no ``-wal`` holds changes (then no process is writing it).
- A transient write failure (the store busy beyond ``busy_timeout``, disk
  full, read-only, an I/O error) is retried with backoff for up to
  ``RETRY_SECONDS``, one warning per retry, then reported as one line.  SQLite
  rolls a transaction back when its ``COMMIT`` fails for lack of space, so the
  retry re-runs the whole store method (every public method of a ``Database``
  subclass is wrapped; each does its work in one transaction).  Programming
  and constraint errors are never retried.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import secrets
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FunctionType, TracebackType
from typing import Any, ParamSpec, Self, TypeVar

from reconciler.errors import StoreError
from reconciler.log import logger
from reconciler.paths import not_a_regular_file
from reconciler.severity import severity_of
from reconciler.store.schema import SCHEMA_VERSION, create_or_upgrade

BUSY_TIMEOUT_MS = 15_000

# Transient faults are retried this long (seconds) in all, with backoff from
# RETRY_FIRST_DELAY doubling up to RETRY_MAX_DELAY.  Module attributes, read at
# each retry, so tests (and embedders) can shorten them; RECONCILER_STORE_RETRY
# (seconds) sets the total for a process and its children.
DEFAULT_RETRY_SECONDS = 20.0


def _retry_seconds_from_env() -> float:
    try:
        value = float(os.environ.get("RECONCILER_STORE_RETRY", DEFAULT_RETRY_SECONDS))
    except ValueError:
        return DEFAULT_RETRY_SECONDS
    return value if 0 <= value <= 3600 else DEFAULT_RETRY_SECONDS


RETRY_SECONDS = _retry_seconds_from_env()
RETRY_FIRST_DELAY = 0.1
RETRY_MAX_DELAY = 2.0

# SQLite primary result codes worth waiting out: BUSY, LOCKED, READONLY, IOERR, FULL,
# CANTOPEN, PROTOCOL.  Never SQLITE_ERROR (a bad statement), CONSTRAINT, CORRUPT, NOTADB.
_TRANSIENT_CODES = frozenset({5, 6, 8, 10, 13, 14, 15})
_HINT = "check free disk space and that the state directory is writable"

P = ParamSpec("P")
R = TypeVar("R")

def _open_error(path: Path, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"cannot open the task store {path}: {exc}",
                      hint="check the state directory's permissions and free space")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a fault of the host (busy, full, read-only, I/O) that may pass."""
    if isinstance(exc, StoreFault):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _TRANSIENT_CODES
        text = str(exc).lower()  # an error raised without a code (rare)
        return any(w in text for w in ("locked", "busy", "disk is full", "readonly",
                                       "disk i/o", "unable to open"))
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EIO,
                                                      errno.EDQUOT)


class StoreFault(StoreError):
    """A transient fault inside a transaction, which was rolled back: the store method
    that ran it is run again (see ``_retrying``)."""

    def __init__(self, message: str, cause: BaseException, reason: str | None = None) -> None:
        super().__init__(message, hint=_HINT)
        self.cause = cause
        self.reason = reason or _reason(cause)  # short: what went wrong, without the path


def _retrying(method: Callable[P, R]) -> Callable[P, R]:
    """Run a store method again while it fails with a transient fault, for up to
    ``RETRY_SECONDS``; then raise one ``StoreError`` line.  Only the outermost call
    of a store method retries (a method calling another one does not multiply it)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        db = args[0]
        assert isinstance(db, Database)
        if db._retry_depth:
            return method(*args, **kwargs)
        deadline = time.monotonic() + RETRY_SECONDS
        delay, tries = RETRY_FIRST_DELAY, 0
        while True:
            db._retry_depth += 1
            try:
                return method(*args, **kwargs)
            except (sqlite3.Error, StoreError, OSError) as exc:
                if db.readonly or not is_transient(exc):
                    raise
                reason = exc.reason if isinstance(exc, StoreFault) else _reason(exc)
                tries += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreError(
                        f"task store {db.path}: {method.__name__} failed for "
                        f"{RETRY_SECONDS:g}s ({tries} tries): {reason}",
                        hint=_HINT) from exc
                pause = min(delay, left)
                logger.warning("task store {}: {} failed ({}); retry {} in {:.1f}s",
                               db.path, method.__name__, reason, tries, pause)
                time.sleep(pause)
                delay = min(delay * 2, RETRY_MAX_DELAY)
            finally:
                db._retry_depth -= 1

    return wrapper


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _sqlite_uri(path: Path, **params: str) -> str:
    query = urllib.parse.urlencode(params)
    return f"file:{urllib.parse.quote(str(path.absolute()))}?{query}"


def _disk_full(directory: Path) -> bool:
    try:
        return os.statvfs(directory).f_bavail == 0
    except OSError:
        return False


def _holds_changes(wal: Path) -> bool:
    try:
        return wal.stat().st_size > 0
    except FileNotFoundError:
        return False


def _create_private(path: Path) -> bool:
    """Create ``path`` as an empty 0600 file if it does not exist yet; True if it did.

    An existing file is never opened here: closing any descriptor of a
    database drops every POSIX lock this process holds on it, which would let
    another process delete the WAL under a live connection.  SQLite gives the
    ``-wal`` and ``-shm`` files the database file's permissions.
    """
    if path.exists():
        return False
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


class Database:
    """A connection to one pool's store.  Each thread or process opens its own.

    ``readonly=True`` opens it for reading only: nothing is ever written, so
    read commands work on a read-only or full disk and wake no controller.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give every public store method of a subclass the bounded retry on faults."""
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if isinstance(value, FunctionType) and not name.startswith("_"):
                setattr(cls, name, _retrying(value))

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._retry_depth = 0
        self._created = False
        self._degraded = False  # opened for reading because the disk refused writing
        if readonly:
            self._db = self._open_readonly()
            return
        try:
            self._db = self._open_writable()
        except (sqlite3.Error, StoreError) as exc:
            if self._created or not self._fault_of_the_disk(exc):
                if isinstance(exc, StoreError):
                    raise
                raise _open_error(path, exc) from exc
            # A full or read-only disk: read what is there now; a write opens the store
            # for writing first, waiting out the fault like any other (``transaction``).
            try:
                self._db = self._open_readonly()
            except StoreError:
                raise exc from None
            self._degraded = True
            return
        for suffix in ("-wal", "-shm"):
            companion = path.with_name(path.name + suffix)
            with contextlib.suppress(OSError):  # gone, or a read-only file system
                if companion.stat().st_mode & 0o777 != 0o600:
                    companion.chmod(0o600)

    def _fault_of_the_disk(self, exc: BaseException) -> bool:
        return is_transient(exc) or not os.access(self.path.parent, os.W_OK)

    def _open_writable(self) -> sqlite3.Connection:
        """A read-write connection with the schema created or migrated."""
        path = self.path
        try:
            self._created = _create_private(path)
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000,
                                 isolation_level=None, check_same_thread=False)
        except OSError as exc:
            raise StoreError(f"cannot create the task store {path}: {_reason(exc)}",
                             hint=_HINT) from exc
        previous = getattr(self, "_db", None)
        self._db = db  # the helpers below work on self._db
        try:
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._refuse_a_lost_store()  # before WAL mode writes the file's header
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
            self._ensure_schema()
        except BaseException:
            db.close()  # a store that cannot be used must not hold a connection
            if previous is not None:
                self._db = previous
            raise
        return db

    def _reopen_writable(self) -> None:
        """Swap a degraded (read-only) connection for a writable one, or raise a fault."""
        try:
            db = self._open_writable()
        except (sqlite3.Error, StoreError, OSError) as exc:
            why = _reason(exc)
            if not os.access(self.path.parent, os.W_OK):
                why = "the state directory is read-only"
            elif _disk_full(self.path.parent):
                why = f"the disk is full ({why})"
            reason = f"cannot open it for writing: {why}"
            message = f"task store {self.path}: {reason}"
            if self._fault_of_the_disk(exc):
                raise StoreFault(message, exc, reason) from exc
            raise StoreError(message, hint=_HINT) from exc
        old, self._db, self._degraded = self._db, db, False
        old.close()

    def _open_readonly(self) -> sqlite3.Connection:
        """Open for reading only (``mode=ro``, ``query_only``); see the module docstring."""
        path = self.path
        if not path.is_file():
            raise StoreError(f"no task store at {path}",
                             hint="apply the pool's spec first: reconcile apply -f workers.yaml")
        try:
            db = self._connect_ro(_sqlite_uri(path, mode="ro"))
        except sqlite3.Error as exc:
            wal = path.with_name(path.name + "-wal")
            if not is_transient(exc) or _holds_changes(wal):
                raise _open_error(path, exc) from exc
            # SQLite could not set up its shared memory (-shm) on this read-only or
            # full disk, and no -wal holds changes: no process is writing the store
            # (none could, there), so the file itself is the whole store.
            try:
                db = self._connect_ro(_sqlite_uri(path, mode="ro", immutable="1"))
            except sqlite3.Error as again:
                raise _open_error(path, again) from again
        try:
            self._check_readable_schema(db)
        except BaseException:
            db.close()
            raise
        return db

    def _connect_ro(self, uri: str) -> sqlite3.Connection:
        db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                             isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA query_only = ON")
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # reads the header
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _check_readable_schema(self, db: sqlite3.Connection) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer reconciler (schema {version})",
                             hint="upgrade reconciler")
        if version == 0:
            raise StoreError(f"{self.path} holds no pool store (no schema): it is empty, "
                             "truncated or not ours", hint="restore store.db from a backup "
                             "(`reconcile backup`), or apply the pool's spec to start afresh")
        raise StoreError(f"{self.path} has an older schema ({version}) that a read-only "
                         "command cannot upgrade", hint="run a writing command once "
                         "(e.g. `reconcile apply`), then retry")

    def _ensure_schema(self) -> None:
        """Create or migrate the schema, writing nothing when it is already current.

        Any write (even of an unchanged ``user_version``) bumps ``PRAGMA
        data_version`` and so wakes every controller watching the store.  The
        version is read again under the write lock: of two processes opening an
        old store at once, only the first migrates it.
        """
        if self._user_version() == SCHEMA_VERSION:
            return
        with self.transaction() as db:
            version = self._user_version()
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} was written by a newer reconciler"
                                 f" (schema {version})", hint="upgrade reconciler")
            if version == SCHEMA_VERSION:
                return
            create_or_upgrade(db, version)

    def _refuse_a_lost_store(self) -> None:
        """An empty store beside a pool's logs or prompts was truncated or replaced:
        starting afresh would silently lose every task and the history."""
        if self._created or self._user_version() != 0 or \
                self._db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
            return
        evidence = [d.name for d in (self.path.parent / "logs", self.path.parent / "prompts")
                    if d.is_dir() and any(d.iterdir())]
        if evidence:
            raise StoreError(
                f"{self.path} is empty, but the pool has {' and '.join(evidence)}: the store "
                "was truncated or replaced, and opening it would lose every task and the "
                "history", hint="restore store.db from a backup, or move the pool directory "
                f"{self.path.parent} away to start the pool afresh")

    def _user_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Close the connection however the block ends; exceptions propagate."""
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: take the write lock before reading.

        A transient fault (busy, full, read-only, I/O) rolls back and raises
        ``StoreFault``, which the store method's retry wrapper acts on.
        """
        if self.readonly:
            raise StoreError(f"task store {self.path} is open read-only (a read command, or "
                             "a read-only state directory): it cannot be changed now",
                             hint="check that the state directory is writable")
        if self._degraded:
            self._reopen_writable()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._fault("cannot start a write", exc) from exc
        try:
            yield self._db
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error | OSError) and is_transient(exc):
                raise self._fault("a write failed", exc) from exc
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._fault("commit failed", exc) from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:  # SQLite may have rolled back already (disk full)
            with contextlib.suppress(sqlite3.Error):  # the error being raised says it all
                self._db.execute("ROLLBACK")

    def _fault(self, what: str, exc: sqlite3.Error | OSError) -> StoreError:
        reason = f"{what}: {_reason(exc)}"
        message = f"task store {self.path}: {reason}"
        if is_transient(exc):
            return StoreFault(message, exc, reason)
        return StoreError(message)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if is_transient(exc):
                raise StoreFault(f"reading the task store {self.path} failed: {exc}",
                                 exc) from exc
            raise StoreError(f"reading the task store {self.path} failed: {exc}") from exc

    def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap "something happened"."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    @staticmethod
    def _event(db: sqlite3.Connection, now: float, kind: str, worker_id: str | None,
               task_id: int | None, message: str,
               fields: Mapping[str, Any] | None = None) -> None:
        """Log an event; ``fields`` keeps its facts machine-readable (NULL when none)."""
        encoded = json.dumps(dict(fields), sort_keys=True) if fields else None
        db.execute("INSERT INTO events (at, kind, worker_id, task_id, message, fields, severity)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?)", (now, kind, worker_id, task_id, message,
                                                     encoded, severity_of(kind, fields)))


def jitter() -> float:
    """A factor in [0.8, 1.2] so retries and restarts do not fall into lockstep."""
    return 0.8 + 0.4 * secrets.randbelow(1_000_001) / 1_000_000


@dataclass(frozen=True)
class BackupInfo:
    """What ``backup_store`` wrote."""

    source: Path
    destination: Path
    bytes: int
    tasks: int
    schema: int
    seconds: float


def backup_store(store: Database, destination: Path, *, force: bool = False) -> BackupInfo:
    """Copy ``store`` into ``destination`` (a new 0600 file) with SQLite's online backup API.

    The copy is one consistent snapshot, taken while workers and the controller
    keep writing (in WAL mode a reader blocks no writer).  It is written to a
    temporary file beside ``destination`` and checked (``quick_check``) before it
    takes that name, so a failed backup (disk full) leaves no partial file.  An
    existing ``destination`` is refused unless ``force``.
    """
    started = time.monotonic()
    where = destination.parent
    problem = not_a_regular_file(destination)
    if problem is not None:  # --force would rename over a device, a FIFO, a link
        raise StoreError(f"backup destination {destination} {problem}",
                         hint="name a regular file, e.g. backup.db")
    if (destination.exists() or destination.is_symlink()) and not force:
        raise StoreError(f"backup destination {destination} already exists",
                         hint="choose another name, or pass --force to overwrite it")
    if not where.is_dir():
        raise StoreError(f"backup destination {destination}: directory {where} does not exist",
                         hint="create it first, or choose another path")
    temporary = where / f".{destination.name}.{os.getpid()}.partial"
    try:
        fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.fchmod(fd, 0o600)  # whatever the umask: a store may hold secrets
        os.close(fd)
        copy = sqlite3.connect(temporary, isolation_level=None)
        try:
            store._db.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            check = copy.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"the backup of {store.path} failed its check: {check}")
            tasks = int(copy.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])
            schema = int(copy.execute("PRAGMA user_version").fetchone()[0])
        finally:
            copy.close()
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            temporary.replace(destination)
        else:
            destination.hardlink_to(temporary)  # refuses a file created meanwhile
            temporary.unlink()
    except FileExistsError as exc:
        raise StoreError(f"backup destination {destination} already exists",
                         hint="choose another name, or pass --force to overwrite it") from exc
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot write the backup {destination}: {_reason(exc)}",
                         hint="check free space and permissions where the backup goes"
                         ) from exc
    finally:
        for leftover in (temporary, temporary.with_name(temporary.name + "-journal")):
            with contextlib.suppress(OSError):
                leftover.unlink()
    return BackupInfo(store.path, destination, destination.stat().st_size, tasks, schema,
                      time.monotonic() - started)

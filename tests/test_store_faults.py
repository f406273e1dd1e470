"""The store under faults (issue 7 items 3, 6, 7, 8, 9): backups, read-only reads,
bounded write retries, a controller that survives, one clear line on a full disk.

Real SQLite files, real CLI processes.  Full and read-only disks are real: a
small tmpfs (mounted for the test; skipped where mounting is not allowed),
filled up or remounted read-only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from reconciler.errors import StoreError
from reconciler.store import base
from reconciler.store.sqlite import Store
from tests.e2e import add_task, reconcile_json
from tests.helpers import (
    gone,
    kill_processes_mentioning,
    one_error_line,
    reconcile,
    wait_for,
    write_spec,
)

# --------------------------------------------------------------------------- a small disk


class SmallDisk:
    """A tmpfs of a few MiB that a test can fill up, free, or make read-only."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def fill(self) -> None:
        """Write until the disk is full (ENOSPC)."""
        # unbuffered: a write that fails is not retried by close() (which would raise again)
        with self.filler.open("ab", buffering=0) as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        with contextlib.suppress(OSError), self.filler.open("ab", buffering=0) as out:
            while True:  # the last few bytes too
                out.write(b"\0" * 512)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.root)], check=True,
                       capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs",
                              str(root)], capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    disk = SmallDisk(root)
    try:
        yield disk
    finally:
        kill_processes_mentioning(str(root))  # what this test started there
        subprocess.run(["umount", "-l", str(root)], capture_output=True, check=False)


@pytest.fixture
def disk_state(host: Path, small_disk: SmallDisk, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The state directory on the small disk; store writes give up after 1 s."""
    state = small_disk.root / "state"
    monkeypatch.setenv("RECONCILER_STATE_DIR", str(state))
    monkeypatch.setenv("RECONCILER_STORE_RETRY", "1")
    return state


def store_path(state: Path, pool: str = "testpool") -> Path:
    return state / "pools" / pool / "store.db"


def no_traceback(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def error_after_retries(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit 1 with one ``error:`` line, after a ``warning:`` line per retry."""
    no_traceback(proc)
    *warnings, error = proc.stderr.splitlines()
    assert proc.returncode == 1 and error.startswith("error: "), proc.stderr
    assert warnings and all(w.startswith("warning: ") and "retry" in w for w in warnings)
    assert "failed for 1s" in error
    return error


# --------------------------------------------------------------------------- backup


WRITER = """
import sys, time
from pathlib import Path
from reconciler.store.sqlite import Store
store = Store(Path(sys.argv[1]))
n = 0
while True:
    n += 1
    store.add_tasks([(f"written {n}", "x" * 2000, 0)])
"""


class TestBackup:
    def test_backup_while_a_writer_is_busy_then_restore(self, host: Path) -> None:
        spec = write_spec(host)
        add_task(spec, title="first")
        store = store_path(host / "state")
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store)])
        try:
            with Store(store, readonly=True) as reader:
                wait_for(lambda: len(reader.tasks()) > 50, message="the writer to write")
            dest = host / "backup.db"
            document = reconcile_json("backup", "--pool", "testpool", str(dest))
            assert writer.poll() is None, "the writer kept writing throughout"
        finally:
            writer.kill()
            writer.wait()
        assert document["destination"] == str(dest) and document["tasks"] > 50
        assert dest.stat().st_mode & 0o777 == 0o600
        copy = sqlite3.connect(dest)
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        backed_up = copy.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        copy.close()
        assert backed_up == document["tasks"]
        with Store(store, readonly=True) as live:
            assert len(live.tasks()) > backed_up  # the writer went on after the snapshot

        # The README's restore procedure: controller stopped (none here), copy, apply.
        shutil.copyfile(dest, store)
        for suffix in ("-wal", "-shm"):
            store.with_name(store.name + suffix).unlink(missing_ok=True)
        restored = reconcile_json("task", "list", "--pool", "testpool")
        assert len(restored) == backed_up
        assert restored[0]["title"] == "first"
        assert add_task(spec, title="after the restore") == str(backed_up + 1)

    def test_existing_destination_needs_force(self, host: Path) -> None:
        add_task(write_spec(host), title="one")
        dest = host / "b.db"
        dest.write_text("precious")
        line = one_error_line(reconcile("backup", "--pool", "testpool", str(dest)))
        assert "already exists" in line and "--force" in line
        assert dest.read_text() == "precious"
        proc = reconcile("backup", "--pool", "testpool", str(dest), "--force", check=True)
        assert "1 task(s)" in proc.stdout
        assert dest.stat().st_mode & 0o777 == 0o600
        assert sqlite3.connect(dest).execute("SELECT title FROM tasks").fetchall() == [("one",)]

    def test_the_pools_own_store_is_never_a_destination(self, host: Path) -> None:
        """A newcomer's --force over store.db replaced it under running workers, which
        wrote on into the deleted file (issue 7 walk-through)."""
        add_task(write_spec(host), title="one")
        store = host / "state" / "pools" / "testpool" / "store.db"
        inode = store.stat().st_ino
        line = one_error_line(reconcile("backup", "--pool", "testpool", str(store), "--force"))
        assert "inside the pool's own state directory" in line
        assert store.stat().st_ino == inode

    @pytest.mark.parametrize(("where", "expected"), [
        pytest.param("missing/b.db", "does not exist", id="missing-directory"),
        pytest.param(".", "is a directory", id="a-directory"),
        pytest.param("fifo", "is a FIFO, not a regular file", id="a-fifo"),
    ])
    def test_bad_destination_is_one_line(self, host: Path, where: str, expected: str) -> None:
        add_task(write_spec(host), title="one")
        if where == "fifo":
            os.mkfifo(host / where)
        for force in ((), ("--force",)):  # --force would rename over a device or a FIFO
            line = one_error_line(reconcile("backup", "--pool", "testpool", str(host / where),
                                            *force))
            assert expected in line
        assert not list(host.glob("**/*.partial"))

    def test_a_full_disk_leaves_no_partial_backup(self, host: Path,
                                                  small_disk: SmallDisk) -> None:
        spec = write_spec(host)
        big = host / "big.txt"
        big.write_text("p" * 1_000_000)
        add_task(spec, title="one", prompt_file=big)
        small_disk.fill()
        dest = small_disk.root / "b.db"
        line = one_error_line(reconcile("backup", "--pool", "testpool", str(dest)))
        assert "cannot write the backup" in line and "disk is full" in line
        assert sorted(p.name for p in small_disk.root.iterdir()) == ["filler"]


# --------------------------------------------------------------------------- read-only reads


READS = [["status"], ["task", "list"], ["task", "show", "1"], ["events"], ["history"],
         ["diff"]]
OK_EXITS = {"status": (0, 3), "diff": (0, 2)}


def run_reads(spec: Path) -> dict[str, Any]:
    """Every read command with ``-o json``; each must succeed, with no traceback."""
    documents: dict[str, Any] = {}
    for argv in READS:
        proc = no_traceback(reconcile(*argv, "-f", str(spec), "-o", "json"))
        assert proc.returncode in OK_EXITS.get(argv[0], (0,)), (argv, proc.stderr)
        document = json.loads(proc.stdout)
        if argv == ["status"]:
            document.pop("observed_at")
        documents[" ".join(argv)] = document
    return documents


def test_read_commands_work_on_a_read_only_and_a_full_disk(
        host: Path, git_repo: Path, disk_state: Path, small_disk: SmallDisk) -> None:
    spec = write_spec(host, runtime="process")
    for title in ("one", "two"):
        add_task(spec, title=title)
    before = run_reads(spec)
    assert [t["title"] for t in before["task list"]] == ["one", "two"]

    store = store_path(disk_state)
    small_disk.remount("ro")
    try:
        assert run_reads(spec) == before
        line = error_after_retries(reconcile("task", "add", "-f", str(spec), "--title",
                                             "three"))
        assert "the state directory is read-only" in line
    finally:
        small_disk.remount("rw")

    small_disk.fill()
    stamp = (store.stat().st_mtime_ns, store.read_bytes())
    assert run_reads(spec) == before
    assert (store.stat().st_mtime_ns, store.read_bytes()) == stamp
    line = error_after_retries(reconcile("task", "add", "-f", str(spec), "--title", "big",
                                         "--prompt", "x" * 100_000))
    assert "disk is full" in line
    small_disk.free()
    assert add_task(spec, title="three") == "3"


def test_read_commands_do_not_write_the_store(host: Path, git_repo: Path) -> None:
    """``status`` and friends change nothing, so they wake no controller."""
    spec = write_spec(host)
    add_task(spec, title="one")
    store = store_path(host / "state")
    watcher = sqlite3.connect(store)
    version = watcher.execute("PRAGMA data_version").fetchone()[0]
    run_reads(spec)
    assert watcher.execute("PRAGMA data_version").fetchone()[0] == version
    watcher.close()


# --------------------------------------------------------------------------- write retries


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A short busy timeout; the retry warnings logged, collected."""
    monkeypatch.setattr(base, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(base, "RETRY_SECONDS", 10.0)
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    sink = Collect(level=logging.WARNING)
    logging.getLogger("reconciler").addHandler(sink)
    yield warnings
    logging.getLogger("reconciler").removeHandler(sink)


def hold_exclusive(path: Path, seconds: float) -> threading.Thread:
    """Another connection takes the write lock and keeps it for ``seconds``."""
    locked = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait(5)
    return thread


class TestWriteRetries:
    def test_a_write_waits_out_a_lock_held_beyond_the_busy_timeout(
            self, tmp_path: Path, quick_retries: list[str]) -> None:
        store = Store(tmp_path / "store.db")
        holder = hold_exclusive(store.path, 1.0)
        started = time.monotonic()
        (task_id,) = store.add_tasks([("t", "p", 0)])
        holder.join()
        assert time.monotonic() - started >= 0.8
        assert store.task(task_id).status == "queued"
        assert quick_retries and all("add_tasks failed" in w and "retry" in w
                                     for w in quick_retries)
        store.close()

    def test_it_gives_up_after_the_bound_with_one_line(
            self, tmp_path: Path, quick_retries: list[str],
            monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(base, "RETRY_SECONDS", 0.5)
        store = Store(tmp_path / "store.db")
        holder = hold_exclusive(store.path, 2.0)
        try:
            with pytest.raises(StoreError) as raised:
                store.add_tasks([("t", "p", 0)])
        finally:
            holder.join()
        line = raised.value.one_line()
        assert "add_tasks failed for 0.5s" in line and "locked" in line and "\n" not in line
        assert store.tasks() == []  # nothing half-written
        store.close()

    def test_a_full_disk_is_waited_out_and_nothing_is_lost(
            self, small_disk: SmallDisk, quick_retries: list[str]) -> None:
        store = Store(small_disk.root / "store.db")
        small_disk.fill()
        freer = threading.Timer(1.0, small_disk.free)
        freer.start()
        (task_id,) = store.add_tasks([("big", "x" * 500_000, 0)])
        freer.join()
        assert len(store.task(task_id).prompt) == 500_000
        assert any("database or disk is full" in w for w in quick_retries)
        store.close()

    def test_programming_and_constraint_errors_are_not_retried(
            self, tmp_path: Path, quick_retries: list[str]) -> None:
        calls = []

        class Faulty(Store):
            def duplicate(self) -> None:
                calls.append(1)
                with self.transaction() as db:
                    db.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
                    db.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")

        store = Faulty(tmp_path / "store.db")
        with pytest.raises(sqlite3.IntegrityError):
            store.duplicate()
        assert calls == [1] and quick_retries == []
        assert store._query("SELECT * FROM meta WHERE key = 'k'") == []  # rolled back
        store.close()

    def test_a_read_only_open_never_writes(self, tmp_path: Path) -> None:
        path = tmp_path / "store.db"
        Store(path).close()
        stamp = (path.stat().st_mtime_ns, path.read_bytes())
        with Store(path, readonly=True) as store:
            assert store.tasks() == []
            with pytest.raises(StoreError, match="read-only"):
                store.add_tasks([("t", "p", 0)])
        assert (path.stat().st_mtime_ns, path.read_bytes()) == stamp

    def test_a_read_only_open_refuses_an_empty_file(self, tmp_path: Path) -> None:
        path = tmp_path / "store.db"
        path.touch()
        with pytest.raises(StoreError, match="no schema"):
            Store(path, readonly=True)


# --------------------------------------------------------------------------- the controller


def controller_pid(spec: Path) -> int | None:
    proc = reconcile("status", "-f", str(spec), "-o", "json")
    document = json.loads(proc.stdout)
    running = document["controller"]["running"]
    pid: int | None = document["controller"]["pid"] if running else None
    return pid


def full_and_no_wal_room(disk: SmallDisk, store: Path) -> None:
    """Fill the disk, and empty the store's WAL so that the next write needs new space."""
    db = sqlite3.connect(store, isolation_level=None)
    wal = store.with_name(store.name + "-wal")
    try:
        def emptied() -> bool:
            disk.fill()
            busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            disk.fill()  # what the truncation freed
            return busy == 0 and wal.stat().st_size == 0
        wait_for(emptied, timeout=30, interval=0.05, message="an empty WAL on a full disk")
    finally:
        db.close()


def test_controller_survives_a_full_disk_delete_refuses_and_a_crash_is_logged(
        host: Path, git_repo: Path, disk_state: Path, small_disk: SmallDisk) -> None:
    spec = write_spec(host, runtime="process", replicas=0,
                      extra={"controller": {"enabled": True, "interval": "200ms"}})
    reconcile("apply", "-f", str(spec), check=True)
    pid = wait_for(lambda: controller_pid(spec), timeout=30, message="the controller")
    log = disk_state / "pools" / "testpool" / "logs" / "controller.log"
    # the pid is recorded when the controller is launched: wait until it runs (its log
    # open) before filling the disk, or it starts on a full disk with no log to read
    wait_for(lambda: log.exists() and "started" in log.read_text(), timeout=30,
             message="the controller to start and open its log")

    full_and_no_wal_room(small_disk, store_path(disk_state))
    def passes_fail() -> bool:
        """Said in its log, or, where the full disk has no room left even for a log
        line, shown by its heartbeat: every pass writes one, and none lands."""
        if log.read_text().count("pass failed") >= 2:
            return True
        with Store(store_path(disk_state), readonly=True) as store:
            info = store.controller()
        return info is not None and time.time() - (info.heartbeat_at or 0) > 3.0

    wait_for(passes_fail, timeout=30, message="the controller's passes to fail")
    assert psutil.pid_exists(pid) and not gone(pid), "the controller died of a full disk"

    # delete refuses at once with one line, before stopping anything
    line = one_error_line(reconcile("delete", "-f", str(spec), "--lock-timeout", "5s"))
    assert "No space left on device" in line or "disk is full" in line
    assert not gone(pid), "delete stopped the controller and then failed"

    small_disk.free()
    wait_for(lambda: "store works again" in log.read_text(), timeout=30,
             message="the controller to resume")
    assert controller_pid(spec) == pid
    with Store(store_path(disk_state), readonly=True) as store:
        info = store.controller()
        assert info is not None and not info.stop_requested
        wait_for(lambda: time.time() - (store.controller().heartbeat_at or 0) < 5,  # type: ignore[union-attr]
                 message="a fresh controller heartbeat")

    os.kill(pid, signal.SIGSEGV)  # what a SIGBUS on a mapped -shm would look like
    wait_for(lambda: gone(pid), timeout=10, message="the controller to die")
    text = log.read_text()
    assert "Fatal Python error: Segmentation fault" in text
    assert "controller.py" in text or "threading.py" in text  # its stacks

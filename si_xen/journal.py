"""A VM's journal: what its deploy made, written before each thing is made; it is the VM's record.

One file per VM, ``STATE_DIR/vms/NAME.journal``, JSON lines, each fsync'd before the
thing it names exists:

    {"begin": {...}}          the VM as planned, and who deploys it (record.VmRecord.begun)
    {"step": "disks"}         each step as it starts
    {"made": {"kind": ...}}   each thing (made.py) before it is made
    {"record": {...}}         the VM as made (record.VmRecord): the journal is complete

A failed or interrupted deploy replays the deletes in reverse and removes the journal;
after a crash (SIGKILL, power loss) the journal stays, si_lsxenvm shows the VM as
incomplete and si_rmxenvm replays the same deletes.

An update appends to a complete journal (:meth:`Journal.resume`):

    {"update": {...}}         from, to, mode, pid, started, delete: the steps and things after it
                              are the update's (State.update_steps, State.update_things)
    {"record": {...}}         the VM as updated: it replaces the old record and ends the update

and then :func:`rewrite` puts the journal back in the deploy's form (begin, made, record),
atomically. Until then the VM stays complete (its old record); si_rmxenvm undoes the
update's things, then the deploy's.

A rebuild (si_mkxenvm --rebuild, :meth:`Journal.replacing`) starts a new journal that keeps the
old one's content as its second line:

    {"replaces": {"begin": ..., "things": [...], "record": ..., "keep_old": bool}}

A rollback undoes the new things (made.Aside moves the old ones back) and writes the journal
back to that content (the VM exactly as before); si_rmxenvm undoes the new things, then the
replaced ones. Once the new record is in, the rebuild's discard rewrites the journal without it.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import Fatal
from .locks import LockBusy, exclusive, holder
from .made import Directory, Made
from .record import VmRecord
from .rollback import critical

KILL_AT = "SI_XEN_KILL_AT"  # tests: SIGKILL ourselves as this step starts (a crash there)


def vm_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "vms")


def path_of(state_dir: str, name: str) -> str:
    return os.path.join(vm_dir(state_dir), f"{name}.journal")


@dataclass
class State:
    """A journal read back: complete (``record``) or not (then ``step`` is where it stopped)."""

    name: str
    path: str
    begin: VmRecord | None = None
    steps: list[str] = field(default_factory=list)
    things: list[Made] = field(default_factory=list)
    record: VmRecord | None = None
    update: dict | None = None  # an unfinished update's entry
    update_steps: list[str] = field(default_factory=list)
    update_things: list[Made] = field(default_factory=list)
    replaces: dict | None = None  # a rebuild's: the replaced journal (begin, things, record, keep_old)
    replaced_things: list[Made] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.record is not None

    @property
    def step(self) -> str:
        return self.steps[-1] if self.steps else "start"

    @property
    def update_step(self) -> str:
        return self.update_steps[-1] if self.update_steps else "start"

    def _begin_update(self, entry: dict) -> None:
        """A second update entry before a record (run again after a crash) goes on with the
        same section: what the first made is still to undo."""
        self.update = entry

    def _end_update(self, record: VmRecord) -> None:
        self.record, self.update = record, None
        self.update_steps, self.update_things = [], []

    @property
    def pid(self) -> int | None:
        return self.begin.pid if self.begin else None

    def summary(self) -> str:
        """What an unfinished deploy left, in a few words."""
        counts: dict[str, int] = {}
        for t in self.things:
            counts[t.kind] = counts.get(t.kind, 0) + 1
        made = ", ".join(f"{n} {k}" for k, n in counts.items()) or "nothing yet"
        return f"pid {self.pid or '?'} stopped in step '{self.step}'; made: {made}"

    @property
    def vm(self) -> VmRecord:
        """What si_lsxenvm shows: the record, or the unfinished deploy's facts."""
        if self.record is not None:
            return self.record
        return (self.begin or VmRecord(self.name)).unfinished(self.step, [str(t) for t in self.things])


class Journal:
    """The writer, held by the one deploy of this VM (under its lock)."""

    def __init__(self, state_dir: str, name: str, begin: VmRecord):
        os.makedirs(vm_dir(state_dir), exist_ok=True)
        self.path, self._state_dir = path_of(state_dir, name), state_dir
        self.state = State(name, self.path, begin)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        # Synced with the first thing made: before it, a power cut loses nothing worth knowing.
        self._dir = vm_dir(state_dir)
        self._append({"begin": begin.to_json()}, sync=False)

    @classmethod
    def replacing(cls, state_dir: str, name: str, begin: VmRecord, old: State, keep_old: bool = False) -> Journal:
        """The writer of a rebuild: a new journal (``begin``, then ``replaces`` = ``old``'s begin,
        things and record) written beside the old one, synced and renamed over it: at every
        moment one of the two is the VM's journal, and the new one knows all the old one did."""
        replaces = {"begin": old.begin.to_json() if old.begin else None, "things": [t.to_json() for t in old.things],
                    "record": old.record.to_json() if old.record else None, "keep_old": keep_old}
        _write_atomic(state_dir, name, [{"begin": begin.to_json()}, {"replaces": replaces}])
        self = cls.__new__(cls)
        self.path, self._state_dir, self._dir = path_of(state_dir, name), state_dir, None
        self.state = State(name, self.path, begin, replaces=replaces, replaced_things=list(old.things))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        return self

    @classmethod
    def append_to(cls, state_dir: str, name: str) -> Journal:
        """A writer appending to the VM's journal as it is (after a rewrite: a rebuild's start)."""
        self = cls.__new__(cls)
        self.path, self._state_dir, self._dir = path_of(state_dir, name), state_dir, None
        self.state = load(state_dir, name)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        return self

    @classmethod
    def resume(cls, state_dir: str, name: str, update: dict) -> Journal:
        """The writer of an update: the VM's journal read back (``state``), then ``update``
        appended and synced (O_APPEND: what the journal holds stays)."""
        state = load(state_dir, name)
        if state is None or state.record is None:
            raise Fatal(f"VM '{name}' has no complete journal to update ({path_of(state_dir, name)})",
                        f"si_lsxenvm {name} shows what there is")
        if state.replaces is not None:  # its discard would be lost with the update's rewrite
            raise Fatal(f"VM '{name}' has a rebuild to tidy up (what it set aside is still there)",
                        f"run si_mkxenvm --rebuild {name} again, which finishes it first, or si_rmxenvm {name}")
        self = cls.__new__(cls)
        self.path, self._state_dir, self.state, self._dir = state.path, state_dir, state, None
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)  # read: a torn tail
        _drop_torn_tail(self._fd)
        with critical():
            self._append({"update": update})
            state._begin_update(update)
        return self

    def _append(self, entry: dict, sync: bool = True) -> None:
        os.write(self._fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
        if sync:
            os.fsync(self._fd)
            if self._dir:  # the journal's own name must survive a power cut too, once
                dfd = os.open(self._dir, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
                self._dir = None

    def step(self, name: str) -> None:
        # Not synced: it only says where a deploy stopped (a process crash still shows it; after a
        # power cut an earlier step may show). The next made entry's fsync carries it to disk.
        self._append({"step": name}, sync=False)
        (self.state.steps if self.state.update is None else self.state.update_steps).append(name)
        if os.environ.get(KILL_AT) == name:
            os.kill(os.getpid(), signal.SIGKILL)

    def made(self, thing: Made, create=None, *args) -> Made:
        """Journal ``thing``, then make it with ``create(*args)``; signals wait until both are done."""
        with critical():
            self._append({"made": thing.to_json()})
            (self.state.things if self.state.update is None else self.state.update_things).append(thing)
            if create:
                create(*args)
        return thing

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        """Each missing directory of ``path``, parents first, journaled (mkdir -p that undoes)."""
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for d in reversed(missing):
            self.made(Directory(d), os.mkdir, d, mode)

    def finish(self, record: VmRecord) -> None:
        with critical():
            self._append({"record": record.to_json()})
            self.state._end_update(record)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def rollback(self) -> list[str]:
        """Delete everything made, newest first; forget the VM unless something stayed. An
        update's: undo what it made, then the journal is the deploy's again (its old record)."""
        self.close()
        st = self.state
        if st.replaces is not None:  # a rebuild's: the new things go, the old ones come back
            return restore(self._state_dir, st)
        if st.update is not None:
            failed = undo(st.update_things)
            if not failed:
                rewrite(self._state_dir, st.name, st.begin, st.things, st.record)
                st.update, st.update_steps, st.update_things = None, [], []
            return failed
        failed = undo(st.things)
        if not failed:
            os.unlink(self.path)
        return failed


def _drop_torn_tail(fd: int) -> None:
    """Cut a last line a power cut left half written (load() skips it), so that what is
    appended next starts a line of its own."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    pos, step = size, 4096
    while pos > 0:
        start = max(0, pos - step)
        cut = os.pread(fd, pos - start, start).rfind(b"\n")
        if cut >= 0:
            os.ftruncate(fd, start + cut + 1)
            return
        pos = start
    os.ftruncate(fd, 0)


def rewrite(state_dir: str, name: str, begin: VmRecord | None, things: list[Made], record: VmRecord) -> None:
    """The VM's journal as a deploy leaves it (begin, made..., record), replacing the old one in
    one step: written beside it, fsynced, renamed over it, the directory fsynced. An update's
    section goes (update.py calls it once the new record is in; rollback with the old)."""
    lines = ([{"begin": begin.to_json()}] if begin else []) + [{"made": t.to_json()} for t in things] + \
        [{"record": record.to_json()}]
    _write_atomic(state_dir, name, lines)


def restore(state_dir: str, st: State) -> list[str]:
    """An unfinished rebuild undone: its things deleted newest first (the old ones' Asides move
    them back), then the journal is the replaced one again. Returns what could not be undone
    (then the journal stays as it is, for si_rmxenvm or the next --rebuild)."""
    failed = undo(st.things)
    if not failed:
        old = st.replaces
        rewrite(state_dir, st.name, VmRecord.from_json(old["begin"]) if old.get("begin") else None,
                st.replaced_things, VmRecord.from_json(old["record"]))
    return failed


def _write_atomic(state_dir: str, name: str, lines: list[dict]) -> None:
    path = path_of(state_dir, name)
    tmp = f"{path}.new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, "".join(json.dumps(e, sort_keys=True) + "\n" for e in lines).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    with critical():
        os.replace(tmp, path)
        dfd = os.open(vm_dir(state_dir), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def undo(things: list[Made], keep_disks: bool = False) -> list[str]:
    """Run each thing's delete, newest first; one failure does not stop the rest."""
    failed = []
    for t in reversed(things):
        if keep_disks and t.disk:
            continue
        try:
            t.delete()
        except Exception as e:
            failed.append(f"{t}: {e}")
    return failed


def load(state_dir: str, name: str) -> State | None:
    path = path_of(state_dir, name)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    st = State(name, path)
    for n, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
            if "made" in entry:
                (st.things if st.update is None else st.update_things).append(Made.from_json(entry["made"]))
            elif "step" in entry:
                (st.steps if st.update is None else st.update_steps).append(entry["step"])
            elif "begin" in entry:
                st.begin = VmRecord.from_json(entry["begin"])
            elif "record" in entry:
                st._end_update(VmRecord.from_json(entry["record"]))
            elif "update" in entry:
                st._begin_update(dict(entry["update"]))
            elif "replaces" in entry:
                st.replaces = dict(entry["replaces"])
                st.replaced_things = [Made.from_json(t) for t in st.replaces.get("things") or ()]
        except (ValueError, KeyError, TypeError) as e:
            if n == len(lines):
                break  # a power cut in the middle of the last line: what it named was not made yet
            raise Fatal(f"journal {path} is corrupt at line {n}: {e}", "repair or remove it by hand") from None
    return st


def all_states(state_dir: str) -> list[State]:
    try:
        names = sorted(n[:-8] for n in os.listdir(vm_dir(state_dir)) if n.endswith(".journal"))
    except FileNotFoundError:
        return []
    return [s for s in (load(state_dir, n) for n in names) if s]


def remove(state: State, keep_disks: bool = False) -> None:
    """Delete what the journal names, newest first, then the journal (si_rmxenvm, --force).
    An unfinished update's things go first, whole (its copies are no disks of the VM; a Swap
    leaves the VM's disk in place, see made.Swap), then the deploy's, then those of the VM a
    rebuild replaces (its Asides moved them back)."""
    failed = undo(state.update_things) + undo(state.things, keep_disks=keep_disks) + \
        undo(state.replaced_things, keep_disks=keep_disks)
    if failed:
        raise Fatal(f"could not remove all of VM '{state.name}': {'; '.join(failed)}",
                    f"fix that, then run si_rmxenvm {state.name} again (its journal {state.path} is kept)")
    os.unlink(state.path)


def deploying(state: State, lock_dir: str) -> bool:
    """Whether the journal's deploy is still running: its pid lives and holds the VM's lock."""
    pid = state.pid
    return (bool(pid) and pid != os.getpid() and os.path.exists(f"/proc/{pid}")
            and holder(os.path.join(lock_dir, f"{state.name}.lock")) == pid)


@contextmanager
def lock(lock_dir: str, name: str):
    """One si_* command per VM name at a time (a dead holder holds nothing)."""
    path = os.path.join(lock_dir, f"{name}.lock")
    held = False
    try:
        with exclusive(path, wait=False):
            held = True
            yield
    except LockBusy as e:
        if held:
            raise
        who = f" (pid {e.pid})" if e.pid else ""
        raise Fatal(f"another si_* command{who} is working on VM '{name}' ({path})", "wait for it to finish") from None

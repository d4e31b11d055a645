import os
import signal

import pytest

from si_xen.rollback import Interrupted, Undo, signals_raise


def test_undo_runs_newest_first_and_survives_failures():
    done = []
    u = Undo()
    u.push("a", done.append, "a")
    u.push("boom", lambda: 1 / 0)
    u.push("c", done.append, "c")
    failed = u.pop_all()
    assert done == ["c", "a"] and len(failed) == 1 and failed[0].startswith("boom")
    assert u.pop_all() == []


def test_forget_keeps_everything():
    done = []
    u = Undo()
    u.push("a", done.append, "a")
    u.forget()
    assert u.pop_all() == [] and done == []


def test_sigterm_becomes_an_exception_that_unwinds():
    with pytest.raises(Interrupted) as e:
        with signals_raise():
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill() returns
    assert e.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

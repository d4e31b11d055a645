import os
import signal

import pytest

from si_xen.rollback import Interrupted, signals_raise


def test_sigterm_becomes_an_exception_that_unwinds():
    with pytest.raises(Interrupted) as e:
        with signals_raise():
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill() returns
    assert e.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

import os
import signal
import threading
import time

import pytest

from si_xen import proc


def test_run_returns_output_and_checks_codes(fp):
    fp.register(["sh", "-c", "x"], stdout="out\n", stderr="err\n", returncode=3, occurrences=2)
    r = proc.run(["sh", "-c", "x"], ok=(3,))
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    with pytest.raises(proc.ProcError, match="sh exited 3: err"):
        proc.run(["sh", "-c", "x"])


def test_argv_must_be_a_list():
    with pytest.raises(TypeError):
        proc.run([])


def test_stream_splits_progress_lines(fp):
    fp.register(["rsync", "--info=progress2"], stdout=b"a\rb\nc\n")
    lines = []
    proc.stream(["rsync", "--info=progress2"], lines.append)
    assert lines == ["a", "b", "c"]


@pytest.mark.allow_subprocess(reason="the process group kill is the OS's: only a real child and grandchild show it")
def test_stream_kills_the_whole_group_when_interrupted(tmp_path):
    pidfile = tmp_path / "child"

    def interrupt():
        while not pidfile.exists() or not pidfile.read_text().strip():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            proc.stream(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], lambda line: None)
    finally:
        signal.signal(signal.SIGUSR1, old)
    grandchild = int(pidfile.read_text())
    time.sleep(0.2)
    try:
        with open(f"/proc/{grandchild}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z"), "the copy's helper processes must die with it"


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


@pytest.mark.parametrize("start", [
    proc.run, lambda a: proc.stream(a, print), lambda a: proc.reading(a, None).__enter__(), proc.start,
    proc.attached, proc.Begun,
], ids=["run", "stream", "reading", "start", "attached", "Begun"])
def test_a_string_argv_is_refused(start, fp):
    """A str would be one argument per character ("ls -l" runs l with "s", " ", "-"...)."""
    fp.register(["l", "s", " ", "-", "l"])  # what the old tuple(str(a) for a in argv) ran
    with pytest.raises(TypeError, match="not a string"):
        start("ls -l")
    assert fp.call_count(["l", "s", " ", "-", "l"]) == 0


def test_stream_splits_progress_lines(fp):
    fp.register(["rsync", "--info=progress2"], stdout=b"a\rb\nc\n")
    lines = []
    proc.stream(["rsync", "--info=progress2"], lines.append)
    assert lines == ["a", "b", "c"]

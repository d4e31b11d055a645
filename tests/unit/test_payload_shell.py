"""The dom0 payload's shell scripts run under pipefail, where `cmd | grep -q X` fails at random:
grep exits at its first match and cmd, still writing (si_* commands run unbuffered there), dies of
the broken pipe. A CI run lost update_lvm to it; the scripts match on whole outputs instead."""
import re
import subprocess
from pathlib import Path

import pytest

PAYLOAD = Path(__file__).resolve().parents[1] / "system" / "payload"
EARLY_EXIT_GREP = re.compile(r"(?<!\|)\|(?!\|)\s*grep\s+(-[a-zA-Z]*q|--quiet|.*\s-[a-zA-Z]*q\b)")  # not ||


def test_no_early_exit_grep_at_the_end_of_a_pipe():
    found = [f"{p.name}:{n}: {line.strip()}" for p in sorted(PAYLOAD.glob("*.sh"))
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if not line.lstrip().startswith("#") and EARLY_EXIT_GREP.search(line)]
    assert not found, "use grep -q X <<< \"$(cmd)\":\n" + "\n".join(found)


@pytest.mark.allow_subprocess(reason="bash's own pipe semantics are what is checked")
def test_the_race_is_real_and_the_here_string_form_avoids_it():
    """A writer that goes on past a pipe's buffer after the match: the piped form fails under
    pipefail (the writer's SIGPIPE), ours does not."""
    writer = "f() { echo match; seq 300000; }"
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {writer}; f | grep -q match"])
    whole = subprocess.run(["bash", "-c", f'set -o pipefail; {writer}; grep -q match <<< "$(f)"'])
    assert piped.returncode != 0 and whole.returncode == 0

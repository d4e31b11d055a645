"""The speed machinery, in one object: work begun early so that the steps needing it find it done.

- the image walk (a stat of every inode, ~0.1 s) runs in a forked child while the command
  starts up and plans (proc.Ahead);
- the SSH host keys the guest's sshd loads are taken from the key stock or made by
  ssh-keygen in the background while the image is planned and copied (hostkeys.Prefetch);
- during a long copy, the key stock is refilled on the spare CPU, a key at a time between
  steps (``tick``), and whatever is still running is settled at the end (``settle``);
- the fixups' and config step's modules and template are loaded by a thread while the first
  steps wait for mkfs, mount and fsync.

None of it decides what is made: a piece that fails leaves its work to the step that needs it.
A deploy without a head start (``Headstart()``) does the same work, later.
"""

from __future__ import annotations

import os
import threading

from . import hostkeys, proc, sshdconfig
from .image import survey


class Headstart:
    def __init__(self, state_dir: str | None = None, walk: proc.Ahead | None = None,
                 keys: hostkeys.Prefetch | None = None):
        self.state_dir, self.walk, self.keys = state_dir, walk, keys
        self._refill = None

    @classmethod
    def start(cls, image, hostnames, state_dir: str, dry_run: bool) -> Headstart:
        """At a command's start: the walk, and one VM's keys (a batch's workers make their own)."""
        if dry_run:
            return cls(state_dir)
        hs = cls(state_dir, proc.Ahead(survey.survey, image.path, os.path.join(state_dir, "images")))
        try:
            if len(hostnames) == 1:  # RSA keys take long: started now, for the identity fixup
                hs.keys = _prefetch(image, hostnames[0], state_dir)
        except BaseException:
            hs.close()
            raise
        return hs

    @classmethod
    def for_vm(cls, image, hostname: str, state_dir: str) -> Headstart:
        """A batch worker's: its VM's keys only (the walk is the command's)."""
        return cls(state_dir, keys=_prefetch(image, hostname, state_dir))

    def keys_dir(self) -> str | None:
        """The prefetched keys' directory, once they are made (the identity fixup takes them)."""
        return self.keys.ready() if self.keys is not None else None

    def beside_steps(self, long_copy: bool, template_dir: str | None, config_step: bool) -> None:
        """As a deploy's steps begin: the later steps' modules warmed; with a long copy ahead
        (no base to clone) the key stock refilled on the CPU the copy leaves idle."""
        threading.Thread(target=_warm_steps, args=(template_dir, config_step), daemon=True).start()
        if long_copy and self.state_dir:
            self._refill = hostkeys.Stock(self.state_dir).refill() or None

    def tick(self) -> None:
        if self._refill is not None:
            self._refill.tick()

    def settle(self) -> None:
        if self._refill is not None:
            self._refill.settle()
            self._refill = None

    def close(self) -> None:
        """End what still runs: a walk not waited for, keys no VM took (back to the stock)."""
        self.settle()
        for thing in (self.walk, self.keys):
            if thing is not None:
                thing.close()


def _prefetch(image, hostname: str, state_dir: str) -> hostkeys.Prefetch:
    with image.reading():
        types = sshdconfig.key_types(image.guest)
    return hostkeys.Prefetch(types, hostname, hostkeys.Stock(state_dir))


def _warm_steps(template_dir: str | None, config: bool) -> None:
    """Load what the fixups and config steps import and compile (~60 ms of a further VM's
    0.2 s) while the steps before them wait for mkswap, mount and fsync."""
    try:
        from . import domain
        from .fixups import run_all  # noqa: F401
        from .fixups.spec import spec_from_plan  # noqa: F401

        if config:
            domain.load(template_dir)
    except Exception:  # only a warmer: the steps themselves report what is wrong
        pass

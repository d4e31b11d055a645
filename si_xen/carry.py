"""The identity a rebuild carries from a VM's old disks to its new ones (design §4 "carry").

Read from the old tree mounted read-only (drift's way: ``unshare --mount --propagation
private python3 -m si_xen.carry SPEC``, so that even a SIGKILL leaves no mount, and a ro loop
device is read-only and autoclear) and written under ``state_dir/carry/HOST/`` laid out as the
guest's tree, mode 0700, synced, each file with its mode and numeric owner: the identity fixup
(GuestSpec.identity_dir) writes it into the new VM byte for byte, with both. What is carried:

- every /etc/ssh/ssh_host_* file, and each HostKey of the old sshd config (and its .pub);
- /etc/machine-id, and /var/lib/dbus/machine-id when it is a regular file (not the usual link);
- cloud-init's NoCloud meta-data (its instance-id: the cloudinit fixup keeps it for the VM).

Regular files only, found through guestfs.Guest: a guest symlink never leads out of the tree.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile

from . import proc

FILES = ("etc/machine-id", "var/lib/dbus/machine-id", "var/lib/cloud/seed/nocloud/meta-data")


def carry_dir(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "carry", name)


def identity_paths(guest) -> list[str]:
    """The guest paths (no leading /) of the identity a rebuild keeps, regular files only."""
    from . import sshdconfig

    paths = set(guest.glob("/etc/ssh", "ssh_host_*"))
    try:
        for key in sshdconfig.vm_keys(guest):
            paths.update((key.path, key.path + ".pub"))
    except Exception:  # an sshd config unreadable: the keys in /etc/ssh are carried all the same
        pass
    paths.update("/" + f for f in FILES)
    return sorted(p.lstrip("/") for p in paths if _regular(guest, p))


def _regular(guest, gpath: str) -> bool:
    from .guestfs import GuestPathError

    try:
        return not guest.islink(gpath) and guest.isfile(gpath)
    except GuestPathError:  # a link loop: nothing to carry there
        return False


def save(root: str, dest: str) -> list[str]:
    """Copy the identity of the tree ``root`` to ``dest`` (existing, empty), bytes, mode and owner; each
    file and directory synced. Returns the guest paths copied."""
    from .guestfs import Guest

    g, done = Guest(root), []
    for gpath in identity_paths(g):
        src = g.path(gpath, follow=False)
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            data = b""
            while chunk := os.read(fd, 1 << 16):
                data += chunk
        finally:
            os.close(fd)
        out = os.path.join(dest, gpath)
        os.makedirs(os.path.dirname(out), mode=0o700, exist_ok=True)
        wfd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(wfd, data)
            os.fchown(wfd, st.st_uid, st.st_gid)  # the guest's numbers: RHEL's keys are root:ssh_keys 0640
            os.fchmod(wfd, stat.S_IMODE(st.st_mode))
            os.fsync(wfd)
        finally:
            os.close(wfd)
        done.append(gpath)
    for d, _dirs, _files in os.walk(dest, topdown=False):
        os.chmod(d, 0o700)  # makedirs' mode is the last directory's only
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return done


def read_vm(rec, dest: str, lock_dir: str) -> list[str]:
    """Carry the identity of VM ``rec`` (stopped) to ``dest``, read in a private mount namespace."""
    return _read(rec.name, [[d.target, d.fs, d.mountpoint] for d in rec.disks],
                 {"storage": rec.storage, "root": rec.storage_root, "pool": rec.thin_pool, "lock_dir": lock_dir}, dest)


def read_disk(name: str, path: str, fs: str, dest: str) -> list[str]:
    """Carry the identity of the root filesystem ``fs`` on ``path`` (Ganeti's disk 0) to ``dest``."""
    return _read(name, [[path, fs, "/"]], {"storage": "given", "root": "", "pool": None, "lock_dir": ""}, dest)


def _read(name: str, disks: list, where_from: dict, dest: str) -> list[str]:
    run_dir = "/run" if os.path.isdir("/run") else "/tmp"
    where = tempfile.mkdtemp(prefix=f"si-xen.{name}.carry-", dir=run_dir)
    spec = {"disks": disks, **where_from, "where": where, "dest": dest}
    try:
        argv, env = proc.in_mount_namespace(__name__, json.dumps(spec))
        out = proc.run(argv, env=env).stdout
    finally:
        os.rmdir(where)  # our mounts were never seen here
    return json.loads(out or "[]")


def child(spec: dict) -> list[str]:
    """In the private namespace: mount read-only, copy, unmount (the namespace's end would too)."""
    from .record import DiskRecord
    from .storage import backend
    from .storage.mount import mount_tree_ro

    disks = [DiskRecord("", mp, fs, "", target) for target, fs, mp in spec["disks"]]
    b = backend(spec["storage"], spec["root"], spec["pool"], spec["lock_dir"])
    mounted, _skipped = mount_tree_ro(disks, b, spec["where"])
    try:
        return save(spec["where"], spec["dest"])
    finally:
        for m in reversed(mounted):
            proc.run(["umount", m])


def main(argv: list[str]) -> int:
    sys.stdout.write(json.dumps(child(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A captured VM made fit for physical machines again (V2P): every file si-xen wrote in the VM put
back as its image had it. The fixups record what they touch (the record's ``owned``, fixup ->
guest paths, and ``owned_facts``); the VM's image generation is known by its manifest. So each
owned path of the staging copy gets:

1. kept as the VM has it, and listed, when the VM changed it after si-xen wrote it (its facts are
   no longer the recorded ones): the admin's edit of a si-xen file is theirs to judge;
2. the image's version, when the image still holds the generation's (its facts equal the
   manifest's): content, mode, owner, mtime and xattrs, a hard link made again;
3. else the golden client's copy that the network fixup kept in the VM (fixups/aside.py's MANIFEST:
   a file moved back, an enablement link made again);
4. else, for a path the generation never had, removal (a directory only once empty);
5. else it stays as si-xen wrote it, and is listed.

Kernels and initramfs images the VM installed or rebuilt are listed too (a guest's may hold only
Xen's drivers). The directories touched (and /proc, /tmp...) get the generation's mtime back, and
/var/lib/si-xen goes. identity.py then removes what makes one machine (identity paths are never
"changed in the VM" here). The copy is untrusted: every path goes through guestfs.Guest, nothing
of it is run. What one reversal amounts to, per fixup, is REVERSAL (for the man page).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import stat
from collections.abc import Callable

from si_xen import populate
from si_xen.errors import Fatal
from si_xen.fixups import aside
from si_xen.guestfs import Guest, GuestPathError
from si_xen.image import manifest

from . import identity

SI_XEN_DIR = "/var/lib/si-xen"  # everything si-xen keeps in a VM (the golden network files)

# How each fixup's changes are undone by ``reverse`` (all by the same rule, restated per fixup for
# si_getxenimage(8)); a fixup missing here fails the unit tier.
REVERSAL = {
    "hwclock": "the hwclock start links, upstart jobs, udev RTC rule and the /dev/null masks: the image's again",
    "console": "inittab, the ttyN jobs and getty links, securetty, console=: the image's again; the hvc0 getty "
               "link, its drop-in and the getty-static mask removed",
    "macs": "the persistent-net rules back (then removed as identity); .link files from the image or the golden copy",
    "network": "every stack's config and enablement link as the image had it (else the golden copy kept in "
               "/var/lib/si-xen/golden), the VM's own configs removed, resolv.conf back",
    "hostname": "/etc/hostname, /etc/hosts, /etc/mailname, HOSTNAME=: the golden client's again",
    "identity": "the image's files back, then removed or emptied as identity (capture/identity.py)",
    "cloudinit": "the NoCloud seed, 99_si-xen.cfg and cloud-init.disabled removed (the image's again); the golden "
                 "client's cloud-init instance data stays out (identity)",
    "kernel": "modules copied for a supplied kernel removed; the initramfs driver lines removed",
    "fstab": "/etc/fstab: the golden client's again (its own device names)",
    "bootloader": "root=, resume=, device.map, RESUME=: the golden client's again",
    "systemimager": "IMAGE_LAST_SYNCED_TO: the image's, or removed",
    "issue": "/etc/issue without the VM's address line",
    "boot": "grub.cfg written for pygrub: the image's again; grub.cfg.si-xen-orig and the Xen-sized NAME.xen initramfs removed",
}

BOOT_FILE = re.compile(r"(vmlinu[xz]|bzImage|kernel|initrd(\.img)?|initramfs)-.+")


def _sec(facts) -> tuple:
    """Facts as compared: mode, owner, size, mtime to the second (a copy may drop nanoseconds)."""
    return (facts[0], facts[1], facts[2], facts[3], facts[4] // 10**9)


class _Reverser:
    def __init__(self, tree: str, rec, facts_dir: str, excluded: Callable[[str], bool] | None = None):
        self.excluded = excluded or (lambda p: False)
        self.g = Guest(tree)
        self.image = Guest(rec.image_path) if rec.image_path and os.path.isdir(rec.image_path) else None
        self.gen = manifest.load(facts_dir, rec.image_fingerprint) if rec.image_fingerprint else None
        self.rec = rec
        self.golden = aside.read_manifest(self.g)
        self.notes: list[str] = []
        self.counts = {"image": 0, "golden": 0, "removed": 0}
        self.dirs: set[str] = set()  # directories whose entries changed: their mtimes go back
        self.owner = {p: name for name, paths in rec.owned.items() for p in paths}

    # -- what to restore ------------------------------------------------------------------
    def paths(self) -> list[str]:
        """Every owned path (a tree's entries, in the copy and in the generation) and every
        golden original."""
        out = set(self.golden)
        for p in self.owner:
            if not p.endswith("/"):
                out.add(p)
                continue
            top = p.rstrip("/")
            out.add(top)
            out |= {q for q in (self.gen or {}) if q.startswith(p)}
            try:
                host = self.g.path(top, follow=False)
            except GuestPathError:
                continue  # a link loop planted on the way: restore() names the path
            if os.path.isdir(host) and not os.path.islink(host):
                for d, dirs, files in os.walk(host):
                    out |= {top + "/" + os.path.relpath(os.path.join(d, n), host) for n in dirs + files}
        return sorted(p for p in out if not self.excluded(p))

    def image_has(self, p: str):
        """The generation's facts of ``p`` if the image still holds them, else None."""
        if self.image is None:
            return None
        try:
            now = self.image.facts(p)
        except GuestPathError:
            return None
        if now is None:
            return None
        want = self.gen.get(p) if self.gen is not None else None
        if want is None:
            return now if self.gen is None else None  # no manifest: the image as it is now
        if stat.S_ISDIR(want[0]):
            return now if stat.S_ISDIR(now[0]) and now[:3] == list(want[:3]) else None
        if now != list(want[:5]):
            return None
        if stat.S_ISLNK(want[0]) and self.image.readlink(p) != want[6]:
            return None
        return now

    def never_had(self, p: str) -> bool:
        if self.gen is not None:
            return p not in self.gen
        return self.image is not None and self.image.facts(p) is None

    # -- one path -------------------------------------------------------------------------
    def changed_in_vm(self, p: str) -> bool:
        if p not in self.rec.owned_facts or identity.is_identity(p):
            return False
        was, now = self.rec.owned_facts[p], self.g.facts(p)
        if was is None or now is None:
            return (was is None) != (now is None)
        if stat.S_ISDIR(was[0]) or stat.S_ISDIR(now[0]):
            return stat.S_IFMT(was[0]) != stat.S_IFMT(now[0])
        return _sec(was) != _sec(now)

    def restore(self, p: str) -> str | None:
        """Put ``p`` back; returns where from ("image", "golden") or "remove", or raises _Cannot."""
        if self.changed_in_vm(p):
            if self.g.facts(p) is None:
                raise _Cannot(f"{p}: removed in the VM since si-xen wrote it ({self._who(p)}); left out")
            raise _Cannot(f"{p}: changed in the VM since si-xen wrote it ({self._who(p)}); kept as the VM has it")
        facts = self.image_has(p)
        if facts is not None:
            self._from_image(p, facts)
            return "image"
        if p in self.golden:
            self._from_golden(p, *self.golden[p])
            return "golden"
        if self.never_had(p):
            return "remove"
        if self.image is None:
            raise _Cannot(f"{p}: the image {self.rec.image_path or '?'} is gone; left as si-xen wrote it ({self._who(p)})")
        raise _Cannot(f"{p}: the image no longer holds the version the VM was made from; "
                      f"left as si-xen wrote it ({self._who(p)})")

    def _who(self, p: str) -> str:
        name = self.owner.get(p) or next((n for t, n in self.owner.items() if t.endswith("/") and p.startswith(t)), None)
        return f"fixup {name}" if name and name != "boot" else "the boot step" if name else f"kept in /{aside.GOLDEN}"

    def _clear(self, host: str, p: str, for_dir: bool = False) -> None:
        """Room for a new entry at ``host``: a file or link there goes; a directory stays (and
        must be empty to go)."""
        if os.path.isdir(host) and not os.path.islink(host):
            if for_dir:
                return
            try:
                os.rmdir(host)
            except OSError:
                raise _Cannot(f"{p}: the VM has a directory there, not empty; left as it is") from None
        elif os.path.lexists(host):
            os.unlink(host)

    def _from_image(self, p: str, facts: list) -> None:
        src = self.image.path(p, follow=False)
        dst = self.g.path(p, follow=False)
        os.makedirs(os.path.dirname(dst), exist_ok=True)  # made by a removed fixup dir's restore
        mode = facts[0]
        if stat.S_ISDIR(mode):
            self._clear(dst, p, for_dir=True)
            if not os.path.isdir(dst):
                os.mkdir(dst)
        elif stat.S_ISLNK(mode):
            self._clear(dst, p)
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(mode):
            self._clear(dst, p)
            tmp = _tmp_name(dst)
            with open(src, "rb") as fi, open(tmp, "xb") as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
            os.replace(tmp, dst)
        else:
            raise _Cannot(f"{p}: a special file in the image; left as it is")
        # xattrs after chown: chown drops security.capability (a ping's cap_net_raw would be lost)
        os.chown(dst, facts[1], facts[2], follow_symlinks=False)
        if not stat.S_ISLNK(mode):
            os.chmod(dst, stat.S_IMODE(mode))
        _xattrs(src, dst, mode)
        os.utime(dst, ns=(facts[4], facts[4]), follow_symlinks=False)
        self._relink(p, dst, facts)

    def _relink(self, p: str, dst: str, facts: list) -> None:
        """A file hard-linked in the image is linked again to a name of its group in the copy."""
        group = self.gen.get(p, (0,) * 7)[5] if self.gen else 0
        if not group:
            return
        for q, f in self.gen.items():
            if f[5] != group or q == p or q in self.owner:
                continue
            other = self.g.facts(q)
            if other and stat.S_ISREG(other[0]) and _sec(other) == _sec(facts):
                tmp = _tmp_name(dst)
                os.link(self.g.path(q, follow=False), tmp)
                os.replace(tmp, dst)
                return

    def _from_golden(self, p: str, kind: str, where: str) -> None:
        dst = self.g.path(p, follow=False)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if kind == "link":
            self._clear(dst, p)
            os.symlink(where, dst)
            return
        if not self.g.isfile(where) or self.g.islink(where):
            raise _Cannot(f"{p}: its golden copy {where} is missing; left as si-xen wrote it ({self._who(p)})")
        src = self.g.path(where, follow=False)
        self._clear(dst, p)
        tmp = _tmp_name(dst)
        shutil.copyfile(src, tmp, follow_symlinks=False)
        shutil.copystat(src, tmp, follow_symlinks=False)
        os.replace(tmp, dst)

    def remove(self, p: str) -> None:
        host = self.g.path(p, follow=False)
        if os.path.isdir(host) and not os.path.islink(host):
            try:
                os.rmdir(host)
            except OSError:
                raise _Cannot(f"{p}: a directory si-xen made, holding files of the VM's; kept") from None
        elif os.path.lexists(host):
            os.unlink(host)
        else:
            return
        self.counts["removed"] += 1

    # -- the whole ------------------------------------------------------------------------
    def run(self) -> None:
        gone = []
        for p in self.paths():
            try:
                how = self.restore(p)
            except (_Cannot, GuestPathError) as e:
                self.notes.append(str(e))
                continue
            except OSError as e:
                self.notes.append(f"{p}: {e.strerror or e}; left as it is")
                continue
            self.dirs.add(posixpath.dirname(p))
            if how == "remove":
                gone.append(p)
            else:
                self.counts[how] += 1
        for p in sorted(gone, key=lambda p: (-p.count("/"), p)):  # a directory's entries first
            try:
                self.remove(p)
            except (_Cannot, GuestPathError) as e:
                self.notes.append(str(e))
        self.drop_si_xen()
        # made anew by the deploy: the directories whose entries no VM gets (/proc, /tmp...), and
        # each filesystem's top (its mkfs made it)
        self.dirs |= {x[:-2] for x in populate.EXCLUDES if x.startswith("/") and x.endswith("/*")}
        self.dirs |= {d.mountpoint for d in self.rec.disks if d.mountpoint}
        self.dir_times()
        self.boot_files()

    def boot_files(self) -> None:
        """Kernels and initramfs images the VM installed or rebuilt: a Xen guest's (host-only, or a
        cloud kernel) may lack the physical machine's drivers. Not si-xen's to undo: listed."""
        if self.gen is None:
            return
        for gpath in self.g.glob("boot", "*"):
            p = "/" + gpath
            if not BOOT_FILE.match(p.rsplit("/", 1)[1]) or p in self.owner:
                continue
            now, want = self.g.facts(p), self.gen.get(p)
            if now is None or stat.S_ISDIR(now[0]):
                continue
            if want is None:
                self.notes.append(f"{p}: installed in the VM, not in the image: check that it boots the physical "
                                  "machines (a Xen guest's initramfs may hold only Xen's drivers: rebuild it there)")
            elif _sec(now) != _sec(want):
                self.notes.append(f"{p}: rebuilt in the VM since the image: its drivers may be only Xen's "
                                  "(update-initramfs -u / dracut -f on the physical machine)")

    def drop_si_xen(self) -> None:
        """/var/lib/si-xen goes, but what the generation itself has there (an image of a VM)."""
        try:
            host = self.g.path(SI_XEN_DIR, follow=False)
        except GuestPathError:
            return
        if not os.path.lexists(host):
            return
        if self.gen is not None and any(q == SI_XEN_DIR or q.startswith(SI_XEN_DIR + "/") for q in self.gen):
            for d, dirs, files in os.walk(host, topdown=False):
                for n in files + dirs:
                    h = os.path.join(d, n)
                    q = SI_XEN_DIR + "/" + os.path.relpath(h, host)
                    if q not in self.gen:
                        with contextlib.suppress(OSError):
                            os.rmdir(h) if os.path.isdir(h) and not os.path.islink(h) else os.unlink(h)
        elif os.path.isdir(host) and not os.path.islink(host):
            shutil.rmtree(host)  # never follows a link inside
        else:
            os.unlink(host)
        self.dirs.add(posixpath.dirname(SI_XEN_DIR))

    def dir_times(self) -> None:
        """The directories whose entries were restored or removed get the generation's mtime (and
        its mode and owner: a filesystem's top is mkfs's)."""
        for d in sorted(self.dirs, key=lambda d: -d.count("/")):
            want = self.gen.get(d) if self.gen is not None and d != "/" else None
            if want is None and self.image is not None:
                want = self.image.facts(d)
            try:
                host = self.g.path(d, follow=False)
                if want is None or not stat.S_ISDIR(want[0]) or not os.path.isdir(host) or os.path.islink(host):
                    continue
                st = os.lstat(host)
                if (st.st_uid, st.st_gid) != tuple(want[1:3]):
                    os.chown(host, want[1], want[2])
                if st.st_mode != want[0]:
                    os.chmod(host, stat.S_IMODE(want[0]))
                os.utime(host, ns=(want[4], want[4]))
            except (OSError, GuestPathError):
                continue

    def summary(self) -> str:
        c = self.counts
        return (f"reversed si-xen's changes: {c['image']} paths as the image has them, {c['golden']} from the "
                f"golden copies kept in the VM, {c['removed']} removed; {len(self.notes)} not reversed")


class _Cannot(Exception):
    """A path that stays as it is, and why (a line of reverse's list)."""


def _tmp_name(dst: str) -> str:
    return os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.si-xen-{os.urandom(4).hex()}")


def _xattrs(src: str, dst: str, mode: int) -> None:
    """The image entry's extended attributes (SELinux labels, ACLs) on the restored one."""
    if stat.S_ISLNK(mode):
        return
    with contextlib.suppress(OSError):
        for name in os.listxattr(dst):
            os.removexattr(dst, name)
        for name in os.listxattr(src):
            os.setxattr(dst, name, os.getxattr(src, name))


def reverse(tree: str, rec, facts_dir: str, say: Callable[[str], None],
            excluded: Callable[[str], bool] | None = None) -> list[str]:
    """Undo in ``tree`` (the staging copy of VM ``rec``, a VmRecord) what si-xen wrote; returns
    what could not be undone, a line each (module docstring: the rule). ``excluded``: the guest
    paths ("/etc/hostname") the copy left out on purpose (getimage.exclude), left alone here: not
    brought back from the image, nor reported as removed in the VM."""
    if not os.path.isdir(tree):
        raise Fatal(f"capture: {tree} is not a directory", "give the staging copy of the VM")
    r = _Reverser(tree, rec, facts_dir, excluded)
    if not rec.owned:
        r.notes.append(f"the record of {rec.name} names no file si-xen wrote (made by si-xen before 0.2, or by "
                       "xen-tools' hooks): "
                       "only the golden network files kept in the VM are restored; check /etc/fstab, the gettys "
                       "and the hwclock setup by hand")
    if r.gen is None and rec.owned:
        r.notes.append(f"the manifest of image generation {rec.image_fingerprint or '?'} is gone: si-xen's files "
                       f"were put back as the image {rec.image_path or '?'} has them now")
    r.run()
    say(r.summary())
    return r.notes


__all__ = ["REVERSAL", "reverse"]

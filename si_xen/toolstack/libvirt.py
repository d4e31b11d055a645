"""libvirt's libxl driver as the toolstack (``--toolstack libvirt``): the VM is a persistent
libvirt domain, defined from the XML beside its xl.cfg (xml_path), started at the dom0's
boot by libvirt's autostart (never also /etc/xen/auto: xendomains would start it a second time),
started, attached, shut down and destroyed through ``virsh -c xen:///system``.

The journaled things that undo a definition and an autostart are made.LibvirtDefinition and
made.LibvirtAutostart; they call :func:`find_virsh` again at undo time (a crash's recovery has
no toolstack object of ours).
"""

from __future__ import annotations

import re
import tempfile
import xml.etree.ElementTree as ET
from time import monotonic, sleep  # by name: a test fakes this module's clock
from xml.sax.saxutils import escape

from .. import proc
from ..errors import Fatal
from . import run

URI = "xen:///system"  # libvirtd's libxl driver (xen:/// is the same)
FIX = ("install libvirt-daemon-driver-xen and libvirt-daemon-system and start libvirtd "
       "(systemctl start libvirtd) on the Xen dom0, or use --toolstack xl")


def xml_path(cfg_path: str) -> str:
    """Where the deploy writes the libvirt XML it defines: beside the xl.cfg (``/etc/xen/NAME.xml``
    for NAME.cfg). Only .cfg is taken off: with --extension "" the config is NAME itself, and
    db.example.com and db.example.net must not share db.example.xml."""
    if cfg_path.endswith(".cfg"):
        return cfg_path[:-4] + ".xml"
    return cfg_path + (".libvirt.xml" if cfg_path.endswith(".xml") else ".xml")


C_LOCALE = {"LC_ALL": "C"}


class Libvirt:
    """The toolstack interface of toolstack.Toolstack (create, console, domains, shutdown, stop,
    destroy), through virsh; plus the persistent domain's define, autostart and undefine."""

    name = "libvirt"

    def __init__(self, virsh: str):
        self.path = virsh

    def _virsh(self, *args: str) -> list[str]:
        return [self.path, "-c", URI, *args]

    def _run(self, *args: str, ok=(0,)):
        """virsh whose output is read: in the C locale, since libvirt-l10n translates what we parse
        (dominfo's "Autostart: enable", "domain not found") into the admin's language."""
        return proc.run(self._virsh(*args), ok=ok, env=C_LOCALE)

    def reachable(self, then: str = "", fix: str = FIX) -> None:
        """One Fatal unless libvirtd answers on the Xen URI: checked before anything is made (or
        removed), so that a deploy never stops at its define step, nor a removal at its undefine.
        ``then``: what the refusal leaves as it was, said after the reason."""
        r = self._run("version", ok=range(256))
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            raise Fatal(f"libvirtd is not reachable at {URI} (virsh version: {why}){then}", fix)

    # -- the persistent domain and its autostart: made.LibvirtDefinition, made.LibvirtAutostart undo them
    def define(self, xml_path: str) -> None:
        self._run("define", xml_path)

    def define_text(self, xml: str) -> None:
        """``virsh define`` of XML held here (a saved definition, an edited one), from a private
        temporary file: it may hold the domain's secrets (--security-info)."""
        with tempfile.NamedTemporaryFile("w", prefix="si-xen-", suffix=".xml") as f:
            f.write(xml)
            f.flush()
            self.define(f.name)

    def definition(self, name: str) -> tuple[str, bool] | None:
        """The domain's persistent definition as libvirt holds it (the admin's ``virsh edit``s and
        secrets included, so that defining it again loses nothing) and whether it autostarts;
        None when libvirt knows no such domain."""
        r = self._run("dumpxml", "--inactive", "--security-info", name, ok=range(256))
        if r.returncode != 0:
            if _not_found(r.stderr):
                return None
            raise OSError(f"virsh dumpxml {name}: {r.stderr.strip() or r.returncode}")
        auto = re.search(r"^Autostart:\s*(\S+)", self._run("dominfo", name).stdout, re.M)
        return r.stdout, bool(auto and auto[1] == "enable")

    def set_initrd(self, name: str, path: str, uuid: str) -> None:
        """The defined domain's ``<initrd>`` made ``path`` (none if empty), the rest of its
        definition as libvirt holds it: an update's new kernel that gained or lost its initramfs.
        ``uuid``: si-xen's domain, checked again here (the update's check was minutes before)."""
        held = self.definition(name)
        if held is None:
            raise Fatal(f"libvirt has no domain '{name}' to give its new initramfs", f"si_mkxenvm --rebuild {name}")
        has = re.search(r"<uuid>\s*([^<\s]+)\s*</uuid>", held[0])
        if not has or has[1] != uuid:
            raise Fatal(f"libvirt's domain '{name}' is no longer the one si-xen defined (uuid "
                        f"{has[1] if has else 'none'}, not {uuid}); its definition was left as it is",
                        f"si_rmxenvm {name} and undefine that domain, then si_mkxenvm --toolstack libvirt again")
        new = with_initrd(held[0], path)
        if new != held[0]:
            self.define_text(new)

    def defined(self) -> set[str]:
        """The domains libvirt knows, running or not."""
        return {n.strip() for n in self._run("list", "--all", "--name").stdout.splitlines() if n.strip()}

    def domuuid(self, name: str) -> str | None:
        """The uuid of the domain of that name, None when libvirt knows none."""
        r = self._run("domuuid", name, ok=range(256))
        if r.returncode == 0:
            return r.stdout.strip() or None
        if _not_found(r.stderr):
            return None
        raise OSError(f"virsh domuuid {name}: {r.stderr.strip() or r.returncode}")  # libvirtd away: a leftover

    def undefine(self, name: str) -> None:
        """The definition gone (and with it libvirt's autostart link and any managed save image,
        memory of disks that go with it: libvirt refuses to undefine with one); a running domain
        stays (transient) until destroyed. Gone already is fine."""
        if name in self.defined():
            self._run("undefine", "--managed-save", name)

    def managed_save(self, name: str) -> bool:
        """Whether libvirt holds a saved memory image of the domain (``virsh managedsave``, or
        libvirt-guests' suspend at shutdown), which its next start resumes instead of booting."""
        r = self._run("dominfo", name, ok=range(256))
        return r.returncode == 0 and re.search(r"^Managed save:\s*yes\b", r.stdout, re.M) is not None

    def refuse_managed_save(self, name: str, what: str) -> None:
        """One Fatal when a ``what`` (a rebuild, an update) would change the disks under a saved
        memory image: its next start would resume the old memory over the new filesystems."""
        if self.managed_save(name):
            raise Fatal(f"libvirt holds a managed save image of VM '{name}' (its memory as it was), which its next "
                        f"start would resume over the disks {what} changes; nothing was changed",
                        f"start it and shut it down ({self.shown('start', name)}), or drop that memory "
                        f"({self.shown('managedsave-remove', name)}), then run this again")

    def autostart(self, name: str, on: bool = True) -> None:
        if on:
            self._run("autostart", name)
        elif name in self.defined():
            self._run("autostart", "--disable", name)

    def domstate(self, name: str) -> str | None:
        """libvirt's view of the domain (``running``, ``shut off``, ``paused``...), None when it
        does not know it."""
        r = self._run("domstate", name, ok=range(256))
        if r.returncode == 0:
            return r.stdout.strip() or None
        if _not_found(r.stderr):
            return None
        raise OSError(f"virsh domstate {name}: {r.stderr.strip() or r.returncode}")  # libvirtd away: unknown

    # -- the Toolstack interface
    def create(self, cfg: str, made, name: str | None = None) -> None:
        """``virsh start`` of the defined domain (run.create: signals, the point of no return)."""
        run.create(self.create_argv(cfg, name), made)

    def console(self, name: str) -> tuple[int, int | None]:
        return run.console(self.console_argv(name))

    @property
    def start_cmd(self) -> str:
        return "virsh start"

    def shown(self, *args: str) -> str:
        return " ".join(("virsh -c", URI, *args))

    def start_shown(self, name: str, cfg: str) -> str:
        return self.shown("start", name)  # the defined domain, by name (its XML beside cfg)

    def stop_shown(self, name: str) -> str:
        return self.shown("shutdown", name)

    def create_argv(self, cfg: str, name: str | None) -> list[str]:
        # the domain is defined already (the deploy's define step): start it by name
        return self._virsh("start", name or _name_in(cfg))

    def console_argv(self, name: str) -> list[str]:
        return self._virsh("console", name)

    def domains(self) -> dict[str, str]:
        """Running domains (libvirt's active ones): name -> state."""
        out = self._run("list").stdout
        doms = {}
        for line in out.splitlines()[2:]:  # " Id   Name   State" and a rule of dashes
            parts = line.split(None, 2)
            if len(parts) == 3:
                doms[parts[1]] = parts[2].strip()
        return doms

    def shutdown(self, name: str, wait: float = 120) -> None:
        """Shut the domain down; destroy it if it does not go within ``wait`` seconds."""
        self.stop(name, wait)
        self.destroy(name)

    def stop(self, name: str, timeout: float = 120) -> bool:
        """Ask for a clean shutdown (virsh has no --wait), then wait up to ``timeout`` for the
        domain to go; never destroys it."""
        return run.stop(self._virsh("shutdown", name), self.domains, name, timeout, monotonic, sleep)

    def destroy(self, name: str) -> None:
        deadline = monotonic() + 120
        while name in self.domains():
            self._run("destroy", name, ok=(0, 1))
            if monotonic() > deadline:
                raise Fatal(f"domain '{name}' does not go away", f"check with virsh -c {URI} list, then retry")
            sleep(0.5)


def _not_found(stderr: str) -> bool:
    """virsh's word for a name libvirt does not know (any other failure: libvirtd away)."""
    return "domain not found" in stderr.lower() or "failed to get domain" in stderr.lower()


INITRD = re.compile(r"^[ \t]*<initrd>.*</initrd>[ \t]*\n?", re.M)
KERNEL = re.compile(r"^([ \t]*)<kernel>.*</kernel>[ \t]*\n", re.M)


def with_initrd(xml: str, path: str) -> str:
    """Domain XML whose ``<os>`` names the initramfs ``path`` after its kernel, or none (``path``
    empty): the one line, as in our template and virsh dumpxml, so that the rest stays as written."""
    new = INITRD.sub("", xml)
    if path:
        new = KERNEL.sub(lambda m: f"{m[0]}{m[1]}<initrd>{escape(path)}</initrd>\n", new, count=1)
    return new


def has_initrd(xml: str) -> bool:
    return INITRD.search(xml) is not None


def _name_in(cfg: str) -> str:
    """The domain name from the XML beside the xl.cfg (an update's or a rebuild's start knows
    only the config path). Our own file, written by the deploy."""
    name = ET.parse(xml_path(cfg)).getroot().findtext("name")
    if not name:
        raise Fatal(f"no <name> in {xml_path(cfg)}", "run si_mkxenvm --rebuild for the VM")
    return name


def find_virsh() -> Libvirt | None:
    virsh = proc.which("virsh")
    return Libvirt(virsh) if virsh else None

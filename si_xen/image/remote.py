"""A SystemImager image server, reached through its rsync daemon as SystemImager's own tools
reach it: addresses, module URLs, rsync's failures in words, listing, small fetches,
scripts/cluster.txt, and the --ssh-user tunnel."""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass

from .. import proc
from ..errors import Fatal

DEFAULT_PORT = 873
# Modules of SystemImager's rsyncd.conf header that are not images (si_lsimage skips them).
NOT_IMAGE_MODULES = {"scripts", "boot", "overrides", "torrents"}
# SystemImager's image pass (v5 systemimager-xmit-rsync.sh) and files-to-exclude-from-image.txt.
IMAGE_FLAGS = ("-aHS", "--numeric-ids")
IMAGE_EXCLUDES = ("lost+found/", "/proc/*", "/sys/*", "/dev/*", "/run/*", "/tmp/*",
                  "/var/lib/nfs/rpc_pipefs", "/etc/system-id")
ACL_FLAGS = ("-A", "-X")  # kept where both ends support them (see pull_flags)
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.+-]*$")
START_FIX = "is its rsync daemon running? systemctl start systemimager-server-rsyncd"


@dataclass(frozen=True)
class Server:
    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def key(self) -> str:
        """Its directory name in the cache: one host and port, one directory."""
        return f"{self.host}_{self.port}"

    def url(self, *parts: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"rsync://{host}:{self.port}/" + "/".join(p.strip("/") for p in parts if p)


def parse_server(text: str) -> Server:
    """HOST, HOST:PORT or [IPv6]:PORT."""
    bad = Fatal(f"invalid image server '{text}'", "give --server HOST or HOST:PORT")
    host, port = text.strip(), str(DEFAULT_PORT)
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise bad
            port = rest[1:]
        if ":" not in host:
            raise bad
    elif host.count(":") == 1:
        host, port = host.split(":")
    elif ":" in host or not _HOST_RE.match(host):
        raise bad
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise bad
    return Server(host, int(port))


def check_name(name: str, what: str, server: Server) -> str:
    """Image and override names become module paths and cache directories: plain names only."""
    if not NAME_RE.match(name) or name in NOT_IMAGE_MODULES:
        raise Fatal(f"invalid {what} name '{name}'", f"si_lsxenvm --images --server {server} lists the images")
    return name


def problem(rc: int, stderr: str, server: Server, what: str) -> Fatal:
    """rsync's exit status and message, as the one thing the user has to know."""
    err = stderr.lower()
    tail = next((ln.strip() for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "")
    if "unknown module" in err:
        return Fatal(f"{what} not found on image server {server}",
                     f"si_lsxenvm --images --server {server} lists the images")
    if "no space left" in err or "disk quota" in err:
        return Fatal(f"no room left in the image cache while pulling {what} from {server}",
                     "free space under [paths] cache_dir (si-xen.conf(5)); the cache was left as it was")
    if "connection refused" in err:
        return Fatal(f"image server {server} refused the connection", START_FIX)
    if any(s in err for s in ("name or service not known", "temporary failure in name resolution",
                              "could not resolve", "no address associated")):
        return Fatal(f"image server {server} is unknown: its name does not resolve", "check the --server name")
    if rc == 35 or any(s in err for s in ("no route to host", "network is unreachable", "timed out")):
        return Fatal(f"image server {server} is unreachable", "check the network and the --server address")
    if rc == 23 and "no such file" in err:
        return Fatal(f"{what} not found on image server {server}", f"check {what} on the server")
    if rc in (12, 20) or "connection unexpectedly closed" in err or "connection reset" in err:
        return Fatal(f"the transfer of {what} from {server} was cut off mid-way ({tail or f'rsync exit {rc}'})",
                     f"run it again; the cache was left as it was ({START_FIX})")
    if rc == 30:
        return Fatal(f"image server {server} stopped answering while sending {what}", "run it again")
    if rc == 10:
        return Fatal(f"cannot talk to image server {server} ({tail})", START_FIX)
    if rc == 5:
        return Fatal(f"image server {server} refused the session for {what} ({tail})",
                     "check the server's rsyncd.conf (si_mkrsyncd_conf) and its hosts allow")
    return Fatal(f"pulling {what} from {server} failed (rsync exit {rc}: {tail})", "see the log; run it again")


def _argv(argv: list[str], local: bool, motd: bool) -> list[str]:
    # TCP_NODELAY: the protocol's small messages otherwise wait on delayed ACKs, ~40 ms a
    # turn of the conversation (0.15 -> 0.11 s for a one-file fetch on one host).
    daemon = [] if local else [*([] if motd else ["--no-motd"]), "--sockopts=TCP_NODELAY", "--contimeout=20"]
    return ["rsync", *daemon, "--timeout=600", *argv]


def _told(e: proc.ProcError, server: Server, what: str) -> Fatal:
    return problem(e.result.returncode, e.result.stderr, server, what)


def rsync(argv: list[str], server: Server, what: str, ok=(0,), local: bool = False, motd: bool = False) -> proc.Result:
    """rsync through proc, its failures as one Fatal (``local``: a copy on this host; ``motd``
    is needed for a module list, which --no-motd suppresses too)."""
    try:
        return proc.run(_argv(argv, local, motd), ok=ok)
    except proc.ProcError as e:
        raise _told(e, server, what) from None


class Begun(proc.Begun):
    """rsync begun beside other work (remote.rsync's failures, from ``result()``)."""

    def __init__(self, argv: list[str], server: Server, what: str):
        self.server, self.what = server, what
        super().__init__(_argv(argv, False, False))

    def result(self) -> proc.Result:
        try:
            return super().result()
        except proc.ProcError as e:
            raise _told(e, self.server, self.what) from None


def list_modules(server: Server) -> list[str]:
    """The image modules, as si_lsimage lists them: `rsync rsync://SERVER:PORT/`."""
    out = rsync([server.url()], server, "the module list", motd=True).stdout
    # The daemon writes "NAME<padding>\tCOMMENT" per module; motd lines above them have no tab.
    names = (line.split()[0] for line in out.splitlines() if "\t" in line and line.split())
    return sorted(n for n in names if n not in NOT_IMAGE_MODULES)


def fetch(server: Server, urls: list[str], what: str) -> dict[str, str | None]:
    """Small files by URL -> their text (None where missing), through a private temp dir."""
    with tempfile.TemporaryDirectory(prefix="si-xen-fetch.") as tmp:
        rsync(["-L", *urls, tmp + "/"], server, what, ok=(0, 23))
        out: dict[str, str | None] = {}
        for u in urls:
            try:
                with open(os.path.join(tmp, os.path.basename(u)), encoding="utf-8", errors="replace") as f:
                    out[u] = f.read()
            except OSError:
                out[u] = None
        return out


class Overrides:
    """The override names on the server, asked beside other work: `rsync --list-only
    rsync://SERVER/overrides/` (a server whose rsyncd.conf has no [overrides] module has none)."""

    def __init__(self, server: Server):
        self.server = server
        self.p = proc.Begun(_argv(["--list-only", server.url("overrides") + "/"], False, False))

    def names(self) -> set[str]:
        try:
            out = self.p.result().stdout
        except proc.ProcError as e:
            if "unknown module" in e.result.stderr.lower():
                return set()
            raise _told(e, self.server, "the override list") from None
        # "MODE SIZE DATE TIME NAME": directories, or links to them (the daemon follows those)
        rows = (line.split(None, 4) for line in out.splitlines())
        return {r[4] for r in rows if len(r) == 5 and r[0][:1] in "dl" and r[4] != "." and NAME_RE.match(r[4])}

    def stop(self) -> None:
        self.p.stop()


def first_line(text: str | None) -> str | None:
    return text.strip().splitlines()[0].strip() if text and text.strip() else None


def image_facts(server: Server, image: str) -> tuple[str | None, str | None]:
    """(IMAGE_RETRIEVAL_TIME, IMAGE_RETRIEVED_FROM) of a server's image: si_lsimage --verbose."""
    urls = [server.url(image, "etc/systemimager", n) for n in ("IMAGE_RETRIEVAL_TIME", "IMAGE_RETRIEVED_FROM")]
    got = fetch(server, urls, f"image '{image}'")
    return first_line(got[urls[0]]), first_line(got[urls[1]])


def parse_cluster(text: str, hostname: str) -> tuple[str | None, list[str]]:
    """scripts/cluster.txt as SystemImager's installer and si_updateclient read it, by the
    host's short name: (field 3 of its first line that has one, the group overrides). These are
    the ``# global_override=:X:`` ones, then field 4 of the host's lines (si_clusterconfig
    writes one line per group override, most important first), each once, reversed: the
    later laid wins."""
    globals_: list[str] = []
    image, groups = None, []
    short = hostname.split(".")[0]
    for line in text.splitlines():
        if m := re.match(r"^\s*#\s*global_override=:([^:]*):", line):
            globals_ += m[1].split()
        if not short or line.lstrip().startswith("#") or not line.startswith(short + ":"):
            continue
        fields = line.strip().split(":")
        image = image or (fields[2].strip() if len(fields) > 2 else "") or None
        groups += fields[3].split() if len(fields) > 3 else []
    return image, globals_ + list(reversed(dict.fromkeys(groups)))


def from_cluster(server: Server, text: str | None, hostname: str, image: str | None) -> str:
    """The image cluster.txt (``text``, None when the server has none) gives the host, or a FATAL."""
    if text is None:
        raise Fatal(f"no image given and image server {server} has no scripts/cluster.txt",
                    "give the image, or define the host with si_clusterconfig on the server")
    if image is None:
        raise Fatal(f"no image given and host '{hostname}' is not in {server}'s scripts/cluster.txt",
                    "give the image, or add the host with si_clusterconfig on the server")
    return image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tunnel_argv(user: str, server: Server, local_port: int) -> list[str]:
    """SystemImager's --ssh-user tunnel (`ssh -l USER -L PORT:127.0.0.1:873 SERVER`), held open
    with -N until we end it by pid instead of `sleep 5`."""
    return ["ssh", "-N", "-l", user, "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
            "-L", f"{local_port}:127.0.0.1:{server.port}", server.host]


class Tunnel:
    """``with Tunnel(user, server) as local:`` rsync reaches the daemon at ``local``."""

    def __init__(self, user: str, server: Server, wait: float = 15.0):
        self.user, self.server, self.wait = user, server, wait
        self.p = None

    def __enter__(self) -> Server:
        port = free_port()
        self.p = proc.start(tunnel_argv(self.user, self.server, port))
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise Fatal(f"ssh to {self.user}@{self.server.host} failed (exit {self.p.returncode})",
                            "check that `ssh -l USER SERVER` logs in without a password (ssh keys)")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return Server("127.0.0.1", port)
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise Fatal(f"the ssh tunnel to {self.server.host} did not open in {self.wait:.0f} s", "check ssh access")

    def __exit__(self, *exc) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.terminate()
            self.p.wait()

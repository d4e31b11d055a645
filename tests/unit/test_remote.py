"""The image server adapter and the image cache, with fake rsync and ssh processes."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

from si_xen.errors import Fatal
from si_xen.image import cache, remote
from si_xen.image.remote import Server

S = Server("img", 8873)


@pytest.mark.parametrize("text,want", [
    ("img", Server("img", 873)), ("img.example.org:8873", Server("img.example.org", 8873)),
    ("10.0.0.1:1", Server("10.0.0.1", 1)), ("[fe80::1]:874", Server("fe80::1", 874)), ("[::1]", Server("::1", 873)),
])
def test_server_addresses(text, want):
    assert remote.parse_server(text) == want


@pytest.mark.parametrize("text", ["", "img:", "img:0", "img:65536", "img:x", "-img", "a b", "fe80::1", "[::1]x", "[img]"])
def test_bad_server_addresses(text):
    with pytest.raises(Fatal, match="invalid image server"):
        remote.parse_server(text)


def test_urls_and_cache_keys():
    assert S.url() == "rsync://img:8873/"
    assert S.url("debian12") + "/" == "rsync://img:8873/debian12/"
    assert S.url("overrides", "web/") == "rsync://img:8873/overrides/web"
    assert Server("::1", 873).url("x") == "rsync://[::1]:873/x"
    assert str(Server("::1", 873)) == "[::1]:873" and S.key == "img_8873"


@pytest.mark.parametrize("name", ["../etc", "a/b", "scripts", "overrides", "-x", ""])
def test_names_that_are_not_image_names(name):
    with pytest.raises(Fatal, match="invalid image name"):
        remote.check_name(name, "image", S)


@pytest.mark.parametrize("rc,err,want", [
    (5, "@ERROR: Unknown module 'nosuch'", "image 'x' not found on image server img:8873"),
    (10, "failed to connect to img (1.2.3.4): Connection refused (111)", "refused the connection"),
    (10, "getaddrinfo: img 8873: Name or service not known", "does not resolve"),
    (35, "rsync error: timeout waiting for daemon connection (code 35)", "unreachable"),
    (10, "failed to connect to img: No route to host (113)", "unreachable"),
    (12, "rsync: connection unexpectedly closed (0 bytes received so far)", "cut off mid-way"),
    (23, "rsync: [Receiver] read error: Connection reset by peer (104)", "cut off mid-way"),
    (23, 'change_dir "/nosuch" (in overrides) failed: No such file or directory (2)\nConnection reset by peer',
     "image 'x' not found"),
    (11, "write failed on \"/c/x\": No space left on device (28)", "no room left in the image cache"),
    (30, "timeout in data send/receive", "stopped answering"),
    (5, "@ERROR: access denied to debian12 from host", "refused the session"),
    (3, "weird", "rsync exit 3: weird"),
])
def test_rsync_failures_in_words(rc, err, want):
    f = remote.problem(rc, err, S, "image 'x'")
    assert want in f.problem and f.fix


def test_module_list_skips_the_header_modules(fp):
    fp.register(["rsync", "--sockopts=TCP_NODELAY", "--contimeout=20", "--timeout=600", "rsync://img:8873/"],
                stdout="Welcome\nboot  \t\noverrides\t\nscripts  \t\ntorrents\t\ndebian12\t\ncentos5 \tweb\n")
    assert remote.list_modules(S) == ["centos5", "debian12"]


CLUSTER = """\
# global_override=:site:
# Hostname:Group Names:Image Name:Override(s)
web01:web:debian12:web debug
db01:db:centos5:
web01.example.org:x:other:
"""
# si_clusterconfig's own output: one line per group override, the group of highest priority
# first; si_updateclient and the installer read every line of the host and reverse them.
CLUSTER_SI = """\
#
# hostname:group:imagename(group):override(group)
#
# global_override=:all base:
#
node1:gpu:rocky9:gpu
node1:gpu:rocky9:cuda
node1:compute::compute
node2:compute::compute
"""


def test_cluster_txt_as_systemimager_reads_it():
    """By the short name only (the installer's HOSTNAME and si_updateclient's hostname() are
    cut at the first dot), the host's overrides reversed after the global ones."""
    assert remote.parse_cluster(CLUSTER, "web01") == ("debian12", ["site", "debug", "web"])
    assert remote.parse_cluster(CLUSTER, "web01.example.org") == ("debian12", ["site", "debug", "web"])
    assert remote.parse_cluster(CLUSTER, "db01") == ("centos5", ["site"])
    assert remote.parse_cluster(CLUSTER, "nothere") == (None, ["site"])
    assert remote.parse_cluster(CLUSTER_SI, "node1") == ("rocky9", ["all", "base", "compute", "cuda", "gpu"])
    assert remote.parse_cluster(CLUSTER_SI, "node2.lab") == (None, ["all", "base", "compute"])


def test_pull_uses_systemimagers_flags_and_excludes():
    flags = cache.pull_flags()
    assert flags[:2] == ["-aHS", "--numeric-ids"] and "--delete" in flags and {"-A", "-X"} <= set(flags)
    for e in ("lost+found/", "/proc/*", "/sys/*", "/dev/*", "/run/*", "/tmp/*", "/etc/system-id"):
        assert f"--exclude={e}" in flags
    assert "-A" not in cache.pull_flags(acls=False)


def test_stats_are_read_from_rsync_output():
    out = "Number of regular files transferred: 1,234\nTotal bytes received: 5,678,901\n"
    assert cache.stats(out) == {"files": 1234, "bytes": 5678901}


def test_ssh_tunnel_as_systemimager_makes_it(fp, monkeypatch):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    port = lsock.getsockname()[1]
    monkeypatch.setattr(remote, "free_port", lambda: port)
    argv = ["ssh", "-N", "-l", "si", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
            "-L", f"{port}:127.0.0.1:8873", "img"]
    assert remote.tunnel_argv("si", S, port) == argv
    fp.register(argv, wait=1)  # ssh -N runs until ended; the fake for a second
    try:
        with remote.Tunnel("si", S) as via:
            assert via == Server("127.0.0.1", port)
    finally:
        lsock.close()
    assert fp.call_count(argv) == 1


def test_ssh_that_fails_is_one_fatal(fp, monkeypatch):
    monkeypatch.setattr(remote, "free_port", lambda: 1)
    fp.register(["ssh", fp.any()], returncode=255)
    with pytest.raises(Fatal, match="ssh to si@img failed"):
        with remote.Tunnel("si", S):
            pass


class FakeRsync:
    """rsync writing what the 'server' holds into its destination (the last argument), then
    exiting ``rc`` with ``stderr``: a failure comes after a half-made staging dir."""

    def __init__(self, fp, files: dict[str, str], occurrences: int = 100, rc: int = 0, stderr: str = ""):
        self.calls: list[list[str]] = []
        self.files = files
        fp.register(["rsync", fp.any()], callback=self.run, occurrences=occurrences, returncode=rc, stderr=stderr)
        fp.register(["cp", "-al", fp.any()], occurrences=occurrences,  # the incremental pull's linked tree
                    callback=lambda p: shutil.copytree(p.args[2], p.args[3], symlinks=True, copy_function=os.link))

    def run(self, process):
        self.calls.append(process.args)
        dest = process.args[-1]
        if "-L" in process.args:  # a small fetch (remote.fetch): each URL's file by its base name
            for url in process.args[process.args.index("-L") + 1:-1]:
                rel = url.split("/", 4)[4]
                if rel in self.files:
                    with open(os.path.join(dest, os.path.basename(rel)), "w") as f:
                        f.write(self.files[rel])
            return
        if "--list-only" in process.args:  # a listing: its last argument is the server's URL, never a directory here
            return
        if "--out-format=%i %n" in process.args:  # the incremental pull's dry run: what it would fetch
            process.stdout.write("".join(f">f.st...... {rel}\n" for rel in self.files))
            return
        for rel, text in self.files.items():  # as rsync writes: a new file renamed over the old name
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            with open(os.path.join(dest, rel) + ".tmp", "w") as f:
                f.write(text)
            os.replace(os.path.join(dest, rel) + ".tmp", os.path.join(dest, rel))


@pytest.fixture
def cached(tmp_path):
    return cache.Cached(str(tmp_path / "cache"), str(tmp_path / "lock"), S, "debian12")


def pulls(fake) -> list[list[str]]:
    return [c for c in fake.calls if "-n" not in c and ("--delete" in c or any(a.startswith("--files-from=") for a in c))]


def test_first_pull_switches_in_a_whole_generation(fp, cached):
    fake = FakeRsync(fp, {"etc/systemimager/IMAGE_RETRIEVAL_TIME": "2026.12.01 10:00\n"})
    with cached.lock():
        path, st = cached.pull("2026.12.01 10:00")
    assert path.endswith("/gen-1") and cached.current() == path and st is not None
    (call,) = pulls(fake)
    assert call[-2] == "rsync://img:8873/debian12/" and call[-1].endswith("/.staging-gen-1/")
    assert not any(a.startswith("--link-dest") for a in call)
    assert sorted(os.listdir(cached.dir)) == ["current", "gen-1"]


def test_unchanged_image_is_not_pulled_again_and_a_changed_one_links_the_old(fp, cached):
    fake = FakeRsync(fp, {"etc/systemimager/IMAGE_RETRIEVAL_TIME": "T1\n"})
    with cached.lock():
        first, _ = cached.pull("T1")
        again, st = cached.pull("T1")
    assert again == first and st is None and len(pulls(fake)) == 1
    fake.files = {"etc/systemimager/IMAGE_RETRIEVAL_TIME": "T2\n"}
    with cached.lock():
        second, _ = cached.pull("T2")
    assert second.endswith("/gen-2") and "--from0" in pulls(fake)[-1], "only the changes, onto a linked copy"
    with open(os.path.join(first, "etc/systemimager/IMAGE_RETRIEVAL_TIME")) as f:
        assert f.read() == "T1\n", "the previous generation is untouched"
    fake.files = {"etc/systemimager/IMAGE_RETRIEVAL_TIME": "T3\n"}
    with cached.lock():
        third, _ = cached.pull("T3")
    assert sorted(n for n in os.listdir(cached.dir) if not n.startswith(".trash")) == ["current", "gen-2", "gen-3"]
    cached.cleaner.join()  # the oldest one is removed beside what follows the pull
    assert sorted(os.listdir(cached.dir)) == ["current", "gen-2", "gen-3"], "current and previous kept"


def test_update_asks_the_retrieval_time_while_the_dry_run_walks(fp, cached, monkeypatch):
    rt = "etc/systemimager/IMAGE_RETRIEVAL_TIME"
    fake = FakeRsync(fp, {rt: "T1\n"})
    dry_runs = lambda: [c for c in fake.calls if "-n" in c]  # noqa: E731
    stopped = []
    real_stop = remote.Begun.stop
    monkeypatch.setattr(remote.Begun, "stop", lambda self: stopped.append(self.waited) or real_stop(self))
    with cached.lock():
        first, st = cached.update()
    assert st is not None and not dry_runs(), "nothing cached yet: no dry run to begin"
    with cached.lock():
        assert cached.update() == (first, None)
    assert len(dry_runs()) == 1 and len(pulls(fake)) == 1, "begun beside the time"
    assert stopped == [False], "stopped unread when the time said unchanged"
    fake.files = {rt: "T2\n"}
    with cached.lock():
        second, st = cached.update()
    assert second.endswith("/gen-2") and st is not None
    assert len(dry_runs()) == 2 and "--from0" in pulls(fake)[-1], "the dry run begun beside the time is the one used"


def test_a_dry_run_refused_beside_the_time_is_begun_again(fp, cached):
    rt = "etc/systemimager/IMAGE_RETRIEVAL_TIME"
    FakeRsync(fp, {rt: "T1\n"}, occurrences=2)
    with cached.lock():
        cached.update()
    fp.register(["rsync", fp.any()], returncode=5, stderr="@ERROR: max connections (1) reached -- try again later\n")
    fake = FakeRsync(fp, {rt: "T2\n"})
    with cached.lock():
        second, st = cached.update()
    assert second.endswith("/gen-2") and st is not None
    assert [c for c in fake.calls if "-n" in c], "the dry run asked again once the time was in"


def test_a_cache_without_acls_gets_systemimagers_flags_alone(fp, cached):
    FakeRsync(fp, {"etc/x": "1"}, occurrences=1)
    with cached.lock():
        cached.pull("T1")
    # The dry run (-n sets nothing) passes with -A -X; the fetch then meets the cache's filesystem.
    fp.register(["rsync", fp.any()], stdout=">f.st...... etc/x\n")
    fp.register(["rsync", fp.any()], returncode=23, stderr="rsync: set_acl: sys_acl_set_file(etc/x): Operation not supported (95)\n")
    fake = FakeRsync(fp, {"etc/x": "2"})
    with cached.lock():
        second, st = cached.pull("T2")
    assert st is not None and second.endswith("/gen-2")
    assert fake.calls and all("-A" not in c and "-X" not in c for c in fake.calls), "retried without ACLs and xattrs"
    with open(os.path.join(second, "etc/x")) as f:
        assert f.read() == "2"


def test_a_failed_pull_leaves_the_cache_as_it_was(fp, cached):
    FakeRsync(fp, {"etc/systemimager/IMAGE_RETRIEVAL_TIME": "T1\n"}, occurrences=1)
    with cached.lock():
        first, _ = cached.pull("T1")
    before = sorted(os.listdir(cached.dir))
    FakeRsync(fp, {"etc/half": "x"}, rc=12, stderr="rsync: connection unexpectedly closed\n")
    with pytest.raises(Fatal, match="cut off mid-way"):
        with cached.lock():
            cached.pull("T2")
    assert sorted(os.listdir(cached.dir)) == before and cached.current() == first
    assert not os.path.exists(os.path.join(first, "etc/half"))


def test_a_killed_pulls_staging_is_removed_by_the_next(fp, cached):
    os.makedirs(os.path.join(cached.dir, ".staging-gen-1", "etc"))
    FakeRsync(fp, {"etc/x": "y"})
    with cached.lock():
        cached.pull(None)
    assert sorted(os.listdir(cached.dir)) == ["current", "gen-1"]


def test_a_view_is_reused_until_an_override_listing_changes(fp, cached):
    fake = FakeRsync(fp, {"etc/motd": "m\n"})
    with cached.lock():
        gen, _ = cached.pull("T1")
        view, done = cached.view(gen, ["web", "site"])
    applied = [c[-2] for c in fake.calls if "-aHSI" in c]
    assert applied == ["rsync://img:8873/overrides/web/", "rsync://img:8873/overrides/site/"] and len(done) == 2
    assert os.path.isdir(view) and not os.path.samefile(view, gen)
    calls = len(fake.calls)
    with cached.lock():
        again, done = cached.view(gen, ["web", "site"])
    assert again == view and done == [] and len(fake.calls) == calls + 2  # two listings, no copy
    with cached.lock():
        other, _ = cached.view(gen, ["site", "web"])
    assert other != view, "the order of overrides matters (later wins)"


def test_rsyncs_dry_run_decides_for_an_image_without_retrieval_time(fp, cached):
    FakeRsync(fp, {"etc/x": "1"}, occurrences=1)
    with cached.lock():
        first, _ = cached.pull(None)
    fp.register(["rsync", fp.any()], stdout="Number of files: 3\n")  # the dry run: nothing itemized
    with cached.lock():
        assert cached.pull(None) == (first, None)
    fp.register(["rsync", fp.any()], stdout=">f..t...... etc/x\n")  # the dry run, its lines used for the pull
    fake = FakeRsync(fp, {"etc/x": "2"}, occurrences=1)  # the fetch
    with cached.lock():
        second, st = cached.pull(None)
    assert len(fake.calls) == 1 and "--from0" in fake.calls[0], "one dry run serves the check and the pull"
    assert second.endswith("/gen-2") and st is not None
    with open(os.path.join(second, "etc/x")) as f, open(os.path.join(first, "etc/x")) as g:
        assert (f.read(), g.read()) == ("2", "1")


@pytest.mark.parametrize("argv,want", [
    (["img", "--ssh-user", "root"], "--ssh-user needs an image server"),
    (["/srv/img", "--server", "img"], "takes an image name, not a path"),
])
def test_server_options_without_a_server(argv, want, tmp_path):
    from si_xen.cli import mkxenvm

    (tmp_path / "none.conf").write_text("[defaults]\n")
    with pytest.raises(Fatal, match=want):
        mkxenvm.body([*argv, "--hostname", "h", "--dry-run", "--config", str(tmp_path / "none.conf")])


OVERRIDES_ARGV = ["rsync", "--no-motd", "--sockopts=TCP_NODELAY", "--contimeout=20", "--timeout=600", "--list-only",
                  "rsync://img:8873/overrides/"]


def test_the_servers_override_names_are_its_directories(fp):
    fp.register(OVERRIDES_ARGV, stdout="drwxr-xr-x          4,096 2026/12/04 15:30:30 .\n"
                "-rw-r--r--            812 2026/12/04 15:30:30 README\n"
                "lrwxrwxrwx              3 2026/12/04 15:30:30 web01\n"
                "drwxr-xr-x          4,096 2026/12/04 15:30:30 debian12\n"
                "drwxr-xr-x          4,096 2026/12/04 15:30:30 -bad\n")
    assert remote.Overrides(S).names() == {"web01", "debian12"}


def test_a_server_without_an_overrides_module_has_none(fp):
    fp.register(OVERRIDES_ARGV, returncode=5, stderr="@ERROR: Unknown module 'overrides'\n")
    assert remote.Overrides(S).names() == set()
    fp.register(OVERRIDES_ARGV, returncode=10, stderr="rsync: failed to connect: Connection refused (111)\n")
    with pytest.raises(Fatal, match="refused the connection"):
        remote.Overrides(S).names()

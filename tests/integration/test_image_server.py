"""si_mkxenvm --server against a real rsync daemon on 127.0.0.1, configured as SystemImager
generates it (10header + [boot] [overrides] [scripts] + one 40IMAGE stub), serving the
Debian 12 test image and an override."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from si_xen.image import remote
from tests.conftest import need_tools
from tests.lib.imageserver import write_rsyncd_conf

from .harness import debugfs_cat, host_state, loop_fs, make_env

pytestmark = pytest.mark.integration
OPTS = ["--memory", "512M", "--size", "2G", "--swap", "128M", "--dhcp"]


class Daemon:
    """`rsync --daemon --no-detach` in its own session, so killing it by pid (as its group)
    ends the per-connection children too."""

    def __init__(self, root: str):
        self.root, self.port, self.p = root, remote.free_port(), None
        self.conf = write_rsyncd_conf(root, {"debian12": f"{root}/images/debian12"})

    def start(self) -> None:
        self.p = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={self.conf}", f"--port={self.port}",
                                   "--address=127.0.0.1"], start_new_session=True)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("rsync daemon did not start")

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
        if self.p is not None:
            self.p.wait()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def served(debian12_image, tmp_path_factory):
    """The server's tree: a hard-linked copy of the test image (changed only by adding files and
    renaming new ones over, so the shared test image is never written), an override, cluster.txt."""
    need_tools("rsync", "cp")
    root = str(tmp_path_factory.mktemp("server"))
    os.makedirs(f"{root}/images")
    subprocess.run(["cp", "-al", debian12_image, f"{root}/images/debian12"], check=True)
    d = Daemon(root)
    os.makedirs(f"{root}/overrides/web/etc")
    with open(f"{root}/overrides/web/etc/motd", "w") as f:
        f.write("from override web\n")
    with open(f"{root}/scripts/cluster.txt", "w") as f:
        f.write("# global_override=:web:\nsrv01:web:debian12:\n")
    d.start()
    try:
        yield d
    finally:
        d.stop()
    assert d.p.poll() is not None


def change_image(root: str, name: str) -> None:
    """What si_getimage would do on a re-fetch: a file added, IMAGE_RETRIEVAL_TIME rewritten."""
    img = f"{root}/images/debian12"
    with open(f"{img}/etc/{name}", "w") as f:
        f.write("added on the server\n")
    meta = f"{img}/etc/systemimager/IMAGE_RETRIEVAL_TIME"
    with open(meta + ".new", "w") as f:
        f.write(time.strftime("%Y.%m.%d %H:%M:%S ") + name + "\n")
    os.replace(meta + ".new", meta)


def pulled(stdout: str) -> int | None:
    m = re.search(r"Pulled image 'debian12' from \S+: (\d+) files transferred", stdout)
    return int(m[1]) if m else None


def server_env(tmp_path):
    env = make_env(tmp_path / "e", str(tmp_path / "no-local-images"))
    with open(env.config, "a") as f:
        f.write(f"cache_dir = {tmp_path}/cache\n")
    return env, f"{tmp_path}/cache/images/127.0.0.1_{{}}/debian12"


def staging(cache: str) -> list[str]:
    return [n for n in os.listdir(cache) if n.startswith(".staging")] if os.path.isdir(cache) else []


def test_deploy_from_server_with_override_then_pull_only_the_change(served, xfs_dir, tmp_path):
    env, cache = server_env(tmp_path)
    cache = cache.format(served.port)
    before = host_state(str(tmp_path), ("s1", "s2", "s3"))
    argv = ["debian12", "--server", served.address, "--override", "web", *OPTS, "--dir", xfs_dir, "--output", env.output]
    first = env.mk(*argv, "--hostname", "s1", check=True)
    full = pulled(first.stdout)
    assert full is not None and full > 1000, first.stdout
    assert "Building base disks" in first.stdout
    assert debugfs_cat(f"{xfs_dir}/domains/s1/disk.img", "/etc/motd") == "from override web\n"
    # read from the cache's view-1-SIG, the VM still names its image, as si_updateclient needs
    assert debugfs_cat(f"{xfs_dir}/domains/s1/disk.img", "/etc/systemimager/IMAGE_LAST_SYNCED_TO") == "debian12\n"
    gen = os.path.realpath(f"{cache}/current")
    with open(f"{gen}/etc/motd") as f:
        assert "from override web" not in f.read(), "an override must not change the cached image"

    second = env.mk(*argv, "--hostname", "s2", check=True)
    assert "cached copy is current" in second.stdout and "Building base" not in second.stdout

    change_image(served.root, "si-xen-added")
    # s1 follows its image: pulled from the server as si_mkxenvm would, the same override on top
    up = env.run("updatexenvm", "s1", check=True)
    assert pulled(up.stdout) == 2, up.stdout  # the added file and IMAGE_RETRIEVAL_TIME
    assert debugfs_cat(f"{xfs_dir}/domains/s1/disk.img", "/etc/si-xen-added") == "added on the server\n"
    assert debugfs_cat(f"{xfs_dir}/domains/s1/disk.img", "/etc/motd") == "from override web\n"
    third = env.mk(*argv, "--hostname", "s3", check=True)
    assert "cached copy is current" in third.stdout, third.stdout
    assert "Building base disks" in third.stdout, "a changed image needs a new base"
    assert debugfs_cat(f"{xfs_dir}/domains/s3/disk.img", "/etc/si-xen-added") == "added on the server\n"
    assert debugfs_cat(f"{xfs_dir}/domains/s3/disk.img", "/etc/motd") == "from override web\n"
    assert len([n for n in os.listdir(f"{xfs_dir}/bases") if n.endswith(".img")]) == 2
    assert os.path.isdir(gen), "the previous generation stays for deploys still reading it"
    assert not staging(cache)
    for h in ("s1", "s2", "s3"):
        env.run("rmxenvm", "--yes", h, check=True)
    assert host_state(str(tmp_path), ("s1", "s2", "s3")) == before


def test_cluster_txt_names_the_image_and_overrides(served, tmp_path):
    env, cache = server_env(tmp_path)
    cp = env.mk("--server", served.address, "--hostname", "srv01", *OPTS, "--dir", env.dir, "--output", env.output, "--dry-run", check=True)
    assert "Dry run" in cp.stdout and "debian12" in cp.stdout
    views = [n for n in os.listdir(cache.format(served.port)) if n.startswith("view-")]
    assert len(views) == 1, "cluster.txt's global override 'web' is applied"
    missing = env.mk("--server", served.address, "--hostname", "nothere", *OPTS, "--dir", env.dir, "--output", env.output, "--dry-run")
    assert missing.returncode == 1 and "not in" in missing.stderr and "cluster.txt" in missing.stderr


def test_listing_images_as_si_lsimage(served, tmp_path):
    env, _ = server_env(tmp_path)
    cp = env.run("lsxenvm", "--images", "--server", served.address, "--json", check=True)
    rows = [json.loads(line) for line in cp.stdout.splitlines()]
    with open(f"{served.root}/images/debian12/etc/systemimager/IMAGE_RETRIEVAL_TIME") as f:
        when = f.read().strip()
    assert rows == [{"image_name": "debian12", "image_timestamp": when, "image_goldenclient": rows[0]["image_goldenclient"]}]


@pytest.mark.parametrize("args,expect", [
    (["nosuch", "--server", "{addr}"], "image 'nosuch' not found on image server"),
    (["debian12", "--server", "{addr}", "--override", "nosuch"], "override 'nosuch' not found on image server"),
    (["debian12", "--server", "127.0.0.1:{closed}"], "refused the connection"),
    (["debian12", "--server", "no-such-host.invalid"], "does not resolve"),
    (["debian12", "--server", "127.0.0.1:99999"], "invalid image server"),
])
def test_bad_server_input_is_one_fatal_line(served, tmp_path, args, expect):
    env, cache = server_env(tmp_path)
    args = [a.format(addr=served.address, closed=remote.free_port()) for a in args]
    cp = env.mk(*args, "--hostname", "bad1", *OPTS, "--dir", env.dir, "--output", env.output)
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == 1 and len(lines) == 1 and lines[0].startswith("FATAL:") and expect in lines[0], cp.stderr
    assert not os.path.exists(f"{env.dir}/domains/bad1")


def test_daemon_killed_mid_pull_leaves_the_cache_as_it_was(served, tmp_path):
    env, cache = server_env(tmp_path)
    second = Daemon(str(tmp_path / "srv2"))  # its own daemon: this one gets killed
    os.makedirs(f"{second.root}/images")
    subprocess.run(["cp", "-al", f"{served.root}/images/debian12", f"{second.root}/images/debian12"], check=True)
    cache = cache.format(second.port)
    second.start()
    try:
        p = env.popen_mk("debian12", "--server", second.address, "--hostname", "k1", *OPTS, "--dir", env.dir, "--output", env.output)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                os.path.isdir(f"{cache}/{s}/usr/lib") for s in staging(cache)):
            time.sleep(0.02)
        assert p.poll() is None, "the pull ended before it could be cut"
        second.stop()
        out, err = p.communicate(timeout=120)
    finally:
        second.stop()
    lines = err.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("FATAL:"), err
    assert "cut off" in lines[0] or "cannot talk" in lines[0], err
    assert sorted(os.listdir(cache)) == [], "no generation, no staging, no current link"
    assert not os.path.exists(f"{env.dir}/domains/k1")


def test_concurrent_deploys_share_one_pull(served, tmp_path):
    env, cache = server_env(tmp_path)
    argv = ["debian12", "--server", served.address, *OPTS, "--dir", env.dir, "--output", env.output, "--dry-run"]
    procs = [env.popen_mk(*argv, "--hostname", h) for h in ("p1", "p2")]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(pulled(o) is not None for o in outs) == [False, True], outs
    assert sum("cached copy is current" in o for o in outs) == 1
    # one generation, and one view of it with cluster.txt's global override 'web' (laid for every host)
    names = sorted(os.listdir(cache.format(served.port)))
    assert names[:3] == ["current", "gen-1", "gen-1.disks-layout.xml"] and len(names) == 4, names
    assert names[3].startswith("view-1-"), names


def test_full_cache_disk_is_one_fatal_line_and_leaves_no_staging(served, tmp_path, as_root):
    need_tools("mkfs.ext4", "mount", "umount")
    env, _ = server_env(tmp_path)
    with loop_fs(tmp_path, "small", 64 * 2**20, ["mkfs.ext4", "-q"]) as mnt:
        with open(env.config) as f:
            conf = f.read().replace(f"cache_dir = {tmp_path}/cache", f"cache_dir = {mnt}")
        with open(env.config, "w") as f:
            f.write(conf)
        cp = env.mk("debian12", "--server", served.address, "--hostname", "full1", *OPTS, "--dir", env.dir,
                    "--output", env.output)
        lines = cp.stderr.strip().splitlines()
        assert cp.returncode == 1 and len(lines) == 1 and "no room left in the image cache" in lines[0], cp.stderr
        assert os.listdir(f"{mnt}/images/127.0.0.1_{served.port}/debian12") == []


SERVER_LAYOUT = """<config>
  <disk dev="/dev/vda" label_type="gpt" unit_of_measurement="MB">
    <part num="1" size="2048" p_type="primary" p_name="root" flags="-" />
    <part num="2" size="256" p_type="primary" p_name="srv" flags="-" />
    <part num="3" size="128" p_type="primary" p_name="swap" flags="-" />
  </disk>
  <fsinfo line="10" real_dev="/dev/vda1" mp="/" fs="ext4" options="errors=remount-ro" />
  <fsinfo line="20" real_dev="/dev/vda2" mp="/srv" fs="ext4" options="nodev" />
  <fsinfo line="30" real_dev="/dev/vda3" mp="swap" fs="swap" options="defaults" />
</config>
"""


@pytest.fixture
def site(debian12_image, tmp_path):
    """A server of its own, as a site has it: an override named like the image and one named
    like the host, cluster.txt giving the host a group override and a global one that is not
    there, and scripts/disks-layouts/debian12.xml (edited on the server: /srv, no /var) that
    differs from the image's own autoinstallscript.conf. Each override writes etc/motd; the
    files upto-* are written by all before the one they name."""
    need_tools("rsync", "cp")
    d = Daemon(str(tmp_path / "site"))
    os.makedirs(f"{d.root}/images")
    subprocess.run(["cp", "-al", debian12_image, f"{d.root}/images/debian12"], check=True)
    for name, upto in (("debian12", ("group", "host")), ("grp", ("group", "host")), ("ordr1", ("host",)),
                       ("last", ())):
        os.makedirs(f"{d.root}/overrides/{name}/etc")
        for f in ("motd", *(f"upto-{u}" for u in upto)):
            with open(f"{d.root}/overrides/{name}/etc/{f}", "w") as fh:
                fh.write(name + "\n")
    os.makedirs(f"{d.root}/overrides/other")  # another host's: never laid
    with open(f"{d.root}/overrides/other/marker", "w") as fh:
        fh.write("x\n")
    with open(f"{d.root}/scripts/cluster.txt", "w") as f:
        f.write("# global_override=:ghost:\nordr1:web:debian12:grp\nother:web:debian12:other\n")
    os.makedirs(f"{d.root}/scripts/disks-layouts")
    with open(f"{d.root}/scripts/disks-layouts/debian12.xml", "w") as f:
        f.write(SERVER_LAYOUT)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def override_lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if line.strip().startswith("Override '")]


def test_overrides_in_systemimagers_order_and_the_vm_names_its_image(site, xfs_dir, tmp_path):
    """IMAGE, cluster.txt's group override, HOSTNAME (the short name of a FQDN), then
    --override: all four laid in that order (the last wins), the summary says so, the global
    one that is not there is skipped; the VM's IMAGE_LAST_SYNCED_TO names the image."""
    env, _ = server_env(tmp_path)
    before = host_state(str(tmp_path), ("ordr1",))
    host = "ordr1.example.org"
    cp = env.mk("debian12", "--server", site.address, "--override", "last", "--hostname", host, *OPTS,
                "--dir", xfs_dir, "--output", env.output, check=True)
    url = f"rsync://{site.address}/overrides"
    assert override_lines(cp.stdout) == [
        f"Override 'ghost' (cluster.txt) not found on image server {site.address}: skipped, as SystemImager does",
        f"Override 'debian12' (named like the image, 1 of 4) from {url}/debian12: 3 files copied over image 'debian12'",
        f"Override 'grp' (cluster.txt, 2 of 4) from {url}/grp: 3 files copied over image 'debian12'",
        f"Override 'ordr1' (named like the host, 3 of 4) from {url}/ordr1: 2 files copied over image 'debian12'",
        f"Override 'last' (--override, 4 of 4) from {url}/last: 1 files copied over image 'debian12'",
    ], cp.stdout
    disk = f"{xfs_dir}/domains/{host}/disk.img"
    got = {f: debugfs_cat(disk, f"/etc/{f}") for f in ("motd", "upto-group", "upto-host")}
    assert got == {"motd": "last\n", "upto-group": "grp\n", "upto-host": "ordr1\n"}
    assert debugfs_cat(disk, "/marker") is None, "another host's override is not laid"
    assert debugfs_cat(disk, "/etc/systemimager/IMAGE_LAST_SYNCED_TO") == "debian12\n"
    env.run("rmxenvm", "--yes", host, check=True)
    assert host_state(str(tmp_path), ("ordr1",)) == before


def test_the_servers_disks_layout_wins_over_the_images_own(site, tmp_path):
    env, _ = server_env(tmp_path)
    cp = env.mk("debian12", "--server", site.address, "--hostname", "lay1", "--layout", "image", "--memory", "512M",
                "--dhcp", "--dir", env.dir, "--output", env.output, "--dry-run", check=True)
    mounts = [line.split()[1] for line in cp.stdout.splitlines() if re.match(r"xvda\d+ ", line)]
    assert sorted(mounts) == ["/", "/srv", "swap"], cp.stdout
    assert f"Disk layout    : scripts/disks-layouts/debian12.xml on image server {site.address}" in cp.stdout

"""si_mkxenvm --rebuild on real disks: a VM made, lived in (a machine-id, local files), its image
changed, then made again keeping its identity (XFS clone path, ext4 full copy), --keep-old, and
killed at each step: the next --rebuild finishes, si_rmxenvm leaves nothing."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from .harness import debugfs_cat, host_state, make_env, mounted, record, tiny_image, write

pytestmark = pytest.mark.integration
OPTS = ["--memory", "512M", "--size", "512M", "--noswap", "--ip", "192.0.2.10", "--netmask", "255.255.255.0",
        "--gateway", "192.0.2.1", "--autostart"]
MACHINE_ID = "0123456789abcdef0123456789abcdef\n"


def identity(disk: str, where) -> dict:
    """Every SSH host key file and the machine-ids: bytes and mode."""
    out = {}
    with mounted(disk, where, ro=True) as root:
        names = [f"etc/ssh/{n}" for n in os.listdir(f"{root}/etc/ssh") if n.startswith("ssh_host_")]
        for p in [*names, "etc/machine-id", "var/lib/dbus/machine-id"]:
            full = os.path.join(root, p)
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    out[p] = (oct(os.lstat(full).st_mode), f.read())
    return out


def made(tmp_path, storage: str):
    images = tmp_path / "images"
    image = tiny_image(images)
    env = make_env(tmp_path / "e", str(images))
    env.mk("tiny", "--hostname", "rb1", *OPTS, "--dir", storage, "--output", env.output, check=True)
    disk = f"{storage}/domains/rb1/disk.img"
    with mounted(disk, tmp_path / "m") as root:  # the VM's life: its first boot, local data and edits
        write(root, "/etc/machine-id", MACHINE_ID)
        write(root, "/var/lib/dbus/machine-id", MACHINE_ID)
        write(root, "/home/u/notes", "mine\n")
        write(root, "/etc/motd", "edited in the VM\n")
    write(image, "/etc/new.conf", "new\n")  # the image's next generation
    write(image, "/etc/motd", "release 2\n")
    return env, image, disk


def entries(env) -> list[str]:
    return [line for line in open(f"{env.state}/vms/rb1.journal") if not line.startswith('{"step"')]


def aside_files(storage: str, env) -> list[str]:
    found = [n for n in os.listdir(f"{storage}/domains/rb1") if "si-old" in n]
    found += [n for d in (env.output, f"{env.output}/auto") if os.path.isdir(d) for n in os.listdir(d) if "si-old" in n]
    return sorted(found)


def assert_rebuilt(env, disk: str, before: dict, old: dict, tmp_path) -> None:
    assert identity(disk, tmp_path / "r") == before, "keys (every type) and machine-ids byte for byte, modes too"
    assert debugfs_cat(disk, "/etc/new.conf") == "new\n" and debugfs_cat(disk, "/etc/motd") == "release 2\n"
    assert debugfs_cat(disk, "/home/u/notes") is None, "a fresh disk: what the VM had of its own is gone"
    new = record(env, "rb1")
    for k in ("mac", "ips", "config", "autostart", "memory", "boot", "type", "ssh_fingerprints", "created"):
        assert new[k] == old[k], k
    assert new["rebuilt"] and new["image_fingerprint"] != old["image_fingerprint"]
    assert os.path.islink(new["autostart"]) and os.path.exists(new["config"])
    assert not os.path.exists(f"{env.state}/carry/rb1"), "the carried identity goes once the VM is made"
    assert "replaces" not in open(f"{env.state}/vms/rb1.journal").read()


@pytest.mark.parametrize("where", ["xfs", "ext4"])
def test_rebuild_keeps_identity_and_brings_the_image(where, xfs_dir, tmp_path):
    storage = xfs_dir if where == "xfs" else str(tmp_path / "vms")
    before_host = host_state(str(tmp_path), ("rb1",))
    env, image, disk = made(tmp_path, storage)
    before, old = identity(disk, tmp_path / "r"), record(env, "rb1")
    assert before["etc/machine-id"][1] == MACHINE_ID.encode() and len(before) >= 8
    out = env.mk("--rebuild", "rb1", check=True).stdout
    assert ("copy-on-write clone" in out) == (where == "xfs"), out
    assert_rebuilt(env, disk, before, old, tmp_path)
    assert aside_files(storage, env) == []
    if where == "xfs":  # the old generation's base: no VM names it now, and no deploy can clone it
        new = record(env, "rb1")["bases"]
        assert old["bases"] and new and set(new).isdisjoint(old["bases"])
        assert [b for b in old["bases"] if os.path.exists(b)] == [] and all(os.path.exists(b) for b in new)
    env.run("rmxenvm", "rb1", "--yes", check=True)
    assert not os.path.exists(f"{storage}/domains/rb1")
    assert host_state(str(tmp_path), ("rb1",)) == before_host


def test_keep_old_keeps_the_old_disk_listed_and_removable(tmp_path):
    storage = str(tmp_path / "vms")
    env, image, disk = made(tmp_path, storage)
    env.mk("--rebuild", "rb1", "--keep-old", check=True)
    kept = f"{disk}.si-old"
    assert debugfs_cat(kept, "/home/u/notes") == "mine\n", "the old disk, whole"
    assert record(env, "rb1")["old_disks"] == [kept]
    assert f"old disk kept {kept}" in env.run("lsxenvm", "rb1", check=True).stdout
    assert aside_files(storage, env) == ["disk.img.si-old"], "only the disk is kept, not the old config or link"
    env.mk("--rebuild", "rb1", "--keep-old", check=True)  # a second one keeps both
    assert sorted(aside_files(storage, env)) == ["disk.img.si-old", "disk.img.si-old.1"]
    env.run("rmxenvm", "rb1", "--yes", check=True)
    assert not os.path.exists(f"{storage}/domains/rb1")


def test_override_and_image_option(tmp_path):
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    env.mk("--rebuild", "rb1", "--memory", "768M", check=True)
    rec = record(env, "rb1")
    assert rec["memory"] == 768 and rec["ips"] == ["192.0.2.10"]
    assert re.search(r"^memory\s*=\s*768$", open(rec["config"]).read(), re.M)


REBUILD_STEPS = {"xfs": ["carry", "aside", "disks", "mount", "fixups", "boot", "unmount", "config", "autostart",
                         "confirm", "record", "discard"],
                 "ext4": ["carry", "aside", "disks", "filesystems", "mount", "fixups", "unmount", "config", "record",
                          "discard"]}


@pytest.mark.parametrize("where,step", [(w, s) for w, steps in REBUILD_STEPS.items() for s in steps])
def test_killed_at_each_step_rebuild_again_then_rm(where, step, xfs_dir, tmp_path, monkeypatch):
    storage = xfs_dir if where == "xfs" else str(tmp_path / "vms")
    before_host = host_state(str(tmp_path), ("rb1",))
    env, image, disk = made(tmp_path, storage)
    before, old = identity(disk, tmp_path / "r"), record(env, "rb1")
    monkeypatch.setenv("SI_XEN_KILL_AT", step)
    killed = env.mk("--rebuild", "rb1")
    assert killed.returncode == -9, killed.stderr
    monkeypatch.delenv("SI_XEN_KILL_AT")
    listed = env.run("lsxenvm", "rb1", check=True).stdout
    assert "unfinished rebuild (pid " in listed and f"stopped in step '{step}'" in listed, listed
    out = env.mk("--rebuild", "rb1", check=True)
    assert "an earlier rebuild" in out.stderr, out.stderr
    assert_rebuilt(env, disk, before, old, tmp_path)
    assert aside_files(storage, env) == []
    env.run("rmxenvm", "rb1", "--yes", check=True)
    assert not os.path.exists(f"{storage}/domains/rb1")
    assert host_state(str(tmp_path), ("rb1",)) == before_host


@pytest.mark.parametrize("step", ["aside", "fixups", "record"])
def test_killed_then_removed_leaves_nothing(step, tmp_path, monkeypatch):
    storage = str(tmp_path / "vms")
    before_host = host_state(str(tmp_path), ("rb1",))
    env, image, disk = made(tmp_path, storage)
    monkeypatch.setenv("SI_XEN_KILL_AT", step)
    assert env.mk("--rebuild", "rb1").returncode == -9
    monkeypatch.delenv("SI_XEN_KILL_AT")
    env.run("rmxenvm", "rb1", "--yes", check=True)
    assert not os.path.exists(f"{storage}/domains/rb1") and not os.listdir(f"{env.state}/vms")
    assert not os.path.exists(f"{env.state}/carry/rb1")
    assert [n for n in os.listdir(env.output) if "rb1" in n] == []
    assert not os.path.exists(f"{env.output}/auto") or not os.listdir(f"{env.output}/auto")
    assert host_state(str(tmp_path), ("rb1",)) == before_host


def test_failure_puts_the_vm_back_as_it_was(tmp_path):
    """A step failing late (the config: a broken template) after the old VM was set aside and the
    new disk made: the old disk, config, link and journal are back, byte for byte."""
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    journal, old = entries(env), record(env, "rb1")
    cfg = open(old["config"]).read()
    sha = subprocess.run(["sha256sum", disk], capture_output=True, text=True).stdout.split()[0]
    write(f"{env.base}/templates", "xl.cfg.j2", "{{ no_such_variable.field }}\n")
    bad = env.mk("--rebuild", "rb1")
    assert bad.returncode != 0 and len([x for x in bad.stderr.splitlines() if x.startswith("FATAL:")]) == 1, bad.stderr
    assert "-- step config" in open(f"{env.base}/log/rb1.log").read(), "it failed late, not at a check"
    assert "VM 'rb1' is as it was" in bad.stderr, bad.stderr
    assert entries(env) == journal and record(env, "rb1") == old, "the journal is the old one (its step lines aside)"
    assert subprocess.run(["sha256sum", disk], capture_output=True, text=True).stdout.split()[0] == sha
    assert open(old["config"]).read() == cfg and os.readlink(old["autostart"]) == old["config"]
    assert aside_files(str(tmp_path / "vms"), env) == [] and not os.path.exists(f"{env.state}/carry/rb1")


def test_bad_inputs_say_one_fatal(tmp_path):
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    for args, says in ((["--rebuild", "nosuch"], "no VM 'nosuch' made by si_mkxenvm"),
                       (["--rebuild", "rb1", "--hostname", "rb2"], "name two VMs"),
                       (["--keep-old", "--hostname", "rb2", "tiny"], "--keep-old is for --rebuild")):
        cp = env.mk(*args)
        lines = [x for x in cp.stderr.splitlines() if x.startswith("FATAL:")]
        assert cp.returncode != 0 and len(lines) == 1 and says in lines[0], cp.stderr
        assert "Traceback" not in cp.stderr


def test_timing_rebuild_against_a_further_vm(xfs_dir, tmp_path, capsys):
    """Reported, not asserted strictly: --rebuild against a further VM (a clone) of the same image."""
    env, image, disk = made(tmp_path, xfs_dir)
    env.mk("tiny", "--hostname", "rb2", *OPTS[:-1], "--ip", "192.0.2.11", "--dir", xfs_dir, "--output", env.output,
           check=True)  # the base of generation 2 exists now
    env.run("rmxenvm", "rb2", "--yes", check=True)
    t = time.monotonic()
    env.mk("tiny", "--hostname", "rb3", *OPTS[:-1], "--dir", xfs_dir, "--output", env.output, check=True)
    further = time.monotonic() - t
    t = time.monotonic()
    env.mk("--rebuild", "rb1", check=True)
    rebuild = time.monotonic() - t
    with capsys.disabled():
        print(f"\n[timing] further VM {further:.2f} s, --rebuild {rebuild:.2f} s ({rebuild / further:.2f}x)")
    assert rebuild < 4 * further


def test_timing_on_debian12(debian12_image, xfs_dir, tmp_path, capsys):
    """Reported: --rebuild of a debian12 VM against a further VM (both clones of its base, XFS),
    medians of 3; asserted loosely (2 shared cores, other runs beside). The image is built if the
    cache lacks it (a cold CI skipped this test until 2026-12-05)."""
    env = make_env(tmp_path / "e", os.path.dirname(debian12_image))
    opts = ["--memory", "512M", "--size", "3G", "--noswap", "--dhcp", "--dir", xfs_dir, "--output", env.output]
    env.mk("debian12", "--hostname", "rb1", *opts, check=True)  # the first builds the base
    times: dict[str, list[float]] = {"further": [], "rebuild": []}
    for i in range(3):
        for what, argv in (("further", ["debian12", "--hostname", f"rb{i + 2}", *opts]), ("rebuild", ["--rebuild", "rb1"])):
            t = time.monotonic()
            env.mk(*argv, check=True)
            times[what].append(time.monotonic() - t)
    for i in range(1, 5):
        env.run("rmxenvm", f"rb{i}", "--yes", "--prune-bases", check=True)
    med = {k: sorted(v)[1] for k, v in times.items()}
    with capsys.disabled():
        print(f"\n[timing debian12] median further {med['further']:.2f} s, rebuild {med['rebuild']:.2f} s "
              f"({med['rebuild'] / med['further']:.2f}x); all: {times}")
    assert med["rebuild"] <= 2 * med["further"] + 0.3


def test_dry_run_changes_nothing(tmp_path):
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    journal, mtime = open(f"{env.state}/vms/rb1.journal").read(), os.stat(disk).st_mtime_ns
    out = env.mk("--rebuild", "rb1", "--dry-run", check=True).stdout
    assert "Dry run: nothing was changed." in out and "00:16:3e" in out
    assert open(f"{env.state}/vms/rb1.journal").read() == journal and os.stat(disk).st_mtime_ns == mtime
    assert not os.path.exists(f"{env.state}/carry")


def test_a_key_type_the_old_vm_lacks_is_made_the_others_carried(tmp_path):
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    with mounted(disk, tmp_path / "m") as root:
        for n in ("ssh_host_ecdsa_key", "ssh_host_ecdsa_key.pub"):
            os.unlink(f"{root}/etc/ssh/{n}")
    before = identity(disk, tmp_path / "r")
    env.mk("--rebuild", "rb1", check=True)
    after = identity(disk, tmp_path / "r")
    assert {k: v for k, v in after.items() if "ecdsa" not in k} == before
    assert after["etc/ssh/ssh_host_ecdsa_key"][0] == oct(0o100600) and after["etc/ssh/ssh_host_ecdsa_key.pub"][1]

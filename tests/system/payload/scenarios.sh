# The system tests' scenarios, run inside the testbed's dom0 (sourced after lib.sh).
# Each takes a VM name and checks one thing end to end; `scenario` reports ok/FAIL.

IMAGE=${IMAGE:-debian12}
VG=${VG:-vg0}

setup_dom0() {
  install_sixen || return 1
  mount_images
  mount_host_vms || return 1
  make_bridge
  # The static-IP guests' gateway: dom0 itself, on the bridge (nothing leaves the testbed).
  ip addr add 10.0.0.1/24 dev xenbr0 2>/dev/null || true
  # And a DHCP server there: --dhcp guests get an address instead of waiting a minute for none.
  dnsmasq --interface=xenbr0 --bind-interfaces --port=0 --no-resolv --dhcp-range=10.0.0.100,10.0.0.199,1h \
    --pid-file=/run/dnsmasq-xenbr0.pid --dhcp-leasefile=/run/dnsmasq-xenbr0.leases --user=root \
    </dev/null >"$TESTBED_RESULTS/dnsmasq.out" 2>&1 || echo "WARNING: no DHCP server on xenbr0"
}

# A VM si_mkxenvm made on the host (disk "vms"): xl create its config, then vm_checked.
# CMDLINE_EXTRA adds kernel arguments first (the harness's own test hangs a guest that way).
host_vm() {
  local name=$1 cfg=/srv/xen/etc/$1.cfg
  [ -e "$cfg" ] || { echo "no $cfg: the host did not make $name"; return 1; }
  if [ -n "${CMDLINE_EXTRA:-}" ]; then
    sed -i "s|^\(cmdline *= *\"[^\"]*\)\"|\1 $CMDLINE_EXTRA\"|" "$cfg"
    grep '^cmdline' "$cfg" || { echo "no kernel command line in $cfg"; return 1; }
  fi
  export SI_XEN_CONFIG=$HOST_CONF
  if [ -n "${EXPECT_SLIM:-}" ]; then  # the article's 256 MB: made so by the host, the Xen-sized initramfs said
    grep -q '^memory *= *256$' "$cfg" || { echo "$name was not made with 256 MiB:"; grep '^memory' "$cfg"; return 1; }
    grep -q "^Initramfs *: Xen-sized" "/srv/xen/log/$name.out" \
      || { echo "si_mkxenvm did not say $name boots a Xen-sized initramfs:"; head -n 12 "/srv/xen/log/$name.out"; return 1; }
    echo "$name: 256 MiB, a Xen-sized initramfs ($(grep -o 'Xen-sized, [0-9.]* MiB made from [^,]*, [0-9.]* MiB' "/srv/xen/log/$name.out"))"
  fi
  local t=$SECONDS
  xl create "$cfg"
  timing "xl_create_$name" $((SECONDS - t))
  watch_login "$name"
  vm_checked "$name"
}

# si_mkxenvm NAME ... --start inside dom0 (LVM, thin pools, --start, --autostart), then vm_checked.
# CONSOLE_HUP=1: with --console, on a terminal that is hung up once the guest shows its login prompt
# (an admin's ssh session dropped while attached): the VM made must stay, running and recorded.
dom0_vm() {
  local name=$1 t=$SECONDS
  shift
  if [ -n "${CONSOLE_HUP:-}" ]; then
    console_hangup "$name" "$@" || return 1
  else
    si_mkxenvm "$IMAGE" --hostname "$name" --memory 512M --size 2G --swap 128M --yes --start "$@"
    watch_login "$name"
  fi
  timing "mkxenvm_$name" $((SECONDS - t))
  grep -qx "$name" <<< "$(xl list | awk '{print $1}')" || { echo "xl list does not show $name"; return 1; }
  [ -z "${EXPECT_AUTOSTART:-}" ] || [ -L "/etc/xen/auto/$name.cfg" ] || { echo "no /etc/xen/auto/$name.cfg link"; return 1; }
  vm_checked "$name"
}

console_hangup() {
  local name=$1 flag=/run/sx-hangup-$1 rc=/run/sx-console-rc-$1 pid t
  shift
  rm -f "$flag" "$rc"
  python3 ./onpty.py "$flag" "$rc" "$TESTBED_RESULTS/console-$name.typescript" \
    si_mkxenvm "$IMAGE" --hostname "$name" --memory 512M --size 2G --swap 128M --yes --start --console "$@" &
  pid=$!
  t=$SECONDS
  until xl domid "$name" >/dev/null 2>&1; do  # pulled, made, then created: the console comes after
    [ ! -s "$rc" ] || { echo "si_mkxenvm ended ($(cat "$rc")) before $name was created:"; \
      tail -n 20 "$TESTBED_RESULTS/console-$name.typescript"; return 1; }
    (( SECONDS - t < $(budget 300) )) || { echo "no domain $name after $((SECONDS - t)) s"; kill "$pid"; return 1; }
    sleep 1
  done
  watch_login "$name"
  wait_login "$name"
  [ -s "/run/sx-login-$name" ] || { kill "$pid"; return 1; }
  touch "$flag"  # the terminal goes away
  t=$SECONDS
  until [ -s "$rc" ]; do
    (( SECONDS - t < $(budget 60) )) || { echo "si_mkxenvm still running $((SECONDS - t)) s after its terminal hung up"; return 1; }
    sleep 1
  done
  wait "$pid" || true
  { tail -n 5 "$TESTBED_RESULTS/console-$name.typescript"; echo; } | sed "s/^/  console| /"
  [ "$(cat "$rc")" = 0 ] || { echo "si_mkxenvm --console exited $(cat "$rc") when its terminal hung up"; return 1; }
  xl domid "$name" >/dev/null 2>&1 || { echo "domain $name is gone after the console's hang-up"; return 1; }
  si_lsxenvm "$name" >/dev/null || { echo "si_lsxenvm does not list $name after the console's hang-up"; return 1; }
  echo "$name kept running after its console's terminal hung up (si_mkxenvm exit 0)"
}

# A VM made in dom0 from the image server ($SERVER: an rsync daemon on the host that QEMU's user
# network starts per connection, as a SystemImager server's would answer): dom0's NIC gets its
# address on that network, the server must list the image, then dom0_vm with --server.
server_vm() {
  local name=$1 dev ifc= t=$SECONDS
  shift
  for dev in /sys/class/net/*; do
    [ -e "$dev/device" ] && ifc=${dev##*/} && break  # the one real NIC (not lo, not xenbr0)
  done
  [ -n "$ifc" ] || { echo "dom0 has no network interface"; return 1; }
  ip link set "$ifc" up
  ip addr add 10.0.2.15/24 dev "$ifc" 2>/dev/null || true
  until grep -qw "$IMAGE" <<< "$(rsync --contimeout=10 "rsync://$SERVER/" 2>/dev/null)"; do
    (( SECONDS - t < $(budget 60) )) || { echo "image server $SERVER does not list $IMAGE:"; rsync "rsync://$SERVER/"; return 1; }
    sleep 2
  done
  echo "image server $SERVER lists $IMAGE (via $ifc)"
  dom0_vm "$name" --server "$SERVER" "$@"
  [ -d "/var/cache/si-xen/images" ] || { echo "no pulled image in /var/cache/si-xen/images"; return 1; }
}

# Its login prompt (and what EXPECT_CONSOLE/PING/EXPECT_CLONE ask), then si_rmxenvm removes every trace.
vm_checked() {
  local name=$1
  wait_login "$name"
  [ -z "${EXPECT_CONSOLE:-}" ] || grep -qF "$EXPECT_CONSOLE" "/var/log/xen/console/guest-$name.log" \
    || { echo "console of $name does not show '$EXPECT_CONSOLE'"; return 1; }
  [ -z "${PING:-}" ] || ping_guest "$PING"
  [ -z "${KEYSCAN:-}" ] || keyscan_guest "$name" "$KEYSCAN"
  [ -z "${EXPECT_CLONE:-}" ] || si_lsxenvm "$name" | grep "clone of" \
    || { echo "$name is not a clone of a base"; return 1; }
  [ -z "${CLOUD:-}" ] || cloud_checked "$name" || return 1
  vm_removed "$name"
}

# Issue 30: a guest with cloud-init, made with --user-data (the harness's: the test's SSH key for
# the image's default user, a runcmd writing a marker). Reached over SSH at its DHCP lease, once its
# host keys are the ones si_mkxenvm printed: cloud-init done, without errors, from si-xen's NoCloud
# seed, no network datasource probed, the user-data ran, the hostname si_mkxenvm gave; and how long
# cloud-init's stages took (CLOUD_INIT line: the test compares the boot with a guest without it).
cloud_checked() {
  local name=$1 ip t=$SECONDS kh=/run/kh-$1 key=/run/cloud-key out
  ip=$(leased "$name" "$(grep -o 'mac=[0-9a-f:]*' "/srv/xen/etc/$name.cfg" | head -n 1 | cut -d= -f2)") || return 1
  keyscan_guest "$name" "$ip" || return 1
  ssh-keyscan -T 5 "$ip" 2>/dev/null > "$kh"  # the keys just proved to be si_mkxenvm's
  install -m 600 cloud-key "$key"
  out=$(timeout "$(budget 240)" ssh -i "$key" -o BatchMode=yes -o UserKnownHostsFile="$kh" -o ConnectTimeout=20 \
    "debian@$ip" 'cloud-init status --long --wait; echo "hostname: $(hostname)"
      echo "marker: $(cat /var/lib/si-xen-test-marker)"; echo "instance-id: $(cat /var/lib/cloud/data/instance-id)"
      echo "network probes: $(grep -c url_helper /var/log/cloud-init.log)"
      echo "warnings: $(grep -cE "\[(WARNING|ERROR|CRITICAL)\]" /var/log/cloud-init.log)"
      grep -E "\[(WARNING|ERROR|CRITICAL)\]" /var/log/cloud-init.log | head -n 5
      cloud-init analyze blame | grep -E "/search-" | sed "s/^ */search /"
      journalctl -b -o short-monotonic -u cloud-init-local -u cloud-init -u cloud-config -u cloud-final \
        | grep -E "systemd\[1\]: (Starting|Finished) cloud-"' 2>&1)
  echo "$out" | sed "s/^/  $name: /"
  timing "cloud_checked_$name" $((SECONDS - t))
  grep -q "^status: done" <<<"$out" || { echo "cloud-init of $name is not done without errors"; return 1; }
  grep -q "DataSourceNoCloud \[seed=/var/lib/cloud/seed/nocloud\]" <<<"$out" \
    || { echo "cloud-init of $name did not run from si-xen's NoCloud seed"; return 1; }
  grep -qx "hostname: $name" <<<"$out" || { echo "$name's hostname is not the one si_mkxenvm gave"; return 1; }
  grep -qx "marker: si-xen user-data ran" <<<"$out" || { echo "the user-data of $name did not run"; return 1; }
  grep -qx "network probes: 0" <<<"$out" || { echo "cloud-init of $name probed the network for a datasource"; return 1; }
  grep -qx "warnings: 0" <<<"$out" || { echo "cloud-init of $name logged warnings"; return 1; }
  grep -q "^instance-id: si-xen-" <<<"$out" || { echo "$name's instance-id is not si-xen's"; return 1; }
  # cloud-init's own account of its datasource search (analyze blame): NoCloud's seed only, read at once
  grep -q "^search .*/search-NoCloud)" <<<"$out" || { echo "cloud-init of $name searched no NoCloud datasource"; return 1; }
  ! grep "^search " <<<"$out" | grep -v "/search-NoCloud)" || { echo "cloud-init of $name searched other datasources"; return 1; }
  # systemd's own times (seconds since boot, the journal's): local and init run before the login
  # prompt (getty waits for them); the boot as a whole is compared in the test (test_xen_boot.py)
  awk -v name="$name" '$1 == "search" {search += $2 + 0}
       /systemd\[1\]: (Starting|Finished) cloud-/ {
         t = $0; sub(/^[^[]*\[ */, "", t); sub(/\].*/, "", t)
         u = $0; sub(/.*(Starting|Finished) /, "", u); sub(/\.service.*/, "", u)
         if ($0 ~ /Starting/) s[u] = t; else d[u] = t - s[u] }
       END {printf "CLOUD_INIT %s before_login=%.1f local=%.1f init=%.1f config=%.1f final=%.1f search=%.2f\n", name,
            d["cloud-init-local"] + d["cloud-init"], d["cloud-init-local"], d["cloud-init"], d["cloud-config"],
            d["cloud-final"], search}' <<<"$out"
}

ping_guest() {
  local t=$SECONDS
  until ping -c 1 -W 2 "$1" >/dev/null; do
    (( SECONDS - t < $(budget 60) )) || { echo "no answer from $1 on xenbr0"; return 1; }
    sleep 1
  done
  echo "$1 answers on xenbr0"
}

# The guest's sshd answers with exactly the host keys si_mkxenvm printed when it made the VM
# (its output is kept in /srv/xen/log/NAME.out): an image without keys, as si_getimage leaves it,
# still gives a VM that can be reached, and by the keys its admin was shown.
keyscan_guest() {
  local name=$1 ip=$2 t=$SECONDS printed scanned
  printed=$(sed -n 's/^SSH Fingerprint *: *\(SHA256:[^ ]*\).*/\1/p' "/srv/xen/log/$name.out" | sort)
  [ "$(grep -c . <<<"$printed")" -ge 3 ] || { echo "si_mkxenvm printed fewer than 3 SSH host keys for $name:"; \
    grep -i 'ssh' "/srv/xen/log/$name.out" || true; return 1; }
  scanned=$(scan_keys "$ip") || { echo "no SSH host key from $ip (sshd of $name not answering)"; return 1; }
  [ "$scanned" = "$printed" ] || { printf 'host keys of %s differ:\nprinted:\n%s\nscanned:\n%s\n' "$name" "$printed" "$scanned"; return 1; }
  echo "$ip answers SSH with the $(wc -l <<<"$scanned") host keys si_mkxenvm printed"
  timing "keyscan_$name" $((SECONDS - t))
}

# IP's SSH host key fingerprints, sorted. sshd starts beside the getty: its keys may come a
# little after the login prompt.
scan_keys() {
  local ip=$1 t=$SECONDS scanned
  until scanned=$(ssh-keyscan -T 5 "$ip" 2>/dev/null | ssh-keygen -lf - 2>/dev/null | awk '{print $2}' | sort) \
      && [ -n "$scanned" ]; do
    (( SECONDS - t < $(budget 90) )) || return 1
    sleep 2
  done
  echo "$scanned"
}

vm_removed() {
  local name=$1 etc=/etc/xen t=$SECONDS
  [ -z "${SI_XEN_CONFIG:-}" ] || etc=/srv/xen/etc
  # A clean shutdown costs 30-50 s under TCG: GRACEFUL=1 scenarios prove --stop does one,
  # the others pull the plug first (si_rmxenvm --stop then finds the domain gone).
  [ -n "${GRACEFUL:-}" ] || xl destroy "$name"
  si_rmxenvm --yes --stop "$name"
  if xl domid "$name" >/dev/null 2>&1; then echo "domain $name still running"; return 1; fi
  if [ -e "$etc/$name.cfg" ] || [ -L "$etc/auto/$name.cfg" ]; then echo "$etc/$name.cfg left behind"; return 1; fi
  if grep -q "^ *$name-" <<< "$(lvs --noheadings -o lv_name 2>/dev/null)"; then echo "LVs of $name left"; return 1; fi
  if [ -e "/srv/xen/domains/$name" ]; then echo "/srv/xen/domains/$name left behind"; return 1; fi
  if grep -q "/srv/xen/domains/$name/" <<< "$(losetup -a)"; then echo "loop devices of $name left"; return 1; fi
  timing "removal_$name" $((SECONDS - t))
  echo "$name removed"
}

# xen-create-image's copy install of the image, with si-xen's hooks as the systemimager dist.
xentools_vm() {
  local name=$1 t=$SECONDS
  si_xenhooks install-xen-tools
  if ! xen-create-image --hostname="$name" --dist=systemimager --install-method=copy \
    --install-source="/srv/images/$IMAGE" --lvm="$VG" --size=2G --swap=128M --memory=512M --dhcp \
    --fs=ext4 </dev/null > "$TESTBED_RESULTS/xen-create-image-$name.out" 2>&1; then
    cp "/var/log/xen-tools/$name.log" "$TESTBED_RESULTS/" 2>/dev/null || true
    echo "xen-create-image failed:"; tail -n 30 "$TESTBED_RESULTS/xen-create-image-$name.out"
    return 1
  fi
  timing "xen_create_image_$name" $((SECONDS - t))
  sed 's/^/  cfg| /' "/etc/xen/$name.cfg"
  xl create "/etc/xen/$name.cfg"
  watch_login "$name"
  wait_login "$name"
  xl destroy "$name"
  xen-delete-image --lvm="$VG" "$name"
  si_xenhooks uninstall-xen-tools
}

# --lvm without Xen (the plain-Linux testbed): the LVs, a clean filesystem, the guest fixed up,
# then si_rmxenvm takes the LVs away.
lvm_made() {
  local name=$1 t=$SECONDS lv root
  si_mkxenvm "$IMAGE" --hostname "$name" --memory 512M --size 2G --swap 128M --dhcp --lvm "$VG" --yes
  timing "mkxenvm_$name" $((SECONDS - t))
  lvs "$VG"
  root=$(lvs --noheadings -o lv_path "$VG" | awk -v n="$name" '$1 ~ "/"n"-disk$" {print $1}')
  [ -n "$root" ] || { echo "no root LV $VG/$name-disk"; return 1; }
  for lv in $(lvs --noheadings -o lv_path "$VG" | grep "/$name-"); do
    echo "LV $lv: $(blkid -o value -s TYPE "$lv")"
  done
  e2fsck -fn "$root"
  mkdir -p "/mnt/$name"
  mount -o ro "$root" "/mnt/$name"
  local ok=0; guest_fixed_up "/mnt/$name" "$name" || ok=1
  umount "/mnt/$name"
  [ $ok = 0 ] || return 1
  si_rmxenvm --yes "$name"
  if grep -q "^ *$name-" <<< "$(lvs --noheadings -o lv_name "$VG")"; then echo "LVs of $name left"; return 1; fi
  [ ! -e "/etc/xen/$name.cfg" ] || { echo "/etc/xen/$name.cfg left behind"; return 1; }
  echo "$name removed"
}

# What every clone of the golden image must have: its own name, an fstab for the VM's
# disks (not the golden client's), and a getty on Xen's console.
guest_fixed_up() {
  local root=$1 name=$2
  echo "hostname: $(cat "$root/etc/hostname")"; sed 's/^/  fstab| /' "$root/etc/fstab"
  [ "$(cat "$root/etc/hostname")" = "$name" ] || { echo "hostname is not $name"; return 1; }
  ! grep -q '0b7c2f7e-1d2a-4c5e-9f00-3a1b2c3d4e5f\|/dev/sda' "$root/etc/fstab" || { echo "golden client's fstab kept"; return 1; }
  grep -Eq '^[^#]+[[:space:]]/[[:space:]]+ext4' "$root/etc/fstab" || { echo "no root in fstab"; return 1; }
  grep -q swap "$root/etc/fstab" || { echo "no swap in fstab"; return 1; }
  ls "$root"/etc/systemd/system/*/serial-getty@hvc0.service >/dev/null 2>&1 \
    || grep -q hvc0 "$root/etc/inittab" 2>/dev/null || { echo "no getty on hvc0"; return 1; }
  grep -q "$name" "$root/etc/hosts" || { echo "$name not in /etc/hosts"; return 1; }
}

# --thin-pool without Xen: the first VM builds the image's base LV, the second is a thin
# snapshot of it; both carry their own identity; removing the last prunes the base.
thin_made() {
  local a=$1 b=$2 t=$SECONDS origin
  for n in "$a" "$b"; do
    si_mkxenvm "$IMAGE" --hostname "$n" --memory 512M --size 2G --swap 128M --dhcp --lvm "$VG" \
      --thin-pool pool0 --yes || return 1
  done
  timing "mkxenvm_thin_two" $((SECONDS - t))
  lvs -o lv_name,pool_lv,origin,data_percent "$VG"
  origin=$(lvs --noheadings -o origin "$VG/$b-disk" | tr -d ' ')
  case "$origin" in si-base-*) echo "$b-disk is a snapshot of $origin";; *) echo "$b-disk is no clone"; return 1;; esac
  for n in "$a" "$b"; do
    e2fsck -fn "/dev/$VG/$n-disk" >/dev/null || { echo "$n-disk not clean"; return 1; }
    mkdir -p "/mnt/$n" && mount -o ro "/dev/$VG/$n-disk" "/mnt/$n"
    local ok=0; guest_fixed_up "/mnt/$n" "$n" || ok=1
    umount "/mnt/$n"
    [ $ok = 0 ] || return 1
  done
  si_lsxenvm >/tmp/lsxenvm.out 2>&1
  grep -q "clone of /dev/$VG/$origin" /tmp/lsxenvm.out || { echo "si_lsxenvm does not show the base:"; cat /tmp/lsxenvm.out; return 1; }
  si_rmxenvm --yes --prune-bases "$a" "$b" || return 1
  if grep -q "si-base-\|$a-\|$b-" <<< "$(lvs --noheadings -o lv_name "$VG")"; then echo "LVs left"; return 1; fi
  echo "thin clones made and removed"
}

# SIGKILL at step boundaries of an LVM deploy (thick LVs, or a thin pool's base build and
# clone): si_lsxenvm shows it incomplete, a plain re-run is refused, si_rmxenvm leaves no LV,
# mount, loop device or lock, and then a plain re-run completes. ARGS: extra si_mkxenvm args.
crash_recovered() {
  local name=$1 steps=$2 step rc
  shift 2
  local argv=("$IMAGE" --hostname "$name" --memory 512M --size 2G --swap 128M --dhcp --lvm "$VG" --yes "$@")
  for step in $steps; do
    rc=0; SI_XEN_KILL_AT=$step si_mkxenvm "${argv[@]}" >/dev/null 2>&1 || rc=$?
    [ "$rc" = 137 ] || { echo "not killed at $step (exit $rc)"; return 1; }
    grep -q "stopped in step '$step'" <<< "$(si_lsxenvm "$name")" || { echo "si_lsxenvm does not show $name stopped at $step"; si_lsxenvm; return 1; }
    rc=0; si_mkxenvm "${argv[@]}" 2>"/tmp/rerun.err" || rc=$?
    [ "$rc" = 1 ] && grep -q "^FATAL: VM '$name' has an unfinished deploy.*si_rmxenvm $name" /tmp/rerun.err \
      || { echo "a plain re-run after the crash at $step was not refused:"; cat /tmp/rerun.err; return 1; }
    si_rmxenvm --yes "$name" >/dev/null
    nothing_left "$name" "after the crash at $step" || return 1
    echo "killed at $step: recovered"
  done
  si_mkxenvm "${argv[@]}" >/dev/null
  si_rmxenvm --yes --prune-bases "$name" >/dev/null
  nothing_left "$name" "after the re-run" && echo "$name re-run made and removed"
}

# si_updatexenvm on LVM: a thin VM (updated on a thin snapshot, swapped in by lvrename) and a
# thick one (in place), made from a writable copy of the image (an overlay on the read-only one,
# changed by replacing, never writing through), brought to its next generation: the changes in
# the VM, its SSH host keys and machine-id byte-equal, no *.upd, *.upd-old or *.si-old LV left; SIGKILL at
# snapshot, swap, record (thin) and transfer (thick, part-updated), each run finishing the last.
UPD_IMAGE=${IMAGE}u
update_lvm() {
  local thin=$1 thick=$2 copy=/srv/images/$IMAGE"u" rw=/run/sx-upd t=$SECONDS n step rc loops
  loops=$(losetup -a | wc -l)
  mkdir -p "$copy" "$rw/up" "$rw/work"
  mount -t overlay overlay -o "lowerdir=/srv/images/$IMAGE,upperdir=$rw/up,workdir=$rw/work,xino=on" "$copy"
  trap 'umount /srv/images/'"$UPD_IMAGE"' 2>/dev/null; rm -rf /run/sx-upd; rmdir /srv/images/'"$UPD_IMAGE"' 2>/dev/null' EXIT
  local argv=(--memory 512M --size 2G --swap 128M --dhcp --lvm "$VG" --yes)
  si_mkxenvm "$UPD_IMAGE" --hostname "$thin" "${argv[@]}" --thin-pool pool0 >/dev/null
  si_mkxenvm "$UPD_IMAGE" --hostname "$thick" "${argv[@]}" >/dev/null
  timing mkxenvm_update_two $((SECONDS - t))
  for n in "$thin" "$thick"; do identity_of "$n" > "/tmp/identity-$n.before" || return 1; done
  # the image's next generation: a file added, one changed, one removed
  [ -f "$copy/etc/issue.net" ] && [ -f "$copy/etc/debian_version" ] || { echo "the image lacks the files to change"; return 1; }
  echo "added by the update" > "$copy/etc/.si-update" && mv "$copy/etc/.si-update" "$copy/etc/si-update-added"
  echo "12.99-si-update" > "$copy/etc/.si-dv" && mv "$copy/etc/.si-dv" "$copy/etc/debian_version"
  rm "$copy/etc/issue.net"
  t=$SECONDS
  for step in snapshot swap record; do  # each run first finishes the one killed before it
    rc=0; SI_XEN_KILL_AT=$step si_updatexenvm "$thin" >/dev/null 2>&1 || rc=$?
    [ "$rc" = 137 ] || { echo "$thin: not killed at $step (exit $rc)"; return 1; }
    grep -q "unfinished update .* stopped in step '$step'" <<< "$(si_lsxenvm "$thin")" || { echo "si_lsxenvm does not show $thin's update stopped at $step"; si_lsxenvm "$thin"; return 1; }
    if [ "$step" = swap ]; then
      lvs "$VG/$thin-disk.upd" >/dev/null 2>&1 || { echo "no thin snapshot $thin-disk.upd before the swap"; lvs "$VG"; return 1; }
    fi
    echo "$thin killed at $step"
  done
  rc=0; SI_XEN_KILL_AT=transfer si_updatexenvm "$thick" >/dev/null 2>&1 || rc=$?
  [ "$rc" = 137 ] || { echo "$thick: not killed at transfer (exit $rc)"; return 1; }
  echo "$thick killed at transfer"
  timing update_kills $((SECONDS - t)); t=$SECONDS
  si_updatexenvm "$thin" > /tmp/update-thin.out 2>&1 || { cat /tmp/update-thin.out; return 1; }
  timing update_thin $((SECONDS - t)); t=$SECONDS
  si_updatexenvm "$thick" > /tmp/update-thick.out 2>&1 || { cat /tmp/update-thick.out; return 1; }
  timing update_thick $((SECONDS - t))
  cat /tmp/update-thin.out /tmp/update-thick.out
  grep -q "^Updated $thin to $UPD_IMAGE .*, copy)" /tmp/update-thin.out || { echo "$thin was not updated on a copy"; return 1; }
  grep -q "^Updated $thick to $UPD_IMAGE .*, in place)" /tmp/update-thick.out || { echo "$thick was not updated in place"; return 1; }
  lvs -o lv_name,pool_lv,origin,data_percent "$VG"
  ! lvs --noheadings -o lv_name "$VG" | grep -E '\.upd|\.si-old' || { echo "update LVs left"; return 1; }
  for n in "$thin" "$thick"; do
    mkdir -p "/mnt/$n" && mount -o ro "/dev/$VG/$n-disk" "/mnt/$n"
    local ok=0
    { [ "$(cat "/mnt/$n/etc/si-update-added")" = "added by the update" ] || { echo "$n: no added file"; ok=1; }
      [ "$(cat "/mnt/$n/etc/debian_version")" = "12.99-si-update" ] || { echo "$n: changed file not changed"; ok=1; }
      [ ! -e "/mnt/$n/etc/issue.net" ] || { echo "$n: removed file still there"; ok=1; }
      guest_fixed_up "/mnt/$n" "$n" >/dev/null || { echo "$n: fixups lost"; ok=1; }
    }
    umount "/mnt/$n"
    [ $ok = 0 ] || return 1
    identity_of "$n" > "/tmp/identity-$n.after" || return 1
    cmp -s "/tmp/identity-$n.before" "/tmp/identity-$n.after" || { echo "$n's identity changed:"; diff "/tmp/identity-$n.before" "/tmp/identity-$n.after"; return 1; }
    echo "$n: the image's changes in, its identity kept ($(grep -c ssh_host "/tmp/identity-$n.after") host key files)"
  done
  capture_lvm "$thin" "$copy" || return 1
  rebuild_lvm "$thin" "$thick" || return 1
  si_rmxenvm --yes --prune-bases "$thin" "$thick" >/dev/null
  for n in "$thin" "$thick"; do nothing_left "$n" "after si_rmxenvm" || return 1; done
  ! grep -q "si-base-" <<< "$(lvs --noheadings -o lv_name "$VG")" || { echo "base LV left"; return 1; }
  [ "$(losetup -a | wc -l)" = "$loops" ] || { echo "loop devices left:"; losetup -a; return 1; }
  echo "updated, killed and finished, removed"
}

# si_getxenimage on LVM (update_lvm's thin VM, at the image's next generation): a V2P capture of
# the stopped VM equals that generation where si-xen changed it (fstab, no hvc0 getty), without its
# identity; then the VM "crashed" (its filesystem shut down, as by a power cut, after 40 files were
# written and synced): captured again (--update: what changed copied) from a thin snapshot with its journal replayed,
# the 40 files in, the VM's LV left as it was (still dirty), no snapshot left.
capture_lvm() {
  local thin=$1 golden=$2 t=$SECONDS cap=/srv/captured lv=$VG/sx-captured ok=0 i
  lvcreate -q -y -L 2G -n sx-captured "$VG" >/dev/null && mkfs.ext4 -q "/dev/$lv" && mkdir -p $cap /etc/si-cap \
    && mount "/dev/$lv" $cap || return 1
  printf 'DEFAULT_IMAGE_DIR = %s\n' $cap > /etc/si-cap/systemimager.conf
  { SIS_CONFDIR=/etc/si-cap si_getxenimage "$thin" v2p > /tmp/capture-v2p.out 2>&1 || { cat /tmp/capture-v2p.out; ok=1; }
    [ $ok = 0 ] && { cat /tmp/capture-v2p.out
      [ "$(cat $cap/v2p/etc/debian_version)" = "12.99-si-update" ] || { echo "v2p: not the VM's generation"; ok=1; }
      [ ! -e $cap/v2p/etc/issue.net ] || { echo "v2p: a file the update removed is back"; ok=1; }
      cmp -s "$golden/etc/fstab" $cap/v2p/etc/fstab || { echo "v2p: fstab is not the golden client's"; ok=1; }
      ! ls $cap/v2p/etc/systemd/system/*/serial-getty@hvc0.service 2>/dev/null || { echo "v2p: hvc0 getty kept"; ok=1; }
      ! ls $cap/v2p/etc/ssh/ssh_host_* 2>/dev/null || { echo "v2p: host keys kept"; ok=1; }
      [ ! -s $cap/v2p/etc/machine-id ] || { echo "v2p: machine-id kept"; ok=1; }; }
  }
  if [ $ok = 0 ]; then  # the crash
    mkdir -p /mnt/crash && mount "/dev/$VG/$thin-disk" /mnt/crash && mkdir -p /mnt/crash/srv/late || ok=1
    for i in $(seq 40); do echo late > /mnt/crash/srv/late/f$i; done
    # the crash as xfstests makes one (FS_IOC_SHUTDOWN, ext4's too): the journal flushed, never
    # checkpointed. (A thin snapshot of the mounted LV would not do: device-mapper freezes the fs.)
    sync -f /mnt/crash/srv/late && xfs_io -x -c "shutdown -f" /mnt/crash || ok=1
    umount /mnt/crash
    grep -q needs_recovery <<< "$(dumpe2fs -h "/dev/$VG/$thin-disk" 2>/dev/null)" || { echo "the crashed VM is not dirty"; ok=1; }
  fi
  if [ $ok = 0 ]; then
    SIS_CONFDIR=/etc/si-cap si_getxenimage "$thin" v2p --keep-xen --update > /tmp/capture-crash.out 2>&1 \
      || { cat /tmp/capture-crash.out; ok=1; }
    cat /tmp/capture-crash.out
    grep -q "not shut down cleanly (/ (ext4)): reading thin snapshots" /tmp/capture-crash.out || { echo "no snapshot read said"; ok=1; }
    [ "$(ls $cap/v2p/srv/late 2>/dev/null | wc -l)" = 40 ] || { echo "the crashed VM's last files are not in the image"; ok=1; }
    grep -q needs_recovery <<< "$(dumpe2fs -h "/dev/$VG/$thin-disk" 2>/dev/null)" || { echo "the VM's LV was written"; ok=1; }
    ! grep -q '\.drift' <<< "$(lvs --noheadings -o lv_name "$VG")" || { echo "a snapshot is left"; ok=1; }
  fi
  umount $cap; lvremove -q -y "$lv" >/dev/null
  timing capture_lvm $((SECONDS - t))
  [ $ok = 0 ] && echo "captured on LVM: V2P of the stopped VM, then the crashed one from a replayed thin snapshot"
}

# si_mkxenvm --rebuild on LVM (update_lvm's VMs, from the image's current generation): the thin
# VM killed once its old LVs are set aside by lvrename (the re-run puts them back, then rebuilds),
# the thick one with --keep-old (its old LV stays as NAME-disk.si-old); both keep their identity.
rebuild_lvm() {
  local thin=$1 thick=$2 t=$SECONDS rc n
  rc=0; SI_XEN_KILL_AT=disks si_mkxenvm --rebuild "$thin" --yes >/dev/null 2>&1 || rc=$?
  [ "$rc" = 137 ] || { echo "$thin: the rebuild was not killed at disks (exit $rc)"; return 1; }
  lvs "$VG/$thin-disk.si-old" >/dev/null 2>&1 || { echo "$thin-disk was not set aside when killed"; lvs "$VG"; return 1; }
  si_mkxenvm --rebuild "$thin" --yes > /tmp/rebuild-thin.out 2>&1 || { cat /tmp/rebuild-thin.out; return 1; }
  grep -q "stopped in step 'disks'" /tmp/rebuild-thin.out || { echo "the killed rebuild was not put back first:"; cat /tmp/rebuild-thin.out; return 1; }
  si_mkxenvm --rebuild "$thick" --yes --keep-old > /tmp/rebuild-thick.out 2>&1 || { cat /tmp/rebuild-thick.out; return 1; }
  timing rebuild_lvm $((SECONDS - t))
  lvs -o lv_name,pool_lv,origin "$VG"
  lvs "$VG/$thick-disk.si-old" >/dev/null 2>&1 || { echo "--keep-old kept no $thick-disk.si-old"; return 1; }
  ! lvs "$VG/$thin-disk.si-old" >/dev/null 2>&1 || { echo "$thin's old LV is left"; return 1; }
  grep -q "old disk kept /dev/$VG/$thick-disk.si-old" <<< "$(si_lsxenvm "$thick")" || { echo "si_lsxenvm does not show $thick's kept disk"; si_lsxenvm "$thick"; return 1; }
  for n in "$thin" "$thick"; do
    identity_of "$n" > "/tmp/identity-$n.rebuilt" || return 1
    cmp -s "/tmp/identity-$n.before" "/tmp/identity-$n.rebuilt" || { echo "$n's identity changed in the rebuild:"; diff "/tmp/identity-$n.before" "/tmp/identity-$n.rebuilt"; return 1; }
  done
  echo "rebuilt on LVM, a killed rebuild put back first, --keep-old kept $thick-disk.si-old; identities kept"
}

# The VM's identity as bytes: its SSH host keys (private and public) and machine-id, hashed.
identity_of() {
  local n=$1 m=/mnt/id-$1
  mkdir -p "$m" && mount -o ro "/dev/$VG/$n-disk" "$m"
  (cd "$m" && sha256sum etc/ssh/ssh_host_* && { [ ! -e etc/machine-id ] || sha256sum etc/machine-id; }) \
    || { umount "$m"; return 1; }
  umount "$m" && rmdir "$m"
}

nothing_left() {
  local name=$1 when=$2 left
  left=$(lvs --noheadings -o lv_name "$VG" | grep -E "^ *($name-|si-base-.*\.tmp)" || true)
  [ -z "$left" ] || { echo "LVs left $when: $left"; return 1; }
  ! grep -q " /run/si-xen\." /proc/mounts || { echo "mounts left $when"; grep si-xen /proc/mounts; return 1; }
  ! ls -d /run/si-xen.* >/dev/null 2>&1 || { echo "mount dirs left $when"; return 1; }
  [ ! -e "/run/lock/si-xen/$name.lock" ] || { echo "lock left $when"; return 1; }
  [ ! -e "/var/lib/si-xen/vms/$name.journal" ] || { echo "journal left $when"; return 1; }
  [ ! -e "/etc/xen/$name.cfg" ] || { echo "config left $when"; return 1; }
}

# --- Ganeti: a one-node cluster in dom0 (xen-pvm with xl, plain LVM disks), the systemimager OS
# from the si-xen package, instances from the test image. Each scenario leaves the instance for
# the next one (add -> reinstall + rename -> export + import); GNT_* below name them.
GNT_NODE=node1.sixen.test
GNT_DOMAIN=sixen.test

# The node: its FQDN resolving to its own address on xenbr0 (not loopback), the cluster's name
# to a free one, a VG of at least 20 GiB (Ganeti's minimum) on the sparse disk "ganeti", and
# si-xen reading the images where the OS scripts (a cleared environment) look.
ganeti_node() {
  local t=$SECONDS
  hostname "$GNT_NODE" && echo "$GNT_NODE" > /etc/hostname
  # the instances' names too: gnt-instance rename checks the new one (without the check it asks
  # for a confirmation on a terminal, and without one it exits 1 silently)
  printf '127.0.0.1 localhost\n10.0.0.1 %s node1\n10.0.0.250 cluster.%s\n' "$GNT_NODE" "$GNT_DOMAIN" > /etc/hosts
  printf '10.0.0.5%s inst%s.%s\n' 1 1 "$GNT_DOMAIN" 2 2 "$GNT_DOMAIN" 3 3 "$GNT_DOMAIN" >> /etc/hosts
  pvcreate -q /dev/disk/by-id/virtio-ganeti && vgcreate -q xenvg /dev/disk/by-id/virtio-ganeti || return 1
  mkdir -p /etc/systemimager && echo "DEFAULT_IMAGE_DIR = /srv/images" > /etc/systemimager/systemimager.conf
  si_xenhooks ganeti-variants || return 1
  gnt-cluster init --enabled-hypervisors=xen-pvm --enabled-disk-templates=plain --vg-name=xenvg \
    --master-netdev=xenbr0 -N mode=bridged,link=xenbr0 --no-etc-hosts --no-ssh-init \
    -H "xen-pvm:xen_cmd=xl,kernel_path=/usr/lib/grub-xen/grub-x86_64-xen.bin,root_path=,kernel_args=,blockdev_prefix=xvd" \
    -B maxmem=512M,minmem=512M,vcpus=1 "cluster.$GNT_DOMAIN" || return 1
  timing ganeti_init $((SECONDS - t))
  gnt-os list | tee /tmp/gnt-os.list
  grep -qx "systemimager+$IMAGE" /tmp/gnt-os.list || { echo "gnt-os list lacks systemimager+$IMAGE"; gnt-os diagnose; return 1; }
}

# gnt-instance start NAME, then its login prompt as HOST (Ganeti's domain is the FQDN).
gnt_boot() {
  local fqdn=$1 t=$SECONDS
  watch_login "$fqdn" "" "${fqdn%%.*}"
  gnt-instance start "$fqdn" || gnt_failed || return 1
  timing "gnt_start_${fqdn%%.*}" $((SECONDS - t))
  wait_login "$fqdn"
  [ -z "${EXPECT_CONSOLE:-}" ] || grep -qF "$EXPECT_CONSOLE" "/var/log/xen/console/guest-$fqdn.log" \
    || { echo "console of $fqdn does not show '$EXPECT_CONSOLE'"; return 1; }
  [ -z "${KEYS_TO:-}" ] || gnt_keys "$fqdn" > "$KEYS_TO" || return 1
  gnt-instance shutdown --timeout=0 "$fqdn" || gnt_failed || return 1
}

# leased NAME MAC: the address dnsmasq leased to MAC (NAME's), waiting for it a while.
leased() {
  local name=$1 mac=$2 ip= t=$SECONDS
  until ip=$(awk -v m="$mac" '$2 == m {print $3}' /run/dnsmasq-xenbr0.leases 2>/dev/null) && [ -n "$ip" ]; do
    (( SECONDS - t < $(budget 60) )) || { echo "no DHCP lease for $name ($mac)" >&2; return 1; }
    sleep 2
  done
  echo "$ip"
}

# The SSH host keys instance FQDN answers with, at the address dnsmasq leased to its MAC.
gnt_keys() {
  local fqdn=$1 ip
  ip=$(leased "$fqdn" "$(gnt-instance list --no-headers -o nic.mac/0 "$fqdn" | tr -d ' ')") || return 1
  scan_keys "$ip" || { echo "no SSH host key from $fqdn at $ip" >&2; return 1; }
  echo "$fqdn answers SSH at $ip" >&2
}

# What a failed gnt-* command left to read: its job's log and the newest OS log of Ganeti.
gnt_failed() {
  local job f
  echo "gnt command failed; the last jobs:"
  gnt-job list --no-headers 2>&1 | tail -n 3 | sed 's/^/  | /'
  job=$(gnt-job list --no-headers -o id 2>/dev/null | tail -n 1)
  [ -n "$job" ] && gnt-job info "$job" 2>&1 | tail -n 25 | sed 's/^/  | /'
  f=$(ls -t /var/log/ganeti/os/* 2>/dev/null | head -1) && { echo "OS log $f:"; tail -n 20 "$f" | sed 's/^/  | /'; }
  return 1
}

# One disk: with a second one (the swap) Ganeti exports both at once, and under TCG the second
# export daemon missed Ganeti's fixed 10 s readiness limit ("Didn't become ready after 10
# seconds", 2026-12-03 CI); the swap disk's create/export/import is the integration tier's.
ganeti_add() {
  local fqdn=$1.$GNT_DOMAIN t=$SECONDS
  gnt-instance add -o "systemimager+$IMAGE" -t plain --disk 0:size=2G -n "$GNT_NODE" \
    --no-name-check --no-ip-check --no-start "$fqdn" || gnt_failed || return 1
  timing gnt_add $((SECONDS - t))
  KEYS_TO=/tmp/gnt-keys-added gnt_boot "$fqdn"
}

# reinstall with another root filesystem, then rename; one boot shows both (XFS root, new name)
ganeti_reinstall_rename() {
  local old=$1.$GNT_DOMAIN new=$2.$GNT_DOMAIN t=$SECONDS
  gnt-instance reinstall -f -O filesystem=xfs "$old" || gnt_failed || return 1
  timing gnt_reinstall $((SECONDS - t)); t=$SECONDS
  gnt-instance rename --no-ip-check "$old" "$new" || gnt_failed || return 1
  timing gnt_rename $((SECONDS - t))
  EXPECT_CONSOLE="XFS (xvda): Mounting" KEYS_TO=/tmp/gnt-keys-reinstalled gnt_boot "$new" || return 1
  # reinstall keeps the instance's identity (the OS parameter identity=keep, the default)
  [ -s /tmp/gnt-keys-added ] || { echo "no host keys of $old were scanned before the reinstall"; return 1; }
  cmp -s /tmp/gnt-keys-added /tmp/gnt-keys-reinstalled \
    || { echo "the reinstall changed the host keys:"; diff /tmp/gnt-keys-added /tmp/gnt-keys-reinstalled; return 1; }
  echo "$new answers with the $(wc -l < /tmp/gnt-keys-added) SSH host keys it had before the reinstall"
}

# gnt-backup export (our export script: a tar of disk 0), the instance removed, and imported (not
# started: import has no --no-start and never starts) as
# another one (our import script), which boots under its own name.
ganeti_export_import() {
  local src=$1.$GNT_DOMAIN dst=$2.$GNT_DOMAIN t=$SECONDS
  gnt-backup export -n "$GNT_NODE" "$src" || gnt_failed || return 1
  timing gnt_export $((SECONDS - t)); t=$SECONDS
  gnt-instance remove -f "$src" || gnt_failed || return 1
  gnt-backup import -n "$GNT_NODE" -t plain --disk 0:size=2G --src-node="$GNT_NODE" \
    --src-dir="/var/lib/ganeti/export/$src" --no-name-check --no-ip-check "$dst" || gnt_failed || return 1
  timing gnt_import $((SECONDS - t))
  EXPECT_CONSOLE="XFS (xvda): Mounting" gnt_boot "$dst"
  gnt-instance remove -f "$dst"
}

# --- The VM's life under Xen (issue 28): a host-made VM (direct PV kernel, static address, an
# XFS reflink clone of the image's base) from an image copy dom0 may change (LC_IMAGE, on the
# disk "vms"). Running, it is rebuilt with --restart (a fresh clone of the same base, its identity
# carried), then its image moves on (a file changed, one added, one removed, an override added,
# the initramfs changed) and it is updated with --restart. After each: its login prompt, the same
# SSH host keys over the network (ssh-keyscan == what si_mkxenvm printed at its making), the same
# MAC and address; after the update the changes are in the banner its getty prints, the removed
# file is gone and Xen boots the image's new initramfs.
LC_IMAGE=${IMAGE}u
lifecycle() {
  local name=$1 ip=$2 cfg=/srv/xen/etc/$1.cfg img=/srv/images/$LC_IMAGE t=$SECONDS vif
  export SI_XEN_CONFIG=$HOST_CONF
  [ -e "$cfg" ] && [ -d "$img/etc" ] || { echo "the host did not make $name from $LC_IMAGE"; return 1; }
  vif=$(grep '^vif' "$cfg")
  xl create "$cfg" && watch_login "$name" && wait_login "$name" || return 1
  keyscan_guest "$name" "$ip" || return 1
  timing "lifecycle_made_$name" $((SECONDS - t))

  lc_restarted "$name" rebuild si_mkxenvm --rebuild "$name" --yes --restart --timeout "$(budget 120)" || return 1
  grep -q "copy-on-write clone" "/tmp/lc-rebuild.out" || { echo "the rebuild was no clone of the base"; return 1; }
  lc_same "$name" "$ip" "$vif" rebuilt || return 1

  lc_next_generation "$img" || return 1
  lc_restarted "$name" update si_updatexenvm "$name" --restart --timeout "$(budget 120)" || return 1
  grep -q "^Updated $name to $LC_IMAGE .*, copy)" /tmp/lc-update.out || { echo "$name was not updated on a copy"; return 1; }
  lc_same "$name" "$ip" "$vif" updated || return 1
  local banner=/var/log/xen/console/guest-$name.log want
  for want in "SI-LC changed" "SI-LC added" "SI-LC override" "$ip"; do
    grep -qF "$want" "$banner" || { echo "the banner after the update lacks '$want':"; tail -n 15 "$banner"; return 1; }
  done
  echo "$name's banner shows the changed /etc/issue (its address fixed up again), the added file and the override"
  local ramdisk
  ramdisk=$(sed -n 's/^ramdisk *= *"\(.*\)"/\1/p' "$cfg")
  cmp -s "$ramdisk" "$(ls "$img"/boot/initrd.img-* | tail -n 1)" \
    || { echo "Xen boots $ramdisk, not the image's new initramfs"; ls -l "$ramdisk" "$img"/boot/; return 1; }
  echo "$name boots the image's new initramfs ($ramdisk)"
  xl destroy "$name"
  local m=/mnt/lc-$name; mkdir -p "$m"
  mount -o ro,noload "/srv/xen/domains/$name/disk.img" "$m" || { echo "cannot mount $name's disk"; return 1; }
  local gone=0; [ ! -e "$m/etc/issue.net" ] || gone=1
  umount "$m"; rmdir "$m"
  [ $gone = 0 ] || { echo "/etc/issue.net, removed from the image, is still in $name"; return 1; }
  echo "$name: /etc/issue.net, removed from the image, is gone"
  GRACEFUL=1 vm_removed "$name"  # destroyed already
}

# CMD... (an update or a rebuild with --restart) on the running VM: a clean shutdown, the work,
# a start; then its new boot's login prompt (the console log of the old boot set aside).
lc_restarted() {
  local name=$1 what=$2 log=/var/log/xen/console/guest-$1.log t=$SECONDS
  shift 2
  mv "$log" "$log.before-$what"  # xenconsoled opens the log anew for the new domain
  watch_login "$name"
  "$@" > "/tmp/lc-$what.out" 2>&1 || { echo "$* failed:"; tail -n 30 "/tmp/lc-$what.out"; return 1; }
  sed 's/^/  | /' "/tmp/lc-$what.out" | grep -v '^  | *$' | tail -n 12
  timing "lifecycle_${what}_$name" $((SECONDS - t))
  xl domid "$name" >/dev/null 2>&1 || { echo "$name was not started again after its $what"; return 1; }
  wait_login "$name"
}

# The identity the VM answers with is the one it was made with: host keys, MAC, address.
lc_same() {
  local name=$1 ip=$2 vif=$3 what=$4
  [ "$(grep '^vif' "/srv/xen/etc/$name.cfg")" = "$vif" ] || { echo "$name's vif changed: $vif"; grep '^vif' "/srv/xen/etc/$name.cfg"; return 1; }
  ping_guest "$ip" || return 1
  keyscan_guest "$name" "$ip" || return 1
  echo "$name $what: the same SSH host keys, MAC and address"
}

# The image's next generation, as si_getimage would leave it: /etc/issue changed, a file added
# and one removed, an override named like the image (SystemImager lays it by default), and the
# initramfs changed (an archive put in front of it, as early microcode is).
lc_next_generation() {
  local img=$1 initrd tmp=/run/sx-lc
  [ -f "$img/etc/issue" ] && [ -f "$img/etc/issue.net" ] || { echo "the image lacks /etc/issue or /etc/issue.net"; return 1; }
  { cat "$img/etc/issue"; echo "SI-LC changed by the image's next generation"; echo; } > "$img/etc/.issue.new"
  mv "$img/etc/.issue.new" "$img/etc/issue"
  mkdir -p "$img/etc/issue.d" && echo "SI-LC added by the image's next generation" > "$img/etc/issue.d/si-lc-added.issue"
  rm "$img/etc/issue.net"
  mkdir -p "/srv/overrides/$LC_IMAGE/etc/issue.d"
  echo "SI-LC override laid over the image" > "/srv/overrides/$LC_IMAGE/etc/issue.d/si-lc-override.issue"
  initrd=$(ls "$img"/boot/initrd.img-* | tail -n 1)
  [ -f "$initrd" ] || { echo "the image has no initramfs"; return 1; }
  rm -rf "$tmp" && mkdir -p "$tmp/etc" && echo "next generation" > "$tmp/etc/si-lc-initramfs"
  { (cd "$tmp" && printf 'etc\netc/si-lc-initramfs\n' | cpio -o -H newc --quiet) && cat "$initrd"; } > "$initrd.new" \
    && mv "$initrd.new" "$initrd" || { echo "could not change the initramfs"; return 1; }
  rm -rf "$tmp"
  echo "$LC_IMAGE's next generation: /etc/issue changed, /etc/issue.d/si-lc-added.issue added, /etc/issue.net removed," \
    "an override, $(basename "$initrd") changed"
}

# A further VM of the lifecycle VM's image (a reflink clone of the base the host built), made in dom0
# with --toolstack libvirt (issue 30): defined in libvirt's libxl driver and started by it, then its
# login prompt; libvirt's own conversion of the domain to xl.cfg (domxml-to-native) agrees with
# si-xen's xl.cfg on every setting both express; si_rmxenvm leaves no domain defined.
# libvirtd's libxl driver starts in this TCG dom0 only with the testbed's own cpu_map model
# (tests/system/dom0-files/x86_si-testbed-tcg.xml, README "libvirt's libxl driver in this dom0").
libvirt_vm() {
  local name=$1 ip=$2 t=$SECONDS cfg=/srv/xen/etc/$1.cfg xml=/srv/xen/etc/$1.xml v="virsh -c xen:///system"
  export SI_XEN_CONFIG=$HOST_CONF
  systemctl start libvirtd
  until $v version >/dev/null 2>&1; do
    (( SECONDS - t < $(budget 60) )) || { echo "libvirtd does not answer:"; $v version
      systemctl status libvirtd --no-pager -n 40; tail -n 30 /var/log/libvirt/libxl/libxl-driver.log; return 1; }
    sleep 2
  done
  timing "libvirtd_$name" $((SECONDS - t)); t=$SECONDS
  si_mkxenvm "$LC_IMAGE" --hostname "$name" --memory 512M --size 2G --swap 128M --yes --ip "$ip" \
    --netmask 255.255.255.0 --gateway 10.0.0.1 --dir /srv/xen --boot direct --type pv --toolstack libvirt \
    --start > /tmp/lv-made.out 2>&1 || { cat /tmp/lv-made.out; return 1; }
  sed 's/^/  | /' /tmp/lv-made.out | tail -n 8
  timing "mkxenvm_$name" $((SECONDS - t))
  grep -q "copy-on-write clone" /tmp/lv-made.out || { echo "$name is no clone of the base"; return 1; }
  grep -q "^Persistent: *yes" <<< "$($v dominfo "$name")" || { echo "$name is not defined in libvirt"; $v list --all; return 1; }
  watch_login "$name"
  wait_login "$name"
  [ -s "/run/sx-login-$name" ] || return 1
  $v domxml-to-native xen-xl "$xml" > /tmp/lv-native.cfg || { echo "libvirt cannot convert $xml"; return 1; }
  python3 ./xlsame.py "$cfg" /tmp/lv-native.cfg || { echo "libvirt's xl.cfg:"; cat /tmp/lv-native.cfg; return 1; }
  $v destroy "$name" >/dev/null
  # Rebuilt while stopped (no second boot): the same domain redefined by the real libvirtd, its uuid
  # kept, its new memory in libvirt's definition, left stopped as it was
  local uuid
  uuid=$($v domuuid "$name"); t=$SECONDS
  si_mkxenvm --rebuild "$name" --memory 640M --yes > /tmp/lv-rebuilt.out 2>&1 || { cat /tmp/lv-rebuilt.out; return 1; }
  timing "rebuild_$name" $((SECONDS - t))
  grep -q "Redefining $name in libvirt" /tmp/lv-rebuilt.out || { echo "the rebuild did not redefine $name:"; cat /tmp/lv-rebuilt.out; return 1; }
  [ "$($v domuuid "$name")" = "$uuid" ] || { echo "$name's uuid changed from $uuid"; return 1; }
  grep -q "<memory unit='KiB'>655360</memory>" <<< "$($v dumpxml --inactive "$name")" \
    || { echo "libvirt's definition of $name lacks the rebuild's memory:"; $v dumpxml --inactive "$name" | grep -i memory; return 1; }
  [ "$($v domstate "$name")" = "shut off" ] || { echo "$name is $($v domstate "$name") after a rebuild of it stopped"; return 1; }
  echo "$name: rebuilt as the same libvirt domain (uuid $uuid), 640 MiB in its definition"
  GRACEFUL=1 vm_removed "$name" || return 1
  ! grep -qx "$name" <<< "$($v list --all --name)" || { echo "$name is still defined in libvirt"; return 1; }
  [ ! -e "$xml" ] || { echo "$xml left behind"; return 1; }
  echo "$name: defined and started through libvirt, logged in, removed with its definition"
}

# si_getxenimage --from-disk of another hypervisor's raw disk whose guest keeps / and /var in LVM
# (issue 29), its VG named as this run's own ($VG, active here): / named /dev/mapper/VG-root and
# /var /dev/VG/var in its fstab. Its LVs are read through read-only device-mapper maps of si-xen's
# own names, never activated: the image holds both filesystems' files, its layout both as plain
# partitions; no map, loop device or mount of si-xen's left, $VG untouched. (Raw: no qemu-img here.)
fromdisk_lvm() {
  local t=$SECONDS d=/var/tmp/fd-lvm cap=/var/tmp/fd-cap img=/var/tmp/fd-lvm/guest.raw m=/mnt/fd-lvm loop
  local ok=0 vg_before vg_after dm_before loops_before layout
  local -a no_backup=(--config "backup { backup = 0 archive = 0 }")  # /etc/lvm/backup/$VG is the run's VG's
  vg_state() { vgs --noheadings -o vg_uuid,pv_count,lv_count "$VG"; lvs --noheadings -o lv_uuid,lv_name,lv_attr "$VG"
    sha256sum "/etc/lvm/backup/$VG" 2>/dev/null || true; }
  vg_before=$(vg_state)
  rm -rf $d $cap && mkdir -p $d $cap $m /etc/si-fd
  truncate -s 420M $img
  python3 -c 'import struct, sys; t = bytearray(512)
struct.pack_into("<B3sB3sII", t, 446, 0, b"\xfe\xff\xff", 0x8e, b"\xfe\xff\xff", 2048, 419 * 2048)
t[510:] = b"\x55\xaa"; open(sys.argv[1], "r+b").write(t)' $img
  loop=$(losetup --find --show --offset $((1 << 20)) $img)
  # made as fdlvm-tmp (vgcreate refuses a name /dev has), then named $VG in its metadata (vgrename
  # refuses it too): LVM's commands here see this loop device only, so there is no second $VG for them
  vgcreate -q "${no_backup[@]}" --devices "$loop" fdlvm-tmp "$loop"
  lvcreate -q -y "${no_backup[@]}" --devices "$loop" -L 64M -n root fdlvm-tmp
  lvcreate -q -y "${no_backup[@]}" --devices "$loop" -L 320M -n var fdlvm-tmp
  mkfs.ext4 -q /dev/mapper/fdlvm--tmp-root && mkfs.xfs -q /dev/mapper/fdlvm--tmp-var
  mount /dev/mapper/fdlvm--tmp-root $m && mkdir -p $m/etc $m/var && mount /dev/mapper/fdlvm--tmp-var $m/var
  cp /etc/os-release /etc/passwd /etc/group $m/etc/ && echo fdlvm > $m/etc/hostname && echo "on /" > $m/etc/fd-lvm-root
  printf '/dev/mapper/%s-root / ext4 errors=remount-ro 0 1\n/dev/%s/var /var xfs defaults 0 2\n' \
    "$(echo "$VG" | sed 's/-/--/g')" "$VG" > $m/etc/fstab
  mkdir -p $m/var/lib/app && echo "kept on /var" > $m/var/lib/app/state
  umount $m/var && umount $m
  vgchange -q -an "${no_backup[@]}" --devices "$loop" fdlvm-tmp
  vgcfgbackup -q "${no_backup[@]}" --devices "$loop" -f $d/meta fdlvm-tmp
  sed -i "s/^fdlvm-tmp {/$VG {/" $d/meta
  # It asks whether to go on while "$VG has active volumes" (the run's, found by name): yes, as it
  # writes this metadata to the PVs the file names, our loop device only ($VG's state checked below)
  echo y | vgcfgrestore -q "${no_backup[@]}" --devices "$loop" -f $d/meta "$VG"
  pvs --devices "$loop" -o pv_name,vg_name,vg_uuid && losetup -d "$loop" && udevadm settle
  timing fromdisk_lvm_made $((SECONDS - t)); t=$SECONDS
  dm_before=$(dmsetup ls | sort); loops_before=$(losetup -a | sort)
  printf 'DEFAULT_IMAGE_DIR = %s\n' $cap > /etc/si-fd/systemimager.conf
  SIS_CONFDIR=/etc/si-fd si_getxenimage --from-disk $img fdlvm > /tmp/fd-lvm.out 2>&1 || ok=1
  timing fromdisk_lvm_capture $((SECONDS - t))
  cat /tmp/fd-lvm.out
  [ $ok = 0 ] || { echo "si_getxenimage --from-disk failed"; return 1; }
  grep -q "logical volume $VG/root (ext4)" /tmp/fd-lvm.out || { echo "/ not read from $VG/root"; ok=1; }
  [ "$(cat $cap/fdlvm/etc/fd-lvm-root 2>/dev/null)" = "on /" ] || { echo "/'s files not in the image"; ok=1; }
  [ "$(cat $cap/fdlvm/var/lib/app/state 2>/dev/null)" = "kept on /var" ] || { echo "/var's files not in the image"; ok=1; }
  layout=$(sed -n 's/.*layout copied to \([^ ]*\).*/\1/p' /tmp/fd-lvm.out | head -n 1)
  [ -n "$layout" ] && [ -f "$layout" ] || layout=$cap/fdlvm/etc/systemimager/disks-layout.xml
  grep -E 'mp="/"|"/var"|xfs|ext4|part ' "$layout" || true
  grep -q '"/var"' "$layout" && grep -q xfs "$layout" && ! grep -q LVM2 "$layout" \
    || { echo "the layout ($layout) lacks /var (xfs) as a partition"; cat "$layout"; ok=1; }
  ! grep -q si-xen-ro <<< "$(dmsetup ls)" || { echo "si-xen's maps left:"; dmsetup ls; ok=1; }
  [ "$(dmsetup ls | sort)" = "$dm_before" ] || { echo "device-mapper changed:"; dmsetup ls; ok=1; }
  [ "$(losetup -a | sort)" = "$loops_before" ] || { echo "loop devices left:"; losetup -a; ok=1; }
  ! grep -q " /run/si-xen\." /proc/mounts || { echo "mounts left"; ok=1; }
  ! ls -d /run/si-xen.* >/dev/null 2>&1 || { echo "mount dirs left"; ok=1; }
  vg_after=$(vg_state)
  [ "$vg_after" = "$vg_before" ] || { echo "$VG changed:"; diff <(echo "$vg_before") <(echo "$vg_after"); ok=1; }
  [ "$layout" = "$cap/fdlvm/etc/systemimager/disks-layout.xml" ] || rm -f "$layout"
  rm -rf $d $cap /etc/si-fd; rmdir $m
  [ $ok = 0 ] && echo "captured from a disk with LVM inside (VG $VG, as this host's): both LVs read, nothing left"
}

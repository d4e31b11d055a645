# Helpers for scripts that run inside the testbed's dom0 (sourced by the payload's `run`).
# Lines read back by the host (streamed over the console, so a run cut short still reports):
#   TIMING name seconds | CALIBRATION ... | SCENARIO name ok|FAIL seconds | REACHED name login
set -uo pipefail
# Under pipefail `cmd | grep -q X` is racy: grep exits at the first match, and a cmd that writes on
# (si_* run with PYTHONUNBUFFERED, lvs, virsh) dies of the broken pipe, failing the pipeline. So
# the scripts match on a whole output: `grep -q X <<< "$(cmd)"` (tests/unit/test_payload_shell.py).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

timing() { echo "TIMING $1 $2"; }
now() { printf '%(%s)T\n' -1; }  # seconds since the epoch, without a process

# --- Budgets that follow the machine -------------------------------------------------------
# Each scenario's time limit is its base budget (what it needs on a quiet day, with margin)
# times this run's slowness: the larger of how long dom0 took to boot and how long a fixed
# CPU loop takes, each against the same quantity measured on a quiet machine of this kind.
# Never below 1 (the base is the floor; FACTOR10_FLOOR raises it for a run at a lower priority).
# Kept in tenths: bash has no floats.
# dom0's uptime when its runner starts, on a quiet day: 24 s under Xen, 12 s for the kernel alone
REF_DOM0_UP=${REF_DOM0_UP:-$([ "${TESTBED_XEN:-0}" = 1 ] && echo 24 || echo 12)}
REF_CPU_MS=${REF_CPU_MS:-800}      # ms for cpu_probe in dom0, quiet day
FACTOR10=${FACTOR10:-10}

cpu_probe() {  # ms for a fixed, single-threaded piece of work (what TCG makes slow)
  local t0 t1
  t0=$(date +%s%N)
  python3 -c 'h = 0
for i in range(400000): h = (h * 31 + i) % 1000003'
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000000 ))
}

# calibrate [TOTAL_BASE COUNT]: set FACTOR10; given the sum of the scenarios' base budgets and
# their number, tell the host the run's deadline, which it then keeps to instead of its
# boot-time bound: the scaled budgets, plus what a failed scenario may add to its limit (the
# kill's grace, the diagnosis, the clean-up: OVERHEAD s each), plus the power-off.
OVERHEAD=150
calibrate() {
  local up cpu f_up f_cpu
  # dom0's boot: its uptime when the runner started (systemd's monotonic clock)
  up=$(systemctl show -p ExecMainStartTimestampMonotonic --value si-testbed.service 2>/dev/null)
  [[ $up =~ ^[0-9]+$ ]] && (( up > 0 )) && up=$(( up / 1000000 )) || up=$(cut -d. -f1 /proc/uptime)
  cpu=$(cpu_probe)
  f_up=$(( up * 10 / REF_DOM0_UP ))
  f_cpu=$(( cpu * 10 / REF_CPU_MS ))
  FACTOR10=$(( f_up > f_cpu ? f_up : f_cpu ))
  (( FACTOR10 >= ${FACTOR10_FLOOR:-10} )) || FACTOR10=${FACTOR10_FLOOR:-10}
  export FACTOR10
  echo "CALIBRATION dom0_up=${up}s (quiet ${REF_DOM0_UP}s) cpu_probe=${cpu}ms (quiet ${REF_CPU_MS}ms)" \
    "factor=$(factor)"
  if [ -n "${1:-}" ]; then
    local total=$(( $1 * FACTOR10 / 10 + ${2:-1} * OVERHEAD + 120 ))
    echo "@@ si-testbed: deadline $total s (calibrated)" > /dev/console
  fi
}
factor() { printf '%d.%d' $((FACTOR10 / 10)) $((FACTOR10 % 10)); }
budget() { echo $(( $1 * FACTOR10 / 10 )); }  # BASE seconds -> this run's limit

# --- si-xen and the disks -----------------------------------------------------------------
# si-xen from the Debian package the host built from the work tree, as an admin installs it
# (dom0 has no network: its Depends are in the dom0 build).
install_sixen() {
  local t=$SECONDS
  dpkg -i /payload/si-xen_*_all.deb >/tmp/dpkg.log 2>&1 || { tail -20 /tmp/dpkg.log; return 1; }
  [ "$(command -v si_mkxenvm)" = /usr/sbin/si_mkxenvm ] || { echo "si_mkxenvm is not /usr/sbin's"; return 1; }
  timing install_sixen $((SECONDS - t))
}

# Every disk the host attached as image-NAME is a SystemImager image, mounted read-only:
# si_mkxenvm must never write into an image.
mount_images() {
  local dev name
  mkdir -p /srv/images /etc/si-test
  for dev in /dev/disk/by-id/virtio-image-*; do
    [ -b "$dev" ] || continue
    name=${dev##*/virtio-image-}
    mkdir -p "/srv/images/$name"
    mount -o ro "$dev" "/srv/images/$name"
  done
  printf 'DEFAULT_IMAGE_DIR = /srv/images\nDEFAULT_OVERRIDE_DIR = /srv/overrides\n' > /etc/si-test/systemimager.conf
  export SIS_CONFDIR=/etc/si-test
}

# The disk "vms": VMs si_mkxenvm made on the host (file storage, their configs and si-xen
# state, under the same path as here: /srv/xen). Its own config file names that state. Writable
# image copies there (images/NAME) appear as /srv/images/NAME, as on the host.
HOST_CONF=/srv/xen/si-xen.conf
mount_host_vms() {
  local dev=/dev/disk/by-id/virtio-vms d
  [ -b "$dev" ] || return 0
  mkdir -p /srv/xen && mount "$dev" /srv/xen && echo "host-made VMs: $(ls /srv/xen/etc | tr '\n' ' ')"
  for d in /srv/xen/images/*/; do
    [ -d "$d" ] && ln -sfn "${d%/}" "/srv/images/$(basename "$d")"
  done
  return 0
}
scratch_fs() {  # MOUNTPOINT [FSTYPE]: the disk "scratch" as a filesystem for --dir (the demo's)
  local dev=/dev/disk/by-id/virtio-scratch
  "mkfs.${2:-ext4}" -q -f "$dev" 2>/dev/null || "mkfs.${2:-ext4}" -q -F "$dev"
  mkdir -p "$1" && mount "$dev" "$1"
}
thin_pool() {  # VG POOL SIZE: a thin pool, so VMs there are thin snapshots of a base LV
  lvcreate -q -L "$3" -T "$1/$2"
}
scratch_vg() {
  local dev=/dev/disk/by-id/virtio-lvm
  pvcreate -q "$dev" && vgcreate -q "$1" "$dev"
}

# No network leaves the testbed: a bridge with nothing behind it lets the vif lines through.
make_bridge() {
  ip link show xenbr0 >/dev/null 2>&1 || { ip link add xenbr0 type bridge && ip link set xenbr0 up; }
}

# --- Scenarios: bounded, reported, diagnosed, cleaned up -----------------------------------
# scenario NAME BASE fn args...: run `fn args` with set -e, within budget BASE (scaled); report
# NAME ok/FAIL; on failure print what a developer needs (console tail, xl list, xl dmesg, load)
# and remove its VM (fn's first argument) so that the next scenario starts on an empty machine.
scenario() {
  local name=$1 limit t=$SECONDS rc i=0
  limit=$(budget "$2")
  shift 2
  local -a call=("$@")
  while [[ ${call[i]} == [A-Z_]*=* ]]; do i=$((i + 1)); done
  # the VMs it makes: a VMS="a b" word, else the function's first argument
  local vms=${call[i + 1]:-$name} w
  for w in "${call[@]:0:i}"; do [[ $w == VMS=* ]] && vms=${w#VMS=}; done
  echo "=== scenario $name (limit $limit s)"
  # The end as a clock time (each bash counts its own SECONDS): wait_login gives up by then.
  export SCENARIO_START=$(now) SCENARIO_END=$(( $(now) + limit )) SCENARIO_NAME=$name
  # timeout puts the scenario in its own process group and kills all of it at the limit.
  # Leading VAR=value words are exported for the call (like env, but for shell functions).
  # -k 60: si_mkxenvm's own rollback (umount, lvremove) gets time to finish under TCG.
  timeout -k 60 "$((limit + 20))" bash -c 'set -e; . ./lib.sh; . ./scenarios.sh
    while [[ $1 == [A-Z_]*=* ]]; do export "$1"; shift; done
    "$@"' scenario "$@"
  rc=$?
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "scenario $name killed at its limit ($((limit + 20)) s)"
  if [ "$rc" != 0 ]; then
    for w in $vms; do diagnose "$w"; guest_journal "$w"; cleanup_vm "$w"; done
  fi
  [ "$rc" = 0 ] && echo "SCENARIO $name ok $((SECONDS - t))" || echo "SCENARIO $name FAIL $((SECONDS - t))"
  mkdir -p "$TESTBED_RESULTS/consoles"
  cp /var/log/xen/console/guest-*.log "$TESTBED_RESULTS/consoles/" 2>/dev/null || true
  cp -r /var/log/si-xen "$TESTBED_RESULTS/" 2>/dev/null || true
  mkdir -p "$TESTBED_RESULTS/si-xen-host-vms" && cp /srv/xen/log/* "$TESTBED_RESULTS/si-xen-host-vms/" 2>/dev/null
  return 0
}

diagnose() {
  local name=$1 log=/var/log/xen/console/guest-$1.log
  echo "--- diagnosis of $name"
  echo "console tail ($log):"
  { tail -n 40 "$log" 2>/dev/null || echo "(no console log)"; echo; } | tr -d '\r' | sed 's/^/  | /'  # a prompt has no newline
  if [ "${TESTBED_XEN:-0}" = 1 ]; then
    echo "xl list:"; timeout 20 xl list 2>&1 | sed 's/^/  | /'
    echo "xl dmesg tail:"; timeout 20 xl dmesg 2>&1 | tail -n 25 | sed 's/^/  | /'
  fi
  echo "dom0 load: $(cat /proc/loadavg); memory: $(free -m | awk '/^Mem/ {print $3 " MiB used, " $7 " MiB available"}')"
  top -b -n 1 -w 160 2>/dev/null | sed -n '7,14p' | sed 's/^/  | /'
  echo "--- end of diagnosis"
}

# After a failed boot, what the guest's own journal says of it (Debian 12 keeps it on disk): its
# disk mounted read-only once the domain is gone, and one verdict line, so that a missing login
# prompt tells a getty that never started (systemd gave up on hvc0) from a guest that never got
# to its root filesystem, or one whose prompt was lost on the way (tests/system/README.md, "PVH").
guest_journal() {
  local name=$1 cfg disk target mnt=/mnt/journal-$1 opts j verdict
  cfg=$(ls "/srv/xen/etc/$name.cfg" "/etc/xen/$name.cfg" "/etc/xen/$name" 2>/dev/null | head -1)
  [ -n "$cfg" ] || return 0
  disk=$(grep -A3 '^disk' "$cfg" | grep -oE "[\"'][^\"']+[\"']" | head -1 | tr -d "\"'")
  case "$disk" in
    *target=*) target=${disk##*target=}; target=${target%%,*} ;;
    *) target=${disk%%,*}; target=${target#*:}; target=${target#aio:} ;;
  esac
  target=$(readlink -f "$target" 2>/dev/null)
  [ -e "$target" ] || { echo "GUEST_JOURNAL $name: its disk ($disk) is not here"; return 0; }
  # the guest's page cache flushed first (emergency sync): its last minute is on the disk then
  timeout 20 xl sysrq "$name" s >/dev/null 2>&1 && sleep 3
  timeout 60 xl destroy "$name" >/dev/null 2>&1
  mkdir -p "$mnt"
  opts=ro; [ -f "$target" ] && opts=ro,loop
  mount -o "$opts,noload" "$target" "$mnt" 2>/dev/null || mount -o "$opts,norecovery" "$target" "$mnt" 2>/dev/null \
    || { echo "GUEST_JOURNAL $name: its disk $target does not mount"; rmdir "$mnt"; return 0; }
  if [ ! -d "$mnt/var/log/journal" ]; then
    umount "$mnt"; rmdir "$mnt"
    echo "GUEST_JOURNAL $name: no /var/log/journal on its disk (a journal in memory only): cannot tell"
    return 0
  fi
  # this scenario's boots only (xl restarts a faulted guest: its earlier boots are in there too)
  j=$(journalctl -D "$mnt/var/log/journal" --since "@${SCENARIO_START:-0}" -o short-monotonic --no-pager -q 2>/dev/null)
  umount "$mnt"; rmdir "$mnt"
  if [ -z "$j" ]; then verdict="nothing of this boot in its journal: it never ran its root filesystem's systemd (kernel or initramfs)"
  elif grep -q "Timed out waiting for device dev-hvc0" <<<"$j"; then verdict="systemd gave up waiting for hvc0: no getty on the console"
  elif grep -q "Started serial-getty@hvc0" <<<"$j"; then verdict="its getty on hvc0 started: the prompt was lost on the way to the console log"
  else verdict="its systemd ran, no getty on hvc0 started (still booting, or hung: see its last lines)"
  fi
  echo "GUEST_JOURNAL $name: $verdict"
  grep -E 'hvc0|getty|Timed out|Dependency failed|Startup finished|Failed' <<<"$j" | tail -n 12 | cut -c1-160 | sed 's/^/  j| /'
  [ -z "$j" ] || { echo "  its last lines:"; tail -n 5 <<<"$j" | cut -c1-160 | sed 's/^/  j| /'; }
}

# Take away a VM a failed scenario left (domain, disks, config), whoever made it.
cleanup_vm() {
  local name=$1
  [ "${TESTBED_XEN:-0}" = 1 ] && timeout 60 xl destroy "$name" >/dev/null 2>&1
  local conf=
  [ -e "$HOST_CONF" ] && [ -e "/srv/xen/state/vms/$name.journal" ] && conf=$HOST_CONF
  umount "/mnt/$name" 2>/dev/null  # a check that stopped halfway
  SI_XEN_CONFIG=$conf timeout 120 si_rmxenvm --yes --stop "$name" >/dev/null 2>&1
  # a VM of xen-create-image's own (no si-xen record): its tool removes it, and its hooks go
  [ -e "/etc/xen/$name.cfg" ] && timeout 120 xen-delete-image --lvm="${VG:-vg0}" "$name" >/dev/null 2>&1
  lvremove -q -f "${VG:-vg0}/$name-disk" "${VG:-vg0}/$name-swap" >/dev/null 2>&1
  [ -e /etc/xen-tools/role.d/systemimager ] && si_xenhooks uninstall-xen-tools >/dev/null 2>&1
  return 0
}

# Wait until NAME's console shows "NAME login:", the domain goes away, or the scenario's time
# is up (whichever comes first). A background watcher notes the exact time of the prompt.
# A triple fault is a reset: xl restarts the domain (on_reboot = "restart", as si_mkxenvm
# writes it), so the wait goes on across restarts and sorts the triple faults Xen logs for each
# domid seen by the state Xen dumped: with Xen's own code selector (RIP e008:...) the guest
# cannot have been running, the emulator handed Xen's state back (tests/system/README.md, "PVH");
# any other is the guest's. TRIPLE_FAULTS_ALLOWED (default 0) guest-state faults may pass, and
# then the emulator's too; with none allowed any fault fails. The login prompt must still come
# within the scenario's limit.
wait_login() {
  local name=$1 got id ids=() kind xen_faults=0 guest_faults=0
  local end=${SCENARIO_END:-$(( $(now) + 600 ))}
  until [ -s "/run/sx-login-$name" ]; do
    if id=$(xl domid "$name" 2>/dev/null); then
      [[ " ${ids[*]} " == *" $id "* ]] || ids+=("$id")
    else
      sleep 5  # being restarted?
      xl domid "$name" >/dev/null 2>&1 || { echo "domain $name is gone"; break; }
    fi
    if (( $(now) >= end )); then echo "no login prompt from $name within the scenario's limit"; break; fi
    sleep 1
  done
  if (( ${#ids[@]} )); then
    while read -r kind; do
      [ "$kind" = xen ] && xen_faults=$((xen_faults + 1)) || guest_faults=$((guest_faults + 1))
    done < <(xl dmesg | triple_faults "${ids[*]}")
  fi
  local allowed=${TRIPLE_FAULTS_ALLOWED:-0} faults=$((xen_faults + guest_faults))
  if (( faults > 0 )); then
    echo "TRIPLE_FAULT $name $faults (in Xen's state $xen_faults, in the guest's $guest_faults; domains ${ids[*]};" \
      "guest-state faults allowed $allowed):"
    xl dmesg | grep -A 14 -E "d($(IFS='|'; echo "${ids[*]}"))v[0-9]* Triple fault" | sed 's/^/  | /'
  fi
  got=$(cat "/run/sx-login-$name" 2>/dev/null || true)
  [ -n "$got" ] && [ "$got" != timeout ] || return 1
  timing "login_$name" "$got"
  echo "REACHED $name login"
  if (( guest_faults > allowed || (allowed == 0 && faults > 0) )); then
    echo "$name: $faults triple faults ($guest_faults in the guest's state), more than allowed ($allowed)"
    return 1
  fi
}

# xl dmesg | triple_faults "DOMIDS": one line per triple fault of those domains, "xen" when the
# state Xen dumped for it has Xen's own code selector (e008), else "guest" (no dump: "guest").
triple_faults() {
  awk -v ids=" $1 " '
    /Triple fault/ {
      if (pending) print "guest"
      d = $0; sub(/.*\] d/, "", d); sub(/v[0-9]+ Triple.*/, "", d)
      pending = index(ids, " " d " ") > 0; next
    }
    pending && /RIP:/ { print ($0 ~ /RIP: *e008:/) ? "xen" : "guest"; pending = 0 }
    END { if (pending) print "guest" }'
}

# Note when NAME's login prompt appears (in the background, so the timing is exact).
# watch_login DOMAIN [TIMEOUT] [HOST]: HOST (default DOMAIN) is the name the prompt shows.
watch_login() {
  # it ends with the scenario at the latest, so no watcher outlives its scenario for long
  local name=$1 timeout=${2:-$(( ${SCENARIO_END:-$(( $(now) + 600 ))} - $(now) ))} log=/var/log/xen/console/guest-$1.log t=$SECONDS
  local host=${3:-$1}
  rm -f "/run/sx-login-$name"
  (
    while (( SECONDS - t < timeout )); do
      if grep -q "$host login:" "$log" 2>/dev/null; then
        echo $((SECONDS - t)) > "/run/sx-login-$name"
        echo "@@ ($name: login prompt $((SECONDS - t)) s after start)" > /dev/console
        exit
      fi
      sleep 1
    done
    echo timeout > "/run/sx-login-$name"
  ) </dev/null >/dev/null 2>&1 &  # not holding the runner's output pipe open
}

# Copy a domain's console (xenconsoled's log) to our output as it grows, until its login prompt.
stream_console() {
  local name=$1 timeout=${2:-600} log=/var/log/xen/console/guest-$1.log off=0 t=$SECONDS chunk
  local LC_ALL=C  # byte offsets
  while (( SECONDS - t < timeout )); do
    if [ -f "$log" ]; then
      chunk=$(tail -c "+$((off + 1))" "$log"; echo x)
      chunk=${chunk%x}
      off=$((off + ${#chunk}))
      printf '%s' "${chunk//$'\r'/}"
      if grep -q "$name login:" "$log"; then
        echo
        timing "login_$name" $((SECONDS - t))
        return 0
      fi
    fi
    sleep 1
  done
  echo; echo "no login prompt from $name after $timeout s"
  return 1
}

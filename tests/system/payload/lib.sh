# Helpers for scripts that run inside the testbed's dom0 (sourced by the payload's `run`).
# Lines "TIMING name seconds" and "SCENARIO name ok|FAIL" are read back by the host.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

timing() { echo "TIMING $1 $2"; }

# si-xen from the wheel the host built from the work tree (jinja2 comes from Debian).
install_sixen() {
  local t=$SECONDS
  pip install --break-system-packages --root-user-action=ignore --no-index --no-deps --quiet /payload/si_xen-*.whl || return 1
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
  echo "DEFAULT_IMAGE_DIR = /srv/images" > /etc/si-test/systemimager.conf
  export SIS_CONFDIR=/etc/si-test
}

# The spare disks as the VMs' storage: disk "scratch" a filesystem for --dir, disk "lvm" a VG.
scratch_fs() {  # MOUNTPOINT [FSTYPE]: xfs gives reflinks, so VMs there are clones of a base
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

# Wait for the watch_login of NAME to see "NAME login:" on the domain's console.
wait_login() {
  local name=$1 log=/var/log/xen/console/guest-$1.log got
  until [ -s "/run/sx-login-$name" ]; do
    if ! xl domid "$name" >/dev/null 2>&1; then echo "domain $name is gone"; break; fi
    sleep 1
  done
  got=$(cat "/run/sx-login-$name" 2>/dev/null || true)
  if [ -n "$got" ] && [ "$got" != timeout ]; then
    timing "login_$name" "$got"
    echo "REACHED $name login"
    return 0
  fi
  echo "no login prompt from $name; console tail:"
  tail -n 40 "$log" 2>/dev/null | sed 's/^/  | /'
  return 1
}

# Two-phase scenarios, so one VM boots while dom0 makes the next (TCG leaves a core idle
# otherwise): `begin NAME fn args` runs the making half, `finish NAME fn args` the checking
# half, and reports NAME ok/FAIL once. The time reported is begin-to-finish.
begin() {
  local name=$1
  shift
  echo "=== scenario $name (begin)"
  date +%s > "/run/sx-begin-$name"
  ( set -e; "$@" ) || touch "/run/sx-failed-$name"
}
finish() {
  local name=$1 rc=1
  shift
  echo "=== scenario $name (finish)"
  if [ -e "/run/sx-failed-$name" ]; then
    echo "(its making half failed)"
  else
    ( set -e; "$@" ); rc=$?
  fi
  local took=$(( $(date +%s) - $(cat "/run/sx-begin-$name") ))
  if [ "$rc" = 0 ]; then echo "SCENARIO $name ok $took"; else echo "SCENARIO $name FAIL $took"; fi
  mkdir -p "$TESTBED_RESULTS/consoles"
  cp /var/log/xen/console/guest-*.log "$TESTBED_RESULTS/consoles/" 2>/dev/null || true
  cp -r /var/log/si-xen "$TESTBED_RESULTS/" 2>/dev/null || true
}

# Note when NAME's login prompt appears (in the background, so the timing is exact);
# wait_login then reads it.
watch_login() {
  local name=$1 timeout=${2:-600} log=/var/log/xen/console/guest-$1.log t=$SECONDS
  rm -f "/run/sx-login-$name"
  (
    while (( SECONDS - t < timeout )); do
      if grep -q "$name login:" "$log" 2>/dev/null; then
        echo $((SECONDS - t)) > "/run/sx-login-$name"
        echo "@@ ($name: login prompt $((SECONDS - t)) s after start)" > /dev/console
        exit
      fi
      sleep 1
    done
    echo timeout > "/run/sx-login-$name"
  ) </dev/null >/dev/null 2>&1 &  # not holding the runner's output pipe open
}

# Run one scenario function, report it, and keep going whatever it does.
scenario() {
  local name=$1 t=$SECONDS
  shift
  echo "=== scenario $name"
  # Not inside `if`: there bash would ignore the subshell's set -e.
  ( set -e; "$@" )
  if [ $? = 0 ]; then
    echo "SCENARIO $name ok $((SECONDS - t))"
  else
    echo "SCENARIO $name FAIL $((SECONDS - t))"
  fi
  mkdir -p "$TESTBED_RESULTS/consoles"
  cp /var/log/xen/console/guest-*.log "$TESTBED_RESULTS/consoles/" 2>/dev/null || true
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

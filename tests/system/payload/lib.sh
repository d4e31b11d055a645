# Helpers for scripts that run inside the testbed's dom0 (sourced by the payload's `run`).
# Lines "TIMING name seconds" and "SCENARIO name ok|FAIL" are read back by the host.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

timing() { echo "TIMING $1 $2"; }

# si-xen from the wheel the host built from the work tree (jinja2 comes from Debian).
install_sixen() {
  local t=$SECONDS
  pip install --break-system-packages --no-index --no-deps --quiet /payload/si_xen-*.whl || return 1
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
scratch_fs() {
  local dev=/dev/disk/by-id/virtio-scratch
  mkfs.ext4 -q -F "$dev" && mkdir -p "$1" && mount "$dev" "$1"
}
scratch_vg() {
  local dev=/dev/disk/by-id/virtio-lvm
  pvcreate -q "$dev" && vgcreate -q "$1" "$dev"
}

# No network leaves the testbed: a bridge with nothing behind it lets the vif lines through.
make_bridge() {
  ip link show xenbr0 >/dev/null 2>&1 || { ip link add xenbr0 type bridge && ip link set xenbr0 up; }
}

# Wait for "NAME login:" on the domain's console (xenconsoled's trace log); print the time.
wait_login() {
  local name=$1 timeout=${2:-300} log=/var/log/xen/console/guest-$1.log t=$SECONDS
  while (( SECONDS - t < timeout )); do
    if grep -q "$name login:" "$log" 2>/dev/null; then
      timing "login_$name" $((SECONDS - t))
      return 0
    fi
    if ! xl domid "$name" >/dev/null 2>&1; then
      echo "domain $name is gone"; break
    fi
    sleep 2
  done
  echo "no login prompt from $name after $((SECONDS - t)) s; console tail:"
  tail -n 40 "$log" 2>/dev/null | sed 's/^/  | /'
  return 1
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

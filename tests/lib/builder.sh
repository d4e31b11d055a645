# Sourced by the cache builders (tests/system/mkdom0, tests/images/mkimage-debian12).

# scrub DIR...: a build's scratch, or that of one killed outright before it (the caller holds the
# build's lock): mounts under it first (debootstrap's /proc and /sys), then the tree. Nothing here
# may fail: under set -e a failing command in an EXIT trap ends the script with its status (a
# complete dom0 build once exited 1 so, and left its 1 GB scratch behind: issue 25).
scrub() {
  local d m
  for d in "$@"; do
    [ -e "$d" ] || continue
    for m in $(awk -v d="$d/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r); do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$d" || true
  done
}

# last_error LOG: the line of a debootstrap or apt log that says what went wrong.
last_error() { grep -E '^(E|W): |[Ee]rror|[Ff]ailed|[Cc]ouldn' "$1" | tail -1 || true; }

# fatal WHAT MESSAGE [LOG KEEP_AS]: one line saying what failed, the log kept outside the scratch.
fatal() {
  local msg=$2
  [ -n "${3:-}" ] && [ -f "$3" ] && cp "$3" "$4" && msg="$msg; log: $4"
  echo "FATAL: $1: $msg" >&2
  exit 1
}

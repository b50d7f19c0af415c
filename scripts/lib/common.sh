# shellcheck shell=bash
# Shared helpers for pvnet's VM scripts (sourced, never executed).
#
#   PVNET_ROOT        repository root
#   PVNET_GUEST_DIR   cache of guest kernels/initramfs images (default target/guest)
#   PVNET_QEMU        QEMU binary (default qemu-system-x86_64)
#   PVNET_NO_INSTALL  set to 1 to never call apt-get (missing pieces then fail / SKIP)
#   PVNET_NO_BACKPORTS set to 1 to keep Debian 12's QEMU 7.2 (the scripts then use vectors=0)

PVNET_ROOT=${PVNET_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PVNET_GUEST_DIR=${PVNET_GUEST_DIR:-$PVNET_ROOT/target/guest}
PVNET_QEMU=${PVNET_QEMU:-qemu-system-x86_64}
# Exit code for "a needed component cannot be installed here" (automake's SKIP convention).
export PVNET_SKIP_RC=77

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { echo "ERROR: $*" >&2; exit 1; }

# After a scripts/switchbench.sh run that exited with RC and logged to LOG: exits with its
# SKIP line and status when it skipped, with its last lines and 1 when it failed or did not
# make OUTPUT (a file it should have written); returns when it succeeded.
#   switchbench_ok RC LOG OUTPUT WHAT
switchbench_ok() {
  if [ "$1" = "$PVNET_SKIP_RC" ]; then grep '^SKIP' "$2"; exit "$1"; fi
  if [ "$1" != 0 ] || [ ! -s "$3" ]; then
    echo "ERROR: switchbench.sh failed$4 (rc $1); its last lines:" >&2
    tail -5 "$2" >&2
    exit 1
  fi
}

# Drop reasons of pvnet's statistics that are flow control: a receive ring that stayed full
# (the frame, or a flooded copy of it, could not wait longer) or no destination port. Every
# other reason is a frame made undeliverable by bad guest input (a malformed chain, an
# address outside the grants, bad offload metadata), so a reason added to pvnet counts as
# bad input until it is listed here. PVNET_FULL_RING_DROPS: the full-ring ones alone.
PVNET_FULL_RING_DROPS="rx_full_timeout flood_full"
# shellcheck disable=SC2034 # used by the scripts that source this file
PVNET_FLOW_CONTROL_DROPS="$PVNET_FULL_RING_DROPS no_dest"

# ---------------------------------------------------------------- Debian packages
_apt_updated=0
apt_update_once() {
  [ "$_apt_updated" = 1 ] && return 0
  log "apt-get update"
  apt-get update -q >&2 || return 1
  _apt_updated=1
}

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# ensure_pkgs PKG...: install the packages that are missing. Returns non-zero when it cannot.
ensure_pkgs() {
  local missing=() p
  for p in "$@"; do have_pkg "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "${PVNET_NO_INSTALL:-0}" = 1 ]; then
    log "missing packages (PVNET_NO_INSTALL=1): ${missing[*]}"
    return 1
  fi
  command -v apt-get >/dev/null || { log "no apt-get: cannot install ${missing[*]}"; return 1; }
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  apt_update_once || return 1
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >&2
}

# Debian codename of this machine ("bookworm"), empty when unknown.
# shellcheck source=/dev/null # the machine's own file, not one of this repository
debian_codename() { (. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}"); }

# Add "<codename>-backports" to the machine's existing Debian apt source at run time. The
# mirror URI is taken from the machine's own configuration, never from this repository.
enable_backports() {
  local codename uri src=/etc/apt/sources.list.d/pvnet-backports.sources
  codename=$(debian_codename)
  [ -n "$codename" ] || return 1
  if grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    return 0
  fi
  # deb822 sources ("URIs: ...") first, then one-line sources ("deb URI codename main").
  uri=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ && $2 !~ /security/ {print $2; exit}' \
    /etc/apt/sources.list.d/*.sources 2>/dev/null)
  if [ -z "$uri" ]; then
    uri=$(awk -v c="$codename" '$1=="deb" && $0 ~ (" " c " ") && $0 !~ /security/ {
      for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null)
  fi
  [ -n "$uri" ] || { log "no Debian mirror found in the apt sources"; return 1; }
  log "adding ${codename}-backports from $uri"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: %s\n' \
    "$uri" "$codename" /usr/share/keyrings/debian-archive-keyring.gpg |
    $sudo tee "$src" >/dev/null || return 1
  _apt_updated=0
}

qemu_version_major() {
  "$PVNET_QEMU" --version 2>/dev/null | awk 'NR==1 {split($4, v, "."); print v[1]; exit}'
}

# ensure_qemu: a qemu-system-x86_64 that survives vhost-user + MSI-X under TCG. Prefers QEMU
# >= 8 (bookworm-backports on Debian 12); keeps 7.2 when that is all there is (callers then
# pass vectors=0, see qemu_net_vectors).
ensure_qemu() {
  local major
  major=$(qemu_version_major)
  if [ -n "$major" ] && [ "$major" -ge 8 ]; then return 0; fi
  if [ "${PVNET_NO_BACKPORTS:-0}" != 1 ] && [ "${PVNET_NO_INSTALL:-0}" != 1 ] &&
    [ "$(debian_codename)" = bookworm ] && enable_backports && apt_update_once; then
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    log "apt-get install -t bookworm-backports qemu-system-x86"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
      -t bookworm-backports qemu-system-x86 >&2 || log "backports QEMU failed; trying Debian's"
  fi
  command -v "$PVNET_QEMU" >/dev/null || ensure_pkgs qemu-system-x86 || return 1
  command -v "$PVNET_QEMU" >/dev/null
}

# MSI-X vectors for a virtio-net device with N queue pairs. QEMU 7.2 segfaults under TCG
# when vhost-user virtio-net starts with MSI-X (msix_set_vector_notifiers), so it gets 0.
qemu_net_vectors() {
  local n=$1 major
  major=$(qemu_version_major)
  if [ -n "$major" ] && [ "$major" -lt 8 ]; then echo 0; else echo $((2 * n + 2)); fi
}

# ---------------------------------------------------------------- accelerator
# pick_accel auto|kvm|tcg KERNEL INITRD: prints "kvm" or "tcg". "auto" really boots the guest
# kernel under KVM for a few seconds (a /dev/kvm node alone proves nothing: nested KVM
# modules exist that cannot run a stock kernel). The answer is cached per host boot.
pick_accel() {
  local want=$1 kernel=$2 initrd=$3
  case $want in
    tcg) echo tcg; return 0 ;;
    kvm) echo kvm; return 0 ;;
    auto) ;;
    *) die "--accel must be auto, kvm or tcg (got '$want')" ;;
  esac
  if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then echo tcg; return 0; fi
  local key cache
  key=$( { cat /proc/sys/kernel/random/boot_id 2>/dev/null; "$PVNET_QEMU" --version | head -1
    md5sum <"$kernel"; } | md5sum | cut -c1-12)
  cache=$PVNET_GUEST_DIR/accel-probe.$key
  if [ -s "$cache" ]; then cat "$cache"; return 0; fi
  local out rc
  out=$(mktemp)
  log "probing KVM: booting the guest kernel with -accel kvm (up to 30 s)"
  timeout 30 "$PVNET_QEMU" -nodefaults -no-user-config -display none -no-reboot \
    -accel kvm -cpu host -m 256M -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 quiet panic=-1 pvnet.role=probe" \
    -serial "file:$out" >/dev/null 2>&1
  rc=$?
  if grep -q PVNET-PROBE-OK "$out"; then
    echo kvm | tee "$cache"
  else
    log "KVM probe failed (qemu rc=$rc, no PVNET-PROBE-OK on the console): using TCG"
    echo tcg | tee "$cache"
  fi
  rm -f "$out"
}

# accel_args kvm|tcg: the QEMU accelerator and CPU flags.
accel_args() {
  case $1 in
    kvm) echo "-accel kvm -cpu host" ;;
    *) echo "-accel tcg,thread=multi -cpu max" ;;
  esac
}

# first_file PATH...: print the first of the paths that exists (give it a glob: the first
# match in sorted order); fails when none does (an unmatched glob stays a literal pattern).
first_file() {
  local f
  for f in "$@"; do
    if [ -e "$f" ]; then echo "$f"; return 0; fi
  done
  return 1
}

# usage SCRIPT: print the script's header comment (from line 2 to the first non-comment line).
usage() { awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$1"; }

# vm_setup ACCEL QUEUES: QEMU and the guest image (GUEST_KERNEL, GUEST_INITRD, ... from
# guest-image.sh), the accelerator to use (sets acc) and the virtio-net MSI-X vector count
# for QUEUES pairs (sets vectors). Exits with the SKIP status when QEMU or the image cannot
# be had.
vm_setup() {
  local img_env
  ensure_qemu || { echo "SKIP: cannot install QEMU (qemu-system-x86)"; exit "$PVNET_SKIP_RC"; }
  img_env=$("$PVNET_ROOT/scripts/guest-image.sh" --print-env) ||
    { echo "SKIP: cannot build the guest image"; exit "$PVNET_SKIP_RC"; }
  eval "$img_env"
  # shellcheck disable=SC2034  # acc and vectors are for the scripts that call this
  acc=$(pick_accel "$1" "$GUEST_KERNEL" "$GUEST_INITRD")
  # shellcheck disable=SC2034
  vectors=$(qemu_net_vectors "$2")
}

# pvnet_binary BUILD [BIN]: builds pvnet (release) when BUILD is 1, then prints the binary
# to run: BIN, or the one in the cargo target directory. Fails when there is none (call it
# as `bin=$(pvnet_binary ...) || exit 1`).
pvnet_binary() {
  local b=${2:-${CARGO_TARGET_DIR:-$PVNET_ROOT/target}/release/pvnet}
  if [ "$1" = 1 ]; then
    log "cargo build --release -p pvnet"
    (cd "$PVNET_ROOT" && cargo build --release -q -p pvnet) >&2 || die "cargo build failed"
  fi
  [ -x "$b" ] || die "no pvnet binary at $b (drop --no-build)"
  printf '%s\n' "$b"
}

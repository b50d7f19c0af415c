#!/usr/bin/env bash
# Build pvnet's test guest: Debian's kernel + a small initramfs (busybox-static, iperf3,
# ethtool, the libraries ldd names, the virtio-net module chain, scripts/lib/guest-init.sh).
#
#   scripts/guest-image.sh [--print-env] [--force]
#
# Output (cached, rebuilt only when an input changes):
#   target/guest/img-<key>/vmlinuz, target/guest/img-<key>/initramfs.cpio.gz
# --print-env prints  GUEST_KERNEL=...  GUEST_INITRD=...  for `eval`.
#
# Missing Debian packages are installed with apt-get (busybox-static iperf3 ethtool cpio ...).
# The kernel is NOT installed into the host's /boot: its .deb (linux-image-amd64's current
# dependency, or $PVNET_KERNEL_PKG) is fetched with `apt-get download` and unpacked with
# `dpkg-deb -x` under target/guest/.
set -euo pipefail
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"

print_env=0 force=0
while [ $# -gt 0 ]; do
  case $1 in
    --print-env) print_env=1 ;;
    --force) force=1 ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
  shift
done

ensure_pkgs busybox-static iperf3 ethtool cpio gzip xz-utils zstd ||
  die "cannot install the guest packages (busybox-static iperf3 ethtool cpio)"
mkdir -p "$PVNET_GUEST_DIR/debs"

# The virtio-net module chain the initramfs carries (in load order).
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
  failover net_failover virtio_net)

# extract_kernel DEB DIR: unpack only what the image needs from the kernel package: the
# kernel, modules.builtin and the MODULES chain (a few MB instead of the package's ~400 MB
# module tree, which filled small CI disks).
extract_kernel() {
  local deb=$1 dir=$2 alt re names
  log "extracting the kernel and the virtio-net modules from $(basename "$deb")"
  alt=$(
    IFS='|'
    echo "${MODULES[*]}"
  )
  re='^\./boot/vmlinuz-|/modules\.builtin$|/('"$alt"')\.ko(\.[a-z]+)?$'
  names=$(mktemp)
  dpkg-deb --fsys-tarfile "$deb" | tar -t | grep -E "$re" >"$names" ||
    { rm -f "$names"; die "no kernel or virtio modules listed in $deb"; }
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir.tmp" -T "$names" ||
    { rm -f "$names"; die "cannot extract the kernel from $deb"; }
  rm -f "$names"
  mv "$dir.tmp" "$dir"
}

# ---- kernel package: linux-image-amd64 -> linux-image-<abi>-amd64
kpkg=${PVNET_KERNEL_PKG:-}
if [ -z "$kpkg" ]; then
  resolve() { apt-cache depends linux-image-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
  kpkg=$(resolve)
  if [ -z "$kpkg" ]; then apt_update_once && kpkg=$(resolve); fi
  [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 (apt lists missing?)"
fi
kdir=$PVNET_GUEST_DIR/$kpkg
if [ ! -d "$kdir/boot" ]; then
  deb=$(first_file "$PVNET_GUEST_DIR/debs/${kpkg}_"*.deb || true)
  if [ -z "$deb" ]; then
    log "apt-get download $kpkg"
    (cd "$PVNET_GUEST_DIR/debs" && apt-get download "$kpkg" >&2) ||
      { apt_update_once && (cd "$PVNET_GUEST_DIR/debs" && apt-get download "$kpkg" >&2); } ||
      die "cannot download $kpkg"
    deb=$(first_file "$PVNET_GUEST_DIR/debs/${kpkg}_"*.deb) || die "apt-get download left no $kpkg .deb"
  fi
  extract_kernel "$deb" "$kdir"
fi
vmlinuz=$(first_file "$kdir"/boot/vmlinuz-*) || die "no kernel in $kdir/boot"
kver=${vmlinuz##*/vmlinuz-}
moddir=$kdir/lib/modules/$kver
[ -d "$moddir" ] || die "no modules in $moddir"

# ---- cache key: every input of the image
init_src=$PVNET_ROOT/scripts/lib/guest-init.sh
bins=(/bin/busybox "$(command -v iperf3)" "$(command -v ethtool)")
key=$( {
  cat "$0" "$init_src"
  echo "$kver"
  md5sum "$vmlinuz"
  for b in "${bins[@]}"; do md5sum "$b"; done
} | md5sum | cut -c1-16)
out=$PVNET_GUEST_DIR/img-$key
if [ "$force" = 1 ] || [ ! -s "$out/initramfs.cpio.gz" ]; then
  log "building initramfs $out (kernel $kver)"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  for a in $("$root/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
  done
  for b in "${bins[@]:1}"; do
    cp -L "$b" "$root/bin/"
    # ldd lines: "libx.so => /path (0x..)" or "/lib64/ld-linux-x86-64.so.2 (0x..)"
    for lib in $(ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  done
  # virtio-net chain; modules may be built in (then absent) or compressed (.ko.xz / .ko.zst).
  for m in "${MODULES[@]}"; do
    f=$(find "$moddir/kernel" -name "$m.ko*" | head -1)
    if [ -z "$f" ]; then
      grep -q "/$m.ko" "$moddir/modules.builtin" 2>/dev/null ||
        log "warning: module $m neither found nor built in"
      continue
    fi
    case $f in
      *.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
      *.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
      *.gz) gzip -dc "$f" >"$root/lib/modules/$m.ko" ;;
      *) cp "$f" "$root/lib/modules/$m.ko" ;;
    esac
  done
  cp "$init_src" "$root/init"
  chmod 755 "$root/init"
  echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
  mkdir -p "$out.tmp"
  cp "$vmlinuz" "$out.tmp/vmlinuz"
  # Main archive from the tree, then a second archive holding the dev/console character
  # node (5,1): the kernel concatenates cpio archives, and writing the node by hand needs
  # neither root nor mknod. Without dev/console nothing reaches the serial log.
  {
    (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet)
    newc_entry() { # name mode rdevmajor rdevminor
      local name=$1 namesize=$((${#1} + 1))
      printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        1000 "$2" 0 0 1 0 0 0 0 "$3" "$4" "$namesize" 0
      printf '%s\0' "$name"
      # header (110 bytes) + name padded to a multiple of 4
      local pad=$(((4 - (110 + namesize) % 4) % 4))
      head -c "$pad" /dev/zero
    }
    newc_entry dev/console $((0x2000 | 0600)) 5 1
    newc_entry TRAILER!!! 0 0 0
  } | gzip -6 >"$out.tmp/initramfs.cpio.gz"
  echo "$kver" >"$out.tmp/kernel-version"
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "initramfs: $(du -h "$out/initramfs.cpio.gz" | cut -f1)"
fi
ln -sfn "img-$key" "$PVNET_GUEST_DIR/current"
if [ "$print_env" = 1 ]; then
  echo "GUEST_KERNEL=$out/vmlinuz"
  echo "GUEST_INITRD=$out/initramfs.cpio.gz"
else
  echo "$out"
fi

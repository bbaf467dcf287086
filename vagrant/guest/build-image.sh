#!/bin/bash
# Build the jobcell test-VM image into OUT_DIR (run as root; called by vagrant/run-tests, which caches the
# result keyed by a hash of the files in vagrant/guest/, so editing this file triggers a rebuild).
#
# Produces:
#   OUT_DIR/vmlinux         uncompressed ELF kernel (QEMU boots it via PVH: skips the slow-under-TCG XZ decompression)
#   OUT_DIR/initrd.cpio.gz  tiny busybox initramfs: loads virtio/ext4/9p modules, switch_root to /dev/vda
#   OUT_DIR/root.img        sparse raw ext4 (Debian bookworm, made with mkfs.ext4 -d: no loop mount), used read-only
#                           by run-tests (-drive snapshot=on), so every run starts pristine
#
# Env: JOBCELL_VM_MIRROR (default http://deb.debian.org/debian), JOBCELL_VM_SECURITY_MIRROR,
#      JOBCELL_VM_IMG_SIZE (default 3G), JOBCELL_VM_EXTRA_PACKAGES (comma separated).
set -euo pipefail
OUT=${1:?usage: build-image.sh OUT_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
MIRROR=${JOBCELL_VM_MIRROR:-http://deb.debian.org/debian}
SECMIRROR=${JOBCELL_VM_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
mkdir -p "$OUT"
WORK=$(mktemp -d "${OUT%/}.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R=$WORK/rootfs

# No systemd: the guest's PID 1 is our own init script (guest/init). Packages:
#  uidmap (newuidmap/newgidmap), util-linux (setpriv, unshare, mount), busybox-static (initramfs), kmod (modprobe 9p),
#  libseccomp2 (host-built jobcell links it), python3, iproute2, procps, passwd (useradd), linux-image-amd64
#  (the cloud kernel lacks 9p).
PKGS=linux-image-amd64,busybox-static,kmod,util-linux,mount,passwd,uidmap,libseccomp2,python3,iproute2,procps,ca-certificates,psmisc,less
[ -n "${JOBCELL_VM_EXTRA_PACKAGES:-}" ] && PKGS=$PKGS,$JOBCELL_VM_EXTRA_PACKAGES

# Explicit sources, so the host's third-party apt sources are never used for the guest.
# INITRD=No: skip initramfs-tools in the kernel postinst (we build our own tiny initramfs below).
INITRD=No DEBIAN_FRONTEND=noninteractive mmdebstrap --quiet --variant=apt --include="$PKGS" \
  --customize-hook="install -m 755 '$HERE/init' \"\$1/usr/local/sbin/jobcell-vm-init\"" \
  --customize-hook="install -D -m 644 '$HERE/fstab' \"\$1/usr/local/lib/jobcell-vm/fstab\"" \
  --customize-hook='chroot "$1" /bin/sh -ec "
      echo jobcell-vm > /etc/hostname
      printf \"127.0.0.1 localhost\n127.0.1.1 jobcell-vm\n\" > /etc/hosts
      printf \"/dev/vda / ext4 rw,relatime 0 0\n\" > /etc/fstab
      mkfifo -m 600 /usr/local/lib/jobcell-vm/console.fifo
      useradd -m -u 1000 -U -s /bin/bash tester
      echo tester:100000:65536 > /etc/subuid
      echo tester:100000:65536 > /etc/subgid
      passwd -d root >/dev/null
      K=\$(ls /lib/modules); cd /lib/modules/\$K/kernel
      rm -rf sound drivers/gpu drivers/media drivers/infiniband drivers/iio drivers/usb drivers/hwmon drivers/staging \
        drivers/hid drivers/platform drivers/scsi drivers/net/wireless drivers/net/ethernet drivers/bluetooth \
        drivers/input drivers/isdn drivers/mtd drivers/video net/bluetooth net/wireless net/mac80211
      depmod \$K
      rm -rf /var/cache/apt/*.bin /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
  "' \
  bookworm "$R" \
  "deb $MIRROR bookworm main" \
  "deb $MIRROR bookworm-updates main" \
  "deb $SECMIRROR bookworm-security main"

K=$(ls "$R/lib/modules" | head -1)

# --- kernel: extract the XZ-compressed ELF from the bzImage, using the guest's own python3 (host python may be odd)
cp "$R/boot/vmlinuz-$K" "$WORK/vmlinuz"
cp "$WORK/vmlinuz" "$R/tmp/vmlinuz"
chroot "$R" python3 -c '
import lzma, sys
data = open("/tmp/vmlinuz", "rb").read()
off = data.find(b"\xfd7zXZ\x00")
while off >= 0:
    try:
        out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])
        if out[:4] == b"\x7fELF":
            open("/tmp/vmlinux", "wb").write(out); sys.exit(0)
    except lzma.LZMAError:
        pass
    off = data.find(b"\xfd7zXZ\x00", off + 1)
sys.exit("no XZ-compressed ELF kernel found in vmlinuz")'
mv "$R/tmp/vmlinux" "$OUT/vmlinux"
rm -f "$R/tmp/vmlinuz"

# --- initramfs: busybox + the modules needed to mount /dev/vda (virtio, ext4 are modules in Debian's kernel)
I=$WORK/initramfs
mkdir -p "$I/bin" "$I/dev" "$I/proc" "$I/sys" "$I/newroot" "$I/mods"
cp "$R/bin/busybox" "$I/bin/busybox"
: > "$I/mods/order"
for m in virtio_pci virtio_blk crc32c_generic crc32c-intel ext4 9pnet_virtio 9p; do
  chroot "$R" modprobe -S "$K" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r p; do
  cp "$R$p" "$I/mods/"; basename "$p" >> "$I/mods/order"
done
install -m 755 "$HERE/initramfs-init" "$I/init"
(cd "$I" && find . | "$R/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) > "$OUT/initrd.cpio.gz"

# --- root disk: sparse raw ext4 populated from the directory
rm -f "$OUT/root.img"
truncate -s "${JOBCELL_VM_IMG_SIZE:-3G}" "$OUT/root.img"
mkfs.ext4 -q -F -L jobcell-root -E lazy_itable_init=1,lazy_journal_init=1 -d "$R" "$OUT/root.img"
echo "$K" > "$OUT/kernel-version"
ls -lsh "$OUT"

#!/usr/bin/env bash
# Compiles the kernel objects a patch touches, with the patch applied, under
# x86_64_defconfig: the check `patch`/`git apply`/tree-sitter cannot give.
# Not part of CI (a kernel `prepare` costs minutes); run by hand:
#
#   bash kernel-patches/check-build.sh kernel-patches/*.patch [-- extra/objects.o ...]
#
# Works on a hard-linked copy of target/linux-source-6.1 (fetch-kernel.sh),
# so the extracted tree stays pristine. Build output in target/kbuild-out.
set -euo pipefail
cd "$(dirname "$0")/.."

patches=()
extra=(mm/mmap.o mm/memory.o)   # include <linux/mmap_lock.h>, which a patch may touch
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
  patches+=("$(realpath "$1")"); shift
done
[ ${#patches[@]} -gt 0 ] || { echo "usage: $0 PATCH... [-- OBJECT...]" >&2; exit 2; }

src=target/kbuild-src
out=$PWD/target/kbuild-out
[ -f target/linux-source-6.1/Makefile ] || bash kernel-patches/fetch-kernel.sh
rm -rf "$src"
cp -al target/linux-source-6.1 "$src"
objects=("${extra[@]}")
for p in "${patches[@]}"; do
  for f in $(sed -n 's|^+++ b/||p' "$p"); do
    # Break the hard link before patching so the pristine tree is untouched.
    if [ -f "$src/$f" ]; then cp --remove-destination "$src/$f" "$src/$f.tmp" && mv "$src/$f.tmp" "$src/$f"; fi
    case "$f" in *.c) objects+=("${f%.c}.o") ;; esac
  done
  patch -d "$src" -p1 --quiet < "$p"
done
[ -f "$out/.config" ] || make -C "$src" O="$out" x86_64_defconfig >/dev/null
make -C "$src" O="$out" -j"$(nproc)" "${objects[@]}"
echo "check-build: compiled ${objects[*]}" >&2

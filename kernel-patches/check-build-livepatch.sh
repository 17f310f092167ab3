#!/usr/bin/env bash
# Compiles every x86-buildable object a --livepatch patch touches, with the
# patch applied, under x86_64_defconfig. A livepatch patch touches every .c
# file that calls a copied header helper, many of them not configured in
# x86_64_defconfig; an object that fails is compiled again in the pristine
# tree: failing there too means it cannot be built standalone in this
# configuration (reported, not counted); failing only with the patch is an
# error. Objects under arch/ other than arch/x86 are skipped.
#
#   bash kernel-patches/check-build-livepatch.sh PATCH
#
# Same trees as check-build.sh: target/kbuild-src (a hard-linked copy of
# target/linux-source-6.1), output in target/kbuild-out and target/kbuild-pristine.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 PATCH" >&2; exit 2; }
patch_file=$(realpath "$1")
src=target/kbuild-src
out=$PWD/target/kbuild-out
pristine_out=$PWD/target/kbuild-pristine
[ -f target/linux-source-6.1/Makefile ] || bash kernel-patches/fetch-kernel.sh
rm -rf "$src"
cp -al target/linux-source-6.1 "$src"
objects=()
for f in $(sed -n 's|^+++ b/||p' "$patch_file"); do
  cp --remove-destination "$src/$f" "$src/$f.tmp" && mv "$src/$f.tmp" "$src/$f"
  case "$f" in
    arch/x86/*.c) objects+=("${f%.c}.o") ;;
    arch/*) ;;
    *.c) objects+=("${f%.c}.o") ;;
  esac
done
patch -d "$src" -p1 --quiet < "$patch_file" || { echo "check-build-livepatch: the patch does not apply" >&2; exit 1; }
for o in "$out" "$pristine_out"; do
  [ -f "$o/.config" ] || make -C target/linux-source-6.1 O="$o" x86_64_defconfig >/dev/null
done
# Clean the objects first: an object built from another patch is stale.
for obj in "${objects[@]}"; do rm -f "$out/$obj"; done
make -k -C "$src" O="$out" -j"$(nproc)" "${objects[@]}" > "$out/livepatch-build.log" 2>&1
failed=()
for obj in "${objects[@]}"; do [ -f "$out/$obj" ] || failed+=("$obj"); done
broken=()
unbuildable=()
if [ ${#failed[@]} -gt 0 ]; then
  [ -f "$pristine_out/include/generated/autoconf.h" ] || make -C target/linux-source-6.1 O="$pristine_out" -j"$(nproc)" prepare >/dev/null 2>&1
  for obj in "${failed[@]}"; do
    if make -C target/linux-source-6.1 O="$pristine_out" "$obj" >/dev/null 2>&1; then
      broken+=("$obj")
    else
      unbuildable+=("$obj")
    fi
  done
fi
built=$(( ${#objects[@]} - ${#failed[@]} ))
echo "check-build-livepatch: $built of ${#objects[@]} objects compiled with the patch; ${#unbuildable[@]} do not build standalone in x86_64_defconfig without it either: ${unbuildable[*]:-none}" >&2
if [ ${#broken[@]} -gt 0 ]; then
  echo "check-build-livepatch: broken by the patch: ${broken[*]} (log: $out/livepatch-build.log)" >&2
  exit 1
fi
if grep -q "warning:" "$out/livepatch-build.log"; then
  echo "check-build-livepatch: the build warns:" >&2
  grep -B2 -A3 "warning:" "$out/livepatch-build.log" | head -40 >&2
  exit 1
fi

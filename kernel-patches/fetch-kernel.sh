#!/usr/bin/env bash
# Extracts Debian's linux-source-6.1 (the `linux-source-6.1` package) into
# target/linux-source-6.1 for `msh kpatch` and its tests. Idempotent and
# cached: a stamp records which tarball was extracted; a second run is a no-op.
#
# The whole tree is extracted (~10 s, 1.5 GB): a lock's sites are anywhere
# (mmap_lock is taken in arch/, drivers/, fs/, mm/, ...), so a partial tree
# would give a patch that silently misses sites.
set -euo pipefail
cd "$(dirname "$0")/.."

tarball=${KPATCH_KERNEL_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
dest=target/linux-source-6.1
stamp=target/.linux-source-6.1.stamp

if [ ! -f "$tarball" ]; then
  echo "fetch-kernel: $tarball missing: apt-get install linux-source-6.1" >&2
  exit 1
fi
want="$(stat -c '%s %Y' "$tarball")"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$dest/Makefile" ]; then
  exit 0
fi
mkdir -p target
rm -rf "$dest" "$dest.partial" "$stamp"
mkdir "$dest.partial"
# The tarball's top directory is linux-source-6.1/.
tar -xJf "$tarball" -C "$dest.partial" --strip-components=1
mv "$dest.partial" "$dest"
echo "$want" > "$stamp"
echo "fetch-kernel: extracted $tarball into $dest" >&2

#!/bin/bash
# Build and convert the captured modules against one scratch arm64 kernel tree (see README.md):
#   build.sh /tmp/arm64/obj OUT_DIR      -> OUT_DIR/ko/*.ko
set -euo pipefail
K=$1; OUT=$2; HERE=$(cd "$(dirname "$0")" && pwd); REPO=$(cd "$HERE/../../../.." && pwd)
mkdir -p "$OUT/ko"
for s in kernel_clone kallsyms_lookup_name unexported_data address_taken livepatch_target livepatch \
         klp_relocs_a64; do
  src=$REPO/modules/$s; [ -d "$src" ] || src=$HERE/$s
  rm -rf "${OUT:?}/$s"; cp -r "$src" "$OUT/$s"
  extra=()
  [ $s = livepatch ] && extra=("KBUILD_EXTRA_SYMBOLS=$OUT/livepatch_target/Module.symvers")
  make -s -C "$K" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- M="$OUT/$s" \
       KCFLAGS="-I$REPO/harness/include" KBUILD_MODPOST_WARN=1 "${extra[@]}" modules > "$OUT/$s.log" 2>&1
  for ko in "$OUT/$s"/*.ko; do
    b=$(basename "$ko" .ko)
    if [ $s = livepatch_target ]; then cp "$ko" "$OUT/ko/$b.ko"; continue; fi
    objs=()
    [ $s = livepatch ] && objs=(--object-symbols "klp_livepatch_target=$OUT/livepatch_target/klp_livepatch_target.ko")
    "$REPO/.venv/bin/klp-harness" convert --system-map "$K/System.map" --symvers "$K/Module.symvers" \
        "${objs[@]}" -o "$OUT/ko/$b.klp.ko" "$ko"
  done
done

#!/usr/bin/env bash
# Prints, for every kernel of kernels/cuda/*.cu and every GPU architecture tandem builds for,
# the registers per thread, static shared memory, stack frame and local-memory spills that
# ptxas reports (nvcc -Xptxas -v), then a one-line verdict on spills. `make cuda-report` runs
# it from the repository root. Needs nvcc (NVCC, else PATH, else /usr/local/cuda/bin); no GPU.
# Dynamic shared memory is chosen at launch and is not in the table (RoPE: rot_dim * 4 bytes).
# A stack frame without spills is a local array (RoPE's: the double-precision sin/cos slow path
# for huge arguments, libdevice's Payne-Hanek reduction).
set -euo pipefail

cd "$(dirname "$0")/../.."
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
ARCHS="${CUDA_REPORT_ARCHS:-sm_80 sm_90a}"
if [[ ! -x "$NVCC" ]]; then
  echo "cuda-report: nvcc not found (set NVCC)" >&2
  exit 1
fi
DEMANGLE="cat"
command -v c++filt > /dev/null && DEMANGLE="c++filt"

# Names, not numbers, for the enum template arguments.
READABLE='s/tandem::kernels::cuda::gpu:://g; s/\(tandem::kernels::DType\)0/F32/; s/\(tandem::kernels::DType\)1([^0-9])/F16\1/;
  s/\(tandem::kernels::DType\)30/BF16/; s/\(tandem::kernels::DType\)2/Q4_0/;
  s/\(tandem::kernels::DType\)3/Q4_1/; s/\(tandem::kernels::DType\)8/Q8_0/;
  s/\(tandem::kernels::KvDType\)0/KvF32/; s/\(tandem::kernels::KvDType\)1/KvF16/;
  s/\(tandem::kernels::KvDType\)2/KvInt8/; s/\(GluKind\)0/SwiGlu/; s/\(GluKind\)1/GeGlu/; s/\(ElementwiseOp\)0/Add/; s/\(ElementwiseOp\)1/AddBias/; s/\(ElementwiseOp\)2/Scale/;
  s/tandem::kernels:://g'

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

printf '%-7s %5s %7s %6s %7s %7s  %s\n' arch regs smem_B stack_B spill_st spill_ld kernel
for cu in kernels/cuda/*.cu; do
  for arch in $ARCHS; do
    # -cubin: device code only; ptxas prints one block of lines per kernel.
    "$NVCC" -std=c++20 -I. -O3 -cubin -arch="$arch" -Xptxas -v "$cu" -o "$tmp/out.cubin" \
      > "$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
    awk -v arch="$arch" '
      /Compiling entry function/ {
        match($0, /function '\''[^'\'']+'\''/); name = substr($0, RSTART + 10, RLENGTH - 11)
        stack = st = ld = 0; next
      }
      /bytes stack frame/ {
        for (i = 1; i <= NF; ++i) {
          if ($(i + 1) == "bytes" && $(i + 2) == "stack") stack = $i
          if ($(i + 1) == "bytes" && $(i + 2) == "spill" && $(i + 3) ~ /^stores/) st = $i
          if ($(i + 1) == "bytes" && $(i + 2) == "spill" && $(i + 3) ~ /^loads/) ld = $i
        }
        next
      }
      /Used [0-9]+ registers/ && name != "" {
        regs = 0; smem = 0
        for (i = 1; i <= NF; ++i) {
          if ($(i + 1) ~ /^registers/) regs = $i
          if ($(i + 1) == "bytes" && $(i + 2) ~ /^smem/) smem = $i
        }
        printf "%-7s %5s %7s %6s %7s %7s  %s\n", arch, regs, smem, stack, st, ld, name
        name = ""
      }' "$tmp/log" > "$tmp/rows"
    # Demangle the last column only.
    while IFS= read -r line; do
      prefix="${line%% _Z*}"
      mangled="${line#"$prefix" }"
      if [[ "$mangled" == _Z* ]]; then
        printf '%s %s\n' "$prefix" "$(echo "$mangled" | $DEMANGLE | sed -E "$READABLE")"
      else
        printf '%s\n' "$line"
      fi
    done < "$tmp/rows" | tee -a "$tmp/all"
  done
done
spills="$(awk '$5 != 0 || $6 != 0' "$tmp/all" | wc -l)"
if [[ "$spills" -eq 0 ]]; then
  echo "cuda-report: $(wc -l < "$tmp/all") kernel builds, no local-memory spills"
else
  echo "cuda-report: $spills kernel builds spill to local memory (spill_st / spill_ld above)"
fi

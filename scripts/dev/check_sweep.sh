#!/usr/bin/env bash
# dhsa-check compare --layers on gemma3-270m passkey prompts of several lengths: the fp32 plugin and
# portable exports, the plugin export with one DHSA layer's value weights changed by a relative 1e-3
# (must fail and name that layer), and the fp16 plugin export. One line per check in OUT/summary.tsv:
# export, length, exit code, failing gates, attended fraction, peak RSS (/usr/bin/time), seconds.
#   scripts/dev/check_sweep.sh [OUT] [LENGTHS] [FP16_LENGTHS]
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-out/check-sweep}
lengths=${2:-1024,2048,4096,8192}
fp16_lengths=${3-2048,4096}  # "" for none
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
export_once() {  # name, extra export flags
  [ -f "$out/$1.onnx" ] || $py -m dhsa_export.cli.export gemma3-270m --out "$out/$1.onnx" "${@:2}" >"$out/$1.export.log" 2>&1
}
export_once plugin
export_once portable --ops portable
export_once fp16 --dtype fp16
[ -f "$out/damaged.onnx" ] || $py -m tests.damage "$out/plugin.onnx" "$out/damaged.onnx" --layer 5 --proj v_proj --relative 1e-3
printf 'export\tlength\texit\tfailed\tattended_fraction\tpeak_rss_mib\tseconds\n' >"$out/summary.tsv"
check() {  # export, length
  local rep="$out/$1-$2"
  /usr/bin/time -f '%M %e' -o "$rep.time" $py -m dhsa_export.cli.check compare gemma3-270m --onnx "$out/$1.onnx" \
    --passkey "$2" --greedy-tokens 2 --layers --out "$rep" >"$rep.log" 2>&1
  local rc=$?
  local failed; failed=$(grep '^FAIL:' "$rep.log" | head -1 | cut -c7-)
  local frac; frac=$($py -c "import json,sys; print(json.load(open(sys.argv[1]))['attended_fraction'])" "$rep/report.json" 2>/dev/null)
  read -r rss secs < <(tail -n 1 "$rep.time")  # after time's "Command exited with non-zero status" line
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rc" "${failed:--}" "${frac:--}" "$((rss / 1024))" "$secs" | tee -a "$out/summary.tsv"
}
for n in ${lengths//,/ }; do
  for e in plugin portable damaged; do check "$e" "$n"; done
done
for n in ${fp16_lengths//,/ }; do check fp16 "$n"; done

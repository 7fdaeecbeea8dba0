#!/usr/bin/env bash
# One GPU check of the attention connectivity, written as ONE markdown file ($1, default gpu_check.md):
#   1. the dense-CRF table of benchmarks/crf_connectivity.py on the GPU (local / full where it fits / attention,
#      with and without pruning / pydensecrf2 on the CPU), batch 4, label grids 41, 81, 161, 321, with the labels'
#      agreement to full and to pydensecrf2;
#   2. the ASDT training step (benchmarks/train_step.py, preset gpu: experiment=voc_paper) with ResNet-38,
#      batch 4, crop 321, teacher A / B labels at the crop's 321 x 321 pixels (label_resolution=input) by
#      connectivity=attention and the dense-CRF energy loss, with bf16 + channels_last on and off (images/s and
#      peak memory), then the same with the labels on the 41 x 41 logit grid (label_resolution=logits) if time
#      is left.
# Every part has a time limit (GPU_CHECK_LIMIT_S in all, default 450 s: under 8 minutes with the start-up); a part
# that fails or runs out of time is named in the markdown, which is written whatever happens.
# GPU_CHECK_SMALL=1 shrinks every size (CPU, about a minute: a check of the script).
#
#   bash benchmarks/gpu_check.sh gpu_check.md
#   GPU_CHECK_SMALL=1 bash benchmarks/gpu_check.sh /tmp/gpu_check_small.md
set -uo pipefail

OUT_MD=$(realpath -m "${1:-gpu_check.md}")
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
LIMIT_S=${GPU_CHECK_LIMIT_S:-450}

if [ "${GPU_CHECK_SMALL:-0}" = "1" ]; then
  DEVICE=${GPU_CHECK_DEVICE:-cpu}
  CRF_ARGS=(--sizes 12 20 --batch 2 --iterations 2 --repeats 1 --big-repeats 1 --threads 1)
  STEP_ARGS=(--sizes 2x64 --repeats 1 --warmup 0 --no-breakdown --threads 1)
  MODEL=(--override backbone=resnet18 --override model.net.head_channels=8
         --override model.teacher_a.crf.iterations=1 --override model.teacher_b.crf.iterations=1
         --override "model.cam_scales=[1.0,0.5]")
else
  DEVICE=${GPU_CHECK_DEVICE:-cuda}
  CRF_ARGS=(--sizes 41 81 161 321 --batch 4 --repeats 3 --big-repeats 2 --threads 8)
  STEP_ARGS=(--sizes 4x321 --repeats 3 --warmup 1 --no-breakdown)
  MODEL=(--override backbone=resnet38)
fi
ATTENTION=(--override model.teacher_a.crf.connectivity=attention --override model.teacher_b.crf.connectivity=attention
           --override model.pairwise.connectivity=attention)

part() {  # name, share of the limit (s), then the command: run it for at most that long and what the limit leaves
  local name=$1 limit=$2
  shift 2
  local left=$((LIMIT_S - SECONDS))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -le 10 ]; then
    echo "- $name: not run (${SECONDS}s of ${LIMIT_S}s used)" | tee -a "$TMP/notes.md"
    return
  fi
  echo "== $name (at most ${limit}s)"
  timeout "$limit" "$@"
  local rc=$?
  [ "$rc" -eq 124 ] && echo "- $name: stopped after its ${limit}s" | tee -a "$TMP/notes.md"
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && echo "- $name: failed (exit $rc; its output is in the log)" | tee -a "$TMP/notes.md"
}
step() {  # name, share of the limit (s), then train_step arguments
  local name=$1 limit=$2
  shift 2
  part "training step $name" "$limit" "$PY" -m benchmarks.train_step --preset gpu --device "$DEVICE" "${STEP_ARGS[@]}" \
    "${MODEL[@]}" "${ATTENTION[@]}" "$@" --md "$TMP/step-$name.md" --json "$TMP/step-$name.json"
}

# the CRF table leaves out the cases it has no time for (--max-seconds) and still writes its markdown
part "CRF connectivities on $DEVICE" 170 "$PY" -m benchmarks.crf_connectivity --device "$DEVICE" "${CRF_ARGS[@]}" \
  --max-seconds 150 --md "$TMP/crf.md" --json "$TMP/crf.json"
step bf16-channels_last 110 --precision bf16 --channels-last
step fp32 110 --precision 32 --no-channels-last
step bf16-channels_last-labels41 110 --precision bf16 --channels-last --override model.label_resolution=logits \
  --repeats 2

"$PY" - "$TMP" "$OUT_MD" "$SECONDS" <<'EOF'
import json
import sys
from pathlib import Path

from benchmarks._common import machine_info, md_table, median

tmp, out, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
rows = []
for path in sorted(tmp.glob("step-*.json")):
    r = json.loads(path.read_text())
    if r.get("status") != "measured":
        rows.append([path.stem[5:], r.get("status"), "", "", "", ""])
        continue
    for size, entry in r["sizes"].items():
        batch = int(size.split("x")[0])
        for label, times in entry["seconds"].items():
            mem = entry["memory"].get(label, {}).get("peak_mib")
            ms = 1000 * median(times)
            rows.append([path.stem[5:], size, label, f"{ms:.0f}", f"{batch / (ms / 1000):.1f}", f"{mem:.0f}" if mem else "-"])
crf = tmp / "crf.md"
parts = [
    "## GPU check: attention connectivity",
    "",
    f"Machine: `{json.dumps(machine_info())}`; {seconds} s in all.",
    "",
    crf.read_text() if crf.is_file() else "### Dense CRF per connectivity\n\n**not measured** (see below)\n",
    "### Training step, teacher A / B CRFs and pairwise loss on connectivity=attention",
    "",
    "From benchmarks/train_step.py (preset gpu: experiment=voc_paper, backbone overridden), one row per step kind; "
    "images/s = batch / median step time; peak MiB = the GPU allocator's peak (the profiler's timeline on CPU), "
    "measured on [B]-steps and the lower bound. Labels at the crop's pixels (321x321, "
    "label_resolution=input), on the 41x41 logit grid in the labels41 run. Each run's own section follows.",
    "",
    md_table(["run", "batch x crop", "step", "median ms", "images/s", "peak MiB"], rows) if rows else "**none ran**",
    "",
]
if (tmp / "notes.md").is_file():
    parts += ["Parts left out or stopped:", "", (tmp / "notes.md").read_text()]
parts += [p.read_text() for p in sorted(tmp.glob("step-*.md"))]
out.write_text("\n".join(parts))
print(f"wrote {out}")
EOF

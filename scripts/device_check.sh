#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (issues 26 and 28: "on a GPU, say how long").
# Here, first: `python scripts/device_carry.py --imagenet` (writes .device/, ignored by git).
# Then, with the device tool: run `bash scripts/device_check.sh`, carry [".device"],
# timeout_s 560. What it does, each step timed, its files in $OUT (at most 8 come back):
#   1. the machine: GPU, torch, CUDA                                           -> env.txt
#   2. `pfn finetune default` on the Penn-Fudan photos for FT_MINUTES (2) on the GPU: how many
#      steps a user's minutes buy there (the CPU makes about 100 a minute)  -> finetune.log, card
#   3. the 20-minute CPU recipe's chain (740 category + 661 instance + 150 'counts' steps,
#      channels-last) on synthetic:300 + Penn-Fudan: its wall clock on the GPU -> chain.log, CSVs
#   4. that chain read on the Penn-Fudan val photos                           -> evaluate.log
# Scale the chain with STEPS_SCALE (e.g. 0.1 for a first try); PFN_DEVICE=cpu runs it here.
set -uo pipefail
OUT=${OUT:-/tmp/pfn-device-out}
mkdir -p "$OUT"
DEV=${PFN_DEVICE:-cuda}
SCALE=${STEPS_SCALE:-1}
WORK=${WORK:-/tmp/pfn-device-work}
rm -rf "$WORK" && mkdir -p "$WORK"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .device/whl/*.whl || { echo "wheels did not install"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
export PFN_SHARED_DATA=$PWD/.device/data PYTHONUNBUFFERED=1
D=$PFN_SHARED_DATA/pennfudan
PED="folder:$D/PNGImages:$D/PedMasks:person"
steps() { python3 -c "print(max(1, round($1 * $SCALE)))"; }
stamp() { date +%s.%N; }
took() { python3 -c "print(f'{$2 - $1:.1f} s')"; }

{ nvidia-smi -L 2>&1; python3 -c "import torch; print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  nproc; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

t0=$(stamp)
python3 -m pfn_napari finetune default --data "$PED" --minutes "${FT_MINUTES:-2}" \
  --device "$DEV" --out "$WORK/ft" > "$OUT/finetune.log" 2>&1
echo "finetune: exit $?, $(took "$t0" "$(stamp)") with both evaluations" >> "$OUT/finetune.log"
cp "$WORK/ft/README.md" "$OUT/finetune_card.md" 2>/dev/null
tail -n 5 "$OUT/finetune.log"

SPEC="synthetic:300+$PED"
COMMON=(--config cpu-demo --set "data.train=$SPEC" --set "train.device=$DEV"
        --set train.channels_last=true --set data.num_workers=8 --set train.checkpoint_every=0)
{
  t0=$(stamp)
  python3 -m pfn_napari train --stage category "${COMMON[@]}" \
    --set "train.max_steps=$(steps 740)" --out "$WORK/category"
  t1=$(stamp); echo "category: $(took "$t0" "$t1")"
  python3 -m pfn_napari train --stage instance "${COMMON[@]}" \
    --set "train.init=$WORK/category/final.pt" --set "train.max_steps=$(steps 661)" \
    --out "$WORK/instance"
  t2=$(stamp); echo "instance: $(took "$t1" "$t2")"
  python3 -m pfn_napari train --stage counts "${COMMON[@]}" \
    --set "train.init=$WORK/instance/final.pt" --set "train.max_steps=$(steps 150)" \
    --out "$WORK/counts"
  t3=$(stamp); echo "counts: $(took "$t2" "$t3")"; echo "chain: $(took "$t0" "$t3")"
} > "$OUT/chain.log" 2>&1
grep -E "^(category|instance|counts|chain):|error" "$OUT/chain.log"
for s in category instance counts; do cp "$WORK/$s/log.csv" "$OUT/${s}_log.csv" 2>/dev/null; done

python3 -m pfn_napari evaluate "$WORK/counts/final.pt" --data "$PED" --split val \
  --device "$DEV" --out "$WORK/ev" > "$OUT/evaluate.log" 2>&1
grep -E "AP\^r@0.5|shown" "$OUT/evaluate.log" | head -4

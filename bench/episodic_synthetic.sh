#!/bin/bash
# EgoNLQ and EgoMQ end to end on a synthetic Ego4D episodic-memory dataset, CPU:
#   synth -> features of the shipped default model (train and val) -> heads -> scores on val
#   beside a seeded random baseline.
# usage: bench/episodic_synthetic.sh SEED WORKDIR      (EGOVLPV2=path/to/egovlpv2 to override)
# Recipes are fixed (NLQ: the original's VSLNet recipe; MQ: the head's defaults); SEED seeds
# the dataset, the heads and the baseline. The synthetic test split is unannotated, as Ego4D's.
set -euo pipefail
S=$1
W=$2
E=${EGOVLPV2:-egovlpv2}
mkdir -p "$W"
t() {  # run, then append its wall seconds to seconds.txt
  local s=$EPOCHREALTIME
  "$@"
  python3 -c "print(round($EPOCHREALTIME - $s, 1))" >> "$W/seconds.txt"
}
[ -f "$W/data/nlq_val.json" ] || $E synth --task nlq --out "$W/data" --seed "$S" >/dev/null
for split in train val; do
  echo "features nlq $split" >> "$W/seconds.txt"
  t $E features --task nlq --metadata "$W/data/nlq_$split.json" --videos "$W/data/videos" \
    --out "$W/nlq_$split" --fps video >/dev/null
  echo "features mq $split" >> "$W/seconds.txt"
  t $E features --task mq --metadata "$W/data/moments_$split.json" --videos "$W/data/videos" \
    --out "$W/mq_$split" --fps video >/dev/null
done
echo "train-head nlq" >> "$W/seconds.txt"
t $E train-head --task nlq --features "$W/nlq_train" --out "$W/nlq_head" --seed "$S" 2>/dev/null
$E eval-head --task nlq --checkpoint "$W/nlq_head" --features "$W/nlq_val" \
  --baseline-seed "$S" --json > "$W/nlq_eval.json"
echo "train-head mq" >> "$W/seconds.txt"
t $E train-head --task mq --features "$W/mq_train" --metadata "$W/data/moments_train.json" \
  --out "$W/mq_head" --seed "$S" 2>/dev/null
$E eval-head --task mq --checkpoint "$W/mq_head" --features "$W/mq_val" \
  --metadata "$W/data/moments_val.json" --baseline-seed "$S" --json > "$W/mq_eval.json"
python3 - "$W" <<'PY'
import json, sys
w = sys.argv[1]
n, m = (json.load(open(f"{w}/{t}_eval.json")) for t in ("nlq", "mq"))
print(f"NLQ ({n['queries']} val queries): R@1 IoU0.3 {n['metrics']['R@1_IoU0.3']:.2f} "
      f"(random {n['random_baseline']['R@1_IoU0.3']:.2f}), R@1 IoU0.5 "
      f"{n['metrics']['R@1_IoU0.5']:.2f} (random {n['random_baseline']['R@1_IoU0.5']:.2f}), "
      f"mIoU {n['metrics']['mIoU']:.2f} (random {n['random_baseline']['mIoU']:.2f})")
print(f"MQ ({m['clips']} val clips, {m['moments']} moments): average mAP "
      f"{m['metrics']['average']:.2f} (random {m['random_baseline']['average']:.2f}), "
      f"R@1x IoU0.5 {m['metrics']['R@1x_IoU0.5']:.2f} "
      f"(random {m['random_baseline']['R@1x_IoU0.5']:.2f})")
PY

#!/usr/bin/env bash
# XLA CPU flags against the default, side by side: each flag set runs the same
# `python benchmarks/bench_train_step.py` rows in its own process (XLA reads XLA_FLAGS once),
# round after round, so a machine that slows down slows every set alike.
#
#   bash benchmarks/bench_xla_cpu_flags.sh                 # CIFAR ResNet-20 and ResNet-18, 32x32
#   ROUNDS=3 MODELS=resnet18 bash benchmarks/bench_xla_cpu_flags.sh
#
# Prints each set's train images/s per round and their medians. $PYTHON picks
# the interpreter (default: python).
set -euo pipefail
PYTHON=${PYTHON:-python}
ROUNDS=${ROUNDS:-2}
MODELS=${MODELS:-cifar_resnet20,resnet18}
FLAG_SETS=(
  ""
  "--xla_cpu_use_onednn=true"
  "--xla_cpu_use_xnnpack=true"
  "--xla_cpu_experimental_xnn_fusion_type=XNN_FUSION_TYPE_DOT,XNN_FUSION_TYPE_ELTWISE"
  "--xla_cpu_enable_fast_math=true"
  "--xla_cpu_multi_thread_eigen=false"
  "--xla_cpu_enable_concurrency_optimized_scheduler=true"
)
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
for round in $(seq "$ROUNDS"); do
  for i in "${!FLAG_SETS[@]}"; do
    XLA_FLAGS="${FLAG_SETS[$i]}" $PYTHON "$here/bench_train_step.py" --models="$MODELS" --image_sizes=32 \
      --dtypes=float32 --batch_sizes=128 --steps=5 --repeats=3 --num_classes=10 \
      --json="$out/set${i}_round${round}.json" > "$out/set${i}_round${round}.log" 2>&1 \
      || echo "flags '${FLAG_SETS[$i]}' failed: $(grep -m1 -i error "$out/set${i}_round${round}.log")"
  done
done
$PYTHON - "$out" "${FLAG_SETS[@]}" <<'PY'
import json, pathlib, statistics, sys
out, sets = pathlib.Path(sys.argv[1]), sys.argv[2:]
base = {}
print(f'{"XLA_FLAGS":<80} {"model":<15} {"train img/s (rounds)":<28} {"median":>8} {"vs default":>10}')
for i, flags in enumerate(sets):
  per_model = {}
  for path in sorted(out.glob(f'set{i}_round*.json')):
    for row in json.loads(path.read_text())['steps']:
      per_model.setdefault(row['model'], []).append(row['train_images_per_second'])
  for model, rates in per_model.items():
    median = statistics.median(rates)
    base.setdefault(model, median)
    print(f'{flags or "(default)":<80} {model:<15} {" ".join(f"{r:.1f}" for r in rates):<28} '
          f'{median:8.1f} {median / base[model]:10.2f}')
PY

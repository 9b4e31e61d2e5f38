#!/usr/bin/env bash
# jaxcls against PyTorch on this machine, same models, input size, dtype and batch, in one run:
# `python benchmarks/bench_train_step.py` and benchmarks/bench_torch.py take turns, round after round, so both see
# the same machine; then one table of the medians and the ratio jax / torch.
#
#   bash benchmarks/bench_vs_torch.sh                                    # CPU: CIFAR ResNet-20, ResNet-18 at 32
#   MODELS=resnet50 SIZES=224 DTYPES=bfloat16 BATCH=256 TORCH_COMPILE=on,off bash benchmarks/bench_vs_torch.sh   # GPU
#
#   STEPS=2 REPEATS=2 MODELS=resnet18,resnet50,efficientnet_b0 SIZES=224 BATCH=16 CONV_LOWERINGS=auto \
#     bash benchmarks/bench_vs_torch.sh                                  # CPU at 224px (README)
#
# Environment: MODELS, SIZES, DTYPES, BATCH, STEPS (default 5) and REPEATS (default 3) per
# figure, ROUNDS (default 2), TORCH_COMPILE (default off on
# CPU), CONV_LOWERINGS (jaxcls's model.conv_lowering values, default auto,xla), NUM_CLASSES
# (default 1000), PYTHON, OUT (JSON folder, default a temporary one).
set -euo pipefail
PYTHON=${PYTHON:-python}
MODELS=${MODELS:-cifar_resnet20,resnet18}
SIZES=${SIZES:-32}
DTYPES=${DTYPES:-float32}
BATCH=${BATCH:-128}
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-5}
REPEATS=${REPEATS:-3}
TORCH_COMPILE=${TORCH_COMPILE:-off}
CONV_LOWERINGS=${CONV_LOWERINGS:-auto,xla}
NUM_CLASSES=${NUM_CLASSES:-1000}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
common=(--models="$MODELS" --image_sizes="$SIZES" --dtypes="$DTYPES" --batch_sizes="$BATCH"
        --num_classes="$NUM_CLASSES" --steps="$STEPS" --repeats="$REPEATS")
for round in $(seq "$ROUNDS"); do
  $PYTHON "$here/bench_train_step.py" "${common[@]}" --devices=1 --conv_lowerings="$CONV_LOWERINGS" --json="$OUT/jax_$round.json" | tail -n +2
  $PYTHON "$here/bench_torch.py" "${common[@]}" --compile="$TORCH_COMPILE" \
    --json="$OUT/torch_$round.json" | tail -n +2
done
$PYTHON - "$OUT" <<'PY'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
rows = {}
for path in sorted(out.glob('*_*.json')):
  loaded = json.loads(path.read_text())
  for r in loaded['steps'] if isinstance(loaded, dict) else loaded:
    key = (r['model'], r['image_size'], r['dtype'], r['batch_size'])
    rows.setdefault(key, {}).setdefault((r['framework'], r['variant']), []).append(
        r['train_images_per_second'])
print(f'\n{"model":<15} {"size":>4} {"dtype":<8} {"batch":>5}  {"framework/variant":<22} '
      f'{"train img/s (median of rounds)":>30} {"jax/this":>8}')
for key, variants in rows.items():
  jax_rate = statistics.median(variants.get(('jax', 'jit'), [float('nan')]))
  for (framework, variant), rates in variants.items():
    median = statistics.median(rates)
    print(f'{key[0]:<15} {key[1]:>4} {key[2]:<8} {key[3]:>5}  {framework + "/" + variant:<22} '
          f'{median:30.1f} {jax_rate / median:8.2f}')
PY
echo "JSON: $OUT"

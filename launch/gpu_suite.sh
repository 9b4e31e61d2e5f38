#!/usr/bin/env bash
# launch/gpu_suite.py on a bare GPU machine that has jax, flax, optax, orbax and torch but not the
# rest of jaxcls's needs (grain, clu, ml_collections, dm-pix, ...), and no network:
#
#   bash launch/gpu_suite.sh OUT_DIR [launch/gpu_suite.py flags, e.g. --budget_s 420]
#
# WHEELS (default .gpu/whl): wheels installed without an index or dependencies into
# SITE (default /tmp/jaxcls-site), put first on PYTHONPATH. Where jaxcls does not import with the
# machine's own flax/optax/orbax, the wheels in FALLBACK (default .gpu/fallback: the versions this
# project is tested with) go in front of them. CIFAR (default .gpu/cifar10-jpg.tar.gz, else the
# shared archive) feeds the real-data part. Prepare the folder on a machine with pip:
#
#   mkdir -p .gpu/whl .gpu/fallback; cp ../shared/device-wheels/*.whl .gpu/whl/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/whl dm-pix==0.4.4
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/fallback \
#       flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8
#   cp ../shared/data/cifar10-jpg/cifar10-jpg.tar.gz .gpu/
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUT_DIR [launch/gpu_suite.py flags]" >&2
  exit 2
fi
out=$1
shift
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.gpu/whl}
FALLBACK=${FALLBACK:-.gpu/fallback}
SITE=${SITE:-/tmp/jaxcls-site}
install() {  # install DIR TARGET
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$2" "$1"/*.whl
}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  install "$WHEELS" "$SITE"
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi
check='from jaxcls.models import create_model; import jaxcls.training.loop, jaxcls.experiment
create_model("cifar_resnet20", 10, width=4)'
if ! "$PYTHON" -c "$check"; then
  compgen -G "$FALLBACK/*.whl" >/dev/null || exit 1
  echo "# jaxcls does not import with this machine's packages: adding $FALLBACK" >&2
  install "$FALLBACK" "$SITE-fallback"
  export PYTHONPATH="$SITE-fallback:$PYTHONPATH"
  "$PYTHON" -c "$check"
fi
cifar=()
if [[ -f ${CIFAR:-.gpu/cifar10-jpg.tar.gz} ]]; then
  cifar=(--cifar "${CIFAR:-.gpu/cifar10-jpg.tar.gz}")
fi
exec "$PYTHON" launch/gpu_suite.py --out "$out" "${cifar[@]}" "$@"

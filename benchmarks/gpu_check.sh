#!/usr/bin/env bash
# One GPU check in one call (see benchmarks/gpu_check.py): bf16 parity + step throughput on a ~1B Llama.
#   bash benchmarks/gpu_check.sh          # on one GPU, < 8 min
#   bash benchmarks/gpu_check.sh --cpu    # dry mode on the CPU (tiny model)
# Extra arguments go to the python script (--pairs, --steps, --variants, --json PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
if [[ " $* " == *" --cpu "* ]]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"; fi
"$PYTHON" -c "import torch, transformers, accelerate; print('torch', torch.__version__, '| transformers',
transformers.__version__, '| accelerate', accelerate.__version__, '| cuda', torch.cuda.is_available())"
exec timeout 900 "$PYTHON" benchmarks/gpu_check.py "$@"

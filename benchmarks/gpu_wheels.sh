#!/usr/bin/env bash
# The wheels that benchmarks/gpu_check.py needs on a GPU machine whose Python 3.12 has torch and the common
# scientific stack but not this project's other dependencies (the device machines lent to this project):
#
#     bash benchmarks/gpu_wheels.sh [DIR]      # default DIR: .whl (~32 MB, 19 wheels)
#
# then, on that machine, with DIR copied into the checkout:
#
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl
#     export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH   # bin: the deepspeed launcher script
#     python3 benchmarks/gpu_check.py --out runs/gpu_check --budget 500
#
# Each of the project's own dependencies (pyproject.toml, with the cpu and dev extras) is pinned below, or is on
# such a machine already, or is left out (tests/test_gpu_check.py checks that this stays so):
# already there: torch torchvision transformers tokenizers sentencepiece scipy safetensors pyyaml tqdm numpy pandas
#   pyarrow pillow tensorboard matplotlib pytest pytest-timeout pytest-xdist
# left out: ray pycocoevalcap selenium ruff
# ray (~70 MB) and pycocoevalcap (~100 MB with Stanford CoreNLP) do not fit a 64 MiB carry, selenium needs a
# browser too, and ruff only lints. The quick-suite tests that import them (or img2dataset's own dependencies)
# fail there with ModuleNotFoundError, 25 of them when this was written; the four benchmarks need none of them
# (bench_tokenize runs the stage's encoder in process without Ray).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.whl}"
PY="${PYTHON:-python3}"
mkdir -p "$DIR"
# Versions this project's tests pass with (pip matches each manylinux tag exactly, so several are named).
WHEELS=(
  hjson==3.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  webdataset==0.2.111 braceexpand==0.1.7 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
  torch-fidelity==0.4.0 flask==3.1.3 itsdangerous==2.2.0 blinker==1.9.0 faiss-cpu==1.15.1 diffusers==0.42.1
  pycocotools==2.0.11 img2dataset==1.47.0
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR" "${WHEELS[@]}"
# DeepSpeed is published as a source distribution only; its build is pure Python (its ops compile at first use).
"$PY" -m pip wheel -q --no-deps -w "$DIR" deepspeed==0.19.8
echo "$(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1) in $DIR"

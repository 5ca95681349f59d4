#!/usr/bin/env bash
# Fetches llama.cpp's tokenizer vocab files (ggml-vocab-*.gguf, MIT) from the
# llama-cpp-python sdist on PyPI into DIR. pip prepares an sdist's metadata by
# running its build backend, so a small venv with scikit-build-core and cmake is made
# beside DIR first.
set -euo pipefail
dir=${1:?usage: fetch-vocab.sh DIR}
mkdir -p "$dir"
work=$(dirname "$dir")/.sdist
venv="$work/venv"
if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q scikit-build-core cmake
fi
if ! ls "$work"/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
    "$venv/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation \
        llama-cpp-python==0.3.36 -d "$work"
fi
tar -xzf "$work"/llama_cpp_python-0.3.36.tar.gz -C "$work" --wildcards \
    '*/vendor/llama.cpp/models/ggml-vocab-*.gguf' '*/vendor/llama.cpp/LICENSE'
for f in "$work"/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-*.gguf; do
    cp "$f" "$dir/.$(basename "$f").partial"
    mv "$dir/.$(basename "$f").partial" "$dir/$(basename "$f")"
done
cp "$work"/llama_cpp_python-0.3.36/vendor/llama.cpp/LICENSE "$dir/LICENSE-llama.cpp"
echo "vocab files in $dir"

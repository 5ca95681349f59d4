"""llama.cpp's own tools (llama-server, llama-perplexity, llama-bench), built once from the
llama.cpp tree vendored in the llama-cpp-python 0.3.36 sdist (fetched with pip into the
same cache as scripts/fetch-vocab.sh) with cmake from PyPI, `-DGGML_NATIVE=ON`, niced,
into ~/.cache/ferrollama/bench/llama-tools/ (several minutes per tool on 2 cores); with
isa="avx2", AVX2 without AVX-512 into llama-tools-avx2/.
"""

import os
import pathlib
import shutil
import subprocess
import sys

HOME = pathlib.Path(os.environ.get("FERROLLAMA_HOME", pathlib.Path.home() / ".cache/ferrollama/models"))
SDIST_WORK = HOME / ".sdist"  # shared with scripts/fetch-vocab.sh
SDIST_VENV = SDIST_WORK / "venv"
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
TOOLS_DIR = HOME.parent / "bench" / "llama-tools"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ensure_sdist_tree():
    """The vendored llama.cpp source tree from the llama-cpp-python sdist."""
    name = LLAMA_CPP_PYTHON.replace("-", "_").replace("==", "-")
    tree = SDIST_WORK / name / "vendor/llama.cpp"
    if (tree / "CMakeLists.txt").exists():
        return tree
    pip = SDIST_VENV / "bin/pip"
    if not pip.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SDIST_VENV)], check=True)
        subprocess.run([str(pip), "install", "-q", "scikit-build-core", "cmake"], check=True)
    tarball = SDIST_WORK / f"{name}.tar.gz"
    if not tarball.exists():
        # pip prepares an sdist's metadata with its build backend, hence scikit-build-core in
        # the venv and no build isolation. --no-binary here only: elsewhere it builds cmake.
        subprocess.run([str(pip), "download", "-q", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
                        LLAMA_CPP_PYTHON, "-d", str(SDIST_WORK)], check=True)
    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(SDIST_WORK)], check=True)
    return tree


# CPU features a build may use: all of this CPU's (`native`), or AVX2 + FMA + F16C + BMI2
# and no AVX-512 (`avx2`: what an AVX2-only CPU runs, measured on an AVX-512 one).
ISA_FLAGS = {
    "native": ["-DGGML_NATIVE=ON"],
    "avx2": ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
             "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX512_VNNI=OFF", "-DGGML_AVX512_BF16=OFF",
             "-DGGML_AVX_VNNI=OFF"],
}


def ensure_tool(target, jobs=2, isa="native"):
    """The path of llama.cpp's `target` binary (llama-server, llama-perplexity, ...), built
    for `isa` (a key of ISA_FLAGS; each its own build directory)."""
    tools = TOOLS_DIR if isa == "native" else TOOLS_DIR.with_name(f"llama-tools-{isa}")
    binary = tools / target
    if binary.exists():
        return binary
    tree = ensure_sdist_tree()
    cmake = SDIST_VENV / "bin/cmake"
    if not cmake.exists():
        subprocess.run([str(SDIST_VENV / "bin/pip"), "install", "-q", "cmake"], check=True)
    build = tools / "build"
    log(f"building {target} ({isa}) from {tree} into {build} (-j{jobs}, niced; several minutes)")
    subprocess.run([str(cmake), "-S", str(tree), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *ISA_FLAGS[isa],
                    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF",
                    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",  # no web UI download
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["nice", "-n", "19", str(cmake), "--build", str(build), "--target", target, f"-j{jobs}"], check=True)
    shutil.copy2(build / "bin" / target, binary)
    return binary


if __name__ == "__main__":
    for t in sys.argv[1:] or ["llama-perplexity"]:
        print(ensure_tool(t))

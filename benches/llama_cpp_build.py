"""llama.cpp's own tools (llama-server, llama-perplexity, llama-bench), built once from the
llama.cpp tree vendored in the llama-cpp-python 0.3.36 sdist (fetched with pip into the
same cache as scripts/fetch-vocab.sh) with cmake from PyPI, `-DGGML_NATIVE=ON`, niced,
into ~/.cache/ferrollama/bench/llama-tools/ (several minutes per tool on 2 cores).
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


def ensure_tool(target, jobs=2):
    """The path of llama.cpp's `target` binary (llama-server, llama-perplexity, ...)."""
    binary = TOOLS_DIR / target
    if binary.exists():
        return binary
    tree = ensure_sdist_tree()
    cmake = SDIST_VENV / "bin/cmake"
    if not cmake.exists():
        subprocess.run([str(SDIST_VENV / "bin/pip"), "install", "-q", "cmake"], check=True)
    build = TOOLS_DIR / "build"
    log(f"building {target} from {tree} into {build} (-j{jobs}, niced; several minutes)")
    subprocess.run([str(cmake), "-S", str(tree), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
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

#!/usr/bin/env python3
"""Runs every fuzz target (libFuzzer through cargo-fuzz, AddressSanitizer and LeakSanitizer,
overflow checks on) for a fixed budget and reports executions and findings.

    python3 scripts/fuzz.py [--runs 10000000] [--max-time SECONDS] [--jobs 2]
                            [--targets gguf,gbnf] [--sanitizer address|none]
                            [--out benches/results/DATE-fuzz]

Each target starts from its committed seeds (crates/fuzzing/seeds/TARGET) and its working
corpus (fuzz/corpus/TARGET, kept between runs, not committed); it stops after --runs
executions or --max-time seconds, whichever comes first, or at its first finding. A finding
is the input libFuzzer saved (fuzz/artifacts/TARGET/crash-*, leak-*, timeout-*, oom-*):
copy it into crates/fuzzing/regressions/TARGET/ with the fix, where the replay test runs it
in CI. Limits: 2 GiB RSS, 10 s per input, inputs up to 64 KiB. `--sanitizer none` builds
without AddressSanitizer (2-3x the executions; Rust's own checks, overflow checks and
debug assertions stay, leaks are no longer detected) into a separate target directory.

Needs the stable toolchain's nightly flags (RUSTC_BOOTSTRAP=1, set here) and cargo-fuzz
(`cargo install cargo-fuzz`, installed here when missing). Writes OUT.json and OUT.md.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
TARGETS = [
    "gguf",
    "safetensors",
    "tokenizer_json",
    "tokenizer_model",
    "tokenize",
    "chat_template",
    "server_request",
    "gbnf",
    "json_schema",
    "lora_adapter",
]
FINDING = re.compile(r"^(crash|leak|timeout|oom|slow-unit)-")


def cpu_name():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def target_dir(sanitizer):
    return FUZZ / ("target" if sanitizer == "address" else f"target-{sanitizer}")


def build(env, sanitizer):
    if shutil.which("cargo-fuzz") is None:
        subprocess.run(["cargo", "install", "cargo-fuzz"], check=True)
    subprocess.run(["cargo", "fuzz", "build", "-O", "-a", "-s", sanitizer,
                    "--target-dir", str(target_dir(sanitizer))], cwd=FUZZ, env=env, check=True)


def binary(target, sanitizer):
    return target_dir(sanitizer) / "x86_64-unknown-linux-gnu" / "release" / target


def run_target(target, args, env):
    corpus = FUZZ / "corpus" / target
    artifacts = FUZZ / "artifacts" / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in artifacts.iterdir()}
    seeds = ROOT / "crates" / "fuzzing" / "seeds" / target
    cmd = [
        str(binary(target, args.sanitizer)),
        str(corpus),
        str(seeds),
        f"-runs={args.runs}",
        f"-max_total_time={args.max_time}",
        "-print_final_stats=1",
        "-rss_limit_mb=2048",
        "-malloc_limit_mb=2048",
        "-timeout=10",
        "-max_len=65536",
        f"-artifact_prefix={artifacts}/",
    ]
    log = FUZZ / "artifacts" / f"{target}.log"
    start = time.time()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.time() - start
    text = log.read_text(errors="replace")
    stat = lambda key: int(m.group(1)) if (m := re.search(rf"stat::{key}:\s+(\d+)", text)) else None
    findings = sorted(
        p.name for p in artifacts.iterdir() if p.name not in before and FINDING.match(p.name)
    )
    return {
        "target": target,
        "executions": stat("number_of_executed_units"),
        "exec_per_s": stat("average_exec_per_sec"),
        "new_units": stat("new_units_added"),
        "peak_rss_mb": stat("peak_rss_mb"),
        "corpus_files": sum(1 for _ in corpus.iterdir()),
        "seconds": round(seconds, 1),
        "exit_code": rc,
        "findings": findings,
        "log": str(log.relative_to(ROOT)),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10_000_000)
    p.add_argument("--max-time", type=int, default=0, help="seconds per target (0: no cap)")
    p.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--out", default=None)
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--sanitizer", choices=["address", "none"], default="address")
    args = p.parse_args()
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    # A Rust panic must abort so that libFuzzer sees it; backtraces name the place.
    env.setdefault("RUST_BACKTRACE", "1")
    env["ASAN_OPTIONS"] = "detect_leaks=1:allocator_may_return_null=0"
    # One thread per fuzzer: the inputs are tiny, so a pool's wake-ups cost more than they
    # save, and with --jobs 2 two pools would fight over two cores.
    env["RAYON_NUM_THREADS"] = "1"
    if not args.no_build:
        build(env, args.sanitizer)
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        sys.exit(f"unknown targets: {unknown}")
    started = datetime.datetime.now(datetime.timezone.utc)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda t: run_target(t, args, env), targets))
    report = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "runs_budget": args.runs,
        "max_time_s": args.max_time,
        "jobs": args.jobs,
        "sanitizers": (
            "address + leak (libFuzzer -detect_leaks), overflow and debug assertions"
            if args.sanitizer == "address"
            else "none (overflow checks and debug assertions only)"
        ),
        "limits": "rss 2048 MB, malloc 2048 MB, timeout 10 s per input, max_len 65536",
        "results": results,
    }
    out = pathlib.Path(args.out) if args.out else ROOT / "benches" / "results" / (
        started.strftime("%Y-%m-%d") + "-fuzz"
    )
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Fuzzing, {report['date']}",
        "",
        f"`python3 scripts/fuzz.py --runs {args.runs} --max-time {args.max_time} --jobs {args.jobs}"
        f" --sanitizer {args.sanitizer}`"
        f" on {report['cpu']} ({report['cores']} cores, {args.jobs} targets at once).",
        f"Sanitizers: {report['sanitizers']}. Limits: {report['limits']}.",
        "",
        "| target | executions | exec/s | corpus | new units | peak RSS MB | time s | findings |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['target']} | {r['executions'] or 0:,} | {r['exec_per_s'] or 0:,} | "
            f"{r['corpus_files']} | {r['new_units'] or 0} | {r['peak_rss_mb'] or 0} | "
            f"{r['seconds']} | {', '.join(r['findings']) or 'none'} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if any(r["findings"] or r["exit_code"] != 0 for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Runs every fuzz target (libFuzzer through cargo-fuzz, AddressSanitizer and LeakSanitizer,
overflow checks on) for a fixed budget and reports executions and findings.

    python3 scripts/fuzz.py [--runs 10000000 | --until 10000000] [--max-time SECONDS]
                            [--jobs 2] [--targets gguf,gbnf] [--sanitizer address|none]
                            [--replay-asan] [--no-trace-compares] [--out benches/results/DATE-fuzz]
    python3 scripts/fuzz.py --totals

Each target starts from its committed seeds (crates/fuzzing/seeds/TARGET) and its working
corpus (fuzz/corpus/TARGET, kept between runs, not committed); it stops after --runs
executions or --max-time seconds, whichever comes first, or at its first finding. A finding
is the input libFuzzer saved (fuzz/artifacts/TARGET/crash-*, leak-*, timeout-*, oom-*):
copy it into crates/fuzzing/regressions/TARGET/ with the fix, where the replay test runs it
in CI. Limits: 2 GiB RSS, 10 s per input, inputs up to 64 KiB. `--sanitizer none` builds
without AddressSanitizer (2-3x the executions; Rust's own checks, overflow checks and
debug assertions stay, leaks are no longer detected) into a separate target directory;
`--replay-asan` then runs every input of each corpus once more under AddressSanitizer and
LeakSanitizer, so each input that found new code is checked for what the fast run cannot see.

Every campaign's JSON lands in benches/results/ (`*-fuzz*.json`); `--totals` sums the
executions per target over all of them, and `--until N` gives each target the runs it
still needs to reach N in total.

Do not SIGSTOP a campaign (to free the machine for a benchmark): libFuzzer measures its
per-input timeout in wall time, so a stop of more than 10 s ends the target with a false
timeout. Such a finding, once replayed well under the limit, goes into the campaign's JSON as
`dismissed` (with the replay time and the reason) instead of `findings`.

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


def target_dir(sanitizer, trace_compares=True):
    name = "target" if sanitizer == "address" else f"target-{sanitizer}"
    return FUZZ / (name if trace_compares else f"{name}-no-trace-compares")


def build(env, sanitizer, trace_compares=True):
    if shutil.which("cargo-fuzz") is None:
        subprocess.run(["cargo", "install", "cargo-fuzz"], check=True)
    flags = [] if trace_compares else ["--no-trace-compares"]
    subprocess.run(["cargo", "fuzz", "build", "-O", "-a", "-s", sanitizer, *flags,
                    "--target-dir", str(target_dir(sanitizer, trace_compares))],
                   cwd=FUZZ, env=env, check=True)


def binary(target, sanitizer, trace_compares=True):
    return target_dir(sanitizer, trace_compares) / "x86_64-unknown-linux-gnu" / "release" / target


def run_target(target, runs, args, env):
    corpus = FUZZ / "corpus" / target
    artifacts = FUZZ / "artifacts" / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in artifacts.iterdir()}
    seeds = ROOT / "crates" / "fuzzing" / "seeds" / target
    cmd = [
        str(binary(target, args.sanitizer, not args.no_trace_compares)),
        str(corpus),
        str(seeds),
        f"-runs={runs}",
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
    findings = sorted(
        p.name for p in artifacts.iterdir() if p.name not in before and FINDING.match(p.name)
    )
    return result_from_log(target, rc, time.time() - start, findings)


def result_from_log(target, rc, seconds, findings):
    """A target's result from the final statistics libFuzzer wrote to its log (it writes
    them when it stops at its budget, at a finding, or on SIGINT)."""
    log = FUZZ / "artifacts" / f"{target}.log"
    text = log.read_text(errors="replace")
    stat = lambda key: int(m.group(1)) if (m := re.search(rf"stat::{key}:\s+(\d+)", text)) else None
    return {
        "target": target,
        "executions": stat("number_of_executed_units"),
        "exec_per_s": stat("average_exec_per_sec"),
        "new_units": stat("new_units_added"),
        "peak_rss_mb": stat("peak_rss_mb"),
        "corpus_files": sum(1 for _ in (FUZZ / "corpus" / target).iterdir()),
        "seconds": round(seconds, 1),
        "exit_code": rc,
        "findings": findings,
        "log": str(log.relative_to(ROOT)),
    }


def results_from_logs(targets):
    """Results of runs whose driver stopped before writing them (each libFuzzer run ended at
    its budget, at a finding, or on SIGINT, which makes it write its statistics), from the
    logs: findings are the test units the log says it wrote, the time executions / rate."""
    results = []
    for t in targets:
        text = (FUZZ / "artifacts" / f"{t}.log").read_text(errors="replace")
        findings = sorted(
            name for path in re.findall(r"Test unit written to (\S+)", text)
            if FINDING.match(name := pathlib.Path(path).name)
        )
        rc = 72 if "run interrupted" in text else (1 if findings else 0)
        r = result_from_log(t, rc, 0, findings)
        if (m := re.search(r"Done \d+ runs in (\d+) second", text)):
            r["seconds"] = float(m.group(1))
        elif r["executions"] and r["exec_per_s"]:
            r["seconds"] = round(r["executions"] / r["exec_per_s"], 1)
        results.append(r)
    return results


def campaign_files():
    return sorted((ROOT / "benches" / "results").glob("*-fuzz*.json"))


def totals():
    """Per target: executions under ASan and without, summed over every committed campaign,
    the findings, and the latest ASan replay of its corpus."""
    rows = {t: {"asan": 0, "none": 0, "no_trace_compares": 0, "findings": [], "dismissed": 0,
                "replay": None}
            for t in TARGETS}
    # In the order they ran ("campaign10" sorts before "campaign9" by name), so the latest
    # replay of a corpus is the one reported.
    reports = sorted((json.loads(p.read_text()) for p in campaign_files()),
                     key=lambda r: r.get("date", ""))
    for report in reports:
        kind = "asan" if report.get("sanitizers", "").startswith("address") else "none"
        for r in report.get("results", []):
            if r["target"] in rows:
                row = rows[r["target"]]
                row[kind] += r["executions"] or 0
                if not report.get("trace_compares", True):
                    row["no_trace_compares"] += r["executions"] or 0
                row["findings"] += r["findings"]
                row["dismissed"] += len(r.get("dismissed", []))
                if r.get("asan_replay"):
                    row["replay"] = r["asan_replay"]
    return rows


def print_totals():
    rows = totals()
    print(f"Executions over {len(campaign_files())} campaigns (benches/results/*-fuzz*.json):")
    print("| target | under ASan + LSan | without sanitizer | of those, without comparison tracing | total | corpus replayed under ASan + LSan | findings (each fixed, input in regressions/) |")
    print("|---|---:|---:|---:|---:|---|---|")
    for t in TARGETS:
        r = rows[t]
        replay = r["replay"]
        replay = (f"{replay['inputs']:,} inputs, "
                  f"{', '.join(replay['findings']) or replay_status(replay['exit_code'])}"
                  if replay else "not yet")
        dismissed = f" ({r['dismissed']} dismissed: false timeouts)" if r["dismissed"] else ""
        print(f"| {t} | {r['asan']:,} | {r['none']:,} | {r['no_trace_compares']:,} | "
              f"{r['asan'] + r['none']:,} | {replay} | "
              f"{', '.join(r['findings']) or 'none'}{dismissed} |")


def replay_asan(target, env):
    """Every corpus input of `target` once under AddressSanitizer and LeakSanitizer."""
    corpus = FUZZ / "corpus" / target
    artifacts = FUZZ / "artifacts" / target
    before = {p.name for p in artifacts.iterdir()}
    log = FUZZ / "artifacts" / f"{target}.replay.log"
    cmd = [str(binary(target, "address")), str(corpus), "-runs=0", "-rss_limit_mb=2048",
           "-malloc_limit_mb=2048", "-timeout=10", "-max_len=65536",
           f"-artifact_prefix={artifacts}/"]
    start = time.time()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    findings = sorted(
        p.name for p in artifacts.iterdir() if p.name not in before and FINDING.match(p.name)
    )
    return {"inputs": sum(1 for _ in corpus.iterdir()), "exit_code": rc,
            "seconds": round(time.time() - start, 1), "findings": findings}


def replay_status(rc):
    """What a replay's exit code says when it found nothing."""
    if rc == 0:
        return "clean"
    # libFuzzer's exit code after SIGINT (-interrupted_exitcode).
    return "interrupted (SIGINT), not complete" if rc == 72 else f"exit {rc}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10_000_000)
    p.add_argument("--until", type=int, default=0,
                   help="runs per target: what it still needs to reach this total")
    p.add_argument("--replay-asan", action="store_true",
                   help="afterwards, every corpus input once under ASan + LSan")
    p.add_argument("--totals", action="store_true", help="print executions so far and exit")
    p.add_argument("--from-logs", action="store_true",
                   help="no fuzzing: the report of the last runs of --targets from their logs")
    p.add_argument("--max-time", type=int, default=0, help="seconds per target (0: no cap)")
    p.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--out", default=None)
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--sanitizer", choices=["address", "none"], default="address")
    p.add_argument("--no-trace-compares", action="store_true",
                   help="build without libFuzzer's comparison tracing (about 3x the executions "
                        "on text targets; coverage of edges only, so run it on a corpus that "
                        "comparison-guided campaigns grew)")
    args = p.parse_args()
    if args.totals:
        print_totals()
        return
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    # A Rust panic must abort so that libFuzzer sees it; backtraces name the place.
    env.setdefault("RUST_BACKTRACE", "1")
    env["ASAN_OPTIONS"] = "detect_leaks=1:allocator_may_return_null=0"
    # One thread per fuzzer: the inputs are tiny, so a pool's wake-ups cost more than they
    # save, and with --jobs 2 two pools would fight over two cores.
    env["RAYON_NUM_THREADS"] = "1"
    if args.from_logs:
        args.no_build = True
    if not args.no_build:
        build(env, args.sanitizer, not args.no_trace_compares)
        if args.replay_asan and args.sanitizer != "address":
            build(env, "address")
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        sys.exit(f"unknown targets: {unknown}")
    budget = {t: args.runs for t in targets}
    if args.until and not args.from_logs:
        rows = totals()
        done = {t: rows[t]["asan"] + rows[t]["none"] for t in targets}
        budget = {t: args.until - done[t] for t in targets if done[t] < args.until}
        targets = list(budget)
    started = datetime.datetime.now(datetime.timezone.utc)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        if args.from_logs:
            results = results_from_logs(targets)
        else:
            results = list(pool.map(lambda t: run_target(t, budget[t], args, env), targets))
        if args.replay_asan:
            replays = pool.map(lambda t: replay_asan(t, env), targets)
            for r, replay in zip(results, replays):
                r["asan_replay"] = replay
    report = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "runs_budget": args.until or args.runs,
        "max_time_s": args.max_time,
        "jobs": args.jobs,
        "sanitizers": (
            "address + leak (libFuzzer -detect_leaks), overflow and debug assertions"
            if args.sanitizer == "address"
            else "none (overflow checks and debug assertions only)"
        ),
        "limits": "rss 2048 MB, malloc 2048 MB, timeout 10 s per input, max_len 65536",
        "trace_compares": not args.no_trace_compares,
        "results": results,
    }
    out = pathlib.Path(args.out) if args.out else ROOT / "benches" / "results" / (
        started.strftime("%Y-%m-%d") + "-fuzz"
    )
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Fuzzing, {report['date']}",
        "",
        f"`python3 scripts/fuzz.py {f'--until {args.until}' if args.until else f'--runs {args.runs}'} --max-time {args.max_time} --jobs {args.jobs}"
        f" --sanitizer {args.sanitizer}{' --replay-asan' if args.replay_asan else ''}"
        f"{' --no-trace-compares' if args.no_trace_compares else ''}"
        f"{' --from-logs' if args.from_logs else ''}`"
        f" on {report['cpu']} ({report['cores']} cores, {args.jobs} targets at once).",
        f"Sanitizers: {report['sanitizers']}. Limits: {report['limits']}."
        + ("" if report["trace_compares"] else
           " Built without comparison tracing (edge coverage only)."),
        "",
        "| target | executions | exec/s | corpus | new units | peak RSS MB | time s | findings |"
        + (" ASan replay of the corpus |" if args.replay_asan else ""),
        "|---|---:|---:|---:|---:|---:|---:|---|" + ("---|" if args.replay_asan else ""),
    ]
    for r in results:
        replay = r.get("asan_replay")
        lines.append(
            f"| {r['target']} | {r['executions'] or 0:,} | {r['exec_per_s'] or 0:,} | "
            f"{r['corpus_files']} | {r['new_units'] or 0} | {r['peak_rss_mb'] or 0} | "
            f"{r['seconds']} | {', '.join(r['findings']) or 'none'}"
            f"{' (stopped early with SIGINT)' if r['exit_code'] == 72 else ''} |"
            + (f" {replay['inputs']} inputs, {replay['seconds']} s, "
               f"{', '.join(replay['findings']) or replay_status(replay['exit_code'])} |"
               if replay else "")
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print()
    print_totals()
    replays = [r["asan_replay"] for r in results if "asan_replay" in r]
    # 72: a run stopped early with SIGINT (--from-logs), which is not a failure.
    if any(r["findings"] or r["exit_code"] not in (0, 72) for r in results + replays):
        sys.exit(1)


if __name__ == "__main__":
    main()

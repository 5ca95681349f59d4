#!/usr/bin/env python3
"""Golden prompts for the tests: the (context, continuation) pairs lm-evaluation-harness
itself builds for the committed data excerpts (tests/data/eval), 0-shot and few-shot with
its default few-shot seed 1234, written to tests/data/eval/harness-prompts.json.

    python3 benches/lm_eval_prompts.py   (needs the hf-venv of benches/compare_lm_eval.py)

`crates/eval/tests/harness.rs` builds the same prompts with ferrollama and compares them
character for character.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
VENV = pathlib.Path(os.environ.get("FERROLLAMA_BENCH", pathlib.Path.home() / ".cache/ferrollama")) / "hf-venv"
CASES = [("arc_easy", 0), ("arc_easy", 5), ("hellaswag", 0), ("hellaswag", 3), ("mmlu_anatomy", 0), ("mmlu_anatomy", 5)]

INNER = r"""
import json, sys
from lm_eval.tasks import TaskManager, get_task_dict
tasks_dir, cases = sys.argv[1], json.loads(sys.argv[2])
tm = TaskManager(include_path=tasks_dir)
out = {}
for name, shots in cases:
    task = get_task_dict(["fl_" + name], tm)["fl_" + name]
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests()
    docs = {}
    for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        docs.setdefault(inst.doc_id, []).append(list(inst.arguments[:2]))
    out[f"{name}/{shots}"] = [docs[k] for k in sorted(docs)]
print(json.dumps(out, ensure_ascii=False, indent=None))
"""


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(REPO / "target/release/ferrollama"), "eval", "--eval-data", str(REPO / "tests/data/eval"),
                        "--task", ",".join(sorted({c[0] for c in CASES})), "--export-tasks", tmp],
                       check=True, stdout=subprocess.DEVNULL)
        res = subprocess.run([str(VENV / "bin/python"), "-c", INNER, tmp, json.dumps(CASES)],
                             check=True, capture_output=True, text=True)
    (REPO / "tests/data/eval/harness-prompts.json").write_text(res.stdout)
    print("wrote tests/data/eval/harness-prompts.json", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Prompt sets at scale: peak memory and speed of sampling N prompts (guard included) and of `prompts check`.

Each size runs in a fresh subprocess (peak RSS is per process) through the CLI's path: `iter_prompts` streamed
into `write_prompt_rows`, every prompt through the protected-IP guard. The reference is the same process at
N = 1,000: bounded memory means the peak RSS ratio stays near 1 as N grows 10x and 25x.
Run: ``python benchmarks/bench_prompts.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import yaml
from mvtune.prompts import find_protected, iter_prompts, parse_concepts, write_prompt_rows

total, out = int(sys.argv[1]), Path(sys.argv[2])
data = yaml.safe_load(Path(sys.argv[3]).read_text())
# more style phrases than the example file, so every concept has room for thousands of distinct prompts
data["styles"] = data["styles"] + [f"{finish} {material} toy" for finish in ("glossy", "matte", "satin", "weathered")
                                   for material in ("vinyl", "resin", "wooden", "ceramic", "plush")]
concepts = parse_concepts(data, sys.argv[3])
per_concept = -(-total // len(concepts.concepts))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
written = write_prompt_rows(out, iter_prompts(concepts, per_concept))
sample_s = time.perf_counter() - start
start = time.perf_counter()
with open(out, encoding="utf-8") as f:  # streamed, as the guard sees prompts one by one
    flagged = sum(1 for line in f if find_protected(json.loads(line)["prompt"]))
check_s = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"prompts": written, "sample_s": sample_s, "check_s": check_s, "flagged": flagged,
                  "rss_after_imports_mib": base / 1024, "peak_rss_mib": peak / 1024}))
"""


def measure(total: int, concepts: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run([sys.executable, "-c", _CHILD, str(total), str(Path(tmp) / "p.jsonl"), str(concepts)],
                                capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,25000")
    parser.add_argument("--concepts", type=Path, default=REPO / "examples" / "concepts" / "ducks.yaml")
    args = parser.parse_args()
    rows = [measure(int(n), args.concepts) for n in args.sizes.split(",")]
    reference = rows[0]
    print("| prompts | sample s | prompts/s | check s | flagged | RSS after imports MiB | peak RSS MiB "
          "| peak ratio vs first |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['prompts']} | {r['sample_s']:.2f} | {r['prompts'] / r['sample_s']:.0f} | {r['check_s']:.2f} | "
              f"{r['flagged']} | {r['rss_after_imports_mib']:.1f} | {r['peak_rss_mib']:.1f} | "
              f"{r['peak_rss_mib'] / reference['peak_rss_mib']:.2f} |")


if __name__ == "__main__":
    main()

"""Benchmark `gptkit prepare` (gpt2, workers=0) against a single-process tiktoken loop.

    python scripts/bench_prepare.py                  # ~200 MB and ~400 MB corpora: a quiet machine
    python scripts/bench_prepare.py --size-mb 20     # quick check that it works

Writes a deterministic text corpus to a temp dir, runs every variant in its own subprocess, polls
/proc for the peak memory of its whole process tree, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# nanoGPT's way: encode_ordinary each document, append eot, one uint16 array at the end
BASELINE = """
import glob, json, sys, time
import numpy as np
from gptkit.data.tokenizer import get_tokenizer
enc = get_tokenizer("gpt2").enc
start = time.perf_counter()
parts = []
for path in sorted(glob.glob(sys.argv[1])):
    with open(path, encoding="utf-8") as f:
        ids = enc.encode_ordinary(f.read())
    ids.append(enc.eot_token)
    parts.append(np.array(ids, dtype=np.uint16))
tokens = np.concatenate(parts)
tokens.tofile(sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - start, "tokens": int(tokens.size)}))
"""


def make_corpus(folder: Path, size_mb: float, seed: int) -> int:
    """~size_mb of .txt documents (1-64 KB): 70% English prose, 30% Python code, some unicode.

    Prose is shuffled paragraphs of the stdlib's own documentation (pydoc_data/topics.py), so
    word statistics, and hence tokenizer speed, are those of real English text.
    """
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    paragraphs = sorted({p.strip() for t in topics.values() for p in t.split("\n\n") if p.strip()})
    extras = ["東京のデータ", "Straße", "naïve café", "🙂👍", "Ελληνικά", "—", "«quotes»"]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:300]]
    folder.mkdir(parents=True, exist_ok=True)
    total, i = 0, 0
    while total < size_mb * 1e6:
        size = int(2 ** rng.uniform(10, 16))
        if rng.random() < 0.3:
            src = code[rng.randrange(len(code))]
            at = rng.randrange(max(1, len(src) - size))
            text = src[at : at + size]
        else:
            parts, n = [], 0
            while n < size:
                parts.append(rng.choice(paragraphs))
                if rng.random() < 0.1:
                    parts.append(rng.choice(extras))
                n += len(parts[-1])
            text = "\n\n".join(parts)
        (folder / f"{i:06d}.txt").write_text(text, encoding="utf-8")
        total += len(text.encode("utf-8"))
        i += 1
    return total


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


def _pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def run_measured(cmd: list[str], env: dict) -> dict:
    """Run cmd; wall seconds, stdout, peak PSS of its process tree, max RSS of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    peak, done = [0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], sum(_pss_kib(p) for p in _tree(proc.pid)))
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)  # usage covers the child and its waited children
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    return {
        "wall": wall,
        "out": out,
        "pss_mib": peak[0] / 1024,
        "maxrss_mib": usage.ru_maxrss / 1024,
    }


def bench_gptkit(source: str, out_dir: Path, env: dict) -> dict:
    cfg = out_dir.with_suffix(".yaml")
    cfg.write_text(
        f"prepare:\n  source: '{source}'\n  tokenizer: gpt2\n  out_dir: '{out_dir}'\n"
        "  workers: 0\n  val_fraction: 0.01\n"
    )
    res = run_measured([sys.executable, "-m", "gptkit", "prepare", "-c", str(cfg)], env)
    meta = json.loads((out_dir / "meta.json").read_text())
    res["tokens"] = sum(s["tokens"] for s in meta["splits"].values())
    res["seconds"] = float(re.search(r"in ([\d.]+) s", res["out"]).group(1))
    return res


def bench_baseline(pattern: str, out_file: Path, env: dict) -> dict:
    res = run_measured([sys.executable, "-c", BASELINE, pattern, str(out_file)], env)
    res.update(json.loads(res["out"].strip().splitlines()[-1]))
    return res


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200, help="first corpus size (MB)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    half = args.size_mb
    mb = [make_corpus(tmp / "corpus" / "a", half, 1), make_corpus(tmp / "corpus" / "b", half, 2)]
    rows = []
    base = bench_baseline(str(tmp / "corpus" / "a" / "*.txt"), tmp / "baseline.bin", env)
    rows.append(("baseline: tiktoken encode_ordinary loop, 1 process", mb[0], base))
    for name, source, size in (
        ("gptkit prepare (gpt2, workers=0)", tmp / "corpus" / "a", mb[0]),
        ("gptkit prepare (gpt2, workers=0), 2x corpus", tmp / "corpus", mb[0] + mb[1]),
    ):
        out = tmp / f"out_{len(rows)}"
        rows.append((name, size, bench_gptkit(str(source), out, env)))
    print_table(rows, base, args)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def print_table(rows, base, args):
    cores = len(os.sched_getaffinity(0))
    print(f"\nmachine: {cpu_model()}, {cores} cores usable ({os.cpu_count()} online), "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"command: python scripts/bench_prepare.py --size-mb {args.size_mb:g}\n")
    print("| run | text MB | tokens | wall s | MB/s (work) | vs baseline | peak PSS tree MiB "
          "| max RSS 1 proc MiB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base_rate = rows[0][1] / 1e6 / base["seconds"]
    for name, size, r in rows:
        rate = size / 1e6 / r["seconds"]
        cells = [name, f"{size / 1e6:.0f}", f"{r['tokens']:,}", f"{r['wall']:.1f}", f"{rate:.1f}"]
        cells += [f"{rate / base_rate:.2f}x", f"{r['pss_mib']:.0f}", f"{r['maxrss_mib']:.0f}"]
        print(f"| {' | '.join(cells)} |")
    print("\nMB/s (work) excludes interpreter start-up and imports; wall s includes them.")


if __name__ == "__main__":
    main()

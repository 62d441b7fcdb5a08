#!/usr/bin/env python
"""Re-run the `$ apex-opt ...` examples of README.md's console blocks and report the output lines
the README shows that the command no longer prints (numbers drift when the cost model changes).

A README example is trimmed, so the check is one-way: every line it shows must appear in the real
output (stdout + stderr, trailing spaces ignored); lines the README elides (``...``, ``…``), the
first line's wall time, ``exit N`` lines and comments are skipped. Commands whose inputs exist only
in the reader's directory (``slo.yaml``, ``my-cluster.yaml``, a model folder) fail with a missing-
file error and are listed as skipped; so are ``--exhaustive`` (minutes), ``profile`` (a GPU) and
commands the README abbreviates (``...``). A reader's note after a table row, ``(was ...)``, is not
part of the output.

Usage: python scripts/check_readme_examples.py [--timeout 60] [--readme README.md]
Prints one line per stale example, then ONE JSON line; exit 1 when an example is stale.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: commands not run: minutes long, a GPU, a file written, or a placeholder the README abbreviates
SKIP = ("--exhaustive", "apex-opt profile", "--plot", "...", "[", "<")
#: lines a README example may show that legitimately differ run to run or were elided
_VOLATILE = (re.compile(r"\d+\.\d+ s\)$"), re.compile(r"wall"))
_MISSING = re.compile(r"does not exist|No such file|unknown model name|unknown cluster name|"
                      r"not found")
#: a reader's note after a table row (``│ attention │ 2.557 │   (was 1.227 ms; ...)``)
_NOTE = re.compile(r"(│)\s{2,}\(.*\)$")


def examples(readme: str) -> list[tuple[int, str, list[str]]]:
    """(line number, command, the output lines shown under it) of every console example."""
    out, block, inside = [], [], False
    for n, line in enumerate(readme.splitlines(), 1):
        if line.startswith("```console"):
            inside, block = True, []
        elif line.startswith("```") and inside:
            inside = False
            starts = [i for i, (_, ln) in enumerate(block) if ln.startswith("$ apex-opt ")]
            for j, i in enumerate(starts):
                num, cmd = block[i][0], block[i][1][2:].split("  #")[0].rstrip()
                k = i
                while cmd.endswith("\\") and k + 1 < len(block):
                    k += 1
                    cmd = cmd[:-1].rstrip() + " " + block[k][1].strip().split("  #")[0]
                end = starts[j + 1] if j + 1 < len(starts) else len(block)
                out.append((num, cmd, [ln for _, ln in block[k + 1:end]]))
        elif inside:
            block.append((n, line))
    return out


def shown(line: str) -> bool:
    s = line.rstrip()
    return bool(s) and "..." not in s and "…" not in s and not s.startswith(("exit ", "$ ", "#")) \
        and not any(p.search(s) for p in _VOLATILE)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per command")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    args = ap.parse_args()
    exe = Path(sys.executable).parent / "apex-opt"
    t0 = time.time()
    stale, skipped, ran = [], [], 0
    for num, cmd, lines in examples(Path(args.readme).read_text()):
        if any(s in cmd for s in SKIP):
            skipped.append(num)
            continue
        shell = cmd.replace('; echo "exit $?"', "").replace("apex-opt ", f"{exe} ", 1)
        try:
            r = subprocess.run(shell, shell=True, capture_output=True, text=True, cwd=ROOT,
                               timeout=args.timeout)
        except subprocess.TimeoutExpired:
            skipped.append(num)
            continue
        real = [x.rstrip() for x in (r.stdout + r.stderr).splitlines()]
        want = [_NOTE.sub(r"\1", ln.rstrip()) for ln in lines if shown(ln)]
        missing = [ln for ln in want if not any(ln in x for x in real)]
        if r.returncode == 2 and _MISSING.search(r.stderr) and missing:
            skipped.append(num)  # its input files live in the reader's directory
            continue
        ran += 1
        if missing:
            stale.append({"line": num, "command": cmd, "stale_lines": len(missing),
                          "first": missing[0][:160]})
            print(f"README.md:{num}: {cmd}\n    {len(missing)} line(s) no longer printed, "
                  f"first: {missing[0][:160]}")
    print(json.dumps({"examples_run": ran, "stale": len(stale), "skipped_lines": skipped,
                      "stale_examples": stale, "wall_s": round(time.time() - t0, 1)}))
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

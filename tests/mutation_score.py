"""Mutation score of the money-critical code (`make mutation`; README "Mutation score").

Runs mutmut (configured in pyproject.toml [tool.mutmut]: which files are mutated and which fast
SQLite tests run) on the functions below only, then prints killed / total per file and exits
non-zero when the total is under 90%. A timeout counts as killed (the mutant looped or ran
away and the tests noticed); a mutant no selected test reaches counts as survived.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

MUTANTS = [
    "metering.money.*",
    "metering.settlement.x_allocate__*",
    "metering.settlement.x_settlement_amounts__*",
    "metering.usage.x_billable_tokens__*",
    "pricing.engine.*",
]
THRESHOLD = 0.90
KILLED = {1, 3, 36, 24, -24, 152, 255}  # mutmut's exit codes for killed and timeout


def main() -> int:
    if "--report-only" not in sys.argv:
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "2", *MUTANTS], check=False)
    per_file: dict[str, Counter] = {}
    survivors = []
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        source = str(meta.relative_to("mutants"))[: -len(".meta")]
        for name, code in codes.items():
            if not any(fnmatch.fnmatch(name, pattern) for pattern in MUTANTS):
                continue
            tally = per_file.setdefault(source, Counter())
            tally["total"] += 1
            if code in KILLED:
                tally["killed"] += 1
            elif code is None:
                tally["not checked"] += 1
            else:
                survivors.append((name, code))
    killed = sum(t["killed"] for t in per_file.values())
    total = sum(t["total"] for t in per_file.values())
    for source, t in per_file.items():
        unchecked = f"  ({t['not checked']} not run yet)" if t["not checked"] else ""
        print(f"{source:28} {t['killed']:4} / {t['total']:4} killed  {t['killed'] / t['total']:.1%}{unchecked}")
    print(f"{'total':28} {killed:4} / {total:4} killed  {killed / max(total, 1):.1%}")
    for name, code in survivors:
        print(f"  survived (exit {code}): {name}   (mutmut show '{name}')")
    return 0 if total and killed / total >= THRESHOLD else 1


if __name__ == "__main__":
    sys.exit(main())

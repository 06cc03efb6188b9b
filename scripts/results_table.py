"""Print the markdown results table from the committed ``docs/results/*/results.json`` files.

    python scripts/results_table.py [docs/results]

Runs are grouped by (dataset, arch, config name without the seed suffix); each row gives the mean and
standard deviation of the test accuracy over the seeds found, epochs and devices (every distinct value:
a group may mix machines) and the range of wall times.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(root: str = "docs/results") -> int:
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    found = sorted(Path(root).glob("*/results.json"))
    if not found:
        print(f"no run folders (*/results.json) in {root}", file=sys.stderr)
        return 1
    for path in found:
        r = json.loads(path.read_text())
        name = path.parent.name.rsplit("-seed", 1)[0]
        cfg = r["config"]
        groups[(cfg["data"]["dataset"], cfg["model"]["arch"], name)].append({**r, "_dir": path.parent.name})
    print("| dataset | network | run | seeds | test accuracy (%) | epochs | devices | wall time per run |")
    print("|---|---|---|---|---|---|---|---|")
    for (dataset, arch, name), runs in sorted(groups.items()):
        acc = [100 * r["test_accuracy"] for r in runs]
        mean = statistics.mean(acc)
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        seeds = ",".join(str(r["config"]["train"]["seed"]) for r in runs)
        walls = [r["wall_time_s"] / 60 for r in runs]
        wall = f"{min(walls):.1f} min" if max(walls) - min(walls) < 0.05 else f"{min(walls):.1f}–{max(walls):.1f} min"
        # three decimals: a mean over seeds is finer than one test image, and rounding to two can lift
        # a mean such as 98.497 to a target of 98.50 that it does not reach
        acc_s = f"{mean:.3f} ± {std:.2f}" if len(acc) > 1 else f"{mean:.2f}"
        # every distinct value, in seed order: a group may mix machines (seeds added later) or epochs
        epochs = ", ".join(dict.fromkeys(str(r["epochs"]) for r in runs))
        # a resumed run lists the device of each session (e.g. begun on a GPU, finished on a CPU)
        devices = "; ".join(
            dict.fromkeys(d for r in runs for d in [*(x["device"] for x in r.get("sessions", [])), r["device"]])
        )
        print(f"| {dataset} | {arch} | {name} | {seeds} | {acc_s} | {epochs} | {devices} | {wall} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

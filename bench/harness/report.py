"""Plain-text tables, percentiles, a description of the machine, and JSON result files."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.server import binary_version

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
PACKAGES = ("schedulerd", "rq", "rq-scheduler", "redis", "hiredis", "matplotlib")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Format rows as a Markdown table with right-aligned numbers."""
    cells = [[str(header) for header in headers]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = [value.rjust(width) if _numeric(value) else value.ljust(width) for value, width in zip(row, widths)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace(".", "").replace("-", "").replace(">", "").replace("<", "")
    stripped = stripped.replace("x", "").replace(" ", "").replace("%", "")
    return stripped.isdigit()


def ratio(numerator: float | None, denominator: float | None) -> str:
    """Format numerator/denominator as ``12.3x``, or ``1/N`` below 0.1; ``-`` when either is missing or zero."""
    if not numerator or not denominator:
        return "-"
    value = numerator / denominator
    if value < 0.1:
        # 1/N reads better than 0.00x when schedulerd's figure is far smaller.
        return f"1/{1 / value:,.0f}"
    if value >= 100:
        return f"{value:,.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    return f"{value:.2f}x"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values`` (fraction 0.99 for p99); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def machine(redis_binary: Path) -> dict[str, str]:
    """Describe this machine and the software versions a result depends on."""
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    import schedulerd

    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": cpu_model,
        "memory": memory,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "redis_server": f"{binary_version(redis_binary)} at {redis_binary}",
        "schedulerd_source": str(Path(schedulerd.__file__).parent),
        # Other work on the machine skews every figure; the 1-minute load at the start shows it.
        "load_average_1min": Path("/proc/loadavg").read_text().split()[0],
        **{f"package {name}": version for name, version in versions.items()},
    }


def print_machine(info: dict[str, str]) -> None:
    print("machine: " + "; ".join(f"{key} {value}" for key, value in info.items()))


def write_json(name: str, payload: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``payload`` to bench/results/<name>.json (or ``path``) and return the path."""
    target = path or RESULTS_DIR / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return target

"""Benchmark results as JSON with the machine they were measured on, and their Markdown tables.

A benchmark calls ``write(path, ...)``; ``render_docs.py`` turns every file in
docs/measurements/ into the tables of the docs pages. Nothing in those tables is typed by hand.
"""

import datetime
import json
import os
import platform
import re
from importlib.metadata import version
from pathlib import Path

FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict:
    """The CPU (model, family, the vector and matrix flags that decide bf16), cores, versions."""
    info: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "vendor": info.get("vendor_id", ""),
        "family": info.get("cpu family", ""),
        "model": info.get("model", ""),
        "flags": [flag for flag in FLAGS_OF_INTEREST if flag in flags],
        "cores": os.cpu_count(),
        "torch": version("torch"),
        "lightning": version("lightning"),
        "python": platform.python_version(),
    }


def write(
    folder: str | Path, benchmark: str, command: str, columns: list[str], rows: list[list], note: str = ""
) -> Path:
    """Save a benchmark's table with the machine and the date, as ``folder/<benchmark>-<machine>.json``
    (a later run on the same kind of machine replaces it)."""
    record = {
        "benchmark": benchmark,
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "columns": columns,
        "rows": rows,
        "note": note,
    }
    m = record["machine"]
    name = f"{m['cpu']} family {m['family']} model {m['model']}"
    kind = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    path = Path(folder) / f"{benchmark}-{kind}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def markdown(record: dict) -> str:
    """The record as a caption line and a Markdown table (numbers right-aligned)."""
    m = record["machine"]
    flags = ", ".join(m["flags"]) or "no AVX2"
    caption = (
        f"Measured {record['date']} on {m['cpu']} (family {m['family']} model {m['model']}; {flags}), "
        f"{m['cores']} cores, torch {m['torch']}, lightning {m['lightning']}: `{record['command']}`"
    )
    numeric = [
        all(isinstance(row[i], int | float) for row in record["rows"]) for i in range(len(record["columns"]))
    ]
    lines = [
        "| " + " | ".join(record["columns"]) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
        *("| " + " | ".join(cell(value) for value in row) + " |" for row in record["rows"]),
    ]
    note = f"\n\n{record['note']}" if record.get("note") else ""
    return caption + "\n\n" + "\n".join(lines) + note


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"
    return str(value)

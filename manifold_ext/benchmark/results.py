"""Benchmark results files: one JSON + markdown pair per (machine, CPU ISA path, threads) or GPU.

The JSON is what the docs generate their tables from::

    {"schema": 2, "machine": "cpu-amd-epyc-avx512-2threads", "device": "cpu",
     "cpu": "AMD EPYC", "gpu": null, "isa": "avx512", "threads": 2,
     "torch": "2.13.0+cpu", "date": "2026-11-23", "load_average": {...},
     "environment": {...machine_record()...}, "results": [row, ...]}

and each row holds the case, the three medians in ms, the ratios, the bandwidth
bound, whether torch.compile already runs at that bound, whether the case meets
its target, and (``--scaling``) its thread scaling. Running a subset of families
into an existing file replaces those families' rows and keeps the others.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from manifold_ext._atomic import atomic_write_text
from manifold_ext._machine import machine_record
from manifold_ext.benchmark.harness import (
    TARGET_SCALING_PER_THREAD,
    TARGET_VS_BOUND,
    TARGET_VS_COMPILE,
    format_ms,
    format_ratio,
)

SCHEMA_VERSION = 2


def _slug(text: str) -> str:
    slug = "".join(ch.lower() if ch.isalnum() else "-" for ch in text)
    while "--" in slug:
        slug = slug.replace("--", "-")
    return slug.strip("-")


def machine_label(device: torch.device, record: dict | None = None) -> str:
    """File-name-safe label: ``cpu-<model>-<isa>-<threads>threads`` or ``cuda-<gpu name>``."""
    record = record or machine_record()
    if device.type == "cuda":
        return _slug("cuda-" + torch.cuda.get_device_name(device))
    return _slug(f"cpu-{record['cpu']}-{record['cpu_isa']}-{record['threads']}threads")


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none): how shared the machine was."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def header(device: torch.device, load_at_start: list[float] | None, quick: bool) -> dict:
    record = machine_record()
    return {
        "schema": SCHEMA_VERSION,
        "machine": machine_label(device, record),
        "device": device.type,
        "cpu": record["cpu"],
        "cores": record["cores"],
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "isa": record["cpu_isa"] if device.type == "cpu" else None,
        "threads": record["threads"],
        "torch": record["torch"],
        "date": record["date"],
        "quick": quick,
        "load_average": {"start": load_at_start, "end": load_average()},
        "environment": {**record, "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY")},
        "targets": {
            "vs_compile": TARGET_VS_COMPILE,
            "vs_bound_where_compile_at_bound": TARGET_VS_BOUND,
            "thread_scaling_per_thread": TARGET_SCALING_PER_THREAD,
        },
    }


def _fmt_factor(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _target_cell(row: dict) -> str:
    target = row.get("target")
    if target is None:
        return "n/a"
    return "met" if target == "met" else "**not met**"


def _note_cell(row: dict) -> str:
    notes = ["compile at bound"] if row.get("compile_at_bound") else []
    if row.get("target_vs_eager"):
        notes.append(f"target also ≥ {row['target_vs_eager']:g}× eager")
    if row.get("note"):
        notes.append(row["note"])
    return "; ".join(notes).replace("|", "/")


def _scaling_cell(row: dict) -> str:
    if row.get("thread_scaling") is None:
        return "–"
    copy = row.get("copy_thread_scaling")
    return f"{row['thread_scaling']:.2f}×" + (f" (copy {copy:.2f}×)" if copy else "")


def markdown_table(data: dict) -> str:
    load = data.get("load_average") or {}
    where = data["gpu"] if data["device"] == "cuda" else f"{data['cpu']} ({data['cores']} cores)"
    isa = f"CPU kernels: **{data['isa']}** path, " if data.get("isa") else ""
    lines = [
        f"# Benchmarks: {data['machine']}",
        "",
        f"{where}; {isa}{data['threads']} threads; torch {data['torch']}; {data['date']}"
        f"{'; --quick (smoke test)' if data.get('quick') else ''}.",
        f"Load average (1/5/15 min) at start {load.get('start')}, at end {load.get('end')}.",
        "",
        "Times are medians of interleaved rounds, in ms per call. *Bound* is the least time the fused kernel's "
        "memory traffic takes at the bandwidth of a `copy_` of the same size (a device-to-device copy on a GPU); "
        "*ours / bound* of 1.0 means at the bound. *Target*: ours ≥ "
        f"{TARGET_VS_COMPILE}× torch.compile, or, where compile is already within {TARGET_VS_COMPILE}× of the bound "
        f"(*compile at bound*), ours within {TARGET_VS_BOUND}× of the bound. *N→1 thread* is how many times "
        "faster ours runs on all threads than on one (large cases, `--scaling`); in brackets, the same for the "
        "bound's `copy_`: a memory-bound case cannot scale further than the copy does.",
        "",
        "| family | case | shape | dtype | eager ms | compile ms | ours ms | vs eager | vs compile | bound ms "
        "| ours / bound | N→1 thread | target | note |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in data["results"]:
        lines.append(
            f"| {r['family']} | {r['case']} | {r['shape']} | {r['dtype']} | {format_ms(r['ms'].get('eager'))} | "
            f"{format_ms(r['ms'].get('compile'))} | {format_ms(r['ms'].get('ours'))} | "
            f"{format_ratio(r.get('speedup_vs_eager'))} | {format_ratio(r.get('speedup_vs_compile'))} | "
            f"{format_ms(r.get('bound_ms'))} | {_fmt_factor(r.get('ours_vs_bound'))} | {_scaling_cell(r)} | "
            f"{_target_cell(r)} | {_note_cell(r)} |"
        )
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], head: dict, out_dir: Path, label: str | None = None) -> tuple[Path, Path]:
    """Merge ``rows`` into ``<out_dir>/<label>.json`` (replacing the families just run) and
    rewrite the markdown table beside it. Writes are atomic."""
    label = label or head["machine"]
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{label}.json", out_dir / f"{label}.md"
    previous: list[dict] = []
    if json_path.exists():
        old = json.loads(json_path.read_text())
        if old.get("schema") == SCHEMA_VERSION:
            previous = old.get("results", [])
    families = {r["family"] for r in rows}
    stamp = time.strftime("%Y-%m-%d")
    rows = [{**r, "date": r.get("date", stamp)} for r in rows]
    merged = [r for r in previous if r["family"] not in families] + rows
    data = {**head, "machine": label, "results": merged}
    atomic_write_text(json_path, json.dumps(data, indent=2) + "\n")
    atomic_write_text(md_path, markdown_table(data))
    return json_path, md_path

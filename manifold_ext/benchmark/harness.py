"""Benchmark harness shared by every op family.

Each case times, in one run and interleaved round by round, three
implementations of the same math:

* ``eager``: the plain-PyTorch reference (``manifold_ext.reference``),
* ``compile``: that reference under ``torch.compile`` (default inductor),
* ``ours``: the compiled ``torch.ops.manifold_ext`` operator.

Timings on shared machines are noisy, so results are reported as medians and,
above all, as ratios. Where a case states the bytes its fused kernel must move
at least, the harness also reports the memory-bandwidth bound: those bytes
divided by the bandwidth of a plain ``copy_`` of the same working-set size on
the same device, measured in the same run.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from manifold_ext._atomic import atomic_write_text
from manifold_ext._machine import cpu_model

IMPLS = ("eager", "compile", "ours")


@dataclasses.dataclass
class BenchCase:
    """One row of the benchmark table.

    ``make`` builds the inputs and returns ``{impl_name: zero-argument callable}``
    for the implementations to time; it is called once, after the device is set.
    ``bytes_moved`` is the minimum traffic of a single fused pass (reads + writes),
    or ``None`` where no bandwidth bound applies.
    """

    family: str
    name: str
    shape: str
    dtype: str
    make: Callable[[], dict[str, Callable[[], Any]]]
    bytes_moved: int | None = None
    note: str = ""
    # Per-case caps for implementations that take seconds per call (e.g. LP baselines):
    # at most this many timing rounds, and this many warm-up calls (None: the settings').
    max_rounds: int | None = None
    warmup_calls: int | None = None


@dataclasses.dataclass
class BenchSettings:
    rounds: int = 15  # interleaved rounds; the median over rounds is reported
    min_round_seconds: float = 0.02  # each round of each impl runs at least this long
    warmup_calls: int = 3
    impls: tuple[str, ...] = IMPLS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], Any], calls: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls


def _calls_per_round(fn: Callable[[], Any], device: torch.device, min_seconds: float) -> int:
    per_call = _time_calls(fn, 1, device)
    calls = 1
    while per_call * calls < min_seconds and calls < 1_000_000:
        calls *= 2
    return calls


_COPY_BANDWIDTH_CACHE: dict[tuple[str, int], float] = {}


def copy_bandwidth(nbytes: int, device: torch.device, settings: BenchSettings) -> float:
    """Bytes/second of ``dst.copy_(src)`` moving ``nbytes`` in total (half read, half written)."""
    key = (str(device), nbytes)
    if key not in _COPY_BANDWIDTH_CACHE:
        numel = max(1, nbytes // 2 // 4)
        src = torch.randn(numel, device=device)
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)  # noqa: E731
        for _ in range(settings.warmup_calls):
            fn()
        calls = _calls_per_round(fn, device, settings.min_round_seconds)
        seconds = statistics.median(_time_calls(fn, calls, device) for _ in range(settings.rounds))
        _COPY_BANDWIDTH_CACHE[key] = 2 * numel * 4 / seconds
    return _COPY_BANDWIDTH_CACHE[key]


def run_case(case: BenchCase, device: torch.device, settings: BenchSettings) -> dict:
    impls = {name: fn for name, fn in case.make().items() if name in settings.impls}
    warmup_calls = settings.warmup_calls if case.warmup_calls is None else case.warmup_calls
    rounds = settings.rounds if case.max_rounds is None else min(settings.rounds, case.max_rounds)
    for fn in impls.values():  # warm-up; includes torch.compile's compilation
        for _ in range(warmup_calls):
            fn()
    calls = {name: _calls_per_round(fn, device, settings.min_round_seconds) for name, fn in impls.items()}
    samples: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for round_index in range(rounds):
        # Interleave, rotating the order so no impl always runs first.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time_calls(impls[name], calls[name], device))
    ms = {name: 1e3 * statistics.median(values) for name, values in samples.items()}
    row = {
        "family": case.family,
        "case": case.name,
        "shape": case.shape,
        "dtype": case.dtype,
        "device": str(device),
        "ms": ms,
        "speedup_vs_eager": ms["eager"] / ms["ours"] if {"eager", "ours"} <= ms.keys() else None,
        "speedup_vs_compile": ms["compile"] / ms["ours"] if {"compile", "ours"} <= ms.keys() else None,
        "bytes_moved": case.bytes_moved,
        "note": case.note,
    }
    if case.bytes_moved:
        bandwidth = copy_bandwidth(case.bytes_moved, device, settings)
        row["copy_bandwidth_GBps"] = bandwidth / 1e9
        row["bound_ms"] = 1e3 * case.bytes_moved / bandwidth
        if "ours" in ms:
            row["ours_vs_bound"] = ms["ours"] / row["bound_ms"]  # 1.0 = at the bound
    return row


def machine_name(device: torch.device) -> str:
    """A short, file-name-safe label for the machine the benchmarks ran on."""
    if device.type == "cuda":
        label = "cuda-" + torch.cuda.get_device_name(device)
    else:
        model = cpu_model()
        label = f"cpu-{model}-{torch.get_num_threads()}threads"
    slug = "".join(ch.lower() if ch.isalnum() else "-" for ch in label)
    while "--" in slug:
        slug = slug.replace("--", "-")
    return slug.strip("-")


def environment(device: torch.device) -> dict:
    import manifold_ext

    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "manifold_ext_build": manifold_ext.build_info(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _fmt_bound(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def markdown_table(rows: list[dict], env: dict) -> str:
    lines = [
        f"Device: `{env['device']}`{' (' + env['gpu'] + ')' if 'gpu' in env else ''}, "
        f"torch {env['torch']}, {env['threads']} threads, "
        f"CPU kernels: {env['manifold_ext_build']['cpu_isa_in_use']}, {env['date']}.",
        "",
        "Times are medians of interleaved rounds, in ms per call. *Bound* is the least time the fused "
        "kernel's memory traffic takes at the bandwidth of a `copy_` of the same size; *ours / bound* "
        "of 1.0 means at the bound.",
        "",
        "| family | case | shape | dtype | eager ms | compile ms | ours ms | vs eager | vs compile | bound ms | ours / bound |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['case']} | {r['shape']} | {r['dtype']} | {_fmt_ms(r['ms'].get('eager'))} | "
            f"{_fmt_ms(r['ms'].get('compile'))} | {_fmt_ms(r['ms'].get('ours'))} | "
            f"{_fmt_ratio(r['speedup_vs_eager'])} | {_fmt_ratio(r['speedup_vs_compile'])} | "
            f"{_fmt_ms(r.get('bound_ms'))} | {_fmt_bound(r.get('ours_vs_bound'))} |"
        )
    notes = [f"- {r['family']} / {r['case']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], env: dict, out_dir: Path, machine: str) -> tuple[Path, Path]:
    """Merge ``rows`` into ``<out_dir>/<machine>.json`` (replacing the families
    just run) and rewrite the markdown table beside it. Writes are atomic."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{machine}.json", out_dir / f"{machine}.md"
    previous: list[dict] = []
    if json_path.exists():
        previous = json.loads(json_path.read_text()).get("results", [])
    families = {r["family"] for r in rows}
    merged = [r for r in previous if r["family"] not in families] + rows
    atomic_write_text(json_path, json.dumps({"environment": env, "results": merged}, indent=2) + "\n")
    atomic_write_text(md_path, f"# Benchmarks: {machine}\n\n" + markdown_table(merged, env))
    return json_path, md_path


def run_cases(cases: list[BenchCase], device: torch.device, settings: BenchSettings) -> list[dict]:
    rows = []
    for case in tqdm(cases, desc="benchmarks", unit="case"):
        rows.append(run_case(case, device, settings))
        tqdm.write(_one_line(rows[-1]))
    return rows


def _one_line(row: dict) -> str:
    parts = [f"{row['family']}/{row['case']} {row['shape']}:"]
    parts += [f"{name} {_fmt_ms(ms)} ms" for name, ms in row["ms"].items()]
    if row["speedup_vs_eager"]:
        parts.append(f"| {_fmt_ratio(row['speedup_vs_eager'])} vs eager")
    if row["speedup_vs_compile"]:
        parts.append(f"{_fmt_ratio(row['speedup_vs_compile'])} vs compile")
    if row.get("ours_vs_bound"):
        parts.append(f"| {row['ours_vs_bound']:.2f}× the bandwidth bound")
    return " ".join(parts)

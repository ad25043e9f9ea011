"""Benchmark harness shared by every op family: timing.

Each case times, in one run and interleaved round by round, three
implementations of the same math:

* ``eager``: the plain-PyTorch reference (``manifold_ext.reference``),
* ``compile``: that reference under ``torch.compile`` (default inductor),
* ``ours``: the compiled ``torch.ops.manifold_ext`` operator.

Timings on shared machines are noisy, so results are reported as medians and,
above all, as ratios. Where a case states the bytes its fused kernel must move
at least, the harness also reports the memory-bandwidth bound: those bytes
divided by the bandwidth of a plain ``copy_`` of the same working-set size on
the same device, measured in the same run (on a GPU that copy is a
device-to-device copy, timed like everything else with CUDA events).

``results.py`` turns the rows into the committed JSON + markdown files.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from manifold_ext._machine import torch_threads

IMPLS = ("eager", "compile", "ours")

# The per-case targets of the performance work (issue 18): ours at least this much faster
# than torch.compile of the same math ...
TARGET_VS_COMPILE = 1.5
# ... or, where compile already runs near the memory-bandwidth bound (so that beating it
# 1.5-fold would mean beating a plain copy), ours within this factor of the bound.
TARGET_VS_BOUND = 1.25
# Thread scaling asked of the large cases: N threads at least this fraction of N-fold.
TARGET_SCALING_PER_THREAD = 0.85  # 2 threads >= 1.7x one thread


@dataclasses.dataclass
class BenchCase:
    """One row of the benchmark table.

    ``make`` builds the inputs and returns ``{impl_name: zero-argument callable}``
    for the implementations to time; it is called once, after the device is set.
    ``bytes_moved`` is the minimum traffic of a single fused pass (reads + writes),
    or ``None`` where no bandwidth bound applies. ``large`` marks the cases whose
    thread scaling is measured (``--scaling``). ``has_target`` is False for cases the
    1.5x-compile target does not apply to (whole models whose cost lies outside the op;
    the note says why); ``target_vs_eager`` adds a speed-up over eager the case must reach too.
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
    large: bool = False
    has_target: bool = True
    # An extra target against eager where an issue set one (issue 20: the coupling op on vector data).
    target_vs_eager: float | None = None


@dataclasses.dataclass
class BenchSettings:
    rounds: int = 15  # interleaved rounds; the median over rounds is reported
    min_round_seconds: float = 0.02  # each round of each impl runs at least this long
    warmup_calls: int = 3
    impls: tuple[str, ...] = IMPLS
    scaling_threads: int | None = None  # also time ours of large cases on this many threads (usually 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], Any], calls: int, device: torch.device) -> float:
    """Seconds per call of ``calls`` back-to-back calls: CUDA events on a GPU (the time the
    device spent, launch gaps included), the wall clock on a CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _sync(device)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    start_time = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start_time) / calls


def _calls_per_round(fn: Callable[[], Any], device: torch.device, min_seconds: float) -> int:
    per_call = _time_calls(fn, 1, device)
    calls = 1
    while per_call * calls < min_seconds and calls < 1_000_000:
        calls *= 2
    return calls


_COPY_BANDWIDTH_CACHE: dict[tuple[str, int, int], float] = {}


def copy_bandwidth(nbytes: int, device: torch.device, settings: BenchSettings) -> float:
    """Bytes/second of ``dst.copy_(src)`` moving ``nbytes`` in total (half read, half written),
    on the current number of threads (a device-to-device copy on a GPU)."""
    key = (str(device), nbytes, torch.get_num_threads())
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


def _interleaved_medians(
    impls: dict[str, Callable[[], Any]], device: torch.device, rounds: int, min_round_seconds: float
) -> dict[str, float]:
    """Median ms per call of each implementation over ``rounds`` interleaved rounds."""
    calls = {name: _calls_per_round(fn, device, min_round_seconds) for name, fn in impls.items()}
    samples: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for round_index in range(rounds):
        # Interleave, rotating the order so no impl always runs first.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time_calls(impls[name], calls[name], device))
    return {name: 1e3 * statistics.median(values) for name, values in samples.items()}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def judge_target(row: dict, has_target: bool = True, target_vs_eager: float | None = None) -> None:
    """Adds ``compile_at_bound`` and ``target`` to a row: the issue-18 target is ours >= 1.5x
    compile, or - where compile already runs within 1.5x of the bandwidth bound, so that
    1.5x faster than compile would be faster than a copy - ours within 1.25x of the bound;
    and, where the case sets one, ours >= ``target_vs_eager`` times eager."""
    ms, bound = row["ms"], row.get("bound_ms")
    compile_vs_bound = _ratio(ms.get("compile"), bound)
    row["compile_vs_bound"] = compile_vs_bound
    row["compile_at_bound"] = compile_vs_bound is not None and compile_vs_bound <= TARGET_VS_COMPILE
    if not has_target or "ours" not in ms or "compile" not in ms:
        row["target"] = None
        return
    beats_compile = row["speedup_vs_compile"] >= TARGET_VS_COMPILE
    near_bound = row["compile_at_bound"] and row["ours_vs_bound"] <= TARGET_VS_BOUND
    beats_eager = target_vs_eager is None or (row["speedup_vs_eager"] or 0) >= target_vs_eager
    row["target_vs_eager"] = target_vs_eager
    row["target"] = "met" if (beats_compile or near_bound) and beats_eager else "not met"


def _thread_scaling(fn: Callable[[], Any], device: torch.device, settings: BenchSettings, rounds: int) -> float:
    """Median ms per call of ``fn`` on ``settings.scaling_threads`` threads."""
    with torch_threads(settings.scaling_threads):
        fn()  # let the thread pool settle at its new size
        return _interleaved_medians({"ours": fn}, device, rounds, settings.min_round_seconds)["ours"]


def run_case(case: BenchCase, device: torch.device, settings: BenchSettings) -> dict:
    impls = {name: fn for name, fn in case.make().items() if name in settings.impls}
    warmup_calls = settings.warmup_calls if case.warmup_calls is None else case.warmup_calls
    rounds = settings.rounds if case.max_rounds is None else min(settings.rounds, case.max_rounds)
    for fn in impls.values():  # warm-up; includes torch.compile's compilation
        for _ in range(warmup_calls):
            fn()
    ms = _interleaved_medians(impls, device, rounds, settings.min_round_seconds)
    row = {
        "family": case.family,
        "case": case.name,
        "shape": case.shape,
        "dtype": case.dtype,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "ms": ms,
        "speedup_vs_eager": _ratio(ms.get("eager"), ms.get("ours")),
        "speedup_vs_compile": _ratio(ms.get("compile"), ms.get("ours")),
        "bytes_moved": case.bytes_moved,
        "bound_ms": None,
        "ours_vs_bound": None,
        "large": case.large,
        "note": case.note,
    }
    if case.bytes_moved:
        bandwidth = copy_bandwidth(case.bytes_moved, device, settings)
        row["copy_bandwidth_GBps"] = bandwidth / 1e9
        row["bound_ms"] = 1e3 * case.bytes_moved / bandwidth
        row["ours_vs_bound"] = _ratio(ms.get("ours"), row["bound_ms"])  # 1.0 = at the bound
    judge_target(row, case.has_target, case.target_vs_eager)
    if case.large and settings.scaling_threads and "ours" in impls and device.type == "cpu":
        row["scaling_threads"] = settings.scaling_threads
        row["ours_ms_scaling_threads"] = _thread_scaling(impls["ours"], device, settings, rounds)
        row["thread_scaling"] = row["ours_ms_scaling_threads"] / ms["ours"]
        if case.bytes_moved:
            # How far the memory system itself scales: a case at the bound cannot scale further than its copy.
            with torch_threads(settings.scaling_threads):
                few_threads_bandwidth = copy_bandwidth(case.bytes_moved, device, settings)
            row["copy_thread_scaling"] = row["copy_bandwidth_GBps"] * 1e9 / few_threads_bandwidth
    return row


def run_cases(cases: list[BenchCase], device: torch.device, settings: BenchSettings) -> list[dict]:
    rows = []
    for case in tqdm(cases, desc="benchmarks", unit="case"):
        rows.append(run_case(case, device, settings))
        tqdm.write(one_line(rows[-1]))
    return rows


def format_ms(value: float | None) -> str:
    """A time in ms for the printed and written tables: 3 decimals below 10 ms, else 1; "–" for none."""
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def format_ratio(value: float | None) -> str:
    """A speed-up for the tables, e.g. "2.41×"; "–" for none."""
    return "–" if value is None else f"{value:.2f}×"


def one_line(row: dict) -> str:
    parts = [f"{row['family']}/{row['case']} {row['shape']}:"]
    parts += [f"{name} {format_ms(ms)} ms" for name, ms in row["ms"].items()]
    if row["speedup_vs_eager"]:
        parts.append(f"| {format_ratio(row['speedup_vs_eager'])} vs eager")
    if row["speedup_vs_compile"]:
        parts.append(f"{format_ratio(row['speedup_vs_compile'])} vs compile")
    if row.get("ours_vs_bound"):
        parts.append(f"| {row['ours_vs_bound']:.2f}× the bandwidth bound")
    if row.get("thread_scaling"):
        parts.append(f"| {row['thread_scaling']:.2f}× over {row['scaling_threads']} thread(s)")
        if row.get("copy_thread_scaling"):
            parts.append(f"(copy_ {row['copy_thread_scaling']:.2f}×)")
    if row.get("target"):
        parts.append(f"| target {row['target']}")
    return " ".join(parts)

"""Fig. 5 end to end: time log_likelihood on 10,000 points x 100 rounds x T = 100 at dt = 1 (issue 18 item 3).

    python benchmarks/fig5_end_to_end.py [--points 10000] [--rounds 100] [--repeats 1]
        [--baseline-python /path/to/main/.venv/bin/python] [--out benchmarks/fig5_end_to_end.json]

Variants, measured interleaved in one run (the machine may be shared: compare the ratios):

* ``eager``: this code run as before: the eps-MLP's fast path off (``F.linear`` =
  MKL sgemm, one allocation per layer, batches of 16,384 rows) and the batches
  one after the other, each op split over torch's intra-op threads (``threads=1``);
* ``fast``: the default: chunked, oneDNN-backed MLP (manifold_ext/diffusion/_mlp.py)
  and one batch per Python thread with one intra-op thread each (``threads=None``);
* ``fast_mlp_serial`` / ``eager_threads`` (``--variants``): one change at a time;
* ``fast_2_processes``: the same on a local pool of 2 processes x 1 thread
  (``log_likelihood(checkpoint_path, ..., executor=pool)``), start-up included;
* ``before`` (with ``--baseline-python``): the likelihood code of another checkout
  (e.g. main before this change) run in that interpreter, for the end-to-end before/after.

The model is the Fig. 5 eps-MLP (H = 128, 3 hidden layers, T = 100) with random
weights (the cost does not depend on them). Same answer: ``eager``, ``fast``
and ``fast_2_processes`` use the same noise, so their [N, rounds] values are
compared bit for bit; ``before`` draws its noise differently (one generator
for the whole run), so its mean agrees within Monte Carlo error only.
GFLOP/s counts the network's multiply-adds (2 per weight per row) against a
practical peak measured here: the best of a large sgemm through MKL
(``torch.mm``) and through oneDNN.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import nn

from manifold_ext._machine import machine_record
from manifold_ext.diffusion import PointEpsNet, _mlp, linear_schedule, log_likelihood, save_checkpoint

HIDDEN, LAYERS, T = 128, 3, 100

BASELINE_SCRIPT = """
import json, sys, time, torch
from manifold_ext.diffusion import PointEpsNet, linear_schedule, log_likelihood
torch.set_num_threads(2)
points, rounds = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = PointEpsNet(hidden=128, T=100).eval()
torch.nn.init.normal_(model.output.weight, std=0.1)
x0 = torch.randn(points, 2, generator=torch.Generator().manual_seed(1))
start = time.perf_counter()
values = log_likelihood(model, x0, linear_schedule(100), dt=1, rounds=rounds, batch_size=16384,
                        generator=torch.Generator().manual_seed(0))
print(json.dumps({"seconds": time.perf_counter() - start, "mean": values.mean().item()}))
"""


def network_flops_per_row(dim: int = 2) -> int:
    weights = dim * HIDDEN + (LAYERS - 1) * HIDDEN * HIDDEN + HIDDEN * dim
    return 2 * weights


def practical_peak_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """Best-of sgemm GFLOP/s (n x n x n) through MKL (torch.mm) and oneDNN on the current threads.

    Two measures: per second of wall time (what the threads got, on a shared
    machine less than the cores can do) and per CPU-second (process time: the
    speed of one core that ran, much less sensitive to other jobs).
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    result = {}
    candidates = {"mkl_sgemm": lambda: torch.mm(a, b)}
    linear = _mlp.onednn_linear()
    if linear is not None:
        bias = torch.zeros(n)
        candidates["onednn_sgemm"] = lambda: linear(a, b, bias)
    for name, fn in candidates.items():
        fn()
        times = [_timed(fn) for _ in range(repeats)]
        result[name] = round(2 * n**3 / min(wall for wall, _ in times) / 1e9, 1)
        result[f"{name}_per_cpu_second"] = round(2 * n**3 / min(cpu for _, cpu in times) / 1e9, 1)
    result["practical_peak"] = max(v for k, v in result.items() if not k.endswith("_per_cpu_second"))
    result["practical_peak_per_core"] = max(v for k, v in result.items() if k.endswith("_per_cpu_second"))
    return result


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class _TimedModel(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.T, self.seconds = model, model.T, 0.0

    def forward(self, x, t):
        start = time.perf_counter()
        out = self.model(x, t)
        self.seconds += time.perf_counter() - start
        return out


IN_PROCESS = {  # variant: (fast MLP, threads argument of log_likelihood)
    "eager": (False, 1),
    "fast": (True, None),
    "fast_mlp_serial": (True, 1),
    "eager_threads": (False, None),
}


def run_in_process(model, x0, rounds: int, variant: str) -> tuple[dict, torch.Tensor]:
    fast, threads = IN_PROCESS[variant]
    original = _mlp.applies
    _mlp.applies = original if fast else (lambda *args: False)
    try:
        timed = _TimedModel(model)  # with threads > 1 its seconds add up over the threads
        start, cpu = time.perf_counter(), time.process_time()
        values = log_likelihood(
            timed, x0, linear_schedule(T), dt=1, rounds=rounds, seed=0, progress=True, threads=threads
        )
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    finally:
        _mlp.applies = original
    result = {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "threads": threads or torch.get_num_threads(),
    }
    if threads == 1:  # one thread calls the network: its time is wall time
        result.update(
            network_seconds=round(timed.seconds, 2), outside_network_share=round(1 - timed.seconds / seconds, 4)
        )
    else:
        result["network_thread_seconds"] = round(timed.seconds, 2)
    return result, values


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_processes(path: str, x0, rounds: int, workers: int) -> tuple[dict, torch.Tensor]:
    start, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
    with ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        values = log_likelihood(path, x0, dt=1, rounds=rounds, seed=0, executor=pool, progress=True)
    cpu_seconds = time.process_time() - cpu + _children_cpu() - children  # the pool's processes are reaped now
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "workers": workers,
        "threads_per_worker": 1,
    }, values


def run_baseline(python: str, points: int, rounds: int) -> dict:
    completed = subprocess.run(
        [python, "-c", BASELINE_SCRIPT, str(points), str(rounds)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    record = json.loads(completed.stdout.strip().splitlines()[-1])
    venv = Path(os.path.abspath(python)).parent.parent  # not resolve(): the venv's python links elsewhere
    checkout = venv.parent if venv.name == ".venv" else None
    commit = (
        subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        if checkout
        else None
    )
    return {"seconds": round(record["seconds"], 2), "mean_log_p_bound": record["mean"], "commit": commit}


def markdown(record: dict) -> str:
    """The record as a table a person reads in five seconds (written next to the JSON, included by the docs)."""
    machine, peak = record["machine"], record["peak"]
    lines = [
        f"Fig. 5 evaluation: {record['points']:,} points x {record['rounds']} rounds x T = {record['T']} (dt = 1), "
        f"{record['network_gflop']:,} GFLOP in the eps-MLP. Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"ISA path {machine['cpu_isa']}, torch {machine['torch']}, {machine['date']}; load average (1 min) "
        f"{record['load_average_start'][0]} at the start, {record['load_average_end'][0]} at the end "
        f"(a shared machine: compare the ratios). Practical sgemm peak on {machine['threads']} threads: "
        f"{peak['practical_peak']} GFLOP/s of wall time (MKL {peak.get('mkl_sgemm')}, oneDNN "
        f"{peak.get('onednn_sgemm')}); per core {peak.get('practical_peak_per_core')} GFLOP per CPU-second "
        f"(MKL {peak.get('mkl_sgemm_per_cpu_second')}, oneDNN {peak.get('onednn_sgemm_per_cpu_second')}).",
        "",
        "| variant | seconds | speed-up of `fast` | GFLOP/s (wall) | GFLOP per CPU-second (% of a core's peak) "
        "| same values | mean log p bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in record["runs"]:
        for name, result in run.items():
            if not isinstance(result, dict):
                continue
            per_cpu = result.get("gflop_per_cpu_second")
            per_core_peak = peak.get("practical_peak_per_core")
            efficiency = f"{per_cpu} ({100 * per_cpu / per_core_peak:.0f} %)" if per_cpu and per_core_peak else ""
            same = next(
                (("yes" if v else "NO") for k, v in result.items() if k.startswith("values_equal_")), "other noise"
            )
            speedup = run.get(f"speedup_fast_vs_{name}", "")
            lines.append(
                f"| `{name}` | {result['seconds']} | {speedup} | {result['end_to_end_gflops']} | "
                f"{efficiency} | {same} | {result['mean_log_p_bound']:.6f} |"
            )
    lines += [
        "",
        "GFLOP: the network's multiply-adds (2 per weight per row) over the whole run, per second of wall "
        "time and per CPU-second of all the run's threads and processes (the latter counts the other work of "
        "the run too, so it is a lower bound of the network's efficiency). `before` is the checkout named in "
        "the JSON (its own noise stream, so its mean differs within Monte Carlo error).",
    ]
    return "\n".join(lines) + "\n"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats of every variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline-python", default=None, help="interpreter of the checkout to compare with")
    parser.add_argument(
        "--variants",
        default="eager,fast,fast_2_processes,before",
        help="comma-separated, from: eager, fast, fast_mlp_serial, eager_threads, fast_2_processes, before",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "fig5_end_to_end.json")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from an existing --out JSON")
    args = parser.parse_args(argv)
    if args.render:
        record = json.loads(args.out.read_text())
        args.out.with_suffix(".md").write_text(markdown(record))
        return record
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = PointEpsNet(hidden=HIDDEN, layers=LAYERS, T=T).eval()
    nn.init.normal_(model.output.weight, std=0.1)  # zero-initialised otherwise: give the output layer weights
    x0 = torch.randn(args.points, 2, generator=torch.Generator().manual_seed(1))
    rows = args.points * args.rounds
    flops = rows * T * network_flops_per_row()
    record = {
        "points": args.points,
        "rounds": args.rounds,
        "T": T,
        "dt": 1,
        "hidden": HIDDEN,
        "layers": LAYERS,
        "network_gflop": round(flops / 1e9, 1),
        "machine": machine_record(),
        "load_average_start": load_average(),
        "peak": practical_peak_gflops(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "fig5_eps.ckpt")
        save_checkpoint(path, model, linear_schedule(T))
        for repeat in range(args.repeats):
            results, reference = {}, None
            for name in args.variants.split(","):
                if name == "before" and args.baseline_python is None:
                    continue
                load = load_average()
                if name == "before":
                    results[name] = run_baseline(args.baseline_python, args.points, args.rounds)
                elif name == "fast_2_processes":
                    results[name], values = run_processes(path, x0, args.rounds, 2)
                else:
                    results[name], values = run_in_process(model, x0, args.rounds, name)
                if name != "before":  # same noise: the values must agree bit for bit
                    reference = reference or (name, values)
                    results[name]["mean_log_p_bound"] = values.mean().item()
                    results[name][f"values_equal_{reference[0]}"] = bool(torch.equal(values, reference[1]))
                results[name]["load_average_1min_before"] = load[0]
                print(name, json.dumps(results[name]), flush=True)
            for name, result in results.items():
                if "network_seconds" in result:
                    result["network_gflops"] = round(flops / result["network_seconds"] / 1e9, 1)
                result["end_to_end_gflops"] = round(flops / result["seconds"] / 1e9, 1)
                if "cpu_seconds" in result:  # load-robust: network FLOP per CPU-second of the whole run
                    result["gflop_per_cpu_second"] = round(flops / result["cpu_seconds"] / 1e9, 1)
            for name in list(results):
                if name != "fast" and "fast" in results:
                    results[f"speedup_fast_vs_{name}"] = round(results[name]["seconds"] / results["fast"]["seconds"], 2)
            record["runs"].append(results)
    record["load_average_end"] = load_average()
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(record))
    return record


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))

"""Benchmarks whose tables are committed under ``results/`` (each writes its own command beside its table)."""


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the benchmark that spawned it is gone (killed
    benchmarks must not leave workers training into directories nobody reads)."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_trials(run_trial, trials: list[dict], workers: int, describe) -> list[dict]:
    """Run ``run_trial(trial)`` for every trial in ``workers`` spawned processes; print
    ``describe(result)`` for each as it finishes (with the count and the time so far).
    Workers exit within a second when this process is killed.

    With ``EMBODIED_RAY_ADDRESS`` set, every trial is a Ray task instead, as ``embodied
    sweep`` runs its trials (``local``: a local Ray instance with ``workers`` CPU slots; else
    the address of a cluster, e.g. ``ray://head:10001``), with ``EMBODIED_RAY_GPUS`` GPUs
    each (default 0; fractions share a GPU) and two retries of a failed trial."""
    import os
    import time

    results = []
    start = time.perf_counter()

    def report(result) -> None:
        results.append(result)
        print(f"[{len(results)}/{len(trials)} {time.perf_counter() - start:.0f}s] {describe(result)}", flush=True)

    address = os.environ.get("EMBODIED_RAY_ADDRESS")
    if address:
        from embodied.run.sweep import ray_map

        gpus = float(os.environ.get("EMBODIED_RAY_GPUS", "0"))
        tasks = ray_map(run_trial, [(trial,) for trial in trials], None if address == "local" else address, workers,
                        gpus_per_task=gpus)  # fmt: skip
        for _, outcome in tasks:
            if isinstance(outcome, Exception):
                raise outcome
            report(outcome)
        return results

    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(run_trial, trial) for trial in trials]
        for future in as_completed(futures):
            report(future.result())
    return results


def device_arg(text: str) -> str:
    """argparse ``type`` of a bench's ``--device``: one this machine lacks is refused before
    anything is collected or timed."""
    import argparse

    from embodied.data.dataset import resolve_device

    try:
        return resolve_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def calls_per_second(function, calls: int, device: str = "cpu") -> float:
    """Calls of ``function()`` per second, the GPU's queue drained before and after."""
    import time

    import torch

    synchronize = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        function()
    synchronize()
    return calls / (time.perf_counter() - start)


def mean_std(values, digits: int = 2) -> str:
    """``"0.70 ± 0.36"`` over the values that are not NaN (``"—"`` when none are)."""
    import numpy as np

    values = [v for v in values if v == v]
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}" if values else "—"


def save_figure(figure, path) -> None:
    """Write ``figure`` to ``path`` (a PNG at the pages' resolution) and close it, so that a
    process writing many pages (the test suite) keeps no figures open."""
    import matplotlib.pyplot as plt

    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_mean_std(axis, runs: list[dict], value_of, label: str, **style) -> None:
    """One curve of runs' evaluations (each run holds ``evals``: rows with ``step``): the mean
    over runs of ``value_of(row)``, with a ±1 std band."""
    import numpy as np

    steps = [row["step"] for row in runs[0]["evals"]]
    curves = np.array([[value_of(row) for row in run["evals"]] for run in runs])
    mean, std = curves.mean(0), curves.std(0)
    axis.plot(steps, mean, marker="o", label=label, **style)
    axis.fill_between(steps, mean - std, mean + std, alpha=0.2)


def earlier_commands(out, module: str) -> list[str]:
    """The ``python -m embodied.bench.<module>`` commands written in the Markdown at ``out``, in order."""
    import re
    from pathlib import Path

    out = Path(out)
    found = re.findall(rf"`(python -m embodied\.bench\.{module}[^`]*)`", out.read_text()) if out.exists() else []
    return list(dict.fromkeys(found))


def write_section(out, title: str, heading: str, body: list[str]) -> None:
    """Put a ``## heading`` section into the Markdown at ``out`` (whose first line is
    ``# title``), replacing the section of that heading and keeping the others, in
    heading order: several benchmarks share one results file, each writing its part."""
    from pathlib import Path

    out = Path(out)
    sections: dict[str, list[str]] = {}
    if out.exists():
        current = None
        for line in out.read_text().splitlines():
            if line.startswith("## "):
                current = line
                sections[current] = []
            elif current is not None:
                sections[current].append(line)
    sections[f"## {heading}"] = [""] + body
    lines = [f"# {title}", ""]
    for key in sorted(sections):
        lines += [key, *sections[key]]
        while lines[-1] == "":
            lines.pop()
        lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def cached(path, settings: dict, compute):
    """``compute()``'s result, saved as JSON at ``path`` beside ``settings``; a later call with
    the same settings reads it instead (so a killed or repeated benchmark redoes nothing it
    finished). Written to a temporary name and renamed."""
    import json
    from pathlib import Path

    path = Path(path)
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            saved = {}
        if saved.get("settings") == settings:
            return saved["result"]
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"settings": settings, "result": result}))
    tmp.replace(path)
    return result

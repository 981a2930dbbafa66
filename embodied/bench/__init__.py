"""Benchmarks whose tables are committed under ``results/`` (each writes its own command beside its table)."""


def run_trials(run_trial, trials: list[dict], workers: int, describe) -> list[dict]:
    """Run ``run_trial(trial)`` for every trial in ``workers`` spawned processes; print
    ``describe(result)`` for each as it finishes (with the count and the time so far)."""
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results = []
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_trial, trial) for trial in trials]
        for future in as_completed(futures):
            results.append(future.result())
            print(f"[{len(results)}/{len(trials)} {time.perf_counter() - start:.0f}s] {describe(results[-1])}", flush=True)
    return results

"""Sweeps on local Ray: a 2x2 grid-by-seed sweep, its summary, skipping and resuming on rerun, errors."""

import csv

import pytest
import yaml

from embodied.cli import main
from embodied.data.collect import collect
from embodied.run.config import ConfigError
from embodied.run.sweep import expand, final_step, parse_grid, parse_seeds, sweep


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        collect("metaworld/reach-v3", 3, name="sweep-reach", quality="mixed", progress=False,
                env_options={"max_episode_steps": 30})  # fmt: skip
    return root


@pytest.fixture(autouse=True)
def use_datasets(dataset_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dataset_root))  # Ray's workers inherit it


@pytest.fixture(scope="module", autouse=True)
def shutdown_ray():
    yield
    import ray

    ray.shutdown()


def write_config(path, steps=20, data="sweep-reach"):
    path.write_text(yaml.safe_dump({
        "algo": {"name": "bc", "hidden_dims": [16, 16]},
        "env": {"id": "metaworld/reach-v3", "options": {"max_episode_steps": 20}},
        "data": {"name": data},
        "train": {"steps": steps, "batch_size": 8, "eval_every": 0, "eval_episodes": 1, "log_every": 10,
                  "checkpoint_every": 10, "progress": False, "device": "cpu"},
    }))  # fmt: skip
    return path


def test_seeds_and_grid_parse_and_expand(tmp_path):
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]
    for bad in ("2-0", "a", "0,0", ""):
        with pytest.raises(ConfigError):
            parse_seeds(bad)
    grid = parse_grid(["algo.lr=1e-3,3e-4", "train.batch_size=8,16"])
    assert grid == {"algo.lr": ["1e-3", "3e-4"], "train.batch_size": ["8", "16"]}
    for bad in (["algo.lr"], ["=1,2"], ["train.seed=1,2"], ["a.b=1", "a.b=2"]):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    trials = expand(grid, [0, 1], tmp_path)
    assert len(trials) == 8 and len({t.name for t in trials}) == 8
    assert "train.seed=1" in trials[1].overrides and f"train.run_dir={tmp_path / 'runs'}" in trials[0].overrides


def test_a_2x2_sweep_on_local_ray_writes_its_table_and_skips_finished_trials(tmp_path, capsys):
    config = write_config(tmp_path / "bc.yaml")
    directory = tmp_path / "sweep"
    # A trial killed after step 10 (that checkpoint is there, the final one is not): the sweep resumes it.
    from embodied.run.config import load
    from embodied.run.fit import train

    killed = train(load(config, expand({"train.batch_size": ["8"]}, [0], directory)[0].overrides))
    (killed / "checkpoints" / "step_20.pt").unlink()
    assert final_step(killed) == 10

    code = main(["sweep", str(config), "--seeds", "0-1", "--grid", "train.batch_size=8,16", "--workers", "2",
                 "--dir", str(directory)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    for name in ("batch_size=8-seed0", "batch_size=8-seed1", "batch_size=16-seed0", "batch_size=16-seed1"):
        assert final_step(directory / "runs" / name) == 20, name
    with open(directory / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["train.batch_size"], r["seed"]) for r in rows) == [("16", "0"), ("16", "1"), ("8", "0"), ("8", "1")]
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)  # success rate
    summary = (directory / "summary.md").read_text()
    assert "| train.batch_size | mean | std | per seed |" in summary and "4 of 4 trials finished" in summary
    assert (directory / "summary.png").stat().st_size > 0 and "sweep:" in out

    # A rerun starts no trial.
    messages = []
    sweep(config, [0, 1], {"train.batch_size": ["8", "16"]}, sweep_dir=directory, log=messages.append)
    assert messages[0].endswith("4 trials, 4 already finished")


def test_sweep_errors_are_caught_before_any_trial_runs(tmp_path, capsys):
    config = write_config(tmp_path / "bc.yaml")
    assert main(["sweep", str(config), "--grid", "algo.nonsense=1,2", "--dir", str(tmp_path / "s")]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main(["sweep", str(config), "--grid", "algo.dropout=abc", "--dir", str(tmp_path / "s")]) == 2
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert not (tmp_path / "s" / "runs").exists()
    # A directory that holds another sweep is refused.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "sweep.yaml").write_text(yaml.safe_dump({"config": "x", "seeds": [0], "grid": {}, "steps": 1}))
    with pytest.raises(ConfigError, match="another sweep"):
        sweep(config, [0], {}, sweep_dir=tmp_path / "other")


def test_a_trial_that_keeps_failing_is_reported_and_the_others_are_summarised(tmp_path, capsys):
    config = write_config(tmp_path / "bc.yaml")
    code = main(["sweep", str(config), "--grid", "data.name=sweep-reach,no-such-dataset", "--retries", "1",
                 "--workers", "2", "--dir", str(tmp_path / "s")])  # fmt: skip
    assert code == 1
    assert "1 trial(s) failed: name=no_such_dataset-seed0" in capsys.readouterr().err
    summary = (tmp_path / "s" / "summary.md").read_text()
    assert "1 of 2 trials finished" in summary and "sweep-reach" in summary


def test_benchmark_trials_run_as_ray_tasks_when_asked(monkeypatch, capsys):
    import json
    import math

    from embodied.bench import run_trials

    monkeypatch.setenv("EMBODIED_RAY_ADDRESS", "local")
    trials = [{"variant": v, "seed": s} for v in ("a", "b") for s in (0, 1)]
    results = run_trials(json.dumps, trials, 2, lambda r: f"done {r}")
    assert sorted(json.loads(r)["variant"] + str(json.loads(r)["seed"]) for r in results) == ["a0", "a1", "b0", "b1"]
    assert capsys.readouterr().out.count("done ") == 4
    with pytest.raises(TypeError):  # a trial that fails after its retries stops the benchmark with its error
        run_trials(math.sqrt, [{"not": "a number"}], 1, str)

"""The offline RL benchmark end to end at a toy size: MTM labelling of action-free episodes, merging."""

import csv

import numpy as np
import pytest

from embodied.bench import offline_rl


def test_dataset_names_and_scores():
    assert offline_rl.dataset_name("push-v3", "medium") == "metaworld-push-medium"
    assert offline_rl.dataset_name("mujoco/HalfCheetah-v5", "medium") == "mujoco-halfcheetah-medium"
    assert offline_rl.score("push-v3", {"eval/success_rate": 0.5, "eval/return": 900.0}) == 0.5
    low, high = offline_rl.REFERENCE_RETURNS["mujoco/HalfCheetah-v5"]
    assert np.isclose(offline_rl.score("mujoco/HalfCheetah-v5", {"eval/return": (low + high) / 2}), 50.0)


def test_action_free_pipeline_and_merge(tmp_path, monkeypatch):
    from embodied.data.episodes import read_episodes

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    out = tmp_path / "results" / "offline.md"
    common = ["--tasks", "reach-v3", "--qualities", "mixed", "--seeds", "0", "--episodes", "4", "--steps", "4",
              "--evals", "1", "--eval-episodes", "1", "--workers", "1", "--run-dir", str(tmp_path / "runs"),
              "--out", str(out)]  # fmt: skip
    offline_rl.main([*common, "--algos", "bc"])
    offline_rl.main([*common, "--algos", "mtm", "--action-free", "0.5", "--labeller-steps", "4", "--merge"])

    stripped = list(read_episodes("metaworld-reach-mixed-actionfree50"))
    labelled = list(read_episodes("metaworld-reach-mixed-actionfree50-mtm-seed0"))
    assert sum(not e.has_actions for e in stripped) == 2
    assert all(e.has_actions for e in labelled)
    assert sum(e.metadata.get("actions_labelled_by") == "mtm" for e in labelled) == 2

    with open(out.with_suffix(".csv"), newline="") as handle:
        algos = {row["algo"] for row in csv.DictReader(handle)}
    assert algos == {"bc", "mtm", "iql-af", "iql-mtm"}  # the first invocation's bc row is kept
    text = out.read_text()
    assert text.count("`python -m embodied.bench.offline_rl") == 2 and "iql + mtm labels" in text
    assert "| reach-v3 | mixed | 0 |" in text  # the label-quality row
    assert out.with_suffix(".png").exists()

    # --algos may name one action-free column: only it runs, the rest of the table is kept.
    calls = []
    real = offline_rl.run_trials
    monkeypatch.setattr(offline_rl, "run_trials", lambda fn, trials, *a: calls.append(trials) or real(fn, trials, *a))
    written, real_write = [], offline_rl.write
    monkeypatch.setattr(offline_rl, "write", lambda results, args, commands: written.append(args) or real_write(
        results, args, commands))  # fmt: skip
    offline_rl.main([*common, "--algos", "iql-mtm", "--action-free", "0.5", "--labeller-steps", "4", "--merge"])
    assert [t["algo"] for t in calls[0]] == ["iql-mtm"]
    assert calls[0][0]["labeller"]["train"]["steps"] == 4 and calls[0][0]["labeller"]["algo"]["state_differences"]
    with open(out.with_suffix(".csv"), newline="") as handle:
        assert {row["algo"] for row in csv.DictReader(handle)} == {"bc", "mtm", "iql-af", "iql-mtm"}

    # A rerun on a machine without the dataset keeps the data score the table gave it.
    import shutil

    from embodied.data import dataset_path

    row = next(line for line in out.read_text().splitlines() if line.startswith("| reach-v3 | mixed |") and "±" in line)
    shutil.rmtree(dataset_path("metaworld-reach-mixed"))
    results, commands = offline_rl.read_earlier(out)
    assert "What the rows show" not in out.read_text()
    monkeypatch.setitem(offline_rl.FINDINGS, ("reach-v3", "mixed"), "what reach mixed needs said")
    offline_rl.write(results, written[-1], commands)
    again = next(line for line in out.read_text().splitlines() if line.startswith("| reach-v3 | mixed |") and "±" in line)
    assert again.split("|")[3] == row.split("|")[3] and "nan" not in again.split("|")[3]
    assert "What the rows show:\n\n- what reach mixed needs said\n" in out.read_text()  # a finding of a panel shown


def test_action_free_column_needs_the_fraction(capsys):
    with pytest.raises(SystemExit):
        offline_rl.main(["--algos", "iql-mtm"])
    assert "needs --action-free" in capsys.readouterr().err


def test_train_once_reuses_a_run_only_with_the_same_config(tmp_path, monkeypatch):
    import embodied.run.fit as fit
    from embodied.data.collect import collect

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    collect("metaworld/reach-v3", 2, name="tiny-reach", quality="expert", workers=1)
    args = type("Args", (), {"mtm_steps": 0, "steps": 4, "batch_size": 8, "evals": 1, "eval_episodes": 1,
                             "run_dir": tmp_path / "runs"})()  # fmt: skip
    trained = []
    real_train = fit.train
    monkeypatch.setattr(fit, "train", lambda config: trained.append(config) or real_train(config))

    config = offline_rl.trial_config("reach-v3", "bc", 0, "tiny-reach", args)
    run_dir, evals = offline_rl.train_once(config)
    again, evals_again = offline_rl.train_once(config)
    assert len(trained) == 1 and again == run_dir and evals_again == evals  # finished, same settings: reused

    args.eval_episodes = 2  # other settings, same run name: trained again in its place
    run_dir_2, _ = offline_rl.train_once(offline_rl.trial_config("reach-v3", "bc", 0, "tiny-reach", args))
    assert len(trained) == 2 and run_dir_2 == run_dir
    assert "eval_episodes: 2" in (run_dir / "config.yaml").read_text()

    # The same config on a dataset rewritten since (MTM's labelled copy under its old name):
    # trained again; unchanged since: reused.
    import os

    from embodied.data import dataset_path

    offline_rl.train_once(offline_rl.trial_config("reach-v3", "bc", 0, "tiny-reach", args))
    assert len(trained) == 2
    later = (run_dir / "eval.csv").stat().st_mtime + 1
    # A label set stored beside the dataset since is not this run's input: still reused.
    from embodied.data.preferences import save_preferences
    from embodied.rewards.teachers import ScriptedTeacher, label_dataset

    save_preferences(label_dataset("tiny-reach", ScriptedTeacher(), 4, segment_len=5), "other")
    os.utime(dataset_path("tiny-reach") / "preferences" / "other.npz", (later, later))
    offline_rl.train_once(offline_rl.trial_config("reach-v3", "bc", 0, "tiny-reach", args))
    assert len(trained) == 2
    # It is the input of a run that learns from it.
    from embodied.run.config import parse

    with_labels = offline_rl.trial_config("reach-v3", "bc", 0, "tiny-reach", args)
    with_labels["data"]["preferences"] = "other"
    assert later in offline_rl.input_times(parse(with_labels))
    assert later not in offline_rl.input_times(parse(offline_rl.trial_config("reach-v3", "bc", 0, "tiny-reach", args)))
    for path in dataset_path("tiny-reach").rglob("*"):
        os.utime(path, (later, later))
    offline_rl.train_once(offline_rl.trial_config("reach-v3", "bc", 0, "tiny-reach", args))
    assert len(trained) == 3


def test_label_with_mtm_relabels_only_after_the_labeller_changed(tmp_path, monkeypatch):
    import os

    import embodied
    import embodied.algos.mtm as mtm
    from embodied.data import dataset_path
    from embodied.data.collect import collect

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    collect("metaworld/reach-v3", 2, name="tiny-reach", quality="expert", workers=1)
    labeller = tmp_path / "labeller"
    labeller.mkdir()
    (labeller / "model.pt").write_text("weights")
    calls = []
    monkeypatch.setattr(embodied, "load", lambda path: "agent")
    monkeypatch.setattr(mtm, "label_actions", lambda agent, episodes: calls.append(agent) or episodes)
    offline_rl.label_with_mtm(labeller, "tiny-reach", "tiny-reach-labelled")
    assert len(calls) == 1 and (dataset_path("tiny-reach-labelled") / "data" / "metadata.json").exists()
    offline_rl.label_with_mtm(labeller, "tiny-reach", "tiny-reach-labelled")
    assert len(calls) == 1  # the copy is newer than the labeller: kept
    later = max(p.stat().st_mtime for p in dataset_path("tiny-reach-labelled").rglob("*")) + 1
    os.utime(labeller / "model.pt", (later, later))  # the labeller retrained since
    offline_rl.label_with_mtm(labeller, "tiny-reach", "tiny-reach-labelled")
    assert len(calls) == 2

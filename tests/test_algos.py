"""Every algorithm passes one tester: updates, acting, save -> load -> same outputs, resume."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import embodied
from embodied.algos import ALGOS, agent_class
from embodied.data.collect import collect
from embodied.data.preferences import save_preferences
from embodied.rewards.teachers import ScriptedTeacher, label_dataset
from embodied.run import checkpoint
from embodied.run.config import ConfigError, load, parse
from embodied.run.fit import train

ALGO_NAMES = sorted(ALGOS)


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        collect("metaworld/reach-v3", 6, name="tiny-reach", quality="mixed", progress=False,
                env_options={"max_episode_steps": 40})  # fmt: skip
        # Preference labels for the algorithms that learn from them (IPL).
        save_preferences(label_dataset("tiny-reach", ScriptedTeacher(), 24, segment_len=5), "oracle")
    return root


@pytest.fixture(autouse=True)
def use_datasets(dataset_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dataset_root))


def small_config(algo: str, tmp_path, **train):
    return parse({
        "algo": {"name": algo, **({"hidden_dims": [32, 32]} if algo != "mtm" else {})},
        "env": {"id": "metaworld/reach-v3", "options": {"max_episode_steps": 20}},
        "data": {"name": "tiny-reach", "preferences": "oracle"},
        "train": {"steps": 30, "batch_size": 16, "eval_every": 0, "eval_episodes": 1, "log_every": 10,
                  "checkpoint_every": 10, "run_dir": str(tmp_path), "progress": False, **train},
    })  # fmt: skip


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_update_act_save_load(algo, tmp_path):
    from embodied.data import load_dataset

    config = small_config(algo, tmp_path)
    env = embodied.make("metaworld/reach-v3")
    agent = agent_class(algo)(config.algo, env.observation_space, env.action_space, "cpu")
    dataset = load_dataset("tiny-reach", preferences="oracle")
    agent.prepare(dataset, total_steps=10)
    before = [p.detach().clone() for p in agent.parameters()]
    generator = torch.Generator().manual_seed(0)
    for step in range(1, 6):
        metrics = agent.update(agent.sample(dataset, 16, generator), step)
        assert metrics and all(torch.isfinite(v).all() for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.parameters()))
    obs, _ = env.reset(seed=0)
    action = agent.act(obs)
    assert action.shape == (4,) and action.dtype == np.float32 and env.action_space.contains(action)
    batch_actions = agent.act(np.stack([obs, obs, obs]))
    assert batch_actions.shape == (3, 4)
    path = checkpoint.save(tmp_path / "agent.pt", agent, config.to_dict(), step=5)
    loaded = embodied.load(path)
    assert type(loaded) is type(agent)
    np.testing.assert_array_equal(loaded.act(obs), action)
    for key, value in agent.state_dict()["modules"].items():
        assert torch.equal(value, loaded.state_dict()["modules"][key]), key


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_resume_after_a_kill_ends_with_the_same_weights(algo, tmp_path, monkeypatch):
    straight = train(small_config(algo, tmp_path / "straight"))
    expected = checkpoint.read(straight / "checkpoints" / "step_30.pt")["agent"]["modules"]

    killed_config = small_config(algo, tmp_path / "killed")
    cls = agent_class(algo)
    original = cls.update

    def dies_at_step_25(self, batch, step):
        if step == 25:
            raise KeyboardInterrupt("killed")
        return original(self, batch, step)

    monkeypatch.setattr(cls, "update", dies_at_step_25)
    with pytest.raises(KeyboardInterrupt):
        train(killed_config)
    monkeypatch.setattr(cls, "update", original)
    run_dir = tmp_path / "killed" / straight.name
    assert checkpoint.latest(run_dir).name == "step_20.pt"
    train(resume=run_dir)
    resumed = checkpoint.read(run_dir / "checkpoints" / "step_30.pt")["agent"]["modules"]
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    rows = (run_dir / "train.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [10, 20, 30]  # no duplicate rows after resume


def test_train_writes_config_logs_eval_and_checkpoints(tmp_path):
    run_dir = train(small_config("iql", tmp_path, eval_every=15, eval_episodes=1))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["algo"]["name"] == "iql" and saved["algo"]["expectile"] == 0.7
    assert (run_dir / "tensorboard").is_dir()
    eval_rows = (run_dir / "eval.csv").read_text().strip().splitlines()
    assert "eval/success_rate" in eval_rows[0] and len(eval_rows) == 3  # steps 15 and 30
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_10.pt", "step_20.pt", "step_30.pt"]
    with pytest.raises(FileExistsError, match="--resume"):
        train(small_config("iql", tmp_path))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'algo.expectle'. Did you mean 'expectile'"):
        parse({"algo": {"name": "iql", "expectle": 0.8}})
    with pytest.raises(ConfigError, match="unknown algorithm 'iqll'"):
        parse({"algo": {"name": "iqll"}})
    with pytest.raises(ConfigError, match=r"train.steps: 'many'"):
        parse({"algo": {"name": "bc"}, "train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="unknown top-level key 'trian'"):
        parse({"algo": {"name": "bc"}, "trian": {}})
    path = tmp_path / "c.yaml"
    path.write_text("algo: {name: iql}\n")
    assert load(path, ["algo.expectile=0.9", "train.steps=5"]).algo.expectile == 0.9
    assert load(path, ["algo.actor_lr=1e-3"]).algo.actor_lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    with pytest.raises(ConfigError, match=r"algo.actor_lr: 'fast'"):
        load(path, ["algo.actor_lr=fast"])
    with pytest.raises(ConfigError, match="must look like"):
        load(path, ["algo.expectile"])


@pytest.mark.parametrize("algo", ["iql", "mtm"])
def test_bf16_precision_trains_and_keeps_fp32_weights(algo, tmp_path, monkeypatch):
    cls, seen = agent_class(algo), []
    update = cls.update

    def recorded(self, batch, step):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return update(self, batch, step)

    monkeypatch.setattr(cls, "update", recorded)
    run_dir = train(small_config(algo, tmp_path, precision="bf16", steps=10, checkpoint_every=10, log_every=5))
    rows = (run_dir / "train.csv").read_text().strip().splitlines()
    header, values = rows[0].split(","), [row.split(",") for row in rows[1:]]
    losses = [float(row[i]) for row in values for i, name in enumerate(header) if name.endswith("loss") and row[i]]
    assert losses and np.isfinite(losses).all()
    weights = checkpoint.read(run_dir / "checkpoints" / "step_10.pt")["agent"]["modules"]
    assert all(value.dtype != torch.bfloat16 for value in weights.values())
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["precision"] == "bf16"
    assert len(seen) == 10 and all(seen)  # every update ran under bf16 autocast


def test_compile_mode_reaches_the_agent(tmp_path, monkeypatch):
    modes = []
    monkeypatch.setattr(agent_class("iql"), "compile", lambda self, mode="default": modes.append(mode))
    train(small_config("iql", tmp_path, steps=2, compile=True, compile_mode="max-autotune-no-cudagraphs"))
    assert modes == ["max-autotune-no-cudagraphs"]
    with pytest.raises(ConfigError, match="train.compile_mode must be one of"):
        parse({"algo": {"name": "iql"}, "train": {"compile_mode": "fastest"}})
    with pytest.raises(ConfigError, match="train.precision must be 'fp32' or 'bf16'"):
        parse({"algo": {"name": "iql"}, "train": {"precision": "fp16"}})


@pytest.mark.parametrize("algo", ["iql", "sac"])
@pytest.mark.parametrize(("key", "value", "least"), [("eval_episodes", 0, 1), ("log_every", 0, 1),
                                                     ("checkpoint_every", 0, 1), ("steps", 0, 1),
                                                     ("batch_size", 0, 1), ("eval_every", -1, 0)])  # fmt: skip
def test_a_schedule_that_would_fail_mid_run_is_refused_when_parsed(algo, key, value, least):
    # eval_episodes: 0 used to pass until the final evaluation, after the whole run, and
    # took the final checkpoint with it; log_every: 0 failed at the first update.
    with pytest.raises(ConfigError, match=rf"train.{key} must be >= {least}, got {value}"):
        parse({"algo": {"name": algo}, "train": {key: value}})


def test_every_shipped_config_parses():
    configs = sorted(Path(__file__).parent.parent.glob("configs/**/*.yaml"))
    assert configs
    for path in configs:
        load(path)


def test_cli_train_and_eval(tmp_path, capsys):
    from embodied.cli import main

    config = tmp_path / "bc.yaml"
    config.write_text(yaml.safe_dump(small_config("bc", tmp_path).to_dict()))
    assert main(["train", str(config), "--set", "train.steps=12", "--set", "train.checkpoint_every=6"]) == 0
    out = capsys.readouterr().out
    run_dir = out.split("run: ")[1].splitlines()[0]
    assert main(["eval", run_dir, "--episodes", "1"]) == 0
    assert "success rate" in capsys.readouterr().out
    assert main(["train", str(config), "--set", "algo.expectile=0.8"]) == 2
    assert "unknown key 'algo.expectile'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing"), "--episodes", "1"]) == 2


def test_a_device_this_machine_lacks_is_refused_before_the_run_exists(tmp_path, capsys, monkeypatch):
    """SB3 quietly trains on the CPU when asked for a missing GPU; RePo fails deep in torch. Both
    now stop at once with the reason, and no run directory is left behind."""
    from embodied.bench import repo_speed
    from embodied.cli import main
    from embodied.data.dataset import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = Path(__file__).parent.parent / "configs" / "sac" / "metaworld-reach.yaml"
    for device, reason in [("cuda", "no CUDA device on this machine"), ("cdua", "is not a torch device")]:
        runs = tmp_path / device
        assert main(["train", str(config), "--set", f"train.device={device}", "--set", f"train.run_dir={runs}"]) == 2
        assert reason in capsys.readouterr().err
        assert not runs.exists()
    assert main(["prefs", "transfer", "--source", "a", "--target", "b", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ValueError, match="has 1 CUDA device"):
        resolve_device("cuda:1")
    with pytest.raises(SystemExit):  # the benches' --device: refused before any dataset is collected
        repo_speed.main(["--device", "cdua"])
    assert "is not a torch device" in capsys.readouterr().err


def test_eval_reports_each_episode_and_the_returns_of_successes_and_failures(tmp_path, capsys, monkeypatch):
    import json

    from embodied.cli import main
    from embodied.run import fit

    config = tmp_path / "bc.yaml"
    config.write_text(yaml.safe_dump(small_config("bc", tmp_path).to_dict()))
    assert main(["train", str(config), "--set", "train.steps=4", "--set", "train.checkpoint_every=4"]) == 0
    run_dir = capsys.readouterr().out.split("run: ")[1].splitlines()[0]
    summary = fit.evaluate_checkpoint(run_dir, 3)
    assert len(summary["episode_returns"]) == len(summary["episode_successes"]) == 3
    assert np.isclose(np.mean(summary["episode_returns"]), summary["return_mean"])
    assert np.mean(summary["episode_successes"]) == summary["success_rate"]

    # A reward that pays more for failing than for succeeding shows in the split.
    made_up = {"env": "metaworld/button-press-v3", "return_mean": 600.0, "return_std": 70.0, "success_rate": 0.5,
               "episode_returns": [540.0, 550.0, 670.0, 680.0], "episode_successes": [True, True, False, False]}  # fmt: skip
    monkeypatch.setattr(fit, "evaluate_checkpoint", lambda *args, **kwargs: made_up)
    assert main(["eval", run_dir, "--episodes", "4", "--json"]) == 0
    out = capsys.readouterr().out
    assert "return of the 2 successful episodes 545.00, of the 2 failed ones 675.00" in out
    assert json.loads(out.strip().splitlines()[-1])["episode_successes"] == [True, True, False, False]
    made_up["episode_successes"] = [True] * 4  # all succeeded: nothing to split
    assert main(["eval", run_dir, "--episodes", "4"]) == 0
    assert "successful episodes" not in capsys.readouterr().out


def test_collect_with_a_checkpoint_policy(tmp_path, capsys):
    from embodied.cli import main
    from embodied.data import read_episodes

    run_dir = train(small_config("bc", tmp_path, steps=5, checkpoint_every=5))
    assert main(["collect", "metaworld/reach-v3", "--policy", str(run_dir), "--noise", "0.1", "--episodes", "2",
                 "--name", "from-bc", "--workers", "2", "-o", "max_episode_steps=15"]) == 0  # fmt: skip
    episodes = list(read_episodes("from-bc"))
    assert len(episodes) == 2 and episodes[0].metadata["policy"] == str(run_dir.resolve())
    agent = embodied.load(run_dir)
    # Without noise, the stored actions are exactly the agent's.
    main(["collect", "metaworld/reach-v3", "--policy", str(run_dir), "--episodes", "1", "--name", "from-bc-clean",
          "-o", "max_episode_steps=15"])  # fmt: skip
    clean = next(iter(read_episodes("from-bc-clean")))
    np.testing.assert_allclose(agent.act(clean.observations[:-1]), clean.actions, atol=1e-6)

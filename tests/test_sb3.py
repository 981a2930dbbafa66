"""SAC and PPO (stable-baselines3) through the online loop: runs, checkpoints, resume, reward choices, MT10."""

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import embodied
from conftest import train_killed_at_env_step
from embodied.algos import agent_class
from embodied.cli import main
from embodied.run import checkpoint
from embodied.run.config import ConfigError, parse
from embodied.run.fit import evaluate, train

ROOT = Path(__file__).parent.parent
REACH_PROGRAM = ROOT / "envs" / "text2reward" / "library" / "metaworld" / "reach-v3.py"
SB3_ALGOS = ["ppo", "sac"]  # the online algorithms SB3 runs (RePo has tests/test_repo.py)
EPISODE = 50  # steps per test episode; checkpoints every 2 episodes fall at episode ends

SMALL = {
    "sac": {"hidden_dims": [32, 32], "batch_size": 32, "learning_starts": 50},
    "ppo": {"hidden_dims": [32, 32], "n_steps": 100, "batch_size": 50, "n_epochs": 2},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def raw_config(algo: str, run_dir, steps: int = 300, **train) -> dict:
    return {
        "algo": {"name": algo, **SMALL[algo]},
        "env": {"id": "metaworld/reach-v3", "options": {"max_episode_steps": EPISODE}},
        "train": {"steps": steps, "eval_every": 0, "eval_episodes": 1, "log_every": 100, "checkpoint_every": 100,
                  "run_dir": str(run_dir), "progress": False, **train},
    }  # fmt: skip


def last_row(path: Path) -> dict[str, str]:
    lines = path.read_text().strip().splitlines()
    return dict(zip(lines[0].split(","), lines[-1].split(",")))


def policy_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    state = checkpoint.read(run_dir / "checkpoints" / f"step_{step}.pt")["agent"]
    with zipfile.ZipFile(io.BytesIO(state["sb3_zip"])) as archive:
        return torch.load(io.BytesIO(archive.read("policy.pth")))


@pytest.mark.parametrize("algo", SB3_ALGOS)
def test_cli_train_writes_the_run_and_eval_reports_success(algo, tmp_path, capsys):
    config = tmp_path / f"{algo}.yaml"
    config.write_text(yaml.safe_dump(raw_config(algo, tmp_path / "runs", steps=200)))
    assert main(["train", str(config), "--set", "train.eval_every=100"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    run_dir = Path(out.split("run: ")[1].splitlines()[0])
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["algo"]["name"] == algo and "data" not in saved and "batch_size" not in saved["train"]
    train_rows = (run_dir / "train.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in train_rows[1:]] == ["100", "200"]
    assert "train/episode_return" in train_rows[0] and "train/episode_success" in train_rows[0]
    loss = "train/critic_loss" if algo == "sac" else "train/value_loss"
    assert loss in train_rows[0] and last_row(run_dir / "train.csv")[loss]  # added once updates started
    assert "time/env_steps_per_second" in (run_dir / "time.csv").read_text()
    assert "eval/success_rate" in last_row(run_dir / "eval.csv") and (run_dir / "tensorboard").is_dir()
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == (["step_100.pt", "step_200.pt", "step_200.replay.npz"] if algo == "sac"
                           else ["step_100.pt", "step_200.pt"])  # fmt: skip
    assert "final evaluation" in out
    assert main(["eval", str(run_dir), "--episodes", "1"]) == 0
    assert "success rate" in capsys.readouterr().out


@pytest.mark.parametrize("algo", SB3_ALGOS)
def test_save_load_gives_identical_actions(algo, tmp_path):
    run_dir = train(parse(raw_config(algo, tmp_path, steps=100)))
    agent = embodied.load(run_dir)
    assert agent.name == algo and agent.checkpoint_step == 100 and agent.run_config.env.id == "metaworld/reach-v3"
    env = embodied.make("metaworld/reach-v3", max_episode_steps=EPISODE)
    obs, _ = env.reset(seed=3)
    action = agent.act(obs)
    assert action.shape == (4,) and action.dtype == np.float32 and env.action_space.contains(action)
    batch = agent.act(np.stack([obs, obs, obs]))
    assert batch.shape == (3, 4)
    np.testing.assert_allclose(batch[0], action, atol=1e-6)  # batched matmuls round differently
    again = embodied.load(checkpoint.save(tmp_path / "again.pt", agent, agent.run_config.to_dict(), step=100))
    np.testing.assert_array_equal(again.act(obs), action)
    for key, value in agent.model.policy.state_dict().items():
        assert torch.equal(value, again.model.policy.state_dict()[key]), key
    with pytest.raises(NotImplementedError, match="embodied train"):
        agent.update(None, 1)


@pytest.mark.parametrize("algo", SB3_ALGOS)
def test_resume_after_a_kill_ends_with_the_same_weights(algo, tmp_path, monkeypatch):
    # Checkpoints every 2 episodes fall at episode ends: there, resuming is exact on CPU.
    straight = train(parse(raw_config(algo, tmp_path / "straight")))
    train_killed_at_env_step(parse(raw_config(algo, tmp_path / "killed")), 250, monkeypatch)
    run_dir = tmp_path / "killed" / straight.name
    assert checkpoint.latest(run_dir).name == "step_200.pt"
    assert main(["train", "--resume", str(run_dir)]) == 0
    expected, resumed = policy_weights(straight, 300), policy_weights(run_dir, 300)
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    # The logs read as if never interrupted: same rows, same values.
    assert (run_dir / "train.csv").read_text() == (straight / "train.csv").read_text()


def test_reward_code_run_keeps_the_program_and_logs_the_env_reward(tmp_path, capsys):
    from embodied.rewards.text2reward import refine

    config = tmp_path / "sac.yaml"
    config.write_text(yaml.safe_dump(raw_config("sac", tmp_path / "runs", steps=100)))
    assert main(["train", str(config), "--reward-code", str(REACH_PROGRAM)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    run_dir = Path(out.split("run: ")[1].splitlines()[0])
    assert "embodied reward refine" in out
    copy = run_dir / "reward_code" / "v1.py"
    assert copy.read_text() == REACH_PROGRAM.read_text()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["env"]["options"]["reward_code"] == str(REACH_PROGRAM.resolve())
    row = last_row(run_dir / "train.csv")
    assert float(row["train/reward_code_errors"]) == 0 and row["train/env_return"] and row["train/episode_return"]
    assert float(row["train/env_return"]) != float(row["train/episode_return"])  # two different rewards
    assert float(last_row(run_dir / "time.csv")["time/reward_code_ms_per_call"]) > 0
    # What `embodied reward refine RUN_DIR` reads: the copied program and the run's statistics.
    assert refine.versions(run_dir) == {1: copy}
    assert refine.configured_program(refine.read_run_config(run_dir), run_dir) == REACH_PROGRAM.read_text()
    assert "eval/success_rate" in refine.summarize_statistics(run_dir)
    # Evaluation reports the env's own return, not the program's.
    agent = embodied.load(run_dir)
    env = embodied.make("metaworld/reach-v3", max_episode_steps=EPISODE)
    assert evaluate(agent, env, 1, seed=10_000)["eval/return"] == pytest.approx(float(last_row(run_dir / "eval.csv")["eval/return"]))


def test_reward_code_needs_an_online_algorithm_and_a_file(tmp_path, capsys):
    config = tmp_path / "bc.yaml"
    config.write_text(yaml.safe_dump({"algo": {"name": "bc"}, "data": {"name": "x"}}))
    assert main(["train", str(config), "--reward-code", str(REACH_PROGRAM)]) == 2
    assert "online algorithm" in capsys.readouterr().err
    assert main(["train", str(config), "--reward-code", str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_sparse_reward_is_the_success_signal():
    env = embodied.make("metaworld/reach-v3", reward="sparse", max_episode_steps=100)
    policy = embodied.envs.scripted_policy(env)
    obs, info = env.reset(seed=0)
    assert info["env_reward"] == 0.0
    rewards, successes, env_rewards = [], [], []
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        rewards.append(reward)
        successes.append(info["success"])
        env_rewards.append(info["env_reward"])
        done = terminated or truncated
    assert any(successes) and rewards == [float(s) for s in successes]
    assert max(env_rewards) > 1.0  # Meta-World's own dense reward, kept beside
    with pytest.raises(embodied.EnvOptionError, match="give one"):
        embodied.make("metaworld/reach-v3", reward="sparse", reward_code=str(REACH_PROGRAM))
    with pytest.raises(embodied.EnvOptionError, match="reward must be one of env, sparse"):
        embodied.make("metaworld/reach-v3", reward="dense")
    hopper = embodied.make("mujoco/Hopper-v5", reward="sparse", render_mode=None)
    hopper.reset(seed=0)
    with pytest.raises(embodied.EnvOptionError, match="no info\\['success'\\]"):
        hopper.step(hopper.action_space.sample())


def test_mt10_appends_the_task_one_hot_and_takes_tasks_in_turn():
    from embodied.envs.metaworld import BENCHMARKS

    tasks = BENCHMARKS["mt10"]
    env = embodied.make("metaworld/mt10", max_episode_steps=3)
    assert env.observation_space.shape == (49,) and "metaworld/mt10" in embodied.env_ids("metaworld", benchmarks=True)
    seen = []
    for episode in range(12):
        obs, info = env.reset(seed=20 if episode == 0 else None)
        assert env.observation_space.contains(obs)
        np.testing.assert_array_equal(obs[39:], np.eye(10)[tasks.index(info["task"])])
        obs, _, _, _, step_info = env.step(env.action_space.sample())
        assert step_info["task"] == info["task"] and obs[39 + tasks.index(info["task"])] == 1
        seen.append(info["task"])
    assert seen == [*tasks, *tasks[:2]]  # seed 20 starts at task 20 mod 10, then each in turn
    from gymnasium.utils.env_checker import check_env

    check_env(env.unwrapped, skip_render_check=True)
    first, info = env.reset(seed=7)
    env.step(env.action_space.sample())
    np.testing.assert_array_equal(env.reset(seed=7)[0], first)  # a seed fixes the task and its positions
    assert info["task"] == tasks[7]

    class Still:
        def act(self, obs):
            return np.zeros(4, np.float32)

    metrics = evaluate(Still(), env, 10, seed=0)
    assert {f"eval/success_rate/{task}" for task in tasks} <= metrics.keys()
    per_task = [metrics[f"eval/success_rate/{task}"] for task in tasks]
    assert metrics["eval/success_rate"] == pytest.approx(np.mean(per_task))


def test_bad_configs_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'algo.learning_rat'. Did you mean 'learning_rate'"):
        parse({"algo": {"name": "sac", "learning_rat": 1e-3}})
    with pytest.raises(ConfigError, match=r"train.batch_size: not used by sac.*algo.batch_size"):
        parse({"algo": {"name": "sac"}, "train": {"batch_size": 64}})
    with pytest.raises(ConfigError, match=r"data.name"):
        parse({"algo": {"name": "ppo"}, "data": {"name": "metaworld-push-medium"}})
    with pytest.raises(ConfigError, match=r"algo.ent_coef"):
        parse({"algo": {"name": "sac", "ent_coef": [1]}})
    with pytest.raises(ConfigError, match=r"train.eval_every=150 is not a multiple of 100.*algo.n_steps"):
        parse(raw_config("ppo", tmp_path, eval_every=150))


def test_collect_with_an_sb3_checkpoint(tmp_path, monkeypatch):
    from embodied.data import read_episodes

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    run_dir = train(parse(raw_config("sac", tmp_path, steps=100)))
    assert main(["collect", "metaworld/reach-v3", "--policy", str(run_dir), "--episodes", "1", "--name", "from-sac",
                 "-o", "max_episode_steps=15"]) == 0  # fmt: skip
    episode = next(iter(read_episodes("from-sac")))
    np.testing.assert_allclose(embodied.load(run_dir).act(episode.observations[:-1]), episode.actions, atol=1e-6)


def test_a_missing_stable_baselines3_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # what `import` sees when it is not installed
    monkeypatch.delitem(sys.modules, "embodied.algos.sb3")
    with pytest.raises(ImportError, match="pip install 'stable-baselines3"):
        agent_class("sac")

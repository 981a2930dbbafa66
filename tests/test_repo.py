"""RePo and its Dreamer baseline: the world model's objectives, acting with memory, the
online loop (checkpoints with the replay, exact resume, eval), and test-time alignment."""

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import embodied
from conftest import train_killed_at_env_step
from embodied.algos.repo import Dreamer, RePo, RePoConfig, TanhGaussian, lambda_returns
from embodied.cli import main
from embodied.data.replay import SequenceReplay
from embodied.nets.rssm import ConvDecoder, ConvEncoder, gaussian_kl
from embodied.run import checkpoint
from embodied.run.config import ConfigError, parse
from embodied.run.fit import train

ENV = "nav/open-v0"
# Tiny frames, fixed-length episodes (no early end on success), so checkpoints fall at episode ends.
OPTIONS = {"obs": "pixels", "image_size": 16, "max_episode_steps": 25, "terminate_on_success": False}
TINY = {"embedding_dim": 32, "deter_dim": 24, "stoch_dim": 6, "hidden_dim": 24, "cnn_depth": 4, "batch_size": 3,
        "seq_len": 6, "horizon": 4, "prefill": 30, "train_every": 10, "train_steps": 2, "inverse_hidden": 16,
        "disc_hidden": 16, "buffer_size": 1000}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_env(**options):
    return embodied.make(ENV, **{**OPTIONS, **options})


def agent_in(env, **config) -> RePo:
    cls = Dreamer if config.get("objective") == "dreamer" else RePo
    agent = cls(RePoConfig(**{**TINY, **config}), env.observation_space, env.action_space, "cpu")
    agent.seed(0)
    agent.attach(env)
    return agent


def raw_config(run_dir, algo="repo", steps=100, **train) -> dict:
    return {
        "algo": {"name": algo, **TINY},
        "env": {"id": ENV, "options": dict(OPTIONS)},
        "train": {"steps": steps, "eval_every": 0, "eval_episodes": 1, "log_every": 25, "checkpoint_every": 50,
                  "run_dir": str(run_dir), "progress": False, **train},
    }  # fmt: skip


# --- pieces ------------------------------------------------------------------------------
def test_replay_windows_never_cross_the_write_position_and_start_fresh():
    replay = SequenceReplay(10, (2,), np.float32, 1)
    for i in range(14):  # wraps: steps 4..13 are kept, the write position is at 4
        replay.add(np.full(2, i, np.float32), np.array([i], np.float32), float(i), is_first=i % 5 == 0)
    assert len(replay) == 10 and replay.full
    rng = np.random.default_rng(0)
    batch = replay.sample(200, 4, rng)
    steps = batch["obs"][..., 0].numpy()  # (4, 200): the step each entry came from
    assert np.all(np.diff(steps, axis=0) == 1)  # consecutive, never across the oldest/newest seam
    assert steps.min() >= 4 and steps.max() <= 13
    assert batch["is_first"][0].all()  # a window starts with no memory
    np.testing.assert_array_equal(batch["has_reward"].numpy(), steps % 5 != 0)  # but a true first step has no reward
    again = SequenceReplay(10, (2,), np.float32, 1)
    again.load_arrays(replay.arrays())
    np.testing.assert_array_equal(again.obs, replay.obs)
    assert (again.position, again.full) == (replay.position, replay.full)
    with pytest.raises(ValueError, match="does not fit"):
        SequenceReplay(10, (3,), np.float32, 1).load_arrays(replay.arrays())
    with pytest.raises(ValueError, match="fewer than one window"):
        SequenceReplay(10, (2,), np.float32, 1).sample(1, 4, rng)


def test_image_encoders_need_power_of_two_squares():
    encoder, decoder = ConvEncoder((32, 32, 3), 16, depth=4), ConvDecoder(10, (32, 32, 3), depth=4)
    images = torch.randint(0, 255, (2, 5, 32, 32, 3), dtype=torch.uint8)
    assert encoder(images).shape == (2, 5, 16)
    assert decoder(torch.zeros(2, 5, 10)).shape == (2, 5, 32, 32, 3)
    with pytest.raises(ValueError, match="8, 16, 32, 64"):
        ConvEncoder((48, 48, 3), 16)


def test_64x64_image_networks_are_dreamer_v1s():
    """RePo's code keeps Dreamer v1's networks at 64x64: unpadded 4x4 convolutions to 2x2x256
    (the 1024-wide embedding itself), and a decoder from a 1x1 image through kernels 5, 5, 6, 6."""
    encoder = ConvEncoder((64, 64, 3), 1024)
    images = torch.randint(0, 255, (2, 3, 64, 64, 3), dtype=torch.uint8)
    x = images.reshape(-1, 64, 64, 3).permute(0, 3, 1, 2).float()
    sides = [x := layer(x) for layer in encoder.convs][::2]
    assert [tuple(s.shape[1:]) for s in sides] == [(32, 31, 31), (64, 14, 14), (128, 6, 6), (256, 2, 2)]
    assert isinstance(encoder.out, torch.nn.Identity) and encoder(images).shape == (2, 3, 1024)
    assert sum(p.numel() for p in encoder.parameters()) == 690_144  # Dreamer v1's encoder
    decoder = ConvDecoder(230, (64, 64, 3), embedding_dim=1024)
    assert [m.kernel_size[0] for m in decoder.deconvs if isinstance(m, torch.nn.ConvTranspose2d)] == [5, 5, 6, 6]
    assert decoder.deconvs[0].in_channels == 1024 and decoder(torch.zeros(2, 3, 230)).shape == (2, 3, 64, 64, 3)
    # RePo's reward head: 3 hidden layers of hidden_dim (its RewardModel); the benchmarks pin Dreamer v1's 2
    env = embodied.make(ENV, obs="pixels", image_size=16)
    heads = [RePo(RePoConfig(**TINY, **extra), env.observation_space, env.action_space, "cpu").reward_head
             for extra in ({}, {"reward_layers": 2})]  # fmt: skip
    assert [sum(isinstance(m, torch.nn.Linear) for m in head.modules()) for head in heads] == [4, 3]
    # another embedding width: a projection, as RePo's encoder adds one
    assert isinstance(ConvEncoder((64, 64, 3), 256, depth=16).out, torch.nn.Linear)
    assert ConvDecoder(116, (64, 64, 3), depth=16, embedding_dim=256)(torch.zeros(4, 116)).shape == (4, 64, 64, 3)


def test_lambda_returns_match_the_recursion_by_hand():
    rewards, values = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.5, 3.0])
    gamma, lam = 0.9, 0.8
    g1 = 2.0 + gamma * ((1 - lam) * 3.0 + lam * 3.0)
    g0 = 1.0 + gamma * ((1 - lam) * 1.5 + lam * g1)
    torch.testing.assert_close(lambda_returns(rewards, values, gamma, lam), torch.tensor([g0, g1]))


def test_tanh_gaussian_log_prob_is_the_change_of_variables():
    torch.manual_seed(0)
    out = torch.cat([torch.randn(4, 3), torch.full((4, 3), -6.0)], -1)  # std ≈ 0.3: tanh far from saturation
    distribution = TanhGaussian(out)
    action, log_prob = distribution.rsample()
    raw = torch.atanh(action.clamp(-1 + 1e-6, 1 - 1e-6))
    expected = (distribution.normal.log_prob(raw) - torch.log1p(-action**2 + 1e-12)).sum(-1)
    torch.testing.assert_close(log_prob, expected, atol=2e-3, rtol=1e-3)
    assert action.abs().max() < 1


def test_the_actor_starts_with_repos_std_not_a_saturating_one():
    """RePo's actor: std softplus(σ) + 0.1 (≈ 0.79 at σ = 0), four hidden layers; Dreamer v1's
    TF settings (std 5) stay reachable through the config."""
    zero = torch.zeros(2, 4)
    torch.testing.assert_close(TanhGaussian(zero).std, torch.full((2, 2), math.log(2) + 0.1))
    dreamer_v1 = TanhGaussian(zero, init_std=math.log(math.e**5 - 1), min_std=1e-4)
    torch.testing.assert_close(dreamer_v1.std, torch.full((2, 2), 5 + 1e-4))
    env = make_env()
    agent = agent_in(env)
    assert sum(isinstance(m, torch.nn.Linear) for m in agent.actor.modules()) == 5  # 4 hidden + output
    with torch.no_grad():
        std = agent.action_distribution(torch.zeros(8, agent.rssm.feature_dim)).std
    assert 0.4 < std.mean() < 1.5  # an untrained actor explores without pinning tanh at ±1
    env.close()


# --- the objectives ------------------------------------------------------------------------
def test_repo_trains_no_encoder_on_pixels_and_dreamer_does():
    """RePo's decoder is a probe on detached latents; Dreamer's reconstruction shapes the encoder."""
    for objective, reaches_encoder in (("repo", False), ("dreamer", True)):
        env = make_env()
        agent = agent_in(env, objective=objective)
        agent.learn(40, lambda *step: None)
        batch = agent.replay.sample(3, 6, agent.rng)
        _, _, _, metrics = agent.model_loss(batch)
        agent.zero_grad()
        metrics["obs_loss"].backward()
        grads = [p.grad for p in agent.encoder.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == reaches_encoder, objective
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.decoder.parameters())
        env.close()


def test_dreamer_frees_nats_per_step_so_the_prior_learns_under_a_low_mean_kl():
    """RePo's Dreamer baseline clamps each step's KL at free_nats before averaging: with
    the batch's mean KL under free_nats, the steps over it still train the prior."""
    env = make_env()
    agent = agent_in(env, objective="dreamer")
    agent.learn(40, lambda *step: None)
    batch = agent.replay.sample(3, 6, agent.rng)
    torch.manual_seed(0)
    with torch.no_grad():
        posterior, prior = agent.rssm.observe(agent.embed(batch["obs"]), batch["action"], batch["is_first"])
        kl_steps = gaussian_kl(posterior, prior)
    assert kl_steps.mean() < kl_steps.max()
    for free_nats, learns in ((float(kl_steps.mean() + kl_steps.max()) / 2, True), (float(kl_steps.max()) * 10, False)):
        agent.config.free_nats = free_nats
        agent.zero_grad()
        torch.manual_seed(0)  # the same latent samples as above
        agent.model_loss(batch)[0].backward()  # only the KL term reaches the prior's network
        grads = [p.grad for p in agent.rssm.prior_net.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == learns, free_nats
    env.close()


def test_in_imagination_the_actor_reads_its_state_with_gradients_stopped():
    """Dreamer v1 and RePo stop gradients at the actor's input: an action's gradient reaches the
    actor only through what it leads to, not through the actor's own later inputs."""
    env = make_env()
    agent = agent_in(env)
    agent.learn(40, lambda *step: None)
    with torch.no_grad():
        batch = agent.replay.sample(3, 6, agent.rng)
        start = agent.rssm.observe(agent.embed(batch["obs"]), batch["action"], batch["is_first"])[0].flatten()
    inputs = []
    hook = agent.actor.register_forward_hook(lambda module, args, out: inputs.append(args[0].requires_grad))
    actor_loss, _, _ = agent.behaviour_losses(start)
    hook.remove()
    assert len(inputs) == agent.config.horizon and not any(inputs)
    actor_loss.backward()  # the actions still carry the returns' gradient into the actor
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())
    env.close()


def test_the_dual_variable_grows_over_budget_and_shrinks_under_it():
    env = make_env()
    for target_kl, grows in ((0.0, True), (1000.0, False)):
        agent = agent_in(env, target_kl=target_kl, beta_lr=0.05, init_beta=1.0)
        agent.learn(30, lambda *step: None)  # prefill only
        before = agent.log_beta.item()
        for _ in range(5):
            agent.update(agent.replay.sample(3, 6, agent.rng))
        assert (agent.log_beta.item() > before) == grows
    dreamer = agent_in(env, objective="dreamer")
    dreamer.learn(30, lambda *step: None)
    before = dreamer.log_beta.item()
    metrics = dreamer.update(dreamer.replay.sample(3, 6, dreamer.rng))
    assert dreamer.log_beta.item() == before and "train/beta" not in metrics
    env.close()


def test_update_act_save_load(tmp_path):
    env = make_env()
    agent = agent_in(env)
    before = [p.detach().clone() for p in agent.parameters()]
    steps = []
    agent.learn(60, lambda reward, done, info: steps.append(done))
    assert len(steps) == 60 and sum(steps) == 2 and agent.updates == 4 * 2  # rounds at steps 30, 40, 50, 60
    metrics = agent.training_metrics()
    assert {"train/reward_loss", "train/kl", "train/beta", "train/actor_loss", "train/value_loss"} <= metrics.keys()
    assert all(np.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.parameters()))

    frames = [env.reset(seed=5)[0]] + [env.step(env.action_space.sample())[0] for _ in range(4)]
    agent.begin_episode()
    actions = [agent.act(frame) for frame in frames]
    assert all(a.shape == (2,) and a.dtype == np.float32 and env.action_space.contains(a) for a in actions)
    agent.begin_episode()
    np.testing.assert_array_equal([agent.act(frame) for frame in frames], actions)  # memory reset, same actions

    config = parse(raw_config(tmp_path))
    loaded = embodied.load(checkpoint.save(tmp_path / "agent.pt", agent, config.to_dict(), step=60))
    assert type(loaded) is RePo
    loaded.begin_episode()
    np.testing.assert_array_equal([loaded.act(frame) for frame in frames], actions)
    for key, value in agent.state_dict()["modules"].items():
        assert torch.equal(value, loaded.state_dict()["modules"][key]), key
    with pytest.raises(NotImplementedError, match="act"):
        agent.policy(torch.zeros(1, 16, 16, 3))
    env.close()


def test_state_vectors_work_too():
    env = embodied.make(ENV, max_episode_steps=25, terminate_on_success=False)
    agent = agent_in(env)
    agent.learn(50, lambda *step: None)
    assert agent.updates > 0 and np.isfinite(agent.training_metrics()["train/model_loss"])
    agent.begin_episode()
    assert agent.act(env.reset(seed=0)[0]).shape == (2,)


def test_model_pretrain_trains_the_world_model_alone_once_before_the_first_round():
    env = make_env()
    agent = agent_in(env, model_pretrain=5)  # prefill 30, a round of 2 updates every 10 steps
    calls = []
    world_model_step, full_update = agent.update_world_model, agent.update
    actor = [p.detach().clone() for p in agent.actor.parameters()]
    encoder = [p.detach().clone() for p in agent.encoder.parameters()]

    def update(batch):
        # the actor is untouched until the first full update, the world model already trained
        calls.append(("full", all(torch.equal(a, p) for a, p in zip(actor, agent.actor.parameters())),
                      all(torch.equal(e, p) for e, p in zip(encoder, agent.encoder.parameters()))))  # fmt: skip
        return full_update(batch)

    agent.update_world_model = lambda batch: (calls.append(("model",)), world_model_step(batch))[1]
    agent.update = update
    agent.learn(29, lambda *step: None)
    assert calls == []  # nothing during the prefill
    agent.train_round()
    # five world-model steps alone, then the round's two full updates (each with its world-model step)
    assert calls[:5] == [("model",)] * 5 and calls[5] == ("full", True, False) and len(calls) == 5 + 2 * 2
    agent.train_round()
    assert len(calls) == 5 + 4 * 2  # once only


def test_bad_configs_are_refused_with_the_key(tmp_path):
    for key, value, match in (("objective", "world", "objective must be one of repo, dreamer"),
                              ("alignment", "exact", "alignment must be one of"),
                              ("seq_len", 1, "seq_len must be >= 2"),
                              ("actor_min_std", 0.0, "actor_min_std must be > 0"),
                              ("actor_layers", 0, "actor_layers must be >= 1"),
                              ("reward_layers", 0, "reward_layers must be >= 1"),
                              ("model_pretrain", -1, "model_pretrain must be >= 0")):  # fmt: skip
        raw = raw_config(tmp_path)
        raw["algo"][key] = value
        with pytest.raises(ConfigError, match=match):
            parse(raw)
    env = embodied.make(ENV, obs="state+pixels", image_size=16)
    with pytest.raises(TypeError):
        RePo(RePoConfig(**TINY), env.observation_space, env.action_space, "cpu")


# --- the online loop -----------------------------------------------------------------------
def test_cli_train_eval_and_exact_resume_after_a_kill(tmp_path, capsys, monkeypatch):
    config_path = tmp_path / "repo.yaml"
    config_path.write_text(yaml.safe_dump(raw_config(tmp_path / "straight", eval_every=50)))
    assert main(["train", str(config_path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    straight = Path(out.split("run: ")[1].splitlines()[0])
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == [
        "step_100.pt", "step_100.replay.npz", "step_50.pt"]  # fmt: skip
    header = (straight / "train.csv").read_text().splitlines()[0]
    assert "train/kl" in header and "train/beta" in header and "train/episode_return" in header
    assert "eval/return" in (straight / "eval.csv").read_text()
    assert main(["eval", str(straight), "--episodes", "1"]) == 0
    assert "return" in capsys.readouterr().out

    train_killed_at_env_step(parse(raw_config(tmp_path / "killed", eval_every=50)), 80, monkeypatch)
    run_dir = tmp_path / "killed" / straight.name
    assert checkpoint.latest(run_dir).name == "step_50.pt"
    assert main(["train", "--resume", str(run_dir)]) == 0
    expected = checkpoint.read(straight / "checkpoints" / "step_100.pt")["agent"]["modules"]
    resumed = checkpoint.read(run_dir / "checkpoints" / "step_100.pt")["agent"]["modules"]
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


def test_checkpoints_from_before_reward_layers_still_load_and_resume(tmp_path):
    # runs saved before algo.reward_layers existed had a 2-layer reward head (the default is now 3):
    # their config says nothing, the depth is read off the weights
    run_dir = train(parse({**raw_config(tmp_path, steps=100), "algo": {"name": "repo", **TINY, "reward_layers": 2}}))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["algo"]["reward_layers"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        payload = torch.load(path, weights_only=False)
        del payload["config"]["algo"]["reward_layers"]
        torch.save(payload, path)
    agent = checkpoint.load(run_dir)
    assert agent.config.reward_layers == 2 and len(agent.reward_head) == 5  # 2 x (Linear, ELU), Linear
    longer = yaml.safe_load((run_dir / "config.yaml").read_text())
    longer["train"]["steps"] = 150
    (run_dir / "config.yaml").write_text(yaml.safe_dump(longer, sort_keys=False))
    train(resume=run_dir)
    assert checkpoint.load(run_dir).checkpoint_step == 150
    # networks that are not what the config builds: a clear error, the checkpoint untouched
    payload = torch.load(checkpoint.latest(run_dir), weights_only=False)
    payload["config"]["algo"]["hidden_dim"] = 32
    torch.save(payload, tmp_path / "changed.pt")
    with pytest.raises(ValueError, match="holds repo networks other than the ones this version of embodied builds"):
        checkpoint.load(tmp_path / "changed.pt")


def test_imagination_bench_scores_open_loop_reward_of_each_run(tmp_path, capsys):
    from embodied.bench import repo_imagination as bench

    runs = [train(parse({**raw_config(tmp_path / "runs", steps=60, checkpoint_every=60), "algo": {"name": algo, **TINY}}))
            for algo in ("repo", "dreamer")]  # fmt: skip
    out = tmp_path / "imagination.md"
    base = ["--episodes", "2", "--context", "2", "--horizon", "3", "--windows", "40", "--threads", "1", "--out", str(out)]
    for argv, message in (([str(tmp_path)], "no checkpoint in"), ([*map(str, runs), "--horizon", "0"], "--horizon must be")):
        with pytest.raises(SystemExit, match=message):
            bench.main([*base, *argv])
    assert not out.exists()
    bench.main([*map(str, runs), *base])
    text = out.read_text()
    assert "| k=0 | k=1 | k=3 | return |" in text and "k=5" not in text  # the columns the horizon reaches
    for objective in ("repo", "dreamer"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {ENV} | none | {objective} | 0 |"))
        values = [float(cell.split(" ± ")[0]) for cell in row.strip("|").split("|")[4:]]
        assert len(values) == 4 and all(math.isfinite(v) and v <= 1 for v in values)
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 2 * (3 + 1 + 1) and {row["k"] for row in rows} == {"0", "1", "2", "3", "return"}
    assert all(0 < int(row["windows"]) <= 40 for row in rows)
    assert out.with_suffix(".png").stat().st_size > 0
    # a window that cannot fit in one episode is a clear error
    with pytest.raises(ValueError, match="no window of 40 steps lies inside one episode"):
        bench.main([*map(str, runs[:1]), *base, "--context", "20", "--horizon", "20"])


# --- test-time alignment ---------------------------------------------------------------------
def test_align_adapts_only_the_encoder_and_writes_a_target_checkpoint(tmp_path, capsys):
    run_dir = train(parse(raw_config(tmp_path, steps=100)))
    agent = embodied.load(run_dir)
    frozen_before = {k: v.clone() for k, v in agent.state_dict()["modules"].items() if not k.startswith("encoder.")}
    encoder_before = {k: v.clone() for k, v in agent.encoder.state_dict().items()}

    assert main(["align", str(run_dir), "--option", "distractors=colors", "--steps", "40",
                 "--episodes", "1", "--json"]) == 0, capsys.readouterr().err  # fmt: skip
    out = capsys.readouterr().out
    assert "target before" in out and "target after" in out
    aligned_dir = run_dir / "align" / "distractors-colors"
    summary = yaml.safe_load((aligned_dir / "summary.json").read_text())
    assert summary["target_options"] == {"distractors": "colors"} and "eval/return" in summary["target_after"]
    assert (aligned_dir / "align.csv").read_text().startswith("step,align/disc_loss")
    aligned = embodied.load(aligned_dir)
    assert aligned.run_config.env.options["distractors"] == "colors"
    state = aligned.state_dict()["modules"]
    for key, value in frozen_before.items():
        assert torch.equal(state[key], value), key  # dynamics, heads, actor, value untouched
    assert any(not torch.equal(aligned.encoder.state_dict()[k], v) for k, v in encoder_before.items())
    assert main(["eval", str(aligned_dir), "--episodes", "1"]) == 0
    # calibrated: paired source and target steps anchor the encoder too, and the summary says how many
    assert main(["align", str(run_dir), "--option", "distractors=colors", "--steps", "40", "--episodes", "1",
                 "--calibration-steps", "20", "--name", "calibrated"]) == 0  # fmt: skip
    calibrated = run_dir / "align" / "calibrated"
    assert yaml.safe_load((calibrated / "summary.json").read_text())["calibration_steps"] == 20
    assert "align/calibration_loss" in (calibrated / "align.csv").read_text().splitlines()[0]
    assert summary["calibration_steps"] == 0  # the run's own default: unpaired
    # other alignment settings and the update ratio from the command line; the trained model's are refused
    assert main(["align", str(run_dir), "--option", "distractors=colors", "--steps", "20", "--episodes", "1",
                 "--set", "align_coef=0", "--updates-per-step", "0.5", "--name", "no-adversary"]) == 0  # fmt: skip
    settings = yaml.safe_load((run_dir / "align" / "no-adversary" / "summary.json").read_text())
    assert settings["settings"] == {"align_coef": 0} and settings["updates_per_step"] == 0.5
    rows = (run_dir / "align" / "no-adversary" / "align.csv").read_text().splitlines()[1:]
    assert len(rows) == 8  # 0.5 per step over steps 6..20 (the warm-up is one sequence, seq_len 6), rounded up


def test_calibration_pairs_show_each_state_in_both_domains_and_pull_the_encoder_onto_the_source():
    source, target = make_env(), make_env(distractors="colors")
    agent = agent_in(source)
    same = agent.calibration_pairs(source, make_env(), 30)  # a target that looks the same: identical frames
    assert same[0].shape == (30, 16, 16, 3) and torch.equal(same[0], same[1])
    frames, recoloured = agent.calibration_pairs(source, target, 30)
    assert not torch.equal(frames, recoloured)
    # the dynamics must match: another scene (other rewards) or another episode length is refused
    for other in (make_env(scene_seed=123), make_env(max_episode_steps=5)):
        with pytest.raises(ValueError, match="no longer replays the source env's states"):
            agent.calibration_pairs(source, other, 30)

    agent.learn(40, lambda *step: None)  # source frames in the replay
    agent.config.calibration_steps = 60
    with pytest.raises(ValueError, match="alignment needs the source domain's env too"):
        agent.align(target, 20)
    agent.config.align_coef = agent.config.dynamics_coef = 0.0  # calibration alone: a regression onto the source
    rows = []
    agent.align(target, 40, updates_per_step=2, paired_env=source, on_log=lambda step, m: rows.append(m))
    losses = [row["align/calibration_loss"] for row in rows]
    assert len(losses) > 40 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    with pytest.raises(ValueError, match="algo.calibration_steps must be >= 0"):
        RePoConfig(calibration_steps=-1)


def test_align_errors_say_what_is_missing(tmp_path, capsys):
    from embodied.run.align import align_run

    run_dir = train(parse(raw_config(tmp_path, steps=50)))
    with pytest.raises(ValueError, match="nothing to align to"):
        align_run(run_dir, {}, steps=10)
    with pytest.raises(ValueError, match="--steps must be >= 1"):
        align_run(run_dir, {"distractors": "colors"}, steps=0)
    with pytest.raises(ValueError, match="--calibration-steps must be >= 0"):
        align_run(run_dir, {"distractors": "colors"}, steps=10, calibration_steps=-5)
    with pytest.raises(ValueError, match="--set hidden_dim: an alignment may change only alignment, align_lr"):
        align_run(run_dir, {"distractors": "colors"}, steps=10, settings={"hidden_dim": 8})
    with pytest.raises(ValueError, match="algo.alignment must be one of"):  # the config's own checks run
        align_run(run_dir, {"distractors": "colors"}, steps=10, settings={"alignment": "nearest"})
    with pytest.raises(ValueError, match="--updates-per-step must be > 0"):
        align_run(run_dir, {"distractors": "colors"}, steps=10, updates_per_step=0)
    (run_dir / "checkpoints" / "step_50.replay.npz").unlink()
    with pytest.raises(FileNotFoundError, match="replay buffer"):
        align_run(run_dir, {"distractors": "colors"}, steps=10)
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        align_run(tmp_path / "nowhere", {"distractors": "colors"}, steps=10)
    with pytest.raises(SystemExit):  # --option is required
        main(["align", str(run_dir)])
    assert "--option" in capsys.readouterr().err


def test_compile_is_accepted_for_repo_and_refused_for_sb3(tmp_path):
    raw = raw_config(tmp_path, steps=10, compile=True)
    assert parse(raw).to_dict()["train"]["compile"] is True
    sac = {"algo": {"name": "sac"}, "env": {"id": ENV}, "train": {"steps": 10, "compile": True}}
    with pytest.raises(ConfigError, match="train.compile: not used by sac"):
        parse(sac)


def test_bench_writes_control_alignment_probe_and_speed_and_reuses_finished_parts(tmp_path, monkeypatch):
    from embodied.bench import repo as bench

    monkeypatch.setattr(bench, "CPU_SIZES", {**TINY, "prefill": 50, "train_every": 25, "train_steps": 1})
    monkeypatch.setattr(bench, "IMAGE_SIZE", 16)
    out = tmp_path / "repo.md"
    argv = ["--envs", "nav/open-v0", "--distractors", "none", "--seeds", "0", "--steps", "100", "--evals", "1",
            "--eval-episodes", "1", "--align-steps", "30", "--align-calibration", "20", "--calibrated-set",
            "align_coef=0", "--calibrated-updates-per-step", "0.5", "--probe-updates", "3", "--probe-data", "120",
            "--workers", "1", "--run-dir", str(tmp_path / "runs"), "--out", str(out),
            "--set", "nav/open-v0:algo.horizon=3"]  # fmt: skip
    bench.main(argv)
    text = out.read_text()
    assert text.startswith("# RePo against Dreamer, with and without distractors; test-time alignment; what the latent")
    assert "; in nav/open-v0's runs horizon 3" in text  # the sizes say what one env's own --set changed
    for heading in ("## Control: final return", "## Test-time alignment", "## What the latent keeps", "## Speed"):
        assert heading in text, heading
    assert "| nav/open-v0 | none |" in text and (tmp_path / "repo.png").exists() and (tmp_path / "repo.csv").exists()
    control = next(line for line in text.splitlines() if line.startswith("| nav/open-v0 | none |"))
    # the world model at the end: reward loss, KL, β (RePo's only) and the decoder's loss, per objective
    models = {line.split(" | ")[2]: line.split(" | ")[3:] for line in text.splitlines()
              if line.startswith(("| nav/open-v0 | none | repo |", "| nav/open-v0 | none | dreamer |"))}  # fmt: skip
    assert set(models) == {"repo", "dreamer"} and models["dreamer"][2] == "—" and "e-" in models["repo"][2]
    assert all(" ± " in models[o][k] for o in models for k in (0, 1, 3))
    assert control.count("(success ") == 2  # nav reports success: each objective's cell carries its rate
    assert "the mean of each run's 1 evaluation returns" in text  # one evaluation: the area is the final return
    rows = [line for line in text.splitlines() if line.startswith("| nav/open-v0 | none |")]
    assert rows[1] == "| nav/open-v0 | none | " + " | ".join(c.split(" (")[0] for c in control.split(" | ")[2:]) + " |"
    # fixed policies for scale, in the runs' own scene: the scripted one reaches the goal
    assert "| nav/open-v0 | uniform random |" in text and "| nav/open-v0 | zero action |" in text
    held = next(line for line in text.splitlines() if line.startswith("| nav/open-v0 | best constant action (of 8, ["))
    assert "]) |" in held  # the action held, each dim at its low, 0 or high
    scripted = next(line for line in text.splitlines() if line.startswith("| nav/open-v0 | scripted |"))
    assert scripted.endswith("| 1.00 |")
    probes = sorted((tmp_path / "runs" / "probes").glob("*.json"))
    assert [p.name for p in probes] == ["dreamer-seed0.json", "repo-seed0.json"]
    # the alignment table: the unpaired one, then the one calibrated by paired steps, from the same checkpoint
    unpaired, calibrated = (next(line for line in text.splitlines() if line.startswith(f"| nav/open-v0 | {label} |"))
                            for label in ("unpaired", "calibrated (20 pairs)"))  # fmt: skip
    assert unpaired.split(" | ")[2:4] == calibrated.split(" | ")[2:4]  # the same returns before alignment
    aligned = tmp_path / "runs" / "repo-nav-open-v0-none-seed0" / "align"
    calibrated_run = json.loads((aligned / "bench-calibrated" / "summary.json").read_text())
    assert calibrated_run["calibration_steps"] == 20 and calibrated_run["settings"] == {"align_coef": 0}
    assert calibrated_run["updates_per_step"] == 0.5 and "; align_coef=0, 0.5 encoder updates per env step." in text
    summary, calibrated_summary = aligned / "bench" / "summary.json", aligned / "bench-calibrated" / "summary.json"
    written = {path: path.stat().st_mtime_ns for path in [*probes, summary, calibrated_summary]}
    bench.main(argv)  # (trials run in worker processes: what they reuse shows in the files they leave alone)
    assert {path: path.stat().st_mtime_ns for path in written} == written


def test_bench_records_keep_finished_runs_beyond_their_run_directory(tmp_path, monkeypatch):
    import shutil

    from embodied.bench import repo as bench

    monkeypatch.setattr(bench, "CPU_SIZES", {**TINY, "prefill": 50, "train_every": 25, "train_steps": 1})
    monkeypatch.setattr(bench, "IMAGE_SIZE", 16)
    records, runs, out = tmp_path / "records", tmp_path / "runs", tmp_path / "repo.md"
    argv = ["--envs", "nav/open-v0", "--distractors", "none", "--objectives", "repo", "--seeds", "0", "--steps", "50",
            "--evals", "1", "--eval-episodes", "1", "--align-steps", "0", "--probe-updates", "0", "--workers", "1",
            "--run-dir", str(runs), "--out", str(out), "--records", str(records)]  # fmt: skip
    bench.main(argv)
    record = records / "repo-nav-open-v0-none-seed0.json"
    saved = json.loads(record.read_text())
    assert saved["result"]["evals"][-1]["step"] == 50 and saved["result"]["commit"] != ""
    assert saved["settings"]["config"]["train"]["name"] == "repo-nav-open-v0-none-seed0"
    assert "run_dir" not in saved["settings"]["config"]["train"]  # where the run was saved is not a setting
    assert "align_calibration" not in saved["settings"]  # nor how runs it does not include are aligned
    bench.main([*argv, "--align-calibration", "20", "--calibrated-set", "align_coef=0"])
    assert json.loads(record.read_text()) == saved  # (no alignment: the calibration's settings change nothing)

    def control(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("| nav/open-v0 | none |")]

    first = out.read_text()
    assert f"Each run's outcome is kept in `{records}/` (`--records`)" in first and "were recorded on " in first
    # another machine: no run directory, only the record, under another --run-dir: nothing trains again
    shutil.rmtree(runs)
    elsewhere = [*argv[:argv.index("--run-dir") + 1], str(tmp_path / "other"), *argv[argv.index("--run-dir") + 2:]]
    bench.main(elsewhere)
    assert not (tmp_path / "other").exists() and control(out.read_text()) == control(first)
    # a run of other settings (another --set) is not read from the record: it trains, and its
    # record goes beside the first, which is kept; both are read back from then on
    other = [*argv, "--set", "algo.gamma=0.5"]
    bench.main(other)
    assert (runs / "repo-nav-open-v0-none-seed0" / "config.yaml").exists()
    assert json.loads(record.read_text()) == saved
    beside = list(records.glob("repo-nav-open-v0-none-seed0-*.json"))
    assert len(beside) == 1 and json.loads(beside[0].read_text())["settings"]["config"]["algo"]["gamma"] == 0.5
    shutil.rmtree(runs)
    bench.main(other)
    bench.main(argv)
    assert not runs.exists() and sorted(records.iterdir()) == sorted([record, *beside])
    record.write_text("{not json")  # a damaged record is trained again too, not an error
    bench.main(argv)
    assert json.loads(record.read_text())["result"]["evals"][-1]["step"] == 50


def test_bench_set_can_be_limited_to_one_envs_runs(tmp_path):
    from argparse import Namespace

    from embodied.bench import repo as bench

    overrides = ["algo.model_pretrain=7", "nav/open-v0:algo.train_steps=40", "mujoco/Reacher-v5: algo.horizon=5"]
    args = Namespace(obs="pixels", noise_dims=8, steps=100, evals=1, eval_episodes=1, run_dir=tmp_path, set=overrides)
    nav = bench.trial_config("nav/open-v0", "none", "repo", 0, args)["algo"]
    reacher = bench.trial_config("mujoco/Reacher-v5", "none", "repo", 0, args)["algo"]
    assert nav["model_pretrain"] == reacher["model_pretrain"] == 7
    assert nav["train_steps"] == 40 and reacher["train_steps"] == bench.CPU_SIZES["train_steps"]
    assert reacher["horizon"] == 5 and "horizon" not in nav
    # an override without a value still fails as a plain one does, and a scope outside --envs is refused up front
    assert bench.env_overrides("nav/open-v0", ["nav/open-v0:algo.horizon"]) == ["algo.horizon"]
    with pytest.raises(SystemExit, match="--set mujoco/Reacher-v5:algo.horizon=5: mujoco/Reacher-v5 is not one of"):
        bench.main(["--envs", "nav/open-v0", "--set", "mujoco/Reacher-v5:algo.horizon=5", "--run-dir",
                    str(tmp_path / "runs"), "--out", str(tmp_path / "repo.md")])  # fmt: skip
    assert not (tmp_path / "runs").exists() and not (tmp_path / "repo.md").exists()


def test_bench_budgets_can_differ_per_env_and_bad_ones_are_refused_up_front(tmp_path):
    """``--steps 10000 metaworld/drawer-close-v3=6000``: envs that learn at different paces share a page."""
    from argparse import Namespace

    from embodied.bench import repo as bench

    envs = ["nav/open-v0", "metaworld/drawer-close-v3"]
    steps = bench.budgets(["10000", "metaworld/drawer-close-v3=6000"], "--steps", envs)
    assert steps == {"nav/open-v0": 10000, "metaworld/drawer-close-v3": 6000}
    assert bench.budgets(["nav/open-v0=4", "metaworld/drawer-close-v3=2"], "--evals", envs, minimum=1) == {
        "nav/open-v0": 4, "metaworld/drawer-close-v3": 2}  # fmt: skip
    evals = {"nav/open-v0": 10, "metaworld/drawer-close-v3": 3}
    args = Namespace(obs="pixels", noise_dims=8, steps=steps, evals=evals, eval_episodes={"nav/open-v0": 10,
                     "metaworld/drawer-close-v3": 5}, run_dir=tmp_path, set=[])  # fmt: skip
    nav = bench.trial_config("nav/open-v0", "none", "repo", 0, args)["train"]
    drawer = bench.trial_config("metaworld/drawer-close-v3", "none", "repo", 0, args)["train"]
    assert (nav["steps"], nav["eval_every"], nav["eval_episodes"], nav["checkpoint_every"]) == (10000, 1000, 10, 10000)
    assert (drawer["steps"], drawer["eval_every"], drawer["eval_episodes"], drawer["log_every"]) == (6000, 2000, 5, 300)
    assert bench.budget_text(steps | {"mujoco/Reacher-v5": 10000}) == "10000 (6000 in metaworld/drawer-close-v3's runs)"
    assert bench.budget_text({"nav/open-v0": 30, "metaworld/drawer-close-v3": 30}) == "30"
    base = ["--envs", *envs, "--run-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "repo.md")]
    for extra, words in ((["--steps", "10000", "mujoco/Reacher-v5=6000"], "--steps mujoco/Reacher-v5=6000: "
                          "mujoco/Reacher-v5 is not one of the runs' envs"),
                         (["--steps", "nav/open-v0=6000"], "--steps has no value for metaworld/drawer-close-v3"),
                         (["--steps", "6000", "7000"], "--steps 7000: the plain value is given twice"),
                         (["--steps", "lots"], "--steps takes N or ENV=N (a whole number), got 'lots'"),
                         (["--evals", "6", "nav/open-v0=0"], "--evals nav/open-v0=0: must be >= 1"),
                         (["--steps", "6000", "metaworld/drawer-close-v3=5000", "--evals", "6"],
                          "--steps 5000 must be a multiple of --evals 6 (metaworld/drawer-close-v3's)"),
                         (["--steps", "6000", "nav/open-v0=0"], "--steps 0 skips the runs: give it every env or none")):  # fmt: skip
        with pytest.raises(SystemExit, match=re.escape(words)):
            bench.main([*base, *extra])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "repo.md").exists()


def test_bench_distractors_take_parameters_and_bad_ones_are_refused_up_front(tmp_path):
    from argparse import Namespace

    from embodied.bench import repo as bench

    args = Namespace(obs="pixels", noise_dims=8, steps=100, evals=1, eval_episodes=1, run_dir=tmp_path, set=None)
    strong = "{video: {waves: 16, max_frequency: 6}, noisy_tv: {size: 0.5}}"
    config = bench.trial_config("nav/open-v0", strong, "repo", 0, args)
    assert config["env"]["options"]["distractors"] == {"video": {"waves": 16, "max_frequency": 6},
                                                       "noisy_tv": {"size": 0.5}}  # fmt: skip
    assert config["train"]["name"] == "repo-nav-open-v0-video-waves16-max_frequency6+noisy_tv-size0.5-seed0"
    plain = bench.trial_config("nav/open-v0", "video,noisy_tv", "repo", 0, args)
    assert plain["env"]["options"]["distractors"] == "video,noisy_tv"  # the recorded runs' names and options stay
    assert plain["train"]["name"] == "repo-nav-open-v0-video+noisy_tv-seed0"
    base = ["--envs", "nav/open-v0", "--run-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "repo.md")]
    for spec, words in (("{noisy_tv: {size: 2}}", "size must be a number"), ("{noisy_tv: {size: 0.5}",
                        "--distractors {noisy_tv: {size: 0.5}:"), ("video,lasers", "unknown distractor kind 'lasers'")):  # fmt: skip
        with pytest.raises(SystemExit, match=re.escape(words)):
            bench.main([*base, "--distractors", "none", spec])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "repo.md").exists()


def test_bench_runs_the_agents_on_the_state_too_without_distractors_or_alignment(tmp_path, monkeypatch):
    from embodied.bench import repo as bench

    monkeypatch.setattr(bench, "CPU_SIZES", {**TINY, "prefill": 50, "train_every": 25, "train_steps": 1})
    out = tmp_path / "repo_state.md"
    argv = ["--envs", "nav/open-v0", "--seeds", "0", "--steps", "100", "--evals", "1", "--eval-episodes", "1",
            "--probe-updates", "0", "--workers", "1", "--run-dir", str(tmp_path / "runs"), "--out", str(out), "--obs",
            "state"]  # fmt: skip
    with pytest.raises(SystemExit, match="--obs state: distractors are drawn in pixels.*video,noisy_tv"):
        bench.main(argv)  # the default distractors are visual
    with pytest.raises(SystemExit, match="--distractors noise appends noise to a state"):
        bench.main([*argv[:-2], "--distractors", "noise"])  # and the state's noise is not a frame's
    assert not out.exists() and not (tmp_path / "runs").exists()
    bench.main([*argv, "--distractors", "none", "noise", "--noise-dims", "3"])
    text = out.read_text()
    assert "State observations (no pixels) (distractors `noise`: 3 fresh N(0, 1)" in text and "pixels, sizes" not in text
    assert "| nav/open-v0 | none |" in text and "| nav/open-v0 | noise |" in text
    assert "## Test-time alignment" not in text
    assert text.startswith("# RePo against Dreamer, with and without noise, from the state\n")  # no sections it lacks
    for tag, noise in (("none", None), ("noise", 3)):
        config = yaml.safe_load((tmp_path / "runs" / f"repo-nav-open-v0-{tag}-state-seed0" / "config.yaml").read_text())
        options = config["env"]["options"]
        assert options["obs"] == "state" and "image_size" not in options and options.get("state_noise") == noise


def test_bench_continues_a_shorter_finished_run_instead_of_starting_again(tmp_path):
    from embodied.bench.offline_rl import read_evals, train_once

    def config(steps, **train):
        return raw_config(tmp_path, steps=steps, eval_every=50, checkpoint_every=steps, name="run", **train)

    run_dir, evals = train_once(config(50), extend=True)
    first_checkpoint = (run_dir / "checkpoints" / "step_50.pt").stat().st_mtime_ns
    run_dir, evals = train_once(config(100, log_every=50), extend=True)
    # continued: the first run's evaluation and checkpoint are kept, the new steps appended
    assert [row["step"] for row in evals] == [50, 100]
    assert (run_dir / "checkpoints" / "step_50.pt").stat().st_mtime_ns == first_checkpoint
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["steps"] == 100
    written = (run_dir / "eval.csv").stat().st_mtime_ns
    assert train_once(config(100, log_every=50), extend=True)[1] == evals  # finished: read, not run
    assert (run_dir / "eval.csv").stat().st_mtime_ns == written
    # a key added since (here: dropped from the saved config) at its default keeps a finished run
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["algo"]["model_pretrain"]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert train_once(config(100, log_every=50), extend=True)[1] == evals
    assert (run_dir / "eval.csv").stat().st_mtime_ns == written
    # any other difference, or no extend, starts again
    run_dir, evals = train_once(config(150, eval_episodes=2), extend=True)
    assert not (run_dir / "checkpoints" / "step_50.pt").exists() and [r["step"] for r in evals] == [50, 100, 150]
    run_dir, evals = train_once(config(200))
    assert not (run_dir / "checkpoints" / "step_150.pt").exists() and read_evals(run_dir / "eval.csv") == evals


def test_bench_walker_runs_never_end_early_and_the_reward_says_it_fell(tmp_path):
    """RePo and Dreamer model no termination, so the Walker2d config keeps DMC's fixed-length
    episodes: a walker that falls plays on, and only the healthy bonus in its reward is gone."""
    from argparse import Namespace

    from embodied.bench import repo as bench

    args = Namespace(obs="state", noise_dims=8, steps=100, evals=1, eval_episodes=1, run_dir=tmp_path, set=[])
    options = bench.trial_config("mujoco/Walker2d-v5", "none", "repo", 0, args)["env"]["options"]
    assert options["terminate_when_unhealthy"] is False and "distractors" not in options
    env = embodied.make("mujoco/Walker2d-v5", **options)
    env.reset(seed=0)
    rewards, ended = [], False
    while not ended:
        _, reward, terminated, truncated, _ = env.step(np.full(env.action_space.shape, 1.0, np.float32))
        assert not terminated
        rewards.append(reward)
        ended = truncated
    env.close()
    assert len(rewards) == 500  # 1000 env steps at action repeat 2
    # upright at first (the bonus is 1 per env step, 2 per repeated step), fallen by the end
    assert rewards[0] > 1.5 and max(abs(r) for r in rewards[-50:]) < 1.0


@pytest.mark.parametrize("task, colour", [("drawer-close-v3", "green"), ("drawer-open-v3", "green"),
                                         ("button-press-topdown-v3", "yellow")])
def test_bench_metaworld_runs_see_the_task_through_fast_rendering(tmp_path, task, colour):
    """The Meta-World configs: 32x32 pixels, 250 agent steps an episode at action repeat 2, drawn
    without shadows and anti-aliasing, the distractors on top; the task's object shows."""
    from argparse import Namespace

    from embodied.bench import repo as bench

    args = Namespace(obs="pixels", noise_dims=8, steps=100, evals=1, eval_episodes=1, run_dir=tmp_path, set=[])
    options = bench.trial_config(f"metaworld/{task}", "video,noisy_tv", "repo", 0, args)["env"]["options"]
    assert options["render_quality"] == "fast" and options["image_size"] == bench.IMAGE_SIZE
    env = embodied.make(f"metaworld/{task}", **options)
    assert env.unwrapped.sim.model.vis.quality.offsamples == 0
    frame, _ = env.reset(seed=0)
    steps, ended = 0, False
    while not ended:
        frame, _, terminated, truncated, info = env.step(env.action_space.sample())
        steps, ended = steps + 1, terminated or truncated
    assert steps == 250 and frame.shape == (32, 32, 3) and "success" in info
    plain = embodied.make(f"metaworld/{task}", **{**options, "distractors": None})
    scene = plain.reset(seed=0)[0].astype(float)  # without distractors: the green drawer, the yellow box
    red, green, blue = scene[..., 0], scene[..., 1], scene[..., 2]
    if colour == "green":
        shown = (green > red + 30) & (green > blue + 30)
    else:
        shown = (red > blue + 80) & (green > blue + 80)
    assert shown.sum() >= 4
    env.close(), plain.close()

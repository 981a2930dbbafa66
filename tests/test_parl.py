"""PARL: the A-PARL hypergradient against explicit Hessians, queries, the loops and their errors."""

import re

import numpy as np
import pytest
import torch

from embodied.algos import parl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(hidden_dims=(4,), envs=4, horizon=6, queries=2, cg_iterations=60, damping=20.0, reward_steps=1,
             max_implicit_ratio=1e9, value_steps=2)  # fmt: skip


def learner_and_batch(**config):
    envs = parl.make_envs("nav/open-v0", 4, 6)
    learner = parl.PARL(parl.PARLConfig(**{**SMALL, **config}), envs[0].observation_space, envs[0].action_space)
    batch = learner.collect(envs)
    return learner, batch, envs


def test_conjugate_gradient_solves_positive_definite_systems_and_stops_on_negative_curvature():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((6, 6))
    a = torch.tensor(m @ m.T + 6 * np.eye(6))
    b = torch.tensor(rng.standard_normal(6))
    x = parl.conjugate_gradient(lambda v: a @ v, b, 20)
    torch.testing.assert_close(a @ x, b)
    negative = -torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(parl.conjugate_gradient(lambda v: negative @ v, b, 5, fallback_scale=0.5), 0.5 * b)


def test_the_hypergradient_is_direct_plus_the_implicit_term_by_explicit_hessians():
    learner, batch, envs = learner_and_batch()
    asked = learner.ask(batch)
    baseline = learner.baseline(batch)
    gradient, metrics = learner.hypergradient(batch, asked, baseline)
    assert metrics["implicit_norm"] > 0

    theta = list(learner.policy.parameters())
    nu = list(learner.reward.parameters())
    shapes_theta = [p.shape for p in theta]

    def unflatten(flat, shapes):
        out, i = [], 0
        for shape in shapes:
            n = int(np.prod(shape))
            out.append(flat[i: i + n].reshape(shape))
            i += n
        return out

    flat_theta = torch.cat([p.detach().reshape(-1) for p in theta])
    flat_nu = torch.cat([p.detach().reshape(-1) for p in nu])

    # J(θ, ν) as a function of flat vectors, through functional_call
    names_t = [n for n, _ in learner.policy.named_parameters()]
    names_n = [n for n, _ in learner.reward.named_parameters()]

    class Reward(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, obs, actions):
            return torch.func.functional_call(learner.reward, dict(zip(names_n, unflatten(self.fn, [p.shape for p in nu]))),
                                              (obs, actions))  # fmt: skip

    class Policy:
        def __init__(self, ft):
            self.ft = ft

        def distribution(self, obs):
            params = dict(zip(names_t, unflatten(self.ft, shapes_theta)))
            mean = torch.func.functional_call(learner.policy.mean, {k[5:]: v for k, v in params.items() if k.startswith("mean.")}, (obs,))  # noqa: E501
            return torch.distributions.Normal(mean, params["log_std"].exp().expand(mean.shape))

    def inner(ft, fn):
        return parl.inner_objective(Policy(ft), Reward(fn), batch, learner.config, baseline)

    hessian_tt = torch.autograd.functional.hessian(lambda ft: inner(ft, flat_nu), flat_theta)
    mixed = torch.autograd.functional.jacobian(
        lambda fn: torch.autograd.functional.jacobian(lambda ft: inner(ft, fn), flat_theta, create_graph=True), flat_nu)
    obs, actions, preference, pairs = asked
    with torch.no_grad():
        losses = learner.preference_loss(obs, actions, preference)

    def upper(ft):
        log_prob = Policy(ft).distribution(batch.obs).log_prob(batch.actions).sum(-1)
        return ((losses - losses.mean()) * log_prob[torch.as_tensor(pairs)].sum((-1, -2))).mean()

    upper_theta = torch.autograd.functional.jacobian(upper, flat_theta)
    q = torch.linalg.solve(-hessian_tt + learner.config.damping * torch.eye(len(flat_theta)), upper_theta)
    direct = torch.autograd.grad(learner.direct_loss(), nu)
    expected = torch.cat([d.reshape(-1) for d in direct]) + mixed.T @ q
    got = torch.cat([g.reshape(-1) for g in gradient])
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-4)

    learner.config.hypergradient = "direct"
    only_direct, _ = learner.hypergradient(batch, asked, baseline)
    torch.testing.assert_close(torch.cat([g.reshape(-1) for g in only_direct]), torch.cat([d.reshape(-1) for d in direct]))
    for env in envs:
        env.close()


def test_queries_are_labelled_by_the_true_return_and_kept_in_a_window():
    learner, batch, envs = learner_and_batch(queries=6, label_window=8, paired_starts=False)
    obs, actions, preference, pairs = learner.ask(batch)
    returns = batch.true_reward.sum(1)
    expected = (returns[pairs[:, 0]] > returns[pairs[:, 1]]).astype(np.float32)
    np.testing.assert_array_equal(preference.numpy(), expected)  # the oracle teacher
    assert obs.shape == (6, 2, 6, 8) and actions.shape == (6, 2, 6, 2)
    torch.testing.assert_close(obs[0, 1], batch.obs[pairs[0, 1]])
    learner.ask(batch)
    assert len(learner.labels) == 8 and learner.queries == 12
    segmented, batch, envs2 = learner_and_batch(segment_len=3)
    obs, _, _, _ = segmented.ask(batch)
    assert obs.shape[2] == 3
    paired, batch, envs3 = learner_and_batch()  # the default: the two episodes of a query share their reset
    obs, _, _, pairs = paired.ask(batch)
    assert sorted(map(tuple, pairs)) == [(0, 1), (2, 3)]
    torch.testing.assert_close(obs[:, 0, 0], obs[:, 1, 0])  # same start (and goal)
    assert not torch.equal(obs[:, 0], obs[:, 1])  # different behaviour
    for env in envs + envs2 + envs3:
        env.close()


def test_train_and_two_stage_count_env_steps_and_queries():
    config = parl.PARLConfig(**{**SMALL, "cg_iterations": 2, "damping": 1.0, "max_implicit_ratio": 1.0})
    rows = parl.train("nav/open-v0", config, iterations=4, eval_every=2, eval_episodes=2)
    assert [r["iteration"] for r in rows] == [2, 4]
    assert rows[-1]["env_steps"] == 4 * 4 * 6 and rows[-1]["queries"] == 4 * 2
    assert all(0.0 <= r["success_rate"] <= 1.0 and np.isfinite(r["return"]) for r in rows)
    baseline_rows = parl.two_stage("nav/open-v0", config, iterations=4, eval_every=2, eval_episodes=2)
    assert baseline_rows[-1]["env_steps"] == 2 * 4 * 4 * 6 and baseline_rows[-1]["queries"] == 4 * 2
    seen = []
    original = parl.inner_objective

    def spying(policy, reward, batch, config, baseline=None):
        seen.append(torch.equal(reward(batch.obs, batch.actions), torch.as_tensor(batch.true_reward, dtype=torch.float32)))
        return original(policy, reward, batch, config, baseline)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parl, "inner_objective", spying)
        reference = parl.true_reward("nav/open-v0", config, iterations=4, eval_every=2, eval_episodes=2)
    assert seen == [True] * 4  # every policy step on the rollout's own env rewards
    assert reference[-1]["env_steps"] == 4 * 4 * 6 and reference[-1]["queries"] == 0
    assert parl.samples_to_success([{"env_steps": 10, "success_rate": 0.2}, {"env_steps": 20, "success_rate": 0.9}],
                                   0.8) == 20  # fmt: skip
    assert parl.samples_to_success(rows[:0], 0.8) == float("inf")


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="hypergradient must be one of"):
        parl.PARLConfig(hypergradient="exact")
    with pytest.raises(ValueError, match="longer than an episode"):
        parl.PARLConfig(horizon=10, segment_len=20)
    with pytest.raises(ValueError, match="paired_starts needs"):
        parl.PARLConfig(envs=8, queries=5)
    import embodied

    envs = [embodied.make("nav/open-v0", max_episode_steps=3, terminate_on_success=False)]
    learner = parl.PARL(parl.PARLConfig(**SMALL), envs[0].observation_space, envs[0].action_space)
    with pytest.raises(ValueError, match="fixed-length episodes"):
        parl.rollout(envs, learner.policy, horizon=6, seeds=[0])


def test_bench_writes_its_section(tmp_path):
    from embodied.bench import parl as bench

    out = tmp_path / "language.md"
    out.write_text("# title\n\n## (a) VLM\n\nkept\n")
    argv = ["--seeds", "0", "--iterations", "2", "--eval-every", "1", "--horizon", "6", "--workers", "1",
            "--out", str(out), "--run-dir", str(tmp_path / "runs")]  # fmt: skip
    bench.main(argv)
    text = out.read_text()
    assert "## (a) VLM\n\nkept" in text and "## (c) PARL on nav/open-v0" in text and "| A-PARL (bilevel hypergradient) |" in text
    # Samples to success are whole env steps, and a lower bound when no run got there.
    row = next(line for line in text.splitlines() if line.startswith("| A-PARL"))
    assert re.fullmatch(r"> [\d,]+ \(none solved\)|\d+ ± \d+", row.split("|")[3].strip()), row
    assert (tmp_path / "language_parl_nav-open-v0.png").exists()
    assert (tmp_path / "language_parl_nav-open-v0.csv").exists()
    saved = sorted((tmp_path / "runs").glob("*.json"))
    assert [p.name for p in saved] == [f"nav-open-v0-{v}-seed0.json" for v in ("a-parl", "direct", "two-stage")]
    written = {p: p.stat().st_mtime_ns for p in saved}
    bench.main(argv)  # a rerun reads the finished runs
    assert {p: p.stat().st_mtime_ns for p in saved} == written


def test_two_stage_fits_its_reward_on_every_label(monkeypatch):
    config = parl.PARLConfig(**{**SMALL, "label_window": 7})
    seen = []
    original = parl.PARL.direct_loss

    def counting(self):
        seen.append(len(self.labels))
        return original(self)

    monkeypatch.setattr(parl.PARL, "direct_loss", counting)
    parl.two_stage("nav/open-v0", config, iterations=4, eval_every=4, eval_episodes=1)
    assert set(seen) == {8}  # 4 iterations x 2 queries, not the window of 7

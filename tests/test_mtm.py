"""MTM: inference masks, training masks, action-free data, dynamics, action labelling, CLI."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from embodied.algos.mtm import (
    ACTIONS,
    MTM,
    RETURNS,
    STATES,
    MTMConfig,
    bc_mask,
    forward_dynamics_mask,
    inverse_dynamics_mask,
    label_actions,
)
from embodied.data import Dataset, Episode

SMALL = {"width": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "latent_dim": 16}


def point_mass(
    episodes: int, steps: int = 20, dim: int = 3, seed: int = 0, action_free_every: int = 2
) -> tuple[list[Episode], list[np.ndarray]]:
    """s_{t+1} = s_t + a_t, the actions uniform noise plus a pull toward 0 (so states stay
    as large as actions: a random walk would make s_t and s_{t+1} nearly collinear and
    inverse dynamics an ill-conditioned regression); every ``action_free_every``-th
    episode action-free. Returns the episodes and every episode's true actions."""
    rng = np.random.default_rng(seed)
    made, true_actions = [], []
    for index in range(episodes):
        observations = np.zeros((steps + 1, dim), np.float32)
        observations[0] = rng.uniform(-1, 1, dim)
        actions = np.zeros((steps, dim), np.float32)
        for t in range(steps):
            actions[t] = np.clip(rng.uniform(-1, 1, dim) - 0.5 * observations[t], -1, 1)
            observations[t + 1] = observations[t] + actions[t]
        rewards = -np.linalg.norm(observations[1:], axis=1)
        kept = actions if index % action_free_every else None
        made.append(Episode(observations, kept, rewards, np.zeros(steps), np.zeros(steps)))
        true_actions.append(actions)
    return made, true_actions


def make_agent(dim: int = 3, **config) -> MTM:
    space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
    return MTM(MTMConfig(**{**SMALL, **config}), space, gym.spaces.Box(-1, 1, (dim,), np.float32), "cpu")


def test_inference_masks_show_what_each_query_may_see():
    bc = bc_mask(4, 2)
    assert bc[:, STATES].tolist() == [True, True, True, False]  # states up to t
    assert bc[:, ACTIONS].tolist() == [True, True, False, False]  # a_t and future actions hidden
    assert not bc[:, RETURNS].any()
    assert bc_mask(4, 2, returns=True)[:, RETURNS].tolist() == [True, True, True, False]
    inverse = inverse_dynamics_mask(4, 1)
    assert inverse[:, STATES].tolist() == [True, True, False, False]  # s_t and s_{t+1}
    assert not inverse[:, ACTIONS].any() and not inverse[:, RETURNS].any()
    forward = forward_dynamics_mask(4, 0)
    assert forward[:, STATES].tolist() == [True, False, False, False]  # s_{t+1} hidden
    assert forward[:, ACTIONS].tolist() == [True, False, False, False]


def test_training_masks_are_autoregressive_per_sample_and_hide_missing_actions():
    agent = make_agent()
    generator = torch.Generator().manual_seed(0)
    has_actions = torch.rand(512, 4, generator=generator) < 0.5
    visible = agent.training_mask(has_actions, generator)
    assert visible.shape == (512, 4, 3)
    assert not (visible[..., ACTIONS] & ~has_actions).any()  # missing actions are never shown
    assert not visible[:, -1, ACTIONS].any()  # the cut always hides the last action
    assert visible[:, 0, STATES].any() and len({tuple(v.flatten().tolist()) for v in visible}) > 20  # per sample
    # Without the cut, masks are purely random: a last action is sometimes visible.
    all_actions = torch.ones(512, 4, dtype=torch.bool)
    assert make_agent(mask_patterns=("random",)).training_mask(all_actions, generator)[:, -1, ACTIONS].any()
    inverse = make_agent(mask_patterns=("inverse_dynamics",)).training_mask(all_actions, generator)
    assert not inverse[..., [RETURNS, ACTIONS]].any() and inverse[:, :2, STATES].all()
    assert inverse[:, 2, STATES].any() and not inverse[:, 2, STATES].all()  # 2 to L states
    forward = make_agent(mask_patterns=("forward_dynamics",)).training_mask(all_actions, generator)
    assert not forward[..., RETURNS].any() and not forward[:, -1].any() and forward[:, 0].sum() == 2 * 512
    assert torch.equal(forward[..., STATES], forward[..., ACTIONS])


def test_action_free_steps_never_reach_the_loss():
    episodes, _ = point_mass(6)
    dataset = Dataset(episodes)
    agent = make_agent()
    agent.prepare(dataset, total_steps=10)
    batch = agent.sample(dataset, 64, torch.Generator().manual_seed(0))
    assert (~batch.has_actions).any() and batch.has_actions.any()
    assert torch.isnan(batch.actions[~batch.has_actions]).all()

    def loss_and_gradients(actions):
        batch.actions = actions
        agent.zero_grad(set_to_none=True)
        loss, metrics = agent.loss(batch)
        loss.backward()
        return loss.detach(), metrics, [p.grad.clone() for p in agent.model.parameters()]

    with_nan = loss_and_gradients(batch.actions.clone())
    assert torch.isfinite(with_nan[0]) and all(torch.isfinite(g).all() for g in with_nan[2])
    filled = torch.where(batch.has_actions[..., None], batch.actions, torch.randn_like(batch.actions) * 100)
    with_values = loss_and_gradients(filled)
    assert torch.equal(with_nan[0], with_values[0])
    assert all(torch.equal(a, b) for a, b in zip(with_nan[2], with_values[2]))


@pytest.fixture(scope="module")
def trained():
    """A small MTM trained on s' = s + a, half of its episodes action-free."""
    torch.manual_seed(0)
    episodes, true_actions = point_mass(40)
    dataset = Dataset(episodes)
    agent = make_agent(width=64, latent_dim=32, learning_rate=3e-3, warmup_steps=20,
                       mask_patterns=("autoregressive", "inverse_dynamics", "forward_dynamics"))
    steps = 600
    agent.prepare(dataset, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        agent.update(agent.sample(dataset, 64, generator), step)
    return agent, episodes, true_actions


def test_forward_dynamics_uses_the_action(trained):
    agent = trained[0]
    held_out, true_actions = point_mass(10, seed=1)
    states = np.concatenate([e.observations[:-1] for e in held_out])
    next_states = np.concatenate([e.observations[1:] for e in held_out])
    actions = np.concatenate(true_actions)
    predicted = agent.forward_dynamics(torch.as_tensor(states)[:, None], torch.as_tensor(actions)[:, None]).numpy()
    model_error = np.square(predicted - next_states).mean()
    constant_error = np.square(next_states - next_states.mean(0)).mean()
    # The best linear predictor from s_t alone (fitted on the test data itself): most of
    # s_{t+1}'s variance is the action's, so beating it shows the action is used.
    with_bias = np.concatenate([states, np.ones((len(states), 1))], axis=1)
    coefficients = np.linalg.lstsq(with_bias, next_states, rcond=None)[0]
    state_only_error = np.square(with_bias @ coefficients - next_states).mean()
    assert state_only_error > 0.5 * constant_error  # the construction
    assert model_error < 0.5 * state_only_error, (model_error, state_only_error, constant_error)


def test_label_actions_recovers_the_actions_of_exactly_the_action_free_episodes(trained):
    agent, episodes, true_actions = trained
    labelled = label_actions(agent, episodes)
    assert len(labelled) == len(episodes)
    errors = []
    for original, result, actions in zip(episodes, labelled, true_actions):
        if original.has_actions:
            assert result is original  # untouched
            continue
        assert result.has_actions and result.metadata["actions_labelled_by"] == "mtm"
        assert result.actions.shape == actions.shape and result.actions.dtype == np.float32
        np.testing.assert_array_equal(result.observations, original.observations)
        errors.append(np.square(result.actions - actions).mean())
    assert len(errors) == 20
    assert np.mean(errors) < 0.15 * np.var(np.concatenate(true_actions)), np.mean(errors)


def test_label_actions_warns_without_the_inverse_dynamics_pattern():
    episodes, _ = point_mass(2)
    with pytest.warns(UserWarning, match="inverse_dynamics"):
        label_actions(make_agent(), episodes)


def test_cli_label_actions(tmp_path, monkeypatch, capsys):
    from embodied.cli import main
    from embodied.data.collect import collect
    from embodied.data.episodes import read_episodes
    from embodied.run.config import parse
    from embodied.run.fit import train

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    collect("metaworld/reach-v3", 4, quality="mixed", env_options={"max_episode_steps": 30}, progress=False,
            name="reach-tiny")  # fmt: skip
    assert main(["dataset", "strip-actions", "reach-tiny", "--fraction", "0.5", "--name-out", "reach-half"]) == 0
    run_dir = train(parse({
        "algo": {"name": "mtm", **SMALL, "mask_patterns": ["autoregressive", "inverse_dynamics"]},
        "env": {"id": "metaworld/reach-v3", "options": {"max_episode_steps": 10}},
        "data": {"name": "reach-half"},
        "train": {"steps": 4, "batch_size": 8, "eval_every": 0, "eval_episodes": 1, "log_every": 2,
                  "checkpoint_every": 4, "run_dir": str(tmp_path / "runs"), "progress": False},
    }))  # fmt: skip
    capsys.readouterr()
    args = ["dataset", "label-actions", "reach-half", "--checkpoint", str(run_dir), "--name-out", "reach-labelled"]
    assert main(args) == 0
    assert "labelled 2 of 4 episodes" in capsys.readouterr().out
    source, stripped, labelled = (list(read_episodes(n)) for n in ("reach-tiny", "reach-half", "reach-labelled"))
    assert all(e.has_actions for e in labelled)
    assert sorted(e.metadata.get("actions_labelled_by", "") for e in labelled) == ["", "", "mtm", "mtm"]
    for original, half, result in zip(source, stripped, labelled):
        np.testing.assert_array_equal(result.observations, original.observations)
        if half.has_actions:
            np.testing.assert_array_equal(result.actions, original.actions)
        else:
            assert np.isfinite(result.actions).all() and np.abs(result.actions).max() <= 1.0
    assert main(args) == 2  # the output exists: an error, not an overwrite
    assert "already exists" in capsys.readouterr().err


def test_state_differences_are_embedded_only_between_two_visible_states():
    episodes, _ = point_mass(4)
    agent = make_agent(state_differences=True)
    agent.prepare(Dataset(episodes), total_steps=10)
    steps = np.concatenate([np.diff(e.observations, axis=0) for e in episodes])
    torch.testing.assert_close(agent.difference_normalizer.std, torch.as_tensor(steps.std(0, ddof=1)))
    states = torch.randn(5, 4, 3)
    moved = states.clone()
    moved[:, 0] += 10.0  # a hidden state: neither its token nor s_1 − s_0 may reach the outputs
    visible = inverse_dynamics_mask(4, 3)
    visible[0, STATES] = False
    first, second = (agent.reconstruct(visible, states=s)["actions"] for s in (states, moved))
    torch.testing.assert_close(first, second)
    # A checkpoint carries the difference standardiser and embedding.
    shown = inverse_dynamics_mask(4, 3)
    copy = make_agent(state_differences=True)
    copy.load_state_dict(agent.state_dict())
    expected = agent.reconstruct(shown, states=states)["actions"]
    torch.testing.assert_close(copy.reconstruct(shown, states=states)["actions"], expected)
    # The differences do reach the outputs when both states are shown.
    with torch.no_grad():
        for parameter in copy.model.embed_difference.parameters():
            parameter.zero_()
    assert not torch.allclose(copy.reconstruct(shown, states=states)["actions"], expected)


def test_acted_share_draws_segments_with_actions():
    episodes, actions = point_mass(20, action_free_every=1)  # all action-free, then 4 of 20 get theirs back
    for i in range(0, 20, 5):
        e = episodes[i]
        episodes[i] = Episode(e.observations, actions[i], e.rewards, e.terminations, e.truncations)
    dataset = Dataset(episodes)
    generator = torch.Generator().manual_seed(0)
    shares = {}
    for share in (0.0, 0.5):
        agent = make_agent(acted_share=share)
        agent.prepare(dataset, total_steps=10)
        batch = agent.sample(dataset, 400, generator)
        shares[share] = batch.has_actions.all(dim=1).float().mean().item()
    assert shares[0.0] < 0.3 and shares[0.5] >= 0.5, shares
    with pytest.raises(ValueError, match="acted_share"):
        make_agent(acted_share=1.5)


def test_label_actions_reads_each_action_from_a_window_of_states(monkeypatch):
    """With an exact inverse model of s' = s + a, the windowed labels are the true actions:
    every a_t is read at its own position of a window inside the episode."""
    episodes, true_actions = point_mass(3, steps=9, action_free_every=1)
    short, short_actions = point_mass(1, steps=2, seed=3, action_free_every=1)  # 3 states: one shorter context
    agent = make_agent(mask_patterns=("autoregressive", "inverse_dynamics"))
    seen = []

    def exact(states):
        seen.append(states.shape[1])
        return states[:, 1:] - states[:, :-1]

    monkeypatch.setattr(agent, "inverse_dynamics", exact)
    labelled = label_actions(agent, episodes + short)
    for result, actions in zip(labelled, true_actions + short_actions):
        np.testing.assert_allclose(result.actions, np.clip(actions, -1, 1), atol=1e-6)
    assert set(seen) == {4, 3}


def test_state_features_are_all_the_model_sees():
    """A model of features 0–2 of a 5-feature observation: bad indices are refused; the
    other two features never change a prediction, in training or in any query; labelling
    takes whole observations."""
    for bad in ((0, 5), (1, 1), (-1,)):
        with pytest.raises(ValueError, match="state_features must be distinct indices in \\[0, 5\\)"):
            make_agent(dim=5, state_features=bad)
    episodes, _ = point_mass(6, dim=3)
    rng = np.random.default_rng(0)
    wide = [Episode(np.concatenate([e.observations, rng.normal(size=(len(e.observations), 2)).astype(np.float32) * 100], 1),
                    None if e.actions is None else np.concatenate([e.actions, np.zeros((len(e), 2), np.float32)], 1),
                    e.rewards, e.terminations, e.truncations) for e in episodes]  # fmt: skip
    agent = make_agent(dim=5, state_features=(0, 1, 2), state_differences=True,
                       mask_patterns=("autoregressive", "inverse_dynamics"))  # fmt: skip
    assert agent.model.embed[STATES].in_features == 3 and agent.state_normalizer.mean.shape == (3,)
    dataset = Dataset(wide)
    agent.prepare(dataset, total_steps=3)
    generator = torch.Generator().manual_seed(0)
    batch = agent.sample(dataset, 8, generator)
    assert batch.states.shape == (8, agent.length, 3)
    agent.update(batch, 1)
    states = torch.as_tensor(wide[0].observations[:4])[None]
    shuffled = states.clone()
    shuffled[..., 3:] = torch.randn_like(shuffled[..., 3:]) * 1000
    assert torch.equal(agent.inverse_dynamics(states), agent.inverse_dynamics(shuffled))
    np.testing.assert_array_equal(agent.act(states[0, 0].numpy()), agent.act(shuffled[0, 0].numpy()))
    actions = torch.zeros(1, 1, 5)
    assert agent.forward_dynamics(states[:, :1], actions).shape == (1, 3)
    labelled = label_actions(agent, wide)
    assert all(e.has_actions and e.actions.shape == (len(e), 5) for e in labelled)

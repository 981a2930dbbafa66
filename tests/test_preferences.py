"""Preferences: label sets beside datasets, B-Pref scripted teachers, Bradley-Terry /
Plackett-Luce losses and preference reward models."""

import itertools
import math
import os
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from embodied.data import Dataset, DatasetError, Episode, load_dataset, read_episodes, write_dataset
from embodied.data import preferences as prefs_module
from embodied.data.episodes import strip_actions
from embodied.data.preferences import (
    Preferences,
    StepScores,
    gather_segments,
    list_preferences,
    load_preferences,
    sample_queries,
    save_preferences,
)
from embodied.rewards import models
from embodied.rewards.models import (
    RewardModel,
    RewardModelConfig,
    bradley_terry_loss,
    fit_reward_model,
    label_accuracy,
    load_reward_model,
    plackett_luce_loss,
    relabel,
    relabel_dataset,
    save_reward_model,
)
from embodied.rewards.teachers import ScriptedTeacher, agreement, label_dataset

N = 20_000  # queries for the teachers' statistics


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    return tmp_path / "datasets"


def synthetic(lengths=(12, 9, 15, 4), low=0.0, success=True, seed=0):
    """Observations (episode, step, feature); each step's reward is the feature of the
    observation it follows, and ``success`` (T+1 infos) says the feature exceeds 0.5."""
    rng = np.random.default_rng(seed)
    episodes = []
    for index, length in enumerate(lengths):
        steps = np.arange(length + 1, dtype=np.float32)
        feature = rng.uniform(low, 1.0, length + 1).astype(np.float32)
        truncations = np.zeros(length, bool)
        truncations[-1] = True
        episodes.append(
            Episode(
                observations=np.stack([np.full(length + 1, index, np.float32), steps, feature], 1),
                actions=rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                rewards=feature[:-1].astype(np.float64),
                terminations=np.zeros(length, bool),
                truncations=truncations,
                infos={"success": (feature > 0.5).astype(np.float32)} if success else {},
            )
        )
    return episodes


def spaces():
    import gymnasium as gym

    return {
        "observation_space": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        "action_space": gym.spaces.Box(-1, 1, (2,), np.float32),
    }


def written(name="syn", **kwargs):
    episodes = synthetic(**kwargs)
    write_dataset(name, episodes, **spaces())
    return episodes


def segment_sums(per_episode, episodes, starts, length):
    return np.array([[per_episode[e][s : s + length].sum() for e, s in zip(row_e, row_s)]
                     for row_e, row_s in zip(episodes, starts)])  # fmt: skip


def oracle_answer(scores):
    return np.where(scores[:, 0] > scores[:, 1], 1.0, np.where(scores[:, 0] < scores[:, 1], 0.0, 0.5))


def binomial_tolerance(p, n):
    return 4 * math.sqrt(p * (1 - p) / n) + 1e-9


# --- teachers ------------------------------------------------------------------------------


def test_oracle_prefers_the_higher_score_and_halves_exact_ties():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(N, 2))
    scores[:500, 1] = scores[:500, 0]  # exact ties
    answer, kept = ScriptedTeacher().label(scores, 1.0, rng)
    assert kept.all() and answer.dtype == np.float32
    np.testing.assert_array_equal(answer, oracle_answer(scores))
    assert (answer[:500] == 0.5).all() and set(np.unique(answer[500:])) == {0.0, 1.0}


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_mistake_teacher_flips_the_oracle_at_rate_eps(eps):
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(N, 2))
    teacher = ScriptedTeacher.preset("mistake", eps=eps)
    assert teacher.mistake == eps and math.isinf(teacher.beta)
    answer, kept = teacher.label(scores, 1.0, rng)
    oracle = oracle_answer(scores)
    wrong = answer != oracle
    assert kept.all() and np.all(answer[wrong] == 1 - oracle[wrong])  # a mistake is a flip
    assert abs(wrong.mean() - eps) < binomial_tolerance(eps, N)


def test_noisy_teacher_follows_the_boltzmann_probability():
    rng = np.random.default_rng(2)
    beta = 2.0
    difference = rng.uniform(-3, 3, N)
    scores = np.stack([difference + 1.0, np.ones(N)], 1)
    teacher = ScriptedTeacher.preset("noisy", beta=beta)
    assert ScriptedTeacher.preset("noisy").beta == 1.0  # B-Pref's default
    answer, kept = teacher.label(scores, 1.0, rng)
    assert kept.all() and set(np.unique(answer)) == {0.0, 1.0}  # sampled hard answers
    edges = np.linspace(-3, 3, 13)
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (difference >= low) & (difference < high)
        expected = (1 / (1 + np.exp(-beta * difference[in_bin]))).mean()
        assert abs(answer[in_bin].mean() - expected) < binomial_tolerance(max(expected, 0.05), in_bin.sum())


def test_skip_drops_exactly_the_queries_below_the_threshold():
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 2, size=(N, 2))
    scores[:10] = [0.75, 0.5]  # max exactly at the threshold 0.5 * 1.5: skipped
    scores[10:20] = [0.5, 0.7500001]
    teacher = ScriptedTeacher.preset("skip", eps=0.5)
    answer, kept = teacher.label(scores, 1.5, rng)
    np.testing.assert_array_equal(kept, scores.max(1) > 0.75)
    assert not kept[:10].any() and kept[10:20].all()
    assert 0.1 < 1 - kept.mean() < 0.2  # P(both below 0.75) = (0.375)^2
    np.testing.assert_array_equal(answer, oracle_answer(scores)[kept])


def test_equal_teacher_answers_half_inside_the_margin_and_the_oracle_elsewhere():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(N, 2))
    answer, kept = ScriptedTeacher.preset("equal", eps=0.2).label(scores, 2.0, rng)
    close = np.abs(scores[:, 0] - scores[:, 1]) < 0.4
    assert kept.all() and 0.1 < close.mean() < 0.4
    np.testing.assert_array_equal(answer, np.where(close, 0.5, oracle_answer(scores)))


def test_myopic_teacher_weighs_later_steps_more():
    teacher = ScriptedTeacher.preset("myopic")
    assert teacher.gamma == 0.9
    steps = np.random.default_rng(5).normal(size=(4, 3, 6))
    expected = np.zeros((4, 3))
    for t in range(6):
        expected += steps[..., t] * 0.9 ** (5 - t)
    np.testing.assert_allclose(teacher.segment_scores(steps), expected)
    np.testing.assert_allclose(ScriptedTeacher().segment_scores(steps), steps.sum(-1))
    early = [3.0, 3.0, 0.0, 0.0, 0.0, 0.0]  # sum 6, but early
    late = [0.0, 0.0, 0.0, 0.0, 2.5, 2.5]  # sum 5, at the end
    pair = np.array([[early, late]])
    rng = np.random.default_rng(0)
    assert ScriptedTeacher().label(ScriptedTeacher().segment_scores(pair), 1.0, rng)[0][0] == 1.0
    assert teacher.label(teacher.segment_scores(pair), 1.0, rng)[0][0] == 0.0


def test_kwise_oracle_ranks_by_score():
    rng = np.random.default_rng(6)
    scores = rng.normal(size=(5000, 4))
    ranking, kept = ScriptedTeacher().label(scores, 1.0, rng)
    assert kept.all() and ranking.shape == (5000, 4)
    ranked = np.take_along_axis(scores, ranking, 1)
    assert np.all(np.diff(ranked, axis=1) < 0)  # best first


def test_kwise_mistake_is_a_uniformly_random_ranking_at_rate_eps():
    rng = np.random.default_rng(7)
    eps, k = 0.3, 3
    scores = rng.normal(size=(N, k))
    ranking, _ = ScriptedTeacher.preset("mistake", eps=eps).label(scores, 1.0, rng)
    oracle = np.argsort(-scores, axis=1)
    place_in_oracle = np.argsort(oracle, axis=1)  # item -> its oracle place
    relative = np.take_along_axis(place_in_oracle, ranking, 1)  # identity when they agree
    counts = {perm: np.all(relative == perm, axis=1).mean() for perm in itertools.permutations(range(k))}
    assert sum(counts.values()) == pytest.approx(1.0)
    for perm, share in counts.items():
        expected = (1 - eps) + eps / 6 if perm == (0, 1, 2) else eps / 6
        assert abs(share - expected) < binomial_tolerance(expected, N)


def test_kwise_noisy_teacher_samples_plackett_luce():
    rng = np.random.default_rng(8)
    beta, values = 1.5, np.array([1.0, 0.0, -0.5])
    ranking, _ = ScriptedTeacher(beta=beta).label(np.tile(values, (N, 1)), 1.0, rng)
    best = np.bincount(ranking[:, 0], minlength=3) / N
    softmax = np.exp(beta * values) / np.exp(beta * values).sum()
    for share, expected in zip(best, softmax):
        assert abs(share - expected) < binomial_tolerance(expected, N)


def test_kwise_skip_uses_the_best_segment_and_equal_is_pairs_only():
    scores = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 2.0]])
    ranking, kept = ScriptedTeacher(skip=1.0).label(scores, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(kept, [False, True])
    np.testing.assert_array_equal(ranking, [[2, 1, 0]])
    with pytest.raises(ValueError, match="pairs only"):
        ScriptedTeacher.preset("equal").label(np.zeros((4, 3)), 1.0, np.random.default_rng(0))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ScriptedTeacher(beta=0.0), "beta=0.0"),
        (lambda: ScriptedTeacher.preset("noisy", beta=-1.0), "beta=-1.0"),
        (lambda: ScriptedTeacher(mistake=1.5), "mistake=1.5"),
        (lambda: ScriptedTeacher(gamma=0.0), "gamma=0.0"),
        (lambda: ScriptedTeacher(gamma=1.1), "gamma=1.1"),
        (lambda: ScriptedTeacher(skip=-0.1), "skip=-0.1"),
        (lambda: ScriptedTeacher(equal=-1), "equal=-1"),
        (lambda: ScriptedTeacher(score="return"), "score='return'"),
        (lambda: ScriptedTeacher.preset("lazy"), "unknown teacher 'lazy'; valid: oracle, noisy, mistake"),
        (lambda: ScriptedTeacher.preset("noisy", eps=0.1), "eps.*mistake, skip and equal.*not 'noisy'"),
        (lambda: ScriptedTeacher.preset("oracle", eps=0.1), "not 'oracle'"),
    ],
)
def test_bad_teacher_parameters_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_presets_combine_like_bpref():
    teacher = ScriptedTeacher.preset("mistake", beta=1.0, gamma=0.9, score="success")
    assert (teacher.mistake, teacher.beta, teacher.gamma, teacher.score) == (0.1, 1.0, 0.9, "success")
    assert ScriptedTeacher.preset("skip").skip == 0.1 and ScriptedTeacher.preset("equal", eps=0.3).equal == 0.3
    assert ScriptedTeacher.preset("oracle") == ScriptedTeacher()


# --- losses --------------------------------------------------------------------------------


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_loss_matches_hand_computation():
    returns = [[2.0, 0.5], [0.0, 1.0], [1.0, 1.0], [-1.0, 3.0]]
    preference = [1.0, 0.0, 0.5, 0.3]
    expected = np.mean([
        -(p * math.log(_sigmoid(a - b)) + (1 - p) * math.log(1 - _sigmoid(a - b)))
        for (a, b), p in zip(returns, preference)
    ])  # fmt: skip
    loss = bradley_terry_loss(torch.tensor(returns), torch.tensor(preference))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # An ensemble dimension in front: the mean over members as well.
    members = torch.stack([torch.tensor(returns), torch.tensor(returns) * 2])
    twice = bradley_terry_loss(torch.tensor(returns) * 2, torch.tensor(preference))
    assert bradley_terry_loss(members, torch.tensor(preference)).item() == pytest.approx((loss + twice).item() / 2)
    # A soft 0.5 label on equal returns costs log 2, its minimum.
    assert bradley_terry_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([0.5])).item() == pytest.approx(math.log(2))


def test_plackett_luce_loss_matches_the_product_formula():
    returns = [[0.3, -1.0, 2.0], [1.5, 0.5, 0.0]]
    ranking = [[2, 0, 1], [1, 2, 0]]
    expected = []
    for r, order in zip(returns, ranking):
        a, b, c = (math.exp(r[i]) for i in order)
        expected.append(-math.log(a / (a + b + c) * b / (b + c)))
    loss = plackett_luce_loss(torch.tensor(returns), torch.tensor(ranking))
    assert loss.item() == pytest.approx(np.mean(expected), rel=1e-5)
    members = torch.tensor(returns).expand(3, 2, 3)
    assert plackett_luce_loss(members, torch.tensor(ranking)).item() == pytest.approx(loss.item(), rel=1e-6)


def test_plackett_luce_for_pairs_is_bradley_terry_with_hard_labels():
    returns = torch.tensor([[2.0, 0.5], [0.0, 1.0], [-1.0, 3.0], [0.2, 0.2]])
    ranking = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]])
    preference = torch.tensor([1.0, 0.0, 1.0, 0.0])
    pl = plackett_luce_loss(returns, ranking)
    assert pl.item() == pytest.approx(bradley_terry_loss(returns, preference).item(), rel=1e-6)


def test_loss_gradients_raise_the_preferred_return():
    returns = torch.tensor([[0.4, 0.1, -0.2]], requires_grad=True)
    bradley_terry_loss(returns[:, :2], torch.tensor([1.0])).backward()
    assert returns.grad[0, 0] < 0 < returns.grad[0, 1]  # descent raises the first, lowers the second
    returns.grad = None
    plackett_luce_loss(returns, torch.tensor([[2, 0, 1]])).backward()
    assert returns.grad[0, 2] < 0 < returns.grad[0, 1]  # best up, worst down
    assert returns.grad.sum().item() == pytest.approx(0.0, abs=1e-6)  # shifting all returns changes nothing


# --- label sets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(episodes=np.zeros(4), starts=np.zeros(4), preference=np.ones(4)), r"must both be \(N, K>=2\)"),
        (dict(episodes=np.zeros((4, 2)), starts=np.zeros((4, 3)), preference=np.ones(4)), "must both be"),
        (dict(episodes=np.zeros((4, 1)), starts=np.zeros((4, 1)), preference=np.ones(4)), "must both be"),
        (dict(episodes=np.zeros((4, 2)), starts=np.zeros((4, 2))), "exactly one of preference"),
        (dict(episodes=np.zeros((4, 2)), starts=np.zeros((4, 2)), preference=np.ones(4),
              ranking=np.tile([0, 1], (4, 1))), "exactly one of preference"),  # fmt: skip
        (dict(episodes=np.zeros((4, 3)), starts=np.zeros((4, 3)), preference=np.ones(4)), "needs pairs"),
        (dict(episodes=np.zeros((4, 2)), starts=np.zeros((4, 2)), preference=np.ones(3)), r"shape \(4,\)"),
        (dict(episodes=np.zeros((4, 2)), starts=np.zeros((4, 2)), preference=[0, 1, 1.2, 0]), r"\[0, 1\]"),
        (dict(episodes=np.zeros((4, 2)), starts=np.zeros((4, 2)), preference=[0, 1, -0.1, 0]), r"\[0, 1\]"),
        (dict(episodes=np.zeros((4, 2)), starts=np.zeros((4, 2)), preference=[0, 1, np.nan, 0]), r"\[0, 1\]"),
        (dict(episodes=np.zeros((2, 3)), starts=np.zeros((2, 3)), ranking=[[0, 1, 2], [0, 0, 1]]), "permutation"),
        (dict(episodes=np.zeros((2, 3)), starts=np.zeros((2, 3)), ranking=[[0, 1, 3], [0, 2, 1]]), "permutation"),
        (dict(episodes=np.zeros((2, 3)), starts=np.zeros((2, 3)), ranking=[[0, 1], [1, 0]]), "permutation"),
    ],
)
def test_malformed_preferences_are_rejected(kwargs, message):
    with pytest.raises(DatasetError, match=message):
        Preferences("syn", 5, **kwargs)


def test_pairs_expand_a_ranking_into_every_implied_preference():
    ranked = Preferences("syn", 5, episodes=[[10, 11, 12], [20, 21, 22]], starts=[[0, 1, 2], [3, 4, 5]],
                         ranking=[[2, 0, 1], [0, 1, 2]], info={"teacher": "t"})  # fmt: skip
    pairs = ranked.pairs()
    assert len(pairs) == 6 and pairs.k == 2 and pairs.ranking is None and np.all(pairs.preference == 1.0)
    got = {((a, sa), (b, sb)) for (a, b), (sa, sb) in zip(pairs.episodes.tolist(), pairs.starts.tolist())}
    assert got == {((12, 2), (10, 0)), ((12, 2), (11, 1)), ((10, 0), (11, 1)),
                   ((20, 3), (21, 4)), ((20, 3), (22, 5)), ((21, 4), (22, 5))}  # fmt: skip
    assert pairs.info == {"teacher": "t"} and pairs.segment_len == 5
    plain = Preferences("syn", 5, episodes=[[0, 1]], starts=[[0, 0]], preference=[0.5])
    assert plain.pairs() is plain


def test_split_is_disjoint_covers_everything_and_repeats():
    labels = Preferences("syn", 4, episodes=np.stack([np.arange(50), np.arange(50) + 100], 1),
                         starts=np.zeros((50, 2)), preference=np.linspace(0, 1, 50))  # fmt: skip
    train, held_out = labels.split(0.2, seed=3)
    assert (len(train), len(held_out)) == (40, 10)
    a, b = set(train.episodes[:, 0].tolist()), set(held_out.episodes[:, 0].tolist())
    assert not a & b and a | b == set(range(50))
    # Each query keeps its own label.
    np.testing.assert_allclose(train.preference, np.linspace(0, 1, 50)[train.episodes[:, 0]])
    again, _ = labels.split(0.2, seed=3)
    other, _ = labels.split(0.2, seed=4)
    np.testing.assert_array_equal(train.episodes, again.episodes)
    assert not np.array_equal(train.episodes, other.episodes)


def test_label_sets_round_trip_beside_their_dataset(minari_root):
    written()
    pairs = Preferences("syn", 3, episodes=[[0, 1], [2, 0], [1, 2]], starts=[[0, 4], [5, 1], [2, 2]],
                        preference=[1.0, 0.25, 0.5],
                        info={"teacher": {"beta": math.inf}, "eps": np.float32(0.5), "asked": np.int64(3)})  # fmt: skip
    ranked = Preferences("syn", 4, episodes=[[0, 1, 2]], starts=[[0, 1, 2]], ranking=[[1, 2, 0]])
    path = save_preferences(pairs, "soft-labels")
    assert path == minari_root / "embodied" / "syn-v0" / "preferences" / "soft-labels.npz"
    save_preferences(ranked, "ranked_v1.2")
    assert list_preferences("syn") == ["ranked_v1.2", "soft-labels"]
    back = load_preferences("syn", "soft-labels")
    np.testing.assert_array_equal(back.episodes, pairs.episodes)
    np.testing.assert_array_equal(back.starts, pairs.starts)
    np.testing.assert_array_equal(back.preference, pairs.preference)
    assert back.ranking is None and back.dataset == "syn" and back.segment_len == 3
    assert back.info == {"teacher": {"beta": math.inf}, "eps": 0.5, "asked": 3}
    back = load_preferences("syn", "ranked_v1.2")
    np.testing.assert_array_equal(back.ranking, [[1, 2, 0]])
    assert back.preference is None and back.segment_len == 4


def test_saving_twice_needs_overwrite(minari_root):
    written()
    first = Preferences("syn", 3, episodes=[[0, 1]], starts=[[0, 0]], preference=[1.0])
    second = Preferences("syn", 3, episodes=[[2, 1]], starts=[[1, 1]], preference=[0.0])
    save_preferences(first, "labels")
    with pytest.raises(DatasetError, match="label set 'labels' of 'syn' exists.*overwrite"):
        save_preferences(second, "labels")
    np.testing.assert_array_equal(load_preferences("syn", "labels").episodes, [[0, 1]])
    save_preferences(second, "labels", overwrite=True)
    np.testing.assert_array_equal(load_preferences("syn", "labels").episodes, [[2, 1]])


def test_missing_label_set_names_the_existing_ones():
    written()
    with pytest.raises(DatasetError, match=r"has no label set 'nope' \(has: none\)"):
        load_preferences("syn", "nope")
    labels = Preferences("syn", 3, episodes=[[0, 1]], starts=[[0, 0]], preference=[1.0])
    save_preferences(labels, "b")
    save_preferences(labels, "a")
    with pytest.raises(DatasetError, match=r"has no label set 'nope' \(has: a, b\)"):
        load_preferences("syn", "nope")
    with pytest.raises(DatasetError, match="unknown dataset 'other'"):
        save_preferences(Preferences("other", 3, episodes=[[0, 1]], starts=[[0, 0]], preference=[1.0]), "a")


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "no meta"])
def test_a_corrupt_label_file_is_a_dataset_error(corruption):
    written()
    path = save_preferences(Preferences("syn", 3, episodes=[[0, 1]] * 20, starts=[[0, 0]] * 20,
                                        preference=[1.0] * 20), "labels")  # fmt: skip
    if corruption == "garbage":
        path.write_bytes(b"these are not the labels you are looking for")
    elif corruption == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        np.savez(path, episodes=np.zeros((2, 2), np.int64))
    with pytest.raises(DatasetError, match=r"labels\.npz: not a readable label set"):
        load_preferences("syn", "labels")


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "../escape", "with space", "ümlaut"])
def test_bad_label_names_are_rejected(name):
    written()
    labels = Preferences("syn", 3, episodes=[[0, 1]], starts=[[0, 0]], preference=[1.0])
    with pytest.raises(DatasetError, match="bad label set name"):
        save_preferences(labels, name)
    with pytest.raises(DatasetError, match="bad label set name"):
        load_preferences("syn", name)


def test_a_failed_write_leaves_no_partial_file(minari_root, monkeypatch):
    written()
    old = Preferences("syn", 3, episodes=[[0, 1]], starts=[[0, 0]], preference=[1.0])
    new = Preferences("syn", 3, episodes=[[2, 1]], starts=[[1, 1]], preference=[0.0])
    save_preferences(old, "kept")
    folder = minari_root / "embodied" / "syn-v0" / "preferences"

    def failing_savez(file, *args, **kwargs):
        with open(file, "wb") as handle:
            handle.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk first
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(prefs_module.np, "savez", failing_savez)
        with pytest.raises(OSError, match="disk full"):
            save_preferences(new, "fresh")
        with pytest.raises(OSError, match="disk full"):
            save_preferences(new, "kept", overwrite=True)
    assert sorted(os.listdir(folder)) == ["kept.npz"]  # no temporaries, no 'fresh'
    np.testing.assert_array_equal(load_preferences("syn", "kept").episodes, [[0, 1]])  # the old one survived


# --- queries and segments ------------------------------------------------------------------


def test_sampled_segments_fit_their_episodes_and_skip_short_ones():
    lengths = np.array([3, 10, 7, 4, 20])
    episodes, starts = sample_queries(lengths, N, 5, k=3, seed=0)
    assert episodes.shape == starts.shape == (N, 3)
    assert set(np.unique(episodes).tolist()) == {1, 2, 4}  # 3- and 4-step episodes never
    assert np.all(starts >= 0) and np.all(starts + 5 <= lengths[episodes])
    # Uniform over the 6 + 3 + 16 places a segment fits.
    for episode, places in [(1, 6), (2, 3), (4, 16)]:
        share = (episodes == episode).mean()
        assert abs(share - places / 25) < binomial_tolerance(places / 25, episodes.size)
    assert set(np.unique(starts[episodes == 2]).tolist()) == {0, 1, 2}
    # A segment as long as its episode fits exactly once.
    episodes, starts = sample_queries([5, 2], 50, 5)
    assert np.all(episodes == 0) and np.all(starts == 0)


def test_sampled_queries_repeat_with_the_seed():
    a = sample_queries([30, 40, 50], 100, 8, seed=7)
    b = sample_queries([30, 40, 50], 100, 8, seed=7)
    c = sample_queries([30, 40, 50], 100, 8, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_sampling_errors():
    with pytest.raises(DatasetError, match=r"no episode is 5 steps long \(longest: 4\)"):
        sample_queries([3, 4], 10, 5)
    with pytest.raises(ValueError, match="count >= 1"):
        sample_queries([10], 0, 5)
    with pytest.raises(ValueError, match="k >= 1"):
        sample_queries([10], 3, 5, k=0)
    with pytest.raises(ValueError, match="segment_len >= 1"):
        sample_queries([10], 3, 0)


def test_gathered_segments_are_the_right_rows():
    source = written()
    dataset = load_dataset("syn")
    episodes, starts = sample_queries([len(e) for e in source], 40, 4, k=2, seed=2)
    segments = gather_segments(dataset, episodes, starts, 4)
    obs, actions, rewards = segments["observations"], segments["actions"], segments["rewards"]
    assert obs.shape == (40, 2, 5, 3) and actions.shape == (40, 2, 4, 2) and rewards.shape == (40, 2, 4)
    np.testing.assert_array_equal(obs[..., 0].numpy(), np.broadcast_to(episodes[..., None], (40, 2, 5)))
    np.testing.assert_array_equal(obs[..., 1].numpy(), starts[..., None] + np.arange(5))
    for index in np.ndindex(episodes.shape):
        episode, start = source[episodes[index]], starts[index]
        np.testing.assert_array_equal(rewards[index].numpy(), episode.rewards[start : start + 4].astype(np.float32))
        np.testing.assert_array_equal(actions[index].numpy(), episode.actions[start : start + 4])
        np.testing.assert_array_equal(obs[index].numpy(), episode.observations[start : start + 5])


def test_step_scores_read_rewards_and_per_step_success():
    source = written()
    scores = StepScores.read("syn")
    for episode, reward, success in zip(source, scores.reward, scores.success):
        np.testing.assert_array_equal(reward, episode.rewards)
        np.testing.assert_array_equal(success, episode.infos["success"][1:])  # the info after each step
    with pytest.raises(DatasetError, match="runs past its episode"):
        scores.segments("reward", np.array([[3, 0]]), np.array([[1, 0]]), 4)  # episode 3 has 4 steps
    with pytest.raises(ValueError, match="'reward' or 'success'"):
        scores.get("return")


# --- labelling datasets ----------------------------------------------------------------------


def test_oracle_labels_agree_with_the_rewards():
    source = written()
    teacher = ScriptedTeacher()
    labels = label_dataset("syn", teacher, 200, 4, seed=1)
    assert len(labels) == 200 and labels.dataset == "syn" and labels.segment_len == 4
    assert agreement(labels, StepScores.read("syn")) == 1.0
    sums = segment_sums([e.rewards for e in source], labels.episodes, labels.starts, 4)
    np.testing.assert_array_equal(labels.preference, oracle_answer(sums))
    assert labels.info["teacher"] == asdict(teacher) and labels.info["skipped"] == 0
    assert labels.info["asked"] == 200 and labels.info["seed"] == 1
    save_preferences(labels, "oracle")
    assert load_preferences("syn", "oracle").info == labels.info  # beta = inf survives JSON


def test_skipping_teacher_records_what_it_skipped():
    source = written()
    teacher = ScriptedTeacher.preset("skip", eps=0.9)
    labels = label_dataset("syn", teacher, 300, 4, seed=2)
    skipped = labels.info["skipped"]
    assert 0 < skipped < 300 and len(labels) == 300 - skipped
    lengths = [len(e) for e in source]
    episodes, starts = sample_queries(lengths, 300, 4, seed=2)  # the same draw
    sums = segment_sums([e.rewards for e in source], episodes, starts, 4)
    scale = np.mean([e.rewards.sum() * 4 / len(e) for e in source])
    assert labels.info["threshold_scale"] == pytest.approx(scale)
    assert skipped == int((sums.max(1) <= 0.9 * scale).sum())
    assert agreement(labels, StepScores.read("syn")) == 1.0
    again = label_dataset("syn", teacher, 300, 4, seed=2)
    np.testing.assert_array_equal(again.episodes, labels.episodes)


def test_noisy_labels_repeat_with_the_seed_and_mostly_agree():
    written()
    teacher = ScriptedTeacher.preset("noisy", beta=5.0)
    a = label_dataset("syn", teacher, 300, 4, seed=3)
    b = label_dataset("syn", teacher, 300, 4, seed=3)
    np.testing.assert_array_equal(a.preference, b.preference)
    assert 0.7 < agreement(a, StepScores.read("syn")) < 1.0


def test_labels_by_success_and_kwise_rankings():
    source = written()
    labels = label_dataset("syn", ScriptedTeacher(score="success"), 200, 4, seed=4)
    success = [e.infos["success"][1:] for e in source]
    sums = segment_sums(success, labels.episodes, labels.starts, 4)
    np.testing.assert_array_equal(labels.preference, oracle_answer(sums))
    assert (labels.preference == 0.5).any()  # success counts tie often
    assert agreement(labels, StepScores.read("syn"), score="success") == 1.0
    ranked = label_dataset("syn", ScriptedTeacher(), 100, 4, k=3, seed=5)
    assert ranked.preference is None and ranked.ranking.shape == (100, 3)
    assert agreement(ranked, StepScores.read("syn")) == 1.0


def test_success_scoring_needs_success_infos():
    written(success=False)
    with pytest.raises(DatasetError, match="no 'success' info.*'reward'"):
        label_dataset("syn", ScriptedTeacher.preset("oracle", score="success"), 20, 4)


# --- reward models -------------------------------------------------------------------------

TINY = dict(members=2, hidden_dims=(32,), batch_size=32, steps=300, lr=1e-3, output="linear")


@pytest.fixture(scope="module")
def learned():
    """A reward model fitted to oracle labels where the true reward is the third feature."""
    episodes = synthetic(lengths=[50] * 30, low=-1.0, seed=10)
    dataset = Dataset(episodes)
    scores = StepScores([e.rewards for e in episodes], None)
    labels = label_dataset("learned", ScriptedTeacher(), 1000, 5, seed=0, step_scores=scores)
    train, held_out = labels.split(0.25)
    model, metrics = fit_reward_model(dataset, train, RewardModelConfig(inputs="state", **TINY))
    return SimpleNamespace(episodes=episodes, dataset=dataset, scores=scores, train=train, held_out=held_out,
                           model=model, metrics=metrics)  # fmt: skip


def test_reward_model_learns_the_reward_from_oracle_labels(learned):
    assert label_accuracy(learned.model, learned.dataset, learned.held_out) > 0.9
    assert learned.metrics["train_accuracy"] > 0.9 and learned.metrics["kl"] == 0.0
    assert math.isfinite(learned.metrics["loss"])
    steps = learned.dataset._all_steps
    predicted = learned.model.rewards(learned.dataset.observations[steps], None)
    true = learned.dataset.rewards[steps]
    assert np.corrcoef(predicted.numpy(), true.numpy())[0, 1] > 0.9


@pytest.mark.parametrize("inputs, gaussian", [("state_action", False), ("state", True)])
def test_reward_model_variants_learn(learned, inputs, gaussian):
    config = RewardModelConfig(inputs=inputs, gaussian=gaussian, **TINY)
    model, metrics = fit_reward_model(learned.dataset, learned.train, config, seed=1)
    assert label_accuracy(model, learned.dataset, learned.held_out) > 0.9
    assert math.isfinite(metrics["kl"]) and math.isfinite(metrics["loss"])
    if gaussian:
        assert metrics["kl"] > 0  # σ is learned, not pinned to the prior
        mean, std = model.heads(learned.dataset.observations[:10], None)
        assert mean.shape == std.shape == (2, 10) and (std > 0).all()


def test_kwise_rankings_train_with_plackett_luce(learned, monkeypatch):
    calls = []
    original = models.plackett_luce_loss
    monkeypatch.setattr(models, "plackett_luce_loss", lambda *args: calls.append(1) or original(*args))
    ranked = label_dataset("learned", ScriptedTeacher(), 500, 5, k=3, seed=1, step_scores=learned.scores)
    train, held_out = ranked.split(0.25)
    model, metrics = fit_reward_model(learned.dataset, train, RewardModelConfig(inputs="state", **TINY))
    assert len(calls) == TINY["steps"]
    assert label_accuracy(model, learned.dataset, held_out) > 0.9  # judged on the implied pairs


def test_relabel_puts_model_rewards_into_a_loaded_dataset(learned):
    written(low=-1.0)
    dataset = load_dataset("syn")
    relabel(dataset, learned.model)
    steps = dataset._all_steps
    expected = learned.model.rewards(dataset.observations[steps], None)
    torch.testing.assert_close(dataset.rewards[steps], expected)
    assert torch.all(dataset.rewards[dataset.episode_ends] == 0)  # padding rows untouched
    assert not torch.allclose(dataset.rewards[steps], load_dataset("syn").rewards[steps])


def test_relabel_dataset_writes_model_rewards_and_keeps_the_true_ones(learned):
    source = written(low=-1.0)
    assert relabel_dataset("syn", learned.model, "syn-learned") == "syn-learned"
    relabelled = list(read_episodes("syn-learned"))
    assert len(relabelled) == len(source)
    for before, after in zip(source, relabelled):
        obs = torch.as_tensor(before.observations[:-1])
        np.testing.assert_allclose(after.rewards, learned.model.rewards(obs, None).numpy(), rtol=1e-6)
        np.testing.assert_array_equal(after.infos["true_reward"], before.rewards)
        np.testing.assert_array_equal(after.infos["success"], before.infos["success"])
        np.testing.assert_array_equal(after.observations, before.observations)
        np.testing.assert_array_equal(after.actions, before.actions)
    with pytest.raises(DatasetError, match="already exists"):
        relabel_dataset("syn", learned.model, "syn-learned")


def test_iql_reads_learned_rewards_unscaled_and_env_rewards_scaled_by_returns(learned):
    from embodied.algos.iql import IQL, IQLConfig

    written(low=-1.0)
    relabel_dataset("syn", learned.model, "syn-learned")
    env_rewards, copied, in_memory = load_dataset("syn"), load_dataset("syn-learned"), load_dataset("syn")
    relabel(in_memory, learned.model)
    assert (env_rewards.learned_rewards, copied.learned_rewards, in_memory.learned_rewards) == (False, True, True)
    assert not Dataset(synthetic()).learned_rewards

    def multiplier(dataset, scale):
        agent = IQL(IQLConfig(reward_scale=scale, hidden_dims=(8,)), spaces()["observation_space"],
                    spaces()["action_space"], "cpu")  # fmt: skip
        agent.prepare(dataset, 10)
        return float(agent.reward_multiplier)

    returns = env_rewards.episode_returns()
    by_returns = 1000.0 / float(returns.max() - returns.min())
    assert multiplier(env_rewards, "auto") == pytest.approx(by_returns)
    assert multiplier(copied, "auto") == multiplier(in_memory, "auto") == 1.0
    assert multiplier(copied, "returns") != 1.0 and multiplier(env_rewards, "none") == 1.0
    with pytest.raises(ValueError, match="reward_scale must be 'auto', 'returns' or 'none'"):
        multiplier(copied, "log-odds")


def test_state_action_models_refuse_action_free_data(learned, minari_root):
    episodes = strip_actions(synthetic(lengths=[20] * 4), fraction=0.5, seed=0)
    write_dataset("semi", episodes, **spaces())
    dataset = load_dataset("semi")
    labels = label_dataset("semi", ScriptedTeacher(), 60, 5, seed=0)
    assert any(not episodes[e].has_actions for e in labels.episodes.ravel())
    config = RewardModelConfig(members=2, hidden_dims=(8,), batch_size=8, steps=5)
    with pytest.raises(ValueError, match="some labelled segments have no actions; use inputs='state'"):
        fit_reward_model(dataset, labels, config)
    state_model, _ = fit_reward_model(dataset, labels, RewardModelConfig(**{**asdict(config), "inputs": "state"}))
    relabel(dataset, state_model)  # an r(s) model relabels every step
    assert torch.isfinite(dataset.rewards).all()
    action_model = RewardModel(config, 3, 2)
    with pytest.raises(ValueError, match="action-free steps cannot be relabelled"):
        relabel(dataset, action_model)
    with pytest.raises(ValueError, match="action-free episode cannot be relabelled"):
        relabel_dataset("semi", action_model, "semi-out")
    assert not (minari_root / "embodied" / "semi-out-v0").exists()  # nothing half-written
    with pytest.raises(ValueError, match="no labelled queries"):
        fit_reward_model(dataset, labels.subset(np.zeros(len(labels), bool)), config)


def test_bad_reward_model_config_is_rejected():
    with pytest.raises(ValueError, match="inputs must be state_action|state"):
        RewardModel(RewardModelConfig(inputs="pixels"), 3, 2)
    with pytest.raises(ValueError, match="'sigmoid'"):
        RewardModel(RewardModelConfig(output="sigmoid"), 3, 2)


def test_saved_reward_models_give_identical_rewards(learned, tmp_path):
    path = tmp_path / "models" / "reward.pt"
    save_reward_model(learned.model, path, extra={"labels": "oracle"})
    assert os.listdir(path.parent) == ["reward.pt"]  # no temporary left
    back = load_reward_model(path)
    assert back.config == learned.model.config and not back.training
    obs = learned.dataset.observations[learned.dataset._all_steps]
    assert torch.equal(back.rewards(obs, None), learned.model.rewards(obs, None))
    assert torch.load(path, weights_only=True)["extra"] == {"labels": "oracle"}
    # A Gaussian r(s, a) model with a tanh head round-trips too.
    torch.manual_seed(0)
    gaussian = RewardModel(RewardModelConfig(members=3, hidden_dims=(16, 8), gaussian=True), 3, 2)
    gaussian.normalizer.fit(obs)
    save_reward_model(gaussian, tmp_path / "gaussian.pt")
    back = load_reward_model(tmp_path / "gaussian.pt")
    actions = learned.dataset.actions[learned.dataset._all_steps]
    assert back.config.hidden_dims == (16, 8)
    for mine, theirs in zip(gaussian.heads(obs, actions), back.heads(obs, actions)):
        assert torch.equal(mine, theirs)


def test_loading_a_missing_or_foreign_reward_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"reward model .*absent\.pt does not exist"):
        load_reward_model(tmp_path / "absent.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a reward model at all")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    model = RewardModel(RewardModelConfig(members=2, hidden_dims=(8,)), 3, 2)
    save_reward_model(model, tmp_path / "whole.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:200])
    for name in ("garbage.pt", "foreign.pt", "truncated.pt"):
        with pytest.raises(ValueError, match=rf"{name}: not a reward model saved by embodied"):
            load_reward_model(tmp_path / name)

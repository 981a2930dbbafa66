"""Scripted preference teachers of the B-Pref family (Lee et al. 2021, "B-Pref: Benchmarking
Preference-Based Reinforcement Learning"; rll-research/BPref ``reward_model.get_label``).

A teacher scores each segment by its (optionally myopic) sum of a per-step quantity, the
env's reward or its success flag, and then answers like one of B-Pref's simulated humans:

- **oracle**: prefers the higher score (β = ∞).
- **noisy**: Boltzmann-rational, P(σ¹ ≻ σ⁰) = σ(β (S¹ − S⁰)) (B-Pref: β = 1).
- **mistake**: the oracle's answer flipped with probability ε (B-Pref: 0.1).
- **skip**: no answer when every segment scores below ε × the average segment score
  of the dataset (B-Pref's ``teacher_thres_skip``; 0.1). Skipped queries are dropped.
- **equal**: "equally preferable" (0.5) when the scores differ by less than
  ε × the average segment score (B-Pref's ``teacher_thres_equal``; 0.1).
- **myopic**: step t of an L-step segment weighs γ^(L−1−t), so later steps count more
  (B-Pref: γ = 0.9).

The parameters combine as in B-Pref (a noisy, myopic teacher is allowed); unlike B-Pref,
the skip and equal thresholds compare the myopic scores when γ < 1 (B-Pref compares
undiscounted sums there), so one teacher sees one score per segment. K-wise queries
get a ranking: oracle sorts by score; a noisy teacher samples a Plackett-Luce ranking with
the same β (Gumbel-max); a mistaken one returns a uniformly random ranking with
probability ε; skip applies to the best segment; "equal" is defined for pairs only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from embodied.data.preferences import Preferences, StepScores, sample_queries

#: B-Pref's teachers as parameter presets; each kind's parameter and its paper default.
KINDS = {
    "oracle": {},
    "noisy": {"beta": 1.0},
    "mistake": {"mistake": 0.1},
    "skip": {"skip": 0.1},
    "equal": {"equal": 0.1},
    "myopic": {"gamma": 0.9},
}


@dataclass
class ScriptedTeacher:
    """A B-Pref simulated teacher; the defaults are the oracle."""

    beta: float = math.inf  # Boltzmann rationality (inf: always the better segment)
    gamma: float = 1.0  # myopic discount of earlier steps (1: none)
    mistake: float = 0.0  # ε: probability of a flipped (pairs) or random (K-wise) answer
    skip: float = 0.0  # ε: skip when every segment scores below ε × mean segment score
    equal: float = 0.0  # ε: answer 0.5 when scores differ by less than ε × mean segment score
    score: str = "reward"  # per-step quantity: "reward" or "success"

    def __post_init__(self) -> None:
        checks = {
            "beta": self.beta > 0, "gamma": 0 < self.gamma <= 1, "mistake": 0 <= self.mistake <= 1,
            "skip": self.skip >= 0, "equal": self.equal >= 0, "score": self.score in ("reward", "success"),
        }  # fmt: skip
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"teacher: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)} "
                             "(beta > 0, 0 < gamma <= 1, 0 <= mistake <= 1, skip/equal >= 0, "
                             "score reward|success)")  # fmt: skip

    @classmethod
    def preset(cls, kind: str, eps: float | None = None, beta: float | None = None, gamma: float | None = None,
               score: str = "reward") -> "ScriptedTeacher":  # fmt: skip
        """B-Pref's teacher ``kind`` with its parameter (``eps`` for mistake/skip/equal)."""
        if kind not in KINDS:
            raise ValueError(f"unknown teacher {kind!r}; valid: {', '.join(KINDS)}")
        params = dict(KINDS[kind])
        if eps is not None:
            key = {"mistake": "mistake", "skip": "skip", "equal": "equal"}.get(kind)
            if key is None:
                raise ValueError(f"--eps applies to the mistake, skip and equal teachers, not {kind!r}")
            params[key] = eps
        if beta is not None:
            params["beta"] = beta
        if gamma is not None:
            params["gamma"] = gamma
        return cls(score=score, **params)

    def segment_scores(self, steps: np.ndarray) -> np.ndarray:
        """(..., L) per-step values -> (...) myopically discounted sums."""
        length = steps.shape[-1]
        weights = self.gamma ** np.arange(length - 1, -1, -1, dtype=np.float64)
        return steps @ weights

    def label(self, scores: np.ndarray, scale: float, rng: np.random.Generator):
        """Answer queries of segment scores (N, K).

        Returns ``(answer, kept)``: for pairs, P(first preferred) per kept query; for
        K-wise, rankings (best first); ``kept`` is the boolean mask of unskipped queries.
        ``scale`` is the mean segment score the skip and equal thresholds are relative to."""
        n, k = scores.shape
        kept = np.ones(n, bool)
        if self.skip > 0:
            kept = scores.max(axis=1) > self.skip * scale
        if k == 2:
            difference = scores[:, 0] - scores[:, 1]
            if math.isinf(self.beta):
                answer = np.where(difference > 0, 1.0, np.where(difference < 0, 0.0, 0.5))
            else:
                first = 1.0 / (1.0 + np.exp(-np.clip(self.beta * difference, -60, 60)))
                answer = (rng.random(n) < first).astype(np.float64)
            if self.mistake > 0:
                flip = rng.random(n) < self.mistake
                answer = np.where(flip, 1.0 - answer, answer)
            if self.equal > 0:
                answer = np.where(np.abs(difference) < self.equal * scale, 0.5, answer)
            return answer.astype(np.float32)[kept], kept
        if self.equal > 0:
            raise ValueError("the equal teacher is defined for pairs only (K = 2)")
        noise = 0.0 if math.isinf(self.beta) else rng.gumbel(size=scores.shape) / self.beta
        ranking = np.argsort(-(scores + noise), axis=1, kind="stable")
        if self.mistake > 0:
            random_rankings = np.argsort(rng.random(scores.shape), axis=1)
            flip = rng.random(n) < self.mistake
            ranking = np.where(flip[:, None], random_rankings, ranking)
        return ranking[kept], kept


def threshold_scale(step_scores: StepScores, score: str, segment_len: int) -> float:
    """B-Pref's margin for the skip and equal thresholds: the mean score of a segment-long
    stretch of an episode (mean episode score × L / mean length)."""
    per_episode = np.array([r.sum() * segment_len / len(r) for r in step_scores.get(score)])
    return abs(float(per_episode.mean())) or 1.0


def label_dataset(dataset: str, teacher: ScriptedTeacher, queries: int, segment_len: int, k: int = 2,
                  seed: int = 0, step_scores: StepScores | None = None) -> Preferences:  # fmt: skip
    """Draw ``queries`` uniform queries of ``k`` segments from ``dataset`` and label them."""
    scores_source = step_scores or StepScores.read(dataset)
    lengths = np.array([len(r) for r in scores_source.reward])
    episodes, starts = sample_queries(lengths, queries, segment_len, k, seed)
    per_step = scores_source.segments(teacher.score, episodes, starts, segment_len)
    scores = teacher.segment_scores(per_step)
    scale = threshold_scale(scores_source, teacher.score, segment_len)
    answer, kept = teacher.label(scores, scale, np.random.default_rng([seed, 1]))
    info = {"teacher": asdict(teacher), "seed": seed, "asked": queries, "skipped": int((~kept).sum()),
            "threshold_scale": scale}  # fmt: skip
    labels = {"preference": answer} if k == 2 else {"ranking": answer}
    return Preferences(dataset, segment_len, episodes[kept], starts[kept], info=info, **labels)


def agreement(preferences: Preferences, step_scores: StepScores, score: str = "reward") -> float:
    """Share of pairwise labels (hard, ties excluded) that agree with the oracle on ``score``."""
    pairs = preferences.pairs()
    truth = step_scores.segments(score, pairs.episodes, pairs.starts, pairs.segment_len).sum(-1)
    decided = (pairs.preference != 0.5) & (truth[:, 0] != truth[:, 1])
    if not decided.any():
        return float("nan")
    return float(((pairs.preference[decided] > 0.5) == (truth[decided, 0] > truth[decided, 1])).mean())

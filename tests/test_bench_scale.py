"""The scale benchmark's world-model timing: RePo and Dreamer agents at the RePo benchmark's size."""

import math

import torch

from embodied.bench import scale


def test_world_model_updates_are_timed_and_learn():
    updates = scale.world_model_agents("cpu", compile_too=False)
    assert set(updates) == {("RePo", "eager"), ("Dreamer", "eager")}
    from embodied.bench.repo import speed_agent

    agent, update = speed_agent("nav/open-v0", "repo")
    before = [p.detach().clone() for p in agent.parameters()]
    rate = scale.calls_per_second(update, 1, "cpu")
    assert 0 < rate < math.inf
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.parameters()))

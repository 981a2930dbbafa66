"""Several IQL seeds in one vectorised update: the same numbers as separate agents."""

import copy

import numpy as np
import pytest
import torch

import embodied
from embodied.algos.iql import IQL, IQLConfig
from embodied.algos.seeds import VmappedIQL
from embodied.data.collect import collect

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from embodied.data import load_dataset

    root = tmp_path_factory.mktemp("datasets")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        collect("metaworld/reach-v3", 4, name="seeds-reach", quality="mixed", progress=False,
                env_options={"max_episode_steps": 30})  # fmt: skip
        yield load_dataset("seeds-reach")


def agents(count: int, **config) -> list[IQL]:
    env = embodied.make("metaworld/reach-v3")
    made = []
    for seed in range(count):
        torch.manual_seed(seed)
        made.append(IQL(IQLConfig(hidden_dims=(32, 32), **config), env.observation_space, env.action_space, "cpu"))
    return made


def test_vmapped_seeds_match_separate_agents(dataset):
    separate = agents(3)
    together = VmappedIQL([copy.deepcopy(a) for a in separate])
    steps = 6
    for agent in separate:
        agent.prepare(dataset, steps)
    together.prepare(dataset, steps)
    generators = [torch.Generator().manual_seed(100 + k) for k in range(3)]
    for step in range(1, steps + 1):
        batch = together.sample(dataset, 16, generators)
        metrics = together.update(batch)
        for k, agent in enumerate(separate):
            from embodied.data.dataset import Batch

            single = Batch(**{name: value[k] for name, value in batch.items()})
            expected = agent.update(single, step)
            torch.testing.assert_close(metrics["critic_loss"][k], expected["critic_loss"], rtol=1e-4, atol=1e-5)
    for k, (agent, unstacked) in enumerate(zip(separate, together.unstack())):
        for (name, a), (_, b) in zip(agent.named_parameters(), unstacked.named_parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"seed {k} {name}")
        for a, b in zip(agent.target_critic.parameters(), unstacked.target_critic.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        obs = dataset.observations[:5]
        np.testing.assert_allclose(agent.act(obs.numpy()), unstacked.act(obs.numpy()), rtol=1e-4, atol=1e-5)
    # the seeds stay different
    assert not torch.equal(together.params["value.0.weight"][0], together.params["value.0.weight"][1])


def test_what_it_refuses():
    with pytest.raises(TypeError, match="IQL agents"):
        VmappedIQL([])
    with pytest.raises(ValueError, match="one config"):
        VmappedIQL(agents(1) + agents(1, expectile=0.9))
    with pytest.raises(ValueError, match="dropout"):
        VmappedIQL(agents(2, dropout=0.1))

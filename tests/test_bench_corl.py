"""The CORL IQL speed harness: loads a CORL-style script whose entry-point imports are not
installed, builds its trainer as CORL's train() does, times updates, and says clearly when
the file is missing or is not CORL's IQL. CORL's own code is not shipped, so the script
here is a small stand-in with the same names and the same top-of-file imports."""

import sys
import textwrap

import h5py
import numpy as np
import pytest

from embodied.bench import corl_iql
from embodied.bench.iql_speed import corl, script_rate

STAND_IN = textwrap.dedent('''
    import d4rl
    import gym
    import numpy as np
    import pyrallis
    import torch
    import wandb

    def compute_mean_std(states, eps):
        return states.mean(0), states.std(0) + eps

    def normalize_states(states, mean, std):
        return (states - mean) / std

    class ReplayBuffer:
        def __init__(self, state_dim, action_dim, buffer_size, device="cpu"):
            self.device = device

        def load_d4rl_dataset(self, data):
            print("Dataset size:", len(data["observations"]))
            self.data = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in data.items()}

        def sample(self, batch_size):
            i = torch.as_tensor(np.random.randint(0, len(self.data["observations"]), batch_size))
            return [self.data[k][i] for k in ("observations", "actions", "rewards", "next_observations", "terminals")]

    def mlp(n_in, n_out):
        return torch.nn.Sequential(torch.nn.Linear(n_in, 16), torch.nn.ReLU(), torch.nn.Linear(16, n_out))

    class TwinQ(torch.nn.Module):
        def __init__(self, state_dim, action_dim):
            super().__init__()
            self.q = mlp(state_dim + action_dim, 2)

    class ValueFunction(torch.nn.Module):
        def __init__(self, state_dim):
            super().__init__()
            self.v = mlp(state_dim, 1)

    class GaussianPolicy(torch.nn.Module):
        def __init__(self, state_dim, act_dim, max_action):
            super().__init__()
            self.net = mlp(state_dim, act_dim)

    class ImplicitQLearning:
        def __init__(self, max_action, actor, actor_optimizer, q_network, q_optimizer, v_network, v_optimizer,
                     iql_tau, beta, max_steps, discount, tau, device):
            self.parts = [(actor.net, actor_optimizer), (q_network.q, q_optimizer), (v_network.v, v_optimizer)]
            self.total_it = 0

        def train(self, batch):
            observations, actions, rewards, next_observations, dones = batch
            for net, optimizer in self.parts:
                inputs = observations if net[0].in_features == observations.shape[1] else torch.cat(
                    [observations, actions], 1)
                loss = net(inputs).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            self.total_it += 1
            return {}

    def wrap_env(env: gym.Env) -> gym.Env:
        return env

    @pyrallis.wrap()
    def train(config):
        wandb.init()
''')


@pytest.fixture
def files(tmp_path):
    script = tmp_path / "iql.py"
    script.write_text(STAND_IN)
    data = tmp_path / "d4rl.hdf5"
    rng = np.random.default_rng(0)
    with h5py.File(data, "w") as handle:
        for key, shape in (("observations", (64, 5)), ("next_observations", (64, 5)), ("actions", (64, 2)),
                           ("rewards", (64,)), ("terminals", (64,))):  # fmt: skip
            handle[key] = rng.normal(size=shape).astype(np.float32)
    return script, data


def test_times_a_corl_style_script_without_its_entry_point_packages(files):
    script, data = files
    before = set(sys.modules)
    module = corl_iql.load_corl(script)
    assert not {"d4rl", "gym", "pyrallis", "wandb"} & (set(sys.modules) - before)  # no stand-in left behind
    buffer, trainer = corl_iql.build(module, _read(data), "cpu")
    trainer.train(buffer.sample(8))
    assert trainer.total_it == 1
    assert corl(script, data, updates=3, device="cpu", threads=1) > 0  # the subprocess path the benchmark runs


def _read(path):
    with h5py.File(path, "r") as handle:
        return {key: handle[key][()] for key in handle}


def test_missing_or_wrong_scripts_are_clear_errors(files, tmp_path):
    script, data = files
    with pytest.raises(FileNotFoundError, match="CORL's algorithms/offline/iql.py"):
        corl_iql.load_corl(tmp_path / "nowhere.py")
    other = tmp_path / "other.py"
    other.write_text("import torch\nclass TwinQ: pass\n")
    with pytest.raises(ValueError, match="not CORL's IQL script: it has no ReplayBuffer"):
        corl_iql.load_corl(other)
    with pytest.raises(RuntimeError, match="(?s)corl_iql.py failed.*not CORL's IQL script"):
        script_rate(sys.executable, "corl_iql.py", other, data, "--updates", 1)

import os
import warnings

# Offscreen MuJoCo rendering on machines without a display (software EGL on CPU).
os.environ.setdefault("MUJOCO_GL", "egl")
warnings.filterwarnings("ignore", message=".*AdroitHand.*")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet_gymnasium_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def train_killed_at_env_step(config, step: int, monkeypatch) -> None:
    """Run an online training ``config`` that is killed (KeyboardInterrupt) at env step ``step``."""
    from embodied.run.fit import train
    from embodied.run.online import StepTracker

    original = StepTracker.__call__

    def killed(self, reward, done, info):
        if self.step == step:
            raise KeyboardInterrupt("killed")
        original(self, reward, done, info)

    monkeypatch.setattr(StepTracker, "__call__", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.setattr(StepTracker, "__call__", original)


@pytest.fixture
def one_torch_thread():
    """Tiny networks on a shared 2-core machine: more torch threads only add contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

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

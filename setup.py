"""Build hook: ship the top-level ``envs/`` data directory inside the wheel.

Everything else about the package is in ``pyproject.toml``. ``envs/`` (the per-task
descriptions an LLM reads, the reward-program library, ...) stays at the top of the
repository, as DESIGN.md lays it out; a wheel carries a copy as ``embodied/_envs/``, and
:func:`embodied.rewards.text2reward.describe.envs_root` reads whichever exists. Editable
installs (``pip install -e .``) read the checkout's ``envs/`` directly, so nothing is
copied for them. (``package-dir`` cannot map a directory outside ``embodied/`` into it
while packages are discovered with ``find``, and a symlink would not survive every
platform; hence this hook.)
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithEnvData(build_py):
    """``build_py`` that also copies ``envs/`` to ``embodied/_envs/`` in the build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        source = ROOT / "envs"
        target = Path(self.build_lib) / "embodied" / "_envs"
        for path in sorted(source.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".tmp"):
                destination = target / path.relative_to(source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)


setup(cmdclass={"build_py": BuildPyWithEnvData})

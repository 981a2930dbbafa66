"""embodied: classical and embodied reinforcement learning on Gymnasium envs.

Public API (small and stable)::

    import embodied
    env = embodied.make("metaworld/push-v3", obs="pixels", image_size=64)
    obs, info = env.reset(seed=0)
    envs = embodied.make_vec("metaworld/push-v3", num_envs=4, vectorization_mode="async")
    embodied.env_ids()          # every registered short id
"""

from embodied.envs import EnvOptionError, UnknownEnvError, env_ids, make, make_vec, register


def load(path, device: str = "cpu"):
    """The agent in a checkpoint file or run directory, rebuilt from the config it carries."""
    from embodied.run.checkpoint import load as load_checkpoint

    return load_checkpoint(path, device=device)


def load_dataset(name: str, device: str = "cpu", lazy_images: bool = False):
    """A local dataset as device tensors with samplers (see :mod:`embodied.data`)."""
    from embodied.data import load_dataset as load

    return load(name, device=device, lazy_images=lazy_images)


__version__ = "0.1.0"

register()

__all__ = [
    "EnvOptionError",
    "UnknownEnvError",
    "env_ids",
    "load",
    "load_dataset",
    "make",
    "make_vec",
    "register",
    "__version__",
]

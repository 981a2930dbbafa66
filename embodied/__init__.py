"""embodied: classical and embodied reinforcement learning on Gymnasium envs.

Public API (small and stable)::

    import embodied
    env = embodied.make("metaworld/push-v3", obs="pixels", image_size=64)
    obs, info = env.reset(seed=0)
    envs = embodied.make_vec("metaworld/push-v3", num_envs=4, vectorization_mode="async")
    embodied.env_ids()          # every registered short id
"""

from embodied.envs import EnvOptionError, UnknownEnvError, env_ids, make, make_vec, register

__version__ = "0.1.0"

register()

__all__ = ["EnvOptionError", "UnknownEnvError", "env_ids", "make", "make_vec", "register", "__version__"]

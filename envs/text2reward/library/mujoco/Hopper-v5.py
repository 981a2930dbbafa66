"""Reward program for mujoco/Hopper-v5, written by hand for the library.

Instruction: Hop forward as fast as possible without falling.
"""

import numpy as np


def compute_dense_reward(self, action, obs) -> float:
    torso = self.robot.torso
    # Forward speed is the goal; the torso's x velocity measures it.
    forward = torso.velocity_x
    # Staying upright: the torso high enough and not tilted much (rooty is its pitch).
    upright = torso.position_z > 0.7 and abs(self.robot.rooty.angle) < 0.2
    alive = 1.0 if upright else 0.0
    # A small torque penalty, so that speed is not bought with wild actions.
    effort = 1e-3 * np.square(action).sum()
    return float(forward + alive - effort)

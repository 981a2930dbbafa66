"""Reward program for mujoco/HalfCheetah-v5, written by hand for the library.

Instruction: Run forward as fast as possible.
"""

import numpy as np


def compute_dense_reward(self, action, obs) -> float:
    forward = self.robot.torso.velocity_x
    # Keep the torso from flipping over: its pitch is the rooty hinge angle.
    flipped = abs(self.robot.rooty.angle) > 1.2
    effort = 0.1 * np.square(action).sum()
    return float(forward - effort - (1.0 if flipped else 0.0))

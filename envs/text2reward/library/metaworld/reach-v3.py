"""Reward program for metaworld/reach-v3, written by hand for the library.

Instruction: Move the end-effector to the goal position.
"""

import numpy as np


def compute_dense_reward(self, action, obs) -> float:
    distance = np.linalg.norm(self.robot.ee_position - self.goal_position)
    # The linear term pulls from anywhere on the table; the Gaussian sharpens the last
    # few centimetres (the task counts as done within 5 cm).
    reward = -distance + np.exp(-((distance / 0.05) ** 2))
    # A little regularization keeps the motion smooth.
    return float(reward - 0.01 * np.square(action[:3]).sum())

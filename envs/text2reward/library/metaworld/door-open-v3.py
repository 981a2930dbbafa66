"""Reward program for metaworld/door-open-v3, written by hand for the library.

Instruction: Open the door by pulling its handle.
"""

import numpy as np


def compute_dense_reward(self, action, obs) -> float:
    hand = self.robot.ee_position
    handle = self.obj1.position
    hand_to_handle = np.linalg.norm(hand - handle)
    handle_to_goal = np.linalg.norm(handle - self.goal_position)

    reach = 1.0 - np.tanh(5.0 * hand_to_handle)
    # The door swings on a hinge: the handle's distance to its open position measures the swing.
    swing = 1.0 - np.tanh(5.0 * handle_to_goal)
    at_handle = hand_to_handle < 0.06
    reward = reach + (5.0 * swing if at_handle else swing)
    if abs(handle[0] - self.goal_position[0]) < 0.08:  # the task's success test: the handle's x
        reward += 10.0
    return float(reward - 0.01 * np.square(action[:3]).sum())

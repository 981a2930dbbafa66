"""Reward program for metaworld/window-open-v3, written by hand for the library.

Instruction: Slide the window open by pushing its handle.
"""

import numpy as np


def compute_dense_reward(self, action, obs) -> float:
    fingers = self.env.tcp_center
    handle = self.obj1.position
    fingers_to_handle = np.linalg.norm(fingers - handle)
    # The window slides along x; the goal is the handle's position when open.
    travel_left = abs(handle[0] - self.goal_position[0])

    reach = 1.0 - np.tanh(5.0 * fingers_to_handle)
    slide = 1.0 - np.tanh(10.0 * travel_left)
    at_handle = fingers_to_handle < 0.05
    reward = reach + (5.0 * slide if at_handle else slide)
    if travel_left < 0.05:  # the task's success radius
        reward += 10.0
    return float(reward)

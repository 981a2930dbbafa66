"""Reward program for metaworld/drawer-open-v3, written by hand for the library.

Instruction: Open the drawer by pulling its handle.
"""

import numpy as np


def compute_dense_reward(self, action, obs) -> float:
    hand = self.robot.ee_position
    handle = self.obj1.position
    hand_to_handle = np.linalg.norm(hand - handle)
    # The drawer slides along y only, so its progress is the handle's y distance to the goal.
    handle_to_goal = abs(handle[1] - self.goal_position[1])

    reach = 1.0 - np.tanh(5.0 * hand_to_handle)
    opening = 1.0 - np.tanh(10.0 * handle_to_goal)
    # Pulling only pays while the hand is at the handle, so the arm cannot be rewarded for
    # standing still next to a drawer that is already partly open.
    at_handle = hand_to_handle < 0.05
    reward = reach + (5.0 * opening if at_handle else opening)
    if handle_to_goal < 0.03:  # the task's success radius
        reward += 10.0
    return float(reward - 0.01 * np.square(action[:3]).sum())

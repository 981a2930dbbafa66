"""Reward program for metaworld/push-v3, written by hand for the library.

Instruction: Push the puck to the goal position.
"""

import numpy as np


def compute_dense_reward(self, action, obs) -> float:
    fingers = self.env.tcp_center  # between the fingertips: where the puck is held
    puck = self.obj1.position
    fingers_to_puck = np.linalg.norm(fingers - puck)
    puck_to_goal = np.linalg.norm(puck[:2] - self.goal_position[:2])  # on the table: x and y only

    # Stage 1: bring the fingers to the puck.
    reach = 1.0 - np.tanh(5.0 * fingers_to_puck)
    # Stage 2: hold it (fingers around it and closing), which makes pushing reliable.
    holding = fingers_to_puck < 0.03 and self.robot.gripper_openness < 0.8
    # Stage 3: move the puck to the goal; worth more than reaching, and most when held.
    progress = 1.0 - np.tanh(10.0 * puck_to_goal)
    reward = reach + (5.0 if holding else 2.0) * progress
    if puck_to_goal < 0.05:  # the task's success radius
        reward += 10.0
    return float(reward)

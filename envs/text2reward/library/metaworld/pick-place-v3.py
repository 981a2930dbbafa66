"""Reward program for metaworld/pick-place-v3, written by hand for the library.

Instruction: Pick up the puck and place it at the goal position.
"""

import numpy as np


def compute_dense_reward(self, action, obs) -> float:
    fingers = self.env.tcp_center
    puck = self.obj1.position
    goal = self.goal_position
    fingers_to_puck = np.linalg.norm(fingers - puck)
    puck_to_goal = np.linalg.norm(puck - goal)
    lifted = puck[2] > 0.04  # the puck rests at about z = 0.02

    # Stage 1: reach the puck with the gripper open.
    reward = 1.0 - np.tanh(5.0 * fingers_to_puck)
    near = fingers_to_puck < 0.02
    if near:
        # Stage 2: close the fingers on it.
        reward += 1.0 - self.robot.gripper_openness
    if near and lifted:
        # Stage 3: carry it, in the air, to the goal.
        reward += 2.0 + 5.0 * (1.0 - np.tanh(10.0 * puck_to_goal))
    if puck_to_goal < 0.07:  # the task's success radius
        reward += 10.0
    return float(reward)

"""Reward program for metaworld/button-press-v3, written by hand for the library.

Instruction: Press the button in, along y.
"""

import numpy as np


def compute_dense_reward(self, action, obs) -> float:
    fingers = self.env.tcp_center
    button = self.obj1.position
    fingers_to_button = np.linalg.norm(fingers - button)
    # The button moves along y only; the goal is its fully pressed position.
    travel_left = abs(button[1] - self.goal_position[1])

    reach = 1.0 - np.tanh(5.0 * fingers_to_button)
    press = 1.0 - np.tanh(20.0 * travel_left)
    at_button = fingers_to_button < 0.05
    reward = reach
    if at_button:
        # A closed gripper presses with its fingertips together, like a single finger.
        reward += 0.5 * (1.0 - self.robot.gripper_openness) + 5.0 * press
    if travel_left < 0.02:  # the task's success radius
        reward += 10.0
    return float(reward)

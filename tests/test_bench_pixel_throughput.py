"""The pixel-throughput benchmark: every variant draws a real frame and the table says so."""

import csv

import gymnasium as gym
import numpy as np
import pytest

from embodied.bench import pixel_throughput


def test_pixel_throughput_table_has_every_variant(tmp_path):
    out = tmp_path / "pixels.md"
    pixel_throughput.main(["--envs", "mujoco/Reacher-v5", "--image-size", "16", "--rounds", "2",
                           "--seconds", "0.05", "--out", str(out)])  # fmt: skip
    text = out.read_text()
    assert "| mujoco/Reacher-v5 |" in text and "fast / Gymnasium" in text and "--image-size 16" in text
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [row["variant"] for row in rows] == list(pixel_throughput.VARIANTS)
    assert all(float(row["median_steps_per_s"]) > 0 and len(row["per_round"].split()) == 2 for row in rows)


def test_a_blank_frame_is_refused(monkeypatch):
    make = pixel_throughput.make

    def blank(variant, env_id, image_size):  # a renderer that hands out black frames, as a broken GL context does
        env = make(variant, env_id, image_size)
        if variant == "embodied fast":
            env = gym.wrappers.TransformObservation(env, np.zeros_like, env.observation_space)
        return env

    monkeypatch.setattr(pixel_throughput, "make", blank)
    with pytest.raises(RuntimeError, match="looks blank"):
        pixel_throughput.run(["mujoco/Reacher-v5"], 16, 1, 0.05)

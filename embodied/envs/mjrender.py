"""MuJoCo rendering shared by the suites: the ``render_quality`` option (``mujoco/``,
``metaworld/``, ``robomimic/``), and every env Gymnasium's MuJoCo renderer draws (``mujoco/``,
``metaworld/``) drawing in its own GL context (robomimic's envs see to theirs themselves).

:func:`set_render_quality` -- "full" renders the scene as its authors lit it; "fast" turns off
shadows, reflections and multisample anti-aliasing. The bodies, colours and camera stay (edges go
jagged, shadows go, a reflecting floor shows its bare texture) and physics is untouched, while a
software renderer (Mesa, on a machine without a GPU) spends most of a frame on those three:
at 32x32, Walker2d-v5 renders ~22x faster and Meta-World ~10x (``results/pixel_throughput.md``).
An agent trained on one quality sees the other as a shifted visual domain: keep them the same.

:func:`own_gl_context` -- Gymnasium's renderer makes its GL context current only when it creates
it. With several MuJoCo envs in one process (Meta-World's MT10 holds ten; a trainer holds a
training and an evaluation env), each env would then draw through the newest context, whose
meshes and textures are another model's (garbled frames), or through none once that env is
closed (black frames), and freeing one env's GPU objects would free another's.
"""

from __future__ import annotations

from typing import Any

import mujoco
from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

from embodied.envs.wrappers import EnvOptionError

RENDER_QUALITIES = ("full", "fast")


def check_render_quality(quality: str, suite: str) -> None:
    if quality not in RENDER_QUALITIES:
        raise EnvOptionError(
            f"render_quality for {suite} envs must be one of {', '.join(RENDER_QUALITIES)}; got {quality!r}"
        )


def set_render_quality(model: Any, quality: str, suite: str) -> None:
    """Apply ``render_quality`` to an ``MjModel`` before anything renders it (the anti-aliasing
    setting is read when the renderer's GL buffers are made)."""
    check_render_quality(quality, suite)
    if quality == "fast":
        model.vis.quality.offsamples = 0
        model.light_castshadow[:] = 0
        model.mat_reflectance[:] = 0


class OwnContextRenderer(MujocoRenderer):
    """Gymnasium's ``MujocoRenderer``, drawing and freeing in its own GL context (module docstring)."""

    def render(self, render_mode: str | None):
        viewer = self._viewers.get(render_mode)
        if viewer is not None:
            viewer.make_context_current()
        return super().render(render_mode)

    def close(self):
        for viewer in self._viewers.values():
            if isinstance(getattr(viewer, "con", None), mujoco.MjrContext):
                viewer.make_context_current()
                viewer.con.free()  # its textures and buffers, in its own context: not another env's
        super().close()


def own_gl_context(renderer: MujocoRenderer) -> None:
    """Make an env's renderer an :class:`OwnContextRenderer` (before or after it has drawn)."""
    if not isinstance(renderer, MujocoRenderer):
        raise TypeError(f"own_gl_context takes Gymnasium's MujocoRenderer, got {type(renderer).__name__}")
    renderer.__class__ = OwnContextRenderer

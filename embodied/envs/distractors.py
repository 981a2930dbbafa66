"""Seedable visual distractors on pixel observations (``distractors=`` in ``embodied.make``).

Task-irrelevant visual variation is how RePo (Zhu et al. 2023) and the distracting-
control literature test whether a representation keeps only what matters for control:
the agent should act the same whatever the colours, the background or the moving junk
in the frame. :class:`Distractors` adds such variation to the ``"pixels"`` observation
(the whole ``Box`` for ``obs="pixels"``, the ``"pixels"`` entry for ``obs="state+pixels"``;
the ``"state"`` entry is never touched). The observation space is unchanged.

Kinds and their parameters (defaults in brackets):

``colors``
    Random colours, fixed for an episode. ``strength`` [1.0]: 0 keeps the original
    colours, 1 draws each colour uniformly at random; in between interpolates (an env's
    own ``recolor`` decides its strength itself). How:
    if the bare env has ``recolor(rng)`` (our navigation env) it is called at reset
    (and ``reset_colors()`` when the colours are removed); else if it has a MuJoCo
    model (``env.unwrapped.model``, or ``env.unwrapped.sim.model`` for Meta-World),
    every geom's RGB is redrawn (alpha kept, so invisible collision geoms stay
    invisible) and the original colours come back on ``close()`` or when the wrapper is
    disabled; else an image-space hue rotation with per-channel gain and offset.
    Model recolouring touches every geom, the robot and task objects included (as the
    Distracting Control Suite does); sky and lights keep theirs. It is free per step:
    the renderer draws the new colours.
``shapes``
    Moving coloured circles and squares drifting and bouncing off the frame's edges,
    drawn over everything. ``count`` [3]; ``min_size`` [0.1] and ``max_size`` [0.25]:
    diameter as a fraction of the shorter image side; ``max_speed`` [0.05]: fraction
    of the shorter side moved per step (each shape gets 50-100 % of it).
``video``
    A natural-video-like background: a temporally smooth, spatially correlated,
    coloured random field (a sum of ``waves`` [6] drifting plane waves of at most
    ``max_frequency`` [3.0] cycles per image, each with its own colour; phases move by
    up to ``speed`` [0.2] radians per step). Where the bare env offers
    ``background_mask()`` (True on background pixels of the last rendered frame) and
    ``use_mask`` [True], it replaces only the background; otherwise it is alpha-blended
    over the whole frame with weight ``alpha`` [0.5].
``noisy_tv``
    A patch of fresh uniform random pixels every step (a "noisy TV"), its side
    ``size`` [0.25] of the image side, at a position drawn per episode.

``spec`` is a kind (``"noisy_tv"``), a comma-separated string (``"colors,shapes"``), a
list of kinds, or a dict ``{kind: {param: value}}`` (``{"shapes": {"count": 5}}``).
Kinds are applied in the fixed order colors, video, shapes, noisy_tv (so shapes and the
noisy TV sit in front of the video background), whatever order the spec names them in.
An unknown kind or parameter, or a bad value, raises
:class:`~embodied.envs.wrappers.EnvOptionError`.

Seeding: the wrapper owns a ``np.random.Generator``. ``reset(seed=s)`` reseeds it from a
``SeedSequence`` of ``s`` with a spawn key of its own, so its stream is independent of
the env's (which Gymnasium seeds from ``s`` too) and the same seed with the same actions
gives identical distracted frames; a reset without a seed continues the stream.

``render()`` returns the last observation's frame as the agent saw it (distracted), so
videos show the agent's view; before the first observation it renders the bare env.

``enabled`` (default True) switches the distractors off and on, e.g. to evaluate a
policy trained with distractors on clean frames. Switching off restores the original
colours at once and passes frames through; switching on mid-episode draws a fresh set of
distractors at the next observation (new model colours show from the frame after it).

Added cost per 64x64 frame (``Distractors.observation`` on a ready frame, one core of
the 2-core CPU development machine): colors 0.09 ms in image space and nothing on a
MuJoCo model, shapes 0.13 ms, video 0.14 ms blended or 0.19 ms with a mask, noisy_tv
0.02 ms; all four together 0.48 ms. Rendering the frame costs far more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping, Sequence

import gymnasium as gym
import numpy as np

from embodied.envs.wrappers import EnvOptionError, closest, stream_rng


def _check_number(
    kind: str, name: str, value: Any, low: float, high: float, *, integer: bool = False, low_open: bool = False
) -> None:
    """Raise EnvOptionError unless ``value`` is a number (an int if ``integer``) in range."""
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    is_number = is_int or isinstance(value, (float, np.floating))
    in_range = is_number and math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if (integer and not is_int) or not in_range:
        what = "an integer" if integer else "a number"
        bracket = "(" if low_open else "["
        raise EnvOptionError(f"distractor {kind!r}: {name} must be {what} in {bracket}{low}, {high}], got {value!r}")


def _mujoco_model(bare_env: gym.Env) -> Any | None:
    """The MuJoCo model the env renders from, if any (Meta-World keeps its simulator as ``.sim``)."""
    for owner in (bare_env, getattr(bare_env, "sim", None)):
        model = getattr(owner, "model", None)
        rgba = getattr(model, "geom_rgba", None)
        if isinstance(rgba, np.ndarray) and rgba.ndim == 2 and rgba.shape[1] == 4:
            return model
    return None


class Distractor:
    """One kind of distractor. Subclasses are dataclasses whose fields are the kind's params."""

    kind: ClassVar[str]

    def start_episode(self, rng: np.random.Generator, frame_hw: tuple[int, int], bare_env: gym.Env) -> None:
        """Draw this episode's distractor (positions, colours, ...) from ``rng``."""

    def draw(self, frame: np.ndarray, rng: np.random.Generator, bare_env: gym.Env) -> None:
        """Distract ``frame`` (uint8, H×W×3, writable) in place, then advance one step."""

    def remove(self, bare_env: gym.Env) -> None:
        """Undo changes made to the env itself (only colours make any)."""


@dataclass(eq=False)
class Colors(Distractor):
    """Random colours per episode: the env's own recolor(), its MuJoCo model, or image space."""

    kind: ClassVar[str] = "colors"
    strength: float = 1.0

    # How colours are changed this episode: "env" (its recolor), "model" or "image".
    method: str | None = field(default=None, init=False, repr=False)
    _model: Any = field(default=None, init=False, repr=False)
    _original_rgba: np.ndarray | None = field(default=None, init=False, repr=False)
    _base_rgba: np.ndarray | None = field(default=None, init=False, repr=False)
    _matrix: np.ndarray | None = field(default=None, init=False, repr=False)
    _offset: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_number(self.kind, "strength", self.strength, 0.0, 1.0)

    def start_episode(self, rng: np.random.Generator, frame_hw: tuple[int, int], bare_env: gym.Env) -> None:
        recolor: Callable[[np.random.Generator], Any] | None = getattr(bare_env, "recolor", None)
        if callable(recolor):
            recolor(rng)
            self.method = "env"
            return
        model = _mujoco_model(bare_env)
        if model is not None:
            if self._model is not model:
                self._remember_colors(model)
            base = self._base_rgba
            random_rgb = rng.random((len(base), 3))
            model.geom_rgba[:, :3] = (1.0 - self.strength) * base[:, :3] + self.strength * random_rgb
            model.geom_rgba[:, 3] = base[:, 3]
            self.method = "model"
            return
        self.method = "image"
        self._draw_image_transform(rng)

    def _remember_colors(self, model: Any) -> None:
        self._model = model
        self._original_rgba = model.geom_rgba.copy()
        # A geom with a material and MuJoCo's default rgba (0.5, 0.5, 0.5, 1) shows its
        # material's colour; any other rgba overrides the material. Interpolate from the
        # colour actually shown, so strength 0 looks like the original.
        base = self._original_rgba.copy()
        material_ids = getattr(model, "geom_matid", None)
        material_rgba = getattr(model, "mat_rgba", None)
        if material_ids is not None and material_rgba is not None and len(material_rgba):
            shows_material = (np.asarray(material_ids) >= 0) & np.all(base == (0.5, 0.5, 0.5, 1.0), axis=1)
            base[shows_material] = material_rgba[np.asarray(material_ids)[shows_material]]
        self._base_rgba = base

    def _draw_image_transform(self, rng: np.random.Generator) -> None:
        # Hue rotation = rotation about the grey axis (Rodrigues' formula), then per-channel gain.
        angle = self.strength * rng.uniform(-math.pi, math.pi)
        axis = np.full(3, 1.0 / math.sqrt(3.0))
        cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
        rotation = math.cos(angle) * np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * np.outer(axis, axis)
        gain = 1.0 + self.strength * rng.uniform(-0.5, 0.5, 3)
        # Stored transposed for `pixels @ matrix` on (N, 3) rows.
        self._matrix = (gain[:, None] * rotation).T.astype(np.float32)
        self._offset = (self.strength * rng.uniform(-64.0, 64.0, 3) + 0.5).astype(np.float32)  # +0.5 rounds

    def draw(self, frame: np.ndarray, rng: np.random.Generator, bare_env: gym.Env) -> None:
        if self.method != "image":
            return  # the env renders the new colours itself
        pixels = frame.reshape(-1, 3).astype(np.float32) @ self._matrix
        pixels += self._offset
        np.clip(pixels, 0.0, 255.0, out=pixels)
        frame[...] = pixels.reshape(frame.shape)

    def remove(self, bare_env: gym.Env) -> None:
        if self.method == "env":
            reset_colors = getattr(bare_env, "reset_colors", None)
            if callable(reset_colors):
                reset_colors()
        elif self.method == "model" and self._model is not None:
            self._model.geom_rgba[:] = self._original_rgba
        self.method = None


@dataclass(eq=False)
class Shapes(Distractor):
    """Coloured circles and squares drifting and bouncing over the frame."""

    kind: ClassVar[str] = "shapes"
    count: int = 3
    min_size: float = 0.1
    max_size: float = 0.25
    max_speed: float = 0.05

    _radius: np.ndarray = field(default_factory=lambda: np.zeros(0), init=False, repr=False)
    _center: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), init=False, repr=False)  # (row, col)
    _velocity: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), init=False, repr=False)
    _color: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8), init=False, repr=False)
    _is_circle: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), init=False, repr=False)
    _frame_hw: np.ndarray = field(default_factory=lambda: np.ones(2), init=False, repr=False)

    def __post_init__(self) -> None:
        _check_number(self.kind, "count", self.count, 1, 64, integer=True)
        # A diameter up to the shorter side keeps every shape able to fit inside the frame.
        _check_number(self.kind, "min_size", self.min_size, 0.0, 1.0, low_open=True)
        _check_number(self.kind, "max_size", self.max_size, self.min_size, 1.0)
        _check_number(self.kind, "max_speed", self.max_speed, 0.0, 1.0)

    def start_episode(self, rng: np.random.Generator, frame_hw: tuple[int, int], bare_env: gym.Env) -> None:
        shorter_side = min(frame_hw)
        self._frame_hw = np.asarray(frame_hw, dtype=np.float64)
        self._radius = rng.uniform(self.min_size, self.max_size, self.count) * shorter_side / 2
        low, high = self._free_range()
        self._center = rng.uniform(low, high)
        heading = rng.uniform(0.0, 2 * math.pi, self.count)
        speed = rng.uniform(0.5, 1.0, self.count) * self.max_speed * shorter_side
        self._velocity = np.stack([np.sin(heading), np.cos(heading)], axis=1) * speed[:, None]
        self._color = rng.integers(0, 256, (self.count, 3), dtype=np.uint8)
        self._is_circle = rng.random(self.count) < 0.5

    def _free_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each shape's centre may be with the whole shape inside the frame."""
        low = np.repeat(self._radius[:, None], 2, axis=1)
        return low, self._frame_hw - low

    def draw(self, frame: np.ndarray, rng: np.random.Generator, bare_env: gym.Env) -> None:
        height, width = frame.shape[:2]
        # A handful of shapes: loop over shapes, vectorised over each one's bounding box.
        for radius, (row, col), color, is_circle in zip(self._radius, self._center, self._color, self._is_circle):
            top, bottom = max(int(row - radius), 0), min(int(math.ceil(row + radius)) + 1, height)
            left, right = max(int(col - radius), 0), min(int(math.ceil(col + radius)) + 1, width)
            rows = np.arange(top, bottom)[:, None] + 0.5 - row  # pixel centres relative to the shape's
            cols = np.arange(left, right)[None, :] + 0.5 - col
            if is_circle:
                inside = rows * rows + cols * cols <= radius * radius
            else:
                inside = (np.abs(rows) <= radius) & (np.abs(cols) <= radius)
            frame[top:bottom, left:right][inside] = color
        self._advance()

    def _advance(self) -> None:
        low, high = self._free_range()
        center = self._center + self._velocity
        below, above = center < low, center > high
        # Reflect off the edges: mirror the overshoot and reverse that velocity component.
        center = np.where(below, 2 * low - center, np.where(above, 2 * high - center, center))
        self._velocity = np.where(below | above, -self._velocity, self._velocity)
        self._center = np.clip(center, low, high)  # a step longer than the free range


@dataclass(eq=False)
class Video(Distractor):
    """A smooth, coloured, moving random field as background (or blended over the frame)."""

    kind: ClassVar[str] = "video"
    alpha: float = 0.5
    waves: int = 6
    max_frequency: float = 3.0
    speed: float = 0.2
    use_mask: bool = True

    _row_waves: np.ndarray | None = field(default=None, init=False, repr=False)  # (H, 2·waves)
    _col_angles: np.ndarray | None = field(default=None, init=False, repr=False)  # (waves, W)
    _phase: np.ndarray | None = field(default=None, init=False, repr=False)
    _phase_speed: np.ndarray | None = field(default=None, init=False, repr=False)
    _wave_rgb: np.ndarray | None = field(default=None, init=False, repr=False)  # (2·waves, 3), in pixel units
    _mean_rgb: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_number(self.kind, "alpha", self.alpha, 0.0, 1.0)
        _check_number(self.kind, "waves", self.waves, 1, 64, integer=True)
        _check_number(self.kind, "max_frequency", self.max_frequency, 0.5, 64.0)
        _check_number(self.kind, "speed", self.speed, 0.0, math.pi)
        if not isinstance(self.use_mask, (bool, np.bool_)):
            raise EnvOptionError(f"distractor 'video': use_mask must be True or False, got {self.use_mask!r}")

    def start_episode(self, rng: np.random.Generator, frame_hw: tuple[int, int], bare_env: gym.Env) -> None:
        height, width = frame_hw
        heading = rng.uniform(0.0, 2 * math.pi, self.waves)
        cycles = rng.uniform(0.5, self.max_frequency, self.waves)  # per image: low frequencies only
        row_rate = 2 * math.pi * cycles * np.sin(heading) / height  # radians per pixel
        col_rate = 2 * math.pi * cycles * np.cos(heading) / width
        rows = np.arange(height) + 0.5
        cols = np.arange(width) + 0.5
        # A plane wave is separable: sin(a·r + b·c + φ) = sin(a·r)·cos(b·c + φ) + cos(a·r)·sin(b·c + φ),
        # so the whole field is one (H × 2·waves) @ (2·waves × W·3) product per step.
        self._row_waves = np.concatenate([np.sin(np.outer(rows, row_rate)), np.cos(np.outer(rows, row_rate))], axis=1)
        self._row_waves = self._row_waves.astype(np.float32)
        self._col_angles = np.outer(col_rate, cols)
        self._phase = rng.uniform(0.0, 2 * math.pi, self.waves)
        self._phase_speed = rng.choice([-1.0, 1.0], self.waves) * rng.uniform(0.5, 1.0, self.waves) * self.speed
        wave_color = rng.uniform(-1.0, 1.0, (self.waves, 3))
        # Scale each channel so ±2 standard deviations of the field span ±128 grey levels.
        channel_std = np.sqrt(np.sum(wave_color**2, axis=0) / 2) + 1e-6
        wave_rgb = wave_color * (64.0 / channel_std)
        self._wave_rgb = np.concatenate([wave_rgb, wave_rgb]).astype(np.float32)
        self._mean_rgb = rng.uniform(64.0, 192.0, 3).astype(np.float32)

    def background(self, frame_hw: tuple[int, int]) -> np.ndarray:
        """This step's background as float32 (H, W, 3) in [0, 255]."""
        angles = self._col_angles + self._phase[:, None]
        col_waves = np.concatenate([np.cos(angles), np.sin(angles)]).astype(np.float32)  # (2·waves, W)
        col_waves_rgb = (col_waves[:, :, None] * self._wave_rgb[:, None, :]).reshape(len(col_waves), -1)
        image = (self._row_waves @ col_waves_rgb).reshape(*frame_hw, 3)
        image += self._mean_rgb
        return np.clip(image, 0.0, 255.0, out=image)

    def draw(self, frame: np.ndarray, rng: np.random.Generator, bare_env: gym.Env) -> None:
        frame_hw = frame.shape[:2]
        image = self.background(frame_hw)
        mask_of = getattr(bare_env, "background_mask", None) if self.use_mask else None
        if callable(mask_of):
            mask = np.asarray(mask_of(), dtype=bool)
            if mask.shape != frame_hw:
                raise ValueError(
                    f"distractor 'video': background_mask() has shape {mask.shape}, the frame {frame_hw}"
                )
            image += 0.5  # round, not truncate, on the cast below
            np.copyto(frame, image.astype(np.uint8), where=mask[:, :, None])
        else:
            blended = frame.astype(np.float32)
            blended *= 1.0 - self.alpha
            blended += self.alpha * image + 0.5
            frame[...] = blended
        self._phase += self._phase_speed


@dataclass(eq=False)
class NoisyTV(Distractor):
    """A patch of fresh uniform noise every step, placed per episode."""

    kind: ClassVar[str] = "noisy_tv"
    size: float = 0.25

    _top_left: tuple[int, int] = field(default=(0, 0), init=False, repr=False)
    _patch_hw: tuple[int, int] = field(default=(1, 1), init=False, repr=False)

    def __post_init__(self) -> None:
        _check_number(self.kind, "size", self.size, 0.0, 1.0, low_open=True)

    def start_episode(self, rng: np.random.Generator, frame_hw: tuple[int, int], bare_env: gym.Env) -> None:
        height, width = frame_hw
        patch_height, patch_width = max(1, round(self.size * height)), max(1, round(self.size * width))
        self._patch_hw = (patch_height, patch_width)
        top, left = rng.integers(0, height - patch_height + 1), rng.integers(0, width - patch_width + 1)
        self._top_left = (int(top), int(left))

    def draw(self, frame: np.ndarray, rng: np.random.Generator, bare_env: gym.Env) -> None:
        (top, left), (patch_height, patch_width) = self._top_left, self._patch_hw
        frame[top : top + patch_height, left : left + patch_width] = rng.integers(
            0, 256, (patch_height, patch_width, 3), dtype=np.uint8
        )


#: Every kind, in the order they are applied to a frame.
KINDS: dict[str, type[Distractor]] = {cls.kind: cls for cls in (Colors, Video, Shapes, NoisyTV)}


def parse_spec(spec: str | Sequence[str] | Mapping[str, Mapping[str, Any] | None]) -> list[Distractor]:
    """Build the distractors a spec names (see the module docstring), in application order."""
    if isinstance(spec, str):
        names = [name.strip() for name in spec.split(",") if name.strip()]
        requested: list[tuple[Any, Any]] = [(name, None) for name in names]
    elif isinstance(spec, Mapping):
        requested = list(spec.items())
    elif isinstance(spec, (list, tuple)):
        requested = [(name, None) for name in spec]
    else:
        raise EnvOptionError(
            f"distractors must be a kind, a comma-separated string, a list of kinds or a dict "
            f"{{kind: {{param: value}}}}; got {type(spec).__name__}. Valid kinds: {', '.join(KINDS)}."
        )
    if not requested:
        raise EnvOptionError(f"distractors names no kind; valid kinds: {', '.join(KINDS)}")
    built: dict[str, Distractor] = {}
    for kind, params in requested:
        if not isinstance(kind, str) or kind not in KINDS:
            near = closest(kind, KINDS) if isinstance(kind, str) else []
            hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
            raise EnvOptionError(f"unknown distractor kind {kind!r}.{hint} Valid kinds: {', '.join(KINDS)}.")
        if kind in built:
            raise EnvOptionError(f"distractor kind {kind!r} is named twice")
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise EnvOptionError(f"distractor {kind!r}: params must be a dict, got {params!r}")
        cls = KINDS[kind]
        valid = [f.name for f in fields(cls) if f.init]
        for name in params:
            if name not in valid:
                near = closest(str(name), valid)
                hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
                raise EnvOptionError(
                    f"unknown parameter {name!r} for distractor {kind!r}.{hint} "
                    f"Valid parameters: {', '.join(valid) or 'none'}."
                )
        built[kind] = cls(**params)
    return [built[kind] for kind in KINDS if kind in built]


class Distractors(gym.ObservationWrapper):
    """Add seedable visual distractors to the pixel observation (see the module docstring)."""

    def __init__(self, env: gym.Env, spec: str | Sequence[str] | Mapping[str, Mapping[str, Any] | None]):
        super().__init__(env)
        self.distractors = parse_spec(spec)
        space = env.observation_space
        self._pixels_key: str | None = None
        if isinstance(space, gym.spaces.Dict) and "pixels" in space.spaces:
            self._pixels_key = "pixels"
            pixel_space = space["pixels"]
        else:
            pixel_space = space
        if not (
            isinstance(pixel_space, gym.spaces.Box)
            and pixel_space.dtype == np.uint8
            and len(pixel_space.shape) == 3
            and pixel_space.shape[2] == 3
        ):
            raise EnvOptionError(
                "distractors need uint8 (H, W, 3) pixel observations (obs='pixels' or 'state+pixels'); "
                f"got observation space {space}"
            )
        self.frame_hw: tuple[int, int] = pixel_space.shape[:2]
        self.distractor_rng = np.random.default_rng()
        self._enabled = True
        self._episode_started = False
        self._last_frame: np.ndarray | None = None

    @property
    def kinds(self) -> list[str]:
        """The kinds in use, in application order."""
        return [d.kind for d in self.distractors]

    @property
    def enabled(self) -> bool:
        """Whether observations are distracted (see the module docstring)."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        value = bool(value)
        if self._enabled and not value:
            self._remove_all()
        self._enabled = value

    def _remove_all(self) -> None:
        for distractor in self.distractors:
            distractor.remove(self.env.unwrapped)
        self._episode_started = False

    def _start_episode(self) -> None:
        for distractor in self.distractors:
            distractor.start_episode(self.distractor_rng, self.frame_hw, self.env.unwrapped)
        self._episode_started = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self.distractor_rng = stream_rng(seed, "embodied.envs.distractors")  # the same stream as before
        if self._enabled:
            # Before the inner reset, so new model colours are in its first rendered frame.
            self._start_episode()
        else:
            self._episode_started = False
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(obs), info

    def observation(self, observation: Any) -> Any:
        frame = observation[self._pixels_key] if self._pixels_key else observation
        if self._enabled:
            if not self._episode_started:  # enabled mid-episode, or stepped without a reset
                self._start_episode()
            frame = np.array(frame, dtype=np.uint8, copy=True)  # never write into the env's buffer
            for distractor in self.distractors:
                distractor.draw(frame, self.distractor_rng, self.env.unwrapped)
        self._last_frame = frame
        if self._pixels_key:
            return {**observation, self._pixels_key: frame}
        return frame

    def render(self) -> np.ndarray | None:
        """The last frame the agent saw (distracted); the bare env's render before any."""
        if self._last_frame is None:
            return self.env.render()
        return self._last_frame.copy()

    def close(self) -> None:
        self._remove_all()
        super().close()

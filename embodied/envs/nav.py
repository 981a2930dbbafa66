"""Navigation tasks: gymnasium-robotics' PointMaze, and light NumPy worlds of our own.

Ids (``embodied.make("nav/<task>")``):

* ``nav/PointMaze_<maze>-v3`` for maze in UMaze, Open, Medium, Large and their
  ``_Diverse_G`` / ``_Diverse_GR`` variants (Open, Medium, Large): gymnasium-robotics'
  MuJoCo point mass in a maze, with its own rewards and episode limits (300 / 600 / 800
  steps). Observation: 6 float32, in this order: the ``observation`` entry of its Dict
  (x, y, vx, vy; metres, y up) then ``desired_goal`` (goal x, y). ``achieved_goal`` is
  dropped: it repeats x, y. Action: 2 forces in [-1, 1]. ``info["success"]`` is true
  while the point is within 0.45 m of the goal. Options ``reward_type`` ("sparse": 1
  within 0.45 m, "dense": exp(-distance)), ``continuing_task`` and ``reset_target``
  are gymnasium-robotics' own, with its defaults. Cameras: ``topdown`` (default, whole
  maze, north up) and ``perspective`` (gymnasium-robotics' own view).

* ``nav/rooms-v0`` (2x2 rooms coloured red, green, blue and yellow, joined by doors),
  ``nav/open-v0`` (one open room) and ``nav/corridor-v0`` (a winding corridor):
  pure NumPy, thousands of steps per second on one core. The world is a grid of
  1x1 cells (see ``LAYOUTS``); x grows to the right (columns) and y downward (rows).
  The agent is a disc of radius 0.25 that collides as a 0.5x0.5 square; walls stop it
  exactly, at any speed (no tunnelling). Each episode the env's seeded generator
  places coloured objects (ball, box, key), picks a goal (an object, or in
  ``rooms-v0`` also a room) and the agent's start, so ``reset(seed=s)`` repeats an
  episode exactly. The goal in words is ``env.unwrapped.goal_text`` ("go to the red
  ball", "go to the green room").

  Action: 2 floats in [-1, 1], a velocity command (x, y) in units of 0.3 cells per
  step; values outside are clipped. The agent faces the way it last moved.
  Observation ("state"): 8 float32 in [-1, 1]: agent x, y; velocity x, y (actual
  displacement over the maximum speed, so zero when blocked); cos, sin of the
  heading; goal x, y. Positions are scaled so the map spans [-1, 1].
  Reward (``reward_type``): "dense" (default) is minus the straight-line distance to
  the goal divided by the map's diagonal, so in (-1, 0], and 0 once reached;
  "sparse" is 1 on reaching the goal, else 0. Success: within 0.5 cells of the goal
  object, or inside the goal room (not its doorway). ``info["success"]`` is a bool
  every step; the episode terminates on success unless ``terminate_on_success=False``.
  ``scene_seed`` (an int) fixes the scene: the same objects and goal every episode, only
  the agent's start and heading drawn anew (a single-goal task, like D4RL's maze2d that
  RePo's navigation runs use).
  Cameras: ``topdown`` (default, the whole map, north up), ``egocentric`` (a
  ``egocentric_cells``-wide view centred on the agent, turned so it faces up) and
  ``follow`` (the same view, north up: the map slides under the agent, so where the
  walls and objects sit in the frame says where the agent is, at any image size). Frames
  show walls, floors (rooms tinted by colour), objects, the goal as a magenta ring
  (``show_goal=False`` hides it, for language-only goals) and the agent (dark disc,
  white dot ahead). Each pixel is the mean of a grid of samples at most 1/8 cell
  apart, so the agent (1.5 pixels across at 32x32 top-down in ``open-v0``) and the
  goal ring always show, wherever they fall between pixel centres.
  ``background_mask()`` says which pixels of the last frame are floor;
  ``recolor(rng)`` draws a new wall/floor/room palette (objects, goal and agent keep
  theirs: they carry the task), ``reset_colors()`` restores it.

Scripted policies (``scripted_policy(env)``) read the true state, so they work with
any ``obs``: shortest paths over the grid of cells, then straight at the goal.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import gymnasium as gym
import numpy as np

from embodied.envs.wrappers import EnvOptionError, apply_options, closest, image_hw, split_options

# ---------------------------------------------------------------------------------------
# Task lists (plain data: importing this module loads no simulator)
# ---------------------------------------------------------------------------------------

#: maze name -> attribute of ``gymnasium_robotics.envs.maze.maps`` holding its map.
POINTMAZE_MAPS: dict[str, str] = {
    "UMaze": "U_MAZE",
    "Open": "OPEN",
    "Open_Diverse_G": "OPEN_DIVERSE_G",
    "Open_Diverse_GR": "OPEN_DIVERSE_GR",
    "Medium": "MEDIUM_MAZE",
    "Medium_Diverse_G": "MEDIUM_MAZE_DIVERSE_G",
    "Medium_Diverse_GR": "MEDIUM_MAZE_DIVERSE_GR",
    "Large": "LARGE_MAZE",
    "Large_Diverse_G": "LARGE_MAZE_DIVERSE_G",
    "Large_Diverse_GR": "LARGE_MAZE_DIVERSE_GR",
}
POINTMAZE_TASKS: tuple[str, ...] = tuple(f"PointMaze_{maze}-v3" for maze in POINTMAZE_MAPS)
POINTMAZE_CAMERAS = ("topdown", "perspective")
POINTMAZE_OPTIONS: dict[str, Any] = {"reward_type": "sparse", "continuing_task": True, "reset_target": False}


@dataclass(frozen=True)
class Layout:
    """A grid world: ``#`` wall, ``.`` floor, ``D`` doorway (floor of no room, kept
    free of objects), a letter: floor of the room that ``rooms`` names by colour."""

    rows: tuple[str, ...]
    rooms: dict[str, str]  # map letter -> room colour name
    num_objects: int
    goal_kinds: tuple[str, ...]  # which goals episodes may draw: "object", "room"
    max_episode_steps: int


LAYOUTS: dict[str, Layout] = {
    "rooms-v0": Layout(
        rows=(
            "#############",
            "#rrrrr#ggggg#",
            "#rrrrr#ggggg#",
            "#rrrrrDggggg#",
            "#rrrrr#ggggg#",
            "#rrrrr#ggggg#",
            "###D#####D###",
            "#bbbbb#yyyyy#",
            "#bbbbb#yyyyy#",
            "#bbbbbDyyyyy#",
            "#bbbbb#yyyyy#",
            "#bbbbb#yyyyy#",
            "#############",
        ),
        rooms={"r": "red", "g": "green", "b": "blue", "y": "yellow"},
        num_objects=4,
        goal_kinds=("object", "room"),
        max_episode_steps=200,
    ),
    "open-v0": Layout(
        rows=("###########",) + ("#.........#",) * 9 + ("###########",),
        rooms={},
        num_objects=3,
        goal_kinds=("object",),
        max_episode_steps=100,
    ),
    "corridor-v0": Layout(
        rows=(
            "#############",
            "#...........#",
            "#...........#",
            "#########...#",
            "#...........#",
            "#...........#",
            "#...#########",
            "#...........#",
            "#...........#",
            "#############",
        ),
        rooms={},
        num_objects=3,
        goal_kinds=("object",),
        max_episode_steps=200,
    ),
}
GRID_TASKS: tuple[str, ...] = tuple(LAYOUTS)
GRID_CAMERAS = ("topdown", "egocentric", "follow")
GRID_OPTIONS: dict[str, Any] = {
    "reward_type": "dense",
    "goal_kind": None,  # None: every kind the layout has; or "object" / "room"
    "terminate_on_success": True,
    "show_goal": True,
    "egocentric_cells": 7.0,
    "scene_seed": None,  # None: a new scene each episode; an int: the same objects and goal every episode
}

TASKS: tuple[str, ...] = POINTMAZE_TASKS + GRID_TASKS
MAX_EPISODE_STEPS: dict[str, int] = {
    # gymnasium-robotics' own limits
    **{task: 600 if "Medium" in task else 800 if "Large" in task else 300 for task in POINTMAZE_TASKS},
    **{task: layout.max_episode_steps for task, layout in LAYOUTS.items()},
}

# Colours name things in goal texts, so they are plain data here.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 90, 215),
    "yellow": (230, 185, 20),
}
OBJECT_SHAPES = ("ball", "box", "key")
DEFAULT_WALL = (90, 90, 90)
DEFAULT_FLOOR = (235, 235, 225)
ROOM_TINT = 0.35  # how much of its colour a room's floor takes: objects stay visible on it
AGENT_COLOR = (30, 30, 30)
HEADING_COLOR = (250, 250, 250)
GOAL_COLOR = (230, 0, 230)

AGENT_RADIUS = 0.25  # cells; a 1-cell doorway leaves the agent 0.5 cells of slack
MAX_SPEED = 0.3  # cells per step at action 1
OBJECT_SIZE = 0.3  # cells, half-width of an object's drawing
GOAL_RADIUS = 0.5  # cells from the goal object that count as reaching it
GOAL_RING = (0.45, 0.6)  # inner and outer radius of the goal marker, cells
WALL_TILE, FLOOR_TILE = 0, 1  # tile classes; room k's floor is tile 2 + k
SAMPLE_CELLS = 0.125  # cells: the renderer samples at least this finely (half the agent's radius)
MAX_SUPERSAMPLE = 8  # samples per pixel side at most (tiny frames of big maps)
_EPS = 1e-9  # keeps a square touching a wall from counting as overlapping it


# ---------------------------------------------------------------------------------------
# Shortest paths over a grid of cells (both suites' scripted policies)
# ---------------------------------------------------------------------------------------

_NEIGHBOURS = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc)


def _open_moves(free: np.ndarray, row: int, col: int) -> Iterator[tuple[int, int, float]]:
    """8-connected moves out of a cell; diagonals only where both sides are open, so
    a path never cuts a wall's corner."""
    height, width = free.shape
    for dr, dc in _NEIGHBOURS:
        r, c = row + dr, col + dc
        if not (0 <= r < height and 0 <= c < width and free[r, c]):
            continue
        if dr and dc and not (free[row + dr, col] and free[row, col + dc]):
            continue
        yield r, c, math.sqrt(2.0) if dr and dc else 1.0


def path_distances(free: np.ndarray, goal_cells: Sequence[tuple[int, int]]) -> np.ndarray:
    """Shortest path length (in cells) from every cell to the nearest goal cell
    (Dijkstra; walls and unreachable cells are inf)."""
    distances = np.full(free.shape, np.inf)
    queue = [(0.0, r, c) for r, c in goal_cells]
    for _, r, c in queue:
        distances[r, c] = 0.0
    heapq.heapify(queue)
    while queue:
        dist, row, col = heapq.heappop(queue)
        if dist > distances[row, col]:
            continue
        for r, c, step in _open_moves(free, row, col):
            if dist + step < distances[r, c]:
                distances[r, c] = dist + step
                heapq.heappush(queue, (dist + step, r, c))
    return distances


def _next_cell(free: np.ndarray, distances: np.ndarray, row: int, col: int) -> tuple[int, int]:
    """The neighbouring cell one step down the shortest path (the cell itself at a goal)."""
    best = (distances[row, col], row, col)
    for r, c, _ in _open_moves(free, row, col):
        if distances[r, c] < best[0]:
            best = (distances[r, c], r, c)
    return best[1], best[2]


# ---------------------------------------------------------------------------------------
# PointMaze (gymnasium-robotics)
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """gymnasium_robotics prints a notice about AdroitHand rewards to stderr on import."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class PointMazeEnv(gym.Env):
    """gymnasium-robotics' PointMaze with a flat observation (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 100}

    def __init__(
        self,
        task: str,
        reward_type: str = "sparse",
        continuing_task: bool = True,
        reset_target: bool = False,
        render_mode: str | None = "rgb_array",
        image_size: int | tuple[int, int] = 64,
        camera: str | None = None,
    ):
        with _quiet_import():
            from gymnasium_robotics.envs.maze import maps
            from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv as RoboticsPointMaze

        maze = task.removeprefix("PointMaze_").removesuffix("-v3")
        if maze not in POINTMAZE_MAPS:
            near = ", ".join(closest(task, POINTMAZE_TASKS)) or "none"
            raise EnvOptionError(f"unknown PointMaze task {task!r}; closest: {near}")
        if reward_type not in ("sparse", "dense"):
            raise EnvOptionError(f"reward_type must be 'sparse' or 'dense' for nav/{task}, got {reward_type!r}")
        camera = camera or "topdown"
        if camera not in POINTMAZE_CAMERAS:
            raise EnvOptionError(f"camera must be one of {', '.join(POINTMAZE_CAMERAS)} for nav/{task}, got {camera!r}")
        height, width = image_hw(image_size)
        self.task = task
        self.camera = camera
        self.render_mode = render_mode
        self.sim = RoboticsPointMaze(
            maze_map=getattr(maps, POINTMAZE_MAPS[maze]),
            render_mode=render_mode,
            reward_type=reward_type,
            continuing_task=bool(continuing_task),
            reset_target=bool(reset_target),
            width=width,
            height=height,
        )
        if camera == "topdown":
            # The renderer applies its camera settings when it first renders, so this
            # replaces gymnasium-robotics' slanted view: straight down, north up, far
            # enough back that the whole maze fits the narrower side of the frame.
            maze_grid = self.sim.maze
            half_extent = 0.52 * max(maze_grid.map_width, maze_grid.map_length) * maze_grid.maze_size_scaling
            half_fov = math.radians(self.sim.point_env.model.vis.global_.fovy) / 2  # vertical
            distance = half_extent / math.tan(half_fov) * max(1.0, height / width) + maze_grid.maze_height
            self.sim.point_env.mujoco_renderer.default_cam_config = {
                "distance": distance,
                "elevation": -90.0,
                "azimuth": 90.0,
                "lookat": np.zeros(3),
            }
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (6,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    @staticmethod
    def _flat(obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([obs["observation"], obs["desired_goal"]]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, info = self.sim.reset(seed=seed, options=options)  # options: goal_cell, reset_cell
        return self._flat(obs), {"success": bool(info["success"])}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.sim.step(np.asarray(action, dtype=np.float64))
        return self._flat(obs), float(reward), bool(terminated), bool(truncated), {"success": bool(info["success"])}

    def render(self):
        return self.sim.render()

    def close(self):
        self.sim.close()


def _pointmaze_policy(base: PointMazeEnv) -> Callable[[Any], np.ndarray]:
    """Through the maze's cells along a shortest path, then straight at the goal (PD)."""
    maze = base.sim.maze
    free = np.array([[cell != 1 for cell in row] for row in maze.maze_map])  # cells hold 0, 1 or "r"/"g"/"c"
    cached: dict[str, Any] = {"goal": None, "distances": None}

    def act(_obs: Any) -> np.ndarray:
        position = base.sim.point_env.data.qpos[:2].copy()
        velocity = base.sim.point_env.data.qvel[:2].copy()
        goal = base.sim.goal.copy()
        if cached["goal"] is None or not np.array_equal(cached["goal"], goal):
            goal_cell = tuple(int(v) for v in maze.cell_xy_to_rowcol(goal))
            cached.update(goal=goal, distances=path_distances(free, [goal_cell]))
        row, col = (int(v) for v in maze.cell_xy_to_rowcol(position))
        next_row, next_col = _next_cell(free, cached["distances"], row, col)
        target = goal if (next_row, next_col) == (row, col) else maze.cell_rowcol_to_xy(np.array([next_row, next_col]))
        # Gains tuned on UMaze: fast, with little overshoot at a 1 m cell's scale.
        action = 10.0 * (target - position) - 1.5 * velocity
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    return act


# ---------------------------------------------------------------------------------------
# Grid worlds (NumPy)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NavObject:
    color: str
    shape: str  # one of OBJECT_SHAPES
    x: float
    y: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


class GridNavEnv(gym.Env):
    """A disc agent in a grid of walls and coloured rooms (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        task: str,
        reward_type: str = "dense",
        goal_kind: str | None = None,
        terminate_on_success: bool = True,
        show_goal: bool = True,
        egocentric_cells: float = 7.0,
        scene_seed: int | None = None,
        render_mode: str | None = "rgb_array",
        image_size: int | tuple[int, int] = 64,
        camera: str | None = None,
    ):
        if task not in LAYOUTS:
            raise EnvOptionError(f"unknown nav task {task!r}; closest: {', '.join(closest(task, TASKS)) or 'none'}")
        layout = LAYOUTS[task]
        if reward_type not in ("dense", "sparse"):
            raise EnvOptionError(f"reward_type must be 'dense' or 'sparse' for nav/{task}, got {reward_type!r}")
        if goal_kind is not None and goal_kind not in layout.goal_kinds:
            raise EnvOptionError(
                f"goal_kind must be None or one of {', '.join(layout.goal_kinds)} for nav/{task}, got {goal_kind!r}"
            )
        camera = camera or "topdown"
        if camera not in GRID_CAMERAS:
            raise EnvOptionError(f"camera must be one of {', '.join(GRID_CAMERAS)} for nav/{task}, got {camera!r}")
        if not (isinstance(egocentric_cells, (int, float)) and 1.0 <= egocentric_cells <= 50.0):
            raise EnvOptionError(f"egocentric_cells must be a number of cells in [1, 50], got {egocentric_cells!r}")
        if scene_seed is not None and (isinstance(scene_seed, bool) or not isinstance(scene_seed, int) or scene_seed < 0):
            raise EnvOptionError(f"scene_seed must be None or an integer >= 0, got {scene_seed!r}")
        self.task = task
        self.layout = layout
        self.scene_seed = scene_seed
        self.reward_type = reward_type
        self.goal_kinds = (goal_kind,) if goal_kind else layout.goal_kinds
        self.terminate_on_success = bool(terminate_on_success)
        self.show_goal = bool(show_goal)
        self.camera = camera
        self.render_mode = render_mode
        self.image_height, self.image_width = image_hw(image_size)

        # The map, as arrays for rendering and plain lists for the per-step collision test.
        grid = np.array([list(row) for row in layout.rows])
        self.map_height, self.map_width = grid.shape
        border = np.concatenate([grid[0], grid[-1], grid[:, 0], grid[:, -1]])
        if (border != "#").any():
            raise ValueError(f"layout {task}: the border must be all walls")  # rendering relies on it
        self.walls = grid == "#"
        self._wall_rows: list[list[bool]] = self.walls.tolist()
        self.room_letters = tuple(layout.rooms)
        self.room_names = tuple(layout.rooms.values())
        self.tile_class = np.full(grid.shape, FLOOR_TILE, dtype=np.intp)
        self.tile_class[self.walls] = WALL_TILE
        self.room_cells: dict[str, list[tuple[int, int]]] = {}
        for index, (letter, color) in enumerate(layout.rooms.items()):
            self.tile_class[grid == letter] = 2 + index
            self.room_cells[color] = [tuple(cell) for cell in np.argwhere(grid == letter).tolist()]
        self.room_centers = {
            color: (np.mean(cells, axis=0)[::-1] + 0.5) for color, cells in self.room_cells.items()
        }  # (x, y)
        self.free_cells = np.argwhere(~self.walls)  # (row, col)
        self.object_cells = np.argwhere(~self.walls & (grid != "D"))
        self._map_center = np.array([self.map_width, self.map_height], dtype=np.float64) / 2
        self._diagonal = math.hypot(self.map_width, self.map_height)
        self.reset_colors()

        # Sample centres in map cells. Top-down: the whole map, square pixels, centred;
        # pixels beyond the map read the border's walls. Egocentric: (ahead, right) of
        # the agent, ahead up the frame. Each pixel averages a k x k grid of samples no
        # coarser than SAMPLE_CELLS, so the agent, objects and goal ring stay visible in
        # small frames instead of falling between pixel centres.
        # float32 halves the memory traffic of the per-pixel work; cells need no more precision.
        topdown_scale = max(self.map_width / self.image_width, self.map_height / self.image_height)
        ego_scale = egocentric_cells / min(self.image_height, self.image_width)
        cells_per_pixel = topdown_scale if camera == "topdown" else ego_scale
        self.supersample = min(MAX_SUPERSAMPLE, max(1, math.ceil(cells_per_pixel / SAMPLE_CELLS - 1e-6)))
        k = self.supersample
        rows = (np.arange(self.image_height * k, dtype=np.float32) + 0.5) / k - self.image_height / 2
        cols = (np.arange(self.image_width * k, dtype=np.float32) + 0.5) / k - self.image_width / 2
        self._topdown_scale = topdown_scale  # cells per pixel
        topdown_scale, ego_scale = np.float32(topdown_scale), np.float32(ego_scale)
        shape = (self.image_height * k, self.image_width * k)
        self._topdown_x = np.broadcast_to(cols * topdown_scale + self.map_width / 2, shape)
        self._topdown_y = np.broadcast_to((rows * topdown_scale + self.map_height / 2)[:, None], shape)
        # Farther than this from the agent, nothing shows in the egocentric and follow views.
        self._ego_reach = float(ego_scale) * math.hypot(self.image_height, self.image_width) / 2 + GOAL_RING[1]
        self._ego_ahead = np.broadcast_to((-rows * ego_scale)[:, None], shape)
        self._ego_right = np.broadcast_to(cols * ego_scale, shape)

        self.observation_space = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.max_speed = MAX_SPEED
        self.agent_radius = AGENT_RADIUS
        self.agent_x = self.agent_y = 0.0
        self.velocity = (0.0, 0.0)  # last displacement / max_speed
        self.heading = 0.0  # radians; 0 faces +x, pi/2 faces +y (down the map)
        self.objects: list[NavObject] = []
        self.goal_kind = ""
        self.goal_name = ""  # "red ball" or "red" (the room)
        self.goal_text = ""
        self.goal_xy = np.zeros(2)
        self._goal_object: NavObject | None = None
        self._goal_room_tile = -1
        self._goal_distances: np.ndarray | None = None
        # ((frame, floor mask) at the sampling resolution, and the same per pixel)
        self._topdown_scene: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
        self._last_background: np.ndarray | None = None
        self._started = False

    # ---- palette -------------------------------------------------------------------

    def _set_palette(self, wall: np.ndarray, floor: np.ndarray, rooms: np.ndarray) -> None:
        self._tile_colors = np.concatenate([wall[None], floor[None], rooms.reshape(-1, 3)]).astype(np.uint8)
        self._topdown_scene = None  # drawn again with the new colours

    def reset_colors(self) -> None:
        """Go back to the default palette (grey walls, pale floor, rooms tinted by name)."""
        floor = np.array(DEFAULT_FLOOR, dtype=np.float64)
        rooms = np.array([(1 - ROOM_TINT) * floor + ROOM_TINT * np.array(COLORS[c]) for c in self.room_names])
        self._set_palette(np.array(DEFAULT_WALL), floor, rooms.reshape(-1, 3))

    def recolor(self, rng: np.random.Generator) -> None:
        """Random colours for walls, floor and rooms in the frames that follow (a
        distractor); the state, objects, goal marker and agent keep theirs."""
        colors = rng.integers(0, 256, size=(2 + len(self.room_names), 3))
        self._set_palette(colors[0], colors[1], colors[2:])

    # ---- episode -------------------------------------------------------------------

    def _cell_center(self, cell: np.ndarray, jitter: float, rng: np.random.Generator) -> tuple[float, float]:
        dx, dy = rng.uniform(-jitter, jitter, size=2)
        return float(cell[1] + 0.5 + dx), float(cell[0] + 0.5 + dy)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options:
            raise ValueError(f"nav/{self.task} takes no reset options, got {sorted(options)}")
        # The scene (objects, goal) comes from its own generator when fixed, so only the
        # agent's start varies from episode to episode.
        rng = self.np_random if self.scene_seed is None else np.random.default_rng(self.scene_seed)
        # Objects: distinct (colour, shape) pairs, so a goal text names exactly one.
        count = self.layout.num_objects
        pairs = [(c, s) for c in COLORS for s in OBJECT_SHAPES]
        chosen = rng.choice(len(pairs), size=count, replace=False)
        cells = self.object_cells[rng.choice(len(self.object_cells), size=count, replace=False)]
        self.objects = []
        for pair_index, cell in zip(chosen, cells):
            x, y = self._cell_center(cell, jitter=0.2, rng=rng)
            self.objects.append(NavObject(*pairs[pair_index], x=x, y=y))

        self.goal_kind = self.goal_kinds[int(rng.integers(len(self.goal_kinds)))]
        if self.goal_kind == "room":
            index = int(rng.integers(len(self.room_names)))
            self.goal_name = self.room_names[index]
            self.goal_text = f"go to the {self.goal_name} room"
            self.goal_xy = self.room_centers[self.goal_name].copy()
            self._goal_object, self._goal_room_tile = None, 2 + index
            # Start outside the goal room.
            starts = self.free_cells[self.tile_class[self.free_cells[:, 0], self.free_cells[:, 1]] != 2 + index]
        else:
            self._goal_object = self.objects[int(rng.integers(count))]
            self._goal_room_tile = -1
            self.goal_name = self._goal_object.name
            self.goal_text = f"go to the {self.goal_name}"
            self.goal_xy = np.array([self._goal_object.x, self._goal_object.y])
            # Start at least 2 cells away, so no episode is won at its first step.
            centers = self.free_cells[:, ::-1] + 0.5
            starts = self.free_cells[np.linalg.norm(centers - self.goal_xy, axis=1) > 2.0 + GOAL_RADIUS]
        # Jitter keeps the agent's square inside its (free) start cell.
        self.agent_x, self.agent_y = self._cell_center(
            starts[int(self.np_random.integers(len(starts)))], jitter=0.5 - self.agent_radius - 0.01, rng=self.np_random
        )
        self.heading = float(self.np_random.uniform(-math.pi, math.pi))
        self.velocity = (0.0, 0.0)
        self._goal_distances = None
        self._topdown_scene = None
        self._started = True
        return self._observation(), {"success": self._succeeded()}

    def _succeeded(self) -> bool:
        if self._goal_object is not None:
            return math.hypot(self.agent_x - self._goal_object.x, self.agent_y - self._goal_object.y) <= GOAL_RADIUS
        return self.tile_class[int(self.agent_y), int(self.agent_x)] == self._goal_room_tile

    def _observation(self) -> np.ndarray:
        cx, cy = self._map_center
        return np.array(
            [
                (self.agent_x - cx) / cx,
                (self.agent_y - cy) / cy,
                self.velocity[0],
                self.velocity[1],
                math.cos(self.heading),
                math.sin(self.heading),
                (self.goal_xy[0] - cx) / cx,
                (self.goal_xy[1] - cy) / cy,
            ],
            dtype=np.float32,
        )

    def _slide(self, along: float, across: float, delta: float, horizontal: bool) -> float:
        """Move the agent's square ``delta`` along one axis, stopping flush at the first
        wall in its way. Every cell its leading edge enters is tested, so no speed
        can carry it through a wall."""
        radius = self.agent_radius
        walls = self._wall_rows
        first = math.floor(across - radius + _EPS)  # cells the square spans across
        last = math.floor(across + radius - _EPS)

        def blocked(cell: int) -> bool:
            if horizontal:
                return any(walls[r][cell] for r in range(first, last + 1))
            return any(walls[cell][c] for c in range(first, last + 1))

        if delta > 0:
            edge = math.floor(along + radius - _EPS)
            for cell in range(edge + 1, math.floor(along + delta + radius - _EPS) + 1):
                if blocked(cell):
                    return cell - radius
        elif delta < 0:
            edge = math.floor(along - radius + _EPS)
            for cell in range(edge - 1, math.floor(along + delta - radius + _EPS) - 1, -1):
                if blocked(cell):
                    return cell + 1 + radius
        return along + delta

    def step(self, action):
        if not self._started:
            raise RuntimeError(f"nav/{self.task}: call reset() before step()")
        command_x, command_y = (min(1.0, max(-1.0, float(v))) for v in np.asarray(action, dtype=np.float64).reshape(2))
        old_x, old_y = self.agent_x, self.agent_y
        # One axis at a time, so a diagonal push slides along a wall instead of sticking.
        self.agent_x = self._slide(old_x, old_y, command_x * self.max_speed, horizontal=True)
        self.agent_y = self._slide(old_y, self.agent_x, command_y * self.max_speed, horizontal=False)
        self.velocity = ((self.agent_x - old_x) / self.max_speed, (self.agent_y - old_y) / self.max_speed)
        if command_x * command_x + command_y * command_y > 0.01:  # a near-zero command keeps the heading
            self.heading = math.atan2(command_y, command_x)
        success = self._succeeded()
        if self.reward_type == "sparse":
            reward = 1.0 if success else 0.0
        else:
            distance = 0.0 if success else math.hypot(self.agent_x - self.goal_xy[0], self.agent_y - self.goal_xy[1])
            reward = -distance / self._diagonal
        terminated = success and self.terminate_on_success
        return self._observation(), reward, terminated, False, {"success": success}

    # ---- shortest paths (scripted policy) ------------------------------------------

    def goal_distances(self) -> np.ndarray:
        """Shortest path length in cells from every cell to the goal's cell(s); cached
        for the episode."""
        if self._goal_distances is None:
            if self._goal_object is not None:
                goal_cells = [(int(self._goal_object.y), int(self._goal_object.x))]
            else:
                goal_cells = self.room_cells[self.goal_name]
            self._goal_distances = path_distances(~self.walls, goal_cells)
        return self._goal_distances

    # ---- rendering -----------------------------------------------------------------

    def _draw_scene(
        self, world_x: np.ndarray, world_y: np.ndarray, reach: float = math.inf
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tiles, goal marker and objects at each pixel's map position -> (frame, floor
        mask); markers farther than ``reach`` from the agent are out of view and skipped."""
        # Pixels beyond the map clip onto its border, which is all walls.
        rows = np.clip(world_y.astype(np.intp), 0, self.map_height - 1)
        cols = np.clip(world_x.astype(np.intp), 0, self.map_width - 1)
        tiles = self.tile_class[rows, cols]
        frame = self._tile_colors[tiles]
        background = tiles != WALL_TILE
        def in_view(x: float, y: float) -> bool:
            return math.hypot(x - self.agent_x, y - self.agent_y) <= reach

        goal_x, goal_y = (float(v) for v in self.goal_xy)  # a NumPy float64 would upcast the frame
        if self.show_goal and in_view(goal_x, goal_y):
            squared = (world_x - goal_x) ** 2 + (world_y - goal_y) ** 2
            ring = (squared >= GOAL_RING[0] ** 2) & (squared <= GOAL_RING[1] ** 2)
            frame[ring] = GOAL_COLOR
            background &= ~ring
        for obj in self.objects:
            if not in_view(obj.x, obj.y):
                continue
            dx, dy = np.abs(world_x - obj.x), np.abs(world_y - obj.y)
            if obj.shape == "ball":
                hit = dx * dx + dy * dy <= OBJECT_SIZE**2
            elif obj.shape == "box":
                hit = np.maximum(dx, dy) <= OBJECT_SIZE * 0.85
            else:  # key: a diamond
                hit = dx + dy <= OBJECT_SIZE * 1.25
            frame[hit] = COLORS[obj.color]
            background &= ~hit
        return frame, background

    def _draw_agent(self, frame: np.ndarray, background: np.ndarray, world_x: np.ndarray, world_y: np.ndarray) -> None:
        radius = self.agent_radius
        body = (world_x - self.agent_x) ** 2 + (world_y - self.agent_y) ** 2 <= radius**2
        frame[body] = AGENT_COLOR
        background &= ~body
        nose_x = self.agent_x + 0.55 * radius * math.cos(self.heading)
        nose_y = self.agent_y + 0.55 * radius * math.sin(self.heading)
        frame[(world_x - nose_x) ** 2 + (world_y - nose_y) ** 2 <= (0.35 * radius) ** 2] = HEADING_COLOR

    def _downsample(self, frame: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """k x k samples -> one pixel: the mean colour, and floor only if every sample is."""
        k = self.supersample
        if k == 1:
            return frame, background
        height, width = frame.shape[0] // k, frame.shape[1] // k
        total = frame.reshape(height, k, width, k, 3).sum(axis=(1, 3), dtype=np.uint32)
        return ((total + k * k // 2) // (k * k)).astype(np.uint8), background.reshape(height, k, width, k).all(axis=(1, 3))

    def render(self):
        if self.render_mode is None:
            gym.logger.warn(f"nav/{self.task}: render() called with render_mode=None; pass render_mode='rgb_array'")
            return None
        if not self._started:
            raise RuntimeError(f"nav/{self.task}: call reset() before render()")
        if self.camera == "topdown":
            if self._topdown_scene is None:  # the map, objects and goal only change at reset
                fine = self._draw_scene(self._topdown_x, self._topdown_y)
                self._topdown_scene = (fine, self._downsample(*fine))  # (_downsample writes nothing)
            (fine_frame, fine_background), coarse = self._topdown_scene
            frame, background = (array.copy() for array in coarse)
            # Only the pixels the agent touches change: sample them again with the agent.
            k, scale = self.supersample, self._topdown_scale
            column = (self.agent_x - self.map_width / 2) / scale + self.image_width / 2
            row = (self.agent_y - self.map_height / 2) / scale + self.image_height / 2
            reach = self.agent_radius / scale + 1
            rows = slice(max(0, math.floor(row - reach)), min(self.image_height, math.ceil(row + reach)))
            cols = slice(max(0, math.floor(column - reach)), min(self.image_width, math.ceil(column + reach)))
            fine_rows, fine_cols = slice(rows.start * k, rows.stop * k), slice(cols.start * k, cols.stop * k)
            patch = fine_frame[fine_rows, fine_cols].copy()
            patch_background = fine_background[fine_rows, fine_cols].copy()
            self._draw_agent(
                patch, patch_background, self._topdown_x[fine_rows, fine_cols], self._topdown_y[fine_rows, fine_cols]
            )
            frame[rows, cols], background[rows, cols] = self._downsample(patch, patch_background)
        else:
            # follow: north up (facing -y, the agent's right is +x); egocentric: facing the heading
            cos, sin = (np.float32(0.0), np.float32(-1.0)) if self.camera == "follow" else (
                np.float32(math.cos(self.heading)), np.float32(math.sin(self.heading)))  # fmt: skip
            # Facing (cos, sin) with y down the map, the agent's right is (-sin, cos).
            world_x = self.agent_x + self._ego_ahead * cos - self._ego_right * sin
            world_y = self.agent_y + self._ego_ahead * sin + self._ego_right * cos
            frame, background = self._draw_scene(world_x, world_y, reach=self._ego_reach)
            self._draw_agent(frame, background, world_x, world_y)
            frame, background = self._downsample(frame, background)
        self._last_background = background
        return frame

    def background_mask(self) -> np.ndarray:
        """bool (H, W): the pixels of the last rendered frame that show floor (not
        walls, objects, goal marker or agent), where a distractor may paint."""
        if self._last_background is None:
            raise RuntimeError(f"nav/{self.task}: background_mask() needs a rendered frame; call render() first")
        return self._last_background.copy()


def _grid_policy(base: GridNavEnv) -> Callable[[Any], np.ndarray]:
    """Cell by cell down the shortest path, then straight at the goal, at full speed."""
    free = ~base.walls

    def act(_obs: Any) -> np.ndarray:
        row, col = int(base.agent_y), int(base.agent_x)
        next_row, next_col = _next_cell(free, base.goal_distances(), row, col)
        if (next_row, next_col) == (row, col):
            target_x, target_y = base.goal_xy
        else:
            target_x, target_y = next_col + 0.5, next_row + 0.5
        dx, dy = target_x - base.agent_x, target_y - base.agent_y
        distance = math.hypot(dx, dy)
        # Unit speed in the target's direction; slower only to stop on the target.
        scale = min(1.0, distance / base.max_speed) / max(distance, 1e-9)
        return np.array([dx * scale, dy * scale], dtype=np.float32)

    return act


# ---------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------


def make_env(task: str, **options: Any) -> gym.Env:
    """Build ``nav/<task>``; options as in :func:`embodied.make`, plus for PointMaze
    ``reward_type``, ``continuing_task``, ``reset_target`` and for the grid worlds
    ``reward_type``, ``goal_kind``, ``terminate_on_success``, ``show_goal``,
    ``egocentric_cells``, ``scene_seed`` (see the module docstring)."""
    if task not in TASKS:
        raise EnvOptionError(f"unknown nav task {task!r}; closest: {', '.join(closest(task, TASKS)) or 'none'}")
    is_pointmaze = task in POINTMAZE_TASKS
    common, specific = split_options("nav", options, POINTMAZE_OPTIONS if is_pointmaze else GRID_OPTIONS)
    env_class = PointMazeEnv if is_pointmaze else GridNavEnv
    env = env_class(
        task,
        render_mode=common["render_mode"],
        image_size=common["image_size"],
        camera=common["camera"],
        **specific,
    )
    return apply_options(env, common)


def scripted_policy(env: gym.Env) -> Callable[[Any], np.ndarray]:
    """An oracle for any nav env: it reads the true state, so any ``obs`` mode works."""
    base = env.unwrapped
    if isinstance(base, GridNavEnv):
        return _grid_policy(base)
    if isinstance(base, PointMazeEnv):
        return _pointmaze_policy(base)
    raise TypeError(f"scripted_policy needs a nav/<task> env, got {type(base).__name__}")

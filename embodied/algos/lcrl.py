"""LC-RL (Fu, Korattikara, Levine & Guadarrama 2019, "From Language to Goals: Inverse
Reinforcement Learning for Vision-Based Instruction Following"): a language-conditioned
reward r_θ(s, ℓ) learned by maximum-entropy IRL from demonstrations across many
(instruction, layout) pairs, then optimised by RL in layouts and for instructions it
never saw; against it, a language-conditioned policy cloned from the same demonstrations.

The tasks are our grid navigation envs (``nav/rooms-v0``, ``nav/open-v0``,
``nav/corridor-v0``) discretised as the paper does where dynamics are known: a state is a
free cell, the five actions stay or move to a 4-neighbour (a wall means staying), and a
cell is described by layout-independent features (the colour and shape of an object on
it, the colour of the room it belongs to, whether it is a doorway). Instructions come
from ``envs/instructions/nav.yaml`` and are embedded by all-MiniLM-L6-v2
(:class:`embodied.nets.text.SentenceEncoder`).

MaxEnt IRL, exactly: with deterministic dynamics and horizon T, a trajectory's likelihood
is exp(Σ_t r(s_{t+1})) / Z(s_0), and log Z(s_0) = V_0(s_0) from soft value iteration
(V_T = 0, Q_t(s, a) = r(s') + V_{t+1}(s'), V_t = logsumexp_a Q_t). The loss is the
demonstrations' negative log-likelihood V_0(s_0) − Σ_t r(s_{t+1}); autograd through the
recursion gives the paper's gradient E_demo[∇r] − E_soft-optimal[∇r].

Test time: value iteration on the learned reward in the new layout (the RL step, exact
with known dynamics), whose greedy moves a controller follows in the continuous env;
success is the env's own ``info["success"]``.

The Meta-World family (``metaworld/*`` env ids): "move the gripper to the {thing}" in the
scenes of Meta-World v3 tasks, each naming its object and, where it is a thing, its goal
(``envs/instructions/metaworld.yaml``). The hand's workspace is a 3-D grid of 5 × 5 × 10 cm
cells (``MW_SHAPE``) with seven moves (stay, ±x, ±y, ±z); a cell's features say which kinds
of thing lie in it. The hand follows cell moves by Meta-World's scripted-policy P
controller, and success is the hand entering the named thing's cell.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from embodied.nets.text import EMBEDDING_DIM

#: (d_row, d_col) of the five actions: stay, up, down, left, right.
MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
COLOR_NAMES = ("red", "green", "blue", "yellow")
SHAPE_NAMES = ("ball", "box", "key")
#: per-cell features: object colour (4), object shape (3), room colour (4), doorway, wall
FEATURES = len(COLOR_NAMES) + len(SHAPE_NAMES) + len(COLOR_NAMES) + 2
GRID = 13  # every layout fits a 13 x 13 grid (smaller ones are padded with wall)

#: Meta-World: the hand's workspace (x, y, z in metres) as a grid of MW_SHAPE cells.
MW_LOW = np.array([-0.4, 0.4, 0.0])
MW_CELL = np.array([0.05, 0.05, 0.1])
MW_SHAPE = (16, 12, 4)
#: (dx, dy, dz) of the seven hand moves: stay, then ±x, ±y, ±z.
MW_MOVES = ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
MW_GAIN = 25.0  # P gain from a position error (m) to an action (Meta-World's scripted policies)


@dataclass
class LCRLConfig:
    """LC-RL and the cloned-policy baseline. The paper's reward is a CNN over the top-down
    view and an LSTM over the words; here the view is the grid's cell features and the
    words a frozen sentence encoder, fused by a product of projections so the instruction
    picks which features count."""

    hidden_dim: int = 128  # width of the feature and language projections
    horizon: int = 40  # T of the soft value iteration (every demo fits)
    learning_rate: float = 1e-3  # Adam
    steps: int = 1500  # gradient steps
    batch_tasks: int = 32  # (instruction, layout) pairs per step
    plan_gamma: float = 0.95  # discount of the test-time value iteration
    plan_iterations: int = 60  # its sweeps (more than any shortest path)
    seed: int = 0


@dataclass
class GridTask:
    """One (instruction, layout) pair, discretised; cells index a padded GRID x GRID grid."""

    env_id: str
    seed: int
    instruction: str
    goal: tuple[str, ...]  # ("object", colour, shape) or ("room", colour)
    features: np.ndarray  # (GRID * GRID, FEATURES) float32
    next_cell: np.ndarray  # (GRID * GRID, 5) int64: the cell each action leads to
    start: int
    goal_cells: np.ndarray  # cells where the instruction is satisfied
    demo: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # cells s_0..s_T of a shortest path
    shape: tuple = (GRID, GRID)  # the grid the cells index (row-major)


# --- tasks -------------------------------------------------------------------------------------
def instruction_templates(family: str = "nav") -> dict[str, Any]:
    """The instruction texts of ``envs/instructions/{family}.yaml`` (nav or metaworld)."""
    import yaml

    from embodied.rewards.text2reward.describe import envs_root

    path = envs_root() / "instructions" / f"{family}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"instruction texts are missing: {path}")
    return yaml.safe_load(path.read_text())


def discretise(base, goal: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Features, next-cell table, start cell and goal cells of a reset GridNavEnv."""
    height, width = base.walls.shape
    if height > GRID or width > GRID:
        raise ValueError(f"{base.task} is {height}x{width}: LC-RL's grid holds at most {GRID}x{GRID}")
    walls = np.ones((GRID, GRID), bool)
    walls[:height, :width] = base.walls
    features = np.zeros((GRID, GRID, FEATURES), np.float32)
    features[..., -1] = walls
    rooms = np.full((GRID, GRID), -1)
    rooms[:height, :width] = base.tile_class - 2  # room k's floor is tile 2 + k
    for k, name in enumerate(base.room_names):
        features[rooms == k, 7 + COLOR_NAMES.index(name)] = 1
    grid = np.array([list(row) for row in base.layout.rows])
    features[:height, :width, 11] = grid == "D"
    for obj in base.objects:
        row, col = int(obj.y), int(obj.x)
        features[row, col, COLOR_NAMES.index(obj.color)] = 1
        features[row, col, 4 + SHAPE_NAMES.index(obj.shape)] = 1
    next_cell = np.zeros((GRID * GRID, len(MOVES)), np.int64)
    for row in range(GRID):
        for col in range(GRID):
            for a, (dr, dc) in enumerate(MOVES):
                r, c = row + dr, col + dc
                free = 0 <= r < GRID and 0 <= c < GRID and not walls[r, c] and not walls[row, col]
                next_cell[row * GRID + col, a] = r * GRID + c if free else row * GRID + col
    start = int(base.agent_y) * GRID + int(base.agent_x)
    if goal[0] == "object":
        target = next(o for o in base.objects if (o.color, o.shape) == goal[1:])
        goal_cells = np.array([int(target.y) * GRID + int(target.x)])
    else:
        goal_cells = np.array([r * GRID + c for r, c in base.room_cells[goal[1]]])
    return features.reshape(GRID * GRID, FEATURES), next_cell, start, goal_cells


def shortest_path(task: GridTask, horizon: int) -> np.ndarray | None:
    """Cells s_0..s_T of a shortest 4-connected path to a goal cell, then staying (None if longer than T)."""
    goals = set(task.goal_cells.tolist())
    previous = {task.start: -1}
    queue = deque([task.start])
    end = None
    while queue:
        cell = queue.popleft()
        if cell in goals:
            end = cell
            break
        for nxt in task.next_cell[cell, 1:]:
            if int(nxt) not in previous:
                previous[int(nxt)] = cell
                queue.append(int(nxt))
    if end is None:
        return None
    path = [end]
    while previous[path[-1]] != -1:
        path.append(previous[path[-1]])
    path = path[::-1]
    if len(path) - 1 > horizon:
        return None
    return np.array(path + [end] * (horizon + 1 - len(path)), np.int64)


def make_tasks(env_ids: Sequence[str], count: int, split: str, seed: int, horizon: int = 40) -> list[GridTask]:
    """``count`` tasks from fresh episodes of the envs (in turn). ``split``:
    ``train`` (training templates, goals not held out), ``new-instructions`` (held-out
    templates and, for objects, held-out goals), ``new-layouts`` (training templates and
    goals, meant for a layout left out of training)."""
    if split not in ("train", "new-instructions", "new-layouts"):
        raise ValueError(f"split must be train, new-instructions or new-layouts, got {split!r}")
    metaworld = [env_id.startswith("metaworld/") for env_id in env_ids]
    if any(metaworld) and not all(metaworld):
        raise ValueError(f"one task family at a time (nav or metaworld), got {', '.join(env_ids)}")
    if any(metaworld):
        return make_metaworld_tasks(env_ids, count, split, seed, horizon)
    texts = instruction_templates()
    held_out = {tuple(pair) for pair in texts["held_out_objects"]}

    def describe(env_id: str, env, episode_seed: int, rng: np.random.Generator) -> GridTask | None:
        env.reset(seed=episode_seed)
        base = env.unwrapped
        if base.goal_kind == "room":
            goal: tuple[str, ...] = ("room", base.goal_name)
            if split == "new-instructions" and rng.random() < 0.5:  # mostly new goals: objects
                return None
        else:
            goal = ("object", *base.goal_name.split(" "))
            if (goal[1:] in held_out) != (split == "new-instructions"):
                return None
        templates = texts[goal[0]]["test" if split == "new-instructions" else "train"]
        template = templates[int(rng.integers(len(templates)))]
        instruction = template.format(color=goal[1], shape=goal[2] if len(goal) > 2 else "")
        return GridTask(env_id, episode_seed, instruction, goal, *discretise(base, goal))

    return _draw_tasks(env_ids, count, split, seed, horizon, describe)


def _draw_tasks(env_ids: Sequence[str], count: int, split: str, seed: int, horizon: int, describe) -> list[GridTask]:
    """Tasks from fresh episodes of the envs in turn: ``describe(env_id, env, episode_seed, rng)``
    resets the env and returns its task, or None to skip the episode; a task whose shortest
    path is longer than the horizon is skipped too, and the rest get it as their demo."""
    import embodied

    envs = [embodied.make(env_id) for env_id in env_ids]
    rng = np.random.default_rng(seed)
    tasks: list[GridTask] = []
    try:
        for episode in itertools.count():
            if len(tasks) == count:
                return tasks
            if episode >= 200 * count:
                raise RuntimeError(f"could not draw {count} {split} tasks from {', '.join(env_ids)}")
            task = describe(env_ids[episode % len(envs)], envs[episode % len(envs)], seed * 1_000_003 + episode, rng)
            demo = None if task is None else shortest_path(task, horizon)
            if demo is not None:
                task.demo = demo
                tasks.append(task)
    finally:
        for env in envs:
            env.close()


def mw_cell(position) -> int:
    """The Meta-World grid cell holding a point (x, y, z) of the workspace (clamped to the grid)."""
    index = np.floor((np.asarray(position[:3], np.float64) - MW_LOW) / MW_CELL).astype(int)
    return int(np.ravel_multi_index(tuple(index), MW_SHAPE, mode="clip"))


def mw_centre(cell: int) -> np.ndarray:
    return MW_LOW + (np.array(np.unravel_index(cell, MW_SHAPE)) + 0.5) * MW_CELL


def mw_next_cell() -> np.ndarray:
    """(cells, 7): the cell each hand move leads to (a move off the grid stays: clipping the
    one coordinate that left the grid gives back the cell it left)."""
    index = np.stack(np.unravel_index(np.arange(int(np.prod(MW_SHAPE))), MW_SHAPE), 1)  # (cells, 3)
    targets = index[:, None, :] + np.array(MW_MOVES)  # (cells, 7, 3)
    return np.ravel_multi_index(tuple(np.moveaxis(targets, -1, 0)), MW_SHAPE, mode="clip").astype(np.int64)


def mw_kinds(texts: dict) -> list[str]:
    """Every kind of thing the scenes name, in a fixed order: one feature each."""
    return sorted({kind for scene in texts["scenes"].values() for kind in scene.values()})


def make_metaworld_tasks(env_ids: Sequence[str], count: int, split: str, seed: int, horizon: int = 40) -> list[GridTask]:
    """``make_tasks`` for the Meta-World family: per task a fresh reset of a scene, one of its
    things as the goal, an instruction from the split's templates (``new-instructions``: the
    held-out paraphrases), a shortest 3-D grid path from the hand's cell as the demo. The
    held-out scenes may only be drawn for ``new-layouts``, and ``new-layouts`` only from them."""
    texts = instruction_templates("metaworld")
    scenes, held_out, kinds = texts["scenes"], set(texts["held_out_scenes"]), mw_kinds(texts)
    names = [env_id.split("/", 1)[1] for env_id in env_ids]
    unknown = [name for name in names if name not in scenes]
    if unknown:
        raise ValueError(f"no scene description for {', '.join(unknown)} in envs/instructions/metaworld.yaml")
    misplaced = [name for name in names if (name in held_out) != (split == "new-layouts")]
    if misplaced:
        raise ValueError(f"{split} tasks cannot come from {', '.join(misplaced)}: the held-out scenes "
                         f"({', '.join(sorted(held_out))}) are for new-layouts only, and only they are")  # fmt: skip
    next_cell = mw_next_cell()

    def describe(env_id: str, env, episode_seed: int, rng: np.random.Generator) -> GridTask | None:
        obs, _ = env.reset(seed=episode_seed)
        scene = scenes[env_id.split("/", 1)[1]]
        where = {scene["object"]: obs[4:7], **({scene["goal"]: obs[36:39]} if "goal" in scene else {})}
        features = np.zeros((len(next_cell), len(kinds)), np.float32)
        for kind, position in where.items():
            features[mw_cell(position), kinds.index(kind)] = 1
        thing = sorted(where)[int(rng.integers(len(where)))]
        templates = texts["test" if split == "new-instructions" else "train"]
        instruction = templates[int(rng.integers(len(templates)))].format(thing=thing)
        start, goal_cells = mw_cell(obs[:3]), np.array([mw_cell(where[thing])])
        if start in goal_cells:
            return None
        return GridTask(env_id, episode_seed, instruction, ("thing", thing), features, next_cell, start, goal_cells,
                        shape=MW_SHAPE)  # fmt: skip

    return _draw_tasks(env_ids, count, split, seed, horizon, describe)


# --- the reward and MaxEnt IRL -----------------------------------------------------------------
class LanguageReward(nn.Module):
    """r_θ(cell, instruction) = MLP(relu(W_f φ(cell)) ⊙ W_ℓ e(instruction))."""

    def __init__(self, hidden_dim: int = 128, features: int = FEATURES):
        super().__init__()
        self.features = nn.Linear(features, hidden_dim)
        self.language = nn.Linear(EMBEDDING_DIM, hidden_dim)
        self.head = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))

    def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """features (B, N, F), embedding (B, E) → rewards (B, N)."""
        fused = F.relu(self.features(features)) * self.language(embedding)[:, None, :]
        return self.head(fused).squeeze(-1)


def soft_values(rewards: torch.Tensor, next_cell: torch.Tensor, horizon: int) -> torch.Tensor:
    """V_0 of finite-horizon soft value iteration: rewards (B, N), next_cell (B, N, 5) → (B, N)."""
    values = torch.zeros_like(rewards)
    flat_next = next_cell.reshape(next_cell.shape[0], -1)
    for _ in range(horizon):
        arrive = rewards + values  # r(s') + V_{t+1}(s') for every s'
        values = torch.logsumexp(torch.gather(arrive, 1, flat_next).reshape(next_cell.shape), -1)
    return values


def demo_nll(rewards: torch.Tensor, next_cell: torch.Tensor, starts: torch.Tensor, demos: torch.Tensor,
             horizon: int) -> torch.Tensor:  # fmt: skip
    """Mean over tasks of −log P(demo) = V_0(s_0) − Σ_t r(s_{t+1}), per step."""
    values = soft_values(rewards, next_cell, horizon)
    log_z = values.gather(1, starts[:, None]).squeeze(1)
    demo_return = rewards.gather(1, demos[:, 1:]).sum(1)
    return ((log_z - demo_return) / horizon).mean()


def stack(tasks: Sequence[GridTask], embeddings: np.ndarray, device) -> dict[str, torch.Tensor]:
    return {
        "features": torch.as_tensor(np.stack([t.features for t in tasks]), device=device),
        "next_cell": torch.as_tensor(np.stack([t.next_cell for t in tasks]), device=device),
        "start": torch.as_tensor(np.array([t.start for t in tasks]), device=device),
        "demo": torch.as_tensor(np.stack([t.demo for t in tasks]), device=device),
        "embedding": torch.as_tensor(embeddings, device=device),
    }


def _fit(module: nn.Module, count: int, config: LCRLConfig, loss_of, log_every: int = 0) -> list[float]:
    """Adam on ``loss_of(task_index, generator)`` over random batches of the ``count`` tasks."""
    optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    for step in range(config.steps):
        index = torch.randint(count, (config.batch_tasks,), generator=generator)
        loss = loss_of(index, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"{type(module).__name__} step {step + 1}: loss {np.mean(losses[-log_every:]):.3f}", flush=True)
    return losses


def fit_reward(tasks: Sequence[GridTask], embeddings: np.ndarray, config: LCRLConfig,
               device: str = "cpu", log_every: int = 0) -> tuple[LanguageReward, list[float]]:  # fmt: skip
    """MaxEnt IRL over the tasks (embeddings[i] embeds tasks[i].instruction)."""
    torch.manual_seed(config.seed)
    data = stack(tasks, embeddings, device)
    reward = LanguageReward(config.hidden_dim, tasks[0].features.shape[1]).to(device)

    def loss_of(index: torch.Tensor, _generator) -> torch.Tensor:
        index = index.to(device)
        rewards = reward(data["features"][index], data["embedding"][index])
        return demo_nll(rewards, data["next_cell"][index], data["start"][index], data["demo"][index], config.horizon)

    return reward, _fit(reward, len(tasks), config, loss_of, log_every)


def plan(rewards: np.ndarray, next_cell: np.ndarray, gamma: float, iterations: int) -> np.ndarray:
    """Greedy action per cell after value iteration on ``rewards`` (the test-time RL step)."""
    values = np.zeros_like(rewards)
    for _ in range(iterations):
        values = (rewards + gamma * values)[next_cell].max(1)
    return (rewards + gamma * values)[next_cell].argmax(1)


# --- the cloned baseline -------------------------------------------------------------------------
class LanguagePolicy(nn.Module):
    """π(a | grid, agent cell, instruction): per-cell features fused with the instruction as
    the reward fuses them, an egocentric crop of 2·n − 1 cells per axis centred on the agent,
    two 2-D convolutions and an MLP to the moves. A 3-D grid (Meta-World's) has its last
    axis, the few height levels, folded into the channels, so both families share the
    convolutions."""

    def __init__(self, hidden_dim: int = 128, channels: int = 16, features: int = FEATURES,
                 shape: tuple = (GRID, GRID), actions: int = len(MOVES)):  # fmt: skip
        super().__init__()
        self.shape, self.crop = tuple(shape), tuple(2 * n - 1 for n in shape)
        if len(self.shape) not in (2, 3):
            raise ValueError(f"grids are 2-D or 3-D, got shape {self.shape}")
        planes = channels * math.prod(self.crop[2:])  # a 3-D crop's last axis joins the channels
        self.features = nn.Linear(features, channels)
        self.language = nn.Linear(EMBEDDING_DIM, channels)
        self.convs = nn.Sequential(nn.Conv2d(planes, channels, 3, 2, 1), nn.ReLU(),
                                   nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU())  # fmt: skip
        cells = math.prod(math.ceil(math.ceil(n / 2) / 2) for n in self.crop[:2])
        # The crop as one gather from the zero-padded grid (3n − 2 cells per axis): a cell's
        # flat index is linear in its coordinates, so a crop is the agent's cell's index in the
        # padded grid plus fixed offsets. (Slicing per sample cost a full-size gradient for
        # every sample: 6× slower on Meta-World's grid.)
        padded = tuple(3 * n - 2 for n in self.shape)
        window = np.meshgrid(*[np.arange(c) for c in self.crop], indexing="ij")
        buffers = {"offsets": np.ravel_multi_index(window, padded).ravel(),
                   "sizes": np.array(self.shape),
                   "strides": np.cumprod((1, *self.shape[:0:-1]))[::-1].copy(),  # of the grid's flat index
                   "padded_strides": np.cumprod((1, *padded[:0:-1]))[::-1].copy()}  # fmt: skip
        for name, value in buffers.items():
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.long), persistent=False)
        self.head = nn.Sequential(nn.Linear(channels * cells, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, actions))

    def forward(self, features: torch.Tensor, embedding: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """features (B, N, F), embedding (B, E), agent cells (B,) → action logits (B, moves)."""
        fused = F.relu(self.features(features)) * self.language(embedding)[:, None, :]  # (B, N, C)
        batch, _, channels = fused.shape
        grid = fused.transpose(1, 2).reshape(batch, channels, *self.shape)
        padded = F.pad(grid, [n - 1 for n in reversed(self.shape) for _ in range(2)])  # outside the map: zeros
        coordinates = cells.long()[:, None] // self.strides % self.sizes  # (B, axes), on the device
        corner = (coordinates * self.padded_strides).sum(1)
        index = (corner[:, None] + self.offsets)[:, None, :]
        crops = padded.flatten(2).gather(2, index.expand(-1, channels, -1)).reshape(batch, channels, *self.crop)
        if len(self.shape) == 3:  # (B, C, X, Y, Z) → (B, C·Z, X, Y)
            crops = crops.permute(0, 1, 4, 2, 3).flatten(1, 2)
        return self.head(self.convs(crops).flatten(1))


def demo_actions(task: GridTask) -> np.ndarray:
    """The action taken at each step of the demo (stay once there)."""
    actions = np.zeros(len(task.demo) - 1, np.int64)
    for t, (cell, nxt) in enumerate(zip(task.demo[:-1], task.demo[1:])):
        actions[t] = int(np.flatnonzero(task.next_cell[cell] == nxt)[0])
    return actions


def fit_policy(tasks: Sequence[GridTask], embeddings: np.ndarray, config: LCRLConfig,
               device: str = "cpu") -> tuple[LanguagePolicy, list[float]]:  # fmt: skip
    """Behaviour cloning on the demos' (cell, action) pairs up to the goal and the first
    stay there (the padding's repeated stays would teach it mostly to stand still), as
    many steps as LC-RL."""
    torch.manual_seed(config.seed)
    data = stack(tasks, embeddings, device)
    actions = torch.as_tensor(np.stack([demo_actions(t) for t in tasks]), device=device)  # (tasks, T)
    moves = torch.as_tensor([int((demo_actions(t) != 0).sum()) for t in tasks], device=device)
    policy = LanguagePolicy(config.hidden_dim, features=tasks[0].features.shape[1], shape=tasks[0].shape,
                            actions=tasks[0].next_cell.shape[1]).to(device)  # fmt: skip

    def loss_of(index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        index = index.to(device)
        step = (torch.rand(len(index), generator=generator).to(device) * (moves[index] + 1)).long()
        logits = policy(data["features"][index], data["embedding"][index], data["demo"][index, step])
        return F.cross_entropy(logits, actions[index, step])

    return policy, _fit(policy, len(tasks), config, loss_of)


# --- acting in the continuous env --------------------------------------------------------------
def run_episode(task: GridTask, choose, max_steps: int | None = None) -> bool:
    """Replay the task's episode in its env; each step ``choose(cell) -> action`` picks a move
    and the agent heads for that cell's centre. True if ``info['success']``."""
    import embodied

    if task.env_id.startswith("metaworld/"):
        return _run_metaworld_episode(task, choose, max_steps)
    env = embodied.make(task.env_id)
    try:
        env.reset(seed=task.seed)
        base = env.unwrapped
        limit = max_steps or env.spec.max_episode_steps or 200
        for _ in range(limit):
            cell = int(base.agent_y) * GRID + int(base.agent_x)
            target = task.next_cell[cell, choose(cell)]
            goal_x, goal_y = target % GRID + 0.5, target // GRID + 0.5
            delta = np.array([goal_x - base.agent_x, goal_y - base.agent_y]) / base.max_speed
            action = delta / max(1.0, float(np.abs(delta).max()))
            _, _, terminated, truncated, info = env.step(action.astype(np.float32))
            if info.get("success"):
                return True
            if terminated or truncated:
                return False
        return False
    finally:
        env.close()


def _run_metaworld_episode(task: GridTask, choose, max_steps: int | None = None) -> bool:
    """``run_episode`` in a Meta-World scene: the hand heads for the chosen cell's centre
    (gripper open); True once the hand is in a goal cell."""
    import embodied

    env = embodied.make(task.env_id)
    try:
        obs, _ = env.reset(seed=task.seed)
        action = np.zeros(env.action_space.shape, np.float32)
        action[3] = -1.0
        for _ in range(max_steps or env.spec.max_episode_steps or 500):
            cell = mw_cell(obs[:3])
            if cell in task.goal_cells:
                return True
            target = mw_centre(int(task.next_cell[cell, choose(cell)]))
            action[:3] = np.clip((target - obs[:3]) * MW_GAIN, -1.0, 1.0)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
        return mw_cell(obs[:3]) in task.goal_cells
    finally:
        env.close()


def success_rate_planned(tasks: Sequence[GridTask], rewards, config: LCRLConfig) -> float:
    """Value iteration on each task's cell rewards (rewards[i] for tasks[i]), then the episode."""
    wins = []
    for task, task_rewards in zip(tasks, rewards):
        policy = plan(np.asarray(task_rewards), task.next_cell, config.plan_gamma, config.plan_iterations)
        wins.append(run_episode(task, lambda cell: int(policy[cell])))
    return float(np.mean(wins))


@torch.no_grad()
def success_rate_lcrl(reward: LanguageReward, tasks: Sequence[GridTask], embeddings: np.ndarray,
                      config: LCRLConfig) -> float:  # fmt: skip
    """Value iteration on the learned reward in each task's layout, then the episode."""
    device = next(reward.parameters()).device
    data = stack(tasks, embeddings, device)
    return success_rate_planned(tasks, reward(data["features"], data["embedding"]).cpu().numpy(), config)


def success_rate_shortest_path(tasks: Sequence[GridTask], config: LCRLConfig) -> float:
    """The same, on the true goal cells (reward 1 there): the ceiling the controller sets."""
    goals = []
    for task in tasks:
        goals.append(np.zeros(len(task.next_cell)))
        goals[-1][task.goal_cells] = 1.0
    return success_rate_planned(tasks, goals, config)


@torch.no_grad()
def success_rate_policy(policy: LanguagePolicy, tasks: Sequence[GridTask], embeddings: np.ndarray) -> float:
    device = next(policy.parameters()).device
    data = stack(tasks, embeddings, device)
    wins = []
    for i, task in enumerate(tasks):
        features, embedding = data["features"][i: i + 1], data["embedding"][i: i + 1]
        choose = lambda cell: int(policy(features, embedding, torch.tensor([cell], device=device)).argmax())  # noqa: E731
        wins.append(run_episode(task, choose))
    return float(np.mean(wins))


def save_reward(path: str | Path, reward: LanguageReward, config: LCRLConfig) -> Path:
    """The reward's weights and config (written to a temporary name, then renamed)."""
    import dataclasses
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": "embodied-lcrl-reward-v1", "config": dataclasses.asdict(config),
                "features": reward.features.in_features, "weights": reward.state_dict()}, tmp)  # fmt: skip
    os.replace(tmp, path)
    return path


def load_reward(path: str | Path) -> tuple[LanguageReward, LCRLConfig]:
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != "embodied-lcrl-reward-v1":
        raise ValueError(f"{path} is not an LC-RL reward (format embodied-lcrl-reward-v1)")
    config = LCRLConfig(**payload["config"])
    reward = LanguageReward(config.hidden_dim, payload.get("features", FEATURES))
    reward.load_state_dict(payload["weights"])
    return reward, config

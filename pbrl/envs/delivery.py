"""The delivery gridworld of Knox et al. (2022), "Models of human preference for learning
reward functions", as a gymnasium environment and as exact transition tables.

A board is a grid (list of rows) of integer cell codes:

====  ===============  ====  ====================
code  cell             code  cell
====  ===============  ====  ====================
0     blank            6     mud
1     goal (terminal)  7     mud + goal
2     house (blocked)  8     mud + house
3     sheep (terminal) 9     mud + sheep
4     coin             10    mud + coin
5     road block       11    mud + road block
====  ===============  ====  ====================

Actions are (row, column) deltas: 0 up (-1, 0), 1 down (+1, 0), 2 left (0, -1),
3 right (0, +1). Reward is ``w · φ`` with features ``φ = [gas, goal, sheep, coin,
road_block, mud]`` and true weights ``w = [-1, 50, -50, 1, -1, -2]``.

Per-transition features (the cost of moving is gas, or mud instead of gas, and is paid for
the cell the agent is in after the move; entering a terminal cell pays no moving cost, so
that mud + goal is +50 like goal):

=================================  ========================  ======
transition                         φ                          w · φ
=================================  ========================  ======
in a goal or sheep cell (absorbing) 0                          0
blocked (off board / house), dry   gas                        -1
blocked (off board / house), mud   mud                        -2
enter blank                        gas                        -1
enter goal / mud + goal            goal                       +50
enter sheep / mud + sheep          sheep                      -50
enter coin                         gas + coin                 0
enter road block                   gas + road_block           -2
enter mud                          mud                        -2
enter mud + coin                   mud + coin                 -1
enter mud + road block             mud + road_block           -3
=================================  ========================  ======

Coins are not consumed, so the board (and the MDP) is just the agent's cell. House cells
are never occupied: in the tables they are zero-reward self-loops, like terminal cells.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import SupportsInt

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import ArrayLike

BLANK, GOAL, HOUSE, SHEEP, COIN, ROAD_BLOCK, MUD = range(7)
N_CODES = 12
FEATURE_NAMES = ("gas", "goal", "sheep", "coin", "road_block", "mud")
TRUE_WEIGHTS = np.array([-1.0, 50.0, -50.0, 1.0, -1.0, -2.0])
GAS, F_GOAL, F_SHEEP, F_COIN, F_ROAD, F_MUD = range(6)

ACTION_DELTAS = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.int64)
ACTION_NAMES = ("up", "down", "left", "right")
N_ACTIONS = 4
NOOP = 4  # table-only action "no move, the episode already ended": a (0, 0) move in a segment

_SYMBOLS = {BLANK: ".", GOAL: "G", HOUSE: "H", SHEEP: "S", COIN: "c", ROAD_BLOCK: "r"}


class BoardError(ValueError):
    """A board that cannot be used (bad file, bad cell code, unreachable cells...)."""


@dataclass(frozen=True)
class DeliveryTables:
    """Exact deterministic MDP of a board over ``S = rows * cols`` cells, 5 actions.

    Action 4 (``NOOP``) is a zero-reward self-loop, meaningful only in terminal cells; it
    lets segments that ended early be scored without special cases.
    """

    next_state: np.ndarray  # [S, 5] int, cell index after each action
    features: np.ndarray  # [S, 5, 6] float, φ of each transition
    terminal: np.ndarray  # [S] bool, goal or sheep cell
    house: np.ndarray  # [S] bool, never occupied
    shape: tuple[int, int]

    @property
    def n_states(self) -> int:
        return int(self.terminal.size)

    @property
    def start_states(self) -> np.ndarray:
        """Cells an episode (or a segment) may start in: neither terminal nor a house."""
        return np.flatnonzero(~self.terminal & ~self.house)

    def index(self, cells: ArrayLike) -> np.ndarray:
        """(row, col) pairs ``[..., 2]`` to flat cell indices."""
        cells = np.asarray(cells)
        return cells[..., 0] * self.shape[1] + cells[..., 1]

    def cell(self, index: ArrayLike) -> np.ndarray:
        """Flat cell indices to (row, col) pairs ``[..., 2]``."""
        return np.stack(np.divmod(np.asarray(index), self.shape[1]), axis=-1)

    def cells_without_exit(self) -> np.ndarray:
        """Start cells ``[M, 2]`` from which no goal or sheep cell can be reached.

        Undiscounted values there are unbounded below (gas is paid forever)."""
        reach = self.terminal.copy()
        while True:  # backward reachability over the deterministic moves
            grown = (reach | reach[self.next_state[:, :N_ACTIONS]].any(axis=1)) & ~self.house
            if np.array_equal(grown, reach):
                break
            reach = grown
        return self.cell(np.setdiff1d(self.start_states, np.flatnonzero(reach)))


class Board:
    """A delivery board: an ``[rows, cols]`` int grid of cell codes (see module docstring)."""

    def __init__(self, grid: ArrayLike, name: str = "") -> None:
        try:
            array = np.asarray(grid, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise BoardError(f"board must be a rectangular list of rows of ints: {exc}") from exc
        if array.ndim != 2 or array.size == 0:
            raise BoardError(
                f"board must be a non-empty rectangular list of rows, got shape {array.shape}"
            )
        if not np.all(np.isin(array, np.arange(N_CODES))):
            bad = np.unique(array[~np.isin(array, np.arange(N_CODES))])[:5].tolist()
            raise BoardError(f"board has unknown cell code(s) {bad}: use integers 0..11")
        self.grid = array.astype(np.int64)
        self.name = name
        self.mud = self.grid >= MUD
        self.base = np.where(self.mud, self.grid - MUD, self.grid)  # cell type without mud
        self._tables: DeliveryTables | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.grid.shape[0]), int(self.grid.shape[1]))

    @property
    def tables(self) -> DeliveryTables:
        if self._tables is None:
            self._tables = _build_tables(self)
        return self._tables

    def __repr__(self) -> str:
        return f"Board({self.name or 'unnamed'}, {self.shape[0]}x{self.shape[1]})"

    def render(self, agent: tuple[int, int] | None = None) -> str:
        """Text picture: ``.`` blank, G goal, H house, S sheep, c coin, r road block, ``~``
        mud (``G~`` mud + goal, ...), ``@`` the agent."""
        lines = []
        for r in range(self.shape[0]):
            row = []
            for c in range(self.shape[1]):
                sym = _SYMBOLS[int(self.base[r, c])]
                if self.mud[r, c]:
                    sym = "~" if sym == "." else sym + "~"
                if agent is not None and (r, c) == tuple(agent):
                    sym = "@"
                row.append(f"{sym:>2}")
            lines.append(" ".join(row))
        return "\n".join(lines)

    # -- files -----------------------------------------------------------------------------
    @staticmethod
    def load(path: str | os.PathLike[str]) -> Board:
        """Read a JSON board: a list of rows, or ``{"grid": [...], "name": ...}``."""
        path = Path(path)
        if not path.is_file():
            raise BoardError(f"board file {path} does not exist: pass a JSON board file")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BoardError(f"board file {path} is not valid JSON: {exc}") from exc
        if isinstance(data, dict):
            if "grid" not in data:
                raise BoardError(f"board file {path} needs a 'grid' key (a list of rows)")
            return Board(data["grid"], name=str(data.get("name", path.stem)))
        return Board(data, name=path.stem)

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = ",\n    ".join(json.dumps(row) for row in self.grid.tolist())
        path.write_text(
            f'{{\n  "name": {json.dumps(self.name)},\n  "grid": [\n    {rows}\n  ]\n}}\n'
        )
        return path


def random_board(
    rng: np.random.Generator,
    rows: int = 10,
    cols: int = 10,
    p_goal: float = 0.02,
    p_sheep: float = 0.05,
    p_house: float = 0.1,
    p_coin: float = 0.08,
    p_road_block: float = 0.1,
    p_mud: float = 0.2,
    max_tries: int = 1000,
) -> Board:
    """Sample a board with at least one goal where every non-house cell can reach a terminal
    (so undiscounted values are finite); cell types are drawn independently, mud on top."""
    p_blank = 1.0 - (p_goal + p_sheep + p_house + p_coin + p_road_block)
    if p_blank < 0:
        raise BoardError("random_board: cell probabilities sum to more than 1")
    probs = [p_blank, p_goal, p_house, p_sheep, p_coin, p_road_block]
    for _ in range(max_tries):
        base = rng.choice(6, size=(rows, cols), p=probs)
        if not (base == GOAL).any():
            base.flat[rng.integers(rows * cols)] = GOAL
        grid = np.where(rng.random((rows, cols)) < p_mud, base + MUD, base)
        board = Board(grid)
        if board.tables.start_states.size and not len(board.tables.cells_without_exit()):
            return board
    raise BoardError(f"random_board: no valid board in {max_tries} tries; lower p_house")


def _build_tables(board: Board) -> DeliveryTables:
    rows, cols = board.shape
    n = rows * cols
    base, mud = board.base.ravel(), board.mud.ravel()
    terminal = np.isin(base, (GOAL, SHEEP))
    house = base == HOUSE
    next_state = np.tile(np.arange(n)[:, None], (1, N_ACTIONS + 1))
    features = np.zeros((n, N_ACTIONS + 1, len(FEATURE_NAMES)))
    for s in range(n):
        if terminal[s] or house[s]:
            continue  # absorbing / never occupied: zero-reward self-loops
        r, c = divmod(s, cols)
        for a, (dr, dc) in enumerate(ACTION_DELTAS):
            nr, nc = r + dr, c + dc
            target = nr * cols + nc
            if not (0 <= nr < rows and 0 <= nc < cols) or house[target]:
                features[s, a, F_MUD if mud[s] else GAS] = 1.0  # stay put, pay for this cell
                continue
            next_state[s, a] = target
            kind = base[target]
            if kind == GOAL:
                features[s, a, F_GOAL] = 1.0
            elif kind == SHEEP:
                features[s, a, F_SHEEP] = 1.0
            else:
                features[s, a, F_MUD if mud[target] else GAS] = 1.0
                if kind == COIN:
                    features[s, a, F_COIN] = 1.0
                elif kind == ROAD_BLOCK:
                    features[s, a, F_ROAD] = 1.0
    return DeliveryTables(next_state, features, terminal, house, (rows, cols))


def as_board(board: Board | str | os.PathLike[str] | ArrayLike) -> Board:
    """A ``Board`` from a Board, a JSON file path, or a grid (list of rows)."""
    if isinstance(board, Board):
        return board
    if isinstance(board, (str, os.PathLike)):
        return Board.load(board)
    return Board(board)


class DeliveryEnv(gym.Env[np.ndarray, np.int64]):
    """The delivery gridworld. Observation: the agent's (row, col); ``info`` carries the
    transition's features ``reward_factors`` (names in ``FEATURE_NAMES``).

    ``board``: a ``Board``, a JSON path or a grid; ``None`` samples one with ``board_seed``.
    ``reset(options={"start": (row, col)})`` picks the start cell, else it is uniform over
    non-terminal, non-house cells.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        board: Board | str | os.PathLike[str] | ArrayLike | None = None,
        board_seed: int = 0,
        weights: ArrayLike = TRUE_WEIGHTS,
        render_mode: str | None = None,
    ) -> None:
        self.board = (
            random_board(np.random.default_rng(board_seed)) if board is None else as_board(board)
        )
        self.tables = self.board.tables
        self.weights = np.asarray(weights, dtype=np.float64)
        if self.weights.shape != (len(FEATURE_NAMES),):
            raise ValueError(f"weights must have {len(FEATURE_NAMES)} entries, one per feature")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode={render_mode!r}: DeliveryEnv renders only 'ansi'")
        self.render_mode = render_mode
        self.observation_space = spaces.MultiDiscrete(list(self.board.shape))
        self.action_space = spaces.Discrete(N_ACTIONS)
        self._state = int(self.tables.start_states[0])

    def reset(
        self, *, seed: int | None = None, options: dict[str, object] | None = None
    ) -> tuple[np.ndarray, dict[str, object]]:
        super().reset(seed=seed)
        if options and options.get("start") is not None:
            state = int(self.tables.index(np.asarray(options["start"])))
            if state not in self.tables.start_states:
                raise ValueError(
                    f"start {tuple(np.asarray(options['start']).tolist())} is not a non-terminal road cell"
                )
        else:
            state = int(self.np_random.choice(self.tables.start_states))
        self._state = state
        return self._obs(), {}

    def step(self, action: SupportsInt) -> tuple[np.ndarray, float, bool, bool, dict[str, object]]:
        a = int(action)
        if not 0 <= a < N_ACTIONS:
            raise ValueError(f"action {action} is invalid: use 0 up, 1 down, 2 left, 3 right")
        phi = self.tables.features[self._state, a]
        self._state = int(self.tables.next_state[self._state, a])
        terminated = bool(self.tables.terminal[self._state])
        info = {"reward_factors": phi.copy()}
        return self._obs(), float(phi @ self.weights), terminated, False, info

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            row, col = self._obs()
            return self.board.render((int(row), int(col)))
        return None

    def _obs(self) -> np.ndarray:
        return self.tables.cell(self._state).astype(np.int64)

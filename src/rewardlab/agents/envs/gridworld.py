"""``gridworld``: walk the agent ``A`` to the goal ``G`` on a small text grid.

The grid is rows of ``A`` (agent), ``G`` (goal), ``#`` (wall) and ``.`` (free), one row per
line. Each turn is one move, ``up``/``down``/``left``/``right``. A task draws its layouts from
a small fixed set of wall maps (a pure function of its args), so the same grids recur across
episodes, which is what lets GiGPO group turns by state. A row's ``answer`` column is compact
JSON ``{"grid": "A..#/.#../..../...G"}`` (rows joined by ``/``).
"""

from __future__ import annotations

import json
import random
import re
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from rewardlab.agents.env import Environment, EnvSpec, Row, StepResult, register_environment
from rewardlab.data.tasks.base import Problem, Task
from rewardlab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rewardlab.rewards.builtin import RewardFn

NAME = "gridworld"
AGENT, GOAL, WALL, FREE = "A", "G", "#", "."
HEADER = "Reach G. up/down/left/right\n"
# A fixed order, so the expert's choice among equally short paths is deterministic.
MOVES: dict[str, tuple[int, int]] = {
    "up": (-1, 0),
    "down": (1, 0),
    "left": (0, -1),
    "right": (0, 1),
}
_MOVE_WORD = re.compile(r"\b(up|down|left|right)\b")
MAX_SIZE = 9
DEFAULT_SIZE, DEFAULT_WALLS, DEFAULT_MAPS = 4, 2, 4

Cell = tuple[int, int]


def _neighbours(cell: Cell, size: tuple[int, int], walls: frozenset[Cell]) -> Iterable[Cell]:
    rows, cols = size
    for dr, dc in MOVES.values():
        r, c = cell[0] + dr, cell[1] + dc
        if 0 <= r < rows and 0 <= c < cols and (r, c) not in walls:
            yield r, c


def distances(start: Cell, size: tuple[int, int], walls: frozenset[Cell]) -> dict[Cell, int]:
    """BFS: the number of moves from ``start`` to every reachable cell."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for nxt in _neighbours(cell, size, walls):
            if nxt not in dist:
                dist[nxt] = dist[cell] + 1
                queue.append(nxt)
    return dist


def render(size: tuple[int, int], walls: frozenset[Cell], agent: Cell, goal: Cell) -> str:
    rows, cols = size
    lines = []
    for r in range(rows):
        line = []
        for c in range(cols):
            cell = (r, c)
            line.append(
                AGENT
                if cell == agent
                else GOAL
                if cell == goal
                else WALL
                if cell in walls
                else FREE
            )
        lines.append("".join(line))
    return "\n".join(lines)


def _free_cells(size: int, walls: frozenset[Cell]) -> list[Cell]:
    return [(r, c) for r in range(size) for c in range(size) if (r, c) not in walls]


def make_maps(size: int, walls: int, count: int) -> list[frozenset[Cell]]:
    """Up to ``count`` distinct wall sets whose free cells are all connected (so every
    start/goal pair is solvable), drawn from a seed fixed by the arguments: every run and
    every seed sees the same maps. Fewer when fewer exist (``walls=0`` has one)."""
    rng = random.Random(f"{NAME}/maps/{size}/{walls}/{count}")
    cells = [(r, c) for r in range(size) for c in range(size)]
    maps: list[frozenset[Cell]] = []
    for _ in range(200 * count):
        candidate = frozenset(rng.sample(cells, walls))
        free = _free_cells(size, candidate)
        if candidate in maps or len(distances(free[0], (size, size), candidate)) != len(free):
            continue
        maps.append(candidate)
        if len(maps) == count:
            break
    return maps


def _no_text_verifier(name: str) -> NoReturn:
    """Environment tasks have no text verifier: the reward is earned by acting in the
    environment, so asking for one is a config mistake worth a clear message."""
    raise ConfigError(
        f"task '{name}' is an environment: train it with an `agent:` section "
        "(its reward comes from the environment)"
    )


class GridworldTask(Task):
    """A ``size`` x ``size`` grid with ``walls`` walls, one of ``maps`` fixed wall maps, and
    a random start and goal on distinct free cells."""

    name = NAME

    def __init__(
        self, size: int = DEFAULT_SIZE, walls: int = DEFAULT_WALLS, maps: int = DEFAULT_MAPS
    ) -> None:
        for arg, value, low, high in (
            ("size", size, 2, MAX_SIZE),
            ("walls", walls, 0, size * size - 2 if isinstance(size, int) else 0),
            ("maps", maps, 1, 100),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"gridworld: {arg} must be a whole number in {low}..{high}, got {value!r}"
                )
        self.size, self.walls = size, walls
        self.maps = make_maps(size, walls, maps)
        if not self.maps:
            raise ValueError(
                f"gridworld: found no {size}x{size} map with {walls} walls whose free cells "
                "are connected; use fewer walls"
            )
        self.max_turns_hint = max(
            max(distances(cell, (size, size), m).values())
            for m in self.maps
            for cell in _free_cells(size, m)
        )

    def sample(self, rng: random.Random) -> Problem:
        walls = rng.choice(self.maps)
        agent, goal = rng.sample(_free_cells(self.size, walls), 2)
        grid = render((self.size, self.size), walls, agent, goal)
        answer = json.dumps({"grid": grid.replace("\n", "/")}, separators=(",", ":"))
        return Problem(HEADER + grid, answer)

    def reward_fn(self) -> RewardFn:
        _no_text_verifier(self.name)


# The longest shortest path of the default task's maps; GridworldTask(...).max_turns_hint
# gives it for other args.
GridworldTask.max_turns_hint = GridworldTask().max_turns_hint


def _parse_answer(raw: Any) -> tuple[tuple[int, int], frozenset[Cell], Cell, Cell]:
    """(size, walls, agent, goal) from a row's ``answer``, or a ``DataError`` naming the
    field: the grid must be rectangular, hold one ``A`` and one ``G``, and be solvable."""

    def bad(why: str) -> DataError:
        return DataError(f"env '{NAME}': row field 'answer' {why}, got {raw!r}")

    try:
        answer = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        answer = None
    grid = answer.get("grid") if isinstance(answer, dict) else None
    if not isinstance(grid, str):
        raise bad('must be JSON like {"grid":"A.#/..G"}')
    lines = grid.split("/")
    if len({len(line) for line in lines}) != 1 or not lines[0]:
        raise bad("must hold a rectangular grid")
    if (
        set(grid) - {AGENT, GOAL, WALL, FREE, "/"}
        or grid.count(AGENT) != 1
        or grid.count(GOAL) != 1
    ):
        raise bad("must use only 'A', 'G', '#', '.' with one 'A' and one 'G'")
    cells = {(r, c): ch for r, line in enumerate(lines) for c, ch in enumerate(line)}
    walls = frozenset(cell for cell, ch in cells.items() if ch == WALL)
    agent = next(cell for cell, ch in cells.items() if ch == AGENT)
    goal = next(cell for cell, ch in cells.items() if ch == GOAL)
    size = (len(lines), len(lines[0]))
    if goal not in distances(agent, size, walls):
        raise bad("must be solvable (no path from A to G)")
    return size, walls, agent, goal


def parse_move(action: str) -> str | None:
    """The one move word in a turn ("Move: UP." -> "up"), or None when there is none or two
    different ones ("up or left" is no decision)."""
    found = set(_MOVE_WORD.findall(action.lower()))
    return found.pop() if len(found) == 1 else None


class GridworldEnv(Environment):
    """One grid; each turn moves the agent one cell until it stands on the goal."""

    name = NAME
    max_turns_hint = GridworldTask.max_turns_hint

    def __init__(self) -> None:
        self._size: tuple[int, int] = (0, 0)
        self._walls: frozenset[Cell] = frozenset()
        self._agent: Cell = (0, 0)
        self._goal: Cell = (0, 0)
        self._done = False

    def reset(self, row: Row) -> str:
        self._size, self._walls, self._agent, self._goal = _parse_answer(row.get("answer"))
        self._done = False
        return HEADER + self.render()

    def render(self) -> str:
        return render(self._size, self._walls, self._agent, self._goal)

    def step(self, action: str) -> StepResult:
        if self._done:
            raise RuntimeError(f"env '{NAME}': step after the episode ended; call reset")
        move = parse_move(action)
        if move is None:
            return self._refused("say up, down, left or right")
        target = self._step_target(move)
        if target is None:
            return self._refused("blocked")
        self._agent = target
        if target == self._goal:
            self._done = True
            return StepResult("", 1.0, True, "user", {"valid": True, "success": True})
        return StepResult(self.render(), 0.0, False, "user", {"valid": True, "success": False})

    def _refused(self, message: str) -> StepResult:
        """A refused move leaves the state as it was; the grid is repeated so that every
        observation shows the whole state."""
        info = {"valid": False, "success": False}
        return StepResult(f"{message}\n{self.render()}", 0.0, False, "user", info)

    def state_key(self) -> str:
        return self.render()

    def expert_action(self) -> str:
        """A first move of a shortest path: the neighbour closest to the goal (BFS from the
        goal), ties broken in ``MOVES`` order."""
        to_goal = distances(self._goal, self._size, self._walls)
        options = [
            (to_goal[t], move) for move in MOVES if (t := self._step_target(move)) in to_goal
        ]
        # Keying on distance alone keeps MOVES order among ties (min returns the first).
        return min(options, key=lambda option: option[0])[1]

    def random_action(self, rng: random.Random) -> str:
        """Any move that is not into a wall or off the grid."""
        return rng.choice([move for move in MOVES if self._step_target(move) is not None])

    def _step_target(self, move: str) -> Cell | None:
        """The cell a move leads to, or None when a wall or the edge is in the way."""
        dr, dc = MOVES[move]
        target = (self._agent[0] + dr, self._agent[1] + dc)
        rows, cols = self._size
        inside = 0 <= target[0] < rows and 0 <= target[1] < cols
        return target if inside and target not in self._walls else None


SPEC = register_environment(
    EnvSpec(
        NAME,
        GridworldEnv,
        task=GridworldTask,
        description="walk A to G on a small text grid with up/down/left/right",
    )
)

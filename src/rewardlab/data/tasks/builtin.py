"""The built-in tasks. Prompts are short plain text so that a tiny byte-level model can learn
them; answers are exact strings checked by the ``task`` reward."""

from __future__ import annotations

import random
import string

from rewardlab.data.tasks.base import Problem, Task


class ArithmeticTask(Task):
    """``a+b=`` or ``a*b=`` with operands of ``min_digits``..``digits`` digits."""

    name = "arithmetic"

    def __init__(self, digits: int = 2, ops: str = "+", min_digits: int = 1) -> None:
        if not 1 <= min_digits <= digits:
            raise ValueError(f"need 1 <= min_digits <= digits, got {min_digits} and {digits}")
        if not ops or set(ops) - {"+", "*", "-"}:
            raise ValueError(f"ops must be made of '+', '-' and '*', got '{ops}'")
        self.digits, self.ops, self.min_digits = digits, ops, min_digits

    def _operand(self, rng: random.Random) -> int:
        n = rng.randint(self.min_digits, self.digits)
        return rng.randint(0 if n == 1 else 10 ** (n - 1), 10**n - 1)

    def sample(self, rng: random.Random) -> Problem:
        a, b, op = self._operand(rng), self._operand(rng), rng.choice(self.ops)
        value = a + b if op == "+" else a - b if op == "-" else a * b
        return Problem(f"{a}{op}{b}=", str(value))


class ReverseTask(Task):
    """``reverse:abc=`` -> ``cba`` over ``min_len``..``max_len`` lowercase letters."""

    name = "reverse"

    def __init__(self, max_len: int = 5, min_len: int = 2) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
        self.min_len, self.max_len = min_len, max_len

    def sample(self, rng: random.Random) -> Problem:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(self.min_len, self.max_len)))
        return Problem(f"reverse:{word}=", word[::-1])


class SortTask(Task):
    """``sort:3142=`` -> ``1234``: sort ``min_len``..``max_len`` digits ascending."""

    name = "sort"

    def __init__(self, max_len: int = 6, min_len: int = 2) -> None:
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
        self.min_len, self.max_len = min_len, max_len

    def sample(self, rng: random.Random) -> Problem:
        digits = rng.choices(string.digits, k=rng.randint(self.min_len, self.max_len))
        return Problem(f"sort:{''.join(digits)}=", "".join(sorted(digits)))

"""``calculator``: arithmetic word problems with a ``calc`` tool.

The policy may call ``calc`` (``{"expr": "23+45"}``) any number of times; the tool's answer
comes back in the ``tool`` role. The first turn that is not a tool call is the final answer.
A row's ``answer`` column is compact JSON ``{"expr": "23+45", "value": 68}``: the expression
the expert calls and the value that earns the reward.
"""

from __future__ import annotations

import json
import random
import re
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import TYPE_CHECKING, Any, NoReturn

from rewardlab.agents.env import Environment, EnvSpec, Row, StepResult, register_environment
from rewardlab.agents.tools import ToolCall, parse_tool_calls
from rewardlab.data.tasks.base import Problem, Task
from rewardlab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rewardlab.rewards.builtin import RewardFn

NAME = "calculator"
TOOL = "calc"
MAX_EXPR_LEN = 80
MAX_MAGNITUDE = 10**12
_DECIMALS = 6

# --------------------------------------------------------------------------- safe evaluator


class ExprError(ValueError):
    """An expression the calculator refuses; the message is shown to the policy."""


_TOKEN = re.compile(r"\s*(?:(\d+)|(.))")


def _tokenize(expr: str) -> list[str]:
    """Integers and single-character operators; anything else is refused up front, so no
    name, attribute, string or exponent can ever reach the evaluator."""
    if len(expr) > MAX_EXPR_LEN:
        raise ExprError(f"expression longer than {MAX_EXPR_LEN} characters")
    if "**" in expr:
        raise ExprError("** (power) is not supported")
    tokens: list[str] = []
    for number, other in _TOKEN.findall(expr.rstrip()):
        if number:
            tokens.append(number)
        elif other in "+-*/()":
            tokens.append(other)
        else:
            raise ExprError(f"bad character {other!r}: use integers, + - * / and ( )")
    if not tokens:
        raise ExprError("empty expression")
    return tokens


def _bounded(value: Fraction) -> Fraction:
    """Every intermediate value is checked, so no chain of products can grow past the limit
    (Python integers would otherwise happily compute huge numbers slowly)."""
    if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        raise ExprError("number too large")
    return value


class _Parser:
    """Recursive descent over the tokens: ``expr := term (+|- term)*``,
    ``term := unary (*|/ unary)*``, ``unary := (+|-) unary | int | ( expr )``. Recursion depth
    is bounded by the length limit."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos = tokens, 0

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise ExprError("expression ends too early")
        self.pos += 1
        return token

    def parse(self) -> Fraction:
        value = self._expr()
        if self._peek() is not None:
            raise ExprError(f"unexpected {self._peek()!r}")
        return value

    def _expr(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            op, rhs = self._take(), self._term()
            value = _bounded(value + rhs if op == "+" else value - rhs)
        return value

    def _term(self) -> Fraction:
        value = self._unary()
        while self._peek() in ("*", "/"):
            op, rhs = self._take(), self._unary()
            if op == "/" and rhs == 0:
                raise ExprError("division by zero")
            value = _bounded(value * rhs if op == "*" else value / rhs)
        return value

    def _unary(self) -> Fraction:
        token = self._take()
        if token in ("+", "-"):
            value = self._unary()
            return -value if token == "-" else value
        if token == "(":
            value = self._expr()
            if self._take() != ")":
                raise ExprError("missing ')'")
            return value
        if token.isdigit():
            return _bounded(Fraction(int(token)))
        raise ExprError(f"unexpected {token!r}")


def evaluate(expr: str) -> Fraction:
    """The exact value of an arithmetic expression, without ``eval``: only integers,
    ``+ - * /`` and parentheses, at most ``MAX_EXPR_LEN`` characters and ``MAX_MAGNITUDE``
    in every intermediate value. Raises ``ExprError`` otherwise."""
    return _Parser(_tokenize(expr)).parse()


def format_value(value: Fraction) -> str:
    """An integer as itself; a fraction as a decimal with at most six places, because the
    policy reads and copies plain numbers, not ``7/2``."""
    if value.denominator == 1:
        return str(value.numerator)
    with localcontext() as ctx:
        ctx.prec = 40
        rounded = (Decimal(value.numerator) / Decimal(value.denominator)).quantize(
            Decimal(1).scaleb(-_DECIMALS)
        )
    text = format(rounded, "f").rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# --------------------------------------------------------------------------- task

_NAMES = ("Ann", "Bo", "Cy", "Di")
_THINGS = ("apples", "pens", "cards")
_TEMPLATES = {
    "+": "{n} has {a} {t} and gets {b} more. How many?",
    "-": "{n} has {a} {t} and gives away {b}. How many left?",
    "*": "{n} has {a} bags of {b} {t}. How many {t}?",
}


def _no_text_verifier(name: str) -> NoReturn:
    """Environment tasks have no text verifier: the reward is earned by acting in the
    environment, so asking for one is a config mistake worth a clear message."""
    raise ConfigError(
        f"task '{name}' is an environment: train it with an `agent:` section "
        "(its reward comes from the environment)"
    )


class CalculatorTask(Task):
    """Word problems ``a op b`` with operands of 1..``digits`` digits and ``op`` from ``ops``.
    Subtraction keeps ``a >= b`` so no answer is negative."""

    name = NAME
    max_turns_hint = 2

    def __init__(self, digits: int = 2, ops: str = "+-") -> None:
        if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 6:
            raise ValueError(f"calculator: digits must be a whole number in 1..6, got {digits!r}")
        if not isinstance(ops, str) or not ops or set(ops) - set(_TEMPLATES):
            raise ValueError(f"calculator: ops must be made of '+', '-' and '*', got {ops!r}")
        self.digits, self.ops = digits, ops

    def sample(self, rng: random.Random) -> Problem:
        a, b = (rng.randint(1, 10**self.digits - 1) for _ in range(2))
        op = rng.choice(self.ops)
        if op == "-" and a < b:
            a, b = b, a
        who, thing = rng.choice(_NAMES), rng.choice(_THINGS)
        expr = f"{a}{op}{b}"
        answer = {"expr": expr, "value": int(evaluate(expr))}
        prompt = _TEMPLATES[op].format(n=who, a=a, b=b, t=thing)
        return Problem(prompt, json.dumps(answer, separators=(",", ":")))

    def reward_fn(self) -> RewardFn:
        _no_text_verifier(self.name)


# --------------------------------------------------------------------------- environment

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _parse_row(row: Row) -> tuple[str, str, Fraction]:
    """(prompt, expr, value) of a row, or a ``DataError`` naming the bad field."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise DataError(f"env '{NAME}': row field 'prompt' must be a string, got {prompt!r}")
    raw = row.get("answer")
    try:
        answer: Any = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("expr"), str):
        raise DataError(
            f"env '{NAME}': row field 'answer' must be JSON like "
            f'{{"expr":"23+45","value":68}}, got {raw!r}'
        )
    value = answer.get("value")
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(
            f"env '{NAME}': row field 'answer' needs a whole-number 'value', got {raw!r}"
        )
    expected = Fraction(value)
    try:
        computed = evaluate(answer["expr"])
    except ExprError as e:
        raise DataError(f"env '{NAME}': row field 'answer' has a bad 'expr': {e}") from None
    if computed != expected:
        raise DataError(
            f"env '{NAME}': row field 'answer': expr {answer['expr']!r} is "
            f"{format_value(computed)}, not the value {value!r}"
        )
    return prompt, answer["expr"], expected


def final_number(text: str) -> Fraction | None:
    """The last number in a final answer ("It is 68." -> 68), or None when there is none."""
    found = _NUMBER.findall(text.strip())
    return Fraction(found[-1]) if found else None


class CalculatorEnv(Environment):
    """One word problem; ``calc`` tool calls until a plain-text final answer."""

    name = NAME
    max_turns_hint = CalculatorTask.max_turns_hint

    def __init__(self) -> None:
        self._prompt, self._expr, self._value = "", "", Fraction(0)
        self._seen: list[str] = []
        self._done = False

    def reset(self, row: Row) -> str:
        self._prompt, self._expr, self._value = _parse_row(row)
        self._seen, self._done = [], False
        return self._prompt

    def _run(self, call: ToolCall) -> tuple[str, bool]:
        """One call's result text and whether it was a valid call."""
        if call.name != TOOL:
            return f"error: unknown tool {call.name!r}, use {TOOL!r}", False
        expr = call.arguments.get("expr")
        if not isinstance(expr, str) or set(call.arguments) != {"expr"}:
            return f"error: {TOOL} takes one string argument 'expr'", False
        try:
            return format_value(evaluate(expr)), True
        except ExprError as e:
            return f"error: {e}", False

    def step(self, action: str) -> StepResult:
        if self._done:
            raise RuntimeError(f"env '{NAME}': step after the episode ended; call reset")
        parsed = parse_tool_calls(action)
        if parsed.is_call:
            if parsed.error is not None:
                results = [(f"error: {parsed.error}", False)]
            else:
                results = [self._run(call) for call in parsed.calls]
            observation = "\n".join(text for text, _ in results)
            self._seen.append(observation)
            valid = all(ok for _, ok in results)
            return StepResult(observation, 0.0, False, "tool", {"valid": valid, "success": False})
        given = final_number(action)
        success = given is not None and given == self._value
        self._done = True
        info = {"valid": True, "success": success, "answer": None if given is None else str(given)}
        return StepResult("", 1.0 if success else 0.0, True, "user", info)

    def state_key(self) -> str:
        """The problem plus every tool answer so far: what the policy knows, as text."""
        return "\n".join([self._prompt, *self._seen])

    def answer_text(self) -> str:
        return format_value(self._value)

    def expert_action(self) -> str:
        """Call ``calc`` with the right expression until its value has been seen, then answer
        with that value (what a careful agent does: compute, then report)."""
        if format_value(self._value) not in self._seen:
            return ToolCall(TOOL, {"expr": self._expr}).render()
        return format_value(self._value)

    def random_action(self, rng: random.Random) -> str:
        """Answer at once, without the tool, with one of the problem's own numbers (the
        careless agent's mistake: reporting an operand instead of computing)."""
        return rng.choice(_NUMBER.findall(self._expr))


SPEC = register_environment(
    EnvSpec(
        NAME,
        CalculatorEnv,
        task=CalculatorTask,
        description="arithmetic word problems; the policy may call the calc tool, then answers",
    )
)

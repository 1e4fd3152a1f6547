"""Tests for rewardlab.rewards.sandbox: run_sandboxed, its limits, and the code_exec reward.

The hostile programs each run with a short timeout and must end contained: a status saying
why, a score of 0 for their test, a failure counted, and this process unharmed.
"""

from __future__ import annotations

import os
import signal
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rewardlab.errors import ConfigError, DataError
from rewardlab.rewards import sandbox
from rewardlab.rewards.loading import RewardSource
from rewardlab.rewards.sandbox import (
    CodeExecReward,
    code_exec,
    extract_code,
    run_sandboxed,
    sandbox_isolation,
)
from rewardlab.rewards.scoring import drain_failure_counts

REPO = Path(__file__).resolve().parents[1]
FAST = {"cpu_seconds": 1, "wall_seconds": 2, "memory_mb": 128, "max_output_bytes": 10_000}

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]
# Sums the numbers on its one input line; wrong (off by one) once the sum passes 10.
SUM_IO = "nums = list(map(int, input().split()))\ns = sum(nums)\nprint(s + (s > 10))\n"
SUM_CASES = [
    {"input": "1 2 3\n", "output": "6\n"},
    {"input": "4 5\n", "output": "9"},
    {"input": "10 20\n", "output": "30\n"},
]


def _reward(**args: Any) -> CodeExecReward:
    fn = code_exec(**args)
    assert isinstance(fn, CodeExecReward)
    return fn


def _score(fn: CodeExecReward, completions: list[str], tests: list[Any]) -> list[float | None]:
    return list(fn(["p"] * len(completions), completions, tests=tests))


def _fenced(code: str) -> str:
    return f"Here is my solution:\n```python\n{code}```\nIt works."


@pytest.fixture(scope="module")
def isolation() -> sandbox.Isolation:
    level = sandbox_isolation()
    print(f"sandbox isolation here: {level.describe()} (prefix {level.prefix})")
    return level


# ---------------------------------------------------------------------------- scoring


def test_correct_program_scores_one() -> None:
    fn = _reward(timeout_seconds=2)
    scores = _score(fn, [_fenced(ADD), _fenced(SUM_IO)], [ADD_TESTS, SUM_CASES[:2]])
    assert scores == [1.0, 1.0]
    assert not fn.failures


def test_wrong_program_scores_the_fraction_passed() -> None:
    fn = _reward(timeout_seconds=2)
    subtract = "def add(a, b):\n    return a - b\n"  # -1, -2, 0: fails all three
    half = "def add(a, b):\n    return abs(a) + b\n"  # 3 ok, 2 (want 0) no, 4 ok: 2 of 3
    scores = _score(
        fn,
        [_fenced(subtract), _fenced(half), _fenced(SUM_IO)],
        [ADD_TESTS, ADD_TESTS, SUM_CASES],
    )
    # SUM_IO: 6 ok, 9 ok, 30 -> prints 31: 2 of 3.
    assert scores == [0.0, pytest.approx(2 / 3), pytest.approx(2 / 3)]
    # Wrong answers are not failures; subtract's failed asserts are plain "failed" runs.
    assert not fn.failures


def test_test_formats() -> None:
    fn = _reward(timeout_seconds=2)
    apps = {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}
    json_cases = '[{"input": "2 2", "output": "4"}]'
    one_snippet = "assert add(1, 2) == 3\nassert add(0, 0) == 0"
    scores = _score(
        fn,
        [SUM_IO, SUM_IO, ADD, ADD, ADD, ADD],
        [apps, json_cases, one_snippet, [], None, "from solution import add\nassert add(1, 1) == 2"],
    )
    assert scores == [1.0, 1.0, 1.0, None, None, 1.0]


def test_io_comparison_ignores_trailing_space_only() -> None:
    fn = _reward(timeout_seconds=2)
    spaced = "print('a  ')\nprint()\nprint()\n"
    inner = "print('a b')\n"
    scores = _score(
        fn, [spaced, inner], [[{"input": "", "output": "a"}], [{"input": "", "output": "a  b"}]]
    )
    assert scores == [1.0, 0.0]


def test_extract_takes_the_last_python_block() -> None:
    text = "```python\nx = 1\n```\ntext\n```py\nx = 2\n```\n```\nuntagged\n```"
    assert extract_code(text) == "x = 2"
    assert extract_code("```\nplain\n```") == "plain"
    assert extract_code("```python\ncut off at the end") == "cut off at the end"
    assert extract_code("print(1)") == "print(1)"
    fn = _reward(extract=False, timeout_seconds=2)
    assert _score(fn, [_fenced(ADD)], [ADD_TESTS]) == [0.0]  # prose is a syntax error
    assert fn.failures == Counter({"error": 3})


def test_main_block_and_early_exit_in_assert_mode() -> None:
    fn = _reward(timeout_seconds=2)
    guarded = ADD + "if __name__ == '__main__':\n    print(add(int(input()), 1))\n"
    exits = [
        ADD + "import sys\nsys.exit(0)\n",
        ADD + "import os\nos._exit(0)\n",
        ADD + "raise SystemExit\n",
    ]
    scores = _score(fn, [guarded, *exits], [ADD_TESTS] * 4)
    # The __main__ block does not run under asserts (it would hit EOF on stdin); exiting
    # before the asserts ran is not a pass, whatever the exit code.
    assert scores == [1.0, 0.0, 0.0, 0.0]
    assert fn.failures == Counter({"error": 9})


# ---------------------------------------------------------------------------- hostile


# A checkout under /tmp lies inside the sandbox's working root: there the audit hook lets the
# read through to the sandbox's own empty /tmp, where the file does not exist (an "error",
# FileNotFoundError); elsewhere the hook refuses it ("blocked"). Either way nothing leaks.
_PROJECT = "error" if str(REPO).startswith("/tmp/") else "blocked"

HOSTILE = {
    # name: (program, expected status)
    "infinite_loop": ("while True:\n    pass\n", "timeout"),
    "sleep_forever": ("import time\ntime.sleep(1000)\n", "timeout"),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()\n", "blocked"),
    "huge_allocation": ("x = bytearray(10**10)\n", "memory"),
    "read_etc_passwd": ("print(open('/etc/passwd').read())\n", "blocked"),
    "read_project": (f"print(open({str(REPO / 'pyproject.toml')!r}).read())\n", _PROJECT),
    "list_project": (f"import os\nprint(os.listdir({str(REPO)!r}))\n", _PROJECT),
    "write_outside": ("open('/var/tmp/rewardlab-escape.txt', 'w').write('x')\n", "blocked"),
    "write_dotdot": ("open('../escape.txt', 'w').write('x')\n", "blocked"),
    "socket_connect": (
        "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n",
        "blocked",
    ),
    "kill_parent": ("import os\nos.kill(os.getppid(), 9)\n", "blocked"),
    "print_gigabytes": ("while True:\n    print('x' * 1_000_000)\n", "output_limit"),
    "subprocess": ("import subprocess\nsubprocess.run(['echo', 'hi'])\n", "blocked"),
    "os_system": ("import os\nos.system('echo hi')\n", "blocked"),
    "ctypes": ("import ctypes\n", "blocked"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_contained(name: str) -> None:
    code, expected = HOSTILE[name]
    started = time.monotonic()
    result = run_sandboxed(code, **FAST)
    assert result.status == expected, result
    assert time.monotonic() - started < FAST["wall_seconds"] + 1.5
    assert len(result.stdout) <= FAST["max_output_bytes"]
    assert "root:" not in result.stdout and "[project]" not in result.stdout
    if expected == "blocked":
        assert "SandboxViolation" in result.stderr
    if expected == "error":  # the project's files are not there at all
        assert "FileNotFoundError" in result.stderr


def test_hostile_completions_score_zero_and_are_counted() -> None:
    fn = _reward(timeout_seconds=1, memory_mb=128, max_output_bytes=10_000, workers=4)
    names = sorted(HOSTILE)
    # Each defines add() correctly first, so only the hostile part can make it fail.
    completions = [_fenced(ADD + HOSTILE[name][0]) for name in names]
    scores = _score(fn, completions, [["assert add(1, 2) == 3"]] * len(names))
    assert scores == [0.0] * len(names)
    want = Counter(HOSTILE[name][1] for name in names)
    assert fn.failures == want
    source = RewardSource(name="code_exec", weight=1.0, fn=fn)
    logged = drain_failure_counts([source])
    assert logged == {f"failures/code_exec/{k}": float(v) for k, v in want.items()}
    assert not fn.failures  # drained


def test_no_file_escapes_to_the_host(tmp_path: Path, isolation: sandbox.Isolation) -> None:
    target = tmp_path / "escaped.txt"
    code = f"open({str(target)!r}, 'w').write('x')\n"
    # Blocked by the hook; or, with a mount namespace, /tmp is the sandbox's own tmpfs and
    # the folder does not exist there.
    assert run_sandboxed(code, **FAST).status in ("blocked", "error")
    if isolation.mount_namespace or isolation.user is not None:
        # Without the hook the kernel stops it all the same (hidden, or not ours to write).
        assert run_sandboxed(code, audit_hook=False, **FAST).status == "error"
    assert not target.exists()
    assert not Path("/var/tmp/rewardlab-escape.txt").exists()


def test_output_is_capped_and_fast() -> None:
    started = time.monotonic()
    result = run_sandboxed("import sys\nwhile True:\n    sys.stderr.write('y' * 65536)\n", **FAST)
    assert result.status == "output_limit" and result.truncated
    assert len(result.stderr) == FAST["max_output_bytes"]
    assert time.monotonic() - started < 2


def test_this_process_is_unharmed() -> None:
    # After all the hostile runs (and a direct try here) we are still alive, in our own group.
    run_sandboxed("import os\nos.killpg(os.getpgid(os.getppid()), 9)\n", **FAST)
    assert os.getpgid(0) == os.getpgrp()
    assert threading.active_count() >= 1


# ------------------------------------------------------------- the kernel layers alone


def _kernel_only(code: str) -> sandbox.SandboxResult:
    return run_sandboxed(code, audit_hook=False, **FAST)


def test_kernel_stops_forks_and_threads(isolation: sandbox.Isolation) -> None:
    if isolation.user is None and os.geteuid() == 0:
        pytest.skip("the child keeps root's uid, which RLIMIT_NPROC does not limit")
    fork = _kernel_only("import os\nwhile True:\n    os.fork()\n")
    assert fork.status == "error" and "Resource temporarily unavailable" in fork.stderr
    thread = _kernel_only("import threading\nthreading.Thread(target=print).start()\n")
    assert thread.status == "error" and "can't start new thread" in thread.stderr


def test_kernel_limits_memory_and_cpu() -> None:
    assert _kernel_only("x = bytearray(10**10)\n").status == "memory"
    spin = _kernel_only("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile 1: pass")
    assert spin.status == "timeout"  # SIGXCPU ignored: the hard limit or the wall clock


def test_kernel_blocks_the_network(isolation: sandbox.Isolation) -> None:
    if not isolation.network_namespace:
        pytest.skip("no network namespace here: only the audit hook blocks sockets")
    result = _kernel_only(
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
        "    print('connected')\n"
        "except OSError as err:\n"
        "    print('refused', err.errno)\n"
    )
    assert result.status == "ok" and result.stdout.startswith("refused")


def test_kernel_hides_files(isolation: sandbox.Isolation) -> None:
    if not isolation.mount_namespace:
        pytest.skip("no mount namespace here: only the audit hook guards reads")
    result = _kernel_only(
        "import os\n"
        f"print(os.path.exists({str(REPO / 'pyproject.toml')!r}), os.listdir('/etc'))\n"
    )
    assert result.stdout.strip() == "False []"


def test_kernel_stops_killing_the_parent(isolation: sandbox.Isolation) -> None:
    if isolation.user is None:
        pytest.skip("the child runs as our own uid: only the audit hook stops os.kill")
    result = _kernel_only("import os\nos.kill(os.getppid(), 9)\n")
    assert result.status == "error" and "Operation not permitted" in result.stderr


def test_kernel_kills_a_sleeper_at_the_wall_clock() -> None:
    started = time.monotonic()
    result = run_sandboxed("import time\ntime.sleep(60)\n", audit_hook=False, wall_seconds=0.5)
    assert result.status == "timeout" and result.exit_code == -signal.SIGKILL
    assert time.monotonic() - started < 1.5


# ------------------------------------------------------------- concurrency and cleanup


def test_many_concurrent_sandboxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fn = _reward(timeout_seconds=2, workers=4)
    good = _fenced(ADD + "open('scratch.txt', 'w').write('left behind?')\n")
    bad = _fenced("def add(a, b):\n    return 0\n")
    completions = [good if i % 2 == 0 else bad for i in range(16)]
    started = time.monotonic()
    scores = _score(fn, completions, [ADD_TESTS] * 16)
    elapsed = time.monotonic() - started
    # bad passes only add(-1, 1) == 0.
    assert scores == [1.0 if i % 2 == 0 else pytest.approx(1 / 3) for i in range(16)]
    assert not fn.failures
    assert elapsed < 10
    assert list(tmp_path.iterdir()) == []  # every run's temporary folder is gone


def test_temporary_folders_removed_after_kills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run_sandboxed("open('a', 'w').write('x')\nwhile True:\n    pass\n", **FAST)
    run_sandboxed("import os\nos.mkdir('d')\nos.chmod('d', 0)\n", **FAST)
    run_sandboxed("print('x')", stdin="some input", check="assert True", **FAST)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- config, data, robustness


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"column": ""}, "arg 'column' must be a non-empty string"),
        ({"timeout_seconds": 0}, "arg 'timeout_seconds' must be a number > 0"),
        ({"memory_mb": 8}, "arg 'memory_mb' must be a whole number >= 32"),
        ({"max_output_bytes": 1.5}, "arg 'max_output_bytes' must be a whole number >= 1"),
        ({"workers": 0}, "arg 'workers' must be a whole number >= 1"),
        ({"extract": "yes"}, "arg 'extract' must be true or false"),
    ],
)
def test_bad_args_are_config_errors(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        code_exec(**args)


@pytest.mark.parametrize(
    ("tests", "message"),
    [
        (42, "expected a test snippet"),
        (["assert (("], "test 0: not valid Python"),
        ([{"input": "1"}], "test 0: expected a test snippet"),
        ([{"input": 1, "output": "1"}], "'input' and 'output' must be strings"),
        ({"inputs": ["1"], "outputs": []}, "same length"),
    ],
)
def test_bad_tests_are_data_errors(tests: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        _score(_reward(), [ADD], [tests])


def test_missing_column_is_a_data_error() -> None:
    fn = _reward(column="unit_tests")
    with pytest.raises(DataError, match="reads column 'unit_tests'"):
        fn(["p"], [ADD], tests=[ADD_TESTS])


def test_a_broken_sandbox_scores_zero_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(sandbox, "run_sandboxed", broken)
    fn = _reward()
    assert _score(fn, [ADD, ADD], [ADD_TESTS, ["assert True"]]) == [0.0, 0.0]
    assert fn.failures == Counter({"sandbox_error": 4})
    assert fn.last_sandbox_error is not None and "Too many open files" in fn.last_sandbox_error


def test_docstring_first_paragraph_is_one_line_summary() -> None:
    doc = textwrap.dedent(code_exec.__doc__ or "").strip()
    first = doc.split("\n\n")[0]
    assert first.startswith("Fraction of the row's") and "\n" not in first

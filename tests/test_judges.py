"""LLM judges end to end over loopback HTTP: `rewardlab serve` (a real model), plus minimal
real HTTP servers (http.server) that answer in the rubric's format, time out, or send garbage."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rewardlab.config import JudgeConfig, RewardSpec
from rewardlab.errors import ConfigError, RewardlabError
from rewardlab.judges.client import ChatClient, JudgeError
from rewardlab.judges.llm import llm_judge, parse_score, parse_winner
from rewardlab.judges.probe import CORE_KEYS, MASTER_KEYS, probe_judge
from rewardlab.rewards import (
    build_preference_fn,
    build_reward_sources,
    drain_failure_counts,
    score_completions,
)

# --------------------------------------------------------------------------- helpers

Reply = Callable[[dict[str, Any], dict[str, str]], Any]  # (body, headers) -> str | (status, bytes)


class StubServer:
    """A real HTTP server on loopback whose chat replies come from ``reply``; counts requests."""

    def __init__(self, reply: Reply, delay: float = 0.0) -> None:
        self.reply = reply
        self.delay = delay
        self.requests = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests += 1
                time.sleep(stub.delay)
                out = stub.reply(body, dict(self.headers))
                if isinstance(out, str):
                    payload = {
                        "id": "x",
                        "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": out}}],
                    }
                    status, data = 200, json.dumps(payload).encode()
                else:
                    status, data = out
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def stub() -> Iterator[Callable[..., StubServer]]:
    started: list[StubServer] = []

    def start(reply: Reply | str, delay: float = 0.0) -> StubServer:
        fn = reply if callable(reply) else (lambda body, headers: reply)
        server = StubServer(fn, delay)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.close()


@pytest.fixture(scope="module")
def tiny_server() -> Iterator[Any]:
    from rewardlab.judges.server import serve

    server = serve("builtin:tiny", port=0, max_tokens_limit=64)
    try:
        yield server
    finally:
        server.shutdown()


def _post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


FAST = {"backoff": 0.0, "max_tokens": 8}


# --------------------------------------------------------------------------- strict parsers


def test_parse_score_is_strict() -> None:
    assert parse_score("Score: 7", 0, 10) == 7.0
    assert parse_score("The answer is right.\n\nScore: 7.5\n", 0, 10) == 7.5
    assert parse_score("Score:10", 0, 10) == 10.0
    bad = [
        "",
        "7",
        "score: 7",
        "Score: 7/10",
        "Score: seven",
        "The score is 7",
        "Score: 7\nbecause it is good",
        "Score: 3\nScore: 7",
        "Score: 11",
        "Score: -1",
        "**Score: 7**",
    ]
    for reply in bad:
        with pytest.raises(ValueError):
            parse_score(reply, 0, 10)


def test_parse_winner_is_strict() -> None:
    assert parse_winner("A is clearer.\nWinner: A") == 1.0
    assert parse_winner("Winner: B") == 0.0
    assert parse_winner("Winner: tie") == 0.5
    for reply in ["A", "Winner: a", "Winner: C", "Winner: A\nWinner: B", "Winner: A!", ""]:
        with pytest.raises(ValueError):
            parse_winner(reply)


# --------------------------------------------------------------------------- rewardlab serve


def test_serve_speaks_the_openai_chat_api(tiny_server: Any) -> None:
    assert tiny_server.host == "127.0.0.1"
    with urllib.request.urlopen(tiny_server.url + "/models", timeout=10) as response:
        models = json.loads(response.read())
    assert models["data"][0]["id"] == "builtin:tiny"
    status, body = _post(
        tiny_server.url + "/chat/completions",
        {
            "model": "builtin:tiny",
            "messages": [{"role": "user", "content": "What is 2 + 2?"}],
            "max_tokens": 5,
            "temperature": 0,
        },
    )
    assert status == 200, body
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_serve_rejects_bad_requests_openai_style(tiny_server: Any) -> None:
    url = tiny_server.url + "/chat/completions"
    status, body = _post(url, {"model": "other", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404 and "not served" in body["error"]["message"]
    status, body = _post(url, {"messages": []})
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = _post(url, {"messages": [{"role": "user", "content": "x"}], "n": 2})
    assert status == 400 and body["error"]["param"] == "n"
    status, body = _post(url, b"{not json")
    assert status == 400 and "not JSON" in body["error"]["message"]


def test_serve_refuses_a_public_address_by_default() -> None:
    from rewardlab.judges.server import serve

    with pytest.raises(RewardlabError, match="not a loopback address"):
        serve("builtin:tiny", host="0.0.0.0")


def test_garbage_answers_of_a_real_model_are_retried_then_reported(tiny_server: Any) -> None:
    # The tiny model writes random text, never 'Score: <n>': each row is asked again, then
    # the batch fails with the endpoint and the row; nothing is scored 0.
    judge = llm_judge(endpoint=tiny_server.url, model="builtin:tiny", retries=1, **FAST)
    before = tiny_server.requests
    with pytest.raises(JudgeError) as caught:
        judge(["What is 2 + 2?"], ["4"])
    message = str(caught.value)
    assert tiny_server.url in message
    assert "completion 0" in message and "What is 2 + 2?" in message
    assert "2 attempt(s)" in message and "unparsable reply" in message
    assert tiny_server.requests - before == 2


def test_a_failed_row_can_be_n_a_and_counted_but_never_zero(tiny_server: Any) -> None:
    (source,) = build_reward_sources(
        [
            RewardSpec(
                name="llm_judge",
                args={
                    "endpoint": tiny_server.url,
                    "model": "builtin:tiny",
                    "retries": 0,
                    "on_failure": "none",
                    **FAST,
                },
            )
        ],
        task=None,
    )
    scores = score_completions([source], ["What is 2 + 2?", "Name a colour."], ["4", "red"], {})
    assert scores[source.name].isnan().all()
    assert drain_failure_counts([source]) == {"failures/llm_judge/judge_failed": 2.0}


# --------------------------------------------------------------------------- success paths


def test_llm_judge_through_build_reward_sources(stub: Any) -> None:
    seen: list[str] = []

    def reply(body: dict[str, Any], headers: dict[str, str]) -> str:
        seen.append(body["messages"][-1]["content"])
        return "Looks right.\nScore: 7"

    server = stub(reply)
    spec = RewardSpec(
        name="llm_judge",
        args={
            "endpoint": server.url,
            "model": "judge",
            "rubric": "Q: {prompt}\nA: {completion}\nRef: {reference}\nScore: <n>",
            "normalize": True,
            "backoff": 0.0,
        },
    )
    (source,) = build_reward_sources([spec], task=None)
    scores = score_completions([source], ["1+1?", "2+2?"], ["2", "4"], {"answer": ["2", "4"]})
    assert scores["llm_judge"].tolist() == pytest.approx([0.7, 0.7])
    assert sorted(seen) == ["Q: 1+1?\nA: 2\nRef: 2\nScore: <n>", "Q: 2+2?\nA: 4\nRef: 4\nScore: <n>"]


def test_llm_judge_config_errors_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    def build(args: dict[str, Any]) -> None:
        build_reward_sources([RewardSpec(name="llm_judge", args=args)], task=None)

    base = {"endpoint": "http://127.0.0.1:9/v1", "model": "m"}
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.args\.endpoint"):
        build({"model": "m"})
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.args: .*'rubric'.*\{answer\}"):
        build({**base, "rubric": "{prompt} {completion} {answer}"})
    with pytest.raises(ConfigError, match="'timeout' must be a number"):
        build({**base, "timeout": 0})
    with pytest.raises(ConfigError, match="'mode'.*pairwise"):
        build({**base, "mode": "pairwise"})
    monkeypatch.delenv("RL_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ConfigError, match="RL_TEST_JUDGE_KEY is not set"):
        build({**base, "api_key_env": "RL_TEST_JUDGE_KEY"})
    with pytest.raises(ConfigError, match="never the key itself"):
        build({**base, "api_key_env": "sk-123-secret"})


def test_api_key_comes_from_the_named_env_var(stub: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RL_TEST_JUDGE_KEY", "sekrit")

    def reply(body: dict[str, Any], headers: dict[str, str]) -> Any:
        if headers.get("Authorization") != "Bearer sekrit":
            return 401, b'{"error": {"message": "bad key"}}'
        return "Score: 3"

    server = stub(reply)
    judge = llm_judge(endpoint=server.url, model="m", api_key_env="RL_TEST_JUDGE_KEY", **FAST)
    assert judge(["p"], ["c"]) == [3.0]
    monkeypatch.setenv("RL_TEST_JUDGE_KEY", "wrong")
    unauthorized = llm_judge(endpoint=server.url, model="m", api_key_env="RL_TEST_JUDGE_KEY", **FAST)
    before = server.requests
    with pytest.raises(JudgeError, match="HTTP 401: bad key.*not retried"):
        unauthorized(["p"], ["c"])
    assert server.requests - before == 1  # an auth error is not worth asking again


# --------------------------------------------------------------------------- failures


def test_a_server_that_times_out_is_retried_then_reported(stub: Any) -> None:
    server = stub("Score: 5", delay=1.5)
    client = ChatClient(server.url, "m", timeout=0.3, retries=1, backoff=0.0)
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"row 0: failed after 2 attempt\(s\); last error: timed out"):
        client.complete([{"role": "user", "content": "hi"}], str)
    assert time.monotonic() - start < 1.5
    assert server.requests == 2


@pytest.mark.parametrize(
    "garbage, reason",
    [
        ((200, b"<html>oops</html>"), "not a chat completion"),
        ((200, b'{"choices": []}'), "not a chat completion"),
        ((503, b"busy"), "HTTP 503"),
    ],
)
def test_a_server_that_returns_garbage_is_retried_then_reported(
    stub: Any, garbage: tuple[int, bytes], reason: str
) -> None:
    server = stub(lambda body, headers: garbage)
    judge = llm_judge(endpoint=server.url, model="m", retries=2, **FAST)
    with pytest.raises(JudgeError, match=reason) as caught:
        judge(["p"], ["c"])
    assert server.url in str(caught.value)
    assert server.requests == 3


def test_a_server_that_is_down_is_reported() -> None:
    client = ChatClient("http://127.0.0.1:9/v1", "m", timeout=1, retries=1, backoff=0.0)
    with pytest.raises(JudgeError, match="cannot connect"):
        client.complete([{"role": "user", "content": "hi"}], str)


# --------------------------------------------------------------------------- cache, concurrency


def test_cache_hit_avoids_a_second_request(stub: Any, tmp_path: Any) -> None:
    server = stub("Score: 8")
    judge = llm_judge(endpoint=server.url, model="m", **FAST)
    assert judge(["p"], ["c"]) == [8.0]
    assert judge(["p"], ["c"]) == [8.0]
    assert server.requests == 1
    assert judge(["p"], ["other"]) == [8.0]  # different messages: a new request
    assert server.requests == 2

    path = tmp_path / "judge-cache.jsonl"
    first = llm_judge(endpoint=server.url, model="m", cache=str(path), **FAST)
    assert first(["q"], ["c"]) == [8.0]
    assert server.requests == 3
    second = llm_judge(endpoint=server.url, model="m", cache=str(path), **FAST)  # a new process
    assert second(["q"], ["c"]) == [8.0]
    assert server.requests == 3
    off = llm_judge(endpoint=server.url, model="m", cache=False, **FAST)
    off(["q"], ["c"])
    off(["q"], ["c"])
    assert server.requests == 5


def test_unparsable_replies_are_not_cached(stub: Any) -> None:
    answers = iter(["no score here", "Score: 4", "Score: 9"])
    server = stub(lambda body, headers: next(answers))
    judge = llm_judge(endpoint=server.url, model="m", retries=1, **FAST)
    assert judge(["p"], ["c"]) == [4.0]  # the garbage first reply was retried
    assert judge(["p"], ["c"]) == [4.0]  # the good reply is cached
    assert server.requests == 2


def test_requests_run_concurrently(stub: Any) -> None:
    server = stub("Score: 1", delay=0.2)
    judge = llm_judge(endpoint=server.url, model="m", max_workers=4, **FAST)
    rows = 8
    start = time.monotonic()
    scores = judge([f"p{i}" for i in range(rows)], ["c"] * rows)
    elapsed = time.monotonic() - start
    assert scores == [1.0] * rows
    assert elapsed < rows * 0.2 * 0.6, elapsed  # serial would take 1.6 s; 4 at a time ~0.4 s


# --------------------------------------------------------------------------- pairwise


def test_pairwise_judge_as_a_judge_config_function(stub: Any) -> None:
    def reply(body: dict[str, Any], headers: dict[str, str]) -> str:
        text = body["messages"][-1]["content"]
        a = text.split("Response A:\n")[1].split("\n")[0]
        b = text.split("Response B:\n")[1].split("\n")[0]
        return "Winner: tie" if a == b else ("Winner: A" if len(a) > len(b) else "Winner: B")

    server = stub(reply)
    judge = JudgeConfig(
        function="rewardlab.judges.llm:pairwise",
        args={"endpoint": server.url, "model": "m", "backoff": 0.0},
    )
    pref = build_preference_fn(judge, [], "preference.judge")
    probs = pref.probs(["p"] * 3, ["long answer", "x", "same"], ["short", "longer", "same"], {})
    assert probs.tolist() == [1.0, 0.0, 0.5]


def test_pairwise_judge_reports_unparsable_answers(stub: Any) -> None:
    server = stub("I prefer the first one.")
    judge = JudgeConfig(
        function="rewardlab.judges.llm:pairwise",
        args={"endpoint": server.url, "model": "m2", "backoff": 0.0, "retries": 1},
    )
    pref = build_preference_fn(judge, [], "preference.judge")
    with pytest.raises(JudgeError, match=r"pair 0 .*Winner: A\|B\|tie"):
        pref.probs(["p"], ["a"], ["b"], {})
    assert server.requests == 2


# --------------------------------------------------------------------------- probes


def test_master_keys_include_the_digest_four() -> None:
    texts = [k.text for k in CORE_KEYS]
    assert texts == [":", ".", "Thought process:", "Let's solve this problem step by step."]
    assert len(MASTER_KEYS) > len(CORE_KEYS)


@pytest.mark.parametrize("answer, rate", [("Score: 10", 1.0), ("Score: 0", 0.0)])
def test_probe_false_positive_rate(stub: Any, answer: str, rate: float) -> None:
    server = stub(answer)
    judge = llm_judge(
        endpoint=server.url,
        model="m",
        rubric="Q: {prompt}\nRef: {reference}\nResponse: {completion}",
        on_failure="none",
        **FAST,
    )
    rows = [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+3?", "answer": "5"}]
    report = probe_judge(judge, rows, threshold=5)
    assert report.false_positive_rate == rate
    assert report.scored == len(rows) * len(MASTER_KEYS) and report.failed == 0
    assert server.requests == len(rows) * len(MASTER_KEYS)
    assert all(report.key_rate(k.text) == rate for k in MASTER_KEYS)


def test_probe_counts_failed_rows_apart(stub: Any) -> None:
    # Accepts everything except the ':' probe, on which it never answers in format.
    def reply(body: dict[str, Any], headers: dict[str, str]) -> str:
        return "hmm" if body["messages"][-1]["content"].endswith("Response: :") else "Score: 10"

    server = stub(reply)
    judge = llm_judge(
        endpoint=server.url,
        model="m",
        rubric="Q: {prompt}\nRef: {reference}\nResponse: {completion}",
        on_failure="none",
        retries=0,
        **FAST,
    )
    report = probe_judge(judge, [{"prompt": "1+1?", "answer": "2"}], threshold=5, keys=[":", "."])
    assert report.per_key[":"] == {"accepted": 0, "scored": 0, "failed": 1}
    assert report.per_key["."] == {"accepted": 1, "scored": 1, "failed": 0}
    assert report.false_positive_rate == 1.0


def test_judge_probe_cli(stub: Any, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from rewardlab.judges.cli import judge_app

    server = stub("Score: 10")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    runner = CliRunner()
    args = ["probe", "--endpoint", server.url, "--model", "m", "--data", str(data), "--json"]
    result = runner.invoke(judge_app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["false_positive_rate"] == 1.0 and report["scored"] == len(MASTER_KEYS)
    result = runner.invoke(judge_app, [*args, "--core-only", "--max-fpr", "0.5"])
    assert result.exit_code == 1
    assert json.loads(result.output)["scored"] == len(CORE_KEYS)


def test_judge_probe_cli_against_rewardlab_serve(tiny_server: Any) -> None:
    # The real tiny model never answers 'Score: <n>': every probe fails after its retries,
    # which is an error (exit 2 through the main entry point), not a rate of 0.
    from typer.testing import CliRunner

    from rewardlab.judges.cli import judge_app

    args = ["probe", "--endpoint", tiny_server.url, "--model", "builtin:tiny", "--core-only"]
    result = CliRunner().invoke(judge_app, [*args, "--retries", "0", "--max-tokens", "8"])
    assert isinstance(result.exception, RewardlabError)
    message = str(result.exception)
    assert "all 24 probe responses failed" in message and "unparsable reply" in message
    result = CliRunner().invoke(judge_app, ["probe", "--endpoint", tiny_server.url, "--model", "x"])
    assert isinstance(result.exception, RewardlabError)
    assert "HTTP 404: model 'x' is not served here" in str(result.exception)

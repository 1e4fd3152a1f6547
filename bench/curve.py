"""``curve-grpo-tiny``: wall-clock training time for rewardlab and TRL to reach the same
held-out accuracy, from the same warm start, on the same prompts, with the same seeds.

    python bench/curve.py [--seeds 0 1] [--max-steps 250] [--every 25] [--gain 0.10]
                          [--sft-epochs N] [--json OUT] [--markdown OUT]

The work is the quickstart's GRPO stage: ``builtin:tiny`` after the quickstart's SFT warm
start (run once here, shared by both libraries), 2-digit addition, 32 prompts x 8 samples of
at most 5 tokens per step, the task's verifier as the only reward, lr 2e-4 after 5 warm-up
steps, no KL. Every ``--every`` steps each library's model is scored by the same function
(rewardlab's greedy evaluation on the task's 200 held-out problems), with the clock stopped.
The target is the warm start's accuracy plus ``--gain``; the time to reach it is the training
time (evaluation excluded) up to the first evaluation at or above it. Each library runs in
its own process (``--worker``), one after the other; the numbers mean something only on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).parent
LIBS = ("rewardlab", "trl")
PROMPTS_PER_STEP, GENERATIONS, NEW_TOKENS = 32, 8, 5
LR, WARMUP = 2e-4, 5
TASK, TASK_ARGS, HELDOUT = "arithmetic", {"digits": 2, "ops": "+"}, 200


def warm_start(folder: Path, seed: int, epochs: int | None = None) -> Path:
    """The quickstart's SFT warm start (its packaged config; ``epochs`` shortens it for a
    smoke run), written to ``folder``."""
    from rewardlab.config import SFTConfig, load_yaml, parse_config
    from rewardlab.quickstart import packaged_config
    from rewardlab.trainers.sft import train_sft

    raw = load_yaml(packaged_config("quickstart_sft.yaml"))
    raw |= {"seed": seed, "run_dir": str(folder)}
    raw["logging"] = {"samples": 0}
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    train_sft(parse_config(SFTConfig, raw))
    return folder / "final"


class HeldOut:
    """Greedy accuracy on the task's held-out problems, rewardlab's evaluation for both."""

    def __init__(self, tokenizer: Any, seed: int) -> None:
        from rewardlab.config import DataConfig, EvalConfig, RewardSpec
        from rewardlab.data.prompts import prompt_source
        from rewardlab.rewards import build_reward_sources

        data = DataConfig(task=TASK, task_args=TASK_ARGS, heldout_size=HELDOUT)
        source = prompt_source(data, tokenizer, seed)
        self.rows = source.heldout_rows
        self.sources = build_reward_sources([RewardSpec(name="task")], source.task)
        self.config = EvalConfig(every=0, pass_k=1, num_samples=1)
        self.tokenizer, self.seed = tokenizer, seed

    def __call__(self, model: Any) -> float:
        from rewardlab.trainers.evaluate import evaluate

        was_training = model.training
        model.eval()
        result = evaluate(model, self.tokenizer, self.rows, self.sources, self.config, NEW_TOKENS, seed=self.seed)
        model.train(was_training)
        return result.metrics["eval/accuracy"]


def train_rows(steps: int, seed: int) -> list[dict[str, str]]:
    """The prompts rewardlab's trainer draws from the task, in its order, for TRL too."""
    from rewardlab.data.tasks import make_task

    task = make_task(TASK, TASK_ARGS)
    return [task.train_problem(i, seed=seed, stream="rl").row() for i in range(steps * PROMPTS_PER_STEP)]


class Clock:
    """Training time with evaluations cut out, and the accuracy curve."""

    def __init__(self, evaluate: HeldOut, every: int) -> None:
        self.evaluate, self.every = evaluate, every
        self.train_seconds = 0.0
        self.curve: list[dict[str, float]] = []
        self._last = time.perf_counter()

    def start(self, model: Any) -> None:
        self.curve.append({"step": 0, "seconds": 0.0, "accuracy": self.evaluate(model)})
        self._last = time.perf_counter()

    def step_done(self, step: int, model: Any) -> None:
        self.train_seconds += time.perf_counter() - self._last
        if step % self.every == 0:
            self.curve.append({"step": step, "seconds": self.train_seconds, "accuracy": self.evaluate(model)})
        self._last = time.perf_counter()


def run_rewardlab(model_dir: Path, steps: int, every: int, seed: int, work: Path) -> list[dict[str, float]]:
    """rewardlab's own periodic evaluation is ``HeldOut``'s function on the same rows (greedy,
    the task's verifier); the clock is the wall time between steps (logging included, as in
    TRL) less the evaluation's ``time/eval``."""
    from rewardlab.config import RunConfig, parse_config
    from rewardlab.trainers.online import train

    config = parse_config(RunConfig, {
        "seed": seed, "run_dir": str(work / "run"), "model": {"name": str(model_dir)},
        "data": {"task": TASK, "task_args": TASK_ARGS, "heldout_size": HELDOUT},
        "rewards": [{"name": "task"}], "algorithm": {"recipe": "grpo"},
        "rollout": {"num_generations": GENERATIONS, "max_new_tokens": NEW_TOKENS, "temperature": 1.0},
        "train": {"steps": steps, "prompts_per_step": PROMPTS_PER_STEP, "optim": {"lr": LR, "warmup_steps": WARMUP},
                  # TRL's per_device_train_batch_size below: all 256 sequences in one forward
                  "micro_batch_size": PROMPTS_PER_STEP * GENERATIONS},
        "eval": {"every": every, "pass_k": 1, "num_samples": 1},
        "checkpoint": {"every": 0}, "logging": {"samples": 0},
    })
    curve: list[dict[str, float]] = []
    seconds, last = 0.0, time.perf_counter()

    def on_step(step: int, metrics: dict[str, float]) -> None:
        nonlocal seconds, last
        now = time.perf_counter()
        if step > 0:
            seconds += now - last - metrics.get("time/eval", 0.0)
        last = now
        if "eval/accuracy" in metrics:
            curve.append({"step": step, "seconds": seconds, "accuracy": metrics["eval/accuracy"]})

    train(config, on_step=on_step)
    return curve


def run_trl(model_dir: Path, steps: int, every: int, seed: int, work: Path) -> list[dict[str, float]]:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewardlab.data.tasks import make_task

    verify = make_task(TASK, TASK_ARGS).reward_fn()

    def reward(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return [float(r or 0.0) for r in verify(prompts, completions, answer=answer)]

    args = GRPOConfig(
        output_dir=str(work / "trl"), use_cpu=True, bf16=False, gradient_checkpointing=False,
        max_steps=steps, learning_rate=LR, lr_scheduler_type="constant_with_warmup", warmup_steps=WARMUP,
        logging_steps=10, save_strategy="no", report_to=[], seed=seed, dataloader_num_workers=0,
        disable_tqdm=True, per_device_train_batch_size=PROMPTS_PER_STEP * GENERATIONS,
        num_generations=GENERATIONS, max_completion_length=NEW_TOKENS, temperature=1.0, beta=0.0,
        loss_type="grpo", scale_rewards="group", epsilon=0.2, shuffle_dataset=False,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    clock = Clock(HeldOut(tokenizer, seed), every)

    class Curve(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            clock.start(model)

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            clock.step_done(state.global_step, model)

    dataset = Dataset.from_list(train_rows(steps, seed))
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=reward, args=args, train_dataset=dataset)
    trainer.add_callback(Curve())
    trainer.train()
    return clock.curve


def time_to(curve: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first evaluation at or above ``target``: its step and training seconds."""
    return next(({"step": p["step"], "seconds": p["seconds"]} for p in curve if p["accuracy"] >= target), None)


def measure(lib: str, model_dir: Path, steps: int, every: int, seed: int) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "curve.json"
        cmd = [sys.executable, str(HERE / "curve.py"), "--worker", lib, str(model_dir), str(out),
               "--max-steps", str(steps), "--every", str(every), "--seeds", str(seed)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{lib} seed {seed} failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def run_seed(seed: int, steps: int, every: int, gain: float, work: Path, sft_epochs: int | None) -> dict[str, Any]:
    model_dir = warm_start(work / f"sft-{seed}", seed, sft_epochs)
    curves = {lib: measure(lib, model_dir, steps, every, seed) for lib in LIBS}
    start = curves["rewardlab"][0]["accuracy"]
    target = start + gain
    reached = {lib: time_to(curves[lib], target) for lib in LIBS}
    ours, theirs = reached["rewardlab"], reached["trl"]
    ratio = ours["seconds"] / theirs["seconds"] if ours and theirs and theirs["seconds"] > 0 else None
    return {"seed": seed, "start": start, "target": target, "reached": reached, "ratio": ratio, "curves": curves}


def markdown(results: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, float] | None) -> str:
        return f"{r['seconds']:.1f} s (step {r['step']:.0f})" if r else "not reached"

    lines = [
        "| seed | warm start | target | rewardlab | TRL | time ratio | final accuracy rewardlab / TRL |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        final = " / ".join(f"{r['curves'][lib][-1]['accuracy']:.3f}" for lib in LIBS)
        lines.append(
            f"| {r['seed']} | {r['start']:.3f} | {r['target']:.3f} | {cell(r['reached']['rewardlab'])} "
            f"| {cell(r['reached']['trl'])} | {ratio} | {final} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--max-steps", type=int, default=250)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--gain", type=float, default=0.10)
    parser.add_argument("--sft-epochs", type=int, help="shorten the warm start (smoke runs)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--worker", nargs=3, metavar=("LIB", "MODEL_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        lib, model_dir, out = args.worker
        import torch

        torch.manual_seed(args.seeds[0])
        with tempfile.TemporaryDirectory(prefix=f"curve-{lib}-") as tmp:
            run = run_rewardlab if lib == "rewardlab" else run_trl
            curve = run(Path(model_dir), args.max_steps, args.every, args.seeds[0], Path(tmp))
        Path(out).write_text(json.dumps(curve))
        return
    with tempfile.TemporaryDirectory(prefix="curve-") as tmp:
        results = [run_seed(seed, args.max_steps, args.every, args.gain, Path(tmp), args.sft_epochs) for seed in args.seeds]
    table = markdown(results)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"args": sys.argv[1:], "results": results}, indent=2))
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()

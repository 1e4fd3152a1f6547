"""Run config: defaults, YAML files, `--set` overrides, error messages, dump round-trip."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rewardlab.config import (
    LoraConfig,
    PreferenceConfig,
    RunConfig,
    SFTConfig,
    apply_override,
    dump_config,
    load_config,
    load_yaml,
    parse_config,
)
from rewardlab.errors import ConfigError, RewardlabError


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def config_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(*args, **kwargs)
    return str(err.value)


# --------------------------------------------------------------------------- defaults


def test_defaults_validate_and_resolve_the_grpo_recipe():
    cfg = load_config(RunConfig, None)
    assert cfg == RunConfig()
    assert cfg.model.name == "builtin:tiny"
    assert cfg.data.task == "arithmetic" and cfg.data.path is None
    assert [r.name for r in cfg.rewards] == ["task"]
    algo = cfg.algorithm
    assert algo.recipe == "grpo"
    assert algo.advantage.name == "grpo"
    assert algo.policy_loss.name == "ppo_clip"
    assert algo.policy_loss.params == {"clip_low": 0.2, "clip_high": 0.2}
    assert algo.kl.name == "k3" and algo.kl.coef == 0.0
    assert algo.aggregation.name == "seq_mean_token_mean"


def test_sft_defaults_validate():
    cfg = load_config(SFTConfig, None)
    assert cfg == SFTConfig()
    assert cfg.data.num_examples == 256
    assert cfg.train.optim.lr == pytest.approx(1e-3)


def test_sft_defaults_survive_touching_a_section():
    cfg = load_config(SFTConfig, None, ["data.task=reverse", "train.optim.warmup_steps=5"])
    assert cfg.data.num_examples == 256
    assert cfg.train.optim.lr == pytest.approx(1e-3)


def test_config_errors_are_rewardlab_errors():
    assert issubclass(ConfigError, RewardlabError)


# --------------------------------------------------------------------------- YAML files


def test_yaml_file_loads_and_recipe_fills_unset_axes(tmp_path):
    path = write(
        tmp_path,
        """
        seed: 3
        model:
          name: ./my-model
          lora: {r: 4, alpha: 8}
        data:
          path: prompts.jsonl
        rewards:
          - name: exact_match
            weight: 0.5
          - name: format
        algorithm:
          recipe: dr_grpo
          policy_loss:
            name: ppo_clip
            params: {clip_low: 0.2, clip_high: 0.28}
        train:
          steps: 7
          optim:
            lr: 1.0e-5
        """,
    )
    cfg = load_config(RunConfig, path)
    assert cfg.seed == 3
    assert cfg.model.lora == LoraConfig(r=4, alpha=8.0)
    # a dataset path replaces the default built-in task
    assert cfg.data.path == "prompts.jsonl" and cfg.data.task is None
    assert [(r.name, r.weight) for r in cfg.rewards] == [("exact_match", 0.5), ("format", 1.0)]
    assert cfg.algorithm.policy_loss.params == {"clip_low": 0.2, "clip_high": 0.28}
    assert cfg.algorithm.advantage.name == "dr_grpo"  # from the recipe
    assert cfg.algorithm.aggregation.name == "seq_mean_token_sum_norm"  # from the recipe
    assert cfg.train.steps == 7 and cfg.train.optim.lr == pytest.approx(1e-5)
    assert cfg.train.optim.betas == (0.9, 0.99)  # untouched default


def test_empty_yaml_file_means_defaults(tmp_path):
    assert load_config(RunConfig, write(tmp_path, "")) == RunConfig()


def test_yaml_scientific_notation_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads `1e-4` as a string; free-form params would then reach the loss as "1e-4".
    path = write(
        tmp_path,
        """
        algorithm:
          policy_loss: {name: ppo_clip, params: {clip_high: 28e-2}}
        train: {optim: {lr: 1e-4}}
        """,
    )
    cfg = load_config(RunConfig, path)
    assert cfg.algorithm.policy_loss.params == {"clip_low": 0.2, "clip_high": 0.28}  # merged
    assert isinstance(cfg.algorithm.policy_loss.params["clip_high"], float)
    assert cfg.train.optim.lr == pytest.approx(1e-4)
    assert load_yaml(write(tmp_path, "a: '1e-4'\nb: 12\nc: 1.5\n", "q.yaml")) == {
        "a": "1e-4",  # quoted stays a string
        "b": 12,
        "c": 1.5,
    }


# --------------------------------------------------------------------------- --set overrides


def test_set_nested_key():
    cfg = load_config(RunConfig, None, ["train.optim.lr=1e-4", "train.steps=12"])
    assert cfg.train.optim.lr == pytest.approx(1e-4)
    assert cfg.train.steps == 12
    assert cfg.train.optim.warmup_steps == 0  # sibling defaults survive


def test_set_overrides_the_file(tmp_path):
    path = write(tmp_path, "train:\n  steps: 5\n  optim: {lr: 0.1, warmup_steps: 3}\n")
    cfg = load_config(RunConfig, path, ["train.optim.lr=0.01"])
    assert cfg.train.optim.lr == pytest.approx(0.01)
    assert cfg.train.optim.warmup_steps == 3
    assert cfg.train.steps == 5


def test_set_list_index(tmp_path):
    path = write(tmp_path, "rewards:\n  - {name: exact_match}\n  - {name: format, weight: 0.1}\n")
    cfg = load_config(RunConfig, path, ["rewards.0.weight=2", "rewards.1.args.strict=true"])
    assert [(r.name, r.weight) for r in cfg.rewards] == [("exact_match", 2.0), ("format", 0.1)]
    assert cfg.rewards[1].args == {"strict": True}
    # An override can also set the whole list first, then index into it.
    cfg = load_config(RunConfig, None, ["rewards=[{name: a}, {name: b}]", "rewards.1.weight=3"])
    assert [(r.name, r.weight) for r in cfg.rewards] == [("a", 1.0), ("b", 3.0)]


def test_set_values_are_typed_yaml():
    cfg = load_config(
        RunConfig,
        None,
        [
            "train.optim.betas=[0.8, 0.95]",
            "data.skip_bad_rows=true",
            "run_dir=null",
            "logging.sinks=[jsonl, tensorboard]",
            "model.lora={r: 4, target_modules: [q_proj, v_proj]}",
            "data.task_args={digits: 3, name: '007', ops: [+, -], rate: 5e-2}",
            "algorithm.policy_loss={name: ppo_clip, params: {clip_high: 28e-2}}",
            "seed=42",
        ],
    )
    assert cfg.train.optim.betas == (0.8, 0.95)
    assert cfg.data.skip_bad_rows is True
    assert cfg.run_dir is None
    assert cfg.logging.sinks == ["jsonl", "tensorboard"]
    assert cfg.model.lora == LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    assert cfg.data.task_args == {"digits": 3, "name": "007", "ops": ["+", "-"], "rate": 0.05}
    assert cfg.algorithm.policy_loss.params == {"clip_low": 0.2, "clip_high": 0.28}  # merged
    assert cfg.seed == 42


def test_set_value_may_contain_equals_and_empty_value_is_null():
    data: dict = {}
    apply_override(data, "data.task_args.expr=a=b")
    apply_override(data, "run_dir=")
    assert data == {"data": {"task_args": {"expr": "a=b"}}, "run_dir": None}


def test_set_errors():
    with pytest.raises(ConfigError, match=r"--set 'train': expected KEY=VALUE, for example"):
        apply_override({}, "train")
    with pytest.raises(ConfigError, match=r"'rewards\.2' needs a list index below 2"):
        apply_override({"rewards": [{"name": "a"}, {"name": "b"}]}, "rewards.2.weight=1")
    with pytest.raises(ConfigError, match=r"'rewards\.x' needs a list index"):
        apply_override({"rewards": [{"name": "a"}]}, "rewards.x=1")
    with pytest.raises(
        ConfigError, match=r"--set train\.steps\.x: 'train\.steps' is not a section"
    ):
        apply_override({"train": {"steps": 5}}, "train.steps.x=1")
    with pytest.raises(ConfigError) as err:
        apply_override({}, "train.optim.betas=[0.9")
    assert "--set train.optim.betas" in str(err.value) and "not valid YAML" in str(err.value)


def test_set_list_index_into_a_list_the_file_does_not_set():
    # The default rewards list is not in the loaded data, so there is no item 0 to edit; the
    # message says so instead of a bare "'rewards': Input should be a valid list".
    msg = config_error(RunConfig, None, ["rewards.0.weight=2"])
    assert "--set rewards.0.weight" in msg
    assert "'rewards' is not set in the config file" in msg
    assert "--set 'rewards=[...]'" in msg


# --------------------------------------------------------------------------- errors


def test_unknown_key_names_full_path_and_valid_keys(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 0.1\n")
    msg = config_error(RunConfig, path)
    assert msg.startswith(f"{path}: ")
    assert "unknown key 'train.lrr'" in msg
    # Nothing in `train` itself is close to "lrr"; the guess comes from one level down.
    assert "(did you mean 'train.optim.lr'?)" in msg
    assert "valid keys here: steps, prompts_per_step, ppo_epochs, mini_batch_size, " in msg
    assert "optim" in msg.split("valid keys here:")[1]


def test_unknown_key_with_nothing_close_makes_no_guess(tmp_path):
    msg = config_error(RunConfig, write(tmp_path, "train:\n  foo: 0.1\n"))
    assert "unknown key 'train.foo'; valid keys here:" in msg


def test_unknown_key_suggests_the_closest_valid_key():
    msg = config_error(RunConfig, None, ["train.optim.lrr=0.1"])
    assert "unknown key 'train.optim.lrr' (did you mean 'train.optim.lr'?)" in msg
    msg = config_error(RunConfig, None, ["modle.name=x"])
    assert "unknown key 'modle' (did you mean 'model'?)" in msg
    msg = config_error(RunConfig, None, ["rewards=[{name: a, wieght: 2}]"])
    assert "unknown key 'rewards.0.wieght' (did you mean 'rewards.0.weight'?)" in msg
    assert msg.startswith("config: ")  # no file: the source is "config"


def test_wrong_type_names_key_and_value():
    msg = config_error(RunConfig, None, ["train.steps=abc"])
    assert "'train.steps'" in msg and "valid integer" in msg and "(got 'abc')" in msg
    msg = config_error(RunConfig, None, ["train.optim.lr=-1"])
    assert "'train.optim.lr'" in msg and "greater than 0" in msg and "(got -1)" in msg
    msg = config_error(RunConfig, None, ["model.dtype=fp16"])
    assert "'model.dtype'" in msg and "'float32' or 'bfloat16'" in msg and "(got 'fp16')" in msg
    msg = config_error(RunConfig, None, ["rewards=[{name: a}]", "rewards.0.weight=heavy"])
    assert "'rewards.0.weight'" in msg and "(got 'heavy')" in msg


def test_missing_required_key():
    msg = config_error(RunConfig, None, ["rewards=[{weight: 2}]"])
    assert "'rewards.0.name' is required" in msg


def test_data_needs_a_task_or_a_path():
    msg = config_error(RunConfig, None, ["data.task=null"])
    assert "'data'" in msg and "set either data.task" in msg and "data.path" in msg


def test_unknown_recipe_suggests_the_close_one():
    msg = config_error(RunConfig, None, ["algorithm.recipe=grpoo"])
    assert "unknown recipe 'grpoo' (did you mean 'grpo'?)" in msg
    listed = msg.split("choose one of: ")[1].split(", ")
    assert {"dr_grpo", "grpo", "rloo"} <= set(listed) and listed == sorted(listed)
    assert "'algorithm'" in msg


def test_unknown_axis_param_names_the_params_key():
    msg = config_error(
        RunConfig,
        None,
        ["algorithm.policy_loss={name: ppo_clip, params: {clip_hihg: 0.3}}"],
    )
    assert "algorithm.policy_loss.params: 'ppo_clip' has no parameter 'clip_hihg'" in msg
    assert "did you mean 'clip_high'" in msg
    msg = config_error(RunConfig, None, ["algorithm.advantage={name: grpo, params: {epsilon: 1}}"])
    assert "algorithm.advantage.params: 'grpo' has no parameter 'epsilon'" in msg


def test_unknown_axis_entry_suggests_the_close_one():
    msg = config_error(RunConfig, None, ["algorithm.advantage.name=rlooo"])
    assert "unknown advantage 'rlooo' (did you mean 'rloo'?)" in msg
    msg = config_error(RunConfig, None, ["algorithm.kl.name=k4"])
    assert "unknown kl 'k4'" in msg and "k1, k2, k3" in msg


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    msg = config_error(RunConfig, missing)
    assert msg == f"{missing}: config file not found"


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "train:\n  steps: [1, 2\n")
    msg = config_error(RunConfig, path)
    assert msg.startswith(f"{path}: not valid YAML")
    assert "line" in msg  # the YAML parser's position is kept


def test_non_mapping_yaml(tmp_path):
    path = write(tmp_path, "- train\n- steps\n")
    msg = config_error(RunConfig, path)
    assert msg.startswith(f"{path}: a config must be a mapping of sections")
    path = write(tmp_path, "just a string\n", "s.yaml")
    assert "must be a mapping" in config_error(RunConfig, path)


def test_at_most_three_problems_are_reported():
    msg = config_error(
        RunConfig, None, ["seed=a", "train.steps=b", "train.ppo_epochs=c", "eval.every=d"]
    )
    assert msg.count("(got ") == 3


# --------------------------------------------------------------------------- dump


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [
            "model.lora={r: 4}",
            "train.optim.betas=[0.8, 0.95]",
            "train.optim.lr=1e-6",
            "algorithm.recipe=rloo",
            "algorithm.policy_loss={name: ppo_clip, params: {clip_high: 28e-2}}",
            "rewards=[{name: a, weight: 0.5, args: {k: [1, 2]}}]",
            "data.path=x.parquet",
            "run_dir=runs/a",
        ],
    ],
    ids=["defaults", "customized"],
)
def test_dump_config_round_trips(tmp_path, overrides):
    cfg = load_config(RunConfig, None, overrides)
    out = tmp_path / "resolved.yaml"
    dump_config(cfg, out)
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was moved into place
    again = load_config(RunConfig, out)
    assert again == cfg
    assert again.model_dump() == cfg.model_dump()
    # The dump pins every axis, so the file alone reproduces the run.
    text = out.read_text()
    assert "advantage:" in text and "aggregation:" in text


def test_dump_sft_config_round_trips(tmp_path):
    cfg = load_config(SFTConfig, None, ["train.epochs=2", "data.num_examples=8"])
    out = tmp_path / "sft.yaml"
    dump_config(cfg, out)
    assert load_config(SFTConfig, out) == cfg


def test_axis_override_merges_with_the_recipe():
    cfg = load_config(
        RunConfig,
        None,
        ["algorithm.recipe=rloo", "algorithm.kl.coef=0.05", "algorithm.policy_loss.params.clip_high=0.28"],
    )
    assert (cfg.algorithm.kl.name, cfg.algorithm.kl.coef) == ("k1", 0.05)  # rloo's estimator kept
    assert cfg.algorithm.policy_loss.name == "ppo_clip"
    assert cfg.algorithm.policy_loss.params == {"clip_low": 0.2, "clip_high": 0.28}
    assert cfg.algorithm.advantage.name == "rloo"


def test_axis_override_with_another_entry_drops_the_recipe_params():
    cfg = load_config(RunConfig, None, ["algorithm.advantage={name: dr_grpo}"])
    assert cfg.algorithm.advantage.name == "dr_grpo" and cfg.algorithm.advantage.params == {}


def test_resolved_config_round_trips():
    cfg = load_config(RunConfig, None, ["algorithm.recipe=dr_grpo", "algorithm.kl.coef=0.1"])
    assert parse_config(RunConfig, cfg.model_dump(mode="json")) == cfg


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    + sorted((Path(__file__).parent.parent / "src" / "rewardlab" / "configs").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_configs_validate(path):
    from rewardlab.bon import BonConfig

    schema = SFTConfig if "sft" in path.name else RunConfig
    if "preference" in load_yaml(path):
        schema = PreferenceConfig
    if "select" in load_yaml(path):
        schema = BonConfig
    load_config(schema, path)


# --------------------------------------------------------------------------- zoo axes


def test_recipe_brings_its_transforms_and_filter_and_the_config_may_replace_them():
    dapo = load_config(RunConfig, None, ["algorithm.recipe=dapo"]).algorithm
    assert [c.name for c in dapo.reward_transforms] == ["overlong_penalty"]
    assert dapo.batch_filter.name == "dynamic_sampling" and dapo.batch_filter.max_rounds == 3
    changed = load_config(
        RunConfig,
        None,
        ["algorithm.recipe=dapo", "algorithm.reward_transforms=[]", "algorithm.batch_filter.max_rounds=5"],
    ).algorithm
    assert changed.reward_transforms == [] and changed.batch_filter.max_rounds == 5
    off = load_config(RunConfig, None, ["algorithm.recipe=dapo", "algorithm.batch_filter=null"]).algorithm
    assert off.batch_filter is None
    plain = load_config(RunConfig, None, []).algorithm
    assert plain.batch_filter is None and plain.correction is None and plain.token_masks == []


def test_zoo_axes_combine_freely_with_any_recipe():
    algo = load_config(
        RunConfig,
        None,
        [
            "algorithm.recipe=rloo",
            "algorithm.token_masks=[{name: top_entropy, params: {top_fraction: 0.3}}]",
            "algorithm.correction={name: tis, params: {level: sequence}}",
            "algorithm.batch_filter={name: pf_ppo, params: {strategy: best_random}}",
            "algorithm.kl.placement=reward",
        ],
    ).algorithm
    assert algo.advantage.name == "rloo" and algo.kl.name == "k1" and algo.kl.placement == "reward"
    assert algo.token_masks[0].params == {"top_fraction": 0.3}
    assert algo.correction.params == {"level": "sequence"} and algo.batch_filter.max_rounds == 1


def test_zoo_axis_mistakes_name_the_key():
    msg = config_error(RunConfig, None, ["algorithm.token_masks=[{name: top_entropy, params: {fraction: 0.3}}]"])
    assert "algorithm.token_masks.0.params" in msg and "'top_fraction'" in msg
    msg = config_error(RunConfig, None, ["algorithm.correction={name: tiss}"])
    assert "unknown correction 'tiss' (did you mean 'tis'?)" in msg
    msg = config_error(RunConfig, None, ["algorithm.reward_transforms=[{name: overlong}]"])
    assert "unknown reward_transform 'overlong'" in msg and "overlong_penalty" in msg
    msg = config_error(RunConfig, None, ["algorithm.kl.placement=rewards"])
    assert "algorithm.kl.placement" in msg


def test_reward_transforms_and_combiner_are_checked_by_name():
    msg = config_error(RunConfig, None, ["rewards=[{name: task, transforms: [{name: clipp}]}]"])
    assert "unknown reward_transform 'clipp' (did you mean 'clip'?)" in msg
    msg = config_error(RunConfig, None, ["reward_combiner={name: gated, params: {gat: x}}"])
    assert "reward_combiner.params: 'gated' has no parameter 'gat' (did you mean 'gate'?)" in msg
    cfg = load_config(RunConfig, None, ["rewards=[{name: task, transforms: [{name: normalize}]}]"])
    assert cfg.rewards[0].transforms[0].name == "normalize" and cfg.reward_combiner.name == "weighted_sum"

"""Tests of cmdm.config: the guide's override forms, every error case, the YAML recipes, the CLI."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cmdm.config import (
    Config, ConfigError, config_from_dict, config_hash, config_to_dict, load_config,
    load_config_or_exit, main, parse_override, save_config, update_config,
)

ROOT = Path(__file__).resolve().parents[1]
STABLE = str(ROOT / "configs" / "stable.yaml")
DEMO = str(ROOT / "configs" / "demo.yaml")


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def error_of(path=None, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message  # one paragraph
    return message


# ---------------------------------------------------------------- overrides as the guide types them

@pytest.mark.parametrize("text, key, value", [
    ("model.arch=dit", "model.arch", "dit"),              # shell already stripped 'dit'
    ("model.arch='dit'", "model.arch", "dit"),            # quotes left in
    ("model.arch=\"'dit'\"", "model.arch", "dit"),        # both layers left in
    ("model.num_layers=[1,1,1,1,1]", "model.num_layers", [1, 1, 1, 1, 1]),
    ("training.early_stopping.patience=5", "training.early_stopping.patience", 5),
    ("task.train.batch_size=16", "task.train.batch_size", 16),
    ("model.condition_embedder.fusion_method='cross_attn'", "model.condition_embedder.fusion_method",
     "cross_attn"),
    ("training.early_stopping.enabled=true", "training.early_stopping.enabled", True),
    (" training.grad_clip = 0.5 ", "training.grad_clip", 0.5),
    ("ray.address=", "ray.address", ""),
])
def test_parse_override(text, key, value):
    assert parse_override(text) == (key, value)


GUIDE = [  # REFERENCE section 1, as a user types it
    "model.arch='dit'", "model.latent_dim=512", "model.num_layers=[1,1,1,1,1]",
    "model.dim_feedforward=1024", "model.dropout=0.15", "model.dit_drop_path=0.05",
    "model.dit_use_cross_attn_pooling=true", "model.condition_embedder.use_cross_attn_pooling=true",
    "model.condition_embedder.num_latents=64", "model.condition_embedder.fusion_method='cross_attn'",
    "model.text_model.max_length=20", "training.lr=3e-5", "training.grad_clip=1.0",
    "training.warmup_steps=2000", "training.weight_decay=1e-4", "training.lr_scheduler='cosine'",
    "training.early_stopping.enabled=true", "training.early_stopping.patience=5",
    "training.early_stopping.min_delta=0.01", "training.eval_every_epochs=20",
    "training.eval_num_samples=500", "training.save_best=true", "training.best_metric='fid'",
    "task.train.batch_size=32",
]


def test_guide_overrides_give_the_stable_recipe():
    cfg = load_config(None, GUIDE)
    # stable.yaml is the fork's model with CLIP ViT-B/32 text; the defaults keep the embedded MiniLM (the demo's)
    assert cfg == Config() == load_config(STABLE, GUIDE + ["model.text_model.name=all-minilm-l6-v2"])
    assert load_config(STABLE).model.text_model.name == "openai/clip-vit-base-patch32"
    # the guide's num_latents=64 / cross_attn are our extension; stable.yaml is the fork's module (1 / adaln)
    assert load_config(STABLE).model.condition_embedder.num_latents == 1


def test_overrides_typed_values():
    cfg = load_config(None, ["training.lr=3e-5", "training.weight_decay=1E-3", "training.grad_clip=1",
                             "task.train.batch_size=16", "model.num_layers=[2,2]", "name=2024",
                             "ray.address=auto", "model.arch=trans_enc", "data.contact_joints=[0]"])
    assert cfg.training.lr == 3e-5 and type(cfg.training.lr) is float
    assert cfg.training.weight_decay == 1e-3
    assert cfg.training.grad_clip == 1.0 and type(cfg.training.grad_clip) is float
    assert cfg.task.train.batch_size == 16 and cfg.task.test.batch_size == 32
    assert cfg.model.num_layers == [2, 2]
    assert cfg.name == "2024"  # a string field keeps what was typed
    assert cfg.ray.address == "auto" and cfg.model.arch == "trans_enc"
    assert cfg.run_dir == os.path.join("outputs", "2024")


def test_overrides_apply_in_order_after_the_file(tmp_path):
    path = write(tmp_path, "training:\n  lr: 1.0e-4\n  warmup_steps: 10\n")
    cfg = load_config(path, ["training.lr=2e-5", "training.lr=5e-5"])
    assert cfg.training.lr == 5e-5 and cfg.training.warmup_steps == 10
    assert cfg.training.grad_clip == 1.0  # untouched keys keep the defaults


def test_section_override_with_a_mapping_merges():
    cfg = load_config(None, ["training.ema={enabled: true, decay: 0.999}"])
    assert cfg.training.ema.enabled is True and cfg.training.ema.decay == 0.999


def test_yaml_file_float_without_dot_and_dotted_keys(tmp_path):
    path = write(tmp_path, """\
        training:
          lr: 3e-5
          weight_decay: 1e-4
        model.latent_dim: 256
        """)
    cfg = load_config(path)
    assert cfg.training.lr == 3e-5 and cfg.training.weight_decay == 1e-4
    assert cfg.model.latent_dim == 256


def test_empty_yaml_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "# nothing set\n")) == Config()


# ---------------------------------------------------------------- the recipes

def test_stable_yaml_is_the_guide_recipe():
    cfg = load_config(STABLE)
    m, t = cfg.model, cfg.training
    assert cfg.name == "CMDM-Stable"
    assert cfg.data.name == "humanml3d" and cfg.data.root == "data/HumanML3D"
    assert m.arch == "dit" and m.latent_dim == 512 and m.num_layers == [1, 1, 1, 1, 1]
    assert m.dim_feedforward == 1024 and m.dropout == 0.15 and m.dit_drop_path == 0.05
    assert m.dit_use_cross_attn_pooling is True and m.condition_embedder.use_cross_attn_pooling is True
    assert m.condition_embedder.num_latents == 1 and m.condition_embedder.fusion_method == "adaln"  # the fork's
    assert m.contact_model.arch == "point_transformer"
    assert m.text_model.max_length == 20
    assert t.lr == 3e-5 and t.grad_clip == 1.0 and t.warmup_steps == 2000 and t.weight_decay == 1e-4
    assert t.lr_scheduler == "cosine"
    assert t.early_stopping.enabled is True and t.early_stopping.patience == 5
    assert t.early_stopping.min_delta == 0.01
    assert t.eval_every_epochs == 20 and t.eval_num_samples == 500
    assert t.save_best is True and t.best_metric == "fid"
    assert cfg.task.train.batch_size == 32
    assert m.text_model.name == "openai/clip-vit-base-patch32"  # the fork's text encoder, CLIP ViT-B/32
    fork = ["model.text_model.name=all-minilm-l6-v2", "model.condition_embedder.num_latents=64",
            "model.condition_embedder.fusion_method=cross_attn"]
    assert load_config(STABLE, fork) == Config()  # defaults: the rest of it


def test_demo_yaml_loads_and_is_small():
    """The demo runs the stable recipe's machinery on the embedded data, sized down for a CPU."""
    cfg, stable = load_config(DEMO), load_config(STABLE)
    m, t = cfg.model, cfg.training
    assert cfg.name == "CMDM-Demo"
    assert cfg.data.name == "synthetic" and cfg.data.root == "data/synthetic"
    assert cfg.data.contact_num_points < stable.data.contact_num_points
    assert m.arch == "dit" and m.latent_dim < stable.model.latent_dim and m.latent_dim % m.num_heads == 0
    assert m.condition_embedder.fusion_method == "cross_attn" and m.condition_embedder.use_cross_attn_pooling
    assert t.max_epochs <= 10 and t.eval_every_epochs <= t.max_epochs and t.eval_num_samples >= 32
    assert t.early_stopping.enabled and t.save_best and t.best_metric == "fid" and t.lr_scheduler == "cosine"
    assert cfg.evaluation.sampler == "ddim" and cfg.ray.cpus_per_worker == 2


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("override, expected", [
    # unknown keys, with the nearest valid key
    ("training.lr_schedulr=cosine", ["training.lr_schedulr", "did you mean training.lr_scheduler?"]),
    ("lr_schedulr=cosine", ["did you mean training.lr_scheduler?"]),
    ("model.condition_embedder.num_latent=64", ["did you mean model.condition_embedder.num_latents?"]),
    ("task.train.batchsize=16", ["did you mean task.train.batch_size?"]),
    # a section used as a value, a value used as a section
    ("training=5", ["training is a section, not a value", "training.lr"]),
    ("training.ema=true", ["training.ema is a section", "training.ema.enabled"]),
    ("training.lr.value=1", ["training.lr is a value", "not a section"]),
    ("training.lr={a: 1}", ["training.lr is a value", "not a section"]),
    # wrong types
    ("training.lr=abc", ["training.lr", "must be a number", "'abc'"]),
    ("training.lr=nan", ["training.lr", "must be a number"]),
    ("training.lr=true", ["training.lr", "must be a number"]),
    ("model.num_layers=3", ["model.num_layers", "a list of integers", "[1,1,1,1,1]"]),
    ("model.num_layers=[1,x,1]", ["model.num_layers", "a list of integers", "entry 1"]),
    ("model.num_layers=[1,1.5]", ["model.num_layers", "entry 1"]),
    ("model.num_layers=[1,1", ["model.num_layers", "a list of integers"]),
    ("task.train.batch_size=16.0", ["task.train.batch_size", "an integer"]),
    ("task.train.batch_size=big", ["task.train.batch_size", "an integer"]),
    ("training.save_best=1", ["training.save_best", "true or false"]),
    ("training.early_stopping.enabled='0'", ["training.early_stopping.enabled", "true or false"]),
    # choices
    ("model.arch=dti", ["model.arch", "'trans_enc', 'dit'", "did you mean 'dit'?"]),
    ("training.best_metric=top5", ["training.best_metric", "'fid', 'top1', 'top2', 'top3'"]),
    ("model.condition_embedder.fusion_method=add", ["fusion_method", "'cross_attn', 'concat'"]),
    ("training.lr_scheduler=step", ["training.lr_scheduler", "'cosine', 'constant', 'linear'"]),
])
def test_bad_override(override, expected):
    message = error_of(None, [override])
    assert message.startswith(f"command line (`{override}`)")
    assert "Fix" in message or "did you mean" in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize("override, key", [
    ("training.lr=0", "training.lr"),
    ("training.lr=-1e-4", "training.lr"),
    ("training.weight_decay=-0.1", "training.weight_decay"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("model.dit_drop_path=1", "model.dit_drop_path"),
    ("model.text_drop_prob=1.5", "model.text_drop_prob"),
    ("model.contact_drop_prob=-0.01", "model.contact_drop_prob"),
    ("training.early_stopping.patience=0", "training.early_stopping.patience"),
    ("training.early_stopping.min_delta=-0.01", "training.early_stopping.min_delta"),
    ("task.train.batch_size=0", "task.train.batch_size"),
    ("task.test.batch_size=0", "task.test.batch_size"),
    ("evaluation.batch_size=0", "evaluation.batch_size"),
    ("model.num_layers=[1,-1,1]", "model.num_layers"),
    ("diffusion.steps=0", "diffusion.steps"),
    ("evaluation.ddim_steps=0", "evaluation.ddim_steps"),
    ("training.grad_clip=-1", "training.grad_clip"),
    ("training.warmup_steps=-1", "training.warmup_steps"),
    ("training.eval_every_epochs=0", "training.eval_every_epochs"),
    ("training.eval_num_samples=0", "training.eval_num_samples"),
    ("data.unit_length=0", "data.unit_length"),
    ("data.contact_sigma=0", "data.contact_sigma"),
    ("data.contact_joints=[0,10,22]", "data.contact_joints"),
    ("data.contact_joints=[-1]", "data.contact_joints"),
    ("training.ema.decay=1", "training.ema.decay"),
    ("training.ema.decay=0", "training.ema.decay"),
    ("ray.num_workers=0", "ray.num_workers"),
    ("ray.cpus_per_worker=0", "ray.cpus_per_worker"),
    ("evaluation.guidance_scale=-1", "evaluation.guidance_scale"),
    ("model.text_model.max_length=0", "model.text_model.max_length"),
    ("model.condition_embedder.num_latents=0", "model.condition_embedder.num_latents"),
])
def test_out_of_range(override, key):
    message = error_of(None, [override])
    assert message.startswith(f"command line (`{override}`)")
    assert key in message and "outside the allowed range" in message and "Fix:" in message


@pytest.mark.parametrize("overrides, keys", [
    (["model.num_heads=7"], ["model.latent_dim", "model.num_heads", "divisible"]),
    (["model.latent_dim=100"], ["model.latent_dim", "model.num_heads"]),
    (["model.num_layers=[]"], ["model.num_layers", "no layers"]),
    (["model.num_layers=[0,0,0]"], ["model.num_layers", "no layers"]),
    (["evaluation.ddim_steps=2000"], ["evaluation.ddim_steps", "diffusion.steps"]),
    (["diffusion.steps=10"], ["evaluation.ddim_steps", "diffusion.steps"]),
    (["data.min_motion_len=200"], ["data.min_motion_len", "data.max_motion_len"]),
    (["data.max_frames=20"], ["data.max_frames", "data.min_motion_len"]),
    (["data.contact_joints=[]"], ["data.contact_joints", "data.use_contacts"]),
])
def test_cross_field_rules(overrides, keys):
    message = error_of(None, overrides)
    assert "command line" in message and "Fix:" in message
    for key in keys:
        assert key in message


def test_cross_field_rule_names_both_sources(tmp_path):
    path = write(tmp_path, "model:\n  latent_dim: 500\n")
    message = error_of(path, ["model.num_heads=8"])
    assert path in message and "command line" in message


def test_contacts_off_allows_no_contact_joints():
    cfg = load_config(None, ["data.use_contacts=false", "data.contact_joints=[]"])
    assert cfg.data.contact_joints == []


def test_override_without_equals():
    for text in ["training.lr", "=3e-5"]:
        message = error_of(None, [text])
        assert message.startswith("command line") and "key=value" in message
    with pytest.raises(ConfigError):
        parse_override("training.lr")


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = write(tmp_path, "training:\n  lr_schedulr: cosine\n")
    message = error_of(path)
    assert message.startswith(path)
    assert "training.lr_schedulr" in message and "did you mean training.lr_scheduler?" in message


def test_wrong_type_in_file_names_the_file(tmp_path):
    path = write(tmp_path, "model:\n  num_layers: 5\n")
    message = error_of(path)
    assert message.startswith(path) and "model.num_layers" in message and "a list of integers" in message


def test_range_error_in_file_names_the_file(tmp_path):
    path = write(tmp_path, "training:\n  lr: -1.0\n")
    message = error_of(path)
    assert message.startswith(path) and "training.lr" in message


def test_section_as_value_in_file(tmp_path):
    path = write(tmp_path, "training: fast\n")
    message = error_of(path)
    assert message.startswith(path) and "training is a section" in message


def test_string_field_in_file_needs_quotes(tmp_path):
    message = error_of(write(tmp_path, "name: 2024\n"))
    assert "name must be a string" in message and "quote" in message
    assert load_config(write(tmp_path, "name: '2024'\n")).name == "2024"


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "training:\n  lr: 1.0\n  warmup_steps: [1, 2\nmodel:\n  arch: dit\n")
    message = error_of(path)
    assert message.startswith(path) and "YAML syntax error" in message
    assert "line 4" in message and "column" in message


def test_yaml_bad_indentation_names_the_line(tmp_path):
    path = write(tmp_path, "training:\n  lr: 1.0\n warmup_steps: 3\n")
    message = error_of(path)
    assert path in message and "line 3" in message


def test_yaml_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, "training:\n  lr: 1.0e-4\nmodel:\n  arch: dit\ntraining:\n  warmup_steps: 5\n")
    message = error_of(path)
    assert path in message and "duplicate key 'training'" in message and "line 5" in message


def test_missing_config_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    message = error_of(path)
    assert message.startswith(path) and "not found" in message


def test_directory_as_config_file(tmp_path):
    message = error_of(str(tmp_path))
    assert str(tmp_path) in message and "cannot read" in message


def test_top_level_not_a_mapping(tmp_path):
    path = write(tmp_path, "- training\n- model\n")
    message = error_of(path)
    assert message.startswith(path) and "top level must be a mapping" in message


def test_non_string_key(tmp_path):
    message = error_of(write(tmp_path, "training:\n  1: 2\n"))
    assert "training" in message and "not a name" in message


# ---------------------------------------------------------------- dicts, saving, hashing

def test_dict_round_trip():
    cfg = load_config(DEMO)
    d = config_to_dict(cfg)
    assert isinstance(d["model"]["num_layers"], list)
    assert config_from_dict(d) == cfg
    before = list(cfg.model.num_layers)
    d["model"]["num_layers"].append(1)  # a copy: the config is untouched
    assert cfg.model.num_layers == before and len(d["model"]["num_layers"]) == len(before) + 1


def test_config_from_dict_is_validated_and_names_its_source():
    assert config_from_dict({"training": {"lr": 1e-4}}).training.lr == 1e-4
    with pytest.raises(ConfigError, match=r"^checkpoint: training\.lr"):
        config_from_dict({"training": {"lr": -1.0}}, source="checkpoint")
    with pytest.raises(ConfigError, match="did you mean training.lr"):
        config_from_dict({"training": {"lrr": 1.0}})


def test_update_config():
    cfg = update_config(Config(), {"training.lr": 1e-4, "model.num_layers": [2, 2]}, source="sweep")
    assert cfg.training.lr == 1e-4 and cfg.model.num_layers == [2, 2]
    assert Config().training.lr == 3e-5
    with pytest.raises(ConfigError, match=r"^sweep: .*model\.latent_dim"):
        update_config(Config(), {"model.latent_dim": 100}, source="sweep")


@pytest.mark.parametrize("recipe", [STABLE, DEMO])
def test_save_load_round_trip(tmp_path, recipe):
    cfg = load_config(recipe, ["training.lr=3e-5", "name=2024", "ray.address="])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, str(path))
    assert load_config(str(path)) == cfg
    assert os.listdir(path.parent) == ["config.yaml"]  # no temp file left
    save_config(cfg, str(path))  # overwriting works
    assert load_config(str(path)) == cfg


def test_config_hash():
    h = config_hash(Config())
    assert len(h) == 12 and int(h, 16) >= 0
    assert config_hash(load_config(STABLE, ["model.text_model.name=all-minilm-l6-v2",
                                            "model.condition_embedder.num_latents=64",
                                            "model.condition_embedder.fusion_method=cross_attn"])) == h
    assert config_hash(load_config(None, ["training.grad_clip=1"])) == h  # 1 and 1.0 are one recipe
    assert config_hash(load_config(None, ["training.lr=3.1e-5"])) != h
    assert config_hash(load_config(None, ["model.num_layers=[1,1,1,1,2]"])) != h


# ---------------------------------------------------------------- CLI

def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "cmdm.config", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_prints_resolved_yaml(tmp_path):
    result = run_cli("configs/stable.yaml", "training.lr=5e-5", "model.arch='trans_enc'")
    assert result.returncode == 0, result.stderr
    saved = write(tmp_path, result.stdout, "printed.yaml")
    cfg = load_config(saved)
    assert cfg.training.lr == 5e-5 and cfg.model.arch == "trans_enc"


@pytest.mark.parametrize("args", [
    ("configs/stable.yaml", "training.lr_schedulr=cosine"),
    ("configs/stable.yaml", "training.lr=abc"),
    ("configs/missing.yaml",),
    ("configs/stable.yaml", "training.lr"),
])
def test_cli_error_exits_2_with_one_paragraph(args):
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_cli_usage():
    assert run_cli().returncode == 2
    assert run_cli("--help").returncode == 0


def test_main_and_load_config_or_exit_in_process(capsys):
    assert main([STABLE, "training.lr=1e-4"]) == 0
    assert "lr: 0.0001" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        load_config_or_exit(STABLE, ["model.arch=dti"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("error: command line (`model.arch=dti`)")


def test_eval_samples_must_fill_one_r_precision_batch():
    with pytest.raises(ConfigError, match=r"training.eval_num_samples = 16 .*evaluation.batch_size = 32"):
        load_config("configs/demo.yaml", ["training.eval_num_samples=16"])

"""Training telemetry callbacks, loggers and conf/callbacks (astra.callbacks / astra.telemetry)."""

from __future__ import annotations

import copy
import csv
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils.data import DataLoader, Dataset

from astra.models.adapters import lora_layers
from astra.models.build import tiny_llama
from astra.telemetry.effective_rank import effective_rank
from astra.telemetry.grad_norm import GradNormMonitor
from astra.telemetry.loggers import build_loggers, finish_loggers, logger_session
from astra.telemetry.loss import LossMonitor, LRMonitor
from astra.telemetry.naming import module_type, param_type_and_factor, short_layer_name
from astra.telemetry.rank import EffectiveRankMonitor, moment_rank_metrics
from astra.telemetry.run_facts import RunFactsMonitor
from astra.telemetry.summary import attach_run_info, collect_summary, default_callbacks, instantiate_callbacks

CONF = Path(__file__).resolve().parents[1] / "conf" / "callbacks"
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------- helpers
class RecordingLogger(Logger):
    """Stores every ``log_metrics`` call."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))

    def steps_of(self, key: str) -> list[int]:
        return [step for step, metrics in self.calls if key in metrics]

    def value(self, key: str, step: int) -> float:
        values = [m[key] for s, m in self.calls if s == step and key in m]
        assert len(values) == 1, (key, step, values)
        return values[0]


class DictDataset(Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def lm_rows(n: int, seq: int = 16, vocab: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (seq,), generator=g)
        mask = torch.ones(seq, dtype=torch.long)
        pad = int(torch.randint(0, seq // 2, (1,), generator=g))
        if pad:
            mask[-pad:] = 0
        labels = ids.masked_fill(mask == 0, -100)
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return rows


class LMModule(pl.LightningModule):
    """Minimal causal-LM module: logs train/loss and val/loss itself, like the project's module."""

    def __init__(self, model, lr=1e-2, fail_at_step=None):
        super().__init__()
        self.model = model
        self.lr = lr
        self.fail_at_step = fail_at_step
        self.losses: list[float] = []  # every micro-batch loss, for checks

    def training_step(self, batch, batch_idx):
        if self.fail_at_step is not None and self.global_step >= self.fail_at_step:
            raise RuntimeError("boom")
        loss = self.model(**batch).loss
        self.losses.append(float(loss.detach()))
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.model(**batch).loss)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def tiny_lora_model(r=4, use_dora=False, seed=0):
    model = tiny_llama(
        vocab_size=64, seed=seed, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=LLAMA_TARGETS, lora_dropout=0.0, use_dora=use_dora)
    return get_peft_model(model, config)


def make_trainer(tmp_path, callbacks, loggers, **kwargs):
    defaults = dict(
        accelerator="cpu", devices=1, max_steps=7, logger=loggers, callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, num_sanity_val_steps=0, limit_val_batches=2, val_check_interval=4,
        default_root_dir=str(tmp_path),
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def telemetry(**overrides):
    """Small intervals so a 7-step run crosses them: per-type/rank/throughput every 3 steps."""
    args = dict(
        lr={"flush_every_n_steps": 4},
        loss={"flush_every_n_steps": 4},
        grad_norm={"per_type_every_n_steps": 3, "per_type_first_n_steps": 0, "flush_every_n_steps": 4},
        effective_rank={"every_n_steps": 3, "flush_every_n_steps": 4},
        run_facts={"every_n_steps": 3, "flush_every_n_steps": 4},
    )
    for key, value in overrides.items():
        args[key].update(value)
    return default_callbacks(**args)


def lm_loaders(n_train=40, batch_size=4):
    train = DataLoader(DictDataset(lm_rows(n_train)), batch_size=batch_size, shuffle=False)
    val = DataLoader(DictDataset(lm_rows(8, seed=1)), batch_size=batch_size)
    return train, val


# ---------------------------------------------------------------------- naming
def test_module_types_and_factors():
    assert module_type("base_model.model.model.layers.0.self_attn.q_proj") == "q"
    assert module_type("model.layers.3.mlp.gate_proj") == "gate"
    assert module_type("encoder.layer.0.attention.self.query") == "query"
    assert module_type("encoder.layer.0.output.dense") == "dense"
    assert module_type("h.0.mlp.fc.3") == "fc"
    prefix = "model.base_model.model.model.layers.1.mlp.down_proj"
    assert param_type_and_factor(f"{prefix}.lora_A.default.weight") == ("down", "A")
    assert param_type_and_factor(f"{prefix}.lora_B.default.weight") == ("down", "B")
    assert param_type_and_factor(f"{prefix}.lora_magnitude_vector.default.weight") == ("down", "m")
    assert param_type_and_factor("model.model.layers.1.self_attn.o_proj.weight") == ("o", "W")
    assert param_type_and_factor("model.model.norm.weight") == ("norm", "W")
    assert short_layer_name("model.base_model.model.model.layers.0.self_attn.q_proj") == "layers.0.self_attn.q_proj"
    assert short_layer_name("model.model.layers.0.mlp.up_proj") == "layers.0.mlp.up_proj"


# ---------------------------------------------------------------------- gradient norm vs a manual computation
class Toy(nn.Module):
    """Deterministic attention-shaped toy: q/k/v/o linears, no dropout."""

    def __init__(self, d=8):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        return self.o_proj(torch.tanh(self.q_proj(x)) * self.k_proj(x) + self.v_proj(x))


class ToyModule(pl.LightningModule):
    def __init__(self, model, lr=0.1):
        super().__init__()
        self.model = model
        self.lr = lr

    def training_step(self, batch, batch_idx):
        loss = (self.model(batch["x"]) - batch["y"]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def toy_lora(seed=0):
    torch.manual_seed(seed)
    model = get_peft_model(Toy(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():  # non-zero B so both factors get gradients on the first step
        for _, layer in lora_layers(model):
            layer.lora_B["default"].weight.normal_(0, 0.5)
    return model


def toy_batches(n, seed=0, batch_size=4):
    g = torch.Generator().manual_seed(seed)
    rows = [
        {"x": torch.randn(8, generator=g), "y": torch.randn(8, generator=g), "attention_mask": torch.ones(3, dtype=torch.long)}
        for _ in range(n)
    ]
    return DataLoader(DictDataset(rows), batch_size=batch_size, shuffle=False)


def manual_first_step_norms(model, loader, accumulate):
    """Global and per-(type, factor) L2 norms of the first optimizer step's (accumulated) gradient."""
    model = copy.deepcopy(model)
    model.zero_grad()
    for index, batch in enumerate(loader):
        if index == accumulate:
            break
        loss = (model(batch["x"]) - batch["y"]).pow(2).mean() / accumulate
        loss.backward()
    groups = defaultdict(float)
    total = 0.0
    for name, param in model.named_parameters():
        if param.requires_grad and param.grad is not None:
            sq = float(param.grad.double().pow(2).sum())
            module, factor = param_type_and_factor(name)
            total += sq
            groups[f"grad/type/{module}"] += sq
            groups[f"grad/factor/{factor}"] += sq
            groups[f"grad/type/{module}/{factor}"] += sq
    return math.sqrt(total), {k: math.sqrt(v) for k, v in groups.items()}


@pytest.mark.parametrize("accumulate,clip", [(1, None), (2, None), (1, 1e-3)])
def test_grad_norm_matches_manual(tmp_path, accumulate, clip):
    model = toy_lora()
    loader = toy_batches(16)
    expected, expected_groups = manual_first_step_norms(model, loader, accumulate)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    logger = RecordingLogger()
    callback = GradNormMonitor(per_type_every_n_steps=1, flush_every_n_steps=1)
    trainer = make_trainer(
        tmp_path, [callback], [logger], max_steps=1, accumulate_grad_batches=accumulate,
        gradient_clip_val=clip, limit_val_batches=0,
    )
    trainer.fit(ToyModule(model, lr=0.1), loader)
    assert logger.steps_of("grad/norm") == [0]
    assert logger.value("grad/norm", 0) == pytest.approx(expected, rel=1e-5)
    for key, value in expected_groups.items():
        assert logger.value(key, 0) == pytest.approx(value, rel=1e-5, abs=1e-8), key
    assert {"grad/type/q", "grad/factor/A", "grad/factor/B", "grad/type/o/B"} <= set(expected_groups)
    if clip is not None:
        # The update used the clipped gradient (norm == clip) while the logged value is the pre-clip norm.
        assert expected > 100 * clip
        step = math.sqrt(sum(float((p.detach() - before[n]).double().pow(2).sum())
                             for n, p in model.named_parameters() if p.requires_grad))
        assert step == pytest.approx(0.1 * clip, rel=1e-3)
    assert callback.summary()["grad_norm_mean_first100"] == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------- a full run with a recording logger
def test_run_logs_expected_keys_at_expected_steps(tmp_path):
    started = time.perf_counter()
    model = tiny_lora_model()
    callbacks = telemetry()
    layer_names = [name for name, _ in lora_layers(model)]
    report = {"_moment_eigenvalues": {name: torch.tensor([4.0, 2.0, 1.0, -1e-9]) for name in layer_names}}
    attach_run_info(callbacks, init_time_s=1.25, init_report=report)
    logger = RecordingLogger()
    train, val = lm_loaders()
    trainer = make_trainer(tmp_path, callbacks, [logger])
    trainer.fit(LMModule(model), train, val)

    every = list(range(7))
    assert logger.steps_of("grad/norm") == every
    assert logger.steps_of("train/lr") == every
    assert logger.steps_of("train/loss_step") == every
    # Per-type / per-factor norms at the interval (step index % 3 == 0).
    for key in ("grad/type/q", "grad/type/down", "grad/factor/A", "grad/factor/B", "grad/type/gate/B"):
        assert logger.steps_of(key) == [0, 3, 6], key
    # Effective rank: at start (0), every 3 completed steps, and at the end (7).
    for key in ("rank/eff/mean", "rank/eff/type/q", "rank/stable/mean", "rank/eff/layer/layers.0.self_attn.q_proj"):
        assert logger.steps_of(key) == [0, 3, 6, 7], key
    assert logger.steps_of("rank/moment/mean") == [0]
    assert logger.steps_of("rank/moment/layer/layers.1.mlp.down_proj") == [0]
    assert logger.steps_of("run/params_trainable") == [0]
    assert logger.steps_of("run/init_time_s") == [0]
    assert logger.steps_of("run/tokens_per_s") == [3, 6, 7]
    assert logger.steps_of("run/peak_memory_mb") == [3, 6, 7]
    # The module's own metrics arrive too.
    assert logger.steps_of("train/loss")
    assert logger.steps_of("val/loss")

    # Values.
    lrs = [logger.value("train/lr", s) for s in every]
    assert lrs == pytest.approx([1e-2 / (1 + s) for s in every])
    assert logger.value("rank/eff/mean", 0) == 0.0  # LoRA: B = 0 at init
    assert 1.0 <= logger.value("rank/eff/mean", 7) <= 4.0
    assert logger.value("rank/moment/mean", 0) == pytest.approx(math.exp(-sum(p * math.log(p) for p in (4 / 7, 2 / 7, 1 / 7))))
    name, layer = next(lora_layers(model))
    dw = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    direct = float(effective_rank(torch.linalg.svdvals(dw.detach().double())))
    assert logger.value(f"rank/eff/layer/{short_layer_name(name)}", 7) == pytest.approx(direct, rel=1e-4)
    tokens = sum(int(row["attention_mask"].sum()) for row in lm_rows(40)[:28])
    assert callbacks[-1].final["tokens_total"] == tokens

    summary = collect_summary(callbacks)
    for key in ("final_train_loss", "final_val_loss", "grad_norm_mean_first100", "final_effective_rank_mean",
                "tokens_per_s", "peak_memory_mb", "trainable_params", "total_params", "init_time_s",
                "moment_effective_rank_mean"):
        assert key in summary, key
    assert summary["final_effective_rank_mean"] == logger.value("rank/eff/mean", 7)
    assert summary["init_time_s"] == 1.25
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert time.perf_counter() - started < 10


def test_accumulation_logs_once_per_optimizer_step(tmp_path):
    logger = RecordingLogger()
    callbacks = [LRMonitor(flush_every_n_steps=2), LossMonitor(flush_every_n_steps=2), GradNormMonitor(flush_every_n_steps=2)]
    train, _ = lm_loaders()
    trainer = make_trainer(tmp_path, callbacks, [logger], max_steps=3, accumulate_grad_batches=2, limit_val_batches=0)
    module = LMModule(tiny_lora_model())
    trainer.fit(module, train)
    for key in ("grad/norm", "train/lr", "train/loss_step"):
        assert logger.steps_of(key) == [0, 1, 2], key
    # train/loss_step is the mean of the micro-batch losses of each optimizer step.
    assert len(module.losses) == 6
    for step in range(3):
        expected = (module.losses[2 * step] + module.losses[2 * step + 1]) / 2
        assert logger.value("train/loss_step", step) == pytest.approx(expected, rel=1e-5)


def test_metrics_are_flushed_when_training_raises(tmp_path):
    logger = RecordingLogger()
    callbacks = telemetry(grad_norm={"flush_every_n_steps": 100})
    train, _ = lm_loaders()
    trainer = make_trainer(tmp_path, callbacks, [logger], limit_val_batches=0)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(LMModule(tiny_lora_model(), fail_at_step=4), train)
    assert logger.steps_of("grad/norm") == [0, 1, 2, 3]


def test_dora_and_full_finetune_ranks(tmp_path):
    # DoRA: rank of s * B @ A, magnitude gradients under factor m.
    logger = RecordingLogger()
    callbacks = [GradNormMonitor(per_type_every_n_steps=1, flush_every_n_steps=1), EffectiveRankMonitor(every_n_steps=0)]
    train, _ = lm_loaders()
    model = tiny_lora_model(use_dora=True)
    make_trainer(tmp_path, callbacks, [logger], max_steps=2, limit_val_batches=0).fit(LMModule(model), train)
    assert logger.steps_of("grad/factor/m") == [0, 1]
    assert logger.steps_of("rank/eff/mean") == [0, 2]
    name, layer = next(lora_layers(model))
    dw = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    direct = float(effective_rank(torch.linalg.svdvals(dw.detach().double())))
    assert logger.value(f"rank/eff/layer/{short_layer_name(name)}", 2) == pytest.approx(direct, rel=1e-4)

    # Full fine-tuning: rank of W - W0 on a configured subset.
    logger = RecordingLogger()
    model = tiny_llama(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    w0 = model.model.layers[1].mlp.up_proj.weight.detach().clone()
    callback = EffectiveRankMonitor(every_n_steps=0, full_ft_patterns=["layers.1.mlp.up_proj", "*layers.0.self_attn.q_proj"])
    make_trainer(tmp_path, [callback], [logger], max_steps=2, limit_val_batches=0).fit(LMModule(model, lr=1e-3), train)
    keys = {k for _, m in logger.calls for k in m if k.startswith("rank/eff/layer/")}
    assert keys == {"rank/eff/layer/layers.1.mlp.up_proj", "rank/eff/layer/layers.0.self_attn.q_proj"}
    direct = float(effective_rank(torch.linalg.svdvals((model.model.layers[1].mlp.up_proj.weight.detach() - w0).double())))
    assert logger.value("rank/eff/layer/layers.1.mlp.up_proj", 2) == pytest.approx(direct, rel=1e-4)
    assert logger.value("rank/eff/mean", 0) == 0.0
    # Default subset: evenly spread linears, W0 kept on CPU.
    callback = EffectiveRankMonitor(full_ft_max_layers=3)
    callback.on_fit_start(None, LMModule(model))
    assert len(callback._w0) == 3 and all(w.device.type == "cpu" for w in callback._w0.values())


def test_moment_rank_metrics():
    report = {
        "_moment_eigenvalues": {
            "base_model.model.model.layers.0.self_attn.q_proj": torch.tensor([1.0, 1.0, -1e-12]),
            "base_model.model.model.layers.0.mlp.up_proj": torch.tensor([3.0, 0.0]),
        },
        "other": 1,
    }
    metrics = moment_rank_metrics(report)
    assert metrics["rank/moment/layer/layers.0.self_attn.q_proj"] == pytest.approx(2.0)
    assert metrics["rank/moment/type/up"] == pytest.approx(1.0)
    assert metrics["rank/moment/mean"] == pytest.approx(1.5)
    assert moment_rank_metrics({}) == {} and moment_rank_metrics(None) == {}


# ---------------------------------------------------------------------- loggers
def test_csv_logger_run_has_the_series(tmp_path):
    run_dir = tmp_path / "run"
    callbacks = telemetry()
    with logger_session({"kind": "csv", "project": "astra", "offline": True}, run_dir, "lora-toy-0", "exp",
                        {"method": {"name": "lora"}, "seed": 0}) as (loggers, summary):
        assert isinstance(loggers[0], CSVLogger)
        train, val = lm_loaders()
        make_trainer(tmp_path, callbacks, loggers).fit(LMModule(tiny_lora_model()), train, val)
        summary.update(collect_summary(callbacks))
    metrics_file = run_dir / "csv" / "metrics.csv"
    with open(metrics_file) as handle:
        rows = list(csv.DictReader(handle))
    steps = defaultdict(set)
    for row in rows:
        for key, value in row.items():
            if value not in ("", None):
                steps[key].add(int(row["step"]))
    assert steps["grad/norm"] == set(range(7))
    assert steps["train/lr"] == set(range(7))
    assert steps["grad/type/q"] == {0, 3, 6}
    assert steps["rank/eff/mean"] == {0, 3, 6, 7}
    assert steps["run/tokens_per_s"] == {3, 6, 7}
    assert "train/loss" in steps and "val/loss" in steps
    assert (run_dir / "csv" / "hparams.yaml").read_text().count("lora") >= 1
    assert "final_effective_rank_mean" in (run_dir / "csv" / "summary.json").read_text()


def test_none_logger_and_bad_kind(tmp_path):
    assert build_loggers({"kind": "none", "project": "astra", "offline": True}, tmp_path, "r", "g", {}) == []
    assert build_loggers(None, tmp_path, "r", "g", {}) == []
    with pytest.raises(ValueError):
        build_loggers({"kind": "tensorboard"}, tmp_path, "r", "g", {})


def test_wandb_offline_run_dir_and_finish_on_error(tmp_path, monkeypatch):
    import wandb

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for key in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    finish_calls = []
    real_finish = wandb.finish

    def spy_finish(*args, **kwargs):
        finish_calls.append(kwargs.get("exit_code"))
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(wandb, "finish", spy_finish)
    run_dir = tmp_path / "run"
    config = {"experiment": "marker_exp_group", "seed": 0, "config_marker_key": 17}
    loggers = build_loggers({"kind": "wandb", "project": "astra", "offline": True}, run_dir, "lora-toy-0",
                            "marker_exp_group", config)
    failed = True
    try:
        experiment = loggers[0].experiment
        assert experiment.name == "lora-toy-0" and experiment.group == "marker_exp_group"
        assert experiment.project == "astra" and experiment.config["config_marker_key"] == 17
        assert os.environ["WANDB_DIR"] == str(run_dir.resolve())
        for key in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            assert Path(os.environ[key]).is_relative_to(run_dir.resolve()), key
        callbacks = [GradNormMonitor(flush_every_n_steps=1)]
        train, _ = lm_loaders()
        trainer = make_trainer(tmp_path, callbacks, loggers, limit_val_batches=0)
        trainer.fit(LMModule(tiny_lora_model(), fail_at_step=2), train)
        failed = False
    except RuntimeError as error:
        assert "boom" in str(error)
    finally:
        finish_loggers(loggers, failed=failed, summary={"summary_marker_key": 1.5, **collect_summary(callbacks)})
    assert failed
    assert finish_calls == [1]
    assert wandb.run is None
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = next(runs[0].glob("*.wandb")).read_bytes()
    for marker in (b"summary_marker_key", b"config_marker_key", b"grad/norm", b"marker_exp_group"):
        assert marker in data, marker
    assert list(home.iterdir()) == []  # nothing written to the home folder
    assert "WANDB_DIR" not in os.environ  # restored


# ---------------------------------------------------------------------- conf/callbacks
def test_every_callbacks_yaml_instantiates():
    from hydra.utils import instantiate

    files = sorted(CONF.glob("*.yaml"))
    assert {f.stem for f in files} >= {"default", "none"}
    for path in files:
        first_line = path.read_text().splitlines()[0]
        assert first_line.startswith("# python run.py callbacks="), path
        node = OmegaConf.load(path)
        built = [instantiate(child) for child in node.values()]
        assert all(isinstance(cb, pl.Callback) for cb in built), path
        assert len(instantiate_callbacks(node)) == len(built)
    default = OmegaConf.load(CONF / "default.yaml")
    assert set(default) == {"lr", "loss", "grad_norm", "effective_rank", "run_facts"}
    assert len(OmegaConf.load(CONF / "none.yaml")) == 0
    # `~callbacks.grad_norm` drops one entry.
    del default["grad_norm"]
    assert not any(isinstance(cb, GradNormMonitor) for cb in instantiate_callbacks(default))
    assert [type(cb) for cb in instantiate_callbacks(OmegaConf.load(CONF / "default.yaml"))] == [
        LRMonitor, LossMonitor, GradNormMonitor, EffectiveRankMonitor, RunFactsMonitor,
    ]


def test_callbacks_group_composes_with_the_root_config():
    from hydra import compose, initialize_config_dir

    conf_dir = str(CONF.parent)
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        cfg = compose(config_name="config", overrides=["callbacks=default", "~callbacks.grad_norm",
                                                         "callbacks.effective_rank.every_n_steps=7"])
        callbacks = instantiate_callbacks(cfg.callbacks)
        assert [type(cb) for cb in callbacks] == [LRMonitor, LossMonitor, EffectiveRankMonitor, RunFactsMonitor]
        assert callbacks[2].every_n_steps == 7
        cfg = compose(config_name="config", overrides=["callbacks=none"])
        assert instantiate_callbacks(cfg.callbacks) == []


# ---------------------------------------------------------------------- benchmark script smoke test
def test_telemetry_cost_benchmark_runs(tmp_path):
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "experiments" / "bench" / "telemetry_cost.py"
    spec = importlib.util.spec_from_file_location("telemetry_cost", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "cost.json"
    assert bench.main(["--models", "tiny", "--steps", "6", "--warmup", "2", "--seq-len", "32", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    assert result["model"] == "tiny" and result["n_on"] == 2 and result["n_off"] == 2
    for key in ("median_overhead_pct", "paired_median_overhead_pct", "rank_compute_ms", "estimated_amortised_pct"):
        assert math.isfinite(result[key]), key

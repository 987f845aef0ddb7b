"""The training loop: a short CPU run, exact resumption, the schedule, --init, validation."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from training.checkpointing import load_training_state
from training.data import PreparedCase, PreprocessParams, load_cases
from training.loop import TrainConfig, Trainer, build_model, lr_factor, train

PATCH = 32
PARAMS = PreprocessParams()


@pytest.fixture(scope="module")
def cases(make_ct):
    """Three small prepared cases (two to train on, one to validate) on the 1 mm model grid."""

    class _Source:
        def __init__(self, name, **kw):
            self.name, self.kw = name, kw

        def load(self):
            return make_ct(**self.kw)

    sources = [_Source("a", seed=0), _Source("b", axcodes="LPS", seed=1), _Source("v", axcodes="LAS", seed=2)]
    return load_cases(sources, PARAMS)


def _config(**overrides) -> TrainConfig:
    values = dict(
        preset="tiny",
        out_channels=15,
        patch_size=PATCH,
        batch_size=2,
        steps=20,
        warmup_steps=4,
        val_interval=1000,
        checkpoint_interval=10,
        log_interval=5,
        seed=3,
        preprocess=PARAMS,
        data={"kind": "test"},
    )
    values.update(overrides)
    return TrainConfig(**values)


def _losses(history):
    return [r["loss"] for r in history if "loss" in r]


@pytest.mark.slow
def test_short_cpu_run_trains_and_writes_a_published_format_checkpoint(tmp_path, cases):
    started = time.perf_counter()
    result = train(_config(), cases[:2], [], tmp_path)
    elapsed = time.perf_counter() - started
    losses = _losses(result.history)
    assert result.step == 20 and len(losses) == 20
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5])  # it learns something even in 20 steps
    assert elapsed < 60, f"20 steps took {elapsed:.0f} s"
    # The JSONL log holds one line per step.
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 21))
    assert {"loss", "lr", "seconds"} <= set(lines[0])
    # last.pt is the published format: the network loads its "state_dict" as is.
    state = torch.load(result.last, weights_only=True)
    assert state["step"] == 20 and state["config"]["patch_size"] == PATCH
    build_model(_config()).load_state_dict(state["state_dict"])


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, cases):
    straight = train(_config(), cases[:2], [], tmp_path / "straight")

    # Same config (the schedule runs to step 20), paused after 10 steps.
    first = train(_config(), cases[:2], [], tmp_path / "split", until=10)
    assert first.step == 10
    # Disturb every global generator: resumption must not depend on them being untouched.
    torch.manual_seed(12345)
    state = load_training_state(tmp_path / "split")
    resumed = train(_config(), cases[:2], [], tmp_path / "split", resume_state=state)

    assert resumed.step == 20
    assert _losses(resumed.history) == pytest.approx(_losses(straight.history), abs=1e-6)
    a = torch.load(straight.last, weights_only=True)["state_dict"]
    b = torch.load(resumed.last, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    log_steps = [
        json.loads(line)["step"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    ]
    assert log_steps == list(range(1, 21))


def test_stop_request_saves_and_resume_picks_up(tmp_path, cases):
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] >= 3

    result = Trainer(_config(steps=6), cases[:2], [], tmp_path).run(should_stop=stop_after_three)
    assert result.step == 3
    assert load_training_state(tmp_path)["step"] == 3


def test_resume_trains_with_a_changed_lr_weight_decay_and_length(tmp_path, cases):
    # The optimizer and scheduler state carry the old peak lr and weight decay; a resume that
    # changes them (or stretches --steps) must train with what its config now says.
    first = train(_config(steps=6, lr=1e-3), cases[:2], [], tmp_path, until=3)
    assert first.step == 3
    changed = _config(steps=10, lr=4e-4, weight_decay=0.05)
    trainer = Trainer(changed, cases[:2], [], tmp_path, resume_state=load_training_state(tmp_path))
    record = trainer.train_step()
    expected = 4e-4 * lr_factor(3, warmup_steps=4, total_steps=10)
    assert record["step"] == 4 and record["lr"] == pytest.approx(expected, rel=1e-9)
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.05]
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(4e-4 * lr_factor(4, warmup_steps=4, total_steps=10))


def test_validation_reports_dice_per_label_and_keeps_best(tmp_path, cases):
    result = train(_config(steps=2, val_interval=2), cases[:2], cases[2:], tmp_path)
    validations = [r for r in result.history if "val_dice" in r]
    assert len(validations) == 1 and validations[0]["step"] == 2
    assert set(validations[0]["val_dice"]) >= {"liver", "right_kidney", "left_kidney", "right_adrenal_gland"}
    assert (tmp_path / "best.pt").is_file()
    assert torch.load(tmp_path / "best.pt", weights_only=True)["best"]["step"] == 2


def test_init_loads_published_format_weights(tmp_path):
    from model_export.network import seeded_init

    source = seeded_init(build_model(_config()), seed=7)
    path = tmp_path / "published.pt"
    # As the authors saved them: {"state_dict": ...}, data-parallel "module." prefix included.
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = build_model(_config(init=str(path)))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_schedule_warms_up_linearly_then_follows_a_cosine():
    factors = [lr_factor(s, warmup_steps=10, total_steps=110, min_ratio=0.1) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(b <= a for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[-1] > 0.1 and lr_factor(
        110, warmup_steps=10, total_steps=110, min_ratio=0.1
    ) == pytest.approx(0.1)


def test_config_round_trips_through_a_checkpoint_dict():
    config = _config(flip_axes=(1, 2))
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="multiple of 32"):
        _config(patch_size=48)


def test_prepared_case_type_is_what_the_loop_takes(cases):
    assert all(isinstance(c, PreparedCase) for c in cases)
    assert all(c.image.dtype == torch.float32 and c.labels.dtype == torch.uint8 for c in cases)


def _loss_and_absent_class_gradient(dice: str) -> tuple[float, float]:
    """Loss of a perfect-ish prediction for class 3 and its gradient on an absent class's logits, Dice part only."""
    from training.loop import dice_ce_loss

    torch.manual_seed(0)
    labels = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    labels[:, :, 2:5, 2:5, 2:5] = 3
    logits = torch.full((2, 15, 8, 8, 8), -8.0)
    logits[:, 0] = 8.0
    logits[:, 3][labels[:, 0] == 3] = 16.0
    logits[:, 7] = -3.0  # class 7 is absent, with a small but non-zero probability everywhere
    logits.requires_grad_(True)
    loss_fn = dice_ce_loss(dice)
    loss = loss_fn.dice(logits, labels)
    loss.backward()
    return float(loss.detach()), float(logits.grad[:, 7].abs().max())


def test_batch_dice_leaves_absent_classes_to_the_cross_entropy():
    # Per-patch smoothed Dice scores the absent class ~1 and pushes its probability down hard;
    # batch Dice without numerator smoothing gives it a constant and no gradient of its own.
    sample_loss, sample_grad = _loss_and_absent_class_gradient("sample")
    batch_loss, batch_grad = _loss_and_absent_class_gradient("batch")
    assert sample_grad > 100 * max(batch_grad, 1e-12)
    assert batch_grad < 1e-6
    assert 0.0 < batch_loss <= 1.0 and 0.0 < sample_loss <= 1.0
    with pytest.raises(ValueError, match="dice must be one of"):
        _config(dice="pixel")


def test_bf16_precision_runs_the_network_in_bfloat16_and_keeps_float32_weights(tmp_path, cases):
    from training.precision import unreliable_bf16_convolutions

    trainer = Trainer(_config(steps=2, precision="bf16"), cases[:2], [], tmp_path)
    # Every convolution, as the trainer now runs it, has bf16 gradients that agree with float32:
    # the ones this CPU's kernels get wrong (here: 3x3x3 on a depth of 2 voxels) were pinned.
    assert unreliable_bf16_convolutions(trainer.model, (2, 1, PATCH, PATCH, PATCH)) == {}
    modules = dict(trainer.model.named_modules())
    seen = {}

    def recorder(name):
        def record(module, args, output):
            seen.setdefault(name, output.dtype)

        return record

    for name, module in modules.items():
        if isinstance(module, torch.nn.Conv3d):
            module.register_forward_hook(recorder(name))
    result = trainer.run()
    pinned = set(trainer.float32_convolutions)
    assert {n for n, dtype in seen.items() if dtype == torch.float32} == pinned
    assert sum(dtype == torch.bfloat16 for dtype in seen.values()) > len(seen) / 2
    assert all(math.isfinite(v) for v in _losses(result.history))
    state = torch.load(result.last, weights_only=True)
    assert state["config"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in state["state_dict"].values() if v.is_floating_point())
    build_model(_config()).load_state_dict(state["state_dict"])  # the published keys, pinned or not
    with pytest.raises(ValueError, match="precision must be one of"):
        _config(precision="fp16")


def test_a_non_finite_gradient_stops_the_run_before_it_reaches_the_weights(tmp_path, cases):
    trainer = Trainer(_config(steps=4), cases[:2], [], tmp_path)
    trainer.train_step()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    weight = next(p for n, p in trainer.model.named_parameters() if n.endswith("conv.weight"))
    weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    with pytest.raises(FloatingPointError, match="gradient norm is nan at step 2"):
        trainer.train_step()
    assert trainer.step == 1 and trainer.scheduler.last_epoch == 1
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_class_weights_scale_a_missed_class_gradient_in_the_loss():
    from training.loop import dice_ce_loss

    labels = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    labels[:, :, 2:4, 2:4, 2:4] = 7  # a small organ the network still calls background
    logits = torch.zeros(1, 15, 8, 8, 8)
    logits[:, 0] = 6.0

    def gradient_on_the_organ(class_weights):
        x = logits.clone().requires_grad_(True)
        dice_ce_loss("batch", class_weights, 15)(x, labels).backward()
        return float(x.grad[0, 7][labels[0, 0] == 7].sum())

    plain, weighted = gradient_on_the_organ(None), gradient_on_the_organ({7: 8.0})
    assert plain < 0 and weighted < 3 * plain  # pushes the organ's logits up, several times harder
    with pytest.raises(ValueError, match="class weights: labels must be in 0..14"):
        _config(class_weights={15: 2.0})
    with pytest.raises(ValueError, match="class weights must be > 0"):
        _config(class_weights={7: -1.0})


def test_runs_saved_before_the_dice_option_resume_with_per_patch_dice():
    from argparse import Namespace

    from training.cli import CONFIG_OPTIONS, resolve_config

    saved = _config().to_dict()
    saved.pop("dice")
    saved["data"] = {"kind": "phantoms", "count": 2, "seed_start": 1, "val_count": 1, "val_seed_start": 9}
    nothing_given = Namespace(
        **{name: None for name in CONFIG_OPTIONS}, datalist=None, images=None, labels=None, phantoms=None
    )
    assert resolve_config(nothing_given, saved).dice == "sample"
    assert resolve_config(nothing_given, {**saved, "dice": "batch"}).dice == "batch"


def test_checkpoint_tensors_are_cpu_copies_that_load_strictly(tmp_path, cases):
    trainer = Trainer(_config(steps=2), cases[:2], [], tmp_path)
    trainer.train_step()
    path = trainer.save(tmp_path / "probe.pt")
    state = torch.load(path, weights_only=True)
    assert state["state_dict"].keys() == trainer.model.state_dict().keys()
    build_model(_config()).load_state_dict(state["state_dict"], strict=True)
    moments = [t for s in state["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t)]
    assert moments and all(t.device.type == "cpu" for t in moments)

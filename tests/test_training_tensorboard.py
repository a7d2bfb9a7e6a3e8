"""TensorBoard event files: what the trainer's records become, read back with
tensorboard's own event reader."""

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from agentfast.training.tensorboard import TensorBoardLogger, scalar_tag  # noqa: E402


def read_events(directory):
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


TRAIN = [{"event": "train", "step": s, "epoch": 0, "lr": 1e-4 * s, "loss": 1.0 / s, "action_loss": 0.8 / s,
          "value_loss": 0.25 / s, "grad_norm": 2.0 + s, "timesteps_per_s": 500.0 + s} for s in (1, 10, 20)]
EVAL = {"event": "eval", "step": 20, "val_loss": 0.5, "val_action_loss": 0.4, "val_value_loss": 0.4,
        "val_action_loss_agent1": 0.3, "best_val_loss": 0.5, "improved": True}


def test_records_become_scalars_with_their_steps(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_config({"model_type": "multi_agent", "learning_rate": 3e-4, "betas": [0.9, 0.95]},
                      run_settings={"encoder": "hash|8"})
    for record in TRAIN:
        logger.log(record)
    logger.log(EVAL)
    logger.log({"event": "checkpoint", "step": 20, "path": "x"})  # not a curve
    logger.close()
    events = read_events(tmp_path)
    for tag, field in (("train/loss", "loss"), ("train/action_loss", "action_loss"),
                       ("train/value_loss", "value_loss"), ("optim/learning_rate", "lr"),
                       ("optim/grad_norm", "grad_norm"), ("speed/timesteps_per_s", "timesteps_per_s")):
        assert scalars(events, tag) == [(r["step"], pytest.approx(r[field], rel=1e-6)) for r in TRAIN], tag
    assert scalars(events, "val/loss") == [(20, 0.5)]
    assert scalars(events, "val/action_loss_agent1") == [(20, pytest.approx(0.3))]
    assert scalars(events, "val/best_loss") == [(20, 0.5)]
    assert not any(tag.endswith(("epoch", "improved", "step")) for tag in events.Tags()["scalars"])
    (text,) = events.Tensors("config/text_summary")
    config = text.tensor_proto.string_val[0].decode()
    assert "| model_type | `multi_agent` |" in config and "| betas | `[0.9, 0.95]` |" in config
    assert "**run settings**" in config and "hash\\|8" in config


def test_a_resumed_run_hides_the_steps_it_repeats(tmp_path):
    first = TensorBoardLogger(tmp_path)
    for step in (10, 20, 30):
        first.log({"event": "train", "step": step, "loss": 1.0})
    first.close()
    # Resumed from the checkpoint of step 20 and logging every 20 steps now: step 30 of the
    # interrupted run is no step of the run that went on (its steps never go back, so
    # tensorboard's own out-of-order purge would keep it).
    resumed = TensorBoardLogger(tmp_path, purge_step=21)
    for step in (40, 60):
        resumed.log({"event": "train", "step": step, "loss": 2.0})
    resumed.close()
    assert scalars(read_events(tmp_path), "train/loss") == [(10, 1.0), (20, 1.0), (40, 2.0), (60, 2.0)]


def test_tags():
    assert scalar_tag("train", "option_loss") == "train/option_loss"
    assert scalar_tag("eval", "val_termination_loss") == "val/termination_loss"
    assert scalar_tag("train", "lr") == "optim/learning_rate"
    assert scalar_tag("eval", "improved") is None

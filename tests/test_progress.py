"""Progress bars: a live bar on a terminal, a few plain lines (no carriage returns) elsewhere."""

import io

import pytest

from agentfast import progress
from agentfast.progress import PlainProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_one_line_per_tenth_no_closer_than_min_seconds(clock):
    out = io.StringIO()
    bar = progress_bar(100, desc="train", unit="step", file=out)
    assert isinstance(bar, PlainProgress)
    for _ in range(100):
        clock.now += 1.0  # 10 s per tenth: every tenth is printed
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # nine tenths during the run, then the closing line at 100/100 (the 10th tenth coincides)
    assert [line.split()[2] for line in lines] == [f"{n}/100" for n in range(10, 101, 10)]
    assert lines[-1].startswith("train: 100% 100/100")


def test_fast_work_prints_only_the_closing_line(clock):
    out = io.StringIO()
    with progress_bar(1000, desc="embedding", unit="text", file=out) as bar:
        for _ in range(10):
            clock.now += 0.1
            bar.update(100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "1000/1000" in lines[0] and "text/s" in lines[0]


def test_slow_work_prints_at_least_every_max_seconds_even_without_a_total(clock):
    out = io.StringIO()
    bar = PlainProgress(None, desc="reading", file=out)
    for _ in range(5):
        clock.now += progress.MAX_SECONDS / 2
        bar.update(1)
    assert len(out.getvalue().splitlines()) == 2  # after 2 and 4 updates (60 s apart)
    bar.close()
    bar.close()  # closing twice prints once
    assert out.getvalue().splitlines()[-1].startswith("reading: 5it")


def test_postfix_and_rate_of_a_resumed_run(clock):
    out = io.StringIO()
    bar = progress_bar(600, desc="train", unit="step", initial=300, file=out)
    clock.now += 30
    bar.set_postfix(loss="0.4100")
    bar.update(300)
    bar.close()
    line = out.getvalue().strip()
    # 300 steps done in this run in 30 s: 10 step/s, not 20 (the 300 resumed steps are not counted)
    assert line.startswith("train: 100% 600/600") and "10.00step/s" in line and "loss=0.4100" in line


def test_nothing_done_prints_nothing(clock):
    out = io.StringIO()
    progress_bar(50, desc="train", file=out).close()
    assert out.getvalue() == ""


def test_terminal_gets_tqdms_live_bar():
    from tqdm import tqdm

    out = Terminal()
    with progress_bar(3, desc="train", unit="step", file=out) as bar:
        assert isinstance(bar, tqdm)
        bar.update(3)
    assert "\r" in out.getvalue() and "3/3" in out.getvalue()


def test_encoder_progress_in_a_log_is_plain(capsys):
    from tests.fake_encoders import tiny_encoder

    tiny_encoder().encode([f"text {i}" for i in range(40)], progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("embedding: 100% 40/40")


def test_training_progress_in_a_log_is_plain_and_shows_the_loss(capsys):
    import torch

    from agentfast.training import TrainConfig, Trainer, build_model
    from tests.training_fixtures import TINY_MODEL, tiny_datasets

    train, val = tiny_datasets()
    config = TrainConfig(model=dict(TINY_MODEL), model_type="action", batch_size=4, max_steps=6, eval_every=3,
                         warmup_steps=1, patience=0)
    torch.manual_seed(0)
    model = build_model(config, state_dim=train.state_dim, action_dim=train.action_dim,
                        num_agents=train.num_agents, num_options=train.num_options)
    result = Trainer(model, config, train, val, progress=True).train()
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
    last = captured.err.splitlines()[-1]
    assert last.startswith("train: 100% 6/6") and f"loss={result.last_train_loss:.4f}" in last
    assert "step 6: val loss" in captured.out

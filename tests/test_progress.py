"""Feedback on long loops (mdkstep.progress, issue #25): a bar on a terminal, INFO lines with the
rate and ETA at 0 %, every N seconds and at 100 % without one; the run loop's and the QM pool's
lines."""
from __future__ import annotations

import io
import logging

import pytest

import mdkstep.progress as pg
from mdkstep.utils import LOG


@pytest.fixture
def lines(caplog, monkeypatch):
    """The INFO messages of the mdkstep logger (it does not propagate to caplog by itself)."""
    monkeypatch.delenv("MDKSTEP_PROGRESS_EVERY_S", raising=False)
    pg.set_default_every_s(None)
    LOG.addHandler(caplog.handler)
    old, propagate = LOG.level, LOG.propagate
    LOG.setLevel(logging.INFO)
    LOG.propagate = False  # caplog's root handler would see every record twice
    try:
        yield lambda: [r.getMessage() for r in caplog.records if r.name == LOG.name]
    finally:
        LOG.removeHandler(caplog.handler)
        LOG.setLevel(old)
        LOG.propagate = propagate
        pg.set_default_every_s(None)


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(pg, "_now", c)
    return c


@pytest.fixture
def no_terminal(monkeypatch):
    monkeypatch.setattr(pg.sys, "stderr", io.StringIO())  # not a TTY


def test_log_lines_without_a_terminal(lines, clock, no_terminal):
    """8000 steps at 4 step/s, one update per step: a line at 0 %, every 30 s, and at 100 %."""
    with pg.Progress(8000, "train", "step") as bar:
        assert bar.mode == "log"
        for i in range(8000):
            clock.t += 0.25
            if i == 1199:
                bar.set_postfix(loss=0.01234567)
            bar.update(1)
    out = lines()
    assert out[0] == "train: step 0/8000 (0 %)"
    assert out[1] == "train: step 120/8000 (1 %), 4 step/s, elapsed 0:30, ETA 32:50"
    assert out[2] == "train: step 240/8000 (3 %), 4 step/s, elapsed 1:00, ETA 32:20"
    assert "train: step 1200/8000 (15 %), 4 step/s, elapsed 5:00, ETA 28:20, loss 0.01235" in out
    assert out[-1] == "train: step 8000/8000 (100 %), 4 step/s, elapsed 33:20, loss 0.01235"
    assert len(out) == 1 + 2000 // 30 + 1  # 0 %, one per 30 s, 100 %
    gaps = [int(a.split()[2].split("/")[0]) for a in out]
    assert gaps == sorted(gaps)


def test_slow_units_and_a_resume(lines, clock, no_terminal):
    """Below one unit per second the rate reads s/unit; a resume counts the rate from where it resumed."""
    bar = pg.Progress(10, "QM pool", "traj", initial=4, progress=False, every_s=60)
    for _ in range(6):
        clock.t += 90.0
        bar.update(1)
    bar.close()
    out = lines()
    assert out[0] == "QM pool: traj 4/10 (40 %)"
    assert out[1] == "QM pool: traj 5/10 (50 %), 90 s/traj, elapsed 1:30, ETA 7:30"
    assert out[-1] == "QM pool: traj 10/10 (100 %), 90 s/traj, elapsed 9:00"
    assert len(out) == 7


def test_every_s_from_the_environment_and_silence(lines, clock, no_terminal, monkeypatch):
    monkeypatch.setenv("MDKSTEP_PROGRESS_EVERY_S", "0")
    with pg.Progress(3, "run", "frame", progress=False) as bar:
        for _ in range(3):
            clock.t += 1.0
            bar.update(1)
    assert lines() == ["run: frame 0/3 (0 %)", "run: frame 1/3 (33 %), 1 frame/s, elapsed 0:01, ETA 0:02",
                       "run: frame 2/3 (66 %), 1 frame/s, elapsed 0:02, ETA 0:01",
                       "run: frame 3/3 (100 %), 1 frame/s, elapsed 0:03"]
    n = len(lines())
    with pg.Progress(3, "quiet", progress=None) as bar:  # None: the caller asks for silence
        bar.update(3)
    with pg.Progress(3, "finished", initial=3, progress=False) as bar:  # nothing left to do (a finished run resumed)
        bar.update(0)
    assert len(lines()) == n
    monkeypatch.setenv("MDKSTEP_PROGRESS_EVERY_S", "soon")
    assert pg.default_every_s() == pg.DEFAULT_EVERY_S


def test_an_exception_skips_the_last_line(lines, clock, no_terminal):
    with pytest.raises(KeyboardInterrupt):
        with pg.Progress(100, "run", "frame") as bar:
            clock.t += 1.0
            bar.update(10)
            raise KeyboardInterrupt
    assert lines() == ["run: frame 0/100 (0 %)"]
    bar = pg.Progress(100, "run", "frame")
    bar.update(10)
    bar.close()  # a loop that ended early says where it stopped
    assert lines()[-1].startswith("run: frame 10/100 (10 %)")


def test_modes(monkeypatch, lines):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(pg.sys, "stderr", io.StringIO())
    assert [pg.resolve_mode(p) for p in (True, "auto", False, "log", None, "off", "bar")] == \
        ["log", "log", "log", "log", "off", "off", "bar"]
    tty = Tty()
    monkeypatch.setattr(pg.sys, "stderr", tty)
    assert pg.resolve_mode(True) == "bar" and pg.resolve_mode(False) == "log"
    with pg.Progress(5, "train", "step") as bar:  # a tqdm bar on the terminal, no log lines
        bar.set_postfix(loss=0.5)
        bar.update(5)
    assert "5/5" in tty.getvalue() and "loss=0.5" in tty.getvalue() and lines() == []
    with pytest.raises(ValueError, match="progress='yes'"):
        pg.resolve_mode("yes")


def test_durations():
    assert [pg.format_duration(s) for s in (0, 59.4, 387, 3600, 3725, float("inf"), -1)] == \
        ["0:00", "0:59", "6:27", "1:00:00", "1:02:05", "?", "?"]
    assert [pg.format_rate(r, "step") for r in (3.14159, 1480.4, 0.25, 1 / 2500.0)] == \
        ["3.14 step/s", "1480 step/s", "4 s/step", "2500 s/step"]


def test_run_loop_logs_frames_without_a_terminal(lines, tmp_path, no_terminal, monkeypatch):
    """The chunked run loop (01/01b/01c/06/06b) with progress=False: lines that name the output."""
    from helpers import HarmonicLattice, Oracle, cfg, run, start

    monkeypatch.setenv("MDKSTEP_PROGRESS_EVERY_S", "0")
    c = cfg(corrector="kick", ensemble="nvt", thermostat="csvr", tau_ps=0.01, chunk_frames=5)
    x0, v0 = start(1)
    eng = HarmonicLattice()
    run(tmp_path, eng, Oracle(eng, c.cycle_ps), c, x0, v0, 20, seed=3)
    out = [ln for ln in lines() if "[h.npz]" in ln]
    assert out[0].endswith("cycle 0/20 (0 %)") and out[0].startswith("hybrid k=")
    assert any("ETA" in ln for ln in out) and out[-1].split(": ", 1)[1].startswith("cycle 20/20 (100 %)")


def test_qm_pool_one_after_the_other_logs_trajectories(lines, clock, no_terminal, monkeypatch):
    import mdkstep.baselines.pool as pool

    monkeypatch.setattr(pool, "run_job", lambda job: clock.__setattr__("t", clock.t + 40.0) or {"job": job})
    monkeypatch.setattr(pool, "limit_threads", lambda n: __import__("contextlib").nullcontext())

    class Cfg:
        engine = "xtb"

    jobs = [pool.QMJob(None, None, Cfg()) for _ in range(3)]
    assert len(list(pool.run_jobs(jobs, num_workers=1))) == 3
    assert lines() == ["QM trajectories: traj 0/3 (0 %)",
                       "QM trajectories: traj 1/3 (33 %), 40 s/traj, elapsed 0:40, ETA 1:20",
                       "QM trajectories: traj 2/3 (66 %), 40 s/traj, elapsed 1:20, ETA 0:40",
                       "QM trajectories: traj 3/3 (100 %), 40 s/traj, elapsed 2:00"]

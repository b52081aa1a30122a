"""Threads from the CPUs actually free: the measurement counts other processes' CPU time, not this one's."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from llm_recipes.runtime.threads import CpuShare, ThreadGovernor, choose, free_cpus, usable_cpus


def test_choose_rounds_free_cpus_to_threads():
    assert choose(0.0) == 1 and choose(0.6) == 1 and choose(0.8) == 1 and choose(1.8) == 2
    assert choose(7.9, limit=2) == 2


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_own_work_is_not_contention_but_another_process_is():
    share = CpuShare()
    _burn(0.4)  # this process keeps a CPU busy: still free for it
    own = share.sample()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        share.sample()
        time.sleep(0.6)
        with_hog = share.sample()
    finally:
        hog.kill()
        hog.wait()
    # a busy neighbour takes about one CPU away; our own busy loop took none (other load on the machine
    # shifts both numbers alike, so compare them, with slack for it)
    assert own is not None and with_hog is not None
    assert with_hog <= own - 0.3, (own, with_hog)
    assert 0 <= free_cpus(0.05) <= usable_cpus()


def test_governor_sets_threads_and_a_fixed_setting_wins():
    import torch

    before = torch.get_num_threads()
    said = []
    try:
        governor = ThreadGovernor("stage", said.append)
        assert torch.get_num_threads() == choose(governor.samples[0]) and "CPUs free at start" in said[0]
        governor.recheck()
        assert governor.summary()["cpus"] == usable_cpus()
        fixed = ThreadGovernor("stage", said.append, fixed=1)
        assert torch.get_num_threads() == 1 and fixed.summary() == {} and not fixed.busy()
        assert "torch_num_threads" in said[-1]
    finally:
        torch.set_num_threads(before)

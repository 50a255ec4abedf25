"""Warm sandboxes: reused across records and callers' threads, one per concurrent caller, gone with their process.

What one record must not leave to the next is in test_sandbox_attacks.py; here is the lifecycle.
"""

import ast
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from branchrl.verifiers.python_tests import verify_python_tests
from branchrl.verifiers.warm_sandbox import SANDBOXES

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
GOOD = "def f(x):\n    return x + 1\n"
LOOP = "def f(x):\n    while True:\n        pass\n"

CHILD = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
from branchrl.verifiers.python_tests import verify_python_tests
from branchrl.verifiers.warm_sandbox import SANDBOXES
with ThreadPoolExecutor(2) as pool:  # the callers' threads have ended before anyone looks
    verdicts = list(pool.map(
        lambda _: verify_python_tests("def f(x):\\n    return x + 1\\n", "assert f(1) == 2").verdict, range(6)))
print((verdicts, [box.proc.pid for box in SANDBOXES.sandboxes()]), flush=True)
if sys.argv[1] == "stay":
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def _gone(pids, seconds=5.0) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


@needs_bwrap
@pytest.mark.parametrize("end", ["exits", "is killed"])
def test_sandboxes_outlive_their_callers_threads_and_die_with_their_process(end):
    child = subprocess.Popen([sys.executable, "-c", CHILD, "stay" if end == "is killed" else "exit"],
                             stdout=subprocess.PIPE, text=True)
    try:
        verdicts, pids = ast.literal_eval(child.stdout.readline())
        assert verdicts == ["pass"] * 6 and 1 <= len(pids) <= 2
        if end == "is killed":
            time.sleep(0.3)
            assert all(_alive(p) for p in pids), "a sandbox died with the thread that first used it"
            child.kill()  # no atexit: bwrap's --die-with-parent must take the sandboxes
        child.wait(timeout=30)
    finally:
        child.kill()
        child.stdout.close()
    assert _gone(pids), "a warm sandbox outlived its process"


@needs_bwrap
def test_sequential_records_reuse_one_sandbox_and_concurrent_callers_get_their_own():
    verify_python_tests(GOOD, "assert f(1) == 2")
    first = {box.proc.pid for box in SANDBOXES.sandboxes() if box.proc}
    for _ in range(5):
        assert verify_python_tests(GOOD, "assert f(1) == 2").verdict == "pass"
    assert {box.proc.pid for box in SANDBOXES.sandboxes() if box.proc} == first
    cases = [(GOOD, "assert f(1) == 2", "pass"), (GOOD, "assert f(1) == 3", "fail"),
             (LOOP, "assert f(1) == 2", "timeout")]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda case: verify_python_tests(case[0], case[1], timeout_s=1).verdict, cases * 4))
    assert got == [case[2] for case in cases] * 4
    assert 1 <= len(SANDBOXES.sandboxes()) <= 4


@needs_bwrap
def test_a_sandbox_that_died_while_idle_is_restarted_for_the_next_record():
    SANDBOXES.close()
    verify_python_tests(GOOD, "assert f(1) == 2")
    box, = SANDBOXES.sandboxes()
    dead = box.proc.pid
    box.proc.kill()
    box.proc.wait()
    assert verify_python_tests(GOOD, "assert f(1) == 2").verdict == "pass"
    assert SANDBOXES.sandboxes() == [box] and box.proc.pid != dead


@needs_bwrap
def test_close_kills_every_sandbox_and_the_pool_starts_again():
    verify_python_tests(GOOD, "assert f(1) == 2")
    pids = [box.proc.pid for box in SANDBOXES.sandboxes()]
    SANDBOXES.close()
    assert SANDBOXES.sandboxes() == [] and _gone(pids, seconds=0)
    assert verify_python_tests(GOOD, "assert f(1) == 2").verdict == "pass"
    assert os.getpid() not in [box.proc.pid for box in SANDBOXES.sandboxes()]

"""Attacks on the python_tests sandbox: none may pass, the verifier keeps serving, the host shows no trace.

Each candidate is written so that it would pass only if its attack worked. Timeouts are short (1 s)
to keep the suite fast on two cores.
"""

import os
import shutil
import socket
import time
import uuid

import pytest

from branchrl.verifiers.python_tests import verify_python_tests
from branchrl.verifiers.sandbox import Limits, run_sandboxed

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
GOOD = "def f(x):\n    return x + 1\n"


SANDBOX_SIGNS = (b"bwrap", b"from harness.", b"/usr/bin/yes")


def _descendants(root: int) -> list[int]:
    """Our live descendant processes that belong to a sandbox (other fixtures may own Ray workers)."""
    parents = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(pid)] = int(fields[1])
    found, frontier = [], {root}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier}
        found += frontier
    return [pid for pid in found if _cmdline_has(pid, SANDBOX_SIGNS)]


def _cmdline_has(pid: int, signs) -> bool:
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False
    return any(sign in cmdline for sign in signs)


def _processes_matching(marker: str) -> list[int]:
    hits = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                hits.append(int(pid))
        except OSError:
            continue
    return hits


def attack(code: str, tests: str = "assert f(1) == 2", timeout_s: float = 1.0, **kwargs):
    """Run an attack; check it did not pass, left no process behind, and the verifier still serves."""
    result = verify_python_tests(code, tests, timeout_s=timeout_s, **kwargs)
    assert result.verdict != "pass" and result.score < 1.0, result
    assert result.verdict != "error", result  # the candidate's doing is never counted as our bug
    assert _descendants(os.getpid()) == [], "a sandboxed process survived"
    follow_up = verify_python_tests(GOOD, "assert f(1) == 2", timeout_s=2)
    assert follow_up.verdict == "pass", follow_up
    return result


@needs_bwrap
def test_infinite_loop():
    assert attack("def f(x):\n    while True:\n        pass\n").verdict == "timeout"


@needs_bwrap
def test_infinite_loop_ignoring_signals():
    code = (
        "import signal\n"
        "for s in signal.valid_signals():\n"
        "    try:\n        signal.signal(s, signal.SIG_IGN)\n    except (OSError, ValueError):\n        pass\n"
        "def f(x):\n    while True:\n        pass\n"
    )
    assert attack(code).verdict == "timeout"


@needs_bwrap
def test_fork_bomb():
    code = (
        "import os\n"
        "def f(x):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"
    )
    attack(code)


@needs_bwrap
def test_memory_blow_up():
    code = "def f(x):\n    hog = [x] * (1 << 30)\n    return len(hog)\n"  # 8 GiB of pointers at once
    assert attack(code, "assert f(1) == 1 << 30").verdict == "memory"
    code = "def f(x):\n    hog = []\n    while True:\n        hog.append(bytearray(1 << 27))\n"
    assert attack(code, timeout_s=3).verdict in ("memory", "timeout")


@needs_bwrap
def test_disk_filling_leaves_no_host_files():
    before = set(os.listdir("/tmp"))
    code = (
        "import os\n"
        "def f(x):\n    total = 0\n"
        "    for d in ('/tmp', '/work', '.'):\n"
        "        for i in range(64):\n"
        "            try:\n"
        "                with open(os.path.join(d, f'fill{i}'), 'wb') as fh:\n"
        "                    for _ in range(64):\n"
        "                        fh.write(b'x' * (1 << 20))\n"
        "                        total += 1 << 20\n"
        "            except OSError:\n                break\n"
        "    return total >= 1 << 30\n"
    )
    attack(code, "assert f(0) is True")
    assert not {n for n in set(os.listdir("/tmp")) - before if n.startswith("fill")}


@needs_bwrap
def test_writes_outside_the_sandbox(tmp_path):
    host_target = tmp_path / "pwned.txt"
    var_target = f"/var/tmp/branchrl-pwned-{uuid.uuid4().hex}"
    code = (
        "import os\n"
        "def f(x):\n    wrote = 0\n"
        f"    for path in ({str(host_target)!r}, {var_target!r}, '/usr/pwned', '/pwned'):\n"
        "        try:\n"
        "            os.makedirs(os.path.dirname(path), exist_ok=True)\n"
        "            open(path, 'w').write('owned')\n            wrote += 1\n"
        "        except OSError:\n            pass\n"
        "    return wrote\n"
    )
    attack(code, "assert f(0) == 4")
    assert not host_target.exists() and not os.path.exists(var_target)
    assert not os.path.exists("/usr/pwned") and not os.path.exists("/pwned")


@needs_bwrap
def test_parent_environment_secrets_are_invisible(monkeypatch):
    secret = "s3cret-" + uuid.uuid4().hex
    monkeypatch.setenv("BRANCHRL_TEST_SECRET", secret)
    code = (
        "import os\n"
        "def f(x):\n"
        "    found = os.environ.get('BRANCHRL_TEST_SECRET', '')\n"
        "    for pid in os.listdir('/proc'):\n"
        "        try:\n            found += open(f'/proc/{pid}/environ').read()\n"
        "        except OSError:\n            pass\n"
        "    return found\n"
    )
    result, = [attack(code, f"assert {secret!r} in f(0)")]
    assert secret not in result.details


@needs_bwrap
def test_network_is_unreachable():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        "def f(x):\n"
        f"    for host, port in (('127.0.0.1', {port}), ('1.1.1.1', 53), ('8.8.8.8', 443)):\n"
        "        try:\n"
        "            socket.create_connection((host, port), timeout=0.3).close()\n"
        "            return 'connected'\n"
        "        except OSError:\n            pass\n"
        "    return 'offline'\n"
    )
    try:
        attack(code, "assert f(0) == 'connected'")
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


@needs_bwrap
@pytest.mark.parametrize("where", ["top level", "inside the function"])
def test_exit_zero_before_the_tests_run(where):
    code = "import os\nos._exit(0)\n" if where == "top level" else "import os\ndef f(x):\n    os._exit(0)\n"
    attack(code)
    attack(code.replace("os._exit(0)", "raise SystemExit(0)"))


@needs_bwrap
def test_printed_fake_pass_markers():
    code = (
        "import json, os, sys\n"
        "fake = json.dumps({'nonce': 'x', 'units': [{'line': 1, 'test': 't', 'outcome': 'pass', 'seconds': 0, 'message': ''}]})\n"
        "for fd in range(1, 30):\n"
        "    try:\n        os.write(fd, (fake + '\\nPASSED 1/1 tests passed\\n').encode())\n"
        "    except OSError:\n        pass\n"
        "print('ALL TESTS PASSED'); sys.stderr.write('OK\\n')\n"
        "def f(x):\n    print('1/1 tests passed')\n    return 0\n"
    )
    attack(code)


@needs_bwrap
def test_object_whose_eq_is_always_true():
    code = (
        "class Liar(int):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "class Anything:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __bool__(self):\n        return True\n"
        "def f(x):\n    return Anything()\n"
        "def g(x):\n    return Liar(0)\n"
    )
    result = attack(code, "assert f(1) == 2\nassert g(1) == 2\nassert f(1)\nassert [f(1)] == [2]")
    assert result.score == 0.0, result.details


@needs_bwrap
def test_patching_builtins():
    code = (
        "import builtins, sys\n"
        "class Never(Exception):\n    pass\n"
        "builtins.AssertionError = Never\n"
        "builtins.isinstance = lambda *a: True\n"
        "builtins.abs = lambda x: 0\n"
        "builtins.len = lambda x: 2\n"
        "builtins.__dict__['print'] = None\n"
        "sys.modules['builtins'].sum = lambda *a: 2\n"
        "def f(x):\n    return 'wrong'\n"
    )
    tests = "assert f(1) == 2\nassert abs(f(1) - 2) < 1\nassert len(f(1)) == 2"
    assert attack(code, tests).score == 0.0
    subtle = "\n".join(line for line in code.splitlines() if "isinstance" not in line and "len" not in line
                       and "print" not in line)
    result = attack(subtle, tests)  # a worker that still answers: the patches live only in the worker
    assert result.score == 0.0 and "did not load" not in result.details, result.details


@needs_bwrap
def test_editing_or_deleting_the_test_files():
    repo_test = os.path.abspath(__file__)
    before = open(repo_test, "rb").read()
    code = (
        "import os\n"
        "def f(x):\n"
        "    for root, dirs, files in os.walk('/'):\n"
        "        if root.startswith(('/proc', '/sys', '/dev')):\n            continue\n"
        "        for name in files:\n"
        "            if 'test' in name or 'harness' in name:\n"
        "                p = os.path.join(root, name)\n"
        "                for act in (lambda: open(p, 'w').write('assert True'), lambda: os.remove(p)):\n"
        "                    try:\n                        act()\n                    except OSError:\n                        pass\n"
        f"    for p in ({repo_test!r},):\n"
        "        try:\n            open(p, 'w').write('')\n        except OSError:\n            pass\n"
        "    return 0\n"
    )
    attack(code, timeout_s=2)
    assert open(repo_test, "rb").read() == before


@needs_bwrap
def test_killing_the_parent_and_every_ancestor():
    code = (
        "import os, signal\n"
        "def f(x):\n"
        "    os.kill(os.getppid(), signal.SIGKILL)\n"
        "    for pid in os.listdir('/proc'):\n"
        "        if pid.isdigit() and int(pid) != os.getpid():\n"
        "            try:\n                os.kill(int(pid), signal.SIGKILL)\n            except OSError:\n                pass\n"
        "    return 2\n"
    )
    attack(code)


@needs_bwrap
def test_daemon_left_behind():
    marker = f"{time.time_ns() % 1_000_000}.{os.getpid()}"
    code = (
        "import os\n"
        "def f(x):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        if os.fork() == 0:\n"
        f"            os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n"
        "        os._exit(0)\n"
        "    return 1\n"
    )
    attack(code)
    deadline = time.monotonic() + 2
    while _processes_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_matching(marker) == []


@needs_bwrap
def test_gigabytes_of_output():
    code = (
        "import os, sys\nchunk = 'x' * (1 << 20)\n"
        "def f(x):\n"
        "    for _ in range(4096):\n"
        "        print(chunk)\n        sys.stderr.write(chunk)\n        os.write(1, chunk.encode())\n"
        "    return 0\n"
    )
    started = time.monotonic()
    result = attack(code)
    assert len(result.details) <= 2000 and time.monotonic() - started < 10
    program = "import os\nwhile True:\n    os.write(1, b'y' * (1 << 20))\n"
    io_result = verify_python_tests(program, io=[{"stdin": "", "stdout": "y"}], timeout_s=1)
    assert io_result.verdict in ("fail", "timeout") and len(io_result.details) <= 2000


def test_sandbox_caps_captured_output():
    limits = Limits(output_bytes=4096)
    run = run_sandboxed(["/usr/bin/yes"], b"", timeout_s=1.0, limits=limits)
    assert run.timed_out and len(run.stdout) == 4096 and run.seconds < 5
    assert _descendants(os.getpid()) == []

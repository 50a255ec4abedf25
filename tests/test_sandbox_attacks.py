"""Attacks on the python_tests sandbox: none may pass, the verifier keeps serving, the host shows no trace.

Each candidate is written so that it would pass only if its attack worked. Timeouts are short (1 s)
to keep the suite fast on two cores.
"""

import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from branchrl.verifiers.python_tests import verify_python_tests
from branchrl.verifiers.sandbox import read_capped
from branchrl.verifiers.warm_sandbox import SANDBOXES

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
GOOD = "def f(x):\n    return x + 1\n"


SANDBOX_SIGNS = (b"bwrap", b"from harness.")  # in the command line of every sandbox process
FORKSERVER_SIGN = b"from harness.forkserver"


def _process_table() -> dict[int, tuple[int, bytes]]:
    """{pid: (parent pid, command line)} of every live (not zombie) process."""
    table = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z":
            table[int(pid)] = (int(fields[1]), cmdline)
    return table


def _below(root: int, table) -> list[int]:
    found, frontier = [], {root}
    while frontier:
        frontier = {p for p, (parent, _) in table.items() if parent in frontier}
        found += frontier
    return found


def _leftovers(root: int) -> list[int]:
    """Sandbox processes below `root` that must not exist between records: anything below a warm
    sandbox's forkserver (a harness, candidate processes, daemons), or a sandbox the pool does not hold."""
    table = _process_table()
    ours = _below(root, table)

    def sandboxed(pid):
        return any(sign in table.get(pid, (0, b""))[1] for sign in SANDBOX_SIGNS)

    def forkserver_like(pid):  # the forkserver or a fork of it (bwrap's own command line names it too)
        cmdline = table.get(pid, (0, b""))[1]
        return FORKSERVER_SIGN in cmdline and not cmdline.split(b"\0")[0].endswith(b"bwrap")

    forkservers = [p for p in ours if forkserver_like(p) and not forkserver_like(table[p][0])]
    held = {box.proc.pid for box in SANDBOXES.sandboxes() if box.proc is not None}
    unheld = [p for p in ours if sandboxed(p) and not sandboxed(table[p][0]) and p not in held]
    return [p for f in forkservers for p in _below(f, table)] + unheld


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
    assert _leftovers(os.getpid()) == [], "a sandboxed process survived its record"
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


def test_captured_output_is_capped_and_the_rest_drained():
    yes = subprocess.Popen(["/usr/bin/yes"], stdout=subprocess.PIPE)
    stdin_r, stdin_w = os.pipe()
    started = time.monotonic()
    try:
        out, timed_out = read_capped(stdin_w, b"", {"stdout": (yes.stdout.fileno(), 4096)}, started + 1.0)
    finally:
        yes.kill()
        yes.wait()
        yes.stdout.close()
        os.close(stdin_r)
    assert timed_out and out["stdout"] == (b"y\n" * 2048, True) and time.monotonic() - started < 5


# ------------------------------------------------------------------ warm reuse: records do not leak
def _served_by() -> set[int]:
    """The host pids of the warm sandboxes held now (the same set twice means the same sandbox served)."""
    return {box.proc.pid for box in SANDBOXES.sandboxes() if box.proc is not None}


def _twice(first: str, second: str, second_tests: str, first_tests: str = "assert f(0) == 0", timeout_s: float = 2):
    """Record 1 then record 2 on the same warm sandbox; record 2's result."""
    verify_python_tests(GOOD, "assert f(1) == 2")  # make sure a sandbox is up
    before = _served_by()
    first_result = verify_python_tests(first, first_tests, timeout_s=timeout_s)
    assert first_result.verdict != "error", first_result
    assert _served_by() == before, "record 1 should have run in the warm sandbox and left it up"
    result = verify_python_tests(second, second_tests, timeout_s=timeout_s)
    assert _served_by() == before and _leftovers(os.getpid()) == []
    return result


@needs_bwrap
def test_files_one_record_writes_are_gone_for_the_next():
    first = (
        "import os\n"
        "def f(x):\n"
        "    for d in ('/tmp', '/work', '/dev/shm', '.'):\n"
        "        os.makedirs(d + '/nest/deeper', exist_ok=True)\n"
        "        open(d + '/nest/deeper/planted', 'w').write('x')\n"
        "        open(d + '/planted', 'w').write('x')\n"
        "        os.chmod(d + '/nest', 0)\n"
        "    open('/dev/mqueue/planted', 'w').close()\n"
        "    try:\n"
        "        with open('/tmp/fill', 'wb') as fh:\n"
        "            while True:\n                fh.write(b'x' * (1 << 20))\n"
        "    except OSError:\n        pass\n"
        "    os.chmod('/tmp', 0)\n"
        "    return 0\n"
    )
    second = (
        "import os\n"
        "def f(x):\n"
        "    found = {d: sorted(os.listdir(d)) for d in ('/tmp', '/work', '/dev/shm', '/dev/mqueue')}\n"
        "    open('/tmp/big', 'wb').write(b'y' * (8 << 20))  # the space of record 1's file is free again\n"
        "    return found, os.getcwd(), os.path.getsize('/tmp/big')\n"
    )
    expected = ({"/tmp": [], "/work": [], "/dev/shm": [], "/dev/mqueue": []}, "/work", 8 << 20)
    result = _twice(first, second, f"assert f(0) == {expected!r}")
    assert result.verdict == "pass", result.details


@needs_bwrap
def test_processes_one_record_starts_are_gone_for_the_next():
    first = (
        "import os, signal, time\n"
        "def f(x):\n"
        "    for _ in range(3):\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"
        "            if os.fork() == 0:\n"
        "                for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):\n"
        "                    signal.signal(s, signal.SIG_IGN)\n"
        "                while True:\n"
        "                    open('/tmp/beacon', 'a').write('.')\n"
        "                    time.sleep(0.01)\n"
        "            os._exit(0)\n"
        "    if os.fork() == 0:\n"
        "        os.execv('/usr/bin/sleep', ['sleep', '1000'])\n"
        "    time.sleep(0.1)\n"
        "    return 0\n"
    )
    second = (
        "import os, time\n"
        "def f(x):\n"
        "    time.sleep(0.1)\n"
        "    pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "    sleeping = [p for p in pids if b'sleep' in open(f'/proc/{p}/cmdline', 'rb').read()]\n"
        "    return len(pids), sleeping, os.path.exists('/tmp/beacon')\n"
    )
    # bwrap's init, the forkserver, the harness and this worker: nothing else
    result = _twice(first, second, "assert f(0) == (4, [], False)")
    assert result.verdict == "pass", result.details


@needs_bwrap
def test_monkeypatching_in_one_record_does_not_reach_the_next():
    first = (
        "import builtins, collections, json, math, os, random, sys, typing\n"
        "builtins.len = lambda x: 2\n"
        "builtins.abs = lambda x: 0\n"
        "json.loads = lambda s: 'patched'\n"
        "math.sqrt = lambda x: 0\n"
        "typing.List = None\n"
        "collections.Counter = dict\n"
        "sys.modules['os'].getcwd = lambda: '/patched'\n"
        "os.environ['PLANTED'] = '1'\n"
        "sys.path.insert(0, '/tmp')\n"
        "random.seed(0)\n"
        "def f(x):\n    return 0\n"
    )
    second = (
        "import collections, json, math, os, random, sys, typing\n"
        "def f(x):\n"
        "    return [len([1, 2, 3]), abs(-5), json.loads('[1]'), math.sqrt(16), typing.List is None,\n"
        "            collections.Counter('aa')['a'], os.getcwd(), os.environ.get('PLANTED'), '/tmp' in sys.path]\n"
        "def r(x):\n"
        "    return random.random()\n"
    )
    result = _twice(first, second, "assert f(0) == [3, 5, [1], 4.0, False, 2, '/work', None, False]")
    assert result.verdict == "pass", result.details
    seeded = __import__("random").Random(0).random()
    assert verify_python_tests(second, f"assert r(0) == {seeded!r}").verdict == "fail"  # not replayed


@needs_bwrap
def test_ipc_objects_one_record_creates_are_gone_for_the_next():
    first = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def f(x):\n"
        "    made = [libc.shmget(4242, 1 << 20, 0o1600), libc.msgget(4242, 0o1600), libc.semget(4242, 1, 0o1600)]\n"
        "    assert min(made) >= 0, made\n"
        "    return 0\n"
    )
    second = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def f(x):\n"
        "    left = [libc.shmget(4242, 0, 0), libc.msgget(4242, 0), libc.semget(4242, 0, 0)]\n"
        "    listed = [len(open(f'/proc/sysvipc/{k}').readlines()) - 1 for k in ('shm', 'msg', 'sem')]\n"
        "    return left, listed\n"
    )
    result = _twice(first, second, "assert f(0) == ([-1, -1, -1], [0, 0, 0])")
    assert result.verdict == "pass", result.details


@needs_bwrap
def test_a_record_cannot_find_an_earlier_records_tests_in_its_memory():
    secret = "SECRET-" + uuid.uuid4().hex
    scan = (  # every writable mapping of the worker (heap, anonymous memory) read directly
        "import ctypes, re\n"
        "PLANTED = 'SECRET-' + 'cd' * 16  # made at run time: proves the scan sees this process's memory\n"
        "def f(x):\n"
        "    found = set()\n"
        "    for line in open('/proc/self/maps').read().splitlines():\n"
        "        span, perms = line.split()[:2]\n"
        "        if perms.startswith('rw'):\n"
        "            lo, hi = (int(v, 16) for v in span.split('-'))\n"
        "            found.update(m.decode() for m in re.findall(rb'SECRET-[0-9a-f]{32}', ctypes.string_at(lo, hi - lo)))\n"
        "    return sorted(found)\n"
    )
    first_tests = f"assert f(0) == {secret!r}"
    result = _twice(scan, scan, f"assert {'SECRET-' + 'cd' * 16!r} in f(0)\nassert {secret!r} in f(0)",
                    first_tests=first_tests, timeout_s=5)
    assert result.score == 0.5, result.details  # the planted value is found, record 1's expected value is not


@needs_bwrap
@pytest.mark.parametrize("target", ["the forkserver", "every process"])
def test_a_stopped_sandbox_is_replaced_and_the_record_is_not_a_pass(target):
    code = (
        "import os, signal\n"
        "def f(x):\n"
        "    pids = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid())]\n"
        "    parent = {p: int(open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1]) for p in pids}\n"
        f"    targets = [p for p in pids if parent[p] == 1] if {target == 'the forkserver'} else pids\n"
        "    for pid in targets:\n"
        "        try:\n            os.kill(pid, signal.SIGSTOP)\n        except OSError:\n            pass\n"
        "    return 2\n"
    )
    before = _served_by()
    result = attack(code, "assert f(1) == 3")
    assert _served_by().isdisjoint(before), "a sandbox that did not answer in time must be replaced"
    assert result.verdict in ("fail", "timeout"), result


@needs_bwrap
def test_a_killed_forkserver_is_replaced_and_the_record_fails():
    code = (
        "import os, signal\n"
        "def f(x):\n"
        "    for pid in os.listdir('/proc'):\n"
        "        if pid.isdigit() and int(pid) != os.getpid():\n"
        "            try:\n                os.kill(int(pid), signal.SIGKILL)\n            except OSError:\n                pass\n"
        "    return 2\n"
    )
    verify_python_tests(GOOD, "assert f(1) == 2")
    before = _served_by()
    result = attack(code)
    assert result.verdict == "fail" and "signal 9" in result.details, result
    assert _served_by().isdisjoint(before)


@needs_bwrap
def test_an_interrupt_sent_to_the_forkserver_is_not_counted_as_our_error():
    code = (
        "import os, signal\n"
        "def f(x):\n"
        "    for pid in os.listdir('/proc'):\n"
        "        if pid.isdigit() and int(pid) != os.getpid():\n"
        "            try:\n                os.kill(int(pid), signal.SIGINT)\n            except OSError:\n                pass\n"
        "    return 2\n"
    )
    attack(code)


@needs_bwrap
def test_a_record_whose_mess_cannot_be_cleaned_gets_a_fresh_sandbox_next():
    code = (  # deeper than the forkserver's clean-up goes: it gives the sandbox up instead
        "import os\n"
        "def f(x):\n"
        "    os.chdir('/tmp')\n"
        "    for _ in range(2500):\n"
        "        os.mkdir('d')\n        os.chdir('d')\n"
        "    return 1\n"
    )
    verify_python_tests(GOOD, "assert f(1) == 2")
    before = _served_by()
    result = attack(code, timeout_s=3)
    assert result.verdict == "fail" and _served_by().isdisjoint(before), result

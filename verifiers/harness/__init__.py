"""What runs inside the sandbox for `python_tests`: the harness judges; the candidate only answers.

Standard library only, run by a bare interpreter (`python3 -I -S -B`). The host never imports this
package: it makes the folder readable inside the sandbox and starts `harness.forkserver` there, so the
imports between these modules are relative. The processes, all inside one warm sandbox:

  forkserver F (forkserver.py; long-lived: per record forks H and H's workers, then kills and wipes)
    ├─ harness H (judge.py; trusted: holds the tests, never executes candidate code, writes the report)
    └─ worker W (candidate.py; one at a time for H: gets the code from H, executes it, answers calls)

H talks to W over a socket (wire.py, worker_client.py) and sees only plain data or opaque
handles (plain_data.py); the test code becomes a program of units (units.py) run in H.

Deliberately not here: anything the host does (sandbox.py builds and limits the sandbox,
warm_sandbox.py keeps it warm and enforces wall-clock deadlines, python_tests.py turns the report
into a verdict).
"""

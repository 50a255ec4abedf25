"""What runs inside the sandbox for `python_tests`: the harness judges; the candidate only answers.

Standard library only, run by a bare interpreter (`python3 -I -S -B`). The host never imports this
package: it makes the folder readable inside the sandbox and starts `harness.forkserver` there, so the
imports between these modules are relative. The processes, all inside one warm sandbox:

  forkserver F (forkserver.py; long-lived: one fork of H per record, then kills and wipes what it left)
    └─ harness H (judge.py; trusted: holds the tests, never executes candidate code, writes the report)
         └─ zygote S (candidate.py; holds the code, never the tests, never the report channel)
              └─ worker W (candidate.py; one at a time: executes the candidate code, answers calls)

H talks to S and W over sockets (wire.py, worker_client.py) and sees only plain data or opaque
handles (plain_data.py); the test code becomes a program of units (units.py) run in H.

Deliberately not here: anything the host does (sandbox.py builds and limits the sandbox,
warm_sandbox.py keeps it warm and enforces wall-clock deadlines, python_tests.py turns the report
into a verdict).
"""

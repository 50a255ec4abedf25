"""The record's test code as a program of units: each statement holding an assert is one unit.

`build_program` rewrites the tests' AST so that every assert-holding statement (at top level, or in
the body of a HumanEval `check(candidate)`) records its own outcome through two hooks the harness
provides (`_bt_begin_`, `_bt_end_`) and execution goes on after a failure; `shadowed_builtins` says
which builtin names must resolve to the candidate's definition instead.

Deliberately not here: running the program (judge.py) or anything that touches candidate code.
"""

import ast
import builtins


def _has_assert(node) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _wrap_units(stmts, units, source):
    """Each statement holding an assert becomes a unit: its outcome is recorded and execution goes on."""
    out = []
    for stmt in stmts:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or not _has_assert(stmt):
            out.append(stmt)
            continue
        i = len(units)
        text = ast.get_source_segment(source, stmt) or ""
        units.append({"line": stmt.lineno, "test": " ".join(text.split())[:200]})
        out.extend(_unit_template(i, [stmt]))
    return out


def _unit_template(i, body):
    tpl = ast.parse(
        f"_bt_begin_({i})\ntry:\n    pass\nexcept BaseException as _bt_e_:\n    _bt_end_({i}, _bt_e_)\n"
        f"else:\n    _bt_end_({i}, None)\n"
    ).body
    tpl[1].body = body
    return tpl


def build_program(tests: str, entry_point: str | None):
    """(compiled test module, units, names it reads) with every assert-holding statement a unit."""
    tree = ast.parse(tests, "<tests>")
    units = []
    check = next((s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "check"), None)
    if check is not None and entry_point:
        check.body = _wrap_units(check.body, units, tests)
    tree.body = _wrap_units(tree.body, units, tests)
    if check is not None and entry_point:
        call = ast.parse(f"check({entry_point})").body
        if not units:  # check() asserts nothing directly (e.g. calls helpers): the call is the test
            units.append({"line": check.lineno, "test": f"check({entry_point})"})
            call = _unit_template(0, call)
        tree.body.extend(call)
    if not units:  # no asserts at all: the whole script running cleanly is the one test
        units.append({"line": 1, "test": "tests run without error"})
        tree.body = _unit_template(0, tree.body)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return compile(ast.fix_missing_locations(tree), "<tests>", "exec"), units, names, _bound_names(tree)


def _bound_names(tree) -> set[str]:
    """Every name the test code binds itself (assignments, defs, imports, parameters, handlers...)."""
    bound = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            bound.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(n.name)
        elif isinstance(n, ast.alias):
            bound.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            bound.add(n.name)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            bound.update(n.names)
    return bound


def shadowed_builtins(names, bound, candidate_builtins, entry_point) -> set[str]:
    """Which builtin names the tests must resolve to the candidate's top-level definition.

    Plain Python would let every candidate top-level name shadow a builtin (MBPP: `def sum(a, b)`
    tested with `assert sum(10, 15) == 6`). But a builtin the tests use to *check* results
    (`abs(f(1) - 2) < 1e-9`, `len(f(x)) == 3`) must stay the real one, or a candidate could define
    `def abs(x): return 0`. So a builtin is shadowed only when it is clearly the function under test:
    the entry point, or, without one, when the tests use no other candidate name at all and exactly
    one builtin name that the candidate defines (the candidate's claim is only trusted that far).
    """
    names = {n for n in names - bound if not n.startswith("_bt_")}  # not the harness's own unit hooks
    used = names & candidate_builtins
    if entry_point:
        return {entry_point} & used
    if len(used) != 1 or any(not hasattr(builtins, n) for n in names):
        return set()
    return used

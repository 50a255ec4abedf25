"""The record's test code as a program of units: each statement holding an assert is one unit.

`build_program` rewrites the tests' AST so that every assert-holding statement (at top level, or in
the body of a HumanEval `check(candidate)`) records its own outcome through two hooks the harness
provides (`_bt_begin_`, `_bt_end_`) and execution goes on after a failure; `shadowed_builtins` says
which builtin names must resolve to the candidate's definition instead.

Deliberately not here: running the program (judge.py) or anything that touches candidate code.
"""

import ast
import builtins
import re

TEST_TEXT_CHARS = 200  # a test statement is quoted in the report up to this length
_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+\Z")  # the parser's line ends (not str.splitlines')


def _has_assert(node) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _wrap_units(stmts, units, lines):
    """Each statement holding an assert becomes a unit: its outcome is recorded and execution goes on."""
    out = []
    for stmt in stmts:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or not _has_assert(stmt):
            out.append(stmt)
            continue
        i = len(units)
        units.append({"line": stmt.lineno, "test": " ".join(_source_text(lines, stmt).split())[:TEST_TEXT_CHARS]})
        out.extend(_unit_template(i, [stmt]))
    return out


def _source_text(lines: list[bytes], node) -> str:
    """`ast.get_source_segment(source, node)` from the source's lines (UTF-8, ends kept), split once."""
    first, last = node.lineno - 1, node.end_lineno - 1
    if first == last:
        return lines[first][node.col_offset : node.end_col_offset].decode()
    middle = b"".join(lines[first + 1 : last])
    return (lines[first][node.col_offset :] + middle + lines[last][: node.end_col_offset]).decode()


def _unit_template(i, body):
    """`_bt_begin_(i)` then `try: <body> except BaseException as _bt_e_: _bt_end_(i, _bt_e_) else: _bt_end_(i, None)`,
    placed at the first statement of `body`."""
    where = {"lineno": body[0].lineno, "col_offset": body[0].col_offset}
    where.update(end_lineno=where["lineno"], end_col_offset=where["col_offset"])

    def hook(name, *args):
        call = ast.Call(ast.Name(name, ast.Load(), **where), [ast.Constant(i, **where), *args], [], **where)
        return ast.Expr(call, **where)

    handler = ast.ExceptHandler(ast.Name("BaseException", ast.Load(), **where), "_bt_e_",
                                [hook("_bt_end_", ast.Name("_bt_e_", ast.Load(), **where))], **where)
    return [hook("_bt_begin_"), ast.Try(body, [handler], [hook("_bt_end_", ast.Constant(None, **where))], [], **where)]


_TEMPLATE_NAMES = {"_bt_begin_", "_bt_end_", "_bt_e_", "BaseException"}  # what _unit_template adds
_TEMPLATE_BOUND = {"_bt_e_"}


def build_program(tests: str, entry_point: str | None):
    """(compiled test module, units, names it reads, names it binds) with every assert-holding statement a unit."""
    tree = ast.parse(tests, "<tests>")
    names, bound = _names(tree)
    lines = [line.encode() for line in _LINE.findall(tests)]
    units = []
    check = next((s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "check"), None)
    if check is not None and entry_point:
        check.body = _wrap_units(check.body, units, lines)
    tree.body = _wrap_units(tree.body, units, lines)
    if check is not None and entry_point:
        call = ast.parse(f"check({entry_point})").body
        call_names, call_bound = _names(call[0])
        names, bound = names | call_names, bound | call_bound
        if not units:  # check() asserts nothing directly (e.g. calls helpers): the call is the test
            units.append({"line": check.lineno, "test": f"check({entry_point})"})
            call = _unit_template(0, call)
        tree.body.extend(call)
    if not units:  # no asserts at all: the whole script running cleanly is the one test
        units.append({"line": 1, "test": "tests run without error"})
        tree.body = _unit_template(0, tree.body)
    return compile(tree, "<tests>", "exec"), units, names | _TEMPLATE_NAMES, bound | _TEMPLATE_BOUND


def _names(tree) -> tuple[set[str], set[str]]:
    """Every name the test code reads or writes, and every name it binds itself (assignments, defs,
    imports, parameters, handlers...)."""
    names, bound = set(), set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            names.add(n.id)
            if not isinstance(n.ctx, ast.Load):
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
    return names, bound


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

"""Values across the harness/worker boundary: plain data by exact type, everything else an opaque handle.

The worker encodes what candidate code returns (`encode`); the harness decodes it strictly (`decode`)
into None, bool, int, float, str, bytes, bytearray, complex, list, tuple, dict, set, frozenset (exact
types only) or a `Handle`: an object living in the worker that can be called or have attributes read
and set, but never compares equal to data and has no truth value. So an object whose __eq__ is always
True never reaches the harness. `Remote` is a top-level name of the candidate module as the test code
sees it. Encoding is capped in depth, size and self-reference, so it always ends.

Deliberately not here: the sockets (wire.py), and mutated arguments coming back (only return values do).
"""

from collections.abc import Iterator

from .wire import WorkerDied

MAX_ITER_ITEMS = 100_000  # a returned iterator is materialised up to this many items
MAX_ENCODE_DEPTH = 100  # a returned value nested deeper than this is an error
MAX_ENCODE_ITEMS = 1_000_000  # ...and so is one with more parts than this (shared parts count each time)


def encode(x, make_ref, keep_top=False):
    """Plain data -> JSON-able tagged form; anything else -> make_ref(x) (an opaque handle).

    Instances of subclasses of the plain types (Counter, OrderedDict, defaultdict, namedtuple, int/str
    subclasses...) are encoded by content as their builtin base type, unless `keep_top` (the value
    came out of a constructor call: the test wants the object itself). Nesting, size and
    self-reference are capped, so encoding always ends. The receiver decodes exact types only, so no
    subclass method ever runs where the verdict is made.
    """
    return _Encoder(make_ref, keep_top).value(x, 0)


class _Encoder:
    """One value's encoding: the part budget and the containers being encoded (to catch self-reference)."""

    def __init__(self, make_ref, keep_top):
        self.make_ref, self.keep_top = make_ref, keep_top
        self.budget = MAX_ENCODE_ITEMS
        self.active = set()

    def value(self, x, depth):
        self.budget -= 1
        if self.budget < 0:
            raise ValueError(f"returned value has more than {MAX_ENCODE_ITEMS} parts")
        if depth > MAX_ENCODE_DEPTH:
            raise ValueError(f"returned value is nested more than {MAX_ENCODE_DEPTH} levels deep")
        t = type(x)
        if x is None or t is bool or t is str or t is float:
            return x
        if t is int:
            return x if -(1 << 62) < x < (1 << 62) else {"I": format(x, "x")}
        if t in _EXACT:
            return _EXACT[t](self, x, depth)
        if not (self.keep_top and depth == 0):
            # subclasses of plain types (checked on the real type: a faked __class__ does not count)
            for base, encode_as in _SUBCLASSES:
                if issubclass(t, base):
                    return encode_as(self, x, depth)
        if isinstance(x, Iterator) and not callable(x):  # map/filter/generator: what the test would list()
            return {"L": self.iterator(x, depth)}
        return self.make_ref(x)

    def container(self, obj, depth, items):
        key = id(obj)
        if key in self.active:
            raise ValueError("returned value contains itself (a self-referencing container)")
        self.active.add(key)
        try:
            return [self.value(e, depth + 1) for e in items]
        finally:
            self.active.discard(key)

    def iterator(self, x, depth):
        items = []
        for item in x:
            if len(items) >= MAX_ITER_ITEMS:
                raise ValueError(f"returned iterator has more than {MAX_ITER_ITEMS} items")
            items.append(self.value(item, depth + 1))
        return items


# exact plain containers and scalars: type -> (encoder, value, depth) -> tagged form
_EXACT = {
    list: lambda enc, x, depth: enc.container(x, depth, x),
    tuple: lambda enc, x, depth: {"T": enc.container(x, depth, x)},
    dict: lambda enc, x, depth: {"D": enc.container(x, depth, ([k, v] for k, v in x.items()))},
    set: lambda enc, x, depth: {"S": enc.container(x, depth, x)},
    frozenset: lambda enc, x, depth: {"Z": enc.container(x, depth, x)},
    bytes: lambda enc, x, depth: {"B": x.hex()},
    bytearray: lambda enc, x, depth: {"A": x.hex()},
    complex: lambda enc, x, depth: {"C": [x.real, x.imag]},
}
# subclasses, in this order, encoded by their base type's own methods (never the subclass's overrides)
_SUBCLASSES = (
    (int, lambda enc, x, depth: enc.value(int.__int__(x), depth)),
    (float, lambda enc, x, depth: float.__float__(x)),
    (str, lambda enc, x, depth: str.__str__(x)),
    (dict, lambda enc, x, depth: {"D": enc.container(x, depth, ([k, v] for k, v in list(x.items())))}),
    (list, lambda enc, x, depth: enc.container(x, depth, list(x))),
    (tuple, lambda enc, x, depth: {"T": enc.container(x, depth, tuple.__iter__(x))}),
    (set, lambda enc, x, depth: {"S": enc.container(x, depth, list(x))}),
    (frozenset, lambda enc, x, depth: {"Z": enc.container(x, depth, list(x))}),
    (bytes, lambda enc, x, depth: {"B": bytes.hex(x)}),
    (bytearray, lambda enc, x, depth: {"A": bytearray.hex(x)}),
    (complex, lambda enc, x, depth: {"C": [complex.real.__get__(x), complex.imag.__get__(x)]}),
)


def decode(v, worker):
    """Strict inverse of `encode`, run in H on untrusted JSON: only exact plain types come out."""
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list:
        return [decode(e, worker) for e in v]
    if t is not dict or len(v) != 1:
        raise WorkerDied(f"malformed value of type {t.__name__}")
    (tag, body), = v.items()
    if tag == "R" and type(body) is int:
        return Handle(worker, body)
    if tag in ("I", "B", "A") and type(body) is str:
        return {"I": lambda: int(body, 16), "B": lambda: bytes.fromhex(body),
                "A": lambda: bytearray.fromhex(body)}[tag]()
    if type(body) is not list:
        raise WorkerDied(f"malformed {tag!r} value")
    items = [decode(e, worker) for e in body]
    if tag == "T":
        return tuple(items)
    if tag == "D" and all(type(p) is list and len(p) == 2 for p in items):
        return {k: val for k, val in items}
    if tag in ("S", "Z"):
        return set(items) if tag == "S" else frozenset(items)
    if tag == "L":
        return iter(items)
    if tag == "C" and len(items) == 2 and all(type(p) in (int, float) for p in items):
        return complex(*items)
    raise WorkerDied(f"malformed {tag!r} value")


class Handle:
    """An object living in the worker: callable and attribute-readable, never equal to data, no truth value."""

    __slots__ = ("_worker", "_id", "_generation")

    def __init__(self, worker, ref_id):
        object.__setattr__(self, "_worker", worker)
        object.__setattr__(self, "_id", ref_id)
        object.__setattr__(self, "_generation", worker.generation)

    def _target(self):
        if self._generation != self._worker.generation:
            raise WorkerDied("handle to an object of a worker that has since died")
        return {"R": self._id}

    def __call__(self, *args, **kwargs):
        return self._worker.call(self._target(), args, kwargs)

    def __getattr__(self, name):
        return self._worker.request({"op": "getattr", "f": self._target(), "name": name})

    def __setattr__(self, name, value):  # `root.left = Node(2)` in test setup: set in the worker
        self._worker.setattr(self._target(), name, value)

    def __eq__(self, other):
        return type(other) is Handle and (other._worker, other._id) == (self._worker, self._id)

    def __hash__(self):
        return hash(self._id)

    def __bool__(self):
        raise TypeError("a candidate-defined object has no truth value in tests; return plain data")

    def __repr__(self):
        return f"<candidate object #{self._id}>"


class Remote:
    """A global name of the candidate module (a function or class), resolved in the current worker."""

    __slots__ = ("_worker", "_name")

    def __init__(self, worker, name):
        object.__setattr__(self, "_worker", worker)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args, **kwargs):
        return self._worker.call({"G": self._name}, args, kwargs)

    def __getattr__(self, name):
        return self._worker.request({"op": "getattr", "f": {"G": self._name}, "name": name})

    def __setattr__(self, name, value):
        self._worker.setattr({"G": self._name}, name, value)

    def __repr__(self):
        return f"<candidate {self._name}>"


def encode_argument(x):
    if type(x) is Handle:
        return x._target()
    if type(x) is Remote:
        return {"G": x._name}
    raise TypeError(f"cannot pass a {type(x).__name__} to candidate code (plain data only)")

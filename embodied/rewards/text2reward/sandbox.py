"""Run untrusted reward programs: a static check, then a separate, limited process.

A reward program (Text2Reward's ``compute_dense_reward(self, action, obs) -> float``) is
code an LLM wrote, so it is treated as hostile:

1. **Static check** (:func:`check_source`, before anything runs). The program is parsed,
   never executed, and every node is checked against the rules below; a rejection names
   the rule, the line and the column (:class:`ProgramRejected`). Allowed: one top-level
   ``compute_dense_reward(self, action, obs)`` (or ``(self, action)``, the signature of
   the paper's locomotion prompts), other top-level helper functions and constants, a
   docstring, and imports of ``numpy``, ``math`` and the parts of ``scipy.spatial`` that
   the published Text2Reward programs use (``distance``, ``transform.Rotation``). Refused:
   other imports, ``eval``/``exec``/``open``/``getattr``/... (:data:`FORBIDDEN_BUILTINS`),
   any name or attribute starting with ``__``, attributes starting with ``_`` other than
   the environment's whitelisted accessors (``self.env._get_pos_goal()``), attributes that
   reach frames, code objects or files (``gi_frame``, ``f_back``, ``tofile``, ``np.load``,
   ... :data:`FORBIDDEN_ATTRIBUTES`), classes, ``global``/``nonlocal``, generators and
   ``async``, decorators, and bare ``except:`` / ``except BaseException`` (they would
   swallow the time limit). Loops are allowed: the time limit contains them.

2. **Restricted namespace.** The program's builtins are a whitelist of harmless ones
   (:data:`SAFE_BUILTINS`; ``print`` does nothing); ``import`` returns read-only proxies
   of numpy, math and scipy.spatial that expose only whitelisted members (no
   ``numpy.load``/``save``/``fromfile``/``memmap``/``ctypeslib``/``lib``, ...). ``np`` is
   bound beforehand, as in the authors' runner, where programs were exec'd beside
   ``import numpy as np`` and several published programs use ``np`` without importing it.

3. **A separate process per program** (:class:`Sandbox`), started with ``python -I``, a
   minimal environment (no API keys), and, once numpy is loaded, limits on its address
   space (``RLIMIT_AS``: memory bombs raise ``MemoryError`` instead of exhausting the
   machine), on file size (no file can be written) and on open files (no new file or
   socket can be opened). It never sees the simulator: each call, the parent sends the
   values the description names (a flat float64 vector over a pipe) and gets back a
   status, a float and a message — nothing is unpickled from the child. Each call has a
   time limit: ``SIGALRM`` in the child interrupts Python code and reports the line
   reached; a call stuck inside C code gets no reply, and the parent kills and restarts
   the child after a grace period. NaN, inf, a non-number, an exception, a timeout or a
   crashed child becomes a :class:`RewardProgramError` naming the program's line (for a
   NaN, the call is re-run under a line tracer to find where the first non-finite value
   appeared), and the parent process carries on.

Why a process and not in-process execution with a ``signal.setitimer`` watchdog: that
would save the pipe round trip, but it cannot bound memory (``np.ones(10**9)`` would take
the training process, or the machine, down), cannot stop a loop inside a C call, and
leaves the simulator one Python-level escape away from the program. The price, measured
on a 2-core machine shared with another CPU-bound job: 45-55 µs per call back to back
when a core was free, about 190 µs when both were busy (``python -m
embodied.rewards.text2reward.sandbox --bench``; the same program in-process: 8-17 µs),
and +200-450 µs per env step in a stepping loop, where the child sleeps between steps
(``python -m embodied.rewards.text2reward.check ENV_ID FILE``: +17-40 % on Meta-World
push-v3, whose step costs 1-1.3 ms; a doubling or more on Hopper-v5, whose step
costs 0.2 ms). Python-level restrictions are best effort; the process boundary and its
limits are what contain a program that gets past them (the resource limits are Linux's;
there is no seccomp filter, so a program that escaped could still use a socket it was
handed — it is handed none, and cannot open one).

This file runs as the child process too (``python -I sandbox.py``), so it imports only
the standard library and numpy (scipy when a program asks for it).
"""

from __future__ import annotations

import ast
import builtins
import json
import math
import os
import select
import signal
import struct
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

ENTRY_POINT = "compute_dense_reward"
DEFAULT_FILENAME = "<reward program>"
MAX_SOURCE_CHARS = 100_000

# ----------------------------------------------------------------------------- the rules

#: What a program may import, and which members each module exposes. numpy: numerical
#: functions, constructors, dtypes and constants that reward code needs; nothing that
#: reads or writes files, maps memory or reaches C (load/save/fromfile/memmap/ctypeslib/
#: lib/testing/f2py are absent).
NUMPY_MEMBERS = frozenset(
    """
    abs absolute add all allclose amax amin any append arange arccos arccosh arcsin arcsinh
    arctan arctan2 arctanh argmax argmin argsort around array array_equal asarray atleast_1d
    atleast_2d average bool_ cbrt ceil clip column_stack concatenate copysign cos cosh count_nonzero
    cross cumprod cumsum deg2rad degrees diag diagonal diff divide dot dtype e einsum empty
    empty_like equal errstate exp exp2 expand_dims expm1 eye fabs finfo flip float16 float32
    float64 floor floor_divide fmax fmin fmod full full_like greater greater_equal heaviside
    hstack hypot identity iinfo inf inner int8 int16 int32 int64 interp isclose isfinite isinf
    isnan linalg linspace log log10 log1p log2 logaddexp logical_and logical_not logical_or
    logical_xor matmul max maximum mean median min minimum mod multiply nan nan_to_num nanmax
    nanmean nanmin nansum ndarray negative newaxis nonzero not_equal ones ones_like outer
    percentile pi polyval power prod ptp quantile rad2deg radians ravel reciprocal remainder
    repeat reshape rint roll round sign sin sinh sort split sqrt square squeeze stack std
    subtract sum swapaxes take tan tanh tensordot tile trace transpose trapezoid tril triu
    true_divide uint8 unique var vdot vstack where zeros zeros_like
    """.split()
)
LINALG_MEMBERS = frozenset("cond det eig eigh eigvals eigvalsh inv lstsq matrix_rank norm pinv qr solve svd".split())
DISTANCE_MEMBERS = frozenset(
    """
    braycurtis canberra cdist chebyshev cityblock correlation cosine euclidean jensenshannon
    mahalanobis minkowski pdist seuclidean sqeuclidean squareform
    """.split()
)
ALLOWED_MODULES: Mapping[str, frozenset[str]] = {
    "numpy": NUMPY_MEMBERS,
    "numpy.linalg": LINALG_MEMBERS,
    "math": frozenset(name for name in dir(math) if not name.startswith("_")),  # pure functions and constants
    "scipy": frozenset({"spatial"}),
    "scipy.spatial": frozenset({"distance", "transform"}),
    "scipy.spatial.distance": DISTANCE_MEMBERS,
    "scipy.spatial.transform": frozenset({"Rotation", "Slerp"}),
}
#: Submodules reached as attributes (``np.linalg``, ``scipy.spatial.distance``).
SUBMODULES = {name: name.rsplit(".", 1) for name in ALLOWED_MODULES if "." in name}

#: Builtins a program may call. ``print`` is replaced by a no-op (stdout is the pipe).
SAFE_BUILTINS = frozenset(
    """
    abs all any bool complex dict divmod enumerate filter float frozenset int isinstance
    iter len list map max min next pow print range reversed round set slice sorted str sum
    tuple zip
    ArithmeticError AssertionError Exception FloatingPointError IndexError KeyError
    LookupError NameError OverflowError RuntimeError StopIteration TypeError ValueError
    ZeroDivisionError
    """.split()
)
#: Builtins that reach code, objects' internals, files or the interpreter.
FORBIDDEN_BUILTINS = frozenset(
    """
    __import__ breakpoint callable classmethod compile copyright credits delattr dir eval exec
    exit getattr globals hasattr help id input issubclass licence license locals memoryview
    object open property quit setattr staticmethod super type vars
    """.split()
)
#: Attribute names refused wherever they appear: frame/code/generator internals lead back
#: to real globals; array and module I/O reaches the file system; str.format reads
#: attributes by name at run time, out of the static check's sight.
FORBIDDEN_ATTRIBUTES = frozenset(
    """
    gi_frame gi_code gi_yieldfrom gi_running cr_frame cr_code cr_await ag_frame ag_code ag_await
    f_back f_globals f_builtins f_locals f_code f_trace tb_frame tb_next co_code co_consts co_names
    tofile dump dumps ctypes fromfile fromregex load loads save savez savez_compressed savetxt
    loadtxt genfromtxt memmap DataSource ctypeslib lib f2py testing distutils
    format format_map mro system popen
    """.split()
)
#: The name ``np`` is bound before the program runs (see the module docstring).
PREBOUND = {"np": "numpy"}


class ProgramRejected(ValueError):
    """The static check refused a program: which rule, where, and why."""

    def __init__(self, rule: str, message: str, line: int = 0, col: int = 0, filename: str = DEFAULT_FILENAME):
        self.rule, self.message, self.line, self.col, self.filename = rule, message, line, col, filename
        self.problems: list[ProgramRejected] = [self]  # every problem found, in reading order
        super().__init__(rule, message, line, col, filename)

    def __str__(self) -> str:
        where = f"{self.filename}:{self.line}:{self.col}: " if self.line else f"{self.filename}: "
        return f"{where}{self.message} [rule: {self.rule}]"


@dataclass(frozen=True)
class ProgramInfo:
    """What the static check learned about an accepted program."""

    arity: int  # 3: compute_dense_reward(self, action, obs); 2: (self, action)
    modules: frozenset[str]  # modules it imports (the child loads only these)
    line: int  # where compute_dense_reward is defined
    #: every attribute name the program writes; with getattr, vars, dunders and str.format
    #: refused, a state field none of whose names appears here cannot be read by it
    attributes: frozenset[str] = frozenset()


def check_source(source: str, filename: str = DEFAULT_FILENAME, allowed_private: Iterable[str] = ()) -> ProgramInfo:
    """Check a reward program without running it; raise :class:`ProgramRejected` or
    return what the sandbox needs to know. ``allowed_private`` are the ``_``-names the
    environment's description exposes (e.g. ``_get_pos_goal``)."""
    if not isinstance(source, str):
        raise ProgramRejected("source", f"the program must be text, got {type(source).__name__}", filename=filename)
    if len(source) > MAX_SOURCE_CHARS:
        raise ProgramRejected("size", f"the program has {len(source)} characters; at most {MAX_SOURCE_CHARS} are allowed",
                              filename=filename)  # fmt: skip
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as error:
        raise ProgramRejected("syntax", f"syntax error: {error.msg}", error.lineno or 0, error.offset or 0, filename) from None
    except (ValueError, RecursionError, MemoryError) as error:  # null bytes, absurd nesting
        raise ProgramRejected("syntax", f"cannot parse the program: {error}", filename=filename) from None
    try:  # compiling runs nothing, and finds what parsing lets through (`break` outside a loop, ...)
        compile(tree, filename, "exec", dont_inherit=True)
    except SyntaxError as error:
        raise ProgramRejected("syntax", f"syntax error: {error.msg}", error.lineno or 0, error.offset or 0, filename) from None
    except (ValueError, RecursionError, MemoryError) as error:
        raise ProgramRejected("syntax", f"cannot compile the program: {error}", filename=filename) from None
    checker = _Checker(filename, frozenset(allowed_private), *_bound_names(tree))
    checker.visit(tree)
    entry = checker.check_module(tree)
    if checker.problems:  # the first in reading order; the count of the rest
        problems = sorted(checker.problems, key=lambda p: (p.line or 10**9, p.col))
        first = problems[0]
        if len(problems) > 1:
            first.message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
        first.problems = problems
        raise first
    attributes = frozenset(node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute))
    return ProgramInfo(arity=entry, modules=frozenset(checker.modules), line=checker.entry_line, attributes=attributes)


def _bound_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(every name the program binds, the subset bound other than by an import)."""
    names: set[str] = set()
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            imported.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names | imported, names


class _Checker(ast.NodeVisitor):
    def __init__(self, filename: str, allowed_private: frozenset[str], bound: set[str], assigned: set[str]):
        self.filename = filename
        self.allowed_private = allowed_private
        self.bound = bound
        self.assigned = assigned  # names also used as variables: their attributes are checked at run time only
        self.modules: set[str] = set()
        self.aliases: dict[str, str] = dict(PREBOUND)  # name -> module it was bound to
        self.entry_line = 0
        self.problems: list[ProgramRejected] = []

    def reject(self, node: ast.AST, rule: str, message: str) -> None:
        """Record a problem; checking goes on, so that the first in reading order is reported."""
        line, col = getattr(node, "lineno", 0), getattr(node, "col_offset", 0)
        if isinstance(node, ast.Attribute) and node.end_lineno == line and node.end_col_offset is not None:
            col = node.end_col_offset - len(node.attr)  # point at the attribute's name, not its object
        self.problems.append(ProgramRejected(rule, message, line, col + 1, self.filename))

    # --- the shape of the module

    def check_module(self, tree: ast.Module) -> int:
        entries = []
        for node in tree.body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                continue  # a docstring or a bare string
            if isinstance(node, ast.FunctionDef):
                if node.name == ENTRY_POINT:
                    entries.append(node)
                continue
            if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign)):
                self.reject(node, "top-level", f"a top-level {type(node).__name__} statement is not allowed: a program "
                            "holds imports, constants and function definitions only")  # fmt: skip
        if not entries:
            self.problems.append(ProgramRejected(
                "entry-point", f"the program defines no top-level `def {ENTRY_POINT}(self, action, obs)`", filename=self.filename
            ))  # fmt: skip
            return 3
        if len(entries) > 1:
            self.reject(entries[1], "entry-point", f"`{ENTRY_POINT}` is defined {len(entries)} times; define it once")
        entry = entries[0]
        self.entry_line = entry.lineno
        args = entry.args
        positional = args.posonlyargs + args.args
        required = len(positional) - len(args.defaults)
        kwonly_required = [a.arg for a, default in zip(args.kwonlyargs, args.kw_defaults) if default is None]
        takes_three = (len(positional) >= 3 or args.vararg is not None) and required <= 3
        takes_two = len(positional) == 2 and args.vararg is None  # the paper's locomotion prompts: (self, action)
        if kwonly_required or not (takes_three or takes_two):
            shown = ", ".join(a.arg for a in positional) + (", ..." if args.vararg or args.kwonlyargs else "")
            self.reject(entry, "entry-point", f"`{ENTRY_POINT}` must take (self, action, obs); it takes ({shown})")
        return 3 if takes_three else 2

    # --- statements

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module_name(node, alias.name)
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.reject(node, "import", "relative imports are not allowed")
            return
        module = node.module or ""
        if not self._check_module_name(node, module):
            return
        for alias in node.names:
            if alias.name == "*":
                self.reject(node, "import", f"`from {module} import *` is not allowed: import the names you use")
                continue
            full = f"{module}.{alias.name}"
            if full in ALLOWED_MODULES:
                self.modules.add(full)
                self.aliases[alias.asname or alias.name] = full
            elif alias.name not in ALLOWED_MODULES[module]:
                self.reject(node, "import", f"`{module}.{alias.name}` is not available in reward programs"
                            f"{_why_missing(alias.name)}")  # fmt: skip

    def _check_module_name(self, node: ast.AST, name: str) -> bool:
        if name not in ALLOWED_MODULES:
            allowed = "numpy, math, scipy.spatial.distance, scipy.spatial.transform"
            self.reject(node, "import", f"import of `{name}` is not allowed; reward programs may import only {allowed}")
            return False
        self.modules.add(name)
        return True

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.reject(node, "class", "class definitions are not allowed in reward programs; use functions")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.decorator_list:
            self.reject(node.decorator_list[0], "decorator", "decorators are not allowed in reward programs")
        if node.name.startswith("__"):
            self.reject(node, "dunder", f"the name `{node.name}` is not allowed (names starting with `__` are reserved)")
        self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.reject(node, "generator", "async functions are not allowed in reward programs")

    def visit_Global(self, node: ast.Global) -> None:
        self.reject(node, "global", "`global` is not allowed: a reward must depend only on the current state")

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.reject(node, "global", "`nonlocal` is not allowed: a reward must depend only on the current state")

    def visit_Yield(self, node: ast.AST) -> None:
        self.reject(node, "generator", "generators (`yield`) are not allowed in reward programs")

    visit_YieldFrom = visit_Yield

    def visit_Await(self, node: ast.Await) -> None:
        self.reject(node, "generator", "`await` is not allowed in reward programs")

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        for item in caught:
            if item is None or (isinstance(item, ast.Name) and item.id == "BaseException"):
                self.reject(node, "except", "a bare `except:` or `except BaseException` would swallow the time limit; "
                            "catch `Exception` or a specific error")  # fmt: skip
        self.generic_visit(node)

    # --- names and attributes

    def visit_Name(self, node: ast.Name) -> None:
        if node.id.startswith("__"):
            self.reject(node, "dunder", f"the name `{node.id}` is not allowed (names starting with `__` are reserved)")
        if node.id in FORBIDDEN_BUILTINS and node.id not in self.bound:
            self.reject(node, "builtin", f"`{node.id}` is not available in reward programs")

    def visit_arg(self, node: ast.arg) -> None:
        if node.arg.startswith("__"):
            self.reject(node, "dunder", f"the name `{node.arg}` is not allowed (names starting with `__` are reserved)")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        problem = self._attribute_problem(node)
        if problem:
            self.reject(node, *problem)
        self.generic_visit(node)

    def _attribute_problem(self, node: ast.Attribute) -> tuple[str, str] | None:
        """(rule, message) for a refused attribute, or None (one problem per attribute)."""
        name = node.attr
        if name.startswith("__"):
            return "dunder", f"the attribute `.{name}` is not allowed (no access to Python internals)"
        if name.startswith("_") and name not in self.allowed_private:
            allowed = ", ".join(f"`self.env.{n}`" for n in sorted(self.allowed_private)) or "none in this environment"
            return "private-attribute", (f"the attribute `.{name}` is not allowed; the only `_` names a program may use "
                                         f"are the documented accessors ({allowed})")  # fmt: skip
        if name in FORBIDDEN_ATTRIBUTES:
            return "attribute", f"the attribute `.{name}` is not allowed in reward programs{_why_missing(name)}"
        module = self._module_path(node.value)
        if module is not None:
            full = f"{module}.{name}"
            if full not in ALLOWED_MODULES and name not in ALLOWED_MODULES[module]:
                return "module-attribute", f"`{full}` is not available in reward programs{_why_missing(name)}"
        return None

    def _module_path(self, node: ast.AST) -> str | None:
        """The allowed module an expression names through import aliases (``np`` -> numpy)."""
        if isinstance(node, ast.Name):
            return None if node.id in self.assigned else self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            parent = self._module_path(node.value)
            if parent is not None and f"{parent}.{node.attr}" in ALLOWED_MODULES:
                return f"{parent}.{node.attr}"
        return None


def _why_missing(name: str) -> str:
    if name in {"load", "loads", "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "fromfile",
                "fromregex", "tofile", "dump", "dumps", "memmap", "DataSource"}:  # fmt: skip
        return " (no file access)"
    if name in {"ctypes", "ctypeslib", "lib", "f2py", "distutils", "testing"}:
        return " (no access to C or numpy internals)"
    if name.startswith(("gi_", "cr_", "ag_", "f_", "tb_", "co_")):
        return " (no access to frames or code objects)"
    if name in {"format", "format_map"}:
        return " (str.format reads attributes by name; use an f-string)"
    return ""


# ----------------------------------------------------------------------------- the namespace


class ProgramTimeout(BaseException):
    """Raised inside the child when a call exceeds its time limit (a BaseException, so that
    `except Exception` in a program cannot swallow it)."""


def _read_only(self, name: str, value: Any) -> None:
    raise AttributeError(f"{self!r} is read-only")


def _module_proxy(qualname: str, members: Mapping[str, Any]) -> Any:
    """A read-only object exposing exactly ``members`` (a class per module, so lookups run at C speed)."""

    def missing(self, name: str) -> Any:
        raise AttributeError(f"`{qualname}.{name}` is not available in reward programs{_why_missing(name)}")

    attributes: dict[str, Any] = {}
    for name, value in members.items():
        # Python functions would bind like methods when read through an instance.
        bindable = hasattr(type(value), "__get__") and not isinstance(value, type)
        attributes[name] = staticmethod(value) if bindable else value
    attributes.update(__slots__=(), __getattr__=missing, __setattr__=_read_only, __delattr__=_read_only,
                      __repr__=lambda self: f"<module {qualname} (sandboxed)>")  # fmt: skip
    return type(qualname.replace(".", "_"), (), attributes)()


def build_modules(needed: Iterable[str]) -> dict[str, Any]:
    """Proxies of the allowed modules in ``needed`` (and their parents), outermost last."""
    import importlib

    names = set(needed) | {"numpy", "numpy.linalg"}
    for name in list(names):
        parts = name.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts)))
    proxies: dict[str, Any] = {}
    for name in sorted(names, key=lambda n: -n.count(".")):  # children first, so parents can hold them
        module = importlib.import_module(name)
        members = {m: getattr(module, m) for m in ALLOWED_MODULES[name] if hasattr(module, m)}
        for child, (parent, attr) in SUBMODULES.items():
            if parent == name:
                if child in proxies:
                    members[attr] = proxies[child]
                else:
                    members.pop(attr, None)  # not requested: absent, not the real module
        proxies[name] = _module_proxy(name, members)
    return proxies


def build_namespace(modules: Mapping[str, Any]) -> dict[str, Any]:
    """The program's globals: whitelisted builtins, a proxy-returning ``import``, and ``np``."""

    def sandbox_import(name: str, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002 (import protocol)
        if not level and name in modules:
            return modules[name] if fromlist else modules[name.split(".")[0]]
        # numpy's C code imports its own helpers lazily (``arr.sum()`` imports
        # numpy._core._methods) through the builtins of the running frame, i.e. through
        # this function, and then reads the module from sys.modules itself, ignoring what
        # is returned. So an already-loaded internal gets a None back: the C caller works,
        # and Python code gets nothing (the static check refuses such imports anyway).
        if not level and name.startswith(("numpy.", "scipy.")) and name in sys.modules:
            return None
        raise ImportError(f"import of `{name}` is not allowed in reward programs")

    safe = {name: getattr(builtins, name) for name in SAFE_BUILTINS if hasattr(builtins, name)}
    safe["print"] = lambda *args, **kwargs: None
    safe["__import__"] = sandbox_import
    return {"__builtins__": safe, "__name__": "reward_program", "np": modules["numpy"]}


# ----------------------------------------------------------------------------- the state views

Field = tuple[str, tuple[int, ...]]  # ("robot.ee_position", (3,)), ("env._get_pos_goal()", (3,)), ("dt", ())


def field_size(shape: Sequence[int]) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def build_views(fields: Sequence[Field], buffer: np.ndarray) -> Any:
    """The read-only ``self`` a program sees, backed by ``buffer`` (refilled before each call).

    Arrays are views into the buffer, scalars read it on access, and ``name()`` fields
    are methods returning a copy. Nothing else is reachable from the result.
    """
    tree: dict[str, Any] = {}
    offset = 0
    for path, shape in fields:
        size = field_size(shape)
        parts = path.split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        leaf = parts[-1]
        if leaf.endswith("()"):
            node[leaf[:-2]] = ("method", buffer[offset : offset + size].reshape(shape))
        elif len(shape) == 0:
            node[leaf] = ("scalar", offset)
        else:
            node[leaf] = ("array", buffer[offset : offset + size].reshape(shape))
        offset += size
    return _view("self", tree, buffer)


def _view(path: str, node: Mapping[str, Any], buffer: np.ndarray) -> Any:
    attributes: dict[str, Any] = {}
    for name, value in node.items():
        if isinstance(value, dict):
            attributes[name] = _view(f"{path}.{name}", value, buffer)
        elif value[0] == "array":
            attributes[name] = value[1]
        elif value[0] == "scalar":
            attributes[name] = property(lambda self, i=value[1]: float(buffer[i]))
        else:  # a method returning a fresh copy, as the simulator's accessors do
            attributes[name] = staticmethod(lambda array=value[1]: array.copy())
    names = ", ".join(sorted(node))

    def missing(self, name: str) -> Any:
        raise AttributeError(f"`{path}` has no attribute `{name}`; it has: {names}")

    attributes.update(__slots__=(), __getattr__=missing, __setattr__=_read_only, __delattr__=_read_only,
                      __repr__=lambda self: f"<{path}: {names}>")  # fmt: skip
    return type(path.rsplit(".", 1)[-1], (), attributes)()


# ----------------------------------------------------------------------------- the child

# Reply: status, value, program line, message length, then the UTF-8 message.
_REPLY = struct.Struct("<Bdii")
OK, EXCEPTION, TIMEOUT, NONFINITE, BAD_RETURN, LOAD_ERROR = range(6)
_KINDS = {EXCEPTION: "exception", TIMEOUT: "timeout", NONFINITE: "non-finite", BAD_RETURN: "bad-return",
          LOAD_ERROR: "load"}  # fmt: skip
MAX_MESSAGE = 4000


class _Program:
    """The loaded program inside the child, and how one call is run and explained."""

    def __init__(self, spec: Mapping[str, Any]):
        self.source: str = spec["source"]
        self.filename: str = spec["filename"]
        self.lines = self.source.splitlines()
        self.timeout_s = float(spec["timeout_s"])
        self.memory_mb = int(spec["memory_mb"])
        info = check_source(self.source, self.filename, spec["allowed_private"])  # again: never trust the pipe
        self.modules = build_modules(info.modules)
        self.arity = info.arity
        fields = [(path, tuple(shape)) for path, shape in spec["fields"]]
        self.action_shape, self.obs_shape = tuple(spec["action_shape"]), tuple(spec["obs_shape"])
        self.size = sum(field_size(s) for _, s in fields) + field_size(self.action_shape) + field_size(self.obs_shape)
        self.buffer = np.zeros(self.size)
        self.self_view = build_views(fields, self.buffer)
        start = sum(field_size(s) for _, s in fields)
        middle = start + field_size(self.action_shape)
        self.action = self.buffer[start:middle].reshape(self.action_shape)
        self.obs = self.buffer[middle:].reshape(self.obs_shape)
        self.function: Callable[..., Any] | None = None
        self.armed = False

    def load(self) -> None:
        namespace = build_namespace(self.modules)
        code = compile(self.source, self.filename, "exec")
        self.run(lambda: exec(code, namespace))  # top-level statements are untrusted too
        self.function = namespace[ENTRY_POINT]

    def run(self, thunk: Callable[[], Any]) -> Any:
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            return thunk()
        finally:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def on_alarm(self, signum, frame) -> None:
        if self.armed:  # an alarm that lands after the call finished is ignored
            raise ProgramTimeout

    def call(self) -> tuple[int, float, int, str]:
        args = (self.self_view, self.action, self.obs)[: self.arity]
        try:
            value = self.run(lambda: self.function(*args))
        except BaseException as error:  # noqa: BLE001 - everything the program raises is reported
            return self.explain(error)
        number = _as_reward(value)
        if isinstance(number, str):
            line = self.return_line(args)
            return BAD_RETURN, 0.0, line, number + self.at(line, "from")
        if not math.isfinite(number):
            return self.explain_nonfinite(number, args)
        return OK, number, 0, ""

    def explain(self, error: BaseException) -> tuple[int, float, int, str]:
        line = self.error_line(error)
        if isinstance(error, ProgramTimeout):
            return TIMEOUT, 0.0, line, f"exceeded the time limit of {self.timeout_s:g} s{self.at(line, 'interrupted at')}"
        detail = _text(error)
        if isinstance(error, MemoryError):
            detail = f"{detail or 'out of memory'} (over the sandbox's limit of {self.memory_mb} MB)"
        return EXCEPTION, 0.0, line, f"{type(error).__name__}: {detail}{self.at(line)}"

    def error_line(self, error: BaseException) -> int:
        line, tb = 0, error.__traceback__
        while tb is not None:  # the innermost frame that belongs to the program
            if tb.tb_frame.f_code.co_filename == self.filename:
                line = tb.tb_lineno
            tb = tb.tb_next
        return line

    def at(self, line: int, words: str = "at") -> str:
        if not line:
            return ""
        text = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        return f" ({words} line {line}: `{text}`)" if text else f" ({words} line {line})"

    def traced(self, args: tuple) -> tuple[int, str]:
        """Re-run a call under a line tracer: (the line of the `return` taken, where the first
        non-finite local value appeared). Only after a failure, so it costs nothing normally."""
        found: list[str] = []
        returned = [0]
        previous: dict[int, int] = {}  # frame -> the line that just ran
        already: dict[int, set[str]] = {}  # frame -> locals that were non-finite on entry (arguments)

        def local(frame, event, arg):
            key = id(frame)
            if event in ("line", "return") and not found:
                for name, value in frame.f_locals.items():
                    if name not in already.get(key, ()) and _nonfinite(value):
                        where = self.at(previous.get(key, frame.f_lineno), "set on")
                        found.append(f"the first non-finite value was `{name}` = {_short(value)}{where}")
                        break
            if event == "line":
                previous[key] = frame.f_lineno
            elif event == "return" and frame.f_code.co_name == ENTRY_POINT:
                returned[0] = frame.f_lineno
            return local

        def tracer(frame, event, arg):
            if frame.f_code.co_filename != self.filename:
                return None  # numpy's own Python code is not traced
            already[id(frame)] = {name for name, value in frame.f_locals.items() if _nonfinite(value)}
            return local

        sys.settrace(tracer)
        try:
            self.run(lambda: self.function(*args))
        except BaseException:  # noqa: BLE001 - only the trace is wanted here
            pass
        finally:
            sys.settrace(None)
        return returned[0], (found[0] if found else "")

    def explain_nonfinite(self, number: float, args: tuple) -> tuple[int, float, int, str]:
        line, origin = self.traced(args)
        message = f"compute_dense_reward returned {number}{self.at(line, 'from')}"
        return NONFINITE, number, line, message + (f"; {origin}" if origin else "")

    def return_line(self, args: tuple) -> int:
        return self.traced(args)[0]


def _text(error: BaseException) -> str:
    """An exception's message, short, even when its argument is huge or its str() fails."""
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 - the program chose what it raised
        return "(the exception's message could not be shown)"
    return text if len(text) <= 500 else text[:497] + "..."


def _nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fc" and value.size <= 10_000:
        return not bool(np.isfinite(value).all())
    if isinstance(value, np.floating):
        return not bool(np.isfinite(value))
    return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_reward(value: Any) -> float | str:
    """The call's value as a float, or a message saying why it is not one."""
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        try:
            return float(value)
        except OverflowError:
            return "compute_dense_reward returned an integer too large for a float"
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        return float(value.reshape(()))
    described = type(value).__name__
    if isinstance(value, np.ndarray):
        described = f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"compute_dense_reward returned {described}; it must return a float"


def _apply_limits(memory_mb: int, keep_fds: int) -> None:
    """Bound the child's memory, forbid writing files, opening files or sockets, and forking."""
    import resource

    try:
        with open("/proc/self/status") as status:  # address space already mapped (numpy, BLAS)
            mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        mapped = 0
    limits = [(resource.RLIMIT_AS, mapped + memory_mb * 2**20), (resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_NOFILE, keep_fds)]
    if hasattr(resource, "RLIMIT_NPROC"):
        limits.append((resource.RLIMIT_NPROC, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file write fails (EFBIG) instead of killing the child
    for limit, value in limits:
        try:
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass  # best effort where the platform lacks a limit


def _read_exact(stream, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        count = stream.readinto(view[got:])
        if not count:
            return False
        got += count
    return True


def _worker_main() -> None:
    """The child: load one program, then answer calls until the parent closes the pipe."""
    # The protocol moves to fds 3 and 4; 0 and 1 point at /dev/null, so that nothing the
    # program or a library prints can corrupt the pipe.
    os.dup2(0, 3)
    os.dup2(1, 4)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    os.closerange(5, 1 << 16)
    requests = os.fdopen(3, "rb", buffering=0)
    replies = os.fdopen(4, "wb", buffering=0)

    def reply(status: int, value: float = 0.0, line: int = 0, message: str = "") -> None:
        data = message.encode("utf-8", "replace")[:MAX_MESSAGE]
        replies.write(_REPLY.pack(status, value, line, len(data)) + data)

    header = bytearray(4)
    if not _read_exact(requests, memoryview(header)):
        return
    spec_bytes = bytearray(struct.unpack("<I", header)[0])
    if not _read_exact(requests, memoryview(spec_bytes)):
        return
    spec = json.loads(spec_bytes)
    np.seterr(all="ignore")  # non-finite results are reported by value, not by warnings
    try:
        program = _Program(spec)
    except ProgramRejected as rejected:
        reply(LOAD_ERROR, line=rejected.line, message=str(rejected))
        return
    signal.signal(signal.SIGALRM, program.on_alarm)
    _apply_limits(int(spec["memory_mb"]), keep_fds=5)
    os.dup2(0, 2)  # from here on, stderr is /dev/null too
    sys.setrecursionlimit(max(200, int(spec.get("recursion_limit", 1000))))
    try:
        program.load()
    except BaseException as error:  # noqa: BLE001 - a failing top level is the program's error
        status, _, line, message = program.explain(error)
        reply(LOAD_ERROR, line=line, message=f"while loading the program: {message}")
        return
    reply(OK)
    view = memoryview(program.buffer).cast("B")
    while _read_exact(requests, view):
        reply(*program.call())


# ----------------------------------------------------------------------------- the parent


class RewardProgramError(RuntimeError):
    """A call of a reward program failed: an exception, a NaN/inf or non-number result, a
    timeout, or a crashed sandbox. ``kind`` says which and ``line`` where (0: unknown)."""

    def __init__(self, kind: str, message: str, line: int = 0, filename: str = DEFAULT_FILENAME):
        self.kind, self.message, self.line, self.filename = kind, message, line, filename
        super().__init__(f"{filename}: {message}")


class Sandbox:
    """One reward program in its own limited process; :meth:`call` evaluates it.

    The caller writes the state into :attr:`values` (through :meth:`field`, or in the
    order of ``fields`` followed by the action and the observation), then calls
    :meth:`call`. The child starts on the first call. After a crash or a hard timeout it
    is restarted on the next call; after ``max_restarts`` crashes in a row the program is
    given up on and every call fails at once.

    Args:
        source: the program text.
        fields: ``(path, shape)`` of every name ``self`` exposes, as the env's state source lists them.
        action_shape, obs_shape: shapes of the call's ``action`` and ``obs`` arguments.
        filename: how messages name the program (its path, usually).
        timeout_s: time limit of one call (and of loading the program).
        memory_mb: address space the program may allocate beyond what numpy already maps.
        allowed_private: the ``_``-names among ``fields`` (``_get_pos_goal``, ...).
    """

    def __init__(self, source: str, fields: Sequence[Field], action_shape: Sequence[int], obs_shape: Sequence[int], *,
                 filename: str = DEFAULT_FILENAME, timeout_s: float = 1.0, memory_mb: int = 512,
                 allowed_private: Iterable[str] = (), max_restarts: int = 3, startup_timeout_s: float = 60.0):  # fmt: skip
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if not memory_mb >= 16:
            raise ValueError(f"memory_mb must be at least 16, got {memory_mb!r}")
        self.filename = filename
        self.fields = [(path, tuple(int(n) for n in shape)) for path, shape in fields]
        self.allowed_private = sorted(set(allowed_private))
        self.info = check_source(source, filename, self.allowed_private)
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.max_restarts = int(max_restarts)
        self._spec = {
            "source": source, "filename": filename, "timeout_s": self.timeout_s, "memory_mb": int(memory_mb),
            "allowed_private": self.allowed_private, "fields": self.fields,
            "action_shape": [int(n) for n in action_shape], "obs_shape": [int(n) for n in obs_shape],
        }  # fmt: skip
        self._offsets: dict[str, tuple[int, tuple[int, ...]]] = {}
        offset = 0
        for path, shape in [*self.fields, ("action", tuple(action_shape)), ("obs", tuple(obs_shape))]:
            self._offsets[path] = (offset, tuple(shape))
            offset += field_size(shape)
        self.values = np.zeros(offset)  # the request: what the next call will see
        self._request = memoryview(self.values).cast("B")
        self._process: subprocess.Popen | None = None
        self._failures_in_a_row = 0
        self._given_up: str | None = None
        self.starts = 0

    def field(self, path: str) -> np.ndarray:
        """A writable view of one field of :attr:`values` (``"action"`` and ``"obs"`` included)."""
        offset, shape = self._offsets[path]
        return self.values[offset : offset + field_size(shape)].reshape(shape)

    # --- lifecycle

    def _start(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", "LC_ALL": "C.UTF-8"}  # fmt: skip
        self.starts += 1
        process = subprocess.Popen(
            [sys.executable, "-I", "-B", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True,
            start_new_session=True,  # a Ctrl-C meant for training does not kill the sandbox mid-call
        )  # fmt: skip
        self._process = process
        self._finalizer = weakref.finalize(self, _kill, process)
        spec = json.dumps(self._spec).encode()
        try:
            _write_all(process.stdin.fileno(), struct.pack("<I", len(spec)) + spec)
            status, _, line, message = self._read_reply(self.startup_timeout_s)
        except RewardProgramError as error:
            stderr = self._stop(read_stderr=True)
            detail = f": {stderr.strip().splitlines()[-1]}" if stderr and stderr.strip() else ""
            raise RewardProgramError("crash", f"the sandbox process failed to start ({error.message}){detail}") from None
        except BrokenPipeError:
            stderr = self._stop(read_stderr=True)
            raise RewardProgramError("crash", f"the sandbox process exited at start: {stderr.strip()[-500:]}") from None
        if status != OK:
            self._stop()
            # A program that cannot load will not load next time either.
            self._given_up = message
            raise RewardProgramError("load", message, line, self.filename)
        process.stderr.close()  # the child now writes nothing there

    def _stop(self, read_stderr: bool = False) -> str:
        process, self._process = self._process, None
        if process is None:
            return ""
        _kill(process)
        text = ""
        if read_stderr and process.stderr is not None:
            try:
                text = process.stderr.read().decode("utf-8", "replace")
            except (OSError, ValueError):
                pass
        for stream in (process.stdin, process.stdout, process.stderr):
            try:
                if stream is not None:
                    stream.close()
            except (OSError, ValueError):
                pass
        return text

    def close(self) -> None:
        """Stop the child process (a later call starts a new one)."""
        self._stop()

    # --- calls

    def call(self) -> float:
        """Evaluate the program on :attr:`values`; raise :class:`RewardProgramError` on any failure."""
        if self._given_up is not None:
            raise RewardProgramError("given-up", self._given_up, 0, self.filename)
        if self._process is None:
            self._start()
        process = self._process
        try:
            _write_all(process.stdin.fileno(), self._request)
            status, value, line, message = self._read_reply(self.timeout_s + max(1.0, self.timeout_s))
        except (BrokenPipeError, RewardProgramError) as error:
            self._stop()
            self._failures_in_a_row += 1
            if isinstance(error, RewardProgramError) and error.kind == "timeout":
                message = (f"no answer within {self.timeout_s + max(1.0, self.timeout_s):g} s (stuck inside a numpy or "
                           "builtin call?); the sandbox process was killed and will be restarted")  # fmt: skip
                kind = "timeout"
            else:
                code = process.wait()
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                message, kind = f"the sandbox process died during the call ({how}); it will be restarted", "crash"
            if self._failures_in_a_row >= self.max_restarts:
                self._given_up = f"{message}; given up after {self._failures_in_a_row} failures in a row"
                message = self._given_up
            raise RewardProgramError(kind, message, 0, self.filename) from None
        self._failures_in_a_row = 0
        if status != OK:
            raise RewardProgramError(_KINDS.get(status, "exception"), message, line, self.filename)
        return value

    def _read_reply(self, timeout_s: float) -> tuple[int, float, int, str]:
        fd = self._process.stdout.fileno()
        data = b""
        deadline = time.monotonic() + timeout_s
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        need = _REPLY.size
        while len(data) < need:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(max(1, int(remaining * 1000))):
                if time.monotonic() >= deadline:
                    raise RewardProgramError("timeout", "no reply")
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RewardProgramError("crash", "the sandbox process closed its pipe")
            data += chunk
            if len(data) >= _REPLY.size:
                length = _REPLY.unpack_from(data)[3]
                if not 0 <= length <= MAX_MESSAGE:
                    raise RewardProgramError("crash", "malformed reply from the sandbox process")
                need = _REPLY.size + length
        status, value, line, length = _REPLY.unpack_from(data)
        return status, value, line, data[_REPLY.size : _REPLY.size + length].decode("utf-8", "replace")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view) :]


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            process.kill()
        except OSError:
            pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


# ----------------------------------------------------------------------------- benchmark


def _bench(calls: int = 5000) -> None:
    """Per-call cost of the sandbox on a published-style program (µs per call)."""
    source = (
        "import numpy as np\n"
        "def compute_dense_reward(self, action, obs) -> float:\n"
        "    reach = np.linalg.norm(self.robot.ee_position - self.obj1.position)\n"
        "    place = np.linalg.norm(self.obj1.position - self.goal_position)\n"
        "    return -reach - place - 0.01 * np.square(action).sum()\n"
    )
    fields = [("robot.ee_position", (3,)), ("robot.gripper_openness", ()), ("obj1.position", (3,)),
              ("obj1.quaternion", (4,)), ("goal_position", (3,))]  # fmt: skip
    sandbox = Sandbox(source, fields, (4,), (39,))
    sandbox.values[:] = np.random.default_rng(0).normal(size=sandbox.values.shape)
    started = time.perf_counter()
    sandbox.call()
    print(f"start: {1e3 * (time.perf_counter() - started):.0f} ms")
    for _ in range(200):
        sandbox.call()
    started = time.perf_counter()
    for _ in range(calls):
        sandbox.call()
    per_call = (time.perf_counter() - started) / calls
    sandbox.close()
    buffer = np.random.default_rng(0).normal(size=sum(field_size(s) for _, s in fields) + 4 + 39)
    namespace = build_namespace(build_modules({"numpy"}))
    exec(compile(source, "<bench>", "exec"), namespace)
    function, view = namespace[ENTRY_POINT], build_views(fields, buffer)
    action, obs = buffer[-43:-39], buffer[-39:]
    started = time.perf_counter()
    for _ in range(calls):
        function(view, action, obs)
    in_process = (time.perf_counter() - started) / calls
    print(f"sandboxed call: {1e6 * per_call:.1f} µs; the same program in-process: {1e6 * in_process:.1f} µs; "
          f"overhead {1e6 * (per_call - in_process):.1f} µs per call ({calls} calls)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bench"]:
        _bench(int(sys.argv[2]) if len(sys.argv) > 2 else 5000)
    else:
        _worker_main()

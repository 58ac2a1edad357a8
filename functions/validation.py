"""Validation of an uploaded source against the handler that will be called.

Everything here is pure: bytes in, a `ValidatedSource` or a `SourceRejected`/`InvalidInput` out.
"""

from __future__ import annotations

import ast
import posixpath
import re
from dataclasses import dataclass

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kubefunction.errors import InvalidInput

from .artifacts import SourceRejected, archive_kind, read_members
from .conventions import CONVENTIONS
from .models import Mode
from .requirements import check_requirements

HANDLER_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
ARCHIVE_DEFAULT_HANDLER = "handler.handle"


@dataclass(frozen=True)
class ValidatedSource:
    members: dict[str, bytes]
    handler: str
    mode: str
    requirements: str
    convention: str = ""


def _parse_python(members: dict[str, bytes]) -> dict[str, ast.Module]:
    trees = {}
    for path, content in members.items():
        if not path.endswith(".py"):
            continue
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SourceRejected(f"{path} is not UTF-8 text: {exc}") from exc
        try:
            trees[path] = ast.parse(text, filename=path)
        except SyntaxError as exc:
            raise SourceRejected(
                f"syntax error in {path}, line {exc.lineno}: {exc.msg}"
            ) from exc
        except (ValueError, RecursionError, MemoryError) as exc:
            raise SourceRejected(f"{path} cannot be parsed: {exc}") from exc
    return trees


def _module_file(module: str, trees: dict[str, ast.Module]) -> str | None:
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if candidate in trees:
            return candidate
    return None


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _defines(handler: str, trees: dict[str, ast.Module]) -> bool:
    module, _, attr = handler.rpartition(".")
    path = _module_file(module, trees)
    return bool(path) and attr in _top_level_names(trees[path])


def _resolve(filename: str, handler: str | None, mode: str | None,
             trees: dict[str, ast.Module]) -> tuple[str, str]:
    single = archive_kind(filename) == "py"
    stem = posixpath.basename(filename)[:-3] if single else None
    if handler and single and "." not in handler and mode != Mode.SCRIPT:
        handler = f"{stem}.{handler}"  # "handle" in hello.py means hello.handle
    if mode is None and handler is None:
        default = f"{stem}.handle" if single else ARCHIVE_DEFAULT_HANDLER
        if _defines(default, trees):
            return default, Mode.HANDLER
        if single:
            return stem, Mode.SCRIPT  # the seed's style: a plain script
        raise InvalidInput(
            f"the archive has no '{ARCHIVE_DEFAULT_HANDLER}' function; name the handler "
            "('module.function') or choose script mode.", field="handler")
    mode = mode or Mode.HANDLER
    if handler is None:
        handler = stem if mode == Mode.SCRIPT and single else (
            f"{stem}.handle" if single else ARCHIVE_DEFAULT_HANDLER)
    return handler, mode


def _convention_handler(filename: str, handler: str | None, convention: str,
                        trees: dict[str, ast.Module]) -> str:
    """The handler under a convention: the one named (`f` in f.py's upload means `stem.f`), or
    the first of the convention's entry points the upload defines."""
    single = archive_kind(filename) == "py"
    stem = posixpath.basename(filename)[:-3] if single else None
    if handler:
        return f"{stem}.{handler}" if single and "." not in handler else handler
    info = CONVENTIONS[convention]
    modules = (stem,) if single else info.modules
    tried = [f"{module}.{entry}" for module in modules for entry in info.entry_points]
    for candidate in tried:
        if _defines(candidate, trees):
            return candidate
    raise InvalidInput(
        f"no handler found for the {convention} convention (looked for {', '.join(tried)}); "
        "name it ('module.function').", field="handler")


def with_implied(requirements: str, convention: str) -> str:
    """`requirements` plus what the convention's platform provides its functions (its own
    package) and the upload does not name already, under a comment saying why."""
    info = CONVENTIONS.get(convention)
    if info is None or not info.requires:
        return requirements
    named = {canonicalize_name(req.name) for req in check_requirements(requirements)}
    missing = [req for req in info.requires
               if canonicalize_name(Requirement(req).name) not in named]
    if not missing:
        return requirements
    added = f"# added by the {convention} convention (its platform provides it)\n" + \
        "\n".join(missing)
    return f"{requirements}\n{added}" if requirements else added


def validate_source(*, filename: str, data: bytes, handler: str | None = None,
                    mode: str | None = None, convention: str = "") -> ValidatedSource:
    """Check an upload and its handler; return its members, handler, mode and requirements
    (with what the `convention` implies)."""
    if mode is not None and mode not in Mode.values:
        raise InvalidInput(f"mode must be one of {', '.join(Mode.values)}.", field="mode")
    if convention and convention not in CONVENTIONS:
        raise InvalidInput(f"convention must be one of {', '.join(sorted(CONVENTIONS))} (or "
                           "blank for ours).", field="convention")
    if convention and mode == Mode.SCRIPT:
        raise InvalidInput(f"the {convention} convention calls a handler: script mode does not "
                           "apply.", field="mode")
    if handler is not None and not HANDLER_PATTERN.match(handler):
        raise InvalidInput(
            f"'{handler}' is not a dotted Python name like 'module.function'.", field="handler")
    members = read_members(filename, data)
    trees = _parse_python(members)
    if not trees:
        raise SourceRejected("the upload holds no Python (.py) file.")
    if convention:
        handler, mode = _convention_handler(filename, handler, convention, trees), Mode.HANDLER
    else:
        handler, mode = _resolve(filename, handler, mode, trees)
    if mode == Mode.SCRIPT:
        if not _module_file(handler, trees):
            raise InvalidInput(f"script module '{handler}' is not in the upload.", field="handler")
    elif "." not in handler or not _defines(handler, trees):
        module = handler.rpartition(".")[0]
        where = "is not in the upload" if not _module_file(module, trees) else "does not define it"
        raise InvalidInput(
            f"handler '{handler}' not found: module '{module}' {where}.", field="handler")
    requirements = members.get("requirements.txt", b"")
    try:
        requirements_text = requirements.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise SourceRejected(f"requirements.txt is not UTF-8 text: {exc}") from exc
    check_requirements(requirements_text)
    requirements_text = with_implied(requirements_text, convention)
    return ValidatedSource(members=members, handler=handler, mode=mode,
                           requirements=requirements_text, convention=convention)

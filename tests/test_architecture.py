"""The house rules, checked so they cannot drift: which room imports which, a core that imports no app,
one error family, no parameter list over twelve, and docs that stay inside the repository.

Imports are read from the source (every `import` and `from` statement, including those inside
functions), so a lazy import that crosses a boundary is caught as well as a top-level one.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"export": "winclip.export", "runtime": "winclip.runtime", "calibration": "winclip.calibration",
            "serve": "winclip.serve", "benchmarks": "winclip.benchmarks"}
LINE = "winclip.runtime.line"
SERVE = "winclip.serve"

# room -> rooms it must never import (a room is a module-name prefix; the longest prefix decides)
FORBIDDEN = {
    "winclip.runtime": (LINE, "winclip.calibration", "winclip.export", SERVE, "winclip.benchmarks", "torch",
                        "open_clip", "torchvision"),
    LINE: ("winclip.calibration", "winclip.export", SERVE, "winclip.benchmarks", "torch", "open_clip", "torchvision"),
    "winclip.calibration": (LINE, "winclip.export", SERVE, "winclip.benchmarks", "torch", "open_clip", "torchvision"),
    # export writes a Triton repository with serve.repository (--triton-repo), and nothing else of serve
    "winclip.export": (LINE, "winclip.benchmarks", "winclip.calibration.profiles", "winclip.calibration.evaluation",
                       f"{SERVE}.server", f"{SERVE}.cli", f"{SERVE}.process"),
    SERVE: (LINE, "winclip.calibration", "winclip.export", "winclip.benchmarks", "torch", "open_clip", "torchvision"),
}


def modules() -> dict[str, Path]:
    """Every module of the project by its import name."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of everything the module imports, anywhere in it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}
    return out


def room(name: str) -> str | None:
    owners = [r for r in FORBIDDEN if name == r or name.startswith(r + ".")]
    return max(owners, key=len) if owners else None


def test_every_room_imports_only_what_it_may():
    problems = []
    for name, path in modules().items():
        owner = room(name)
        if owner is None:
            continue
        for imported in imports_of(name, path):
            for banned in FORBIDDEN[owner]:
                if imported == banned or imported.startswith(banned + "."):
                    problems.append(f"{name} imports {imported} ({owner} must not import {banned})")
    assert not problems, "\n".join(sorted(problems))


def test_no_module_imports_itself_round_a_circle():
    """A circle (a <- b <- a, lazy imports too) means two modules that are one: split what both need out below
    them. Packages' __init__ files are left out (they gather their modules; a module importing its package's
    table is no circle of code)."""
    graph = {name: {i for i in imports_of(name, path) if i != name}
             for name, path in modules().items() if path.name != "__init__.py"}
    graph = {name: targets & graph.keys() for name, targets in graph.items()}
    circles, done = [], set()

    def walk(name, trail):
        if name in trail:
            circles.append(" -> ".join(trail[trail.index(name):] + [name]))
            return
        if name in done:
            return
        for target in sorted(graph[name]):
            walk(target, trail + [name])
        done.add(name)

    for name in sorted(graph):
        walk(name, [])
    assert not circles, "\n".join(circles)


def test_the_walk_sees_every_room():
    """The check above must not pass by finding nothing."""
    names = set(modules())
    for expected in ("winclip.runtime.detector", "winclip.runtime.backends.onnxruntime", "winclip.runtime.line.cli",
                     "winclip.runtime.line.sinks.mqtt", "winclip.runtime.line.sources.stream",
                     "winclip.calibration.engines.build", "winclip.calibration.profiles.setup",
                     "winclip.calibration.evaluation.metrics", "winclip.export.exporter",
                     "winclip.runtime.backends.triton", "winclip.serve.server", "winclip.serve.repository"):
        assert expected in names
    assert "winclip.runtime.line.sinks.base" in imports_of("winclip.runtime.line.sinks.mqtt",
                                                           modules()["winclip.runtime.line.sinks.mqtt"])


MOST_PARAMETERS = 12


def test_no_parameter_list_is_longer_than_twelve():
    """A long list is an options object waiting to be named (a command takes **values and builds one). Counted:
    positional and keyword-only parameters, not self/cls, *args or **kwargs."""
    too_long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
                count = len(names) - (names[:1] in (["self"], ["cls"]))
                if count > MOST_PARAMETERS:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({count} parameters)")
    assert not too_long, "\n".join(too_long)

def test_every_folder_of_modules_is_a_listed_package():
    """A folder without __init__.py, or missing from pyproject's packages, would be left out of the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    folders = {path.parent for path in modules().values()}
    problems = []
    for folder in sorted(folders):
        top = folder.relative_to(ROOT).parts
        name = ".".join((PACKAGES[top[0]], *top[1:]))
        if not (folder / "__init__.py").is_file():
            problems.append(f"{folder.relative_to(ROOT)} has no __init__.py")
        if name not in listed:
            problems.append(f"{name} is not in pyproject.toml's packages")
    assert not problems, "\n".join(problems)


def test_importing_the_core_loads_no_app_and_no_quantization_tools():
    code = ("import sys, winclip.runtime\n"
            "from winclip.runtime import Detector, FrameResult\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('winclip.runtime.line', 'winclip.calibration', "
            "'onnxruntime.quantization', 'onnx.', 'torch', 'winclip.serve', 'tritonclient', 'pytriton')) "
            "or m == 'onnx')\n"
            "sys.exit(f'imported {bad}' if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_error_of_ours_is_a_winclip_error():
    from winclip.runtime.errors import WinclipError

    classes = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and re.search(r"(Error|Failed|Missing)$", node.name):
                classes.append((name, node.name))
    assert len(classes) >= 15
    import builtins

    shadowing = [f"{module}.{cls}" for module, cls in classes if hasattr(builtins, cls)]
    assert not shadowing, f"error classes named like a builtin (an `except` would catch the wrong one): {shadowing}"
    import importlib

    for module, cls in classes:
        try:
            obj = getattr(importlib.import_module(module), cls)
        except ImportError:  # a module of an extra that is not installed here
            continue
        assert issubclass(obj, WinclipError), f"{module}.{cls} is not a WinclipError"


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def test_no_file_names_a_path_outside_the_repository():
    # built from pieces, so that this file does not name what it looks for
    pattern = re.compile(r"\.\./" + "shared" + "|" + "shared" + "/reference")
    hits = [str(p.relative_to(ROOT)) for p in tracked_files()
            if p.suffix in (".py", ".md", ".toml", ".json", ".txt", ".cfg", "") and pattern.search(
                p.read_text(encoding="utf-8", errors="replace"))]
    assert not hits, hits


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.name)
def test_every_link_of_the_docs_resolves_inside_the_repository(doc):
    text = doc.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            headings = {_slug(h) for h in re.findall(r"^#+\s+(.*)$", resolved.read_text(encoding="utf-8"), re.M)}
            assert anchor in headings, f"{doc.name}: no heading #{anchor} in {resolved.name}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^a-z0-9 -]", "", text).replace(" ", "-")


def test_the_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    assert (ROOT / "LICENSE").is_file()

"""What a Dockerfile puts in its image, read without Docker: stages and their base images, the
`pip install` commands, the files COPY takes from the build context, and the modules the copied code
imports. Shared by the static image checks (test_docker.py, test_image_dependencies.py)."""

from __future__ import annotations

import ast
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

CONSTRAINTS = ROOT / "constraints.txt"
DOCKERFILES = sorted(ROOT.glob("*/Dockerfile"))
FIRST_PARTY = frozenset(p.parent.name for p in ROOT.glob("*/__init__.py"))


def dotenv() -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (ROOT / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[normalize(name)] = version.strip()
    return pins


@dataclass(frozen=True)
class PipInstall:
    """One `pip install` of a Dockerfile: its requirements (pinned from the lock where the command
    reads the pin with $(grep ...)), the index it uses and its flags."""

    requirements: tuple[str, ...]
    index_url: str | None = None
    no_deps: bool = False
    constrained: bool = False


@dataclass
class Stage:
    image: str
    installs: list[PipInstall] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)  # sources COPY takes from the build context


def logical_lines(text: str) -> Iterator[str]:
    """Dockerfile instructions with their continuation lines joined, comments dropped."""
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
        else:
            yield current + line
            current = ""


def requirement(word: str, pins: dict[str, str]) -> str:
    """A requirement as pip gets it; `name==$(grep '^name==' .../constraints.txt | cut ...)` is the pin."""
    if "$(" not in word:
        return word
    match = re.fullmatch(r"([\w.-]+)==\$\(grep '\^([\w.-]+)==' \S*constraints\.txt \| cut -d= -f3\)", word)
    if not match or match.group(1) != match.group(2):
        raise ValueError(f"cannot read the pin of {word!r}")
    return f"{match.group(1)}=={pins[normalize(match.group(1))]}"


def parse_pip_install(words: list[str], pins: dict[str, str]) -> PipInstall:
    requirements, index_url, no_deps, constrained = [], None, False, False
    options = iter(words)
    for word in options:
        if word in ("--no-cache-dir", "-q", "--quiet"):
            continue
        if word in ("-c", "--constraint"):
            next(options)
            constrained = True
        elif word in ("-i", "--index-url"):
            index_url = next(options)
        elif word == "--no-deps":
            no_deps = True
        elif word.startswith("-"):
            raise ValueError(f"pip option {word} is new to this check: teach parse_pip_install what it means")
        else:
            requirements.append(requirement(word, pins))
    return PipInstall(tuple(requirements), index_url, no_deps, constrained)


def pip_installs(command: str, pins: dict[str, str]) -> Iterator[PipInstall]:
    for part in re.split(r"&&|;", command):
        words = shlex.split(part)
        for i, word in enumerate(words):
            if (word == "pip" or word.endswith("/pip")) and words[i + 1 : i + 2] == ["install"]:
                yield parse_pip_install(words[i + 2 :], pins)


def copy_sources(rest: str) -> list[str]:
    """The build-context sources of a COPY (none for COPY --from=stage)."""
    words = rest.split()
    if any(w.startswith("--from") for w in words):
        return []
    return [w for w in words[:-1] if not w.startswith("--")]


def stages(dockerfile: Path) -> list[Stage]:
    """The Dockerfile's stages, base images expanded with .env (compose passes them as build args)."""
    env, pins, args, found = dotenv(), lock(), {}, []
    for line in logical_lines(dockerfile.read_text()):
        instruction, _, rest = line.partition(" ")
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            args[name] = env.get(name, default)
        elif instruction == "FROM":
            found.append(Stage(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])))
        elif instruction == "RUN" and found:
            found[-1].installs.extend(pip_installs(rest, pins))
        elif instruction == "COPY" and found:
            found[-1].copied.extend(copy_sources(rest))
    return found


def copied_packages(dockerfile: Path) -> set[str]:
    """First-party packages (top-level folders with __init__.py) the image's code is copied from."""
    tops = {source.strip("/").split("/")[0] for stage in stages(dockerfile) for source in stage.copied}
    return tops & FIRST_PARTY


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module a file imports, at any depth of the file (lazy imports count)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
    return found


def imports_of_image(dockerfile: Path) -> set[str]:
    """Every module the image's own packages import, following first-party imports into the shared
    package (only the modules of `common` it uses, not all of them)."""
    own = copied_packages(dockerfile) - {"common"}
    pending = [p for package in own for p in ROOT.joinpath(package).rglob("*.py")]
    seen: set[Path] = set()
    modules: set[str] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            modules.add(name)
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                target = module_file(".".join(parts[:depth]))
                if parts[0] in FIRST_PARTY and target:
                    pending.append(target)
    return modules


def third_party_tops(modules: set[str]) -> set[str]:
    tops = {m.split(".")[0] for m in modules if m}
    return {t for t in tops if t not in FIRST_PARTY and t not in sys.stdlib_module_names and t != "__future__"}

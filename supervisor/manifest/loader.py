"""Read a manifest directory into a ManifestSet, or raise ManifestError with every problem.

`load_dir` (the directory's *.yaml / *.yml files, `is_manifest_file`) and `load_text` (one
string) validate every document against manifest/schema.py and keep each one's `Origin`
(file and the line of every key). Each problem is one line, `file:LINE: what is wrong (fix:
how to fix)`; lines come from the YAML nodes composed with a SafeLoader, which also guards
against alias bombs; the MAX_* bounds cap what a directory may cost. Comparing two sets of
models is core/planner.py's `diff`, over the rendered DesiredModels.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from supervisor.errors import ManifestError
from supervisor.manifest.schema import KINDS, ModelManifest, ProfileManifest, field_description, model_at

# Bounds, so a hostile or runaway manifest directory costs the loop thread well under a second
# or two and a few MiB (a model manifest is a few hundred bytes; PyYAML composes ~1 MiB/s here).
MAX_FILE_BYTES = 256 * 1024
MAX_FILES = 1000             # manifest files per directory
MAX_TOTAL_BYTES = 2 * 1024 * 1024
MAX_ALIASES = 100            # per document
MAX_NODES = 100_000          # per document, counted with aliases expanded
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Origin:
    """Where a document came from; `lines` maps dotted key paths (server.port, server.extra_args.1) to lines."""

    file: str
    line: int
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)

    def line_of(self, key: str = "") -> int:
        """The line of `key` or of its nearest enclosing key, else of the document."""
        parts = key.split(".") if key else []
        while parts:
            line = self.lines.get(".".join(parts))
            if line is not None:
                return line
            parts.pop()
        return self.line

    def at(self, key: str = "") -> str:
        """'file:line' of `key` (see line_of)."""
        return f"{self.file}:{self.line_of(key)}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class ManifestSet:
    models: Mapping[str, ModelManifest] = field(default_factory=dict)
    profiles: Mapping[str, ProfileManifest] = field(default_factory=dict)
    model_origins: Mapping[str, Origin] = field(default_factory=dict)
    profile_origins: Mapping[str, Origin] = field(default_factory=dict)


def is_manifest_file(path: Path) -> bool:
    """*.yaml / *.yml, not hidden, not an editor's temp or backup file."""
    name = path.name
    if name.startswith(".") or name.endswith("~") or name.endswith(".swp"):
        return False
    return path.suffix in SUFFIXES


def load_dir(path: Path | str) -> ManifestSet:
    """Every manifest in `path` (not recursive); ManifestError lists every problem found."""
    directory = Path(path)
    if not directory.is_dir():
        raise ManifestError(
            [f"{directory}: not a directory of manifests (fix: create it or point to the right one)"]
        )
    files = sorted(p for p in directory.iterdir() if is_manifest_file(p) and p.is_file())
    if len(files) > MAX_FILES:
        raise ManifestError([f"{directory}: {len(files)} manifest files, more than {MAX_FILES}"
                             " (fix: remove the ones that are not models or profiles; nothing was read)"])
    problems: list[_Problem] = []
    docs: list[_Doc] = []
    budget = MAX_TOTAL_BYTES
    for file in files:
        try:
            budget -= file.stat().st_size
        except OSError:
            pass
        if budget < 0:
            raise ManifestError([f"{file}:1: the manifests in {directory} add up to more than {MAX_TOTAL_BYTES}"
                                 " bytes (fix: remove what is not a model or profile; nothing was applied)"])
        docs.extend(_load_file(file, problems))
    result = _assemble(docs, problems)
    if problems:
        problems.sort(key=lambda p: (p.file, p.line))
        raise ManifestError([str(p) for p in problems])
    return result


def load_text(text: str, *, name: str = "<string>") -> ManifestSet:
    """Like load_dir for one file's text (for tests and `validate -`)."""
    problems: list[_Problem] = []
    docs = _load_text(text, name, problems)
    result = _assemble(docs, problems)
    if problems:
        problems.sort(key=lambda p: (p.file, p.line))
        raise ManifestError([str(p) for p in problems])
    return result


# -- internals ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {' '.join(self.text.split())}"  # always one line


@dataclass(frozen=True)
class _Doc:
    manifest: ModelManifest | ProfileManifest
    origin: Origin


class _Bomb(yaml.YAMLError):
    def __init__(self, line: int, text: str) -> None:
        super().__init__(text)
        self.line = line
        self.text = text


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts aliases per document while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_document(self) -> yaml.Node | None:
        self.aliases = 0
        return super().compose_document()

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]  # types-PyYAML leaves Parser.peek_event unannotated
                raise _Bomb(
                    mark.line + 1,
                    f"more than {MAX_ALIASES} aliases in one document"
                    " (fix: write the values out; alias-heavy YAML is refused as a possible YAML bomb)",
                )
        # The stub says `index: int`; PyYAML also passes None (the document root, a mapping key) and the key's node (a mapping value).
        return super().compose_node(parent, index)  # type: ignore[arg-type]


def _load_file(file: Path, problems: list[_Problem]) -> list[_Doc]:
    name = str(file)
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            problems.append(_Problem(name, 1, f"file is {size} bytes, over the {MAX_FILE_BYTES} byte limit"
                                     " (fix: split it into smaller files; a manifest is a few hundred bytes)"))
            return []
        with file.open("rb") as f:  # bounded: a size that lies (procfs, a growing file) is never read in full
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        problems.append(_Problem(name, 1, f"cannot read the file: {e.strerror or e} (fix: check its permissions)"))
        return []
    if len(raw) > MAX_FILE_BYTES:  # it grew between stat and read
        problems.append(_Problem(name, 1, f"file is over the {MAX_FILE_BYTES} byte limit (fix: split it)"))
        return []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        problems.append(_Problem(name, line, f"not UTF-8 text (byte {e.start}) (fix: save the file as UTF-8)"))
        return []
    return _load_text(text, name, problems)


def _load_text(text: str, name: str, problems: list[_Problem]) -> list[_Doc]:
    docs: list[_Doc] = []
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:  # a character YAML does not allow, checked up front
        line = text[: e.position].count("\n") + 1
        problems.append(_Problem(name, line, f"character {e.character!r} is not allowed in YAML"
                                 " (fix: remove it or quote it with an escape)"))
        return docs
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            line = node.start_mark.line + 1
            size = _expanded_size(node)
            if size is None:
                problems.append(_Problem(name, line, "a recursive alias (an anchor used inside itself)"
                                         " (fix: remove the alias)"))
                continue
            if size > MAX_NODES:
                problems.append(_Problem(name, line, f"document expands to more than {MAX_NODES} values"
                                         " through aliases (fix: write it out; this looks like a YAML bomb)"))
                continue
            try:
                data = loader.construct_document(node)
            except yaml.MarkedYAMLError as e:
                problems.append(_syntax_problem(name, e))
                continue
            except Exception as e:  # noqa: BLE001
                # PyYAML's constructors raise assorted builtin errors on odd explicit tags and values
                # (`!!int` alone: IndexError; a date 2024-13-45: ValueError); each is a bad value here.
                problems.append(_Problem(name, line, f"a value cannot be read: {e} (fix: quote it as a string"
                                         " or correct it)"))
                continue
            if data is None:  # an empty document, e.g. after a trailing ---
                continue
            doc = _validate(data, node, name, problems)
            if doc is not None:
                docs.append(doc)
    except _Bomb as e:
        problems.append(_Problem(name, e.line, e.text))
    except yaml.MarkedYAMLError as e:
        problems.append(_syntax_problem(name, e))
    except yaml.reader.ReaderError as e:
        line = text[: e.position].count("\n") + 1
        problems.append(_Problem(name, line, f"character {e.character!r} is not allowed in YAML"
                                 " (fix: remove it or quote it with an escape)"))
    except yaml.YAMLError as e:
        problems.append(_Problem(name, 1, f"YAML error: {e} (fix: correct the YAML)"))
    except RecursionError:
        problems.append(_Problem(name, 1, "YAML nested too deeply (fix: flatten the document)"))
    finally:
        loader.dispose()
    return docs


def _syntax_problem(name: str, e: yaml.MarkedYAMLError) -> _Problem:
    mark = e.problem_mark or e.context_mark
    line = mark.line + 1 if mark is not None else 1
    what = ", ".join(str(x) for x in (e.context, e.problem) if x)
    return _Problem(name, line, f"YAML syntax error: {what} (fix: correct the YAML at this line)")


def _expanded_size(root: yaml.Node) -> int | None:
    """Number of nodes with aliases expanded (None when an alias is recursive); stops past MAX_NODES."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int | None:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            return None
        total = 1
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            active.add(key)
            children: list[yaml.Node] = (
                list(node.value) if isinstance(node, yaml.SequenceNode)
                else [n for pair in node.value for n in pair]
            )
            for child in children:
                s = size(child)
                if s is None:
                    return None
                total += s
                if total > MAX_NODES:
                    break
            active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _line_map(node: yaml.Node, prefix: str = "", out: dict[str, int] | None = None,
              depth: int = 0) -> dict[str, int]:
    """Dotted key path -> 1-based line, for every key and sequence item (keys at their key's line)."""
    out = {} if out is None else out
    if depth > 50:
        return out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                path = f"{prefix}.{k.value}" if prefix else str(k.value)
                out.setdefault(path, k.start_mark.line + 1)
                _line_map(v, path, out, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}.{i}" if prefix else str(i)
            out.setdefault(path, item.start_mark.line + 1)
            _line_map(item, path, out, depth + 1)
    return out


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _validate(data: object, node: yaml.Node, name: str, problems: list[_Problem]) -> _Doc | None:
    doc_line = node.start_mark.line + 1
    lines = _line_map(node)
    origin = Origin(name, doc_line, lines)
    if not isinstance(data, dict):
        problems.append(_Problem(name, doc_line, f"a document must be a mapping, this one is a {type(data).__name__}"
                                 " (fix: start it with 'kind: model' or 'kind: profile')"))
        return None
    kind = data.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        if kind is None:
            text = "missing key 'kind' (fix: add 'kind: model' or 'kind: profile')"
            line = doc_line
        else:
            close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            text = f"unknown kind {kind!r} (fix: {hint}kind is one of model, profile)"
            line = lines.get("kind", doc_line)
        problems.append(_Problem(name, line, text))
        return None
    try:
        manifest = cls.model_validate(data)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            problems.append(_describe(cls, err, origin))
        return None
    return _Doc(manifest, Origin(name, lines.get("name", doc_line), lines))


def _describe(cls: type[BaseModel], err: Any, origin: Origin) -> _Problem:
    """One pydantic error as a file:line problem with a fix."""
    loc: tuple[Any, ...] = tuple(err["loc"])
    kind: str = err["type"]
    where = _dotted(loc)
    line = origin.line_of(where)
    if kind == "extra_forbidden":
        owner = model_at(cls, loc[:-1])
        allowed = sorted(owner.model_fields) if owner is not None else []
        key = str(loc[-1])
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        section = f" in {_dotted(loc[:-1])}" if len(loc) > 1 else ""
        text = f"unknown key '{key}'{section} (fix: {hint}allowed keys: {', '.join(allowed)})"
        return _Problem(origin.file, line, text)
    if kind == "missing":
        key = str(loc[-1])
        section = f" in {_dotted(loc[:-1])}" if len(loc) > 1 else ""
        desc = field_description(cls, loc)
        fix = f"add '{key}:' with {desc}" if desc else f"add '{key}:'"
        return _Problem(origin.file, line, f"missing required key '{key}'{section} (fix: {fix})")
    msg: str = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if "(fix:" in msg:  # our own validators say what and how; a section's validator names its keys
        leaf = bool(loc) and model_at(cls, loc) is None
        return _Problem(origin.file, line, f"{where}: {msg}" if leaf else msg)
    desc = field_description(cls, loc)
    value = err.get("input")
    got = ""
    if not isinstance(value, (dict, list)):
        shown = repr(value)
        got = f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    fix = f"set {where} to {desc}" if desc and where else "see docs/DESIGN.md"
    prefix = f"{where}: " if where else ""
    return _Problem(origin.file, line, f"{prefix}{msg}{got} (fix: {fix})")


def _alias_clash(m: ModelManifest, origin: Origin, models: Mapping[str, ModelManifest],
                 origins: Mapping[str, Origin]) -> _Problem | None:
    """The gateway routes by name or alias, so each must name one model."""
    for i, alias in enumerate(m.aliases):
        if alias == m.name or alias in m.aliases[:i]:
            return _Problem(origin.file, origin.line_of(f"aliases.{i}"),
                            f"alias '{alias}' of model '{m.name}' is repeated (fix: remove it)")
        for other, om in models.items():
            if alias == other or alias in om.aliases:
                return _Problem(origin.file, origin.line_of(f"aliases.{i}"),
                                f"alias '{alias}' of model '{m.name}' already names model '{other}' at"
                                f" {origins[other]} (fix: remove the alias or rename one of them)")
    for other, om in models.items():
        if m.name in om.aliases:
            return _Problem(origin.file, origin.line,
                            f"model name '{m.name}' is already an alias of model '{other}' at"
                            f" {origins[other]} (fix: rename the model or remove the alias)")
    return None


def _assemble(docs: list[_Doc], problems: list[_Problem]) -> ManifestSet:
    """Cross-document checks: unique names, aliases and ports, profiles that exist."""
    models: dict[str, ModelManifest] = {}
    profiles: dict[str, ProfileManifest] = {}
    model_origins: dict[str, Origin] = {}
    profile_origins: dict[str, Origin] = {}
    ports: dict[int, str] = {}
    for doc in docs:
        m, origin = doc.manifest, doc.origin
        if isinstance(m, ProfileManifest):
            if m.name in profiles:
                problems.append(_Problem(origin.file, origin.line, f"profile name '{m.name}' is already used at"
                                         f" {profile_origins[m.name]} (fix: rename one of them)"))
                continue
            profiles[m.name] = m
            profile_origins[m.name] = origin
            continue
        if m.name in models:
            problems.append(_Problem(origin.file, origin.line, f"model name '{m.name}' is already used at"
                                     f" {model_origins[m.name]} (fix: rename one of them)"))
            continue
        other = ports.get(m.server.port) if m.server.port is not None else None
        if other is not None:
            problems.append(_Problem(
                origin.file, origin.line_of("server.port"),
                f"port {m.server.port} of model '{m.name}' is already used by model '{other}' at"
                f" {model_origins[other].at('server.port')} (fix: give one of them another server.port)",
            ))
            continue
        taken = _alias_clash(m, origin, models, model_origins)
        if taken is not None:
            problems.append(taken)
            continue
        models[m.name] = m
        model_origins[m.name] = origin
        if m.server.port is not None:
            ports[m.server.port] = m.name
    for name, m in models.items():
        if m.profile != "auto" and m.profile not in profiles:
            origin = model_origins[name]
            close = difflib.get_close_matches(m.profile, list(profiles), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            known = ", ".join(sorted(profiles)) or "none defined"
            problems.append(_Problem(
                origin.file, origin.line_of("profile"),
                f"model '{name}' uses profile '{m.profile}', which does not exist"
                f" (fix: {hint}use auto or a defined profile: {known})",
            ))
    return ManifestSet(models, profiles, model_origins, profile_origins)

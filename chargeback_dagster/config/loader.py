"""Locate, read, interpolate and validate the chargeback YAML config (docs/configuration.md §1–§3)."""

from __future__ import annotations

import logging
import os
import re
import threading
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from dotenv import load_dotenv

from .fields import type_name
from .models import AppConfig
from .validate import validate

logger = logging.getLogger("chargeback_dagster.config")

CONFIG_ENV_VAR = "CHARGEBACK_CONFIG_FILE"
ENV_FILE_ENV_VAR = "CHARGEBACK_ENV_FILE"
_INTERPOLATION_RE = re.compile(r"\$\{([^}:]+)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """Loading failed. ``problems`` holds one line per problem; ``str()`` is the full message."""

    def __init__(self, problems: list[str] | str, *, validation: bool = True) -> None:
        if isinstance(problems, str):
            problems, validation = [problems], False
        self.problems: list[str] = list(problems)
        self.validation = validation
        message = "Config validation failed:\n" + "\n".join(self.problems) if validation else self.problems[0]
        super().__init__(message)


# --- YAML
class LineDict(dict):
    """A mapping that remembers the (1-based) line of itself and of each key."""

    line: int = 0
    key_lines: dict[Any, int]


class LineList(list):
    line: int = 0
    item_lines: list[int]


class _DuplicateKeyError(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


# Loader limits (docs/configuration.md §1): a real config stays far below them; hostile input (alias
# bombs, deep nesting, huge integers) fails fast instead of hanging or hitting Python's recursion/int limits.
MAX_NODES = 100_000  # YAML nodes counted with every alias expanded
MAX_DEPTH = 100  # nesting levels of mappings/sequences
MAX_INT_DIGITS = 100


class _LimitError(yaml.MarkedYAMLError):
    pass


class _LimitsComposer(yaml.composer.Composer):
    """Composer with the limits above, for either event source (libyaml or pure Python).

    Composing counts nodes with aliases expanded (``_sizes``: expanded size of each anchored node) and
    tracks depth, so a "billion laughs" document or 5,000 nested brackets stop at the limits above. Python
    composes from the events: libyaml's own composer recurses in C and crashes the process on deep nesting.
    """

    def _start_limits(self) -> None:
        self.anchors: dict[Any, yaml.Node] = {}
        self._depth = 0
        self._expanded = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._count(self._sizes.get(id(node), 1), mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _LimitError(problem=f"nesting deeper than {MAX_DEPTH} levels", problem_mark=mark)
        before = self._expanded
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, mark)
        if event.anchor is not None:  # depth first: what was counted meanwhile is this node, expanded
            self._sizes[id(node)] = self._expanded - before
        return node

    def _count(self, nodes: int, mark: yaml.Mark) -> None:
        self._expanded += nodes
        if self._expanded > MAX_NODES:
            raise _LimitError(problem=f"more than {MAX_NODES} nodes with aliases expanded", problem_mark=mark)


class _Loader(_LimitsComposer, yaml.SafeLoader):
    """Pure-Python SafeLoader with the limits, duplicate-key detection, line tracking, Decimal floats and
    string timestamps. Its messages are the documented ones (docs/configuration.md §1)."""

    def __init__(self, stream: str) -> None:
        yaml.SafeLoader.__init__(self, stream)
        self._start_limits()


_LOADERS: list[type] = [_Loader]
_FastLoader: type | None = None
if yaml.__with_libyaml__:  # PyYAML built with libyaml: its scanner and parser, ≈ 3× faster on a large file

    class _CLoader(_LimitsComposer, yaml.CSafeLoader):  # type: ignore[misc,name-defined]
        """The same loader over libyaml's events (scanner and parser in C; composing and constructing
        stay the Python code above)."""

        def __init__(self, stream: str) -> None:
            yaml.CSafeLoader.__init__(self, stream)  # type: ignore[attr-defined]
            self._start_limits()

    _FastLoader = _CLoader
    _LOADERS.append(_CLoader)


def _construct_mapping(loader: yaml.constructor.SafeConstructor, node: yaml.MappingNode) -> LineDict:
    # Keys are compared as text: validation uses str(key) (tenant names), so `true` and "True", `~` and
    # "None", `1` and "1" would otherwise merge silently and one entry would disappear.
    own_keys: set[str] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (dict, list)):  # unhashable key; reported below
            continue
        if str(key) in own_keys:
            raise _DuplicateKeyError(key, key_node.start_mark.line + 1)
        own_keys.add(str(key))
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError as exc:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
            ) from exc
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: yaml.constructor.SafeConstructor, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _construct_decimal(loader: yaml.constructor.SafeConstructor, node: yaml.ScalarNode) -> Decimal | float:
    """Floats keep their source text exactly (``0.1`` → ``Decimal('0.1')``)."""
    text = str(loader.construct_scalar(node)).replace("_", "").strip()
    lowered = text.lower()
    if lowered in (".inf", "+.inf"):
        return Decimal("Infinity")
    if lowered == "-.inf":
        return Decimal("-Infinity")
    if lowered == ".nan":
        return Decimal("NaN")
    try:
        return Decimal(text)
    except InvalidOperation:  # e.g. YAML 1.1 sexagesimal 1:30.5
        return Decimal(str(yaml.SafeLoader.construct_yaml_float(loader, node)))


def _construct_int(loader: yaml.constructor.SafeConstructor, node: yaml.ScalarNode) -> int:
    """Integers longer than MAX_INT_DIGITS are refused before Python's int-from-text limit is hit."""
    text = str(loader.construct_scalar(node))
    if len(text.lstrip("+-").replace("_", "")) > MAX_INT_DIGITS:
        raise _LimitError(
            problem=f"integer with more than {MAX_INT_DIGITS} digits", problem_mark=node.start_mark
        )
    return yaml.SafeLoader.construct_yaml_int(loader, node)


def _construct_timestamp_as_text(loader: yaml.constructor.SafeConstructor, node: yaml.ScalarNode) -> str:
    """Dates stay strings; the schema parses ISO dates itself (so ``tenant_id: 2025-01-01`` stays text)."""
    return str(loader.construct_scalar(node))


for _loader in _LOADERS:
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
    _loader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)
    _loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
    _loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp_as_text)


def parse_yaml(text: str, path: str) -> Any:
    """Parse YAML text; raises ConfigError with the documented messages.

    libyaml scans and parses when PyYAML has it. Any other YAML error found there is parsed again by the
    pure-Python loader, whose wording is the documented one (libyaml's differs); the limits and duplicate
    keys are checked by the same Python code on both, at the same line and column, so hostile input stops
    in libyaml's pass."""
    try:
        if _FastLoader is not None:
            try:
                return yaml.load(text, Loader=_FastLoader)  # noqa: S506 - a CSafeLoader subclass
            except _LimitError:
                raise
            except yaml.YAMLError:
                pass
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except _DuplicateKeyError as exc:
        raise ConfigError(f"Duplicate key '{exc.key}' at line {exc.line} in '{path}'") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Malformed YAML in '{path}': {_yaml_problem(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line without PyYAML's source snippet, which could show a secret written on that line."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc).replace("\n", " ")
    text = "; ".join(part for part in (exc.context, exc.problem) if part)
    mark = exc.problem_mark or exc.context_mark
    return f"{text} at line {mark.line + 1}, column {mark.column + 1}" if mark else text


# --- interpolation
def _path_join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def interpolate(value: Any, environ: Any = None, path: str = "", problems: list[str] | None = None) -> Any:
    """Replace ``${X}`` / ``${X:-default}`` in string values (in place for mappings/lists).

    Missing variables are appended to ``problems`` (one line each, with the YAML path).
    """
    env = os.environ if environ is None else environ
    if problems is None:
        problems = []
    if isinstance(value, dict):
        for key in list(value.keys()):
            value[key] = interpolate(value[key], env, _path_join(path, key), problems)
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = interpolate(item, env, f"{path}[{i}]", problems)
        return value
    if not isinstance(value, str) or "${" not in value:
        return value
    reported: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        if name not in reported:
            reported.add(name)
            problems.append(
                f"{path}: Required environment variable '{name}' is not set. "
                f"Set it or provide a default: ${{{name}:-default}}"
            )
        return match.group(0)

    return _INTERPOLATION_RE.sub(replace, value)


# --- paths / env
def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path:
    if path is None:
        raw = os.environ.get(CONFIG_ENV_VAR)
        if not raw:
            raise ConfigError(
                f"{CONFIG_ENV_VAR} is not set; set it to the path of the chargeback YAML config"
            )
        path = raw
    resolved = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if not resolved.is_file():
        raise ConfigError(f"Config file not found: '{resolved}'")
    return resolved


def resolve_env_file(config_path: Path, env_file: str | os.PathLike[str] | None = None) -> Path | None:
    """The .env file: explicit / ``CHARGEBACK_ENV_FILE`` (must exist) or ``.env`` beside the config."""
    if env_file is None:
        env_file = os.environ.get(ENV_FILE_ENV_VAR) or None
    if env_file is not None:
        resolved = Path(os.path.abspath(os.path.expanduser(os.fspath(env_file))))
        if not resolved.is_file():
            raise ConfigError(f"Env file not found: '{resolved}'")
        return resolved
    beside = config_path.parent / ".env"
    return beside if beside.is_file() else None


# --- public API
def load_config(
    path: str | os.PathLike[str] | None = None, env_file: str | os.PathLike[str] | None = None
) -> AppConfig:
    """Load and fully validate the config (docs/configuration.md §1). Raises :class:`ConfigError`."""
    config_path = resolve_config_path(path)
    dotenv_path = resolve_env_file(config_path, env_file)
    if dotenv_path is not None:
        load_dotenv(dotenv_path, override=False)
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read config file '{config_path}': {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Cannot read config file '{config_path}': not valid UTF-8 "
            f"(byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    raw = parse_yaml(text, str(config_path))
    if raw is None:
        raw = LineDict()
        raw.key_lines = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Config root must be a mapping, got {type_name(raw)}")

    problems: list[str] = []
    interpolate(raw, os.environ, "", problems)
    if problems:
        raise ConfigError(problems)

    app, problem_lines, warnings = validate(raw, config_path, config_path.parent)
    if problem_lines or app is None:
        raise ConfigError(problem_lines)
    for warning in warnings:
        logger.warning(warning)
    return app


_cache_lock = threading.Lock()
_cache: dict[tuple[Any, ...], AppConfig] = {}


def _mtime_ns(path: Path | None) -> int | None:
    try:
        return path.stat().st_mtime_ns if path is not None else None
    except OSError:
        return None


def get_config() -> AppConfig:
    """Process-wide cached :func:`load_config` (path from ``CHARGEBACK_CONFIG_FILE``).

    The cache key is (absolute path, mtime_ns, env file, env file mtime_ns), so an edited file is re-read.
    """
    config_path = resolve_config_path(None)
    env_path = resolve_env_file(config_path, None)
    key = (str(config_path), _mtime_ns(config_path), str(env_path) if env_path else None, _mtime_ns(env_path))
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        app = load_config(config_path, env_path)
        _cache.clear()
        _cache[key] = app
        return app


def clear_config_cache() -> None:
    with _cache_lock:
        _cache.clear()

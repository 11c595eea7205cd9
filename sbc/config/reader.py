"""Reading typed values out of a YAML node tree, collecting every error with its location.

The loader composes the file with PyYAML's ``SafeLoader`` into nodes (never constructing Python
objects from tags) so that every value keeps its ``start_mark``.  A :class:`Reader` walks that
tree: :meth:`Reader.section` checks a mapping's keys (unknown keys get a difflib suggestion,
duplicate keys are reported, which PyYAML itself silently accepts) and returns a
:class:`Section` whose typed getters validate one value each.

A getter never raises: on a bad value it records a :class:`~sbc.errors.ConfigError` at the
value's ``file:line:column`` with the key path and what was expected, marks the path bad and
returns the default, so the walk carries on and the operator sees every error at once.
Cross-field checks ask :meth:`Reader.ok` first, so a bad value does not cause follow-up noise.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from sbc.config.secrets import MASK
from sbc.errors import ConfigError, Location

T = TypeVar("T")
S = TypeVar("S", bound=str)

_TAG = "tag:yaml.org,2002:"
_TAG_NAMES = {
    _TAG + "str": "a string",
    _TAG + "int": "an integer",
    _TAG + "float": "a number",
    _TAG + "bool": "a boolean",
    _TAG + "null": "null",
    _TAG + "timestamp": "a timestamp",
    _TAG + "binary": "binary data",
    _TAG + "merge": "a merge key",
}
_MAX_SHOWN = 40
_MAX_UNKNOWN = 5
SECONDS = "a positive number of seconds"
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class ConfigErrors(ConfigError):
    """Every error found in one configuration file; ``str()`` shows one per line."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors: tuple[ConfigError, ...] = tuple(errors)
        first = self.errors[0] if self.errors else None
        super().__init__(
            first.message if first else "invalid configuration",
            location=first.location if first else None,
            path=first.path if first else "",
            expected=first.expected if first else "",
        )

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.errors)

    def __len__(self) -> int:
        return len(self.errors)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def describe(node: yaml.Node, *, secret: bool = False) -> str:
    """What a node is, for 'got ...' messages: its type and, when short and harmless, its text."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = _TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")
    if node.tag == _TAG + "null":
        return kind
    if node.tag != _TAG + "str" and not secret:
        return f"{kind} ({show(node.value)[1:-1]})"  # unquoted: 5060, true, 1.5
    return f"{kind} ({show(node.value, secret=secret)})"


def show(text: str, *, secret: bool = False) -> str:
    """A value quoted for a message, shortened, or masked when it may hold a secret."""
    if secret:
        return MASK
    text = str(text)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


def suggest(word: str, choices: Iterable[str]) -> str:
    """``", did you mean 'x'?"`` for the closest choice, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f", did you mean '{close[0]}'?" if close else ""


def is_null(node: yaml.Node | None) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "null"


def is_hostname(text: str) -> bool:
    """An RFC 1123 host name (a trailing dot is allowed)."""
    host = text[:-1] if text.endswith(".") else text
    return 0 < len(host) <= 253 and all(_HOSTNAME_LABEL.match(label) for label in host.split("."))


class Reader:
    """The state of one walk: the file name, the base directory and the errors so far."""

    def __init__(self, file: str, base_dir: Path, root: yaml.Node | None = None) -> None:
        self.file = file
        self.base_dir = base_dir
        self.errors: list[ConfigError] = []
        self._bad: set[str] = set()
        self._locations: dict[str, Location] = {}
        self._root = Location(file, 1, 1) if root is None else self.location(root)
        self._constructor = SafeConstructor()

    # -- locations and errors ------------------------------------------------------------------

    def location(self, node: yaml.Node) -> Location:
        mark = node.start_mark
        return Location(self.file, mark.line + 1, mark.column + 1)

    def remember(self, path: str, node: yaml.Node) -> None:
        self._locations[path] = self.location(node)

    def written(self, path: str) -> bool:
        """Is ``path`` itself present in the file (not defaulted)?"""
        return path in self._locations

    def where(self, path: str) -> Location:
        """The location of ``path``'s value or of its closest ancestor present in the file."""
        while path:
            if path in self._locations:
                return self._locations[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self._root

    def error(
        self,
        path: str,
        message: str,
        *,
        expected: str = "",
        node: yaml.Node | None = None,
        location: Location | None = None,
    ) -> None:
        """Record an error at ``node`` (or ``location``, or where ``path`` is) and mark it bad."""
        if location is None:
            location = self.location(node) if node is not None else self.where(path)
        self.errors.append(ConfigError(message, location=location, path=path, expected=expected))
        self._bad.add(path)

    def ok(self, *paths: str) -> bool:
        """True when none of ``paths``, their ancestors or their descendants had an error."""
        for path in paths:
            for bad in self._bad:
                if bad == path or bad == "":
                    return False
                for a, b in ((bad, path), (path, bad)):
                    if b.startswith(a) and b[len(a)] in ".[":
                        return False
        return True

    # -- structure -----------------------------------------------------------------------------

    def section(
        self, node: yaml.Node | None, path: str, keys: Iterable[str], *, what: str = "a mapping"
    ) -> Section:
        """Check that ``node`` is a mapping whose keys are all in ``keys``.

        A missing section or an explicit null gives an empty section (all defaults).
        """
        known = tuple(keys)
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        unknown: list[tuple[str, yaml.Node]] = []
        if node is not None and not self.written(path):
            self.remember(path, node)
        if node is None or is_null(node):
            return Section(self, path, node, entries)
        if not isinstance(node, yaml.MappingNode):
            self.error(path, f"got {describe(node)}", expected=what, node=node)
            return Section(self, path, None, entries, valid=False)
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or is_null(key_node):
                self.error(
                    path, f"got {describe(key_node)} as a key", expected="a key name", node=key_node
                )
                continue
            key = str(key_node.value)
            if key_node.tag == _TAG + "merge":
                self.error(
                    path,
                    "YAML merge keys ('<<') are not supported",
                    expected="the keys written out",
                    node=key_node,
                )
                continue
            key_path = join(path, key)
            if key in entries:
                first = self.location(entries[key][0])
                self.error(
                    key_path,
                    f"duplicate key '{key}' (first defined at line {first.line})",
                    expected="each key once per mapping",
                    node=key_node,
                )
                continue
            entries[key] = (key_node, value_node)
            if key not in known:
                unknown.append((key, key_node))
                continue
            # Errors about a whole mapping or list point at its key, those about a scalar at it.
            scalar = isinstance(value_node, yaml.ScalarNode)
            self.remember(key_path, value_node if scalar else key_node)
        if not path and len(unknown) > _MAX_UNKNOWN and len(unknown) == len(entries):
            # Nothing here is ours: probably the wrong file.  Do not echo its content.
            self.error(
                path,
                f"{len(unknown)} unknown keys and no known one; is this the right file?",
                expected="one of: " + ", ".join(known),
                node=node,
            )
            unknown = []
        for key, key_node in unknown:
            shown = show(key)[1:-1] if len(key) > _MAX_SHOWN else key
            self.error(
                join(path, key),
                f"unknown key '{shown}'{suggest(key, known)}",
                expected="one of: " + ", ".join(known),
                node=key_node,
            )
        return Section(self, path, node, {k: v for k, v in entries.items() if k in known})

    def items(self, node: yaml.Node | None, path: str, *, what: str) -> list[tuple[str, yaml.Node]]:
        """The elements of a list as ``(path[i], node)``; a missing list or null is empty."""
        if node is None or is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.error(path, f"got {describe(node)}", expected=f"a list of {what}", node=node)
            return []
        result = []
        for index, item in enumerate(node.value):
            item_path = f"{path}[{index}]"
            self.remember(item_path, item)
            result.append((item_path, item))
        return result

    # -- scalars -------------------------------------------------------------------------------

    def scalar(
        self,
        node: yaml.Node,
        path: str,
        tags: tuple[str, ...],
        expected: str,
        *,
        secret: bool = False,
    ) -> yaml.ScalarNode | None:
        """``node`` if it is a scalar with one of ``tags`` (short names), else an error."""
        if isinstance(node, yaml.ScalarNode) and node.tag in {_TAG + t for t in tags}:
            return node
        self.error(path, f"got {describe(node, secret=secret)}", expected=expected, node=node)
        return None

    def construct(self, node: yaml.ScalarNode) -> object:
        """The Python value of a plain-tagged scalar."""
        return self._constructor.construct_object(node, deep=True)

    def string(
        self,
        node: yaml.Node,
        path: str,
        *,
        expected: str = "a string",
        secret: bool = False,
        pattern: re.Pattern[str] | None = None,
    ) -> str | None:
        scalar = self.scalar(node, path, ("str",), expected, secret=secret)
        if scalar is None:
            return None
        text = str(scalar.value)
        if not text or (pattern is not None and not pattern.fullmatch(text)):
            self.error(
                path, f"invalid value {show(text, secret=secret)}", expected=expected, node=node
            )
            return None
        return text

    def integer(
        self, node: yaml.Node, path: str, lo: int, hi: int, expected: str = ""
    ) -> int | None:
        expected = expected or f"an integer in {lo}..{hi}"
        scalar = self.scalar(node, path, ("int",), expected)
        if scalar is None:
            return None
        try:
            value = self.construct(scalar)
        except (ConstructorError, ValueError):
            self.error(path, f"invalid integer {show(scalar.value)}", expected=expected, node=node)
            return None
        assert isinstance(value, int)
        if not lo <= value <= hi:
            self.error(path, f"{value} is out of range", expected=expected, node=node)
            return None
        return value

    def seconds(self, node: yaml.Node, path: str, *, maximum: float = 366 * 86400) -> float | None:
        """A positive, finite duration in seconds (an integer or a decimal number)."""
        expected = SECONDS
        scalar = self.scalar(node, path, ("int", "float"), expected)
        if scalar is None:
            return None
        try:
            value = float(self.construct(scalar))  # type: ignore[arg-type]
        except (ConstructorError, ValueError, OverflowError):
            self.error(path, f"invalid number {show(scalar.value)}", expected=expected, node=node)
            return None
        if not math.isfinite(value) or value <= 0:
            self.error(
                path, f"{scalar.value} is not a positive number", expected=expected, node=node
            )
            return None
        if value > maximum:
            self.error(
                path,
                f"{scalar.value} is too large",
                expected=f"at most {maximum:g} seconds",
                node=node,
            )
            return None
        return value

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        scalar = self.scalar(node, path, ("bool",), "true or false")
        if scalar is None:
            return None
        return bool(self.construct(scalar))

    def choice(self, node: yaml.Node, path: str, choices: Sequence[S]) -> S | None:
        expected = "one of: " + ", ".join(choices)
        scalar = self.scalar(node, path, ("str",), expected)
        if scalar is None:
            return None
        for choice in choices:
            if scalar.value == choice:
                return choice
        self.error(
            path,
            f"invalid value {show(scalar.value)}{suggest(scalar.value, choices)}",
            expected=expected,
            node=node,
        )
        return None

    def ip_address(
        self, node: yaml.Node, path: str, *, expected: str = "an IP address"
    ) -> str | None:
        """A literal IPv4/IPv6 address, normalised (``::0001`` becomes ``::1``)."""
        scalar = self.scalar(node, path, ("str",), expected)
        if scalar is None:
            return None
        try:
            return str(ipaddress.ip_address(scalar.value))
        except ValueError:
            self.error(
                path, f"invalid IP address {show(scalar.value)}", expected=expected, node=node
            )
            return None

    def host(self, node: yaml.Node, path: str) -> str | None:
        """An IP address or an RFC 1123 host name."""
        expected = "an IP address or a host name"
        scalar = self.scalar(node, path, ("str",), expected)
        if scalar is None:
            return None
        text = str(scalar.value)
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            pass
        if not is_hostname(text):
            self.error(path, f"invalid host {show(text)}", expected=expected, node=node)
            return None
        return text.lower()

    def network(
        self, node: yaml.Node, path: str
    ) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        expected = "a network in CIDR notation such as 192.0.2.0/24"
        scalar = self.scalar(node, path, ("str",), expected)
        if scalar is None:
            return None
        text = str(scalar.value)
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            reason = "has host bits set" if "host bits" in str(exc) else "is not a valid network"
            self.error(path, f"{show(text)} {reason}", expected=expected, node=node)
            return None

    def resolve(self, text: str) -> Path:
        """``text`` as a path; relative paths are taken from the configuration file's directory."""
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        # Normalise the directory ("deploy/../certs") but keep the last component as written:
        # a certificate is often a symlink that renewals re-point (Let's Encrypt "live/").
        return path.parent.resolve() / path.name if path.name else path.resolve()

    def existing_file(self, node: yaml.Node, path: str, *, expected: str = "") -> Path | None:
        """A path that names an existing, readable regular file."""
        expected = expected or (
            f"an existing file; relative paths are resolved against {self.base_dir}"
        )
        text = self.string(node, path, expected="a file path")
        if text is None:
            return None
        resolved = self.resolve(text)
        problem = file_problem(resolved)
        if problem:
            self.error(path, f"{problem}: {resolved}", expected=expected, node=node)
            return None
        return resolved


def file_problem(path: Path) -> str:
    """Why ``path`` cannot be read as a regular file, or ``""``."""
    try:
        if not path.exists():
            return "file not found"
        if path.is_dir():
            return "is a directory, not a file"
        if not path.is_file():
            return "is not a regular file"
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    return ""


class Section:
    """A checked mapping: typed getters that apply defaults and record errors.

    Getters return the default when the key is absent, and also when the value is bad (after
    recording the error) so that the walk can continue.
    """

    def __init__(
        self,
        reader: Reader,
        path: str,
        node: yaml.Node | None,
        entries: dict[str, tuple[yaml.Node, yaml.Node]],
        *,
        valid: bool = True,
    ) -> None:
        self.reader = reader
        self.path = path
        self.node = node
        self.valid = valid
        self._entries = entries

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def path_of(self, key: str) -> str:
        return join(self.path, key)

    def node_of(self, key: str) -> yaml.Node | None:
        entry = self._entries.get(key)
        return entry[1] if entry else None

    def _get(
        self,
        key: str,
        default: T,
        read: Callable[[yaml.Node, str], T | None],
        expected: str,
        *,
        nullable: bool = False,
        required: bool = False,
    ) -> T:
        node = self.node_of(key)
        path = self.path_of(key)
        if node is None:
            if required and self.valid:  # a section that is not a mapping was reported already
                self.reader.error(
                    path,
                    f"missing required key '{key}'",
                    expected=expected,
                    location=self.reader.where(self.path),
                )
            return default
        if is_null(node):
            if nullable:
                return default
            self.reader.error(path, "got null", expected=expected, node=node)
            return default
        value = read(node, path)
        return default if value is None else value

    def string(
        self,
        key: str,
        default: str,
        *,
        required: bool = False,
        pattern: re.Pattern[str] | None = None,
        expected: str = "a string",
    ) -> str:
        return self._get(
            key,
            default,
            lambda n, p: self.reader.string(n, p, pattern=pattern, expected=expected),
            expected,
            required=required,
        )

    def optional_string(
        self,
        key: str,
        *,
        secret: bool = False,
        pattern: re.Pattern[str] | None = None,
        expected: str = "a string",
    ) -> str | None:
        return self._get(
            key,
            None,
            lambda n, p: self.reader.string(
                n, p, secret=secret, pattern=pattern, expected=expected
            ),
            expected,
            nullable=True,
        )

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        expected = f"an integer in {lo}..{hi}"
        return self._get(key, default, lambda n, p: self.reader.integer(n, p, lo, hi), expected)

    def port(self, key: str, default: int) -> int:
        expected = "a port in 1..65535"
        return self._get(
            key, default, lambda n, p: self.reader.integer(n, p, 1, 65535, expected), expected
        )

    def seconds(self, key: str, default: float) -> float:
        return self._get(key, default, self.reader.seconds, SECONDS)

    def optional_seconds(self, key: str, default: float | None) -> float | None:
        """Seconds, or ``None`` when written as null (no limit)."""
        node = self.node_of(key)
        if node is not None and is_null(node):
            return None
        return self._get(key, default, self.reader.seconds, SECONDS)

    def boolean(self, key: str, default: bool) -> bool:
        return self._get(key, default, self.reader.boolean, "true or false")

    def choice(self, key: str, choices: Sequence[S], default: S) -> S:
        expected = "one of: " + ", ".join(choices)
        return self._get(key, default, lambda n, p: self.reader.choice(n, p, choices), expected)

    def optional_choice(self, key: str, choices: Sequence[S]) -> S | None:
        expected = "one of: " + ", ".join(choices)
        return self._get(
            key, None, lambda n, p: self.reader.choice(n, p, choices), expected, nullable=True
        )

    def ip_address(self, key: str, default: str) -> str:
        return self._get(key, default, self.reader.ip_address, "an IP address")

    def optional_ip_address(self, key: str) -> str | None:
        return self._get(key, None, self.reader.ip_address, "an IP address", nullable=True)

    def host(self, key: str, default: str, *, required: bool = False) -> str:
        return self._get(
            key, default, self.reader.host, "an IP address or a host name", required=required
        )

    def existing_file(self, key: str) -> Path | None:
        return self._get(key, None, self.reader.existing_file, "a file path", nullable=True)

    def section(self, key: str, keys: Iterable[str]) -> Section:
        return self.reader.section(self.node_of(key), self.path_of(key), keys)

    def items(self, key: str, *, what: str) -> list[tuple[str, yaml.Node]]:
        return self.reader.items(self.node_of(key), self.path_of(key), what=what)

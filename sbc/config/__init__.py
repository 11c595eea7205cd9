"""sbc's configuration: one YAML file, validated completely at load time.

:func:`load_config` reads the file, composes it with PyYAML's safe loader into nodes that keep
their positions, and walks the schema (:mod:`sbc.config.schema`).  Every problem -- YAML syntax,
duplicate or unknown keys, wrong types, bad addresses, ports, networks, missing files,
inconsistent values -- is collected, and all of them are raised together as one
:class:`ConfigErrors`, whose ``str()`` shows one ``file:line:col: key.path: message (expected
...)`` per line.  On success the result is a tree of frozen dataclasses (:mod:`sbc.config.model`).

Relative paths in the file are resolved against the directory that contains the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from sbc.config.model import (
    AdminConfig,
    Config,
    EventsConfig,
    InterfaceConfig,
    InterfacesConfig,
    LimitsConfig,
    Listener,
    LoggingConfig,
    MediaConfig,
    MediaInterfaceConfig,
    NodeConfig,
    PbxConfig,
    PortRange,
    RegistrationConfig,
    RoutingConfig,
    RulesConfig,
    StateConfig,
    SyslogConfig,
    TimersConfig,
    TlsConfig,
    TransportConfig,
    TrustedPeer,
    format_hostport,
)
from sbc.config.reader import ConfigErrors, Reader, describe
from sbc.config.schema import read_config
from sbc.config.secrets import mask_url
from sbc.errors import ConfigError, Location

MAX_CONFIG_BYTES = 1024 * 1024  # a configuration file is small; refuse anything absurd
MAX_REPORTED_ERRORS = 50

__all__ = [
    "AdminConfig",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "EventsConfig",
    "InterfaceConfig",
    "InterfacesConfig",
    "LimitsConfig",
    "Listener",
    "LoggingConfig",
    "MediaConfig",
    "MediaInterfaceConfig",
    "NodeConfig",
    "PbxConfig",
    "PortRange",
    "RegistrationConfig",
    "RoutingConfig",
    "RulesConfig",
    "StateConfig",
    "SyslogConfig",
    "TimersConfig",
    "TlsConfig",
    "TransportConfig",
    "TrustedPeer",
    "format_hostport",
    "load_config",
    "mask_url",
    "parse_config",
]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load and validate the configuration file at ``path``.

    Raises :class:`ConfigErrors` (a :class:`~sbc.errors.ConfigError`) holding every problem
    found, including an unreadable, missing, oversized or non-UTF-8 file; never anything else
    for a bad file.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except IsADirectoryError:
        raise _file_error(source, "is a directory, not a configuration file") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _file_error(source, f"cannot read the configuration file ({reason})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise _file_error(source, f"the file is larger than {MAX_CONFIG_BYTES} bytes")
    return parse_config(data, source=source, base_dir=Path(source).resolve().parent)


def parse_config(
    text: str | bytes, *, source: str = "<string>", base_dir: Path | None = None
) -> Config:
    """Validate configuration ``text``; ``source`` names it in errors, ``base_dir`` anchors
    relative paths (default: the current directory)."""
    base = (base_dir or Path.cwd()).resolve()
    if isinstance(text, bytes):
        text = _decode(text, source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigErrors([_yaml_error(exc, source)]) from None
    except yaml.reader.ReaderError as exc:
        line, column = _line_column(text, exc.position)
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        message = f"invalid character U+{char:04X} in the file ({exc.reason})"
        raise ConfigErrors(
            [ConfigError(message, location=Location(source, line, column))]
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover -- PyYAML raises the two kinds above
        raise ConfigErrors(
            [ConfigError(f"invalid YAML ({type(exc).__name__})", location=Location(source, 1, 1))]
        ) from None
    except RecursionError:
        raise ConfigErrors(
            [ConfigError("the document is nested too deeply", location=Location(source, 1, 1))]
        ) from None
    expected = "a mapping of configuration sections"
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag.endswith(":null")):
        location = Location(source, 1, 1)
        raise ConfigErrors(
            [ConfigError("the configuration is empty", location=location, expected=expected)]
        )
    reader = Reader(source, base, root)
    if not isinstance(root, yaml.MappingNode):
        error = ConfigError(
            f"got {describe(root)}", location=reader.location(root), expected=expected
        )
        raise ConfigErrors([error])
    config = read_config(reader, root, source)
    if reader.errors:
        errors = sorted(reader.errors, key=_error_order)
        if len(errors) > MAX_REPORTED_ERRORS:
            more = len(errors) - MAX_REPORTED_ERRORS
            errors = errors[:MAX_REPORTED_ERRORS]
            errors.append(ConfigError(f"... and {more} more error(s)", location=None))
        raise ConfigErrors(errors)
    return config


def _error_order(error: ConfigError) -> tuple[int, int]:
    if error.location is None:
        return (0, 0)
    return (error.location.line, error.location.column)


def _file_error(source: str, message: str) -> ConfigErrors:
    return ConfigErrors([ConfigError(f"{source}: {message}")])


def _decode(data: bytes, source: str) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        error = ConfigError(
            f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x})",
            location=Location(source, line, column),
            expected="a UTF-8 YAML file",
        )
        raise ConfigErrors([error]) from None


def _line_column(text: str, position: int) -> tuple[int, int]:
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return line, column


def _yaml_error(exc: yaml.MarkedYAMLError, source: str) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    location = Location(source, mark.line + 1, mark.column + 1) if mark else None
    message = f"invalid YAML: {exc.problem or 'syntax error'}"
    if exc.context and exc.context_mark is not None:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return ConfigError(message, location=location)

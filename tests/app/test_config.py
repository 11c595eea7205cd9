"""Configuration loading: defaults, the example file, and every class of error with its location."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shutil
import textwrap
import typing
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sbc.app import certs
from sbc.config import Config, ConfigError, ConfigErrors, load_config, mask_url, parse_config
from sbc.config.model import InterfaceConfig, PeerRoute
from sbc.config.secrets import scrub_urls

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "config"
TLS_BLOCK = "tls:\n  certificate: certs/server.crt\n  private_key: certs/server.key\n"


@pytest.fixture(scope="module")
def cert_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("devcerts")
    certs.init_dev_certs(directory)
    return directory


@pytest.fixture
def d(tmp_path: Path, cert_source: Path) -> Path:
    """A directory with development certificates in certs/."""
    shutil.copytree(cert_source, tmp_path / "certs")
    return tmp_path


def write(directory: Path, body: str, *, tls: bool = True, name: str = "sbc.yaml") -> Path:
    """Write a config whose first line is the first line of ``body`` (TLS block appended)."""
    path = directory / name
    path.write_text(textwrap.dedent(body).lstrip("\n") + (TLS_BLOCK if tls else ""))
    return path


def errors_of(path: Path) -> list[str]:
    """The errors of loading ``path``, each without the leading ``path:``."""
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    lines = [str(e) for e in info.value.errors]
    prefix = f"{path}:"
    assert all(line.startswith(prefix) for line in lines), lines
    return [line[len(prefix) :] for line in lines]


def errors(directory: Path, body: str, *, tls: bool = True) -> list[str]:
    return errors_of(write(directory, body, tls=tls))


# -- loading good files ------------------------------------------------------------------------


def test_minimal_config_uses_defaults(d: Path) -> None:
    """A file with only the TLS certificate loads, with the documented safe defaults."""
    shutil.copy(FIXTURES / "minimal.yaml", d / "minimal.yaml")
    config = load_config(d / "minimal.yaml")
    assert config.source == str(d / "minimal.yaml")
    assert config.node.id == "sbc-1"
    assert (config.logging.format, config.logging.level) == ("text", "info")
    assert [str(x) for x in config.listeners()] == [
        "external tls 127.0.0.1:5061",
        "internal udp 127.0.0.1:5080",
    ]
    assert config.limits.max_message_bytes == 65535
    assert config.limits.max_headers == 200
    assert config.limits.max_line_bytes == 8192
    assert config.limits.max_connections == 10000
    assert config.limits.max_connections_per_ip == 50
    assert config.limits.new_connections_per_second_per_ip == 20
    assert config.limits.tls_handshake_timeout == 10.0
    assert config.limits.idle_timeout == 120.0
    assert config.limits.max_buffered_bytes == 131072
    assert (config.timers.t1, config.timers.t2, config.timers.t4) == (0.5, 4.0, 5.0)
    assert (config.pbx.address, config.pbx.port, config.pbx.transport) == ("127.0.0.1", 5060, "udp")
    assert config.pbx.tls_verify is True
    assert config.trusted_peers == ()
    assert config.tls.certificate == d / "certs" / "server.crt"
    assert config.tls.min_version == "1.2"
    assert config.tls.require_client_certificate is False
    assert config.media.srtp == "require"
    assert config.media.allow_sdes_over_insecure_transport is False
    assert (config.media.port_range.start, config.media.port_range.end) == (20000, 29999)
    assert config.state.backend == "memory"
    assert config.rules.files == ()
    assert config.events.jsonl is None and config.events.syslog is None
    assert (config.admin.enabled, config.admin.address, config.admin.port) == (
        False,
        "127.0.0.1",
        8080,
    )


def test_config_is_frozen(d: Path) -> None:
    """The loaded configuration cannot be modified."""
    config = load_config(write(d, ""))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node.id = "other"  # type: ignore[misc]


def test_example_config_loads(tmp_path: Path, cert_source: Path) -> None:
    """deploy/sbc.example.yaml loads as laid out in the repository, with certs/ beside deploy/."""
    (tmp_path / "deploy").mkdir()
    (tmp_path / "rules").mkdir()
    shutil.copy(REPO / "deploy" / "sbc.example.yaml", tmp_path / "deploy")
    shutil.copytree(cert_source, tmp_path / "certs")
    config = load_config(tmp_path / "deploy" / "sbc.example.yaml")
    assert [str(x) for x in config.listeners()] == [
        "external udp 127.0.0.1:5060",
        "external tcp 127.0.0.1:5060",
        "external tls 127.0.0.1:5061",
        "internal udp 127.0.0.1:5080",
    ]
    assert (config.pbx.address, config.pbx.port, config.pbx.transport) == ("127.0.0.1", 5070, "udp")
    assert config.tls.certificate == tmp_path / "certs" / "server.crt"
    assert config.rules.files == (str(tmp_path / "rules" / "*.yaml"),)
    assert config.events.jsonl == tmp_path / "var" / "events.jsonl"
    assert config.trusted_peers[0].cidrs == (
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_documentation_covers_every_key() -> None:
    """docs/configuration.md has a row for every key of the Config dataclass tree."""
    docs = (REPO / "docs" / "configuration.md").read_text()
    missing = [key for key in _key_paths(Config, "") if f"`{key}`" not in docs]
    assert missing == []


def _key_paths(cls: type, prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    paths = []
    for f in dataclasses.fields(cls):
        if (cls, f.name) in ((Config, "source"), (InterfaceConfig, "name")):
            continue
        path = f"{prefix}.{f.name}" if prefix else f.name
        if path in ("interfaces.external", "interfaces.internal"):
            path = "interfaces.<name>"
        inner = [a for a in typing.get_args(hints[f.name]) if a is not type(None)]
        nested = [c for c in [hints[f.name], *inner] if dataclasses.is_dataclass(c)]
        if not nested:
            paths.append(path)  # a leaf: a key with a value
        for candidate in nested:
            assert isinstance(candidate, type)
            prefix_ = f"{path}[]" if typing.get_origin(hints[f.name]) is tuple else path
            paths.extend(_key_paths(candidate, prefix_))
    return sorted(set(paths))


def test_null_sections_take_defaults(d: Path) -> None:
    """A section written with no value (null) is the same as an absent section."""
    config = load_config(write(d, "limits:\nevents:\ntrusted_peers:\n"))
    assert config.limits.max_headers == 200
    assert config.events.jsonl is None
    assert config.trusted_peers == ()


def test_relative_paths_resolve_against_the_config_directory(d: Path) -> None:
    """Relative paths are taken from the directory holding the file, not the working directory."""
    (d / "etc").mkdir()
    body = "tls:\n  certificate: ../certs/server.crt\n  private_key: ../certs/server.key\n"
    config = load_config(write(d / "etc", body, tls=False))
    assert config.tls.certificate == d / "certs" / "server.crt"
    assert config.tls.private_key == d / "certs" / "server.key"


def test_full_values_are_read(d: Path) -> None:
    """Explicit values of every kind are read into the right fields."""
    (d / "rules").mkdir()
    for name in ("b.yaml", "a.yaml"):
        (d / "rules" / name).write_text("[]\n")
    (d / "token").write_text("s3cret\n")
    body = """
        node: {id: edge-2}
        logging: {format: json, level: warn}
        interfaces:
          external:
            address: 0.0.0.0
            advertised_address: 203.0.113.10
            udp: {enabled: yes, port: 5062}
        pbx: {address: PBX.example.net, transport: tls, tls_verify: false, server_name: pbx}
        trusted_peers:
          - name: trunk
            cidrs: [198.51.100.7, "2001:db8::/48"]
            transport: tls
            tls_subject: trunk.example.net
            srtp: optional
        media:
          srtp: none
          max_call_duration: null
          internal: {address: 127.0.0.2}
        state: {backend: redis, redis_url: "rediss://:pw@cache:6380/1"}
        rules: {files: [rules/*.yaml]}
        events:
          syslog: {address: 192.0.2.9, facility: auth}
        admin: {enabled: true, address: 192.0.2.1, allow_remote: true, token_file: token}
        tls:
          certificate: certs/server.crt
          private_key: certs/server.key
          ca_bundle: certs/dev-ca.crt
          min_version: 1.3
        """
    config = load_config(write(d, body, tls=False))
    assert config.node.id == "edge-2"
    assert config.logging.format == "json" and config.logging.level == "warn"
    ext = config.interfaces.external
    assert (ext.address, ext.public_address, ext.udp.port) == ("0.0.0.0", "203.0.113.10", 5062)
    assert config.media.external.public_address == "203.0.113.10"
    assert config.media.internal.address == "127.0.0.2"
    assert (config.pbx.address, config.pbx.port, config.pbx.server_name) == (
        "pbx.example.net",
        5061,
        "pbx",
    )
    peer = config.trusted_peers[0]
    assert peer.cidrs == (
        ipaddress.ip_network("198.51.100.7/32"),
        ipaddress.ip_network("2001:db8::/48"),
    )
    assert (peer.transport, peer.tls_subject, peer.srtp) == ("tls", "trunk.example.net", "optional")
    assert config.media.srtp == "none" and config.media.max_call_duration is None
    assert config.state.redis_url == "rediss://:pw@cache:6380/1"
    assert config.rules.paths() == (d / "rules" / "a.yaml", d / "rules" / "b.yaml")
    assert config.events.syslog is not None and config.events.syslog.port == 514
    assert config.events.syslog.facility == "auth"
    assert config.admin.token_file == d / "token"
    assert config.tls.min_version == "1.3"


# -- YAML-level errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node:\n  id: [a\n", "3:1: invalid YAML: expected ',' or ']', but got '<stream end>' "
         "(while parsing a flow sequence at line 2)"),
        ("node:\n\tid: a\n",
         "2:1: invalid YAML: found character '\\t' that cannot start any token"),
        ("node: a: b\n", "1:8: invalid YAML: mapping values are not allowed here"),
        ("node: {}\n---\nlimits: {}\n", "2:1: invalid YAML: but found another document "
         "(expected a single document in the stream at line 1)"),
    ],
)  # fmt: skip
def test_yaml_syntax_errors_have_the_location(tmp_path: Path, text: str, expected: str) -> None:
    """A YAML syntax error becomes a ConfigError at the parser's mark (1-based)."""
    path = tmp_path / "sbc.yaml"
    path.write_text(text)
    assert errors_of(path) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "1:1: the configuration is empty (expected a mapping of configuration sections)"),
        ("# nothing\n\n", "1:1: the configuration is empty (expected a mapping of configuration "
         "sections)"),
        ("\n- a\n- b\n", "2:1: got a list (expected a mapping of configuration sections)"),
        ("just text\n", '1:1: got a string ("just text") (expected a mapping of configuration '
         "sections)"),
    ],
)  # fmt: skip
def test_empty_or_non_mapping_documents(tmp_path: Path, text: str, expected: str) -> None:
    """An empty file or a top level that is not a mapping is rejected at line 1 or the value."""
    path = tmp_path / "sbc.yaml"
    path.write_text(text)
    assert errors_of(path) == [expected]


def test_invalid_utf8_is_located(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 give the line and column of the first bad byte."""
    path = tmp_path / "sbc.yaml"
    path.write_bytes(b"node:\n  id: ab\xff\n")
    assert errors_of(path) == ["2:9: the file is not UTF-8 text (byte 0xff) (expected a UTF-8 YAML "
                               "file)"]  # fmt: skip


def test_control_character_is_located(tmp_path: Path) -> None:
    """A control character YAML forbids is reported where it is."""
    path = tmp_path / "sbc.yaml"
    path.write_bytes(b"node:\n  id: a\x00b\n")
    assert errors_of(path) == [
        "2:8: invalid character U+0000 in the file (special characters are not allowed)"
    ]


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_paths(tmp_path: Path, kind: str) -> None:
    """A missing file or a directory is a ConfigError naming the path, not an OSError."""
    path = tmp_path / "sbc.yaml"
    if kind == "directory":
        path.mkdir()
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    message = {
        "missing": "cannot read the configuration file (No such file or directory)",
        "directory": "is a directory, not a configuration file",
    }[kind]
    assert str(info.value) == f"{path}: {message}"


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    """A file over 1 MiB is refused without being parsed."""
    path = tmp_path / "sbc.yaml"
    path.write_text("#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigErrors, match="larger than 1048576 bytes"):
        load_config(path)


def test_duplicate_key(d: Path) -> None:
    """A key repeated in a mapping is reported at the second occurrence."""
    assert errors(d, "pbx:\n  port: 5070\n  transport: udp\n  port: 5071\n") == [
        "4:3: pbx.port: duplicate key 'port' (first defined at line 2) (expected each key once "
        "per mapping)"
    ]


def test_merge_keys_are_rejected(d: Path) -> None:
    """YAML merge keys are refused rather than silently merged."""
    assert errors(d, "pbx:\n  <<: {port: 5070}\n") == [
        "2:3: pbx: YAML merge keys ('<<') are not supported (expected the keys written out)"
    ]


def test_unknown_nested_key_suggests_the_closest(d: Path) -> None:
    """An unknown key is reported at the key with the closest known key suggested."""
    assert errors(d, "interfaces:\n  external:\n    tls:\n      prot: 5061\n") == [
        "4:7: interfaces.external.tls.prot: unknown key 'prot', did you mean 'port'? (expected "
        "one of: enabled, port)"
    ]


def test_unknown_top_level_key(d: Path) -> None:
    """An unknown section lists the known sections."""
    assert errors(d, "medai: {}\n") == [
        "1:1: medai: unknown key 'medai', did you mean 'media'? (expected one of: node, logging, "
        "interfaces, limits, timers, pbx, trusted_peers, registration, routing, tls, media, state, "
            "rules, events, admin)"
    ]


def test_foreign_file_is_not_echoed(tmp_path: Path) -> None:
    """A file with many keys and no known section yields one error without its contents."""
    path = tmp_path / "sbc.yaml"
    path.write_text("".join(f"user{i}: hash{i}\n" for i in range(8)))
    lines = errors_of(path)
    assert len(lines) == 1
    assert lines[0].startswith("1:1: 8 unknown keys and no known one; is this the right file?")
    assert "hash" not in lines[0]


# -- value errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('interfaces:\n  external:\n    tls:\n      port: "5061"\n',
         '4:13: interfaces.external.tls.port: got a string ("5061") (expected a port in 1..65535)'),
        ("limits:\n  max_headers: true\n",
         "2:16: limits.max_headers: got a boolean (true) (expected an integer in 1..10000)"),
        ("limits:\n  max_headers: 1.5\n",
         "2:16: limits.max_headers: got a number (1.5) (expected an integer in 1..10000)"),
        ("node:\n  id: 7\n",
         "2:7: node.id: got an integer (7) (expected a name of letters, digits, '.', '_' and '-' "
         "(at most 64 characters))"),
        ("node:\n  id: has space\n",
         "2:7: node.id: invalid value \"has space\" (expected a name of letters, digits, '.', '_' "
         "and '-' (at most 64 characters))"),
        ("timers:\n  t1: fast\n",
         '2:7: timers.t1: got a string ("fast") (expected a positive number of seconds)'),
        ("timers:\n  t4: -1\n",
         "2:7: timers.t4: -1 is not a positive number (expected a positive number of seconds)"),
        ("limits:\n  idle_timeout: .inf\n",
         "2:17: limits.idle_timeout: .inf is not a positive number (expected a positive number of "
         "seconds)"),
        ("interfaces:\n  internal:\n    udp:\n      enabled: 1\n",
         "4:16: interfaces.internal.udp.enabled: got an integer (1) (expected true or false)"),
        ("pbx: [1, 2]\n", "1:6: pbx: got a list (expected a mapping)"),
        ("trusted_peers: {name: x}\n",
         "1:16: trusted_peers: got a mapping (expected a list of peers)"),
        ("admin:\n  port:\n", "2:8: admin.port: got null (expected a port in 1..65535)"),
        ("logging:\n  level: warning\n",
         "2:10: logging.level: invalid value \"warning\", did you mean 'warn'? (expected one of: "
         "debug, info, warn, error)"),
        ("pbx:\n  transport: sctp\n",
         '2:14: pbx.transport: invalid value "sctp" (expected one of: udp, tcp, tls)'),
        ("node:\n  id: !!python/object:os.system x\n",
         "2:7: node.id: got a value tagged tag:yaml.org,2002:python/object:os.system (x) "
         "(expected a name of letters, digits, '.', '_' and '-' (at most 64 characters))"),
        ("limits:\n  max_message_bytes: 100\n",
         "2:22: limits.max_message_bytes: 100 is out of range (expected an integer in "
         "1024..16777216)"),
    ],
)  # fmt: skip
def test_wrong_types_and_values(d: Path, body: str, expected: str) -> None:
    """A value of the wrong type or outside its domain is reported at the value."""
    assert errors(d, body) == [expected]


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_out_of_range(d: Path, port: int) -> None:
    """Ports must be in 1..65535."""
    assert errors(d, f"pbx:\n  port: {port}\n") == [
        f"2:9: pbx.port: {port} is out of range (expected a port in 1..65535)"
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [("10.0.0.256", 'invalid IP address "10.0.0.256"'), ("localhost", 'invalid IP address '
     '"localhost"')],
)  # fmt: skip
def test_bad_ip_address(d: Path, value: str, message: str) -> None:
    """A bind address must be a literal IP address."""
    assert errors(d, f"interfaces:\n  external:\n    address: {value}\n") == [
        f"3:14: interfaces.external.address: {message} (expected an IP address)"
    ]


def test_bad_host(d: Path) -> None:
    """The PBX address must be an IP address or a valid host name."""
    assert errors(d, "pbx:\n  address: pbx_1.example\n") == [
        '2:12: pbx.address: invalid host "pbx_1.example" (expected an IP address or a host name)'
    ]


def test_bad_cidrs(d: Path) -> None:
    """Host bits, garbage, an empty list and a missing list are each reported where they are."""
    body = """
        trusted_peers:
          - name: a
            cidrs: [10.0.0.1/8, nonsense, 192.0.2.0/24]
          - name: b
            cidrs: []
          - name: c
        """
    expected = "(expected a network in CIDR notation such as 192.0.2.0/24)"
    assert errors(d, body) == [
        f'3:13: trusted_peers[0].cidrs[0]: "10.0.0.1/8" has host bits set {expected}',
        f'3:25: trusted_peers[0].cidrs[1]: "nonsense" is not a valid network {expected}',
        "5:5: trusted_peers[1].cidrs: the list is empty (expected at least one network)",
        "6:5: trusted_peers[2].cidrs: missing required key 'cidrs' (expected a list of networks "
        "in CIDR notation)",
    ]


def test_peer_name_is_required_and_unique(d: Path) -> None:
    """A peer needs a name and names are unique."""
    body = """
        trusted_peers:
          - name: a
            cidrs: [192.0.2.0/24]
          - name: a
            cidrs: [192.0.2.0/24]
          - cidrs: [192.0.2.0/24]
        """
    assert errors(d, body) == [
        "4:11: trusted_peers[1].name: duplicate peer name 'a' (first at line 2) (expected a "
        "unique name per peer)",
        "6:5: trusted_peers[2].name: missing required key 'name' (expected a name of letters, "
        "digits, '.', '_' and '-' (at most 64 characters))",
    ]


def test_peer_route_is_read_and_checked(d: Path) -> None:
    """A trunk route needs an address and a list of prefixes; each prefix is digits."""
    body = """
        trusted_peers:
          - name: a
            cidrs: [192.0.2.0/24]
            route: {address: 192.0.2.10, port: 5062, prefixes: ["+44", "00", ""]}
          - name: b
            cidrs: [198.51.100.0/24]
            route: {transport: tls, prefixes: ["9x"]}
          - name: c
            cidrs: [203.0.113.0/24]
            route: {address: 203.0.113.1}
        """
    assert errors(d, body) == [
        "7:5: trusted_peers[1].route.address: missing required key 'address' (expected the "
        "peer's IP address)",
        '7:40: trusted_peers[1].route.prefixes[0]: invalid prefix "9x" (expected digits, *, #, '
        "optionally after '+' (at most 32))",
        "10:5: trusted_peers[2].route.prefixes: missing required key 'prefixes' (expected a list "
        'of number prefixes ("" for every number))',
    ]
    config = load_config(write(d, "\n".join(body.splitlines()[:5]) + "\n"))
    route = config.trusted_peers[0].route
    assert route == PeerRoute("192.0.2.10", 5062, "udp", ("+44", "00", ""))


def test_tls_subject_needs_tls_and_a_ca(d: Path) -> None:
    """Identifying a peer by certificate needs transport tls and tls.ca_bundle."""
    body = """
        trusted_peers:
          - {name: a, cidrs: [192.0.2.0/24], tls_subject: a.example}
          - {name: b, cidrs: [192.0.2.0/24], tls_subject: b.example, transport: tls}
        """
    assert errors(d, body) == [
        "2:51: trusted_peers[0].tls_subject: a certificate identity needs a TLS transport "
        "(expected transport: tls)",
        "3:51: trusted_peers[1].tls_subject: peer certificates cannot be verified without a CA "
        "(expected tls.ca_bundle)",
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("media:\n  port_range: {start: 20001, end: 30000}\n",
         "2:23: media.port_range.start: 20001 is odd (expected an even port: RTP uses even ports "
         "and RTCP the next odd one)"),
        ("media:\n  port_range: {start: 30000, end: 30000}\n",
         "2:35: media.port_range.end: 30000 is not above start (30000) (expected end > start)"),
        ("media:\n  port_range: {start: 20000, end: 70000}\n",
         "2:35: media.port_range.end: 70000 is out of range (expected a port in 1..65535)"),
    ],
)  # fmt: skip
def test_port_range(d: Path, body: str, expected: str) -> None:
    """The relay port range starts on an even port and ends above its start."""
    assert errors(d, body) == [expected]


def test_port_range_may_not_cover_a_sip_udp_port(d: Path) -> None:
    """Relay ports may not include a SIP UDP listener on an overlapping address."""
    assert errors(d, "media:\n  port_range: {start: 5000, end: 6000}\n") == [
        "2:3: media.port_range: 5000-6000 includes the SIP listener internal udp 127.0.0.1:5080 "
        "(expected a port range apart from the SIP ports)"
    ]


def test_missing_files_are_reported_with_the_resolved_path(d: Path) -> None:
    """A missing certificate or rule file names the absolute path it looked for."""
    body = """
        rules:
          files: [rules/missing.yaml, "rules/*.yaml"]
        tls:
          certificate: certs/nope.crt
          private_key: certs
        """
    resolved = f"relative paths are resolved against {d}"
    assert errors(d, body, tls=False) == [
        f"2:11: rules.files[0]: file not found: {d}/rules/missing.yaml (expected an existing file "
        f"or a glob pattern; {resolved})",
        f"4:16: tls.certificate: file not found: {d}/certs/nope.crt (expected an existing file; "
        f"{resolved})",
        f"5:16: tls.private_key: is a directory, not a file: {d}/certs (expected an existing "
        f"file; {resolved})",
    ]


def test_tls_certificate_is_required_by_a_tls_listener(tmp_path: Path) -> None:
    """With the external TLS listener on (the default) a certificate must be configured."""
    assert errors(tmp_path, "node: {id: a}\n", tls=False) == [
        "1:1: tls.certificate: required because interfaces.external.tls is enabled (expected a "
        "PEM certificate file)"
    ]


def test_no_tls_listener_needs_no_certificate(tmp_path: Path) -> None:
    """With TLS disabled everywhere, no certificate is needed."""
    body = "interfaces:\n  external:\n    tls: {enabled: false}\n    udp: {enabled: true}\n"
    config = load_config(write(tmp_path, body, tls=False))
    assert config.tls.certificate is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.0", "TLS 1.0 is obsolete and insecure (RFC 8996)"),
        ('"1.1"', "TLS 1.1 is obsolete and insecure (RFC 8996)"),
        ("1.4", 'invalid TLS version "1.4"'),
    ],
)
def test_tls_min_version(d: Path, value: str, expected: str) -> None:
    """TLS 1.0/1.1 are refused with a clear reason; only 1.2 and 1.3 exist here."""
    body = f"{TLS_BLOCK}  min_version: {value}\n"
    assert errors(d, body, tls=False) == [
        f"4:16: tls.min_version: {expected} (expected one of: 1.2, 1.3)"
    ]


def test_client_certificates_need_a_ca_bundle(d: Path) -> None:
    """require_client_certificate without ca_bundle cannot verify anything."""
    body = f"{TLS_BLOCK}  require_client_certificate: true\n"
    assert errors(d, body, tls=False) == [
        "4:31: tls.require_client_certificate: client certificates cannot be verified without a "
        "CA (expected tls.ca_bundle)"
    ]


def test_key_must_match_certificate(d: Path) -> None:
    """A private key that is not the certificate's is rejected at load time."""
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (d / "other.key").write_bytes(other)
    body = "tls:\n  certificate: certs/server.crt\n  private_key: other.key\n"
    assert errors(d, body, tls=False) == [
        "3:16: tls.private_key: the private key does not match tls.certificate (expected the key "
        "the certificate was issued for)"
    ]


def test_garbage_certificate(d: Path) -> None:
    """A certificate file that holds no PEM certificate is rejected."""
    (d / "bad.crt").write_text("not a certificate\n")
    body = "tls:\n  certificate: bad.crt\n  private_key: certs/server.key\n"
    assert errors(d, body, tls=False) == [
        f"2:16: tls.certificate: no valid PEM certificate in {d}/bad.crt (expected a PEM file "
        "with '-----BEGIN CERTIFICATE-----' blocks)"
    ]


def test_listeners_may_not_clash(d: Path) -> None:
    """The same address, port and socket type twice is an error, TCP and TLS included."""
    body = """
        interfaces:
          external:
            tcp: {enabled: true, port: 5061}
          internal:
            udp: {enabled: true, port: 5080}
            tcp: {enabled: true, port: 5061}
        """
    assert errors(d, body) == [
        "3:32: interfaces.external.tcp.port: tcp 127.0.0.1:5061 clashes with interfaces.external"
        ".tls (external tls 127.0.0.1:5061) (expected a distinct address or port for each "
        "listener)",
        "6:32: interfaces.internal.tcp.port: tcp 127.0.0.1:5061 clashes with interfaces.external"
        ".tcp (external tcp 127.0.0.1:5061) (expected a distinct address or port for each "
        "listener)",
    ]


def test_wildcard_overlaps_specific_address(d: Path) -> None:
    """A wildcard listener clashes with a specific address of its family on the same port."""
    body = """
        interfaces:
          external:
            address: "::"
            advertised_address: 2001:db8::1
          internal:
            udp: {enabled: false}
            tls: {enabled: true, port: 5061}
        """
    assert errors(d, body) == [
        "7:32: interfaces.internal.tls.port: tls 127.0.0.1:5061 clashes with interfaces.external"
        ".tls (external tls [::]:5061) (expected a distinct address or port for each listener)"
    ]


def test_same_port_different_address_is_fine(d: Path) -> None:
    """Two listeners on different specific addresses may share a port."""
    body = "interfaces:\n  internal:\n    address: 127.0.0.2\n    udp: {port: 5061}\n"
    assert load_config(write(d, body)).interfaces.internal.udp.port == 5061


def test_wildcard_needs_an_advertised_address(d: Path) -> None:
    """A wildcard bind address without advertised_address is rejected."""
    assert errors(d, "interfaces:\n  external:\n    address: 0.0.0.0\n") == [
        "3:14: interfaces.external.address: 0.0.0.0 is a wildcard that peers cannot be sent to "
        "(expected advertised_address set to this host's reachable address)"
    ]


def test_interface_needs_a_transport(d: Path) -> None:
    """An interface with every transport disabled is an error."""
    assert errors(d, "interfaces:\n  internal:\n    udp: {enabled: false}\n") == [
        "2:3: interfaces.internal: no transport is enabled (expected at least one of udp, tcp, tls "
        "with enabled: true)"
    ]


def test_t1_must_be_below_t2(d: Path) -> None:
    """RFC 3261 timers: T1 must be smaller than T2."""
    assert errors(d, "timers:\n  t1: 4\n  t2: 2\n") == [
        "3:7: timers.t2: t2 (2) must be greater than t1 (4) (expected t1 < t2 (RFC 3261 17.1.1.1))"
    ]


def test_limits_are_consistent(d: Path) -> None:
    """A line may not exceed a message, and a connection buffer must hold one message."""
    body = "limits:\n  max_line_bytes: 70000\n  max_buffered_bytes: 2048\n"
    assert errors(d, body) == [
        "2:19: limits.max_line_bytes: 70000 exceeds max_message_bytes (65535) (expected at most "
        "limits.max_message_bytes)",
        "3:23: limits.max_buffered_bytes: 2048 cannot hold one message of max_message_bytes "
        "(65535) (expected at least limits.max_message_bytes)",
    ]


def test_admin_must_stay_local_unless_allowed(d: Path) -> None:
    """A non-loopback admin address needs allow_remote, and remote access needs a token."""
    assert errors(d, "admin:\n  address: 0.0.0.0\n") == [
        "2:12: admin.address: 0.0.0.0 would expose the admin API beyond this host (expected a "
        "loopback address, or allow_remote: true)"
    ]
    assert errors(d, "admin:\n  address: 0.0.0.0\n  allow_remote: true\n") == [
        "3:17: admin.allow_remote: remote admin access needs authentication (expected "
        "admin.token_file)"
    ]


def test_admin_port_may_not_clash(d: Path) -> None:
    """An enabled admin endpoint may not take a SIP TCP/TLS port."""
    assert errors(d, "admin:\n  enabled: true\n  port: 5061\n") == [
        "3:9: admin.port: 5061 clashes with the SIP listener external tls 127.0.0.1:5061 "
        "(expected a port not used by a SIP TCP/TLS listener)"
    ]


def test_empty_token_file(d: Path) -> None:
    """An empty admin token file is refused."""
    (d / "token").write_text("")
    assert errors(d, "admin:\n  token_file: token\n") == [
        f"2:15: admin.token_file: the token file is empty: {d}/token (expected a file holding the "
        "admin bearer token)"
    ]


def test_redis_backend_needs_a_url(d: Path) -> None:
    """backend: redis without redis_url is an error at the state section."""
    assert errors(d, "state:\n  backend: redis\n") == [
        "1:1: state.redis_url: required when backend is redis (expected a redis://, rediss://, "
        "unix://, redis+sentinel://host[,host...]/service or redis+cluster://host[,host...] URL)"
    ]


def test_redis_password_is_masked_in_errors(d: Path) -> None:
    """A bad Redis URL is reported with its password masked."""
    body = 'state:\n  backend: redis\n  redis_url: "http://admin:hunter2@cache"\n'
    lines = errors(d, body)
    assert lines == [
        "3:14: state.redis_url: unsupported scheme 'http' in \"http://admin:***@cache\" "
        "(expected a redis://, rediss://, unix://, redis+sentinel://host[,host...]/service or "
        "redis+cluster://host[,host...] URL)"
    ]
    assert errors(d, "state:\n  redis_url: 5\n") == [
        "2:14: state.redis_url: got an integer (***) (expected a redis://, rediss://, unix://, "
        "redis+sentinel://host[,host...]/service or redis+cluster://host[,host...] URL)"
    ]


def test_redis_sentinel_and_cluster_urls(d: Path) -> None:
    """Sentinel and Cluster URLs list several hosts; a Sentinel URL must name its service."""
    for url in ("redis+sentinel://:pw@s1:26379,s2/mymaster/0", "rediss+cluster://n1:7000,n2:7001"):
        config = load_config(write(d, f"state:\n  backend: redis\n  redis_url: {url}\n"))
        assert config.state.redis_url == url
    assert errors(d, "state:\n  backend: redis\n  redis_url: redis+sentinel://s1,s2\n") == [
        "3:14: state.redis_url: no Sentinel service name (redis+sentinel://host/service) in "
        "\"redis+sentinel://s1,s2\" (expected a redis://, rediss://, unix://, "
        "redis+sentinel://host[,host...]/service or redis+cluster://host[,host...] URL)"
    ]
    bad = errors(d, "state:\n  backend: redis\n  redis_url: redis+cluster://n1:x,n2\n")
    assert len(bad) == 1 and "invalid host 'n1:x'" in bad[0]


def test_redis_password_is_masked_in_repr(d: Path) -> None:
    """Neither repr(config) nor redis_url_masked shows the Redis password."""
    config = load_config(write(d, "state:\n  backend: redis\n  redis_url: redis://:hunter2@h/0\n"))
    assert "hunter2" not in repr(config)
    assert config.state.redis_url_masked == "redis://:***@h/0"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:pw@host", "rediss://user:***@host"),
        ("redis://pw@host", "redis://***@host"),
        ("redis://host/0?password=pw&db=1", "redis://host/0?password=***&db=1"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("redis+sentinel://s1,s2/mymaster?sentinel_password=sp&db=2",
         "redis+sentinel://s1,s2/mymaster?sentinel_password=***&db=2"),
        ("rediss://h?auth_token=t", "rediss://h?auth_token=***"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    """mask_url hides userinfo passwords and every secret-looking query parameter."""
    assert mask_url(url) == masked


def test_scrub_urls_masks_secret_query_values_in_free_text() -> None:
    """An error text that quotes a Sentinel URL loses its passwords, in userinfo and query."""
    text = ("cannot reach redis+sentinel://u:pw@s1:26379,s2/m?sentinel_password=sp&db=1: "
            "connection refused")
    assert scrub_urls(text) == ("cannot reach redis+sentinel://u:***@s1:26379,s2/m?"
                                "sentinel_password=***&db=1: connection refused")


def test_syslog_needs_an_address(d: Path) -> None:
    """An events.syslog section must name its collector."""
    assert errors(d, "events:\n  syslog:\n    port: 514\n") == [
        "2:3: events.syslog.address: missing required key 'address' (expected an IP address or a "
        "host name)"
    ]


def test_jsonl_may_not_be_a_directory(d: Path) -> None:
    """events.jsonl must be a file path, not a directory."""
    assert errors(d, "events:\n  jsonl: certs\n") == [
        f"2:10: events.jsonl: not a usable file path: {d}/certs (expected a file (created if "
        "missing) in a directory)"
    ]


# -- collecting ----------------------------------------------------------------------------------


def test_all_errors_are_reported_together_in_file_order(d: Path) -> None:
    """Every error is collected, sorted by position, and str() shows one per line."""
    shutil.copy(FIXTURES / "many-errors.yaml", d / "many-errors.yaml")
    with pytest.raises(ConfigErrors) as info:
        load_config(d / "many-errors.yaml")
    error = info.value
    assert isinstance(error, ConfigError)
    lines = str(error).splitlines()
    assert len(lines) == len(error.errors) == 6
    positions = [tuple(map(int, re.match(r".*?:(\d+):(\d+):", x).groups())) for x in lines]
    assert positions == sorted(positions)
    assert [e.path for e in error.errors] == [
        "node.id",
        "interfaces.external.tls.prot",
        "limits.max_headers",
        "pbx.port",
        "media.srtp",
        "state.redis_url",
    ]
    assert "hunter2" not in str(error)


def test_error_list_is_capped(d: Path) -> None:
    """Past 50 errors the rest are summarised in one line."""
    body = "trusted_peers:\n" + "".join(f"  - {{name: p{i}, cidrs: [x]}}\n" for i in range(60))
    path = write(d, body)
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert len(info.value.errors) == 51
    assert str(info.value.errors[-1]) == "... and 10 more error(s)"


def test_parse_config_from_text(tmp_path: Path) -> None:
    """parse_config validates text directly, naming it by ``source``."""
    text = "interfaces:\n  external:\n    tls: {enabled: false}\n    udp: {enabled: true}\n"
    config = parse_config(text, source="inline", base_dir=tmp_path)
    assert config.source == "inline"
    with pytest.raises(ConfigErrors) as info:
        parse_config(text + "pbx: {port: 0}\n", source="inline", base_dir=tmp_path)
    assert str(info.value).splitlines()[0].startswith("inline:5:13: pbx.port: 0 is out of range")


def test_peer_that_is_not_a_mapping_gives_one_error(d: Path) -> None:
    """A list element of the wrong type is one error, without follow-up 'missing key' noise."""
    assert errors(d, "trusted_peers:\n  - trunk-a\n") == [
        '2:5: trusted_peers[0]: got a string ("trunk-a") (expected a peer mapping)'
    ]

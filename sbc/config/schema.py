"""The configuration schema: one reader per section, then the checks that span sections.

``SECTIONS`` lists the top-level keys in the order they are read; a reader gets the section's
node (``None`` when absent: all defaults) and the sections read before it, and returns its
dataclass.  ``CHECKS`` run on the assembled :class:`~sbc.config.model.Config` and skip values
that already had an error (:meth:`~sbc.config.reader.Reader.ok`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from sbc.config.model import (
    LOG_FORMATS,
    LOG_LEVELS,
    PEER_TRANSPORTS,
    SDES_SUITE_NAMES,
    SRTP_POLICIES,
    STATE_BACKENDS,
    SYSLOG_FACILITIES,
    TLS_VERSIONS,
    TRANSPORTS,
    UNKNOWN_SOURCE_POLICIES,
    AdminConfig,
    Config,
    EventsConfig,
    InterfaceConfig,
    InterfacesConfig,
    IPNetwork,
    LimitsConfig,
    Listener,
    LoggingConfig,
    MediaConfig,
    MediaInterfaceConfig,
    NodeConfig,
    PbxConfig,
    PeerRoute,
    PortRange,
    RegistrationConfig,
    RoutingConfig,
    RulesConfig,
    StateConfig,
    SyslogConfig,
    TimersConfig,
    TlsConfig,
    TlsVersion,
    TransportConfig,
    TrustedPeer,
    default_external,
    default_internal,
    format_hostport,
    has_glob_magic,
)
from sbc.config.reader import Reader, Section, file_problem, is_hostname, is_null, show
from sbc.config.secrets import mask_url

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_EXPECTED = "a name of letters, digits, '.', '_' and '-' (at most 64 characters)"
_MIB = 1024 * 1024
_PEM_READ_LIMIT = 4 * _MIB

SectionReader = Callable[[Reader, "yaml.Node | None", str, Mapping[str, object]], object]


# -- small sections ----------------------------------------------------------------------------


def read_node(r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]) -> object:
    s = r.section(node, path, ["id"])
    return NodeConfig(id=s.string("id", NodeConfig().id, pattern=NAME, expected=NAME_EXPECTED))


def read_logging(
    r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]
) -> object:
    s = r.section(node, path, ["format", "level"])
    d = LoggingConfig()
    return LoggingConfig(
        format=s.choice("format", LOG_FORMATS, d.format),
        level=s.choice("level", LOG_LEVELS, d.level),
    )


def read_interfaces(
    r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]
) -> object:
    s = r.section(node, path, ["external", "internal"])
    return InterfacesConfig(
        external=_interface(s, "external", default_external()),
        internal=_interface(s, "internal", default_internal()),
    )


def _interface(parent: Section, name: str, default: InterfaceConfig) -> InterfaceConfig:
    s = parent.section(name, ["address", "advertised_address", "udp", "tcp", "tls"])
    transports = {}
    for proto in TRANSPORTS:
        d: TransportConfig = getattr(default, proto)
        t = s.section(proto, ["enabled", "port"])
        transports[proto] = TransportConfig(
            enabled=t.boolean("enabled", d.enabled), port=t.port("port", d.port)
        )
    return InterfaceConfig(
        name=name,
        address=s.ip_address("address", default.address),
        advertised_address=s.optional_ip_address("advertised_address"),
        **transports,
    )


def read_limits(r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]) -> object:
    s = r.section(node, path, LimitsConfig.__dataclass_fields__)
    d = LimitsConfig()
    return LimitsConfig(
        max_message_bytes=s.integer("max_message_bytes", d.max_message_bytes, 1024, 16 * _MIB),
        max_headers=s.integer("max_headers", d.max_headers, 1, 10000),
        max_line_bytes=s.integer("max_line_bytes", d.max_line_bytes, 256, 16 * _MIB),
        max_connections=s.integer("max_connections", d.max_connections, 1, 1_000_000),
        max_connections_per_ip=s.integer(
            "max_connections_per_ip", d.max_connections_per_ip, 1, 1_000_000
        ),
        new_connections_per_second_per_ip=s.integer(
            "new_connections_per_second_per_ip", d.new_connections_per_second_per_ip, 1, 1_000_000
        ),
        tls_handshake_timeout=s.seconds("tls_handshake_timeout", d.tls_handshake_timeout),
        idle_timeout=s.seconds("idle_timeout", d.idle_timeout),
        max_buffered_bytes=s.integer("max_buffered_bytes", d.max_buffered_bytes, 1024, 1024 * _MIB),
    )


def read_timers(r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]) -> object:
    s = r.section(node, path, ["t1", "t2", "t4", "ring_timeout"])
    d = TimersConfig()
    return TimersConfig(
        t1=s.seconds("t1", d.t1), t2=s.seconds("t2", d.t2), t4=s.seconds("t4", d.t4),
        ring_timeout=s.seconds("ring_timeout", d.ring_timeout),
    )


def read_registration(
    r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]
) -> object:
    s = r.section(node, path, RegistrationConfig.__dataclass_fields__)
    d = RegistrationConfig()
    day = 86400
    return RegistrationConfig(
        client_max_expires=s.integer("client_max_expires", d.client_max_expires, 10, day),
        client_min_expires=s.integer("client_min_expires", d.client_min_expires, 1, day),
        pbx_min_expires=s.integer("pbx_min_expires", d.pbx_min_expires, 10, 7 * day),
        pbx_max_expires=s.integer("pbx_max_expires", d.pbx_max_expires, 10, 7 * day),
    )


def read_routing(
    r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]
) -> object:
    s = r.section(node, path, RoutingConfig.__dataclass_fields__)
    d = RoutingConfig()
    return RoutingConfig(
        unknown_source=s.choice("unknown_source", UNKNOWN_SOURCE_POLICIES, d.unknown_source)
    )


def read_pbx(r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]) -> object:
    s = r.section(node, path,
                  ["address", "port", "transport", "tls_verify", "server_name", "srtp"])
    d = PbxConfig()
    transport = s.choice("transport", TRANSPORTS, d.transport)
    server_name = s.optional_string("server_name")
    if server_name is not None and not _is_host(server_name):
        r.error(
            s.path_of("server_name"),
            f"invalid host {show(server_name)}",
            expected="a host name or an IP address",
        )
    return PbxConfig(
        address=s.host("address", d.address),
        port=s.port("port", 5061 if transport == "tls" else d.port),
        transport=transport,
        tls_verify=s.boolean("tls_verify", d.tls_verify),
        server_name=server_name,
        srtp=s.choice("srtp", SRTP_POLICIES, d.srtp),
    )


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return is_hostname(text)
    return True


def read_trusted_peers(
    r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]
) -> object:
    peers: list[TrustedPeer] = []
    keys = ["name", "cidrs", "transport", "tls_subject", "srtp", "route"]
    for item_path, item in r.items(node, path, what="peers"):
        if is_null(item):
            r.error(item_path, "got null", expected="a peer mapping", node=item)
            continue
        s = r.section(item, item_path, keys, what="a peer mapping")
        name = s.string("name", "", required=True, pattern=NAME, expected=NAME_EXPECTED)
        cidrs: list[IPNetwork] = []
        cidr_items = s.items("cidrs", what="networks")
        if "cidrs" not in s and s.valid:
            r.error(
                s.path_of("cidrs"),
                "missing required key 'cidrs'",
                expected="a list of networks in CIDR notation",
                location=r.where(item_path),
            )
        elif not cidr_items and r.ok(s.path_of("cidrs")):
            r.error(
                s.path_of("cidrs"),
                "the list is empty",
                expected="at least one network",
                location=r.where(s.path_of("cidrs")),
            )
        for cidr_path, cidr_node in cidr_items:
            network = r.network(cidr_node, cidr_path)
            if network is not None:
                cidrs.append(network)
        peers.append(
            TrustedPeer(
                name=name,
                cidrs=tuple(cidrs),
                transport=s.choice("transport", PEER_TRANSPORTS, "any"),
                tls_subject=s.optional_string("tls_subject"),
                srtp=s.optional_choice("srtp", SRTP_POLICIES),
                route=_read_route(r, s) if "route" in s else None,
            )
        )
    return tuple(peers)


PREFIX = re.compile(r"\+?[0-9*#]{0,32}")


def _read_route(r: Reader, peer: Section) -> PeerRoute | None:
    s = peer.section("route", ["address", "port", "transport", "prefixes"])
    if "address" not in s and s.valid:
        r.error(s.path_of("address"), "missing required key 'address'",
                expected="the peer's IP address", location=r.where(peer.path_of("route")))
    prefixes: list[str] = []
    for item_path, item in s.items("prefixes", what="prefixes"):
        scalar = r.scalar(item, item_path, ("str", "int"), "a quoted prefix string")
        text = None if scalar is None else str(scalar.value)
        if text is not None and not PREFIX.fullmatch(text):
            r.error(item_path, f"invalid prefix {show(text)}",
                    expected="digits, *, #, optionally after '+' (at most 32)", node=item)
        elif text is not None:
            prefixes.append(text)
    if "prefixes" not in s and s.valid:
        r.error(s.path_of("prefixes"), "missing required key 'prefixes'",
                expected="a list of number prefixes (\"\" for every number)",
                location=r.where(peer.path_of("route")))
    return PeerRoute(
        address=s.ip_address("address", "0.0.0.0"),
        port=s.port("port", 5060),
        transport=s.choice("transport", TRANSPORTS, "udp"),
        prefixes=tuple(prefixes),
    )


def read_tls(r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]) -> object:
    keys = ["certificate", "private_key", "ca_bundle", "require_client_certificate", "min_version"]
    s = r.section(node, path, keys)
    d = TlsConfig()
    return TlsConfig(
        certificate=s.existing_file("certificate"),
        private_key=s.existing_file("private_key"),
        ca_bundle=s.existing_file("ca_bundle"),
        require_client_certificate=s.boolean(
            "require_client_certificate", d.require_client_certificate
        ),
        min_version=_tls_version(r, s, d.min_version),
    )


def _tls_version(r: Reader, s: Section, default: TlsVersion) -> TlsVersion:
    """``1.2`` or ``1.3``, written as a string or (unquoted) as a YAML number."""
    node = s.node_of("min_version")
    path = s.path_of("min_version")
    expected = "one of: " + ", ".join(TLS_VERSIONS)
    if node is None:
        return default
    scalar = r.scalar(node, path, ("str", "float", "int"), expected)
    if scalar is None:
        return default
    text = str(scalar.value).strip()
    for version in TLS_VERSIONS:
        if text == version:
            return version
    if text in ("1", "1.0", "1.1", "1.00", "1.10"):
        r.error(
            path, f"TLS {text} is obsolete and insecure (RFC 8996)", expected=expected, node=node
        )
    else:
        r.error(path, f"invalid TLS version {show(text)}", expected=expected, node=node)
    return default


def read_media(r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]) -> object:
    keys = [
        "port_range",
        "external",
        "internal",
        "srtp",
        "allow_sdes_over_insecure_transport",
        "inactivity_timeout",
        "max_call_duration",
        "suites",
        "max_sessions",
        "max_pps",
        "workers",
    ]
    s = r.section(node, path, keys)
    d = MediaConfig()
    suites: list[str] = []
    for item_path, item in s.items("suites", what="SDES suites"):
        name = r.choice(item, item_path, SDES_SUITE_NAMES)
        if name is not None:
            suites.append(name)
    interfaces = done["interfaces"]
    assert isinstance(interfaces, InterfacesConfig)
    pr = s.section("port_range", ["start", "end"])
    sides = {}
    for side in ("external", "internal"):
        sip: InterfaceConfig = getattr(interfaces, side)
        m = s.section(side, ["address", "advertised_address"])
        advertised = m.optional_ip_address("advertised_address")
        if "address" not in m and advertised is None:
            advertised = sip.advertised_address  # same host, same NAT as the SIP side
        sides[side] = MediaInterfaceConfig(
            address=m.ip_address("address", sip.address), advertised_address=advertised
        )
    return MediaConfig(
        port_range=PortRange(
            start=pr.port("start", d.port_range.start), end=pr.port("end", d.port_range.end)
        ),
        srtp=s.choice("srtp", SRTP_POLICIES, d.srtp),
        allow_sdes_over_insecure_transport=s.boolean(
            "allow_sdes_over_insecure_transport", d.allow_sdes_over_insecure_transport
        ),
        inactivity_timeout=s.seconds("inactivity_timeout", d.inactivity_timeout),
        max_call_duration=s.optional_seconds("max_call_duration", d.max_call_duration),
        suites=tuple(suites),
        max_sessions=s.integer("max_sessions", d.max_sessions, 1, 1_000_000),
        max_pps=s.integer("max_pps", d.max_pps, 10, 100_000),
        workers=s.integer("workers", d.workers, 0, 64),
        **sides,
    )


def read_state(r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]) -> object:
    s = r.section(node, path, ["backend", "redis_url"])
    d = StateConfig()
    backend = s.choice("backend", STATE_BACKENDS, d.backend)
    expected = ("a redis://, rediss://, unix://, redis+sentinel://host[,host...]/service or "
                "redis+cluster://host[,host...] URL")
    url = s.optional_string("redis_url", secret=True, expected=expected)
    url_path = s.path_of("redis_url")
    if url is not None:
        problem = _redis_url_problem(url)
        if problem:
            r.error(url_path, f"{problem} in {show(mask_url(url))}", expected=expected)
            url = None
    elif backend == "redis" and r.ok(url_path):
        r.error(
            url_path, "required when backend is redis", expected=expected, location=r.where(s.path)
        )
    return StateConfig(backend=backend, redis_url=url)


_MULTI_HOST = ("redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")


def _redis_url_problem(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in _MULTI_HOST:
        netloc, _, path = rest.partition("/")
        hosts = netloc.rpartition("@")[2]
        for host in hosts.split(","):
            try:
                parts = urlsplit(f"redis://{host}")
                parts.port  # noqa: B018 -- raises ValueError for a bad port
            except ValueError:
                return f"invalid host '{host}'"
            if not parts.hostname:
                return "no host" if not host else f"invalid host '{host}'"
        if scheme.lower().endswith("+sentinel") and not path.strip("/"):
            return "no Sentinel service name (redis+sentinel://host/service)"
        return ""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError:
        return "invalid URL"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return f"unsupported scheme '{parts.scheme}'" if parts.scheme else "no scheme"
    if parts.scheme == "unix":
        return "" if parts.path else "no socket path"
    return "" if parts.hostname else "no host"


def read_rules(r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]) -> object:
    s = r.section(node, path, ["files"])
    patterns: list[str] = []
    for item_path, item in s.items("files", what="file paths or glob patterns"):
        text = r.string(item, item_path, expected="a file path or a glob pattern")
        if text is None:
            continue
        resolved = r.resolve(text)
        if not has_glob_magic(text):
            problem = file_problem(resolved)
            if problem:
                r.error(
                    item_path,
                    f"{problem}: {resolved}",
                    expected=f"an existing file or a glob pattern; relative paths are "
                    f"resolved against {r.base_dir}",
                    node=item,
                )
                continue
        patterns.append(str(resolved))
    return RulesConfig(files=tuple(patterns))


def read_events(r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]) -> object:
    s = r.section(node, path, ["jsonl", "syslog"])
    jsonl = None
    text = s.optional_string("jsonl", expected="a file path")
    if text is not None:
        jsonl = r.resolve(text)
        if jsonl.is_dir() or (jsonl.parent.exists() and not jsonl.parent.is_dir()):
            r.error(
                s.path_of("jsonl"),
                f"not a usable file path: {jsonl}",
                expected="a file (created if missing) in a directory",
            )
    syslog = None
    syslog_node = s.node_of("syslog")
    if syslog_node is not None and not is_null(syslog_node):
        y = s.section("syslog", ["address", "port", "facility"])
        syslog = SyslogConfig(
            address=y.host("address", "127.0.0.1", required=True),
            port=y.port("port", 514),
            facility=y.choice("facility", SYSLOG_FACILITIES, "local0"),
        )
    return EventsConfig(jsonl=jsonl, syslog=syslog)


def read_admin(r: Reader, node: yaml.Node | None, path: str, done: Mapping[str, object]) -> object:
    s = r.section(node, path, ["enabled", "address", "port", "token_file", "allow_remote"])
    d = AdminConfig()
    token_file = s.existing_file("token_file")
    if token_file is not None and token_file.stat().st_size == 0:
        r.error(
            s.path_of("token_file"),
            f"the token file is empty: {token_file}",
            expected="a file holding the admin bearer token",
        )
    return AdminConfig(
        enabled=s.boolean("enabled", d.enabled),
        address=s.ip_address("address", d.address),
        port=s.port("port", d.port),
        token_file=token_file,
        allow_remote=s.boolean("allow_remote", d.allow_remote),
    )


SECTIONS: dict[str, SectionReader] = {
    "node": read_node,
    "logging": read_logging,
    "interfaces": read_interfaces,
    "limits": read_limits,
    "timers": read_timers,
    "pbx": read_pbx,
    "trusted_peers": read_trusted_peers,
    "registration": read_registration,
    "routing": read_routing,
    "tls": read_tls,
    "media": read_media,
    "state": read_state,
    "rules": read_rules,
    "events": read_events,
    "admin": read_admin,
}


# -- checks across values ----------------------------------------------------------------------


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def _overlap(a: str, b: str) -> bool:
    """Would binding both addresses (same protocol and port) clash?

    A wildcard covers its family; an IPv6 wildcard is dual-stack on Linux and covers IPv4 too.
    """
    ia, ib = _ip(a), _ip(b)
    if ia == ib:
        return True
    for x, y in ((ia, ib), (ib, ia)):
        if x.is_unspecified and (x.version == y.version or x.version == 6):
            return True
    return False


def check_interfaces(r: Reader, config: Config) -> None:
    for iface in (config.interfaces.external, config.interfaces.internal):
        path = f"interfaces.{iface.name}"
        if not iface.listeners() and r.ok(path):
            r.error(
                path,
                "no transport is enabled",
                expected="at least one of udp, tcp, tls with enabled: true",
            )
        _check_advertised(r, path, iface.address, iface.advertised_address)
    seen: list[tuple[Listener, str]] = []
    for listener in config.listeners():
        path = f"interfaces.{listener.interface}.{listener.transport}"
        if not r.ok(path, f"interfaces.{listener.interface}.address"):
            continue
        for other, other_path in seen:
            same_kind = (listener.transport == "udp") == (other.transport == "udp")
            if (
                same_kind
                and other.port == listener.port
                and _overlap(other.address, listener.address)
            ):
                # Blame the listener written in the file rather than one left at its default.
                blamed, blamed_path, first, first_path = listener, path, other, other_path
                if not r.written(f"{path}.port") and r.written(f"{other_path}.port"):
                    blamed, blamed_path, first, first_path = other, other_path, listener, path
                r.error(
                    f"{blamed_path}.port",
                    f"{blamed.transport} {format_hostport(blamed.address, blamed.port)}"
                    f" clashes with {first_path} ({first})",
                    expected="a distinct address or port for each listener",
                )
                break
        seen.append((listener, path))


def _check_advertised(r: Reader, path: str, address: str, advertised: str | None) -> None:
    if advertised is not None and r.ok(f"{path}.advertised_address"):
        ip = _ip(advertised)
        if ip.is_unspecified or ip.is_multicast:
            r.error(
                f"{path}.advertised_address",
                f"{advertised} cannot be advertised",
                expected="a unicast address that peers can reach",
            )
    if advertised is None and r.ok(f"{path}.address") and _ip(address).is_unspecified:
        r.error(
            f"{path}.address",
            f"{address} is a wildcard that peers cannot be sent to",
            expected="advertised_address set to this host's reachable address",
        )


def check_limits(r: Reader, config: Config) -> None:
    limits = config.limits
    if r.ok("limits.max_line_bytes", "limits.max_message_bytes") and (
        limits.max_line_bytes > limits.max_message_bytes
    ):
        r.error(
            "limits.max_line_bytes",
            f"{limits.max_line_bytes} exceeds max_message_bytes ({limits.max_message_bytes})",
            expected="at most limits.max_message_bytes",
        )
    if r.ok("limits.max_buffered_bytes", "limits.max_message_bytes") and (
        limits.max_buffered_bytes < limits.max_message_bytes
    ):
        r.error(
            "limits.max_buffered_bytes",
            f"{limits.max_buffered_bytes} cannot hold one message of max_message_bytes "
            f"({limits.max_message_bytes})",
            expected="at least limits.max_message_bytes",
        )
    if r.ok("limits.max_connections_per_ip", "limits.max_connections") and (
        limits.max_connections_per_ip > limits.max_connections
    ):
        r.error(
            "limits.max_connections_per_ip",
            f"{limits.max_connections_per_ip} exceeds max_connections ({limits.max_connections})",
            expected="at most limits.max_connections",
        )


def check_timers(r: Reader, config: Config) -> None:
    t = config.timers
    if r.ok("timers.t1", "timers.t2") and t.t1 >= t.t2:
        r.error(
            "timers.t2",
            f"t2 ({t.t2:g}) must be greater than t1 ({t.t1:g})",
            expected="t1 < t2 (RFC 3261 17.1.1.1)",
        )


def check_registration(r: Reader, config: Config) -> None:
    g = config.registration
    for lo, hi in (("client_min_expires", "client_max_expires"),
                   ("pbx_min_expires", "pbx_max_expires")):
        a, b = getattr(g, lo), getattr(g, hi)
        if r.ok(f"registration.{lo}", f"registration.{hi}") and a > b:
            r.error(
                f"registration.{hi}",
                f"{hi} ({b}) is below {lo} ({a})",
                expected=f"{lo} <= {hi}",
            )


def check_peers(r: Reader, config: Config) -> None:
    first: dict[str, int] = {}
    for index, peer in enumerate(config.trusted_peers):
        path = f"trusted_peers[{index}]"
        if peer.name and r.ok(f"{path}.name"):
            if peer.name in first:
                line = r.where(f"trusted_peers[{first[peer.name]}].name").line
                r.error(
                    f"{path}.name",
                    f"duplicate peer name '{peer.name}' (first at line {line})",
                    expected="a unique name per peer",
                )
            else:
                first[peer.name] = index
        if peer.tls_subject is None or not r.ok(f"{path}.tls_subject", f"{path}.transport"):
            continue
        if peer.transport != "tls":
            r.error(
                f"{path}.tls_subject",
                "a certificate identity needs a TLS transport",
                expected="transport: tls",
            )
        elif config.tls.ca_bundle is None and r.ok("tls.ca_bundle"):
            r.error(
                f"{path}.tls_subject",
                "peer certificates cannot be verified without a CA",
                expected="tls.ca_bundle",
            )


def check_tls(r: Reader, config: Config) -> None:
    tls = config.tls
    listeners = [
        f"interfaces.{x.interface}.tls" for x in config.listeners() if x.transport == "tls"
    ]
    if listeners and tls.certificate is None and r.ok("tls.certificate"):
        r.error(
            "tls.certificate",
            f"required because {listeners[0]} is enabled",
            expected="a PEM certificate file",
        )
    if tls.certificate is not None and tls.private_key is None and r.ok("tls.private_key"):
        r.error(
            "tls.private_key", "required with tls.certificate", expected="a PEM private key file"
        )
    if (
        tls.private_key is not None
        and tls.certificate is None
        and r.ok("tls.certificate")
        and (not listeners)
    ):
        r.error(
            "tls.certificate", "required with tls.private_key", expected="a PEM certificate file"
        )
    if tls.require_client_certificate and tls.ca_bundle is None and r.ok("tls.ca_bundle"):
        r.error(
            "tls.require_client_certificate",
            "client certificates cannot be verified without a CA",
            expected="tls.ca_bundle",
        )
    cert = key = None
    if tls.certificate is not None:
        certs = _load_pem(r, "tls.certificate", tls.certificate, "certificate")
        cert = certs[0] if certs else None
    if tls.ca_bundle is not None:
        _load_pem(r, "tls.ca_bundle", tls.ca_bundle, "certificate")
    if tls.private_key is not None:
        key = _load_key(r, "tls.private_key", tls.private_key)
    if cert is not None and key is not None:
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            r.error(
                "tls.private_key",
                "the private key does not match tls.certificate",
                expected="the key the certificate was issued for",
            )


def _read_limited(r: Reader, path: str, file: Path) -> bytes | None:
    try:
        with file.open("rb") as f:
            data = f.read(_PEM_READ_LIMIT + 1)
    except OSError as exc:
        r.error(path, f"cannot read {file} ({exc.strerror or exc})", expected="a readable file")
        return None
    if len(data) > _PEM_READ_LIMIT:
        r.error(path, f"{file} is too large", expected="a PEM file")
        return None
    return data


def _load_pem(r: Reader, path: str, file: Path, what: str) -> list[x509.Certificate]:
    data = _read_limited(r, path, file)
    if data is None:
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        r.error(
            path,
            f"no valid PEM {what} in {file}",
            expected="a PEM file with '-----BEGIN CERTIFICATE-----' blocks",
        )
        return []


def _load_key(r: Reader, path: str, file: Path) -> PrivateKeyTypes | None:
    data = _read_limited(r, path, file)
    if data is None:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        r.error(
            path,
            f"the private key in {file} is encrypted",
            expected="an unencrypted PEM private key (protect it with file permissions)",
        )
        return None
    except (ValueError, UnsupportedAlgorithm):
        r.error(path, f"no valid PEM private key in {file}", expected="a PEM private key")
        return None
    return key


def check_media(r: Reader, config: Config) -> None:
    media = config.media
    pr = media.port_range
    if r.ok("media.port_range.start") and pr.start % 2:
        r.error(
            "media.port_range.start",
            f"{pr.start} is odd",
            expected="an even port: RTP uses even ports and RTCP the next odd one",
        )
    elif r.ok("media.port_range.start", "media.port_range.end") and pr.start >= pr.end:
        r.error(
            "media.port_range.end",
            f"{pr.end} is not above start ({pr.start})",
            expected="end > start",
        )
    elif r.ok("media.port_range", "media.workers") and media.workers > (pr.end - pr.start) // 4:
        r.error(
            "media.workers",
            f"{media.workers} workers cannot share {pr.start}-{pr.end}",
            expected="at most one worker per 2 port pairs of media.port_range",
        )
    for side in ("external", "internal"):
        m: MediaInterfaceConfig = getattr(media, side)
        sip: InterfaceConfig = getattr(config.interfaces, side)
        if (m.address, m.advertised_address) != (sip.address, sip.advertised_address):
            # Inherited values were checked (and reported) on the interface already.
            _check_advertised(r, f"media.{side}", m.address, m.advertised_address)
    if not r.ok("media.port_range", "media.external.address", "media.internal.address"):
        return
    for listener in config.listeners():
        if listener.transport != "udp" or listener.port not in pr:
            continue
        if any(
            _overlap(getattr(media, s).address, listener.address) for s in ("external", "internal")
        ):
            r.error(
                "media.port_range",
                f"{pr.start}-{pr.end} includes the SIP listener {listener}",
                expected="a port range apart from the SIP ports",
            )
            return


def check_admin(r: Reader, config: Config) -> None:
    admin = config.admin
    if r.ok("admin.address") and not _ip(admin.address).is_loopback and not admin.allow_remote:
        r.error(
            "admin.address",
            f"{admin.address} would expose the admin API beyond this host",
            expected="a loopback address, or allow_remote: true",
        )
    if admin.allow_remote and admin.token_file is None and r.ok("admin.token_file"):
        r.error(
            "admin.allow_remote",
            "remote admin access needs authentication",
            expected="admin.token_file",
        )
    if not admin.enabled or not r.ok("admin.address", "admin.port"):
        return
    for listener in config.listeners():
        if (
            listener.transport != "udp"
            and listener.port == admin.port
            and _overlap(listener.address, admin.address)
        ):
            r.error(
                "admin.port",
                f"{admin.port} clashes with the SIP listener {listener}",
                expected="a port not used by a SIP TCP/TLS listener",
            )
            return


CHECKS: list[Callable[[Reader, Config], None]] = [
    check_interfaces,
    check_limits,
    check_timers,
    check_registration,
    check_peers,
    check_tls,
    check_media,
    check_admin,
]


def read_config(r: Reader, root: yaml.Node, source: str) -> Config:
    """Read every section of ``root`` (a mapping) and run the checks; errors land in ``r``."""
    top = r.section(root, "", SECTIONS, what="a mapping of configuration sections")
    done: dict[str, object] = {}
    for name, reader in SECTIONS.items():
        done[name] = reader(r, top.node_of(name), name, done)
    config = Config(source=source, **done)  # type: ignore[arg-type]
    for check in CHECKS:
        check(r, config)
    return config

"""The configuration as frozen dataclasses.

Every section has defaults, so ``Config`` built from an almost empty file is usable, and the
defaults are the safe choice: TLS 1.2 at least, admin on loopback only, SRTP required on the
external side, SDES keys never sent over a transport that is not TLS.  The field names are the
YAML keys (``docs/configuration.md`` documents each one).  Paths are absolute: the loader
resolves relative ones against the directory that contains the configuration file.

To add a section: a dataclass here with a default for every field, a field on :class:`Config`,
a reader function in :mod:`sbc.config.schema` registered in ``SECTIONS``, and its keys in
``docs/configuration.md``.
"""

from __future__ import annotations

import glob
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sbc.config.secrets import mask_url

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LogFormat = Literal["text", "json"]
LogLevelName = Literal["debug", "info", "warn", "error"]
Transport = Literal["udp", "tcp", "tls"]
PeerTransport = Literal["any", "udp", "tcp", "tls"]
SrtpPolicy = Literal["require", "optional", "none"]
StateBackend = Literal["memory", "redis"]
UnknownSource = Literal["reject", "drop", "allow"]
TlsVersion = Literal["1.2", "1.3"]

LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LOG_LEVELS: tuple[LogLevelName, ...] = ("debug", "info", "warn", "error")
TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp", "tls")
PEER_TRANSPORTS: tuple[PeerTransport, ...] = ("any", "udp", "tcp", "tls")
SRTP_POLICIES: tuple[SrtpPolicy, ...] = ("require", "optional", "none")
# RFC 4568 6.2, RFC 6188, RFC 7714 suite names (the installed libsrtp is probed at start; a
# configured suite it lacks is skipped with a warning).
SDES_SUITE_NAMES: tuple[str, ...] = (
    "AEAD_AES_256_GCM", "AEAD_AES_128_GCM", "AES_256_CM_HMAC_SHA1_80", "AES_256_CM_HMAC_SHA1_32",
    "AES_192_CM_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_32", "AES_CM_128_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32",
)
UNKNOWN_SOURCE_POLICIES: tuple[UnknownSource, ...] = ("reject", "drop", "allow")
STATE_BACKENDS: tuple[StateBackend, ...] = ("memory", "redis")
TLS_VERSIONS: tuple[TlsVersion, ...] = ("1.2", "1.3")
SYSLOG_FACILITIES: tuple[str, ...] = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
    "local7",
)  # fmt: skip


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals bracketed (RFC 3986 3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """This instance: ``id`` names it in logs, events and the shared state store."""

    id: str = "sbc-1"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """Log output: ``format`` text or json lines, and the lowest ``level`` written."""

    format: LogFormat = "text"
    level: LogLevelName = "info"


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """One SIP transport on an interface."""

    enabled: bool
    port: int


@dataclass(frozen=True, slots=True)
class Listener:
    """One socket to open: an interface's transport on ``address:port``."""

    interface: str
    transport: Transport
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.interface} {self.transport} {format_hostport(self.address, self.port)}"


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    """A SIP interface (``external`` faces the internet, ``internal`` the PBX).

    ``address`` is the bind address; ``advertised_address``, when set, is the public address
    written into Via/Contact/Record-Route and SDP instead (1:1 NAT).
    """

    name: str
    address: str
    advertised_address: str | None
    udp: TransportConfig
    tcp: TransportConfig
    tls: TransportConfig

    @property
    def public_address(self) -> str:
        """The address peers must use to reach this interface."""
        return self.advertised_address or self.address

    def listeners(self) -> tuple[Listener, ...]:
        """The enabled transports, as sockets to open."""
        transports: tuple[tuple[Transport, TransportConfig], ...] = (
            ("udp", self.udp),
            ("tcp", self.tcp),
            ("tls", self.tls),
        )
        return tuple(
            Listener(self.name, name, self.address, transport.port)
            for name, transport in transports
            if transport.enabled
        )


def default_external() -> InterfaceConfig:
    return InterfaceConfig(
        name="external",
        address="127.0.0.1",
        advertised_address=None,
        udp=TransportConfig(enabled=False, port=5060),
        tcp=TransportConfig(enabled=False, port=5060),
        tls=TransportConfig(enabled=True, port=5061),
    )


def default_internal() -> InterfaceConfig:
    return InterfaceConfig(
        name="internal",
        address="127.0.0.1",
        advertised_address=None,
        udp=TransportConfig(enabled=True, port=5080),
        tcp=TransportConfig(enabled=False, port=5080),
        tls=TransportConfig(enabled=False, port=5081),
    )


@dataclass(frozen=True, slots=True)
class InterfacesConfig:
    external: InterfaceConfig = field(default_factory=default_external)
    internal: InterfaceConfig = field(default_factory=default_internal)

    def listeners(self) -> tuple[Listener, ...]:
        return self.external.listeners() + self.internal.listeners()


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Resource caps of the SIP transports (sizes in bytes, durations in seconds)."""

    max_message_bytes: int = 65535
    max_headers: int = 200
    max_line_bytes: int = 8192
    max_connections: int = 10000
    max_connections_per_ip: int = 50
    new_connections_per_second_per_ip: int = 20
    tls_handshake_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_buffered_bytes: int = 131072


@dataclass(frozen=True, slots=True)
class TimersConfig:
    """RFC 3261 17.1.1.1 timer values, in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    ring_timeout: float = 180.0


@dataclass(frozen=True, slots=True)
class PbxConfig:
    """The PBX behind the SBC, reached from the internal interface.

    ``server_name`` is the TLS SNI and the name its certificate is verified against (default:
    ``address``).
    """

    address: str = "127.0.0.1"
    port: int = 5060
    transport: Transport = "udp"
    tls_verify: bool = True
    server_name: str | None = None
    srtp: SrtpPolicy = "none"  # the PBX leg: plain RTP (none), or SRTP with the SBC's keys


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    """Registration relay bounds, in seconds (see :class:`sbc.gateway.registrar.
    RegistrationPolicy`): what the client is told (short, so NAT bindings and connections stay
    alive) and what the PBX is asked for (long: registration caching)."""

    client_max_expires: int = 120
    client_min_expires: int = 60
    pbx_min_expires: int = 600
    pbx_max_expires: int = 3600


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Who may call in: ``unknown_source`` is what happens to a call (an INVITE outside a
    dialog) from an external source that is neither registered on that flow nor a trusted
    peer: ``reject`` (403), ``drop`` (no answer) or ``allow``."""

    unknown_source: UnknownSource = "reject"


@dataclass(frozen=True, slots=True)
class PeerRoute:
    """Where calls from the PBX for ``prefixes`` (leading characters of the Request-URI user;
    ``""`` matches every number) are sent: the peer's ``address``, ``port`` and ``transport``.
    The longest matching prefix over all peers wins."""

    address: str
    port: int = 5060
    transport: Transport = "udp"
    prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TrustedPeer:
    """A trunk or partner recognised by source network and, over TLS, by certificate.

    ``srtp`` overrides ``media.srtp`` for calls with this peer (``None``: inherit).
    """

    name: str
    cidrs: tuple[IPNetwork, ...]
    transport: PeerTransport = "any"
    tls_subject: str | None = None
    srtp: SrtpPolicy | None = None
    route: PeerRoute | None = None


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The certificate the SBC presents, and how it verifies peers."""

    certificate: Path | None = None
    private_key: Path | None = None
    ca_bundle: Path | None = None
    require_client_certificate: bool = False
    min_version: TlsVersion = "1.2"


@dataclass(frozen=True, slots=True)
class PortRange:
    """RTP/RTCP relay ports, ``start`` (even) to ``end`` inclusive."""

    start: int = 20000
    end: int = 29999

    def __len__(self) -> int:
        return self.end - self.start + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.start <= port <= self.end


@dataclass(frozen=True, slots=True)
class MediaInterfaceConfig:
    """Where one side's relay ports are bound and which address SDP advertises."""

    address: str = "127.0.0.1"
    advertised_address: str | None = None

    @property
    def public_address(self) -> str:
        return self.advertised_address or self.address


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """The media relay.

    ``srtp`` is the policy of the external leg; ``allow_sdes_over_insecure_transport`` permits
    RFC 4568 keys in SDP carried over UDP/TCP (off: SDES keys only travel over TLS).
    ``max_call_duration`` of ``None`` means no limit.
    """

    port_range: PortRange = field(default_factory=PortRange)
    external: MediaInterfaceConfig = field(default_factory=MediaInterfaceConfig)
    internal: MediaInterfaceConfig = field(default_factory=MediaInterfaceConfig)
    srtp: SrtpPolicy = "require"
    allow_sdes_over_insecure_transport: bool = False
    inactivity_timeout: float = 30.0
    max_call_duration: float | None = 14400.0
    suites: tuple[str, ...] = ()  # SDES suites allowed, best first; () = all supported
    max_sessions: int = 10000  # concurrent calls with media; more get 503
    max_pps: int = 400  # packets per second per stream and leg; more are dropped and counted
    workers: int = 0  # relay processes, each owning a share of port_range; 0 = in-process


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where shared state (counters, bans, registrations) lives."""

    backend: StateBackend = "memory"
    redis_url: str | None = None

    @property
    def redis_url_masked(self) -> str | None:
        return None if self.redis_url is None else mask_url(self.redis_url)

    def __repr__(self) -> str:  # never show a Redis password
        return f"StateConfig(backend={self.backend!r}, redis_url={self.redis_url_masked!r})"


def has_glob_magic(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """Rule files: absolute paths or glob patterns (``**`` recurses)."""

    files: tuple[str, ...] = ()

    def paths(self) -> tuple[Path, ...]:
        """The rule files that exist now, in pattern order then sorted, without duplicates."""
        found: dict[Path, None] = {}
        for pattern in self.files:
            if has_glob_magic(pattern):
                for match in sorted(glob.glob(pattern, recursive=True)):
                    if Path(match).is_file():
                        found.setdefault(Path(match))
            else:
                found.setdefault(Path(pattern))
        return tuple(found)


@dataclass(frozen=True, slots=True)
class SyslogConfig:
    """Security events sent as RFC 5424 syslog over UDP."""

    address: str
    port: int = 514
    facility: str = "local0"


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """Security event sinks; both are optional."""

    jsonl: Path | None = None
    syslog: SyslogConfig | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin HTTP endpoint (health, metrics, bans).

    A non-loopback ``address`` needs ``allow_remote: true``, and remote access needs a
    ``token_file`` (requests then carry ``Authorization: Bearer <token>``).
    """

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = 8080
    token_file: Path | None = None
    allow_remote: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; ``source`` is the file it came from (as given)."""

    source: str = "<defaults>"
    node: NodeConfig = field(default_factory=NodeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    interfaces: InterfacesConfig = field(default_factory=InterfacesConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    timers: TimersConfig = field(default_factory=TimersConfig)
    pbx: PbxConfig = field(default_factory=PbxConfig)
    trusted_peers: tuple[TrustedPeer, ...] = ()
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    state: StateConfig = field(default_factory=StateConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)

    def listeners(self) -> tuple[Listener, ...]:
        """Every SIP socket to open, external first."""
        return self.interfaces.listeners()

"""Composition root: turn a validated :class:`~sbc.config.Config` into listening sockets.

What runs today: every enabled listener of both interfaces (UDP, TCP, TLS) with the SIP parser,
stream framing, keepalives, the stateless core (:mod:`sbc.gateway.stateless`) and the B2BUA
(:mod:`sbc.gateway.b2bua`) behind one :class:`~sbc.net.driver.Driver`: malformed traffic gets
its 4xx or a counted drop; REGISTER is relayed to the PBX (over UDP) with the SBC's token
Contacts; calls go both ways with topology hiding (from registered users and trusted peers to
the PBX, from the PBX to registered users over their own flow), with re-INVITE, UPDATE, INFO
and OPTIONS relayed inside a call; OPTIONS to the SBC is answered 200.  Counters are logged
every minute and at shutdown.

TCP and TLS connections are admitted and timed by one :class:`~sbc.net.limits.ConnectionGuard`
(``limits.*``).  SIGHUP re-reads the TLS certificate, key and CA bundle
(:meth:`Service.reload_tls`): new handshakes use them, established connections are untouched, and
files that do not load are logged and ignored.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import resource
import signal
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import task
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from sbc import __version__
from sbc.config import Config, RulesConfig
from sbc.errors import ConfigError
from sbc.gateway.b2bua import B2BUA, EXTERNAL, INTERNAL, B2buaSettings
from sbc.gateway.stateless import StatelessCore
from sbc.ids import IdSource
from sbc.media import srtp
from sbc.media.relay import MediaManager, PortPool
from sbc.net.driver import Driver, b2bua_settings_from, media_settings_from
from sbc.net.limits import ConnectionGuard, StreamLimits
from sbc.net.media import MAX_IDLE_PAIRS, MediaLoop, MediaPorts
from sbc.net.media_workers import (
    RecordHold,
    RemoteEndpoint,
    WorkerLink,
    WorkerPorts,
    start_workers,
)
from sbc.net.outbound import Connector, Peer, client_tls_options
from sbc.net.policy import TICK, PolicyGate
from sbc.net.tls import ReloadableServerContext, TlsFiles
from sbc.net.transport import SipDatagramProtocol, SipStreamFactory, SipTlsFactory
from sbc.policy.engine import Engine
from sbc.policy.loader import MAX_FEED_BYTES, load_rules
from sbc.sip.message import Limits
from sbc.state.cache import LocalBanCache
from sbc.state.memory import MemoryStore
from sbc.state.redis_store import RedisStore

log = Logger(namespace="sbc.service")
security_log = Logger(namespace="sbc.security")

STATS_INTERVAL = 60.0  # seconds between counter log lines


def limits_from(config: Config) -> Limits:
    lc = config.limits
    return Limits(
        max_message_bytes=lc.max_message_bytes,
        max_body_bytes=lc.max_message_bytes,
        max_headers=lc.max_headers,
        max_line_bytes=lc.max_line_bytes,
    )


def stream_limits_from(config: Config) -> StreamLimits:
    """The connection limits: the configuration's ``limits`` section itself."""
    return config.limits


@dataclass
class Service:
    """What :func:`start` opened: the core, the connection guard, the ports, the TLS context
    and the driver of the B2BUA."""

    core: StatelessCore
    guard: ConnectionGuard
    driver: Driver | None = None
    ports: list[IListeningPort] = field(default_factory=list)
    tls: ReloadableServerContext | None = None
    media: MediaLoop | None = None
    media_ports: MediaPorts | WorkerPorts | None = None
    media_workers: list[WorkerLink] = field(default_factory=list)
    gate: PolicyGate | None = None
    rules: RulesConfig | None = None  # its globs are expanded again on every reload

    def reload_rules(self) -> bool:
        """Load the rule files again; a broken file keeps the running rules (logged)."""
        if self.gate is None or self.rules is None:
            log.info("rules reload requested but no rule files are configured")
            return False
        errors = self.gate.engine.reload([str(p) for p in self.rules.paths()])
        if errors is not None:
            self.core.counters["rules.reload_failed"] += 1
            for error in getattr(errors, "errors", (errors,)):
                log.error("rules not reloaded: {error}", error=str(error))
            return False
        self.core.counters["rules.reloaded"] += 1
        log.info("rules reloaded: {summary}", summary=self.gate.engine.ruleset.summary())
        return True

    def reload_tls(self) -> bool:
        """Re-read the TLS files for new handshakes; False (old files kept) if they do not load."""
        if self.tls is None:
            log.info("TLS reload requested but no TLS listener is open")
            return False
        try:
            self.tls.reload()
        except ConfigError as e:
            self.core.counters["tls.reload_failed"] += 1
            log.error("TLS reload failed, keeping the previous certificate: {error}",
                      error=str(e))
            return False
        except Exception:  # never let a reload take the process down
            self.core.counters["tls.reload_failed"] += 1
            log.failure("TLS reload failed, keeping the previous certificate")
            return False
        cert = self.tls.certificate()
        self.core.counters["tls.reloaded"] += 1
        log.info("TLS certificate reloaded: subject {subject}, serial {serial}, not after "
                 "{not_after}", subject=cert.subject.rfc4514_string(),
                 serial=f"{cert.serial_number:x}", not_after=cert.not_valid_after_utc.isoformat())
        return True

    def stop_listening(self) -> None:
        for p in self.ports:
            p.stopListening()
        if self.driver is not None:
            self.driver.stop()
        if self.media is not None:
            self.media.stop()
            self.media = None
        for worker in self.media_workers:
            worker.stop()
        self.media_workers = []
        if self.media_ports is not None:
            self.media_ports.close()
            self.media_ports = None


def start(config: Config, reactor: Any) -> Service:
    """Open every enabled listener on ``reactor``; returns the running :class:`Service`.

    Raises ConfigError when TLS files are unusable, the PBX's address does not resolve or the
    internal interface has no listener for the PBX's transport, and OSError
    (``CannotListenError``) when a port cannot be bound; nothing is left listening in either case.
    """
    ids = IdSource()
    settings = b2bua_settings_from(config)
    core = StatelessCore(new_tag=ids.tag, limits=limits_from(config))
    media_settings = media_settings_from(config)
    pr = config.media.port_range
    bind = {EXTERNAL: config.media.external.address, INTERNAL: config.media.internal.address}
    # Idle pairs kept bound for reuse may use a quarter of the descriptors left over 1024.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    max_idle = max(0, min(MAX_IDLE_PAIRS, (nofile - 1024) // 8))
    media_loop: MediaLoop | None = None
    workers: list[WorkerLink] = []
    ports: MediaPorts | WorkerPorts
    if config.media.workers:
        workers, ports = start_workers(config.media.workers, reactor, core.counters, pr.start,
                                       pr.end, bind, reactor.seconds, max_idle=max_idle,
                                       log_format=config.logging.format,
                                       log_level=config.logging.level)
        media = MediaManager(media_settings, ports, counters=core.counters,
                             endpoint_type=RemoteEndpoint)
    else:
        media_loop = MediaLoop(reactor, core.counters, reactor.seconds)
        pool = PortPool(pr.start, pr.end, sorted(set(bind.values())))  # one per bind address
        ports = MediaPorts(media_loop, pool, bind, reactor.seconds, max_idle=max_idle)
        media = MediaManager(media_settings, ports, counters=core.counters)
    missing = [s for s in config.media.suites if s not in srtp.SUPPORTED_SUITES]
    if missing:
        log.warn("SDES suites not supported by {libsrtp}, skipped: {missing}",
                 libsrtp=srtp.LIBSRTP_VERSION, missing=", ".join(missing))
    if not media_settings.allowed_suites():
        raise ConfigError("none of media.suites is supported by the installed libsrtp "
                          f"({srtp.LIBSRTP_VERSION})", path="media.suites")
    driver = Driver(B2BUA(settings, ids, counters=core.counters, media=media), core, reactor)
    if workers:
        hold = RecordHold(reactor, driver.write_record, reactor.seconds)
        driver.write_record = hold
        for worker in workers:
            worker.on_final = hold.flush
    service = Service(core, ConnectionGuard(stream_limits_from(config), core.counters),
                      driver=driver, media=media_loop, media_ports=ports,
                      media_workers=workers)
    service.gate = _policy_gate(config, settings, driver, core, reactor)
    service.rules = config.rules
    _watch_rules(service, reactor)
    driver.connector = _connector(config, settings, core, driver, reactor)
    try:
        for interface in (config.interfaces.external, config.interfaces.internal):
            for listener in interface.listeners():
                if listener.transport == "udp":
                    port = reactor.listenUDP(
                        listener.port, SipDatagramProtocol(core, interface.name, driver),
                        interface=listener.address, maxPacketSize=65535)
                elif listener.transport == "tcp":
                    port = reactor.listenTCP(listener.port, SipStreamFactory(
                        core, interface.name, service.guard, reactor, driver=driver),
                        interface=listener.address)
                else:
                    if service.tls is None:
                        service.tls = ReloadableServerContext(_tls_files(config))
                    streams = SipStreamFactory(core, interface.name, service.guard, reactor,
                                               tls=True, driver=driver)
                    port = reactor.listenTCP(listener.port,
                                             SipTlsFactory(service.tls, streams, reactor),
                                             interface=listener.address)
                service.ports.append(port)
                log.info("listening: {listener}", listener=str(listener))
    except BaseException:
        service.stop_listening()
        raise
    return service


def _raise_nofile() -> None:
    """Every relayed call holds four sockets: take the descriptors the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warn("cannot raise the open-file limit from {soft}: {error}", soft=soft,
                     error=str(e))
            return
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < 16384:
        log.warn("open-file limit {soft}: room for about {calls} relayed calls (4 sockets each); "
                 "raise it (LimitNOFILE= in the systemd unit)", soft=soft, calls=soft // 5)


def _policy_gate(config: Config, settings: B2buaSettings, driver: Driver, core: StatelessCore,
                 reactor: Any) -> PolicyGate | None:
    """The rule engine over the configured store, wired to the driver; ``None`` without rule
    files.  Raises ConfigError for a rule file that does not load."""
    paths = [str(p) for p in config.rules.paths()]
    if not paths:
        log.warn("no rule files: requests are not rate limited and nothing is banned")
        return None
    ruleset = load_rules(paths)  # ConfigErrors: the process does not start
    trusted = [*(net for peer in config.trusted_peers for net in peer.cidrs),
               ipaddress.ip_network(settings.pbx.host)]
    engine = Engine(ruleset, trusted)
    cache = LocalBanCache()
    threads = None
    store: Any
    if config.state.backend == "redis":
        assert config.state.redis_url is not None
        threads = ThreadPool(minthreads=1, maxthreads=4, name="sbc-store")
        threads.start()
        reactor.addSystemEventTrigger("during", "shutdown", threads.stop)

        def health(healthy: bool, reason: str) -> None:
            reactor.callFromThread(_store_health, healthy, reason, core)

        store = RedisStore.from_url(config.state.redis_url, clock=time.monotonic,
                                    on_health_change=health)
        store.subscribe_bans(lambda event: reactor.callFromThread(cache.apply, event))
    else:
        store = MemoryStore()
        store.subscribe_bans(cache.apply)
    gate = PolicyGate(engine, store, cache, reactor, core.counters, threads=threads)
    gate.node = config.node.id
    b2bua = driver.b2bua
    gate.deliver = driver.deliver
    gate.send = driver.send_raw
    gate.end_calls = b2bua.end_calls
    gate.flush = driver.flush
    gate.registered = b2bua.registrar.registered_flow
    gate.share_registrations(b2bua.registration_matters)  # a phone registered on any node
    gate.trunk_of = lambda origin, request: _trunk_of(settings, origin, request)
    driver.gate = gate

    def tick() -> None:
        try:
            gate.tick(b2bua.call_ticks(reactor.seconds(), TICK))
        except Exception:
            core.counters["internal.error"] += 1
            log.failure("call ticks failed")
        driver.flush()

    ticks = task.LoopingCall(tick)
    ticks.clock = reactor
    ticks.start(TICK, now=False)
    feeds = task.LoopingCall(_refresh_feeds, engine, reactor, core)
    feeds.clock = reactor
    feeds.start(FEED_CHECK, now=True)
    log.info("rules: {summary}; state: {backend}", summary=ruleset.summary(),
             backend=config.state.backend)
    return gate


FEED_CHECK = 30.0  # seconds between checks for feeds due a refresh
FEED_MAX_BYTES = MAX_FEED_BYTES  # a threat feed larger than this is refused
RULES_CHECK = 2.0  # seconds between checks of the rule files' modification times


def _refresh_feeds(engine: Engine, reactor: Any, core: StatelessCore) -> None:
    """Fetch the feeds that are due (a file read in place, a URL in a thread) and swap them
    in; a failed or mostly-garbage fetch keeps the old content and is logged."""
    now = reactor.seconds()
    for feed in engine.feeds_due(now):
        feed.updated_at = now  # due again after refresh, whatever happens now

        def apply(text: str, name: str = feed.name) -> None:
            result = engine.ruleset.apply_feed(name, text, reactor.seconds())
            core.counters["rules.feed_updated" if result.applied else "rules.feed_rejected"] += 1
            log.info("feed {name}: {count} networks{kept}", name=name, count=result.count,
                     kept="" if result.applied else " (rejected: old content kept)")

        def failed(reason: Any, name: str = feed.name) -> None:
            core.counters["rules.feed_failed"] += 1
            log.warn("feed {name} not refreshed: {reason}", name=name,
                     reason=str(getattr(reason, "value", reason)))

        if feed.path is not None:
            try:
                with open(feed.path, "rb") as f:
                    apply(f.read(FEED_MAX_BYTES).decode("utf-8", "replace"))
            except OSError as e:
                failed(e)
        elif feed.url is not None:
            d = deferToThread(_fetch, feed.url)
            d.addCallbacks(apply, failed)


def _fetch(url: str) -> str:
    """A feed's text over HTTP(S), at most :data:`FEED_MAX_BYTES` (run in a thread)."""
    with urllib.request.urlopen(url, timeout=15) as response:  # noqa: S310 -- operator's URL
        data = response.read(FEED_MAX_BYTES + 1)
    if len(data) > FEED_MAX_BYTES:
        raise ValueError(f"larger than {FEED_MAX_BYTES} bytes")
    return str(data.decode("utf-8", "replace"))


def _watch_rules(service: Service, reactor: Any) -> None:
    """Reload the rules when one of their files (or the lists they read) changes."""
    gate = service.gate
    if gate is None:
        return
    stamps: dict[str, float] = {}

    def stat_all() -> dict[str, float]:
        out = {}
        for path in gate.engine.ruleset.watched:
            try:
                out[path] = os.stat(path).st_mtime
            except OSError:
                out[path] = -1.0
        return out

    stamps.update(stat_all())

    def check() -> None:
        now = stat_all()
        if now != stamps:
            stamps.clear()
            service.reload_rules()
            stamps.update(stat_all())  # the reloaded set may watch other files

    loop = task.LoopingCall(check)
    loop.clock = reactor
    loop.start(RULES_CHECK, now=False)


def _trunk_of(settings: B2buaSettings, origin: Any, request: Any) -> str | None:
    """The trunk a new call comes from (external) or goes to (from the PBX, by route)."""
    if origin.interface == EXTERNAL:
        return next((t.name for t in settings.trunks if t.matches(origin)), None)
    user = getattr(request.uri, "user", None)
    route = settings.route(user) if user else None
    return route.name if route is not None else None


def _store_health(healthy: bool, reason: str, core: StatelessCore) -> None:
    if healthy:
        core.counters["state.recovered"] += 1
        security_log.warn("the state store is reachable again", type="state.recovered")
    else:
        core.counters["state.unreachable"] += 1
        security_log.warn("the state store is unreachable: {reason}", type="state.unreachable",
                          reason=reason)


def _connector(config: Config, settings: B2buaSettings, core: StatelessCore, driver: Driver,
               reactor: Any) -> Connector | None:
    """Outbound TCP/TLS towards the PBX and the trunks routed over TCP/TLS: one connection per
    peer, opened on demand, reused.  Its own connection guard keeps these connections out of
    the per-source counts of the outside.  ``None`` when every peer is reached over UDP."""
    peers = []
    pbx = settings.pbx
    if pbx.transport != "udp":
        peers.append(Peer(INTERNAL, pbx.transport, pbx.host, pbx.port,
                          config.pbx.server_name or config.pbx.address))
        if pbx.transport == "tls" and not config.pbx.tls_verify:
            log.warn("pbx.tls_verify is false: the PBX's TLS certificate is not verified")
    for tp in config.trusted_peers:
        if tp.route is not None and tp.route.transport != "udp":
            peers.append(Peer(EXTERNAL, tp.route.transport, tp.route.address, tp.route.port,
                              tp.tls_subject or tp.route.address))
    if not peers:
        return None

    def tls_options_for(peer: Peer) -> Any:
        verify = config.pbx.tls_verify if peer.interface == INTERNAL else True
        return client_tls_options(peer.server_name or peer.host, verify=verify,
                                  ca_bundle=config.tls.ca_bundle)

    for peer in peers:  # fail at start, not at the first call, when TLS cannot be set up
        if peer.transport == "tls":
            try:
                tls_options_for(peer)
            except Exception as e:
                raise ConfigError(f"cannot set up TLS towards {peer.host}: {e}",
                                  path="tls.ca_bundle") from e
    guard = ConnectionGuard(stream_limits_from(config), core.counters)

    def factory_for(p: Peer) -> SipStreamFactory:
        return SipStreamFactory(core, p.interface, guard, reactor, tls=p.transport == "tls",
                                driver=driver)

    return Connector(reactor, peers, factory_for, driver.connect_failed, tls_options_for,
                     counters=core.counters)


def _tls_files(config: Config) -> TlsFiles:
    tls = config.tls
    if tls.certificate is None or tls.private_key is None:
        raise ConfigError("a TLS listener is enabled but tls.certificate/tls.private_key are "
                          "not set", path="tls")
    return TlsFiles(tls.certificate, tls.private_key, tls.ca_bundle,
                    tls.require_client_certificate, tls.min_version)


def _tune_gc() -> None:
    """Keep the cyclic garbage collector from stalling the reactor.  Calls make many short-lived
    objects (messages, transactions) and a few cycles; with the default thresholds full
    collections run often and, with many calls live, take long enough to delay responses past
    Timer A, which makes peers retransmit.  Everything allocated at start is frozen out of the
    collector's reach and the young-generation threshold raised, so collections are rarer
    (reference counting still frees almost everything at once)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def run(config: Config) -> int:
    """Start listeners and run the reactor until SIGINT/SIGTERM; the process exit code."""
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    log.info("sbc {version} starting (node {node}, config {source})", version=__version__,
             node=config.node.id, source=config.source)
    _raise_nofile()
    try:
        service = start(config, reactor)
    except ConfigError as e:
        log.error("cannot start: {error}", error=str(e))
        return 2
    except CannotListenError as e:
        log.error("cannot listen on {address}:{port}: {reason}", address=e.interface or "*",
                  port=e.port, reason=str(e.socketError))
        return 1
    media = config.media
    log.info("media relay: ports {start}-{end} {relay}, SRTP outside {outside}, towards the "
             "PBX {inside}, suites {suites} ({libsrtp}); the PBX is {pbx} over {transport}",
             start=media.port_range.start, end=media.port_range.end, outside=media.srtp,
             relay=(f"shared by {media.workers} worker processes" if media.workers
                    else "in this process"),
             inside=config.pbx.srtp, libsrtp=srtp.LIBSRTP_VERSION,
             suites=", ".join(media_settings_from(config).allowed_suites()),
             pbx=f"{config.pbx.address}:{config.pbx.port}", transport=config.pbx.transport)
    log.warn("not relayed yet: REFER and SUBSCRIBE inside a call (405), reliable provisional "
             "responses (100rel is removed), DTLS-SRTP and T.38 (their m= lines get port 0)")

    core = service.core

    def log_counters() -> None:
        if core.counters:
            log.info("counters: {counters}", counters=dict(sorted(core.counters.items())))

    def on_sighup(signum: int, frame: Any) -> None:
        # A signal handler may run between any two bytecodes: hand the work to the reactor.
        reactor.callFromThread(service.reload_tls)
        reactor.callFromThread(service.reload_rules)

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_sighup)

    loop = task.LoopingCall(log_counters)
    loop.clock = reactor
    loop.start(STATS_INTERVAL, now=False)
    reactor.addSystemEventTrigger("before", "shutdown", log_counters)
    _tune_gc()
    profile_to = os.environ.get("SBC_PROFILE")
    if profile_to:  # opt-in, for bench/: where the process spends its time, as pstats
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(reactor.run)  # type: ignore[attr-defined]
        profiler.dump_stats(profile_to)
        log.info("profile written to {path}", path=profile_to)
    else:
        reactor.run()  # type: ignore[attr-defined]
    return 0

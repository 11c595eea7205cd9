"""Predicates compiled once: network sets, prefix sets, text patterns, time windows, and every
match key of a rule tested against events."""

from __future__ import annotations

import ipaddress

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from sbc.policy.loader import parse_rules
from sbc.policy.match import (
    Context,
    NetworkSet,
    PrefixSet,
    TextMatcher,
    TimeWindow,
    normalise_ip,
    parse_ip,
    source_net,
)
from sbc.policy.model import (
    AuthFailed,
    CallStarting,
    CallTick,
    ConnectionOpened,
    PolicyEvent,
    RequestReceived,
    ResponseSent,
)
from sbc.policy.tz import days_from_civil

# 2030-01-07 is a Monday; times below are UTC unless a rule says otherwise.
MONDAY = days_from_civil(2030, 1, 7) * 86400.0
HOUR = 3600.0


def holds(match: dict[str, object], event: PolicyEvent, *, trusted: bool = False,
          now: float = MONDAY, lists: dict[str, object] | None = None,
          unless: dict[str, object] | None = None, timezone: str = "UTC") -> bool:
    """Whether a rule with ``match`` (and ``unless``) on ``event``'s kind holds for it."""
    rule: dict[str, object] = {"id": "r", "on": event.kind, "match": match, "actions": ["alert"],
                               "timezone": timezone}
    if unless is not None:
        rule["unless"] = unless
    doc: dict[str, object] = {"rules": [rule]}
    if lists:
        doc["lists"] = lists
    ruleset = parse_rules(yaml.safe_dump(doc))
    return ruleset.rules[0].matcher(Context(event, now, trusted))


def request(**fields: object) -> RequestReceived:
    base: dict[str, object] = {"source_ip": "198.51.100.7", "method": "INVITE"}
    base.update(fields)
    return RequestReceived(**base)  # type: ignore[arg-type]


def call(**fields: object) -> CallStarting:
    base: dict[str, object] = {"source_ip": "198.51.100.7", "call_id": "c1", "account": "alice",
                               "destination": "+4420794600"}
    base.update(fields)
    return CallStarting(**base)  # type: ignore[arg-type]


# -- structures ----------------------------------------------------------------------------------


def test_network_set_longest_and_shortest_prefixes() -> None:
    """A network set finds addresses in networks of any prefix length, IPv4 and IPv6."""
    nets = NetworkSet(ipaddress.ip_network(n) for n in
                      ["10.0.0.0/8", "192.0.2.128/25", "198.51.100.7/32", "2001:db8::/32",
                       "::/0"])
    assert "10.255.1.2" in nets and "192.0.2.200" in nets and "198.51.100.7" in nets
    assert "192.0.2.1" not in nets and "198.51.100.8" not in nets
    assert "2001:db8:ffff::1" in nets and "2001:db9::1" in nets  # ::/0 holds every IPv6
    assert "not an address" not in nets and 42 not in nets
    assert len(nets) == 5
    assert not NetworkSet()


def test_network_set_unwraps_ipv4_mapped_addresses() -> None:
    """An IPv4-mapped IPv6 source (dual-stack socket) matches IPv4 networks."""
    nets = NetworkSet([ipaddress.ip_network("192.0.2.0/24")])
    assert "::ffff:192.0.2.9" in nets
    assert normalise_ip("::ffff:192.0.2.9") == "192.0.2.9"
    assert normalise_ip("2001:DB8::0001") == "2001:db8::1"


def test_source_net() -> None:
    """The /24 of an IPv4 source, the /64 of an IPv6 one."""
    assert source_net("192.0.2.77") == "192.0.2.0/24"
    assert source_net("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=30),
       st.integers(0, 2**32 - 1))
def test_network_set_agrees_with_ipaddress(networks: list[tuple[int, int]], probe: int) -> None:
    """Membership in a network set is membership in any of its networks."""
    parsed = [ipaddress.ip_network((address, length), strict=False)
              for address, length in networks]
    address = ipaddress.IPv4Address(probe)
    assert (str(address) in NetworkSet(parsed)) == any(address in n for n in parsed)


def test_prefix_set_longest_match() -> None:
    """A prefix set returns the longest prefix of a number."""
    prefixes = PrefixSet(["+44", "+4420", "+1900", "00"])
    assert prefixes.longest("+442079460000") == "+4420"
    assert prefixes.longest("+441234") == "+44"
    assert prefixes.longest("0044") == "00"
    assert prefixes.longest("+33") is None and prefixes.longest("") is None
    assert "+19005551234" in prefixes and len(prefixes) == 4


def test_text_matcher_modes() -> None:
    """Exact strings and full-match regexes; substrings and searched regexes; case folding."""
    users = TextMatcher(["alice", "re:[0-9]{3}"])
    assert users("alice") and users("123") and not users("Alice") and not users("1234")
    domains = TextMatcher(["Example.COM"], ignore_case=True)
    assert domains("example.com") and not domains("example.org")
    agents = TextMatcher(["friendly-scanner", "re:^sip-?cli"], mode="substring",
                         ignore_case=True)
    assert agents("Friendly-Scanner 1.2") and agents("SIPcli/1.0") and not agents("Zoiper 5")
    assert not agents("x sipcli")  # the regex is anchored


def test_text_matcher_bounds_the_tested_length() -> None:
    """Only the first 512 characters of a value are tested (bounds regex time)."""
    agents = TextMatcher(["needle"], mode="substring")
    assert not agents("x" * 600 + "needle")


@pytest.mark.parametrize(("days", "start", "end", "weekday", "minute", "inside"), [
    ({0, 1, 2, 3, 4}, 8 * 60, 18 * 60, 0, 8 * 60, True),
    ({0, 1, 2, 3, 4}, 8 * 60, 18 * 60, 0, 18 * 60, False),  # end excluded
    ({0, 1, 2, 3, 4}, 8 * 60, 18 * 60, 5, 12 * 60, False),  # Saturday
    ({4}, 18 * 60, 8 * 60, 4, 23 * 60, True),  # Friday night
    ({4}, 18 * 60, 8 * 60, 5, 3 * 60, True),  # ...into Saturday morning
    ({4}, 18 * 60, 8 * 60, 5, 9 * 60, False),
    ({4}, 18 * 60, 8 * 60, 4, 3 * 60, False),  # Friday early morning belongs to Thursday
    ({6}, 22 * 60, 2 * 60, 0, 1 * 60, True),  # Sunday night into Monday wraps the week
    (set(range(7)), 0, 1440, 3, 1439, True),
])
def test_time_windows(days: set[int], start: int, end: int, weekday: int, minute: int,
                      inside: bool) -> None:
    """Windows hold on their weekdays in [start, end); overnight windows run into the next day."""
    local = MONDAY + weekday * 86400 + minute * 60
    assert TimeWindow(frozenset(days), start, end).contains(local) is inside


# -- every predicate -----------------------------------------------------------------------------


def test_method_interface_transport() -> None:
    """method, interface and transport match one value or any of a list."""
    event = request(method="REGISTER", interface="external", transport="tls")
    assert holds({"method": "REGISTER"}, event)
    assert holds({"method": ["INVITE", "REGISTER"], "transport": ["tcp", "tls"]}, event)
    assert not holds({"method": ["INVITE"]}, event)
    assert not holds({"interface": "internal"}, event)


def test_source_cidrs_and_lists() -> None:
    """source matches networks written inline or from a networks list; unless excludes."""
    event = request(source_ip="192.0.2.10")
    lists = {"office": {"kind": "networks", "items": ["192.0.2.0/28"]}}
    assert holds({"source": ["10.0.0.0/8", "192.0.2.0/24"]}, event)
    assert holds({"source": {"list": "office"}}, event, lists=lists)
    assert not holds({"source": "192.0.2.0/24"}, event, unless={"source": {"list": "office"}},
                     lists=lists)
    assert not holds({"source": "2001:db8::/32"}, event)


def test_trusted_and_registered() -> None:
    """trusted tests the engine's trust of the source; registered the event's flag."""
    assert holds({"trusted": True}, request(), trusted=True)
    assert not holds({"trusted": True}, request(), trusted=False)
    assert holds({"registered": False}, request(registered=False))
    assert not holds({"registered": False}, request(registered=None))  # unknown never matches


def test_user_and_domain_fields() -> None:
    """from/to/R-URI users match exactly or by full regex; domains ignore case."""
    event = request(from_user="1001", from_domain="PBX.example.com", to_user="bob",
                    to_domain="example.com", ruri_user="100", ruri_domain="sbc.example.com")
    assert holds({"from_user": ["re:[0-9]{4}"], "from_domain": "pbx.example.com",
                  "to_user": "bob", "to_domain": "EXAMPLE.com", "ruri_user": ["100", "101"],
                  "ruri_domain": "sbc.example.com"}, event)
    assert not holds({"from_user": "100"}, event)
    assert not holds({"to_user": "Bob"}, event)
    assert not holds({"ruri_user": "x"}, request(ruri_user=None))


def test_user_agent_substrings_and_list() -> None:
    """user_agent matches substrings and regexes, inline or from a strings list."""
    lists = {"scanners": {"kind": "strings", "items": ["sipvicious", "re:^sipsak"]}}
    assert holds({"user_agent": {"list": "scanners"}}, request(user_agent="SIPVicious 0.3"),
                 lists=lists)
    assert holds({"user_agent": [{"list": "scanners"}, "friendly"]},
                 request(user_agent="friendly-scanner"), lists=lists)
    assert not holds({"user_agent": {"list": "scanners"}}, request(user_agent="x sipsak"),
                     lists=lists)


def test_username_account_trunk_destination() -> None:
    """username (auth), account, trunk and destination match their event fields."""
    assert holds({"username": "1001"}, AuthFailed(source_ip="192.0.2.1", method="REGISTER",
                                                  username="1001"))
    event = call(account="alice", trunk="carrier-a", destination="+33123")
    assert holds({"account": "alice", "trunk": ["carrier-a"], "destination": "+33123"}, event)
    assert not holds({"trunk": "carrier-b"}, event)


def test_destination_prefix() -> None:
    """destination_prefix matches the longest prefix, inline or from a prefixes list."""
    lists = {"premium": {"kind": "prefixes", "items": ["+1900", "+882"]}}
    assert holds({"destination_prefix": {"list": "premium"}}, call(destination="+8821234"),
                 lists=lists)
    assert holds({"destination_prefix": ["00", "+"]}, call(destination="+4420"))
    assert not holds({"destination_prefix": ["00"]}, call(destination="+4420"))
    assert not holds({"destination_prefix": ["00"]}, call(destination=None))


def test_status() -> None:
    """status matches response codes."""
    event = ResponseSent(source_ip="192.0.2.1", method="REGISTER", status=404)
    assert holds({"status": [401, 403, 404]}, event)
    assert not holds({"status": 401}, event)


def test_time_in_a_zone() -> None:
    """time windows use the rule's zone: 08:00-18:00 Paris is 07:00-17:00 UTC in winter."""
    window = {"time": {"days": "mon-fri", "hours": "08:00-18:00"}}
    assert holds(window, request(), now=MONDAY + 7 * HOUR, timezone="Europe/Paris")
    assert not holds(window, request(), now=MONDAY + 7 * HOUR)
    assert not holds(window, request(), now=MONDAY + 17 * HOUR, timezone="Europe/Paris")
    assert holds(window, request(), now=MONDAY + 17 * HOUR, timezone="-05:00")
    assert holds({"time": [{"days": ["sat", "sun"]}, {"hours": "00:00-01:00"}]}, request(),
                 now=MONDAY + 0.5 * HOUR)


def test_connection_rules_match_on_source_only() -> None:
    """A connection event has only source, interface and transport to match."""
    event = ConnectionOpened(source_ip="192.0.2.1", transport="tls")
    assert holds({"transport": "tls", "source": "192.0.2.0/24"}, event)


def test_unknown_fields_never_match() -> None:
    """A field the edge did not know (None) never matches, and unless does not exclude."""
    tick = CallTick(source_ip="192.0.2.1", call_id="c", duration=10.0)
    assert not holds({"account": "alice"}, tick)
    assert holds({}, tick, unless={"account": "alice"})


@given(st.one_of(
    st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))),
    st.lists(st.sampled_from(["0", "00", "01", "1", "255", "256", "+1", " 1", "1_0", "²",
                              "", "a", "::1", "::ffff:1.2.3.4"]), min_size=1, max_size=5)
    .map(".".join),
    st.ip_addresses().map(str),
))
def test_parse_ip_agrees_with_ipaddress(text: str) -> None:
    """The fast IPv4 parser accepts and rejects exactly what ipaddress does."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        assert parse_ip(text) is None
        return
    mapped = getattr(address, "ipv4_mapped", None)
    expected = (4, int(mapped)) if mapped is not None else (address.version, int(address))
    assert parse_ip(text) == expected
    assert normalise_ip(text) == str(mapped or address)

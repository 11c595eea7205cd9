"""The rule loader: every error located at file:line:col with what was expected, lists from
files, feeds declared and applied, several files, and the fuzz invariant (ConfigError only)."""

from __future__ import annotations

import contextlib
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sbc.policy.loader as loader_module
from sbc.config.reader import ConfigErrors
from sbc.errors import ConfigError
from sbc.policy.loader import (
    DEFAULT_EMERGENCY_NUMBERS,
    DEFAULT_LEASE_TTL,
    RuleSet,
    load_rules,
    parse_network_lines,
    parse_rules,
)
from sbc.policy.model import (
    Alert,
    Allow,
    Ban,
    Count,
    Drop,
    EndCalls,
    LockAccount,
    Reject,
    Tarpit,
)


def errors_of(text: str, source: str = "r.yaml", base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_rules(textwrap.dedent(text), source, base_dir)
    return [str(error) for error in info.value.errors]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def example_text() -> str:
    """The commented example of the loader's module docstring, dedented."""
    doc = loader_module.__doc__ or ""
    block = doc.split("loads this example)::\n", 1)[1].split("\nDispositions", 1)[0]
    return textwrap.dedent(block)


# -- the documented example --------------------------------------------------------------------


def test_documented_example_loads(tmp_path: Path) -> None:
    """The example rule file in the loader's docstring is valid and uses every action kind."""
    write(tmp_path / "lists" / "premium.txt", "+881\n+882  # satellite\n")
    rules = load_rules([write(tmp_path / "example.yaml", example_text())])
    assert len(rules.rules) == 15
    assert rules.observe_count == 1
    kinds = {type(a) for rule in rules.rules for a in rule.actions}
    assert kinds == {Allow, Reject, Drop, Tarpit, Ban, EndCalls, LockAccount, Alert}
    assert {r.count.algorithm for r in rules.rules if r.count} == {
        "fixed_window", "sliding_window", "token_bucket", "concurrent", "daily",
        "sequential_same_destination", "duration"}
    assert [(r.id, r.count.distinct) for r in rules.rules if r.count and r.count.distinct] == [
        ("extension-walk", "to_user")]
    assert rules.timezone == "Europe/Paris"
    assert rules.emergency_numbers == frozenset({"112", "911", "999", "15", "17", "18"})
    assert set(rules.feeds) == {"spamhaus-drop"}
    assert rules.summary() == "15 rules in 1 file (1 observe), 3 lists, 1 feed"


# -- bad files: the exact messages ---------------------------------------------------------------

BAD_FILES = [
    pytest.param(
        '- a\n',
        [
            'r.yaml:1:1: got a list (expected a mapping with settings, lists, feeds '
            'and rules)',
        ],
        id='top_not_mapping',
    ),
    pytest.param(
        'rule:\n  - id: a\n',
        [
            "r.yaml:1:1: rule: unknown key 'rule', did you mean 'rules'? (expected one "
            'of: settings, lists, feeds, rules)',
        ],
        id='unknown_top_key',
    ),
    pytest.param(
        'rules: [\n',
        [
            "r.yaml:2:1: invalid YAML: expected the node content, but found '<stream "
            "end>' (while parsing a flow node at line 2)",
        ],
        id='yaml_syntax',
    ),
    pytest.param(
        'rules:\n\t- id: a\n',
        [
            "r.yaml:2:1: invalid YAML: found character '\\t' that cannot start any "
            'token',
        ],
        id='tab',
    ),
    pytest.param(
        'rules:\n  - description: x\n',
        [
            "r.yaml:2:5: rules[0].id: missing required key 'id' (expected an id of "
            "letters, digits, '.', '_' and '-' (at most 64 characters))",
            "r.yaml:2:5: rules[0].on: missing required key 'on' (expected one of: "
            'connection, malformed, request, auth_failure, response, call_start, '
            'call_tick, call_end, srtp_failure)',
            "r.yaml:2:5: rules[0].actions: missing required key 'actions' (expected a "
            'list of actions: allow, reject, drop, tarpit, ban, end_calls, '
            'lock_account, alert)',
        ],
        id='missing_required',
    ),
    pytest.param(
        "rules:\n  - {id: 'a b', on: request, actions: [drop]}\n",
        [
            'r.yaml:2:10: rules[0].id: invalid value "a b" (expected an id of letters, '
            "digits, '.', '_' and '-' (at most 64 characters))",
        ],
        id='bad_id',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: requests, actions: [drop]}\n',
        [
            'r.yaml:2:17: rules[0].on: invalid value "requests", did you mean '
            "'request'? (expected one of: connection, malformed, request, "
            'auth_failure, response, call_start, call_tick, call_end, srtp_failure)',
        ],
        id='unknown_on',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], mod: observe}\n',
        [
            "r.yaml:2:43: rules[0].mod: unknown key 'mod', did you mean 'mode'? "
            '(expected one of: id, description, on, enabled, mode, fail, '
            'applies_to_trusted, timezone, match, unless, count, actions)',
        ],
        id='unknown_rule_key',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], mode: watch}\n',
        [
            'r.yaml:2:49: rules[0].mode: invalid value "watch" (expected one of: '
            'enforce, observe)',
        ],
        id='bad_mode',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], fail: maybe}\n',
        [
            'r.yaml:2:49: rules[0].fail: invalid value "maybe" (expected one of: open, '
            'closed)',
        ],
        id='bad_fail',
    ),
    pytest.param(
        "rules:\n  - {id: a, on: request, actions: [drop], enabled: 'yes'}\n",
        [
            'r.yaml:2:52: rules[0].enabled: got a string ("yes") (expected true or '
            'false)',
        ],
        id='enabled_not_bool',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop]}\n  - {id: a, on: request, '
        'actions: [drop]}\n',
        [
            "r.yaml:3:10: rules[1].id: duplicate rule id 'a' (first defined at "
            'r.yaml:2:10) (expected a rule id unique across all rule files)',
        ],
        id='duplicate_id',
    ),
    pytest.param(
        'rules:\n  - id: a\n    id: b\n    on: request\n    actions: [drop]\n',
        [
            "r.yaml:3:5: rules[0].id: duplicate key 'id' (first defined at line 2) "
            '(expected each key once per mapping)',
        ],
        id='duplicate_key',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], match: {metod: INVITE}}\n',
        [
            "r.yaml:2:51: rules[0].match.metod: unknown key 'metod', did you mean "
            "'method'? (expected one of: method, interface, transport, source, "
            'trusted, registered, from_user, from_domain, to_user, to_domain, '
            'ruri_user, ruri_domain, user_agent, username, account, trunk, '
            'destination, destination_prefix, status, time)',
        ],
        id='unknown_match_key',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: connection, actions: [drop], match: {method: '
        'INVITE}}\n',
        [
            "r.yaml:2:62: rules[0].match.method: 'method' is not available for on: "
            'connection (expected one of: interface, transport, source, trusted, time)',
        ],
        id='field_not_for_kind',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], match: {source: '
        '[10.0.0.1/8]}}\n',
        [
            'r.yaml:2:60: rules[0].match.source[0]: "10.0.0.1/8" has host bits set '
            '(expected a network in CIDR notation such as 192.0.2.0/24, or an address)',
        ],
        id='bad_cidr',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], match: {source: nonsense}}\n',
        [
            'r.yaml:2:59: rules[0].match.source: "nonsense" is not a valid network '
            '(expected a network in CIDR notation such as 192.0.2.0/24, or an address)',
        ],
        id='bad_network',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], match: {user_agent: '
        "['re:(x']}}\n",
        [
            'r.yaml:2:64: rules[0].match.user_agent[0]: invalid regular expression '
            '"(x" (missing ), unterminated subpattern at position 0) (expected a '
            'string, or re: and a regular expression)',
        ],
        id='bad_regex',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], match: {method: invite}}\n',
        [
            'r.yaml:2:59: rules[0].match.method: invalid method "invite" (expected a '
            'SIP method in capitals such as INVITE)',
        ],
        id='bad_method',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: response, actions: [alert], match: {status: [99]}}\n',
        [
            'r.yaml:2:62: rules[0].match.status[0]: invalid status "99" (expected a '
            'status code in 100..699)',
        ],
        id='bad_status',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], match: {transport: udpp}}\n',
        [
            'r.yaml:2:62: rules[0].match.transport: invalid value "udpp", did you mean '
            "'udp'? (expected one of: udp, tcp, tls)",
        ],
        id='bad_transport',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], match: {trusted: 1}}\n',
        [
            'r.yaml:2:60: rules[0].match.trusted: got an integer (1) (expected true or '
            'false)',
        ],
        id='bad_bool',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: call_start, actions: [reject], match: '
        "{destination_prefix: ['+44x']}}\n",
        [
            'r.yaml:2:77: rules[0].match.destination_prefix[0]: invalid prefix "+44x" '
            "(expected a number prefix: digits, *, #, optionally after '+' (at most "
            '32))',
        ],
        id='bad_prefix',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], match: {method: []}}\n',
        [
            'r.yaml:2:59: rules[0].match.method: the list is empty (expected a SIP '
            'method in capitals such as INVITE)',
        ],
        id='empty_list',
    ),
    pytest.param(
        'lists:\n  office: {kind: networks, items: [192.0.2.0/24]}\nrules:\n  - {id: '
        'a, on: request, actions: [drop], match: {source: {list: ofice}}}\n',
        [
            "r.yaml:4:66: rules[0].match.source.list: unknown list 'ofice', did you "
            "mean 'office'? (expected a networks list defined under lists: or feeds: "
            '(office))',
        ],
        id='unknown_list',
    ),
    pytest.param(
        'lists:\n  office: {kind: networks, items: [192.0.2.0/24]}\nrules:\n  - {id: '
        'a, on: request, actions: [drop], match: {user_agent: {list: office}}}\n',
        [
            "r.yaml:4:70: rules[0].match.user_agent.list: list 'office' holds networks "
            '(expected a list of strings)',
        ],
        id='wrong_list_kind',
    ),
    pytest.param(
        'lists:\n  m: {kind: strings, items: [INVITE]}\nrules:\n  - {id: a, on: '
        'request, actions: [drop], match: {method: {list: m}}}\n',
        [
            'r.yaml:4:59: rules[0].match.method: a list reference is not accepted here '
            '(expected values written out)',
        ],
        id='list_ref_not_allowed',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source_ip, '
        'algorithm: fixed_window, window: 10x, limit: 5}}\n',
        [
            'r.yaml:2:100: rules[0].count.window: invalid duration "10x" (expected a '
            'duration such as 30s, 5m, 1h, 1d (or a number of seconds))',
        ],
        id='bad_duration',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source_ip, '
        'algorithm: fixed_window, window: -5, limit: 5}}\n',
        [
            'r.yaml:2:100: rules[0].count.window: -5 is not a positive duration '
            '(expected a duration such as 30s, 5m, 1h, 1d (or a number of seconds))',
        ],
        id='negative_duration',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source_ip, '
        'algorithm: fixed_window, window: 1m, limit: five}}\n',
        [
            'r.yaml:2:111: rules[0].count.limit: got a string ("five") (expected an '
            'integer in 0..1000000000)',
        ],
        id='limit_not_int',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source_ip, '
        'algorithm: fixed_window, limit: 5}}\n',
        [
            "r.yaml:2:43: rules[0].count.window: missing required key 'window' for "
            'fixed_window (expected a duration such as 30s, 5m, 1h, 1d (or a number of '
            'seconds))',
        ],
        id='missing_window',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source_ip, '
        'limit: 5}}\n',
        [
            "r.yaml:2:43: rules[0].count.algorithm: missing required key 'algorithm' "
            '(expected one of: fixed_window, sliding_window, token_bucket, concurrent, '
            'daily, sequential_same_destination, duration)',
        ],
        id='missing_algorithm',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source_ip, '
        'algorithm: leaky_bucket, limit: 5}}\n',
        [
            'r.yaml:2:78: rules[0].count.algorithm: invalid value "leaky_bucket", did '
            "you mean 'token_bucket'? (expected one of: fixed_window, sliding_window, "
            'token_bucket, concurrent, daily, sequential_same_destination, duration)',
        ],
        id='unknown_algorithm',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source_ip, '
        'algorithm: fixed_window, window: 1m, limit: 5, rate: 5/s}}\n',
        [
            "r.yaml:2:120: rules[0].count.rate: 'rate' is not used by fixed_window "
            '(expected one of: key, algorithm, window, limit, warning)',
        ],
        id='unused_count_key',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source_ip, '
        'algorithm: token_bucket, rate: 5/x, burst: 10}}\n',
        [
            'r.yaml:2:98: rules[0].count.rate: invalid rate "5/x" (expected a rate '
            'such as 10/s, 600/m, 1000/h (or a number per second))',
        ],
        id='bad_rate',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: account, '
        'algorithm: fixed_window, window: 1m, limit: 5}}\n',
        [
            'r.yaml:2:56: rules[0].count.key: on: request events have no account '
            '(expected one of: source_ip, source_net24, username, global)',
        ],
        id='key_not_for_kind',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source, '
        'algorithm: fixed_window, window: 1m, limit: 5}}\n',
        [
            'r.yaml:2:56: rules[0].count.key: invalid value "source", did you mean '
            "'source_ip'? (expected one of: source_ip, source_net24, username, "
            'account, trunk, destination_prefix, destination, global)',
        ],
        id='unknown_key_kind',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: call_start, actions: [reject], count: {key: '
        'destination_prefix, algorithm: daily, limit: 5}}\n',
        [
            'r.yaml:2:61: rules[0].count.key: destination_prefix counts need '
            'match.destination_prefix (expected a destination_prefix list under match)',
        ],
        id='prefix_key_needs_match',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source_ip, '
        'algorithm: concurrent, limit: 5}}\n',
        [
            'r.yaml:2:78: rules[0].count.algorithm: concurrent cannot count on: '
            'request events (expected on: call_start)',
        ],
        id='concurrent_wrong_kind',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source_ip, '
        'algorithm: fixed_window, window: 1m, limit: 5, warning: 5}}\n',
        [
            'r.yaml:2:123: rules[0].count.warning: warning (5) is not below the '
            'critical limit (5) (expected a number below 5)',
        ],
        id='warning_above_limit',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: response, actions: [ban], count: {key: source_ip, '
        'algorithm: sliding_window, window: 1h, limit: 10, distinct: to_usr}}\n',
        [
            'r.yaml:2:127: rules[0].count.distinct: invalid value "to_usr", did you mean '
            "'to_user'? (expected one of: to_user, ruri_user, from_user, username, account, "
            'destination, trunk, user_agent, from_domain, to_domain, ruri_domain, source_ip, '
            'source_net24)',
        ],
        id='distinct_unknown_field',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], count: {key: source_ip, '
        'algorithm: sliding_window, window: 1h, limit: 10, distinct: destination}}\n',
        [
            'r.yaml:2:127: rules[0].count.distinct: on: request events have no destination '
            '(expected one of: to_user, ruri_user, from_user, username, user_agent, '
            'from_domain, to_domain, ruri_domain, source_ip, source_net24)',
        ],
        id='distinct_not_for_kind',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: response, actions: [ban], count: {key: source_ip, '
        'algorithm: token_bucket, rate: 1/s, burst: 10, distinct: to_user}}\n',
        [
            "r.yaml:2:124: rules[0].count.distinct: 'distinct' is not used by token_bucket "
            '(expected algorithm: sliding_window (distinct values are counted in an exact '
            'sliding window))',
        ],
        id='distinct_with_token_bucket',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: auth_failure, actions: [ban], count: {key: [source_ip, '
        'username], algorithm: sliding_window, window: 1h, limit: 10, distinct: username}}\n',
        [
            'r.yaml:2:143: rules[0].count.distinct: username is also the key: it has one '
            "value per counter (expected a field other than the key's)",
        ],
        id='distinct_is_the_key',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: response, actions: [ban], count: {key: source_ip, '
        'algorithm: sliding_window, window: 1h, limit: 1001, distinct: to_user}}\n',
        [
            'r.yaml:2:113: rules[0].count.limit: 1001 is out of range (expected an integer '
            'in 0..1000 (a distinct count keeps at most 1000 values per key))',
        ],
        id='distinct_limit_too_high',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: response, actions: [ban], count: {key: source_ip, '
        'algorithm: sliding_window, window: 1h, limit: 10, distinct: [to_user]}}\n',
        [
            'r.yaml:2:127: rules[0].count.distinct: got a list (expected one of: to_user, '
            'ruri_user, from_user, username, account, destination, trunk, user_agent, '
            'from_domain, to_domain, ruri_domain, source_ip, source_net24)',
        ],
        id='distinct_not_a_string',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [bann]}\n',
        [
            "r.yaml:2:36: rules[0].actions[0]: unknown action 'bann', did you mean "
            "'ban'? (expected an action: allow, reject, drop, tarpit, ban, end_calls, "
            'lock_account, alert)',
        ],
        id='unknown_action',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: []}\n',
        [
            'r.yaml:2:35: rules[0].actions: no actions (expected at least one action: '
            'allow, reject, drop, tarpit, ban, end_calls, lock_account, alert)',
        ],
        id='no_actions',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [reject, drop]}\n',
        [
            "r.yaml:2:44: rules[0].actions[1]: a second disposition 'drop' (the first, "
            "'reject', is at line 2) (expected at most one of: allow, reject, drop, "
            'tarpit)',
        ],
        id='two_dispositions',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: auth_failure, actions: [reject]}\n',
        [
            "r.yaml:2:41: rules[0].actions[0]: 'reject' is not possible on: "
            'auth_failure (expected ban, end_calls, lock_account or alert (the event '
            'already happened))',
        ],
        id='disposition_wrong_kind',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [{reject: {code: 403}, ban: {}}]}\n',
        [
            'r.yaml:2:36: rules[0].actions[0]: an action mapping has 2 keys (expected '
            'one key, the action name, e.g. {ban: {duration: 1h}})',
        ],
        id='action_two_keys',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [{ban: {duraton: 1h}}]}\n',
        [
            "r.yaml:2:43: rules[0].actions[0].ban.duraton: unknown key 'duraton', did "
            "you mean 'duration'? (expected one of: duration, factor, max_duration, "
            'decay, key)',
        ],
        id='unknown_action_param',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [{reject: {code: 200}}]}\n',
        [
            'r.yaml:2:52: rules[0].actions[0].reject.code: 200 is out of range '
            '(expected an integer in 400..699)',
        ],
        id='bad_reject_code',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [{reject: {retry_after: auto}}]}\n',
        [
            'r.yaml:2:59: rules[0].actions[0].reject.retry_after: retry_after: auto '
            'needs a window or token bucket count (expected a number of seconds)',
        ],
        id='retry_auto_without_count',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [{ban: {key: account}}]}\n',
        [
            'r.yaml:2:48: rules[0].actions[0].ban.key: invalid value "account" '
            '(expected one of: source_ip, source_net24)',
        ],
        id='bad_ban_key',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [{ban: {factor: 0.5}}]}\n',
        [
            'r.yaml:2:51: rules[0].actions[0].ban.factor: invalid factor 0.5 (expected '
            'a number from 1 to 100)',
        ],
        id='bad_factor',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [lock_account]}\n',
        [
            'r.yaml:2:36: rules[0].actions[0].lock_account: on: request events have no '
            'account to lock (expected on: call_end, call_start, call_tick)',
        ],
        id='lock_without_account',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [allow, ban]}\n',
        [
            'r.yaml:2:26: rules[0].actions: an allow rule cannot count, ban, end calls '
            'or lock accounts (expected allow alone, or with alert)',
        ],
        id='allow_with_ban',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], timezone: Mars/Olympus}\n',
        [
            "r.yaml:2:53: rules[0].timezone: unknown time zone 'Mars/Olympus' "
            '(expected UTC, an offset such as +02:00, or an IANA zone name such as '
            'Europe/Paris)',
        ],
        id='bad_timezone',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], match: {time: {hours: '
        "'8-18'}}}\n",
        [
            'r.yaml:2:65: rules[0].match.time.hours: invalid value "8-18" (expected '
            'HH:MM-HH:MM such as 08:00-18:00 (quoted))',
        ],
        id='bad_hours',
    ),
    pytest.param(
        'rules:\n  - {id: a, on: request, actions: [drop], match: {time: {days: '
        '[monday]}}}\n',
        [
            'r.yaml:2:65: rules[0].match.time.days[0]: invalid weekdays "monday" '
            '(expected weekdays mon..sun: a list, a range (mon-fri) or a comma list '
            '(sat,sun))',
        ],
        id='bad_days',
    ),
    pytest.param(
        'lists:\n  x: {items: [a]}\n',
        [
            "r.yaml:2:3: lists.x.kind: missing required key 'kind' (expected one of: "
            'networks, prefixes, strings)',
        ],
        id='list_without_kind',
    ),
    pytest.param(
        'lists:\n  x: {kind: strings, items: [a], file: x.txt}\n',
        [
            "r.yaml:2:40: lists.x: 'items' and 'file' cannot both be given (expected "
            'either items (inline) or file (one per line))',
        ],
        id='list_items_and_file',
    ),
    pytest.param(
        "lists:\n  'a b': {kind: strings, items: [a]}\n",
        [
            'r.yaml:2:3: lists.a b: invalid name "a b" (expected an id of letters, '
            "digits, '.', '_' and '-' (at most 64 characters))",
        ],
        id='list_bad_name',
    ),
    pytest.param(
        'lists:\n  x: {kind: networks, items: [192.0.2.0/24]}\nfeeds:\n  x: {url: '
        "'https://example.com/x', refresh: 1h}\n",
        [
            "r.yaml:4:3: feeds.x: duplicate list name 'x' (first defined at "
            'r.yaml:2:3) (expected unique list and feed names)',
        ],
        id='duplicate_list_feed',
    ),
    pytest.param(
        "feeds:\n  x: {url: 'ftp://example.com/x'}\n",
        [
            'r.yaml:2:12: feeds.x.url: invalid value "ftp://example.com/x" (expected '
            'an http:// or https:// URL)',
        ],
        id='feed_bad_url',
    ),
    pytest.param(
        'feeds:\n  x: {refresh: 1h}\n',
        [
            "r.yaml:2:3: feeds.x: missing 'url' or 'file' (expected either url (http "
            'or https) or file)',
        ],
        id='feed_no_source',
    ),
    pytest.param(
        "feeds:\n  x: {url: 'https://example.com/x', refresh: 10s}\n",
        [
            'r.yaml:2:46: feeds.x.refresh: 10s is out of range (expected a duration '
            'from 60s to 604800s)',
        ],
        id='feed_refresh_too_short',
    ),
    pytest.param(
        "settings:\n  emergency_numbers: ['11a']\n",
        [
            'r.yaml:2:23: settings.emergency_numbers[0]: invalid number "11a" '
            "(expected digits, *, #, optionally after '+' (at most 32))",
        ],
        id='settings_bad_number',
    ),
    pytest.param(
        'rules: {id: a}\n',
        [
            'r.yaml:1:8: rules: got a mapping (expected a list of rules)',
        ],
        id='rules_not_list',
    ),
    pytest.param(
        'rules:\n  - drop\n',
        [
            'r.yaml:2:5: rules[0]: got a string ("drop") (expected a rule: a mapping '
            'with id, on and actions)',
        ],
        id='rule_not_mapping',
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_bad_rule_file_errors(text: str, expected: list[str]) -> None:
    """Each bad rule file gives exactly these file:line:col errors with what was expected."""
    assert errors_of(text) == expected


def test_errors_are_all_reported_in_file_order() -> None:
    """Every error of a file is reported at once, sorted by line and column."""
    errors = errors_of("""\
        rules:
          - {id: a, on: request, actions: [bann]}
          - {id: b, on: requests, actions: [drop]}
          - {id: c, on: request, actions: [drop], count: {key: source_ip}}
        """)
    assert [e.split(": ", 1)[0] for e in errors] == ["r.yaml:2:36", "r.yaml:3:17", "r.yaml:4:43"]


def test_error_objects_carry_the_location() -> None:
    """Each error is a ConfigError with file, line, column, key path and expectation."""
    with pytest.raises(ConfigErrors) as info:
        parse_rules("rules:\n  - {id: a, on: request, actions: [drop], mode: x}\n", "f.yaml")
    (error,) = info.value.errors
    assert isinstance(error, ConfigError)
    assert error.location is not None
    assert (error.location.file, error.location.line, error.location.column) == ("f.yaml", 2, 49)
    assert error.path == "rules[0].mode"
    assert error.expected == "one of: enforce, observe"


def test_non_utf8_file(tmp_path: Path) -> None:
    """A rule file that is not UTF-8 is reported at the offending byte."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"rules:\n  - id: \xff\n")
    with pytest.raises(ConfigErrors) as info:
        load_rules([path])
    assert [str(e) for e in info.value.errors] == [
        f"{path}:2:9: the file is not UTF-8 text (byte 0xff) (expected UTF-8 text)"]


def test_missing_and_directory_files(tmp_path: Path) -> None:
    """A missing rule file and a directory are errors naming the path."""
    with pytest.raises(ConfigErrors) as info:
        load_rules([tmp_path / "nope.yaml", tmp_path])
    assert [str(e) for e in info.value.errors] == [
        f"{tmp_path}/nope.yaml:1:1: cannot read the file (No such file or directory) "
        "(expected a rule file)",
        f"{tmp_path}:1:1: is a directory (expected a rule file)",
    ]


def test_oversized_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule file over the size cap is refused before it is parsed."""
    monkeypatch.setattr(loader_module, "MAX_RULE_FILE_BYTES", 10)
    path = write(tmp_path / "big.yaml", "rules: []\n# padding\n")
    with pytest.raises(ConfigErrors) as info:
        load_rules([path])
    assert str(info.value) == f"{path}:1:1: the file is larger than 10 bytes (expected a rule file)"


def test_empty_file_and_no_files_give_no_rules(tmp_path: Path) -> None:
    """An empty rule file and an empty list of files both load as an empty rule set."""
    assert load_rules([]).rules == ()
    rules = load_rules([write(tmp_path / "empty.yaml", "# nothing yet\n")])
    assert rules.rules == () and rules.files == (str(tmp_path / "empty.yaml"),)
    assert rules.emergency_numbers == frozenset(DEFAULT_EMERGENCY_NUMBERS)


def test_error_count_is_capped() -> None:
    """More than 100 errors are cut with a count of the rest."""
    text = "rules:\n" + "".join(f"  - {{id: r{i}, on: x, actions: [drop]}}\n" for i in range(120))
    errors = errors_of(text)
    assert len(errors) == 101
    assert errors[-1] == "... and 20 more error(s)"


# -- several files -------------------------------------------------------------------------------


def test_rules_and_lists_across_files(tmp_path: Path) -> None:
    """Rules of several files load in order, and a rule may use a list of another file."""
    a = write(tmp_path / "a.yaml", """\
        lists:
          office: {kind: networks, items: [192.0.2.0/24]}
        rules:
          - {id: a1, on: request, actions: [drop], match: {source: {list: office}}}
        """)
    b = write(tmp_path / "b.yaml", """\
        rules:
          - {id: b1, on: request, actions: [drop], unless: {source: {list: office}}}
        """)
    rules = load_rules([a, b])
    assert [r.id for r in rules.rules] == ["a1", "b1"]
    assert [r.order for r in rules.rules] == [0, 1]
    assert rules.files == (str(a), str(b))


def test_duplicate_rule_id_across_files(tmp_path: Path) -> None:
    """A rule id used in two files is an error at the second, naming the first."""
    a = write(tmp_path / "a.yaml", "rules:\n  - {id: dup, on: request, actions: [drop]}\n")
    b = write(tmp_path / "b.yaml", "rules:\n\n  - {id: dup, on: request, actions: [drop]}\n")
    with pytest.raises(ConfigErrors) as info:
        load_rules([a, b])
    assert str(info.value) == (
        f"{b}:3:10: rules[0].id: duplicate rule id 'dup' (first defined at {a}:2:10) "
        "(expected a rule id unique across all rule files)")


def test_settings_in_two_files(tmp_path: Path) -> None:
    """Settings may be given in one file only."""
    a = write(tmp_path / "a.yaml", "settings: {timezone: UTC}\n")
    b = write(tmp_path / "b.yaml", "settings: {timezone: UTC}\n")
    with pytest.raises(ConfigErrors) as info:
        load_rules([a, b])
    assert str(info.value) == (f"{b}:1:1: settings: settings are already defined at {a}:1:1 "
                               "(expected settings in one rule file only)")


def test_errors_of_several_files_in_file_order(tmp_path: Path) -> None:
    """Errors of several files come file by file, each sorted by position."""
    a = write(tmp_path / "a.yaml", "rules:\n  - {id: a, on: x, actions: [drop]}\n")
    b = write(tmp_path / "b.yaml", "rules:\n  - {id: b, on: y, actions: [drop]}\n")
    with pytest.raises(ConfigErrors) as info:
        load_rules([b, a])
    assert [e.location.file for e in info.value.errors if e.location] == [str(b), str(a)]


def test_settings_timezone_applies_to_rules_of_every_file(tmp_path: Path) -> None:
    """The settings timezone is the default of every rule, even in a file loaded before it."""
    a = write(tmp_path / "a.yaml", "rules:\n  - {id: a, on: request, actions: [drop]}\n")
    b = write(tmp_path / "b.yaml", "settings: {timezone: '+02:00'}\n")
    rules = load_rules([a, b])
    assert rules.rules[0].timezone == "+02:00"


# -- lists from files ----------------------------------------------------------------------------


def test_list_from_file_with_comments(tmp_path: Path) -> None:
    """A list file (relative to the rule file) has one item per line, '#' comments skipped."""
    write(tmp_path / "lists" / "ua.txt", """\
        # scanners
        friendly-scanner
        sip cli # a comment after a space
        re:^sipvicious#1

        """)
    path = write(tmp_path / "r.yaml", """\
        lists:
          ua: {kind: strings, file: lists/ua.txt}
        """)
    rules = load_rules([path])
    info = rules.lists["ua"]
    assert info.items == ("friendly-scanner", "sip cli", "re:^sipvicious#1")
    assert info.source == str(tmp_path / "lists" / "ua.txt")
    assert rules.watched == (str(path), str(tmp_path / "lists" / "ua.txt"))


def test_list_file_errors_point_into_the_list_file(tmp_path: Path) -> None:
    """A bad line of a list file is reported at list-file:line:col."""
    write(tmp_path / "nets.txt", "192.0.2.0/24\n  10.0.0.1/8  # host bits\n2001:db8::/32\nbad\n")
    path = write(tmp_path / "r.yaml", "lists:\n  n: {kind: networks, file: nets.txt}\n")
    with pytest.raises(ConfigErrors) as info:
        load_rules([path])
    expected = "a network in CIDR notation such as 192.0.2.0/24, or an address"
    assert [str(e) for e in info.value.errors] == [
        f'{tmp_path}/nets.txt:2:3: "10.0.0.1/8" has host bits set (expected {expected})',
        f'{tmp_path}/nets.txt:4:1: "bad" is not a valid network (expected {expected})',
    ]


def test_missing_list_file(tmp_path: Path) -> None:
    """A list file that cannot be read is reported where the rule file names it."""
    path = write(tmp_path / "r.yaml", "lists:\n  p: {kind: prefixes, file: none.txt}\n")
    with pytest.raises(ConfigErrors) as info:
        load_rules([path])
    assert str(info.value) == (
        f"{path}:2:29: lists.p.file: {tmp_path}/none.txt: cannot read the file (No such file "
        "or directory) (expected a readable UTF-8 file of prefixes, one per line, relative to "
        "the rule file)")


def test_prefix_list_keeps_leading_zeros(tmp_path: Path) -> None:
    """Prefixes keep their text as written: unquoted 0044 is not read as an integer."""
    rules = parse_rules("lists:\n  p: {kind: prefixes, items: [0044, '+1900', 00]}\n")
    assert rules.lists["p"].items == ("0044", "+1900", "00")


def test_disabled_rule_is_validated_but_not_used() -> None:
    """enabled: false keeps a rule in the set (validated) but out of evaluation."""
    rules = parse_rules("rules:\n  - {id: a, on: request, actions: [drop], enabled: false}\n")
    assert [r.id for r in rules.rules] == ["a"]
    assert rules.by_kind == {}
    assert rules.summary() == "1 rule in 1 file (0 observe, 1 disabled), 0 lists, 0 feeds"
    assert errors_of("rules:\n  - {id: a, on: x, actions: [drop], enabled: false}\n")


# -- feeds ---------------------------------------------------------------------------------------

FEEDS = """\
    feeds:
      drop: {url: 'https://feeds.example/drop.txt', refresh: 12h}
      local: {file: feeds/local.txt}
    rules:
      - {id: a, on: request, actions: [drop], match: {source: [{list: drop}, {list: local}]}}
    """


def test_feed_spec_is_parsed_not_fetched(tmp_path: Path) -> None:
    """Feeds are declared (source and refresh) and start empty: fetching is the edge's job."""
    rules = parse_rules(textwrap.dedent(FEEDS), "r.yaml", tmp_path)
    drop, local = rules.feeds["drop"], rules.feeds["local"]
    assert (drop.url, drop.path, drop.refresh) == ("https://feeds.example/drop.txt", None, 43200)
    assert (local.url, local.path, local.refresh) == (None, str(tmp_path / "feeds/local.txt"), 3600)
    assert len(drop.networks) == 0 and drop.updated_at is None
    assert rules.feeds_due(1000.0) == [drop, local]


def test_apply_feed_swaps_the_networks_and_reports_bad_lines() -> None:
    """apply_feed parses the text, swaps the networks in, and reports bad lines by number."""
    rules = parse_rules(textwrap.dedent(FEEDS))
    text = "; Spamhaus DROP\n192.0.2.0/24 ; SBL1\n198.51.100.7\nnot-an-ip\n2001:db8::/32 # x\n"
    result = rules.apply_feed("drop", text, now=5000.0)
    assert (result.name, result.applied, result.count) == ("drop", True, 3)
    assert [str(e) for e in result.errors] == [
        'https://feeds.example/drop.txt:4:1: invalid network "not-an-ip" (expected an IP '
        "address or a network in CIDR notation)"]
    feed = rules.feeds["drop"]
    assert "192.0.2.77" in feed.networks and "198.51.100.7" in feed.networks
    assert "198.51.100.8" not in feed.networks
    assert feed.updated_at == 5000.0
    assert rules.feeds_due(5000.0 + 43199) == [rules.feeds["local"]]
    assert rules.feeds["drop"] in rules.feeds_due(5000.0 + 43200)


def test_apply_feed_keeps_the_old_content_when_mostly_garbage() -> None:
    """A feed text with more bad lines than good (an HTML error page) replaces nothing."""
    rules = parse_rules(textwrap.dedent(FEEDS))
    rules.apply_feed("drop", "192.0.2.0/24\n")
    result = rules.apply_feed("drop", "<html>\n<body>Error</body>\n</html>\n")
    assert not result.applied and result.count == 1 and len(result.errors) == 3
    assert "192.0.2.1" in rules.feeds["drop"].networks


def test_apply_feed_masks_host_bits() -> None:
    """Feed entries with host bits set are accepted as their network."""
    networks, errors = parse_network_lines("10.1.2.3/8\n", "f")
    assert [str(n) for n in networks] == ["10.0.0.0/8"] and errors == []


def test_apply_unknown_feed() -> None:
    """Applying a feed the rule set does not declare is a KeyError (a bug in the caller)."""
    with pytest.raises(KeyError):
        parse_rules("").apply_feed("nope", "")


def test_reload_adopts_fetched_feeds() -> None:
    """A reloaded rule set keeps the fetched content of feeds whose source did not change."""
    old = parse_rules(textwrap.dedent(FEEDS))
    old.apply_feed("drop", "192.0.2.0/24\n", now=10.0)
    new = parse_rules(textwrap.dedent(FEEDS))
    new.adopt_feeds(old)
    assert "192.0.2.9" in new.feeds["drop"].networks
    assert new.feeds["drop"].updated_at == 10.0
    moved = parse_rules(textwrap.dedent(FEEDS).replace("drop.txt", "drop2.txt"))
    moved.adopt_feeds(old)
    assert len(moved.feeds["drop"].networks) == 0


# -- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30.0), ("1.5", 1.5), ("'30s'", 30.0), ("5m", 300.0), ("1h", 3600.0),
    ("1d", 86400.0), ("1w", 604800.0), ("1h30m", 5400.0), ("500ms", 0.5),
])
def test_durations(text: str, seconds: float) -> None:
    """Durations are seconds or a number with a unit (ms, s, m, h, d, w), units combined."""
    rules = parse_rules("rules:\n  - {id: a, on: request, actions: [drop], count: {key: global,"
                        f" algorithm: fixed_window, window: {text}, limit: 1}}}}\n")
    count = rules.rules[0].count
    assert count is not None and count.window == seconds


@pytest.mark.parametrize(("text", "per_second"), [
    ("5", 5.0), ("0.5", 0.5), ("10/s", 10.0), ("600/m", 10.0), ("36000/h", 10.0),
    ("864000/d", 10.0),
])
def test_rates(text: str, per_second: float) -> None:
    """Token bucket rates are per second, or n/s, n/m, n/h, n/d."""
    rules = parse_rules("rules:\n  - {id: a, on: request, actions: [drop], count: {key: global,"
                        f" algorithm: token_bucket, rate: {text}, burst: 3}}}}\n")
    count = rules.rules[0].count
    assert count is not None and count.rate == pytest.approx(per_second) and count.limit == 3


def test_distinct_count() -> None:
    """A distinct count names its field, keeps the window's tier, and takes reject retry auto;
    a source may count distinct addresses of its /24 and a user the distinct sources."""
    rules = parse_rules("""\
rules:
  - id: a
    on: request
    count: {key: source_ip, distinct: to_user, algorithm: sliding_window, window: 10m,
            limit: 1000, warning: 500}
    actions: [{reject: {code: 403, retry_after: auto}}]
  - id: b
    on: auth_failure
    count: {key: username, distinct: source_ip, algorithm: sliding_window, window: 1h, limit: 5}
    actions: [ban]
  - id: c
    on: request
    count: {key: source_net24, distinct: source_ip, algorithm: sliding_window, window: 1h,
            limit: 5}
    actions: [drop]
""")
    a, b, c = rules.rules
    assert a.count == Count(("source_ip",), "sliding_window", 1000.0, window=600.0,
                            ttl=DEFAULT_LEASE_TTL, warning=500.0, distinct="to_user")
    assert a.actions == (Reject(403, "Forbidden", "auto"),)
    assert (a.tier, b.tier, c.tier) == (1, 2, 1)
    assert b.count is not None and b.count.distinct == "source_ip"
    assert c.count is not None and c.count.distinct == "source_ip"


def test_action_defaults() -> None:
    """Bare action names take their documented defaults."""
    rules = parse_rules("""\
rules:
  - {id: a, on: call_start, actions: [reject, ban, end_calls, lock_account, alert]}
  - {id: b, on: call_start, actions: [tarpit]}
""")
    assert rules.rules[0].actions == (
        Reject(403, "Forbidden", None), Ban(600.0, 2.0, 604800.0, 86400.0, "source_ip"),
        EndCalls("account"), LockAccount(86400.0), Alert(None))
    assert rules.rules[1].actions == (Tarpit(10.0, None),)


def test_reject_reason_defaults_to_the_code_phrase() -> None:
    """A reject without reason uses the standard phrase of its code."""
    rules = parse_rules("rules:\n  - {id: a, on: request, actions: [{reject: {code: 429}}]}\n")
    assert rules.rules[0].actions == (Reject(429, "Too Many Requests", None),)


def test_reject_reason_cannot_inject_headers() -> None:
    """A reason phrase with a line break is refused (it would inject SIP headers)."""
    errors = errors_of(
        'rules:\n  - {id: a, on: request, actions: [{reject: {reason: "a\\r\\nX: y"}}]}\n')
    assert len(errors) == 1 and "reject.reason: invalid value" in errors[0]


# -- the fuzz invariant ------------------------------------------------------------------------

_WORDS = ["rules", "lists", "feeds", "settings", "id", "on", "request", "call_start", "match",
          "count", "actions", "key", "algorithm", "window", "limit", "ban", "reject", "drop",
          "source", "list", "kind", "items", "file", "-", ":", "{", "}", "[", "]", ",", "'",
          '"', "&a", "*a", "!!str", "!!python/object", "<<", "re:(", "10s", "1x", "0", "-1",
          "1e999", "\t", "\n", "  ", "#", "|", ">", "?", "%", "@", "`", "\x00", "\ud800",
          "time", "hours", "days", "mon-fri", "25:00-08:00", "192.0.2.0/24", "::/0"]


@given(st.text(max_size=400))
def test_fuzz_text_gives_config_errors_only(text: str) -> None:
    """Any text is either a valid rule file or raises ConfigError, never anything else."""
    with contextlib.suppress(ConfigError):
        parse_rules(text)


@given(st.lists(st.sampled_from(_WORDS), max_size=60).map(" ".join))
def test_fuzz_yaml_like_gives_config_errors_only(text: str) -> None:
    """YAML-like garbage made of rule keywords raises ConfigError only."""
    with contextlib.suppress(ConfigError):
        parse_rules(text)


_SCALARS = st.one_of(st.text(max_size=12), st.integers(), st.booleans(), st.none(),
                     st.floats(allow_nan=True), st.sampled_from(_WORDS))
_TREES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_WORDS), st.text(max_size=8)), children,
                        max_size=5)),
    max_leaves=30,
)


@given(st.dictionaries(st.sampled_from(["rules", "lists", "feeds", "settings", "x"]), _TREES,
                       max_size=4))
def test_fuzz_structured_documents_give_config_errors_only(doc: dict[str, object]) -> None:
    """Structurally plausible documents with random values raise ConfigError only."""
    import yaml

    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return
    with contextlib.suppress(ConfigError):
        parse_rules(text)


@given(st.lists(st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b", "c"]),
     "on": st.sampled_from(["request", "call_start", "call_tick", "connection", "response"]),
     "actions": st.lists(st.sampled_from(["drop", "reject", "ban", "alert", "allow",
                                          "lock_account", "end_calls", "tarpit"]), max_size=3)},
    optional={"count": st.fixed_dictionaries(
        {"algorithm": st.sampled_from(["fixed_window", "concurrent", "daily", "duration",
                                       "token_bucket", "sequential_same_destination",
                                       "sliding_window"])},
        optional={"key": st.sampled_from(["source_ip", "account", "destination", "global"]),
                  "window": st.sampled_from(["1m", 5, "x"]), "limit": st.integers(-2, 5),
                  "warning": st.integers(-1, 6), "rate": st.sampled_from(["1/s", 0]),
                  "burst": st.integers(0, 3),
                  "distinct": st.sampled_from(["to_user", "destination", "source_ip", "x"])}),
              "mode": st.sampled_from(["observe", "enforce"])}), max_size=4))
def test_fuzz_rules_load_or_give_config_errors(rules: list[dict[str, object]]) -> None:
    """Random combinations of valid keywords either load or raise ConfigError only."""
    import yaml

    try:
        result = parse_rules(yaml.safe_dump({"rules": rules}))
    except ConfigError:
        return
    assert isinstance(result, RuleSet)
    assert re.fullmatch(r"\d+ rules? in 1 file .*", result.summary())

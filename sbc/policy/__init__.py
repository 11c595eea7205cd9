"""The rule engine, pure (no I/O beyond reading rule and list files, no clock).

:mod:`~sbc.policy.model` (events, rules, :class:`~sbc.policy.model.Verdict`),
:mod:`~sbc.policy.loader` (YAML rule files to an immutable rule set; the format is documented
there), :mod:`~sbc.policy.match` (predicates compiled once), :mod:`~sbc.policy.tz` (time zones
from the tz database without ``datetime``) and :mod:`~sbc.policy.engine` (plan the store ops,
then decide).
"""

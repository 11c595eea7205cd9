"""sbc: a SIP security gateway / session border controller."""

__version__ = "0.1.0"

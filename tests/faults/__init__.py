"""Fault scenarios (issue #16): each guarantee of contract §7 under crashes and outages, with
the figures that prove it.  See docs/reliability.md; run with ``make faults``."""

"""The soak run (``python -m soak.run``, ``make soak``): steady traffic with periodic faults.

Its traffic, audit checks and fault bookkeeping live in :mod:`devtools` (shared with the
fault and scale-out tests): :mod:`devtools.traffic`, :mod:`devtools.audit_check` and
:mod:`devtools.fault_report`.
"""

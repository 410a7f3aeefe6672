"""Test and development infrastructure of cachebus, kept out of what users install.

The wheel packages only ``cachebus`` and ``worker`` (``[tool.hatch.build.targets.wheel]
packages`` in pyproject.toml), so nothing here ships. It runs from a checkout (the
tests put the repository root on ``sys.path``).

* :mod:`devtools.scripted`: drive cachebus programs against a script of expected
  steps and replies, without Redis (unit tests of the programs and the runners).
"""

"""Benchmarks of cachebus (not tests): ``python -m bench.run`` / ``make bench``.

Every figure is measured against a baseline taken in the same run, on a redis-server the
benchmark starts itself; see :mod:`bench.run`.
"""

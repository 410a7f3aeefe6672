"""A reference implementation of Redis's glob matching (stringmatchlen) for tests."""

from __future__ import annotations

import re


def redis_glob_match(pattern: str, key: str) -> bool:
    """Redis's stringmatchlen semantics for *, ?, [...] and backslash escapes."""
    regex = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            regex.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            regex.append(".*")
        elif c == "?":
            regex.append(".")
        elif c == "[":
            end = pattern.find("]", i + 1)
            regex.append("[" + pattern[i + 1 : end].replace("\\", "\\\\") + "]")
            i = end
        else:
            regex.append(re.escape(c))
        i += 1
    return re.fullmatch("".join(regex), key, re.DOTALL) is not None

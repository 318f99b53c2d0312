"""`--shard i/n`: the part of a job one task of a Slurm array does, with one meaning in every command.

Shards never overlap and together cover everything; which items a shard takes is a pure function of the input
(positions in the input order, or a hash of each item's id where the order may change), so a rerun of shard i
does the same items.
"""

from __future__ import annotations

import re

Shard = tuple[int, int]


def parse_shard(value: str | tuple[int, int] | list[int] | None) -> Shard | None:
    """'i/n' (or (i, n)) with 0 <= i < n -> (i, n); None -> None (the whole job). ValueError says the form."""
    if value is None:
        return None
    problem = f"shard must look like i/n with 0 <= i < n (e.g. 0/4 for a Slurm array 0-3), got {value!r}"
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not match:
            raise ValueError(problem)
        value = (match[1], match[2])
    index, count = (int(v) for v in value)
    if count < 1 or not 0 <= index < count:
        raise ValueError(problem)
    return index, count


def shard_positions(total: int, shard: Shard | None) -> range:
    """The input positions k of shard (i, n): k % n == i."""
    return range(total) if shard is None else range(shard[0], total, shard[1])


def shard_suffix(shard: Shard | None) -> str:
    """A file-name suffix for a shard's own records ('' for the whole job)."""
    return "" if shard is None or shard[1] == 1 else f".shard-{shard[0]}-of-{shard[1]}"

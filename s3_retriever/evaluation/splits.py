"""Question splits of the evaluation data, in one place.

HotpotQA by file index: ``CALIBRATION`` 0-99 (heads), ``DEV`` 100-199 (choosing
defaults), ``REPORTED`` 200+ (every reported number); ``RESERVED_SAE_QUESTIONS`` are SAE
training text, never evaluated. SQuAD uses the same positions in a fixed seeded
permutation; needles are drawn per split from separate seeds.

Example:
    >>> split_positions("reported", 3)
    [200, 201, 202]
    >>> parse_indices("100-102,150")
    [100, 101, 102, 150]
    >>> split_of(150)
    'dev'
"""

from __future__ import annotations

from collections.abc import Iterable

from s3_retriever.corpus import RESERVED_SAE_QUESTIONS

__all__ = [
    "CALIBRATION",
    "DEV",
    "NEEDLE_SEED_OFFSETS",
    "REPORTED",
    "SPLITS",
    "SQUAD_SPLIT_SEED",
    "check_within",
    "parse_indices",
    "split_of",
    "split_positions",
]

CALIBRATION = range(0, 100)
DEV = range(100, 200)
REPORTED = range(200, RESERVED_SAE_QUESTIONS.start)
SPLITS: dict[str, range] = {"calibration": CALIBRATION, "dev": DEV, "reported": REPORTED}
SQUAD_SPLIT_SEED = "squad-split:v1"
NEEDLE_SEED_OFFSETS: dict[str, int] = {"reported": 0, "dev": 1000, "calibration": 2000}


def _split(name: str) -> range:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; known: {sorted(SPLITS)}")
    return SPLITS[name]


def split_positions(name: str, n: int | None = None) -> list[int]:
    """The first ``n`` positions (all when None) of split ``name``.

    Example:
        >>> split_positions("dev", 2)
        [100, 101]
    """
    r = _split(name)
    if n is not None and n <= 0:
        raise ValueError(f"the number of questions must be positive, got {n}")
    return list(r if n is None else r[:n])


def split_of(position: int) -> str | None:
    """The split holding ``position`` (None: reserved for SAE training or beyond).

    Example:
        >>> split_of(5), split_of(5001)
        ('calibration', None)
    """
    for name, r in SPLITS.items():
        if position in r:
            return name
    return None


def check_within(positions: Iterable[int], name: str) -> None:
    """Raise ValueError unless every position lies in split ``name``.

    Example:
        >>> check_within([100, 199], "dev")
        >>> check_within([100, 250], "dev")
        Traceback (most recent call last):
        ...
        ValueError: positions [250] are outside the dev split (100-199)
    """
    r = _split(name)
    bad = [p for p in positions if p not in r]
    if bad:
        raise ValueError(f"positions {bad[:5]} are outside the {name} split "
                         f"({r.start}-{r.stop - 1})")


def parse_indices(spec: str) -> list[int]:
    """``"200-299,310"`` -> ``[200, ..., 299, 310]`` (inclusive ranges, in order).

    Example:
        >>> parse_indices("3, 5-6")
        [3, 5, 6]
    """
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        a, sep, b = part.partition("-")
        try:
            lo, hi = int(a), int(b) if sep else int(a)
        except ValueError:
            raise ValueError(f"bad index range {part!r} in {spec!r}; use e.g. 200-299,310") \
                from None
        if hi < lo:
            raise ValueError(f"bad index range {part!r}: end before start")
        out += list(range(lo, hi + 1))
    if not out:
        raise ValueError(f"no indices in {spec!r}")
    return out

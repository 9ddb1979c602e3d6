"""Tagging schemes: entities <-> per-position tags, and which tag may follow which.

Three schemes are supported:

* ``"BIO"`` (IOB2, the default): ``B-X`` begins an entity of type X, ``I-X`` continues it.
* ``"BIOES"``: as BIO, plus ``E-X`` ends a multi-position entity and ``S-X`` is a
  single-position one.
* ``"IO"``: ``I-X`` on every position of an entity. Two adjacent entities of the same type
  cannot be told apart, so ``tags_for_entities`` merges them.

Entities are ``(start, end, type)`` over positions, ``end`` exclusive.

Reading tags back (``entities_from_tags``) has two modes, the two of seqeval:

* default (``strict=False``), conlleval's: any ``B-/I-/E-/S-`` prefix is understood whatever the
  scheme, and tags that break the scheme's rules still make entities (an ``I-X`` after ``O``
  begins one, a type switch inside a run splits it). Exactly
  ``seqeval.metrics.sequence_labeling.get_entities``.
* strict (``strict=True``): only well-formed entities count (BIO: ``B-X I-X*``; BIOES:
  ``S-X`` or ``B-X I-X* E-X``; IO: a run of ``I-X``), everything else is ignored, and a prefix
  the scheme does not have is an error. Exactly seqeval's strict mode with
  ``scheme=IOB2`` / ``IOBES`` / ``IOB1`` respectively (seqeval has no IO class; IOB1 on
  sequences of only ``I-`` and ``O`` tags is IO).

Annotation files may also use BILOU's ``L-``/``U-`` prefixes: ``split_tag`` reads them as
``E-``/``S-``, and ``chunks`` cuts any parsed tag sequence into entities conlleval's way.
"""

from __future__ import annotations

import re

import numpy as np

from tagtune.errors import TagtuneError

SCHEMES = ("BIO", "BIOES", "IO")

OUTSIDE = "O"

# The prefixes each scheme's tags may carry (besides the bare "O"), in tag_names order.
_PREFIXES = {"BIO": ("B", "I"), "BIOES": ("B", "I", "E", "S"), "IO": ("I",)}

# Prefixes annotation files may carry, and the one each stands for: BILOU's L (last) and U
# (unit) are BIOES's E and S.
TAG_PREFIXES = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}
_PREFIX_STRINGS = tuple(f"{p}-" for p in TAG_PREFIXES)
_FILE_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")

_parsed: dict[str, tuple[str, str]] = {}


def check_scheme(scheme: str) -> str:
    """The scheme's canonical name (case-insensitive), or a TagtuneError naming the choices."""
    name = scheme.upper() if isinstance(scheme, str) else scheme
    if name not in SCHEMES:
        raise TagtuneError(f"unknown tagging scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return name


def parse_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``. Anything else is an error:
    a tag is ``O`` or one of ``B- I- E- S-`` followed by a non-empty type."""
    hit = _parsed.get(tag)
    if hit is not None:
        return hit
    if tag == OUTSIDE:
        out = (OUTSIDE, "")
    elif isinstance(tag, str) and len(tag) > 2 and tag[0] in "BIES" and tag[1] == "-":
        out = (tag[0], tag[2:])
    else:
        raise TagtuneError(f"tag {tag!r} is neither 'O' nor a B-/I-/E-/S- prefix followed by a type")
    if len(_parsed) < 100_000:
        _parsed[tag] = out
    return out


def split_tag(tag: str) -> tuple[str, str] | None:
    """A tag as written in annotation files: ``"B-PER"`` -> ``("B", "PER")``, ``"O"`` ->
    ``("O", "")``, with BILOU's ``L-``/``U-`` read as ``E-``/``S-`` (``"U-PER"`` -> ``("S", "PER")``);
    ``None`` for anything else (a prefix other than B, I, E, S, L, U, or no type)."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, dash, kind = tag.partition("-")
    if dash and prefix in TAG_PREFIXES and kind:
        return TAG_PREFIXES[prefix], kind
    return None


def is_file_tag(tag: str) -> bool:
    """Whether ``tag`` reads as a tag of an annotation file (``O`` or ``P-TYPE`` with ``P`` one of
    B, I, E, S, L, U and a type without whitespace)."""
    return bool(_FILE_TAG.match(tag))


def entity_type(tag: str) -> str:
    """The entity type a label names: the part after its scheme prefix (``"B-PER"`` -> ``"PER"``,
    BILOU's ``L-``/``U-`` included), or the label itself when it has no such prefix."""
    return tag[2:] if tag.startswith(_PREFIX_STRINGS) else tag


def guess_scheme(labels) -> str:
    """The scheme a model's label names imply: BIOES if any carries an ``E-`` or ``S-`` prefix,
    else BIO if any carries ``B-``, else IO."""
    prefixes = {label.split("-", 1)[0] for label in labels if label != OUTSIDE}
    return "BIOES" if prefixes & {"E", "S"} else "BIO" if "B" in prefixes else "IO"


def chunks(parsed) -> list[tuple[int, int, str]]:
    """The ``(start, end, type)`` entities (``end`` exclusive, in order) of parsed ``(prefix, type)``
    tags, cut the way conlleval cuts them: an entity is a run of non-O positions, and a new one
    starts where the previous position was an E- or S-, the current one is a B- or S-, or the type
    changes (so an ``I-`` after ``O`` begins one)."""
    out = []
    start, kind, prev = None, "", OUTSIDE
    for i, (prefix, typ) in enumerate(parsed):
        if prefix == OUTSIDE:
            if start is not None:
                out.append((start, i, kind))
                start = None
        elif start is None or prev in "ES" or prefix in "BS" or typ != kind:
            if start is not None:
                out.append((start, i, kind))
            start, kind = i, typ
        prev = prefix
    if start is not None:
        out.append((start, len(parsed), kind))
    return out


def chunk_relations(labels) -> tuple[np.ndarray, np.ndarray]:
    """How ``chunks`` reads a tag right after another, as boolean ``(L, L)`` matrices over
    ``labels`` (tag strings): ``begins[a, b]``, tag b after tag a starts a new entity (b is not O,
    and a is O, a is an E- or S-, b is a B- or S-, or their types differ); ``continues[a, b]``,
    b extends the entity a is in (neither is O and b does not begin one). A text's first tag
    begins an entity unless it is O, as it would after an O."""
    parsed = [parse_tag(tag) for tag in labels]
    prefix = np.array([p for p, _ in parsed])
    kind = np.array([t for _, t in parsed], dtype=object)
    outside = prefix == OUTSIDE  # (L,)
    begins = (~outside[None, :] & (outside[:, None] | np.isin(prefix, ("E", "S"))[:, None]
                                   | np.isin(prefix, ("B", "S"))[None, :] | (kind[:, None] != kind[None, :])))
    continues = ~outside[:, None] & ~outside[None, :] & ~begins
    return begins, continues


def tag_names(entity_types, scheme: str = "BIO") -> list[str]:
    """All tags of ``scheme`` over ``entity_types``: ``"O"`` first, then for each type in sorted
    order its tags (BIO: B-, I-; BIOES: B-, I-, E-, S-; IO: I-)."""
    prefixes = _PREFIXES[check_scheme(scheme)]
    names = [OUTSIDE]
    for kind in sorted(set(entity_types)):
        if not isinstance(kind, str) or not kind:
            raise TagtuneError(f"entity type {kind!r} must be a non-empty string")
        names.extend(f"{p}-{kind}" for p in prefixes)
    return names


def tags_for_entities(length: int, entities, scheme: str = "BIO") -> list[str]:
    """The tag of each of ``length`` positions given non-overlapping ``(start, end, type)``
    entities (``end`` exclusive). Under IO, adjacent entities of one type become one."""
    scheme = check_scheme(scheme)
    tags = [OUTSIDE] * length
    for start, end, kind in sorted(entities, key=lambda e: (e[0], e[1])):
        if not 0 <= start < end <= length:
            raise ValueError(f"entity {(start, end, kind)!r} is not a non-empty range within 0..{length}")
        if any(t != OUTSIDE for t in tags[start:end]):
            raise ValueError(f"entity {(start, end, kind)!r} overlaps another one")
        if scheme == "IO":
            tags[start:end] = [f"I-{kind}"] * (end - start)
        elif scheme == "BIO":
            tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
        elif end - start == 1:
            tags[start] = f"S-{kind}"
        else:
            tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 2) + [f"E-{kind}"]
    return tags


def entities_from_tags(tags, scheme: str = "BIO", strict: bool = False) -> list[tuple[int, int, str]]:
    """The ``(start, end, type)`` entities (``end`` exclusive, in order) that ``tags`` encode.

    ``strict=False`` reads tags as conlleval / seqeval's default mode do (the scheme is not
    consulted); ``strict=True`` as seqeval's strict mode with the scheme's class (module doc).
    """
    scheme = check_scheme(scheme)
    parsed = [parse_tag(t) for t in tags]
    if not strict:
        return chunks(parsed)
    allowed = _PREFIXES[scheme]
    for tag, (prefix, _) in zip(tags, parsed):
        if prefix != OUTSIDE and prefix not in allowed:
            raise TagtuneError(f"tag {tag!r} is not a {scheme} tag (prefixes {'/'.join(allowed)} and O)")
    if scheme == "BIO":
        return _strict_bio(parsed)
    if scheme == "BIOES":
        return _strict_bioes(parsed)
    return _strict_io(parsed)


def _strict_bio(parsed) -> list[tuple[int, int, str]]:
    # B-X I-X*; a stray I- is ignored.
    out = []
    start, kind = None, ""
    for i, (prefix, typ) in enumerate(parsed):
        if start is not None and prefix == "I" and typ == kind:
            continue
        if start is not None:
            out.append((start, i, kind))
            start = None
        if prefix == "B":
            start, kind = i, typ
    if start is not None:
        out.append((start, len(parsed), kind))
    return out


def _strict_bioes(parsed) -> list[tuple[int, int, str]]:
    # S-X, or B-X I-X* E-X; an opened entity that is not closed by its E-X is dropped.
    out = []
    start, kind = None, ""
    for i, (prefix, typ) in enumerate(parsed):
        if start is not None:
            if typ == kind and prefix == "I":
                continue
            if typ == kind and prefix == "E":
                out.append((start, i + 1, kind))
                start = None
                continue
            start = None
        if prefix == "S":
            out.append((i, i + 1, typ))
        elif prefix == "B":
            start, kind = i, typ
    return out


def _strict_io(parsed) -> list[tuple[int, int, str]]:
    # Runs of I-X of one type.
    out = []
    start, kind = None, ""
    for i, (prefix, typ) in enumerate(parsed):
        if start is not None and not (prefix == "I" and typ == kind):
            out.append((start, i, kind))
            start = None
        if start is None and prefix == "I":
            start, kind = i, typ
    if start is not None:
        out.append((start, len(parsed), kind))
    return out


def transition_mask(labels, scheme: str = "BIO") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which of ``labels`` (tag strings, in model output order) may start a sequence
    (``start: (L,)``), follow one another (``trans[i, j]``: label j right after label i,
    ``(L, L)``) and end a sequence (``end: (L,)``), as boolean numpy arrays.

    BIO: ``I-X`` only after ``B-X`` or ``I-X``, never first. BIOES: ``I-X``/``E-X`` only after
    ``B-X``/``I-X``; after ``B-X``/``I-X`` only ``I-X``/``E-X``; ``I-``/``E-`` never first and
    ``B-``/``I-`` never last. IO: everything allowed.
    """
    scheme = check_scheme(scheme)
    allowed = _PREFIXES[scheme]
    parsed = []
    for tag in labels:
        prefix, typ = parse_tag(tag)
        if prefix != OUTSIDE and prefix not in allowed:
            raise TagtuneError(f"label {tag!r} is not a {scheme} tag (prefixes {'/'.join(allowed)} and O)")
        parsed.append((prefix, typ))
    n = len(parsed)
    start = np.ones(n, dtype=bool)
    trans = np.ones((n, n), dtype=bool)
    end = np.ones(n, dtype=bool)
    if scheme == "IO":
        return start, trans, end
    # Prefixes that continue an entity already open, and those after which one is open.
    inside = ("I",) if scheme == "BIO" else ("I", "E")
    opening = ("B", "I")
    for j, (pj, tj) in enumerate(parsed):
        if pj in inside:
            start[j] = False
        if scheme == "BIOES" and pj in opening:
            end[j] = False
        for i, (pi, ti) in enumerate(parsed):
            open_before = pi in opening
            if pj in inside:
                trans[i, j] = open_before and ti == tj
            elif scheme == "BIOES" and open_before:
                trans[i, j] = False
    return start, trans, end

"""The six MR sequences of the paper, their fixed channel order and their BIDS matching rules.

A BIDS file name such as ``sub-01_acq-sag_chunk-2_T2w.nii.gz`` is parsed into entities
(``acq=sag``, ``chunk=2``) and a suffix (``T2w``). A :class:`MatchRule` names the suffixes and the
entity values a sequence requires, and may list alternative forms of the same sequence (any one
matching is enough: STIR is ``acq-stir_T2w``, a name BIDS accepts, or the ``_STIR`` suffix of
older data, which BIDS does not define). The first sequence whose rule matches wins, and a file
matched by two rules is reported as ambiguous by ``cordfuse check``.

Example:
    >>> from cordfuse.sequences import parse_bids_name, match_sequence, DEFAULT_RULES
    >>> name = parse_bids_name("sub-01_acq-sag_chunk-2_T2w.nii.gz")
    >>> name.entities["chunk"], name.suffix
    ('2', 'T2w')
    >>> match_sequence(name, DEFAULT_RULES)
    ['T2Sag']
    >>> [match_sequence(parse_bids_name(f), DEFAULT_RULES) for f in
    ...  ("sub-01_acq-stir_T2w.nii.gz", "sub-01_acq-sag_STIR.nii.gz")]
    [['STIR'], ['STIR']]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cordfuse.errors import CordfuseError

#: The paper's sequences in the fixed channel order used by every model and prepared file.
SEQUENCES: tuple[str, ...] = ("T2Sag", "STIR", "T2starAx", "T2Ax", "T1Sag", "MP2RAGE")

#: Acquisition plane of each sequence (``iso`` for 3D isotropic acquisitions).
PLANES: dict[str, str] = {
    "T2Sag": "sagittal",
    "STIR": "sagittal",
    "T2starAx": "axial",
    "T2Ax": "axial",
    "T1Sag": "sagittal",
    "MP2RAGE": "iso",
}

#: The sequence that carries the lesion ground truth and the output grid.
REFERENCE_SEQUENCE = "T2Sag"

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class MatchRule:
    """Which BIDS file names belong to one sequence.

    Attributes:
        suffixes: accepted BIDS suffixes (the last ``_``-separated part, e.g. ``T2w``).
        entities: entity values that must all be present (e.g. ``{"acq": "sag"}``).
        alternatives: other forms of the same sequence's names (rules of their own, tried when
            this one does not match).
    """

    suffixes: tuple[str, ...]
    entities: Mapping[str, str] = field(default_factory=dict)
    alternatives: tuple[MatchRule, ...] = ()

    def matches(self, name: BidsName) -> bool:
        """Whether a file name has one of the suffixes and every required entity value, or
        matches one of the alternatives.

        Args:
            name: A parsed BIDS file name.

        Returns:
            True when the file belongs to this rule's sequence.

        Example:
            >>> rule = MatchRule(("T2w",), {"acq": "sag"})
            >>> rule.matches(parse_bids_name("sub-01_acq-sag_T2w.nii.gz"))
            True
            >>> rule.matches(parse_bids_name("sub-01_acq-ax_T2w.nii.gz"))
            False
        """
        if any(rule.matches(name) for rule in self.alternatives):
            return True
        if name.suffix not in self.suffixes:
            return False
        return all(name.entities.get(key) == value for key, value in self.entities.items())


DEFAULT_RULES: dict[str, MatchRule] = {
    "T2Sag": MatchRule(("T2w",), {"acq": "sag"}),
    # a T2-weighted inversion-recovery scan: BIDS names it as a T2w; ``_STIR`` is the older name
    "STIR": MatchRule(("T2w",), {"acq": "stir"}, alternatives=(MatchRule(("STIR",)),)),
    "T2starAx": MatchRule(("T2starw", "T2star"), {"acq": "ax"}),
    "T2Ax": MatchRule(("T2w",), {"acq": "ax"}),
    "T1Sag": MatchRule(("T1w",), {"acq": "sag"}),
    "MP2RAGE": MatchRule(("UNIT1",)),
}


@dataclass(frozen=True)
class BidsName:
    """A parsed BIDS file name: ``stem`` without extension, ordered ``entities`` and ``suffix``."""

    stem: str
    entities: dict[str, str]
    suffix: str

    @property
    def chunk(self) -> int | None:
        """The ``chunk`` entity as a number (the slab of a multi-slab T2Sag), None without one.

        Example:
            >>> parse_bids_name("sub-01_acq-sag_chunk-2_T2w.nii.gz").chunk
            2
        """
        value = self.entities.get("chunk")
        return int(value) if value is not None and value.isdigit() else None


def strip_nifti_extension(filename: str) -> str | None:
    """The file name without ``.nii``/``.nii.gz``, or None when it is not a NIfTI name.

    Args:
        filename: A file name (no folder).

    Returns:
        The stem, or None.

    Example:
        >>> strip_nifti_extension("sub-01_T2w.nii.gz"), strip_nifti_extension("notes.txt")
        ('sub-01_T2w', None)
    """
    for ext in NIFTI_EXTENSIONS:
        if filename.endswith(ext):
            return filename[: -len(ext)]
    return None


def parse_bids_name(filename: str) -> BidsName:
    """Split ``sub-01_ses-1_acq-sag_T2w.nii.gz`` into entities and suffix.

    Parts without a ``-`` before the suffix (not valid BIDS) are kept as entities with an empty
    value so that they never silently match a rule that requires a value.

    Args:
        filename: A BIDS file name, with or without its NIfTI extension.

    Returns:
        The stem, the entities in file order and the suffix.

    Example:
        >>> parse_bids_name("sub-01_ses-1_acq-sag_T2w.nii.gz").entities
        {'sub': '01', 'ses': '1', 'acq': 'sag'}
    """
    stem = strip_nifti_extension(filename) or filename
    parts = stem.split("_")
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, _, value = part.partition("-")
        entities[key] = value
    return BidsName(stem=stem, entities=entities, suffix=parts[-1])


def match_sequence(name: BidsName, rules: Mapping[str, MatchRule]) -> list[str]:
    """All sequences whose rule matches ``name`` (normally zero or one), in channel order.

    Args:
        name: A parsed BIDS file name.
        rules: The rule of each sequence (e.g. :data:`DEFAULT_RULES`).

    Returns:
        The matching sequence names; more than one means the rules are ambiguous for it.
    """
    return [seq for seq in SEQUENCES if seq in rules and rules[seq].matches(name)]


def load_rules(path: str | Path | None) -> dict[str, MatchRule]:
    """Default rules, overridden per sequence by a JSON or YAML mapping file.

    The file maps a sequence name to ``{"suffix": "T2w" | [...], "entities": {"acq": "sag"}}``,
    or to a list of such rules (any one matching is enough); sequences it does not name keep
    their default rule. Example (YAML)::

        T2Sag: {suffix: T2w, entities: {acq: sagittal}}
        T2starAx: {suffix: [T2star, T2starw]}
        STIR: [{suffix: T2w, entities: {acq: stir}}, {suffix: STIR}]

    Args:
        path: The mapping file, or None for the default rules.

    Returns:
        The rule of every sequence.

    Raises:
        CordfuseError: unreadable file, unknown sequence name or malformed rule.
    """
    rules = dict(DEFAULT_RULES)
    if path is None:
        return rules
    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except (OSError, ValueError) as exc:
        raise CordfuseError(f"{path}: cannot read sequence mapping ({exc})") from exc
    if not isinstance(raw, dict):
        raise CordfuseError(f"{path}: sequence mapping must be an object of sequence -> rule")
    for seq, spec in raw.items():
        if seq not in SEQUENCES:
            raise CordfuseError(
                f"{path}: unknown sequence {seq!r}; expected one of {', '.join(SEQUENCES)}"
            )
        rules[seq] = _rule_from_spec(path, seq, spec)
    return rules


def _rule_from_spec(path: Path, seq: str, spec: object) -> MatchRule:
    if isinstance(spec, list) and spec:
        first, *others = (_rule_from_spec(path, seq, one) for one in spec)
        return MatchRule(first.suffixes, first.entities, alternatives=tuple(others))
    if not isinstance(spec, dict) or "suffix" not in spec:
        raise CordfuseError(
            f"{path}: rule for {seq} needs a 'suffix' (string or list), or a list of such rules"
        )
    suffix = spec["suffix"]
    suffixes: Sequence[str] = [suffix] if isinstance(suffix, str) else suffix
    entities = spec.get("entities") or {}
    if not all(isinstance(s, str) for s in suffixes) or not isinstance(entities, dict):
        raise CordfuseError(f"{path}: rule for {seq} is malformed: {spec!r}")
    return MatchRule(tuple(suffixes), {str(k): str(v) for k, v in entities.items()})

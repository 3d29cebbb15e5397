"""From a ``DataConfig`` to lists of tokenised examples, with a report of everything that happened.

``kind`` is what the objective consumes: ``preference`` (pairs), ``demonstration`` (prompt + response),
``unpaired`` (prompt + response + desirable/undesirable label) or ``prompt`` (prompts for generation).
Preference rows may feed a demonstration objective (their *chosen* responses are used, and the report says
so) or an unpaired one (broken into halves); labelled rows feed a demonstration objective with their desirable
rows only (the rest counted as dropped); any row feeds ``prompt``.

The eval split is ``data.eval`` when given, else ``eval_fraction`` of the train records, held out by a seeded
shuffle of the parsed records (so the split is the same whatever the tokenizer). The hold-out is
``floor(eval_fraction · records)`` — never more than the fraction asked — and at least one record stays in
train; when that rounds to 0 no eval split is made, and the report says so. ``validate_data`` runs the
reading and parsing half without a tokenizer, so the command line can check data before any model loads;
``parse_data`` / ``parse_split`` do the same and keep the records, which ``build_datasets`` / ``load_split``
take (``parsed=``) so that a file is read and parsed once (``train()``: parse, load the model, tokenise).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from imitalign.config import DataConfig, DataSource
from imitalign.data.formats import N_EXAMPLES, SKIP_REASONS, ParseStats, parse_rows
from imitalign.data.records import (
    DataError,
    DemonstrationRecord,
    PreferenceRecord,
    PromptRecord,
    Record,
    UnpairedRecord,
)
from imitalign.data.sources import iter_rows
from imitalign.data.templates import Renderer, load_template
from imitalign.data.tokenize import (
    DROP_REASONS,
    KINDS,
    TokenizedDemo,
    TokenizedPair,
    TokenizedPrompt,
    TokenizedUnpaired,
    tokenize_records,
)
from imitalign.data.unpaired import as_unpaired, assign_kl, desirable_only

logger = logging.getLogger("imitalign.data")

Tokenized = TokenizedPair | TokenizedDemo | TokenizedPrompt | TokenizedUnpaired


@dataclass
class SplitReport:
    """Counts for one split: rows read/parsed/skipped, examples kept, truncated and dropped, tokens."""

    name: str
    path: str
    format: str = ""
    rows_read: int = 0
    parsed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skip_examples: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    records: int = 0  # records in this split (after an eval_fraction hold-out)
    labels: dict[str, int] = field(default_factory=dict)  # unpaired rows read: desirable / undesirable
    undesirable_dropped: int = 0  # labelled rows left out of a demonstration objective
    tokenized: bool = False
    examples: int = 0  # tokenised examples kept
    prompt_truncated: int = 0  # rows whose prompt was shortened (either way below)
    prompt_turns_dropped: int = 0  # rows whose prompt lost whole earliest turns
    prompt_cut_inside: int = 0  # rows whose prompt's last user turn was cut inside (after its role header)
    response_truncated: int = 0  # rows with at least one response cut
    responses_truncated: int = 0  # responses cut (a pair counts each of its responses)
    dropped: Counter[str] = field(default_factory=Counter)
    drop_examples: dict[str, list[str]] = field(default_factory=dict)
    boundary_merges: int | None = None  # rows whose split differs from tokenising the whole (when checked)
    prompt_tokens: int = 0  # over kept examples, after truncation
    response_tokens: int = 0  # all responses (chosen + rejected for pairs)
    max_prompt_tokens: int = 0
    max_response_tokens: int = 0
    max_sequence_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # Counters come back as plain dicts below
        out["skipped"], out["dropped"] = dict(self.skipped), dict(self.dropped)
        return out

    def short(self) -> str:
        """One line: what was skipped and dropped."""
        parts = []
        if self.skipped:
            parts.append(
                f"{self.n_skipped} rows skipped ({', '.join(f'{n} {k}' for k, n in self.skipped.most_common())})"
            )
        if self.dropped:
            parts.append(f"{self.n_dropped} dropped ({', '.join(f'{n} {k}' for k, n in self.dropped.most_common())})")
        if self.n_truncated:
            parts.append(
                f"{self.prompt_truncated} prompts and {self.responses_truncated} responses (in "
                f"{self.response_truncated} rows) truncated"
            )
        return f"{self.name} ({self.path}): " + ("; ".join(parts) or "nothing skipped, dropped or truncated")

    @classmethod
    def from_parse(cls, name: str, stats: ParseStats) -> SplitReport:
        return cls(
            name=name,
            path=stats.source,
            format=stats.format,
            rows_read=stats.rows_read,
            parsed=stats.parsed,
            skipped=Counter(stats.skipped),
            skip_examples={k: list(v) for k, v in stats.examples.items()},
            records=stats.records,
            labels=dict(stats.labels),
            notes=[f"{n} × {note}" for note, n in stats.notes.items()],
        )

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def n_truncated(self) -> int:
        return self.prompt_truncated + self.response_truncated

    def summary(self) -> str:
        lines = [f"{self.name}: {self.path} (format {self.format})"]
        if self.rows_read:  # (an eval split held out from train has no rows of its own)
            lines.append(f"  rows: {self.rows_read} read, {self.parsed} parsed, {self.n_skipped} skipped")
        if self.labels:
            lines.append(
                f"  unpaired feedback: {self.labels.get('desirable', 0)} desirable, "
                f"{self.labels.get('undesirable', 0)} undesirable"
            )
        for reason, n in self.skipped.most_common():
            where = ", ".join(self.skip_examples.get(reason, []))
            lines.append(f"    {n} × {SKIP_REASONS.get(reason, reason)} [{reason}] (e.g. {where})")
        lines += [f"  note: {n}" for n in self.notes]
        if not self.tokenized:
            lines.append(f"  records: {self.records} (not tokenised)")
            return "\n".join(lines)
        lines.append(
            f"  examples: {self.examples} kept of {self.records}; truncated: {self.prompt_truncated} prompts "
            f"({self.prompt_turns_dropped} lost earliest turns, {self.prompt_cut_inside} cut inside their last user "
            f"turn), {self.responses_truncated} responses in {self.response_truncated} rows cut from the right; "
            f"{self.n_dropped} dropped"
        )
        for reason, n in self.dropped.most_common():
            where = ", ".join(self.drop_examples.get(reason, []))
            lines.append(f"    {n} × {DROP_REASONS.get(reason, reason)} [{reason}] (e.g. {where})")
        if self.boundary_merges:
            lines.append(
                f"  note: in {self.boundary_merges} rows the tokenizer would merge tokens across the prompt/response "
                "boundary; the prompt is tokenised alone (as at generation time), then the response"
            )
        if self.examples:
            lines.append(
                f"  tokens: prompt {self.prompt_tokens} (mean {self.prompt_tokens / self.examples:.1f}, max "
                f"{self.max_prompt_tokens}); response {self.response_tokens} (max {self.max_response_tokens}); "
                f"longest sequence {self.max_sequence_tokens}"
            )
        return "\n".join(lines)


@dataclass
class DataReport:
    """What reading, parsing and tokenising the data did, per split; ``summary()`` is for people."""

    kind: str
    template: str | None = None  # the renderer's name, None when not tokenised (validate_data)
    max_length: int | None = None
    max_prompt_length: int | None = None
    train: SplitReport | None = None
    eval: SplitReport | None = None

    @property
    def splits(self) -> list[SplitReport]:
        return [s for s in (self.train, self.eval) if s is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "template": self.template,
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
            "train": self.train.to_dict() if self.train else None,
            "eval": self.eval.to_dict() if self.eval else None,
        }

    def summary(self) -> str:
        head = f"data ({self.kind})"
        if self.template is not None:
            head += f": {self.template}, max_length {self.max_length}"
            if self.max_prompt_length is not None:
                head += f", max_prompt_length {self.max_prompt_length}"
        return "\n".join([head, *(s.summary() for s in self.splits)])


class DataSplits(NamedTuple):
    train: list[Tokenized]
    eval: list[Tokenized]
    report: DataReport


class ParsedSplit(NamedTuple):
    """One source read and parsed (records in the shape of the kind), not tokenised."""

    records: list[Record]
    report: SplitReport


class ParsedData(NamedTuple):
    """A config's data read and parsed (``parse_data``): records of each split and the untokenised report."""

    train: list[Record]
    eval: list[Record]
    report: DataReport
    seed: int  # of the eval_fraction hold-out
    strict: bool


def read_records(
    source: DataSource, *, strict: bool = False, kind: str | None = None
) -> tuple[list[Record], ParseStats]:
    """Read and parse one ``DataSource`` (no tokenizer). Raises :class:`DataError` on bad input."""
    rows = iter_rows(source.path, source.split, source.limit)
    return parse_rows(
        rows, source.format, source.columns, source=source.path, strict=strict, warn=False, kind=kind, tags=source.tags
    )


def as_kind(records: Sequence[Record], kind: str, report: SplitReport) -> list[Record]:
    """Records in the shape ``kind`` needs (see the module docstring); a mismatch is a :class:`DataError`."""
    if kind not in KINDS:
        raise DataError(f"unknown example kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "prompt":
        return [r if isinstance(r, PromptRecord) else PromptRecord(r.prompt, r.source, r.extra) for r in records]
    if kind == "unpaired":
        return as_unpaired(records, report.path, report.format, report.notes)
    if kind == "demonstration":
        records, report.undesirable_dropped = desirable_only(records, report.notes)
        if not records:
            raise DataError(f"{report.path}: no desirable rows (label true) to train a demonstration objective on")
    out: list[Record] = []
    converted = 0
    for r in records:
        if kind == "preference" and isinstance(r, UnpairedRecord):
            raise DataError(
                f"{report.path}: rows are unpaired feedback (one response and a label), but this run trains on "
                "preference pairs; use an unpaired objective (kto, bco, dil_*_unpaired) or a demonstration one"
            )
        if kind == "preference" and not isinstance(r, PreferenceRecord):
            raise DataError(
                f"{report.path}: rows in format {report.format!r} have no chosen/rejected pair, but this run trains "
                "on preferences (prompt, chosen, rejected); use a preference file or a demonstration objective"
            )
        if kind == "demonstration" and isinstance(r, PromptRecord):
            raise DataError(
                f"{report.path}: rows in format {report.format!r} have no response, but this run trains on "
                "demonstrations (prompt, response)"
            )
        if kind == "demonstration" and isinstance(r, PreferenceRecord):
            r = DemonstrationRecord(r.prompt, r.chosen, r.source, r.extra)
            converted += 1
        out.append(r)
    if converted:
        report.notes.append(f"{converted} preference rows used as demonstrations (their chosen responses)")
    return out


def _tokenize_split(
    records: Sequence[Record],
    kind: str,
    tokenizer: Any,
    renderer: Renderer,
    data_cfg: DataConfig,
    report: SplitReport,
    check_boundary: bool,
) -> list[Tokenized]:
    results = tokenize_records(
        records,
        kind,
        tokenizer,
        renderer,
        data_cfg.max_length,
        data_cfg.max_prompt_length,
        check_boundary=check_boundary,
    )
    report.tokenized = True
    report.boundary_merges = sum(n.boundary_merge for _, n in results) if check_boundary else None
    kept: list[Tokenized] = []
    for rec, (example, note) in zip(records, results, strict=True):
        if example is None:
            assert note.dropped is not None
            report.dropped[note.dropped] += 1
            seen = report.drop_examples.setdefault(note.dropped, [])
            if len(seen) < N_EXAMPLES:
                seen.append(f"{rec.source} ({note.prompt_tokens} prompt tokens)")
            continue
        kept.append(example)
        report.prompt_truncated += note.prompt_cut > 0
        report.prompt_turns_dropped += note.turns_dropped > 0
        report.prompt_cut_inside += note.cut_inside
        report.response_truncated += note.responses_cut > 0
        report.responses_truncated += note.responses_cut
        n_prompt = len(example.prompt_ids)
        responses = (
            [example.chosen_ids, example.rejected_ids]
            if isinstance(example, TokenizedPair)
            else [example.response_ids]
            if isinstance(example, (TokenizedDemo, TokenizedUnpaired))
            else [[]]
        )
        report.prompt_tokens += n_prompt
        report.response_tokens += sum(map(len, responses))
        report.max_prompt_tokens = max(report.max_prompt_tokens, n_prompt)
        report.max_response_tokens = max(report.max_response_tokens, *map(len, responses))
        report.max_sequence_tokens = max(report.max_sequence_tokens, n_prompt + max(map(len, responses)))
    report.examples = len(kept)
    if kind == "unpaired":
        assign_kl(kept, data_cfg.max_length)  # type: ignore[arg-type]
    if records and not kept:
        raise DataError(f"{report.path}: every row was dropped by truncation\n{report.summary()}")
    return kept


def parse_split(source: DataSource, kind: str, *, name: str = "train", strict: bool = False) -> ParsedSplit:
    """Read and parse one source for ``kind`` (no tokenizer); a :class:`DataError` on bad or unusable input."""
    records, stats = read_records(source, strict=strict, kind=kind)
    report = SplitReport.from_parse(name, stats)
    if not records:
        raise DataError(f"{source.path}: no usable rows, all {stats.rows_read} were skipped\n{report.summary()}")
    return ParsedSplit(as_kind(records, kind, report), report)


def load_split(
    source: DataSource,
    kind: str,
    tokenizer: Any,
    data_cfg: DataConfig,
    *,
    renderer: Renderer | None = None,
    strict: bool = False,
    check_boundary: bool = False,
    name: str = "train",
    parsed: ParsedSplit | None = None,
) -> tuple[list[Tokenized], SplitReport]:
    """Read, parse and tokenise one source: the examples kept and the :class:`SplitReport`. ``parsed`` (from
    :func:`parse_split` of the same source and kind) skips reading and parsing; it is left as it was."""
    renderer = renderer or Renderer(tokenizer, data_cfg.chat_template, data_cfg.system_prompt)
    if parsed is None:
        records, report = parse_split(source, kind, name=name, strict=strict)
    else:
        records, report = parsed.records, copy.deepcopy(parsed.report)
    return _tokenize_split(records, kind, tokenizer, renderer, data_cfg, report, check_boundary), report


def _hold_out(
    records: list[Record], report: SplitReport, fraction: float, seed: int
) -> tuple[list[Record], list[Record], SplitReport | None]:
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"data.eval_fraction must be in [0, 1), got {fraction}")
    n_eval = min(math.floor(fraction * len(records) + 1e-9), len(records) - 1)
    if n_eval <= 0:
        report.notes.append(
            f"eval_fraction {fraction} of {len(records)} rows is less than one row: nothing held out, no eval split "
            "(give data.eval, or more rows)"
        )
        return records, [], None
    held = set(random.Random(seed).sample(range(len(records)), n_eval))
    train = [r for i, r in enumerate(records) if i not in held]
    evals = [r for i, r in enumerate(records) if i in held]
    eval_report = SplitReport(name="eval", path=report.path, format=report.format, records=len(evals))
    eval_report.notes.append(f"{n_eval} rows held out from train (eval_fraction {fraction}, seed {seed})")
    report.records = len(train)
    report.notes.append(f"{n_eval} rows held out for eval (eval_fraction {fraction}, seed {seed})")
    return train, evals, eval_report


def parse_data(data_cfg: DataConfig, kind: str, *, seed: int = 0, strict: bool = False) -> ParsedData:
    """Read and parse the data of a config without a tokenizer (before any model loads), keeping the records:
    what :func:`validate_data` checks, for :func:`build_datasets` (``parsed=``) to tokenise."""
    if kind not in KINDS:
        raise DataError(f"unknown example kind {kind!r}; known: {', '.join(KINDS)}")
    if data_cfg.chat_template not in ("auto", "none"):
        load_template(data_cfg.chat_template)  # an unknown name or missing file fails here, not after loading
    train, train_report = parse_split(data_cfg.train, kind, name="train", strict=strict)
    evals: list[Record] = []
    eval_report: SplitReport | None = None
    if data_cfg.eval is not None:
        evals, eval_report = parse_split(data_cfg.eval, kind, name="eval", strict=strict)
        if data_cfg.eval_fraction:
            train_report.notes.append("eval_fraction ignored: data.eval is given")
    elif data_cfg.eval_fraction:
        train, evals, eval_report = _hold_out(train, train_report, data_cfg.eval_fraction, seed)
    report = DataReport(kind, None, data_cfg.max_length, data_cfg.max_prompt_length, train_report, eval_report)
    return ParsedData(train, evals, report, seed, strict)


def _log(report: DataReport) -> None:
    """One warning line per split that skipped or dropped rows (the full story is ``report.summary()``)."""
    for split in report.splits:
        if split.n_skipped or split.n_dropped:
            logger.warning("%s", split.short())


def build_datasets(
    data_cfg: DataConfig,
    tokenizer: Any,
    kind: str,
    *,
    seed: int = 0,
    strict: bool = False,
    check_boundary: bool = False,
    log: bool = True,
    parsed: ParsedData | None = None,
) -> DataSplits:
    """Train and eval examples for ``kind`` plus the :class:`DataReport`.

    Splits that skipped or dropped rows log one warning line each (``log=False`` leaves that to the caller).
    ``seed`` drives the ``eval_fraction`` hold-out (pass ``run.seed``); ``strict`` makes any skipped row an
    error; ``check_boundary`` counts the rows whose prompt/response split differs from tokenising the whole.
    ``parsed`` (:func:`parse_data` of the same config, kind, seed and strictness) skips reading and parsing;
    it is left as it was.
    """
    renderer = Renderer(tokenizer, data_cfg.chat_template, data_cfg.system_prompt)
    if parsed is None:
        parsed = parse_data(data_cfg, kind, seed=seed, strict=strict)
    elif (parsed.report.kind, parsed.seed, parsed.strict) != (kind, seed, strict):
        raise ValueError(
            f"build_datasets: parsed data of kind {parsed.report.kind!r}, seed {parsed.seed}, strict "
            f"{parsed.strict}, asked for kind {kind!r}, seed {seed}, strict {strict}"
        )
    train_recs, eval_recs = parsed.train, parsed.eval
    train_report, eval_report = copy.deepcopy(parsed.report.train), copy.deepcopy(parsed.report.eval)
    train = _tokenize_split(train_recs, kind, tokenizer, renderer, data_cfg, train_report, check_boundary)
    evals: list[Tokenized] = []
    if eval_report is not None:
        evals = _tokenize_split(eval_recs, kind, tokenizer, renderer, data_cfg, eval_report, check_boundary)
    report = DataReport(kind, renderer.name, data_cfg.max_length, data_cfg.max_prompt_length, train_report, eval_report)
    if log:
        _log(report)
    return DataSplits(train, evals, report)


def validate_data(
    data_cfg: DataConfig, kind: str, *, seed: int = 0, strict: bool = False, log: bool = False
) -> DataReport:
    """Read and parse the data of a config without a tokenizer (before any model loads).

    Raises :class:`DataError` with file, line and field on bad input; returns the :class:`DataReport`
    (rows read, parsed, skipped by reason, the eval hold-out).
    """
    report = parse_data(data_cfg, kind, seed=seed, strict=strict).report
    if log:
        _log(report)
    return report

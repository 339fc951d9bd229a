"""Sample designs: how a record becomes a fine-tuning sample, and how an output is parsed back and scored.

Sample Design Engineering (Guo et al., arXiv 2404.13033) shows that *how* fine-tuning samples
are written changes what a fine-tune reaches as much as which model is tuned, and that good
zero-shot prompts do not predict good sample designs. So in lensray a candidate is a (model,
design) pair, and probes rank designs with the same curves and early stopping as models. This
module is the design half:

- `SampleDesign`: the six options the study varies (`DESIGN_OPTIONS` lists their values);
  the defaults are its winning combination, ES-SDE. `PRESETS` names a few designs and
  `design_from_config` builds one from a preset name, a `SampleDesign.name`, or a dict.
- `TargetSchema`: the targets of a structured multi-target task (e.g. the aspects of a review),
  their labels (text and numeric forms), the placeholder word and the task instruction.
- `render` turns a structured record into a (prompt, response) sample under a design;
  `render_plain` does the same for plain prompt/response data (instruction and loss only).
- `parse_output` reads a generated response back into one label per target, and `score`
  measures accuracy, F1 and the rate of outputs that break the design's format;
  `score_plain` is exact match and token F1 for plain data. ``TaskScore.smoothed_error``
  (1 - accuracy, kept off 0) is what the scaling curves are fitted on.

A structured record is::

    {"text": "the food was tasty , the staff was rude .",
     "targets": {"food": "positive", "service": "negative"},     # mentioned targets only
     "evidence": {"food": "the food was tasty", "service": "the staff was rude"}}

Every rendered string is written for a word-level tokenizer that splits on spaces: each
punctuation mark is its own word (``{ "food" : "positive" }``, ``food : positive``, ``the food is
positive .``), lines are joined by `` \\n ``, and parsing accepts the same text with any spacing
(a decoder joins words with single spaces; one without a newline token drops the newlines, which
the parsers tolerate). Use it::

    from lensray.data.design import PRESETS, design_from_config, render, parse_output, score
    from lensray.zoo.build import ASPECT_SCHEMA, aspect_examples
    design = design_from_config({"preset": "es-sde", "output_format": "json"})
    sample = render(aspect_examples(1, seed=0)[0], design, ASPECT_SCHEMA)
    sample.prompt, sample.response, sample.loss_on_input
    parse_output(sample.response, design, ASPECT_SCHEMA).labels   # the record's targets back

Pure Python (no torch, no transformers): importing it is cheap.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

DESIGN_OPTIONS: dict[str, tuple[str, ...]] = {
    "instruction": ("none", "first", "last"),
    "input_loss": ("off", "on"),
    "output_format": ("sentence", "lines", "json"),
    "unmentioned": ("omit", "placeholder"),
    "labels": ("text", "numeric"),
    "reasoning": ("none", "cot_first", "answer_first"),
}
"""Every option of a sample design and its valid values (see `SampleDesign` for their meaning)."""

_SLUG: dict[str, dict[str, str]] = {
    "instruction": {"none": "inst-none", "first": "inst-first", "last": "inst-last"},
    "input_loss": {"off": "loss-off", "on": "loss-on"},
    "output_format": {"sentence": "sentence", "lines": "lines", "json": "json"},
    "unmentioned": {"omit": "omit", "placeholder": "ph"},
    "labels": {"text": "text", "numeric": "num"},
    "reasoning": {"none": "direct", "cot_first": "cot", "answer_first": "ans-cot"},
}
"""The word each option value contributes to `SampleDesign.name` (in DESIGN_OPTIONS order)."""

REASONING_MARKER = ("reasoning", ":")
"""Words that open the reasoning part of a reasoning design's response."""
ANSWER_MARKER = ("answer", ":")
"""Words that open the answer part of a reasoning design's response."""
NEWLINE = "\n"
"""Separator of lines (and of the reasoning and answer parts); written with a space each side."""
_RESERVED = {"the", "is", ":", ",", ".", ";", "{", "}", REASONING_MARKER[0], ANSWER_MARKER[0]}
_WORD = re.compile(r"^[A-Za-z0-9_+-]+$")


def _closest(value: object, valid: tuple[str, ...] | list[str]) -> str:
    match = difflib.get_close_matches(str(value), list(valid), n=1, cutoff=0.0)
    return f" (closest: {match[0]!r})" if match else ""


def _check_option(option: str, value: object) -> None:
    valid = DESIGN_OPTIONS[option]
    if value not in valid:
        raise ValueError(f"design.{option}={value!r}: use one of {list(valid)}{_closest(value, valid)}")


@dataclass(frozen=True)
class SampleDesign:
    """How a record is written as a fine-tuning sample; the defaults are ES-SDE."""

    instruction: str = "first"
    """Where the task instruction goes: `first` (before the input text), `last` (after it) or
    `none` (left out)."""
    input_loss: str = "off"
    """`off`: the loss covers the response only; `on`: it also covers the prompt (input) tokens."""
    output_format: str = "lines"
    """How the targets are written: `sentence` (``the food is positive , ...``), `lines`
    (``food : positive`` one per line) or `json` (``{ "food" : "positive" , ... }``)."""
    unmentioned: str = "placeholder"
    """Targets the input does not mention: `omit` (left out) or `placeholder` (written with the
    schema's placeholder word, e.g. ``price : none``)."""
    labels: str = "text"
    """`text` labels (positive/negative/neutral) or `numeric` ones (1/-1/0); the placeholder
    stays a word."""
    reasoning: str = "none"
    """`none`: the answer alone; `cot_first`: the evidence phrases, then the answer;
    `answer_first`: the answer, then the evidence phrases."""

    def __post_init__(self) -> None:
        if isinstance(self.input_loss, bool):  # YAML 1.1 reads a bare on/off as a boolean
            object.__setattr__(self, "input_loss", "on" if self.input_loss else "off")
        for option in DESIGN_OPTIONS:
            _check_option(option, getattr(self, option))

    @property
    def name(self) -> str:
        """The preset name when the design is a preset, else a stable slug of its options
        (e.g. ``inst-last.loss-on.json.omit.num.cot``); only ``[A-Za-z0-9._-]``, so it can
        name files and candidates, and `design_from_config` reads it back."""
        for preset, design in PRESETS.items():
            if design == self:
                return preset
        return ".".join(_SLUG[option][getattr(self, option)] for option in DESIGN_OPTIONS)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


PRESETS: dict[str, SampleDesign] = {
    "es-sde": SampleDesign(),
    "plain": SampleDesign(instruction="none"),
}
"""Named designs: `es-sde` is the study's integrated strategy (instruction first, no input loss,
lines, placeholders, text labels, no reasoning); `plain` is the design of plain prompt/response
data (the prompt as it is, loss on the response only)."""


def _design_from_slug(value: str) -> SampleDesign | None:
    """The design named `value` by `SampleDesign.name`; None when it has not that many parts."""
    parts = value.split(".")
    if len(parts) != len(DESIGN_OPTIONS):
        return None
    options = {}
    for option, part in zip(DESIGN_OPTIONS, parts):
        by_slug = {slug: v for v, slug in _SLUG[option].items()}
        if part not in by_slug:
            raise ValueError(
                f"design={value!r}: {part!r} names no {option} value; use one of "
                f"{list(by_slug)}{_closest(part, list(by_slug))}"
            )
        options[option] = by_slug[part]
    return SampleDesign(**options)


def design_from_config(value: str | dict[str, Any] | SampleDesign) -> SampleDesign:
    """A design from a config value: a preset name (``es-sde``), a `SampleDesign.name`
    (``inst-last.loss-on.json.omit.num.cot``), or a dict of options where missing ones take the
    defaults (ES-SDE) or, with a ``preset`` key, the preset's values.

    An unknown preset, option or value raises ValueError listing the valid ones and the closest.
    """
    if isinstance(value, SampleDesign):
        return value
    if isinstance(value, str):
        if value in PRESETS:
            return PRESETS[value]
        design = _design_from_slug(value)
        if design is None:
            raise ValueError(
                f"design={value!r}: use a preset {list(PRESETS)} or a design name such as "
                f"{SampleDesign(instruction='last').name!r}{_closest(value, list(PRESETS))}"
            )
        return design
    if not isinstance(value, dict):
        raise ValueError(f"design={value!r}: give a preset name or a dict of options {list(DESIGN_OPTIONS)}")
    options = dict(value)
    base = SampleDesign()
    if "preset" in options:
        preset = options.pop("preset")
        if preset not in PRESETS:
            raise ValueError(f"design.preset={preset!r}: use one of {list(PRESETS)}{_closest(preset, list(PRESETS))}")
        base = PRESETS[preset]
    for key in options:
        if key not in DESIGN_OPTIONS:
            valid = [*DESIGN_OPTIONS, "preset"]
            raise ValueError(f"design: unknown option {key!r}: use one of {valid}{_closest(key, valid)}")
    return SampleDesign(**{**base.to_dict(), **options})


@dataclass(frozen=True)
class TargetSchema:
    """The targets of a structured multi-target task and how their labels are written."""

    names: tuple[str, ...]
    """Target names, in the order they are written (e.g. the aspects food, service, price)."""
    labels: tuple[str, ...]
    """Text label values (e.g. positive, negative, neutral)."""
    numeric: tuple[str, ...]
    """Numeric rendering of each label, same order as `labels` (e.g. 1, -1, 0), as strings."""
    instruction: str
    """The task instruction, words separated by spaces (e.g. ``rate food , service and price :``)."""
    placeholder: str = "none"
    """Word written for an unmentioned target (designs with unmentioned=placeholder)."""

    def __post_init__(self) -> None:
        for attr in ("names", "labels", "numeric"):
            object.__setattr__(self, attr, tuple(str(v) for v in getattr(self, attr)))
        for attr in ("names", "labels", "numeric"):
            values = getattr(self, attr)
            if not values:
                raise ValueError(f"TargetSchema.{attr} is empty: give at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"TargetSchema.{attr}={list(values)}: values must be distinct")
        for attr, values in (("names", self.names), ("labels", self.labels), ("numeric", self.numeric),
                             ("placeholder", (self.placeholder,))):
            for v in values:
                if not _WORD.match(v) or v in _RESERVED:
                    raise ValueError(
                        f"TargetSchema.{attr}: {v!r} must be one word of letters, digits, _ + - "
                        f"and none of {sorted(_RESERVED)}, so it is one token and parses back"
                    )
        if len(self.numeric) != len(self.labels):
            raise ValueError(
                f"TargetSchema.numeric has {len(self.numeric)} values for {len(self.labels)} labels: "
                "give one numeric value per label, in the same order"
            )
        if set(self.labels) & set(self.numeric):
            raise ValueError(f"TargetSchema.numeric={list(self.numeric)} overlaps labels={list(self.labels)}: keep them apart")
        if self.placeholder in self.labels or self.placeholder in self.numeric:
            raise ValueError(f"TargetSchema.placeholder={self.placeholder!r} is also a label: choose another word")
        if not self.instruction.strip():
            raise ValueError("TargetSchema.instruction is empty: give the task instruction text")

    def values(self, design: SampleDesign) -> tuple[str, ...]:
        """The label words a response under `design` may contain (text or numeric)."""
        return self.numeric if design.labels == "numeric" else self.labels


@dataclass(frozen=True)
class RenderedSample:
    """One fine-tuning sample: the prompt, the response, and what the loss covers."""

    prompt: str
    """Model input: the record's text with the instruction placed by the design."""
    response: str
    """What the model learns to write (without the end token)."""
    loss_on_input: bool
    """True when the loss also covers the prompt tokens (design.input_loss=on)."""


@dataclass(frozen=True)
class ParsedOutput:
    """A generated response read back under a design."""

    labels: dict[str, str | None]
    """Text label per target name; None for unmentioned (placeholder or absent) targets, and for
    every target when the output is malformed."""
    ok: bool
    """False when the output does not follow the design's format."""


@dataclass(frozen=True)
class TaskScore:
    """Task metrics of generated outputs against gold records."""

    accuracy: float
    """Fraction of (record, target) pairs predicted right (unmentioned = None must be None)."""
    f1: float
    """Macro F1 over the text labels (plain data: mean token-level F1)."""
    format_error_rate: float
    """Fraction of outputs that do not follow the design's format (all their targets count wrong)."""
    n: int
    """Number of outputs scored."""
    units: int
    """Number of judgements the accuracy is over: (record, target) pairs, or `n` for plain data."""

    @property
    def error(self) -> float:
        """1 - accuracy."""
        return 1.0 - self.accuracy

    @property
    def smoothed_error(self) -> float:
        """(wrong + 1/2) / (units + 1): the error with half a mistake added (Jeffreys), never 0, so
        the scaling curve, fitted in log space, stays defined when every output is right; the
        quantity a probe reports and the selection ranks."""
        return (self.error * self.units + 0.5) / (self.units + 1)


def _place_instruction(text: str, instruction: str, design: SampleDesign) -> str:
    if design.instruction == "first":
        return f"{instruction} {text}"
    if design.instruction == "last":
        return f"{text} {instruction}"
    return text


def _json_value(word: str) -> str:
    """A label word as a JSON value: a bare number when the word is one, else a string."""
    try:
        loaded = json.loads(word)
    except ValueError:
        loaded = None
    if isinstance(loaded, (int, float)) and not isinstance(loaded, bool) and json.dumps(loaded) == word:
        return word
    return f'"{word}"'


def _render_answer(items: list[tuple[str, str]], design: SampleDesign, schema: TargetSchema) -> str:
    if design.output_format == "json":
        return "{ " + " , ".join(f'"{n}" : {_json_value(v)}' for n, v in items) + " }" if items else "{ }"
    if not items:  # lines and sentence: an empty answer is the placeholder word alone
        return schema.placeholder if design.output_format == "lines" else f"{schema.placeholder} ."
    if design.output_format == "lines":
        return f" {NEWLINE} ".join(f"{n} : {v}" for n, v in items)
    return " , ".join(f"the {n} is {v}" for n, v in items) + " ."


def _check_record(record: dict[str, Any], schema: TargetSchema) -> None:
    if not isinstance(record.get("text"), str):
        raise ValueError(f"record has no 'text' string: {record!r}")
    targets = record.get("targets", {})
    for name, label in targets.items():
        if name not in schema.names:
            raise ValueError(f"record target {name!r} is not in TargetSchema.names {list(schema.names)}")
        if label not in schema.labels:
            raise ValueError(f"record target {name}={label!r}: use one of TargetSchema.labels {list(schema.labels)}")


def render(record: dict[str, Any], design: SampleDesign, schema: TargetSchema) -> RenderedSample:
    """The (prompt, response) sample of a structured record under `design`.

    The response writes the targets in ``schema.names`` order (an answer with no target to write
    is the placeholder word alone, or ``{ }`` in JSON); reasoning designs add the record's
    evidence phrases (distinct, in target order, joined by `` ; ``; targets without one
    are left out of the reasoning), e.g. for cot_first with lines::

        reasoning : the food was tasty ; the staff was rude \\n answer : food : positive \\n ...

    Raises ValueError when the record has no text or names a target or label the schema lacks.
    """
    _check_record(record, schema)
    targets, evidence = record.get("targets", {}), record.get("evidence", {})
    values = dict(zip(schema.labels, schema.values(design)))
    items = []
    for name in schema.names:
        if name in targets:
            items.append((name, values[targets[name]]))
        elif design.unmentioned == "placeholder":
            items.append((name, schema.placeholder))
    answer = " ".join(ANSWER_MARKER) + " " + _render_answer(items, design, schema)
    phrases = list(dict.fromkeys(evidence[n] for n in schema.names if n in targets and evidence.get(n)))
    reasoning = " ".join([*REASONING_MARKER, " ; ".join(phrases)]).strip()
    if design.reasoning == "cot_first":
        response = f"{reasoning} {NEWLINE} {answer}"
    elif design.reasoning == "answer_first":
        response = f"{answer} {NEWLINE} {reasoning}"
    else:
        response = _render_answer(items, design, schema)
    return RenderedSample(
        prompt=_place_instruction(record["text"], schema.instruction, design),
        response=response,
        loss_on_input=design.input_loss == "on",
    )


def render_plain(prompt: str, response: str, design: SampleDesign, instruction: str = "") -> RenderedSample:
    """A plain prompt/response example under `design`: only `instruction` placement and
    `input_loss` apply. The output options (output_format, unmentioned, labels, reasoning)
    describe structured targets; a value other than the ES-SDE default raises ValueError naming
    the option, so a sweep over designs never runs two identical candidates under two names.
    """
    for option in ("output_format", "unmentioned", "labels", "reasoning"):
        value, default = getattr(design, option), getattr(PRESETS["es-sde"], option)
        if value != default:
            raise ValueError(
                f"design.{option}={value!r} does not apply to plain prompt/response data (only "
                f"instruction and input_loss do): leave it at {default!r}"
            )
    if design.instruction != "none" and not instruction.strip():
        raise ValueError(
            f"design.instruction={design.instruction!r} needs an instruction text for plain data: "
            "pass instruction=... or use instruction='none'"
        )
    return RenderedSample(
        prompt=_place_instruction(prompt, instruction, design),
        response=response,
        loss_on_input=design.input_loss == "on",
    )


class _Malformed(Exception):
    """The output breaks the design's format (caught inside parse_output, never escapes)."""


def _words(text: str) -> list[str]:
    """Words and newlines of a decoded text (any spacing)."""
    return re.findall(r"\n|[^\s]+", text)


def _find(words: list[str], marker: tuple[str, ...], start: int, last: bool = False) -> int:
    """Index of the first (or last) occurrence of `marker` in words[start:], else -1."""
    starts = range(start, len(words) - len(marker) + 1)
    for i in reversed(starts) if last else starts:
        if tuple(words[i : i + len(marker)]) == marker:
            return i
    return -1


class _Pairs(list):
    """A JSON object read as its (key, value) pairs, so repeated keys stay visible."""


def _parse_json(words: list[str]) -> list[tuple[str, str]]:
    try:
        pairs = json.loads(" ".join(words), object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        raise _Malformed from None
    if not isinstance(pairs, _Pairs):
        raise _Malformed
    items = []
    for name, value in pairs:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = json.dumps(value)
        if not isinstance(value, str):
            raise _Malformed
        items.append((name, value))
    return items


def _parse_lines(words: list[str], schema: TargetSchema) -> list[tuple[str, str]]:
    lines = [line.split() for line in " ".join(words).split(NEWLINE)]
    if lines == [[schema.placeholder]]:
        return []
    items = []
    for line in lines:
        # A decoder without a newline token joins the lines; each item is exactly 3 words.
        if not line or len(line) % 3:
            raise _Malformed
        for i in range(0, len(line), 3):
            name, colon, value = line[i : i + 3]
            if colon != ":":
                raise _Malformed
            items.append((name, value))
    return items


def _parse_sentence(words: list[str], schema: TargetSchema) -> list[tuple[str, str]]:
    words = [w for w in words if w != NEWLINE]
    if not words or words[-1] != ".":
        raise _Malformed
    words = words[:-1]
    if words == [schema.placeholder]:
        return []
    items = []
    clause: list[str] = []
    for w in [*words, ","]:
        if w != ",":
            clause.append(w)
            continue
        if len(clause) != 4 or clause[0] != "the" or clause[2] != "is":
            raise _Malformed
        items.append((clause[1], clause[3]))
        clause = []
    return items


def _answer_words(words: list[str], design: SampleDesign) -> list[str]:
    """The words of the answer part of a response (all of them for reasoning=none)."""
    if design.reasoning == "none":
        return words
    head = REASONING_MARKER if design.reasoning == "cot_first" else ANSWER_MARKER
    if tuple(words[: len(head)]) != head:
        raise _Malformed
    if design.reasoning == "cot_first":  # the last answer marker: the reasoning is free text
        start = _find(words, ANSWER_MARKER, len(REASONING_MARKER), last=True)
        if start < 0:
            raise _Malformed
        return words[start + len(ANSWER_MARKER) :]
    end = _find(words, REASONING_MARKER, len(ANSWER_MARKER))  # answer_first: the marker must follow
    if end < 0:
        raise _Malformed
    return words[len(ANSWER_MARKER) : end]


def parse_output(text: str, design: SampleDesign, schema: TargetSchema) -> ParsedOutput:
    """Read a generated response back into a text label per target; never raises.

    Numeric labels map back to text, placeholder and absent targets to None. ``ok`` is False
    (and every label None) when the output breaks the design's format: malformed JSON, a line or
    clause that is not ``name : label`` / ``the name is label``, an unknown or repeated target,
    a label outside the design's label words (the placeholder only where unmentioned=placeholder),
    a target left out under unmentioned=placeholder, or a missing reasoning/answer marker.
    Spacing is free: the words may be joined by any whitespace.
    """
    none: dict[str, str | None] = {name: None for name in schema.names}
    try:
        words = _answer_words(_words(str(text)), design)
        while words and words[0] == NEWLINE:
            words = words[1:]
        while words and words[-1] == NEWLINE:
            words = words[:-1]
        if design.output_format == "json":
            items = _parse_json(words)
        elif design.output_format == "lines":
            items = _parse_lines(words, schema)
        else:
            items = _parse_sentence(words, schema)
        to_text = dict(zip(schema.values(design), schema.labels))
        labels = dict(none)
        seen = set()
        for name, value in items:
            if name not in labels or name in seen:
                raise _Malformed
            seen.add(name)
            if value == schema.placeholder and design.unmentioned == "placeholder":
                continue
            if value not in to_text:
                raise _Malformed
            labels[name] = to_text[value]
        if design.unmentioned == "placeholder" and seen != set(schema.names):
            raise _Malformed
        return ParsedOutput(labels=labels, ok=True)
    except _Malformed:
        return ParsedOutput(labels=none, ok=False)


def score(outputs: list[str], records: list[dict[str, Any]], design: SampleDesign, schema: TargetSchema) -> TaskScore:
    """Accuracy, macro F1 and format error rate of `outputs` (generated responses) against the
    gold `records`, one output per record.

    Over the pairs (record r, target t) of every record and every schema name, with gold g(r, t)
    (None when unmentioned) and prediction p(r, t) (None when absent or placeholder; a malformed
    output's targets all count wrong)::

        accuracy = #{(r, t): p = g} / (n x |names|)
        F1_l     = 2 tp_l / (2 tp_l + fp_l + fn_l)    tp_l = #{p = l = g}, fp_l = #{p = l != g},
                                                      fn_l = #{g = l != p}
        f1       = mean of F1_l over the text labels l with 2 tp_l + fp_l + fn_l > 0
                   (1.0 when no label is gold or predicted anywhere)

    so None is the negative class of F1: a label predicted for an unmentioned target is a false
    positive. Raises ValueError when the lists differ in length or are empty.
    """
    if len(outputs) != len(records):
        raise ValueError(f"score: {len(outputs)} outputs for {len(records)} records; give one output per record")
    if not records:
        raise ValueError("score: no outputs to score")
    right = errors = 0
    counts = {label: [0, 0, 0] for label in schema.labels}  # tp, fp, fn
    for text, record in zip(outputs, records):
        parsed = parse_output(text, design, schema)
        errors += not parsed.ok
        gold_targets = record.get("targets", {})
        for name in schema.names:
            gold, pred = gold_targets.get(name), parsed.labels[name]
            hit = parsed.ok and pred == gold
            right += hit
            if hit and gold is not None:
                counts[gold][0] += 1
            if not hit and pred is not None:  # a malformed output predicts nothing (all None)
                counts[pred][1] += 1
            if not hit and gold is not None:
                counts[gold][2] += 1
    f1s = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in counts.values() if 2 * tp + fp + fn]
    n = len(records)
    return TaskScore(
        accuracy=right / (n * len(schema.names)),
        f1=sum(f1s) / len(f1s) if f1s else 1.0,
        format_error_rate=errors / n,
        n=n,
        units=n * len(schema.names),
    )


def _token_f1(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return float(pred == ref)
    common = sum(min(pred.count(w), ref.count(w)) for w in set(pred) & set(ref))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_plain(outputs: list[str], references: list[str]) -> TaskScore:
    """Plain data: accuracy = exact match after whitespace normalisation, f1 = mean token-level
    F1 (multiset overlap of words; two empty texts match), format_error_rate = 0.

    Raises ValueError when the lists differ in length or are empty.
    """
    if len(outputs) != len(references):
        raise ValueError(f"score_plain: {len(outputs)} outputs for {len(references)} references; give one each")
    if not references:
        raise ValueError("score_plain: no outputs to score")
    pairs = [(str(o).split(), str(r).split()) for o, r in zip(outputs, references)]
    n = len(pairs)
    return TaskScore(
        accuracy=sum(p == r for p, r in pairs) / n,
        f1=sum(_token_f1(p, r) for p, r in pairs) / n,
        format_error_rate=0.0,
        n=n,
        units=n,
    )

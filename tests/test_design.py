"""lensray.data.design: each design option's rendering, parse(render) round trips over every design,
parsing of decoded and malformed outputs and their scores, design config errors, plain data,
and the zoo's multi-aspect task (determinism, coverage, bounded vocabulary)."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys

import pytest
import yaml

from lensray.data.design import (
    DESIGN_OPTIONS,
    PRESETS,
    SampleDesign,
    TargetSchema,
    design_from_config,
    parse_output,
    render,
    render_plain,
    score,
    score_plain,
)
from lensray.zoo.build import ASPECT_SCHEMA, aspect_examples

S = ASPECT_SCHEMA
REC = {
    "text": "the soup was tasty , the staff was rude .",
    "targets": {"food": "positive", "service": "negative"},
    "evidence": {"food": "soup was tasty", "service": "staff was rude"},
}
TEXT = REC["text"]
INST = "rate food , service and price :"
ALL_DESIGNS = [SampleDesign(**dict(zip(DESIGN_OPTIONS, values))) for values in itertools.product(*DESIGN_OPTIONS.values())]


def gold(record: dict) -> dict:
    return {name: record["targets"].get(name) for name in S.names}


# --- rendering: one concrete sample per option value ---------------------------------------


@pytest.mark.parametrize(
    "options, prompt",
    [
        ({"instruction": "first"}, f"{INST} {TEXT}"),
        ({"instruction": "last"}, f"{TEXT} {INST}"),
        ({"instruction": "none"}, TEXT),
    ],
)
def test_instruction_placement(options, prompt):
    sample = render(REC, SampleDesign(**options), S)
    assert sample.prompt == prompt
    assert sample.response == "food : positive \n service : negative \n price : none"


@pytest.mark.parametrize("value, flag", [("off", False), ("on", True)])
def test_input_loss_flag(value, flag):
    assert render(REC, SampleDesign(input_loss=value), S).loss_on_input is flag
    assert render_plain("x y", "z", SampleDesign(input_loss=value, instruction="none")).loss_on_input is flag


@pytest.mark.parametrize(
    "options, response",
    [
        ({"output_format": "lines"}, "food : positive \n service : negative \n price : none"),
        ({"output_format": "json"}, '{ "food" : "positive" , "service" : "negative" , "price" : "none" }'),
        ({"output_format": "sentence"}, "the food is positive , the service is negative , the price is none ."),
        ({"unmentioned": "omit"}, "food : positive \n service : negative"),
        ({"unmentioned": "omit", "output_format": "json"}, '{ "food" : "positive" , "service" : "negative" }'),
        ({"unmentioned": "omit", "output_format": "sentence"}, "the food is positive , the service is negative ."),
        ({"labels": "numeric"}, "food : 1 \n service : -1 \n price : none"),
        ({"labels": "numeric", "output_format": "json"}, '{ "food" : 1 , "service" : -1 , "price" : "none" }'),
        ({"labels": "numeric", "output_format": "sentence", "unmentioned": "omit"}, "the food is 1 , the service is -1 ."),
        ({"reasoning": "cot_first"},
         "reasoning : soup was tasty ; staff was rude \n answer : food : positive \n service : negative \n price : none"),
        ({"reasoning": "answer_first"},
         "answer : food : positive \n service : negative \n price : none \n reasoning : soup was tasty ; staff was rude"),
        ({"reasoning": "cot_first", "output_format": "json", "labels": "numeric"},
         'reasoning : soup was tasty ; staff was rude \n answer : { "food" : 1 , "service" : -1 , "price" : "none" }'),
    ],
)
def test_output_options_render(options, response):
    sample = render(REC, SampleDesign(**options), S)
    assert sample.response == response
    assert parse_output(sample.response, SampleDesign(**options), S).labels == gold(REC)


def test_rendering_details():
    # JSON renderings load as JSON; a shared evidence phrase is written once; no target left.
    import json

    assert json.loads(render(REC, SampleDesign(output_format="json", labels="numeric"), S).response) == {
        "food": 1, "service": -1, "price": "none"}
    joint = {"text": "the soup and the staff were good .", "targets": {"food": "positive", "service": "positive"},
             "evidence": {"food": "soup and the staff were good", "service": "soup and the staff were good"}}
    assert render(joint, SampleDesign(reasoning="cot_first", unmentioned="omit"), S).response == (
        "reasoning : soup and the staff were good \n answer : food : positive \n service : positive")
    empty = {"text": "nice .", "targets": {}}
    design = SampleDesign(unmentioned="omit", reasoning="answer_first")
    for fmt, answer in (("lines", "none"), ("sentence", "none ."), ("json", "{ }")):
        d = SampleDesign(unmentioned="omit", output_format=fmt, reasoning="answer_first")
        out = render(empty, d, S).response
        assert out == f"answer : {answer} \n reasoning :"
        assert parse_output(out, d, S).labels == dict.fromkeys(S.names)
    with pytest.raises(ValueError, match="record target 'ambience'"):
        render({"text": "x", "targets": {"ambience": "positive"}}, design, S)
    with pytest.raises(ValueError, match=r"record target food='great': use one of TargetSchema.labels"):
        render({"text": "x", "targets": {"food": "great"}}, design, S)


# --- round trips ----------------------------------------------------------------------------


def test_round_trip_every_design():
    records = aspect_examples(40, seed=3) + [REC]
    assert len(ALL_DESIGNS) == 216
    for design in ALL_DESIGNS:
        for record in records:
            response = render(record, design, S).response
            for text in (
                response,
                " ".join(response.split(" ")),  # a word-level decode that keeps the newline token
                " ".join(response.split()),  # one that has no newline token
                "  " + response.replace(" ", "   ") + " \n",  # odd spacing
            ):
                parsed = parse_output(text, design, S)
                assert parsed.ok and parsed.labels == gold(record), (design.name, text)


def test_design_names_are_stable_unique_slugs():
    names = [d.name for d in ALL_DESIGNS]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    assert all(design_from_config(d.name) == d for d in ALL_DESIGNS)
    assert SampleDesign().name == "es-sde" and PRESETS["es-sde"] == SampleDesign()
    assert SampleDesign(instruction="none").name == "plain"
    assert SampleDesign("last", "on", "json", "omit", "numeric", "cot_first").name == "inst-last.loss-on.json.omit.num.cot"
    assert SampleDesign(reasoning="answer_first").name == "inst-first.loss-off.lines.ph.text.ans-cot"


# --- parsing decoded and malformed outputs, and their scores --------------------------------


@pytest.mark.parametrize(
    "options, text",
    [
        ({}, "food  :   positive\nservice : negative \n  price : none"),
        ({}, "price : none \n food : positive \n service : negative"),  # any order
        ({"output_format": "json"}, '{"food":"positive",   "service" : "negative" ,"price": "none"}'),
        ({"output_format": "json", "labels": "numeric"}, '{ "food" : "1" , "service" : -1 , "price" : "none" }'),
        ({"output_format": "sentence"}, "the food is positive ,  the service is negative , the price is none ."),
        ({"reasoning": "cot_first"}, "reasoning : whatever answer : it says \n answer : food : positive service : negative price : none"),
        ({"reasoning": "answer_first"}, "answer : food : positive \n service : negative \n price : none \n reasoning : soup was"),
    ],
)
def test_parse_decoded_text(options, text):
    parsed = parse_output(text, SampleDesign(**options), S)
    assert parsed.ok and parsed.labels == gold(REC)


@pytest.mark.parametrize(
    "options, text",
    [
        ({}, "food : positive \n service : negative"),  # placeholder design: price left out
        ({}, "food : positive \n service : negative \n price : none \n food : positive"),  # repeated
        ({}, "food : positive \n service : negative \n price : 0"),  # numeric label, text design
        ({}, "food - positive \n service : negative \n price : none"),
        ({"unmentioned": "omit"}, "food : positive \n service : negative \n price : none"),  # no placeholder
        ({"output_format": "json"}, '{ "food" : "positive" , "service" : "negative" , "price" : null }'),
        ({"output_format": "json"}, '{ "food" : { "x" : "positive" } , "service" : "negative" , "price" : "none" }'),
        ({"output_format": "sentence"}, "the food is positive , the service is negative , the price is none"),
        ({"output_format": "sentence"}, "the food was positive , the service is negative , the price is none ."),
        ({"reasoning": "cot_first"}, "soup was tasty \n answer : food : positive \n service : negative \n price : none"),
        ({"reasoning": "cot_first"}, "reasoning : soup was tasty ; staff was rude \n food : positive"),
        ({"reasoning": "answer_first"}, "answer : food : positive \n service : negative \n price : none"),
        ({"reasoning": "answer_first"}, "reasoning : x answer : food : positive \n service : negative \n price : none"),
        ({}, ""),
        ({}, None),
        ({"output_format": "json"}, "[" * 5000),
    ],
)
def test_parse_malformed(options, text):
    parsed = parse_output(text, SampleDesign(**options), S)
    assert not parsed.ok and parsed.labels == dict.fromkeys(S.names)


def test_score_lines_with_format_errors():
    records = [
        REC,
        {"text": "x", "targets": {"price": "neutral"}},
        {"text": "x", "targets": {"food": "negative"}},
        {"text": "x", "targets": {"service": "positive"}},
        {"text": "x", "targets": {"food": "neutral", "price": "positive"}},
        {"text": "x", "targets": {"food": "positive"}},
        {"text": "x", "targets": {"price": "negative"}},
        {"text": "x", "targets": {"food": "positive"}},
    ]
    outputs = [
        "food : positive \n service : negative \n price : none",  # 3 right
        "food : none \n service : none \n price : positive",  # 2 right, price positive for neutral
        "food : negative \n service : great \n price : none",  # unknown label
        "food : none \n waiter : positive \n price : none",  # unknown target
        "food : neutral \n serv",  # truncated
        "",  # empty
        "the the the : : ,",  # garbage
        "food : positive \n service : none",  # placeholder design, price missing
    ]
    result = score(outputs, records, PRESETS["es-sde"], S)
    assert result.n == 8
    assert result.format_error_rate == pytest.approx(6 / 8)
    assert result.accuracy == pytest.approx(5 / 24)
    assert result.error == pytest.approx(19 / 24)
    assert result.units == 24 and result.smoothed_error == pytest.approx((19 + 0.5) / 25)
    # positive: tp 1, fp 1, fn 4 -> 2/7; negative: tp 1, fn 2 -> 1/2; neutral: fn 2 -> 0.
    assert result.f1 == pytest.approx((2 / 7 + 1 / 2 + 0) / 3)


def test_score_json_numeric_omit():
    design = SampleDesign(output_format="json", labels="numeric", unmentioned="omit")
    outputs = [
        '{ "food" : 1 , "service" : -1 }',  # 3 right
        '{ "food" : 1 , "service" : -1 ',  # broken JSON (truncated)
        '{ "food" : "positive" }',  # text label in a numeric design
        '{ "food" : 1 , "food" : 1 }',  # repeated key
        "[ ]",  # not an object
        "{ }",  # well formed, says nothing: price right, food and service wrong
        '{ "food" : 1 } and more',  # trailing text
        '{ "price" : "none" }',  # placeholder in an omit design
    ]
    result = score(outputs, [REC] * len(outputs), design, S)
    assert (result.n, result.format_error_rate) == (8, 6 / 8)
    assert result.accuracy == pytest.approx(4 / 24)
    # positive and negative: tp 1, fn 7 each -> 2/9; neutral never gold nor predicted: left out.
    assert result.f1 == pytest.approx(2 / 9)


def test_score_perfect_and_errors():
    records = aspect_examples(30, seed=1)
    for design in (PRESETS["es-sde"], SampleDesign(output_format="sentence", reasoning="cot_first", unmentioned="omit")):
        result = score([render(r, design, S).response for r in records], records, design, S)
        assert (result.accuracy, result.f1, result.format_error_rate, result.error) == (1.0, 1.0, 0.0, 0.0)
        assert result.smoothed_error == pytest.approx(0.5 / 91)  # 90 judgements, all right: still > 0
    with pytest.raises(ValueError, match="2 outputs for 1 records"):
        score(["a", "b"], [REC], PRESETS["es-sde"], S)
    with pytest.raises(ValueError, match="no outputs"):
        score([], [], PRESETS["es-sde"], S)


def test_score_plain():
    result = score_plain(["a b  c", "a b", "", "x"], ["a b c", "a b c", "", "y"])
    assert (result.n, result.accuracy, result.format_error_rate) == (4, 0.5, 0.0)
    assert result.f1 == pytest.approx((1 + 0.8 + 1 + 0) / 4)  # "a b" vs "a b c": p 1, r 2/3 -> 0.8
    assert result.error == 0.5 and result.units == 4 and result.smoothed_error == pytest.approx(2.5 / 5)
    with pytest.raises(ValueError, match="give one each"):
        score_plain(["a"], [])


# --- configs --------------------------------------------------------------------------------


def test_design_from_config():
    assert design_from_config("es-sde") == SampleDesign()
    assert design_from_config({}) == SampleDesign()
    assert design_from_config({"preset": "plain", "input_loss": "on"}) == SampleDesign(instruction="none", input_loss="on")
    assert design_from_config({"output_format": "json", "labels": "numeric"}).name == "inst-first.loss-off.json.ph.num.direct"
    # YAML 1.1 reads a bare on/off as a boolean.
    assert design_from_config(yaml.safe_load("{input_loss: on}")).input_loss == "on"
    assert design_from_config(yaml.safe_load("{input_loss: off}")).input_loss == "off"
    design = SampleDesign(reasoning="cot_first")
    assert design_from_config(design) is design


@pytest.mark.parametrize(
    "value, message",
    [
        ({"output_format": "jsn"}, "design.output_format='jsn': use one of ['sentence', 'lines', 'json'] (closest: 'json')"),
        ({"reasoning": "cot"}, "design.reasoning='cot': use one of ['none', 'cot_first', 'answer_first'] (closest: 'cot_first')"),
        ({"outputformat": "json"}, "design: unknown option 'outputformat': use one of ['instruction', 'input_loss', "
                                   "'output_format', 'unmentioned', 'labels', 'reasoning', 'preset'] (closest: 'output_format')"),
        ({"preset": "es_sde"}, "design.preset='es_sde': use one of ['es-sde', 'plain'] (closest: 'es-sde')"),
        ("es_sde", "design='es_sde': use a preset ['es-sde', 'plain'] or a design name such as "
                   "'inst-last.loss-off.lines.ph.text.direct' (closest: 'es-sde')"),
        ("inst-first.loss-off.jsn.ph.text.direct", "design='inst-first.loss-off.jsn.ph.text.direct': 'jsn' names no "
                                                   "output_format value; use one of ['sentence', 'lines', 'json'] (closest: 'json')"),
        (3, "give a preset name or a dict of options"),
    ],
)
def test_design_config_errors(value, message):
    with pytest.raises(ValueError) as info:
        design_from_config(value)
    assert message in str(info.value)


def test_sample_design_validates():
    with pytest.raises(ValueError, match=r"design.labels='numbers': use one of \['text', 'numeric'\] \(closest: 'numeric'\)"):
        SampleDesign(labels="numbers")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"numeric": ("1", "-1")}, "TargetSchema.numeric has 2 values for 3 labels"),
        ({"placeholder": "neutral"}, "TargetSchema.placeholder='neutral' is also a label"),
        ({"names": ("food", "food")}, "TargetSchema.names=['food', 'food']: values must be distinct"),
        ({"names": ("food quality",)}, "TargetSchema.names: 'food quality' must be one word"),
        ({"names": ("answer",)}, "TargetSchema.names: 'answer' must be one word"),
        ({"labels": ()}, "TargetSchema.labels is empty"),
        ({"instruction": " "}, "TargetSchema.instruction is empty"),
        ({"numeric": ("positive", "2", "3")}, "overlaps labels"),
    ],
)
def test_target_schema_validates(kw, message):
    base = dict(names=S.names, labels=S.labels, numeric=S.numeric, instruction=S.instruction)
    with pytest.raises(ValueError) as info:
        TargetSchema(**{**base, **kw})
    assert message in str(info.value)


def test_target_schema_from_yaml_lists():
    schema = TargetSchema(names=["a"], labels=["yes", "no"], numeric=[1, 0], instruction="x")
    assert (schema.names, schema.numeric) == (("a",), ("1", "0"))


# --- plain data -----------------------------------------------------------------------------


def test_render_plain():
    plain = render_plain("translate : a b ->", "c d", PRESETS["plain"])
    assert (plain.prompt, plain.response, plain.loss_on_input) == ("translate : a b ->", "c d", False)
    assert render_plain("a b", "c", SampleDesign(), instruction="do it :").prompt == "do it : a b"
    last = render_plain("a b", "c", SampleDesign(instruction="last", input_loss="on"), instruction="do it :")
    assert (last.prompt, last.response, last.loss_on_input) == ("a b do it :", "c", True)
    with pytest.raises(ValueError, match="needs an instruction text"):
        render_plain("a b", "c", SampleDesign())
    with pytest.raises(ValueError, match=r"design.output_format='json' does not apply to plain .* leave it at 'lines'"):
        render_plain("a b", "c", SampleDesign(instruction="none", output_format="json"))
    with pytest.raises(ValueError, match=r"design.reasoning='cot_first' does not apply"):
        render_plain("a b", "c", SampleDesign(instruction="none", reasoning="cot_first"))


# --- the zoo's multi-aspect task ------------------------------------------------------------


def test_aspect_examples_deterministic_and_covering():
    records = aspect_examples(500, seed=0)
    assert records == aspect_examples(500, seed=0)
    assert records != aspect_examples(500, seed=1)
    assert aspect_examples(50, seed=0) == records[:50]
    for name in S.names:
        assert {r["targets"][name] for r in records if name in r["targets"]} == set(S.labels)
    counts = [len(r["targets"]) for r in records]
    assert min(counts) == 1 and max(counts) == 3 and counts.count(3) < len(records) / 2
    mentioned = sum(counts) / (len(records) * len(S.names))
    assert 0.55 < mentioned < 0.75  # 0.6 per aspect, raised by "at least one"
    for r in records:
        assert set(r["evidence"]) == set(r["targets"])
        assert all(phrase in r["text"] for phrase in r["evidence"].values())
        assert r["text"].endswith(" .") and "  " not in r["text"]
    texts = " ".join(r["text"] for r in records)
    assert " not " in texts and " were " in texts and " was not " in texts  # negations, joint clauses


def test_aspect_vocabulary_is_bounded():
    records = aspect_examples(500, seed=0)
    words, longest = set(), 0
    for design in ALL_DESIGNS:
        for r in records:
            sample = render(r, design, S)
            sample_words = sample.prompt.split(" ") + sample.response.split(" ")
            words.update(sample_words)
            longest = max(longest, len(sample_words))
    text_words = {w for r in records for w in r["text"].split()}
    print(f"aspect task: {len(text_words)} words in the reviews, {len(words)} over every design; "
          f"longest sample {longest} words")
    assert len(text_words) <= 45 and len(words) <= 70
    assert longest <= 60  # + <s> and </s> fits the zoo's 64-token context
    assert all(w and (w == "\n" or not any(c.isspace() for c in w)) for w in words)


def test_design_imports_stay_light():
    code = "import sys, lensray.data.design, lensray.zoo.build; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"

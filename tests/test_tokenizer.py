"""The trained tokenizer: exact round trip on any Unicode, special tokens, chat template, saving and loading."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_corpus
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llm_recipes.tokenizer.bpe import (
    DocumentEncoder,
    replace_lone_surrogates,
    round_vocab_size,
    save_tokenizer,
    tokenizer_sha256,
    train_bpe,
)

HARD_TEXTS = [
    "emoji 😀 👩‍👩‍👧‍👦 🇫🇷 👍🏽 ❤️",
    "CJK 日本語のテキスト、中文文本，한국어 텍스트",
    "control \x00\x01\x07\x1b[31m red \x7f \x85 \u2028 \u2029 \r\n\t\x0b\x0c end",
    "zero width \u200b\u200c\u200d, BOM \ufeff, soft hyphen \u00ad",
    "combining e\u0301 vs \u00e9, Hangul jamo \u1100\u1161, RTL \u05e9\u05dc\u05d5\u05dd \u202e reversed",
    "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∀x∈ℝ: x² ≥ 0, private use \ue000, noncharacter \uffff, max \U0010ffff",
    "   leading and trailing spaces   \n\n\n",
    "literal special tokens <|bos|> <|eos|> <|im_start|>user<|im_end|>",
    "",
]


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_round_trip_on_hard_texts(tiny_tokenizer, text):
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text
    # the pretraining encoder too: special-token strings become ordinary tokens, and still decode exactly
    (doc_ids,) = DocumentEncoder(tiny_tokenizer)([text])
    assert tiny_tokenizer.decode(doc_ids) == text
    assert not set(doc_ids) & set(tiny_tokenizer.all_special_ids)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=200))  # Cs: lone surrogates
@example(text="a\u0000b")
@example(text="\U0001F600" * 50)
def test_round_trip_is_exact_on_arbitrary_unicode(tiny_tokenizer, text):
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text
    (doc_ids,) = DocumentEncoder(tiny_tokenizer)([text])
    assert tiny_tokenizer.decode(doc_ids) == text


def test_no_unknown_tokens_byte_fallback_by_construction(tiny_tokenizer):
    # every byte is in the base alphabet, so nothing maps to an unknown token
    assert tiny_tokenizer.unk_token is None
    ids = tiny_tokenizer("\x00\uffff\U0010ffff", add_special_tokens=False)["input_ids"]
    assert len(ids) >= 3 and None not in ids


def test_lone_surrogates_are_replaced_in_our_paths(tiny_tokenizer):
    assert replace_lone_surrogates("a\ud800b") == "a\ufffdb"
    assert replace_lone_surrogates("\udfff") == "\ufffd"
    assert replace_lone_surrogates("\ud83d\ude00") == "\U0001F600"  # a valid pair written as two code points
    assert replace_lone_surrogates("plain") == "plain"
    (ids,) = DocumentEncoder(tiny_tokenizer)(["x\ud800y"])
    assert tiny_tokenizer.decode(ids) == "x\ufffdy"
    # training accepts them too (replaced, counted as documents)
    stats = {}
    train_bpe(tiny_corpus()[:5] + ["bad \udc80 text"], vocab_size=320, stats=stats)
    assert stats["documents"] == 6
    # the plain transformers call is the library's behaviour: it refuses such a str (documented in docs/tokenizer.md)
    with pytest.raises(TypeError):
        tiny_tokenizer("x\ud800y")


def test_special_tokens_and_layout(tiny_tokenizer):
    assert [tiny_tokenizer.convert_ids_to_tokens(i) for i in range(5)] == [
        "<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    assert (tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id) == (0, 1, 2)
    assert len(tiny_tokenizer) == 512 and round_vocab_size(500) == 512 and round_vocab_size(512) == 512
    assert tiny_tokenizer("hello")["input_ids"][0] == tiny_tokenizer.bos_token_id  # tokenizer(text) adds BOS
    assert tiny_tokenizer("hello")["input_ids"][-1] != tiny_tokenizer.eos_token_id
    # digits are split one by one
    digits = tiny_tokenizer("year 2024", add_special_tokens=False)["input_ids"]
    assert [tiny_tokenizer.decode([t]) for t in digits][-4:] == ["2", "0", "2", "4"]


MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is a list?"},
    {"role": "assistant", "content": "An ordered, mutable sequence."},
    {"role": "user", "content": "And a tuple? 日本 😀"},
    {"role": "assistant", "content": "An immutable one. 😀"},
]


def test_chat_template_renders_multi_turn(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<|bos|><|im_start|>system\nYou answer briefly.<|im_end|>\n"
        "<|im_start|>user\nWhat is a list?<|im_end|>\n"
        "<|im_start|>assistant\nAn ordered, mutable sequence.<|im_end|>\n"
        "<|im_start|>user\nAnd a tuple? 日本 😀<|im_end|>\n"
        "<|im_start|>assistant\nAn immutable one. 😀<|im_end|>\n")
    prompt = tiny_tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWhat is a list?<|im_end|>\n<|im_start|>assistant\n")
    ids = tiny_tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == tiny_tokenizer.bos_token_id and ids.count(tiny_tokenizer.bos_token_id) == 1
    assert tiny_tokenizer.decode(ids) == text


def test_chat_template_marks_exactly_the_assistant_spans(tiny_tokenizer):
    out = tiny_tokenizer.apply_chat_template(MESSAGES, tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    spans, start = [], None
    for i, m in enumerate(mask + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append(tiny_tokenizer.decode(ids[start:i]))
            start = None
    # each assistant reply with its closing <|im_end|> (the model learns to end its turn), nothing else
    assert spans == ["An ordered, mutable sequence.<|im_end|>", "An immutable one. 😀<|im_end|>"]
    unmasked = tiny_tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert "mutable" not in unmasked and "You answer briefly." in unmasked and "<|im_start|>assistant\n" in unmasked


def test_saved_tokenizer_loads_with_plain_transformers(tiny_tokenizer_dir):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = json.loads((tiny_tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_max_length"] == 256
    # transformers 4.57 fails on a list under "extra_special_tokens" (checked by hand in a separate venv:
    # this folder then loads, round-trips and masks assistant tokens identically in 4.57 and 5.24)
    assert "extra_special_tokens" not in config
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert (tiny_tokenizer_dir / "chat_template.jinja").is_file() or "chat_template" in config
    for loaded in (AutoTokenizer.from_pretrained(tiny_tokenizer_dir),
                   PreTrainedTokenizerFast.from_pretrained(tiny_tokenizer_dir)):
        assert loaded.is_fast and loaded.model_max_length == 256
        assert loaded.bos_token == "<|bos|>" and loaded.eos_token == "<|eos|>" and loaded.pad_token == "<|pad|>"
        assert loaded.all_special_tokens == ["<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
        assert loaded.decode(loaded.apply_chat_template(MESSAGES[:2]), skip_special_tokens=True).startswith("system\n")
        assert "{% generation %}" in loaded.chat_template or "{%- generation -%}" in loaded.chat_template
        assert loaded.decode(loaded("round trip 😀", add_special_tokens=False)["input_ids"]) == "round trip 😀"
    # the bare tokenizers library reads tokenizer.json too (what vLLM / TGI / llama.cpp converters read)
    raw = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    assert raw.get_vocab_size() == 512


def test_training_is_deterministic():
    texts = tiny_corpus()[:20]
    a, b = train_bpe(texts, vocab_size=384), train_bpe(texts, vocab_size=384)
    assert tokenizer_sha256(a) == tokenizer_sha256(b)


def test_vocab_smaller_than_bytes_plus_specials_is_an_error():
    with pytest.raises(ValueError, match="vocab_size 256 is too small.*256 byte tokens plus 5 special tokens = 261"):
        train_bpe(tiny_corpus()[:3], vocab_size=200)
    with pytest.raises(ValueError, match="too small"):
        train_bpe(tiny_corpus()[:3], vocab_size=0)


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="empty dataset"):
        train_bpe(["", None, ""], vocab_size=512)


def test_save_writes_loadable_folder(tmp_path):
    from transformers import AutoTokenizer

    tok = train_bpe(tiny_corpus()[:10], vocab_size=320, model_max_length=1024)
    save_tokenizer(tok, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.model_max_length == 1024 and len(loaded) == 320

"""The default corpus and the held-out split: what is shipped, and that the split is deterministic and disjoint."""

from __future__ import annotations

import re

import numpy as np
import pytest

from portable_rnn.app.corpus import BatchSchedule, default_corpus, split_text


def test_the_default_corpus_is_all_154_sonnets_without_gutenbergs_wrapper():
    text = default_corpus()
    numerals = re.findall(r"^([IVXLC]+)\n\n", text, flags=re.M)
    assert len(numerals) == 154 and numerals[0] == "I" and numerals[-1] == "CLIV"
    assert "Gutenberg" not in text and "*** " not in text  # the header and licence footer are not shipped
    assert len(text.encode("utf-8")) < 1 << 20
    assert text.endswith("Love's fire heats water, water cools not love.\n")
    assert not re.search(r"[ \t]\n", text)


def test_the_default_split_holds_out_whole_sonnets_at_the_tail():
    text = default_corpus()
    train, held_out = split_text(text, 0.1)
    assert train + held_out == text
    assert held_out.startswith("CXL\n\n") and train.endswith("\n\n")
    assert abs(len(held_out) - 0.1 * len(text)) < 0.01 * len(text)
    assert len(re.findall(r"^[IVXLC]+\n\n", held_out, flags=re.M)) == 15


def test_the_split_is_a_pure_function_of_text_and_fraction():
    text = default_corpus()
    for fraction in (0.05, 0.1, 0.3):
        assert split_text(text, fraction) == split_text(str(text), fraction)
    assert split_text(text, 0.0) == (text, "")


@pytest.mark.parametrize("text, fraction, expected", [
    ("a" * 100, 0.1, ("a" * 90, "a" * 10)),  # no line to cut at: the exact index
    ("one\ntwo\nthree\nfour", 0.3, ("one\ntwo\nthree\n", "four")),  # the next line start
    ("para one\n\npara two\nmore\n\nlast one", 0.5, ("para one\n\npara two\nmore\n\n", "last one")),
    ("x" * 50 + "\n\n" + "y" * 48, 0.5, ("x" * 50 + "\n\n", "y" * 48)),
    # A paragraph that starts too late (less than half the asked tail left) is passed over.
    ("x" * 80 + "y" * 17 + "\n\nz", 0.2, ("x" * 80, "y" * 17 + "\n\nz")),
])
def test_the_cut_moves_to_the_next_paragraph_or_line(text, fraction, expected):
    assert split_text(text, fraction) == expected


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_a_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        split_text("abc", fraction)


def test_no_training_window_reaches_the_held_out_text():
    train, _ = split_text(default_corpus(), 0.1)
    positions = np.arange(len(train))  # "tokens" that are their own positions in the text
    schedule = BatchSchedule(positions, batch=32, seq_len=64, seed=0)
    seen = [np.concatenate(schedule(step)[:2]) for step in range(3 * schedule.per_epoch)]  # three offsets
    assert 0 <= np.min(seen) and np.max(seen) < len(train)

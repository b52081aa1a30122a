"""The clean stage's cheap pre-checks change no output: PII patterns run only on texts holding what every match
of them holds, blank-line collapsing only on texts holding what it replaces."""

from __future__ import annotations

import random
import re

from llm_recipes.data import textops


def near_misses(seed: int, count: int) -> list[str]:
    """Texts full of what PII patterns match and almost match: IPs, versions, IPv6 and colons, phone numbers
    and digit runs with every separator, e-mails, spaces and tabs before newlines, blank-line runs."""
    rng = random.Random(seed)
    pieces = ["8.8.8.8", "192.168.0.1", "1.2.3", "3.11.4", "10.0.0.256", "1.2.3.4.5", "2001:db8::1", "2606:4700::1111",
              "fe80::1:2", "a:b", "e: x", "1::2", "dead:beef:cafe", "+1 (555) 123-4567", "555-123-4567",
              "+44 20 7946 0958", "030 1234 5678", "555.123.4567", "(030) 1234.5678", "12 345 678", "1234.5678",
              "123-456", "2024-01-02", "x@y.org",
              "me@example.com", "a.b@mail.co.uk", "word", "the", "é", "\t", " ", "\n", "\n\n\n", " \n", "\t\n", ".",
              "-", ":", "(", ")", "+", "0", "99", "255", "1e3"]
    texts = ["", "\n\n\n\n", " \n", "plain text without any of them"]
    for _ in range(count):
        texts.append("".join(rng.choice(pieces) + rng.choice(["", " ", "", ".", "-", "\n"])
                             for _ in range(rng.randint(1, 40))))
    return texts


def test_pii_scrubbing_with_hints_equals_every_pattern_everywhere(monkeypatch):
    texts = near_misses(1, 1500)
    ours = [textops.scrub_pii(t) for t in texts]
    always = re.compile("")  # matches every text: each pattern runs on every text
    for name in ("_IPV4_HINT", "_IPV6_HINT", "_PHONE_HINT"):
        monkeypatch.setattr(textops, name, always)
    everywhere = [textops.scrub_pii(t) for t in texts]
    assert ours == everywhere
    counts = [c for _, c in everywhere]
    assert all(sum(c[k] for c in counts) > 20 for k in ("email", "ip", "phone"))  # each kind was found


def test_collapse_blank_lines_equals_both_substitutions():
    for text in near_misses(2, 1500):
        expected = re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+\n", "\n", text)).strip()
        assert textops.collapse_blank_lines(text) == expected, repr(text[:60])

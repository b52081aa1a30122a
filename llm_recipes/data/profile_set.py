"""A generated corpus with known answers for the clean stage's default profiles: articles, books and
documentation that must be kept, and boilerplate pages that must be dropped, as a local `files` source and
python-docs deliver them (gather's columns; `location` carries the file type, as gather writes it).

Used by tests/test_clean_profiles.py and benchmarks/data/bench_profiles.py (keep rates per kind and profile).
"""

from __future__ import annotations

import random

from .neardup_set import prose

VOCABULARY = ("river valley delta harbour market village county council budget school teacher student doctor "
              "patient hospital winter summer harvest weather storm garden orchard library museum painting "
              "novel chapter letter journey road bridge railway station engine factory worker union election "
              "minister policy report survey result method sample measure error theory history century "
              "family mother father daughter brother friend neighbour kitchen window evening morning "
              "question answer reason purpose problem solution company customer product price").split()
KINDS = ("article", "book", "docs", "boilerplate")
GOOD = {"article": True, "book": True, "docs": True, "boilerplate": False}


def _paragraph(rng: random.Random, low: int = 50, high: int = 130) -> str:
    return prose(rng, rng.randint(low, high), VOCABULARY)


def article(rng: random.Random, i: int) -> tuple[str, str]:
    """A blog post or news article in markdown, plain text or HTML, in one of four shapes: an essay
    (headings, paragraphs, at times a quotation), a technical post (code with braces), a how-to (lists of
    short items), a short news brief."""
    title = f"{rng.choice(VOCABULARY).capitalize()} and the {rng.choice(VOCABULARY)}: notes number {i}"
    parts, shape = [f"# {title}", _paragraph(rng)], i % 4
    if shape == 3:  # a brief: one or two short paragraphs
        parts = [f"# {title}", _paragraph(rng, 25, 45)]
    for _ in range(rng.randint(2, 4) if shape != 3 else 0):
        parts.append(f"## {rng.choice(VOCABULARY).capitalize()} {rng.choice(VOCABULARY)}")
        parts.append(_paragraph(rng, 30, 90))
        if shape == 1:
            parts.append("```\nfn total(rows: &[Row]) -> u64 {\n    rows.iter().map(|r| r.price).sum()\n}\n```")
        if shape == 2:
            parts.append("\n".join(f"- {rng.randint(1, 500)} g {rng.choice(VOCABULARY)}"
                                   for _ in range(rng.randint(5, 9))))
            parts.append("\n".join(f"{k}. {prose(rng, rng.randint(5, 9), VOCABULARY)}" for k in range(1, 5)))
        if shape == 0 and rng.random() < 0.4:
            parts.append(f"> {prose(rng, 20, VOCABULARY)}")
    text = "\n\n".join(parts)
    kind = rng.choice(["md", "txt", "html"])
    if kind == "html":
        body = "".join(f"<h2>{p[3:]}</h2>" if p.startswith("## ") else f"<pre>{p[4:-4]}</pre>" if p.startswith("```")
                       else f"<p>{p}</p>" for p in parts[1:])
        text = (f"<html><head><title>{title}</title></head><body><nav><a href='/'>Home</a> | <a href='/blog'>Blog"
                f"</a></nav><article><h1>{title}</h1>{body}</article><footer>Copyright 2025</footer></body></html>")
    elif kind == "txt":
        text = text.replace("## ", "").replace("# ", "")
    return text, f"notes/article-{i}.{kind}"


def book(rng: random.Random, i: int) -> tuple[str, str]:
    """A book's text as gather extracts it from a PDF, EPUB or DOCX: a novel (chapters, long paragraphs,
    dialogue in short lines), a collection of verse, or a play (speakers' names on their own lines)."""
    parts, shape = [], i % 3
    for chapter in range(1, rng.randint(3, 5)):
        parts.append(f"CHAPTER {chapter}" if shape != 1 else f"{rng.choice(VOCABULARY).upper()}")
        for _ in range(rng.randint(4, 8)):
            if shape == 1:  # stanzas: short lines, punctuation at the end of the stanza only
                lines = [" ".join(prose(rng, 7, VOCABULARY).split()[:rng.randint(4, 7)]).rstrip(".")
                         for _ in range(4)]
                parts.append("\n".join(lines) + ".")
            elif shape == 2:
                speaker = rng.choice(["MARGARET", "THOMAS", "THE DOCTOR", "ANNE"])
                parts.append(f"{speaker}\n{prose(rng, rng.randint(8, 40), VOCABULARY)}")
            elif rng.random() < 0.3:
                parts.append("\n".join(f"\u201c{prose(rng, rng.randint(4, 10), VOCABULARY)[:-1]}?\u201d she asked."
                                       if k % 2 == 0 else f"\u201c{prose(rng, rng.randint(3, 8), VOCABULARY)}\u201d"
                                       for k in range(rng.randint(2, 6))))
            else:
                parts.append(_paragraph(rng, 80, 220))
    return "\n\n".join(parts), f"library/book-{i}.{rng.choice(['pdf', 'epub', 'docx'])}"


def docs(rng: random.Random, i: int) -> tuple[str, str]:
    """A numpy-style docstring: signature, summary, parameters, returns, an example."""
    name = f"{rng.choice(VOCABULARY)}_{rng.choice(VOCABULARY)}"
    params = "\n".join(f"{p} : {rng.choice(['int', 'str', 'float', 'array_like'])}\n    "
                       f"{prose(rng, rng.randint(8, 16), VOCABULARY)}"
                       for p in rng.sample(["axis", "dtype", "out", "keepdims", "where", "initial"], 3))
    text = (f"{name}(a, axis=None, dtype=None, out=None)\n\n{prose(rng, rng.randint(15, 40), VOCABULARY)}\n\n"
            f"Parameters\n----------\na : array_like\n    Input data.\n{params}\n\nReturns\n-------\n"
            f"result : ndarray\n    {prose(rng, 12, VOCABULARY)}\n\nExamples\n--------\n>>> {name}([1, 2, 3])\n6")
    return text, f"pkg.module.{name}"


def boilerplate(rng: random.Random, i: int) -> tuple[str, str]:
    """Pages with no prose to learn from: navigation, cookie walls, link lists, tag clouds, keyword spam,
    placeholder text, a login form."""
    words = lambda n: " ".join(rng.choice(VOCABULARY).capitalize() for _ in range(n))  # noqa: E731
    shape = i % 7
    if shape == 0:
        text = "\n".join(words(rng.randint(1, 3)) for _ in range(40))
    elif shape == 1:
        text = ("We use cookies to improve your experience.\nAccept all cookies\nCookie settings\n"
                "Read our privacy policy and terms of use.\n" + "\n".join(words(2) for _ in range(15)))
    elif shape == 2:
        text = "\n".join(f"{words(3)} | {words(2)} | {words(2)} | {words(1)}" for _ in range(25))
    elif shape == 3:
        text = "Tags: " + ", ".join(rng.choice(VOCABULARY) for _ in range(200))
    elif shape == 4:
        phrase = f"best {rng.choice(VOCABULARY)} {rng.choice(VOCABULARY)} cheap online"
        text = " ".join([phrase] * 60)
    elif shape == 5:
        text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 30
    else:
        text = ("Sign in\nUsername\nPassword\nForgot your password?\nCreate an account\nLog in\n"
                + "\n".join(words(2) for _ in range(12)))
    return text, f"notes/page-{i}.{rng.choice(['html', 'md', 'txt'])}"


MAKERS = {"article": article, "book": book, "docs": docs, "boilerplate": boilerplate}


def labelled_rows(per_kind: int = 40, seed: int = 0) -> list[dict]:
    """`per_kind` documents of each kind, as gather's rows plus `kind` (article, book, docs, boilerplate):
    docstrings come from a python-docs source, everything else from one local `files` source."""
    rng = random.Random(seed)
    rows = []
    for kind in KINDS:
        for i in range(per_kind):
            text, location = MAKERS[kind](rng, i)
            rows.append({"text": text, "id": f"{kind}-{i}", "source": "python-docs" if kind == "docs" else "files",
                         "location": location, "title": "", "license": "", "kind": kind})
    return rows

"""Instruction and preference data made offline from the python-docs corpus (the clean stage's output).

Every document is a piece of Python documentation with a qualified name as title (`os.path.join`,
`pydoc topic: for`). From it we make:

- instruction pairs: a question about the API or topic, in several phrasings, answered with its name
  and the start of its documentation (`messages`: user question, assistant answer);
- preference pairs: the same question with the right documentation as `chosen` and another item's
  documentation as `rejected` (any other item, or a sibling from the same module: a hard negative);
- KTO rows: the preference pairs unpaired into thumbs-up / thumbs-down completions.

The held-out split is by document title (a hash of it), so no held-out question is about an API
that the training questions cover, and the split never changes with the seed or row order.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any

from .data import DatasetFormatError, load_raw_dataset

TOPIC_PREFIX = "pydoc topic:"
API_QUESTIONS = (
    "What does `{name}` do in Python?",
    "Explain `{name}`.",
    "How do I use `{name}`?",
    "Describe the Python API `{name}`.",
    "What is `{name}` for?",
    "Can you document `{name}` for me?",
)
TOPIC_QUESTIONS = (
    "Explain {name} in Python.",
    "What does the Python documentation say about {name}?",
    "Tell me about {name} in Python.",
    "How does Python handle {name}?",
    "Describe {name} in the Python language.",
)
# "The "for" statement\n*******": the heading line of a pydoc topic, underlined with * = - or ~
HEADING = re.compile(r"^\s*(?P<title>[^\n]{3,120})\n[*=~\-]{3,}\s*\n", re.MULTILINE)


def _stable_int(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:12], 16)


def is_heldout(title: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out split: a hash of its title, not of the seed."""
    return (_stable_int("heldout:" + title) % 10_000) < fraction * 10_000


def subject(title: str, text: str) -> tuple[str, str, str]:
    """(kind, name used in questions, documentation body) of one document."""
    if title.startswith(TOPIC_PREFIX):
        name = title[len(TOPIC_PREFIX):].strip()
        match = HEADING.match(text)
        if match:
            heading = match.group("title").strip()
            # "The "for" statement" reads better than the topic key "for"
            name = heading[0].lower() + heading[1:] if heading[:4] == "The " else heading
            text = text[match.end():]
        else:
            name = f"the {name!r} topic"
        return "topic", name, text
    return "api", title.strip(), text


def answer_text(text: str, max_chars: int) -> str:
    """The start of a documentation text, cut at a paragraph or sentence end near max_chars."""
    text = re.sub(r"\n{3,}", "\n\n", text.strip())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    for sep in ("\n\n", ". ", ".\n"):
        pos = cut.rfind(sep)
        if pos >= max_chars // 3:
            return cut[: pos + (1 if sep != "\n\n" else 0)].strip()
    return cut.rsplit(" ", 1)[0].strip()


def lead_in(kind: str, name: str) -> str:
    """How an answer opens: by naming its subject, as documentation does ("`json.dumps`: Serialize ...").
    It ties each answer to its question, which the preference pairs then reward."""
    if kind == "api":
        return f"`{name}`: "
    return f"{name[0].upper() + name[1:]}: "


def load_corpus(path: str) -> list[dict[str, Any]]:
    """Reads the documents (text, title, ...) of a clean-stage folder, a parquet/jsonl file or a folder of them."""
    import datasets

    if not Path(path).exists():
        raise DatasetFormatError(f"corpus_path {path!r} does not exist (expected the clean stage's output folder "
                                 "with train/*.parquet, or a parquet/jsonl file with text and title columns)")
    loaded = load_raw_dataset(path)
    parts = [loaded[s] for s in loaded]
    corpus = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    missing = {"text", "title"} - set(corpus.column_names)
    if missing:
        raise DatasetFormatError(f"corpus {path!r} lacks columns {sorted(missing)} (has {corpus.column_names}); "
                                 "expected the clean stage's columns text, title, source, location")
    return [{"text": r["text"], "title": r["title"]} for r in corpus.select_columns(["text", "title"])]


def select_documents(records: list[dict[str, Any]], min_chars: int = 80, max_documents: int | None = None,
                     seed: int = 0) -> list[dict[str, Any]]:
    """One document per title (the longest), with enough text to answer from; a seeded sample if capped."""
    best: dict[str, dict[str, Any]] = {}
    for r in records:
        title, text = (r.get("title") or "").strip(), r.get("text") or ""
        if not title or len(text.strip()) < min_chars:
            continue
        if title not in best or len(text) > len(best[title]["text"]):
            best[title] = {"title": title, "text": text}
    docs = [best[t] for t in sorted(best)]
    if max_documents is not None and len(docs) > max_documents:
        docs = sorted(random.Random(seed).sample(docs, max_documents), key=lambda d: d["title"])
    return docs


def _parent(title: str) -> str:
    return title.rsplit(".", 1)[0] if "." in title and not title.startswith(TOPIC_PREFIX) else TOPIC_PREFIX


def build_python_docs_data(records: list[dict[str, Any]], kind: str = "qa", heldout_fraction: float = 0.1,
                           questions_per_document: int = 2, max_answer_chars: int = 400,
                           max_documents: int | None = None, seed: int = 0, negatives: str = "random"):
    """Builds instruction ("qa"), preference ("preferences") or KTO ("kto") rows from documentation records.

    Args:
        records: dicts with `text` and `title` (the clean stage's rows).
        kind: "qa" -> `messages` rows; "preferences" -> `prompt/chosen/rejected`; "kto" -> `prompt/completion/label`.
        heldout_fraction: share of documents (by title hash) whose questions are held out.
        questions_per_document: how many differently phrased questions each document yields.
        max_answer_chars: answers are the documentation's first paragraphs, cut near this length.
        max_documents: cap on documents used (a seeded sample), for quick runs.
        seed: seeds the question phrasings and the rejected documents.
        negatives: where rejected answers come from: "random" (any other document) or "sibling" (another
            member of the same module when there is one: a hard negative, harder for a small model to learn).

    Returns:
        (train, heldout): two lists of rows; each row also carries the document `title`.
    """
    if negatives not in ("random", "sibling"):
        raise ValueError(f"negatives must be 'random' or 'sibling', got {negatives!r}")
    if kind not in ("qa", "preferences", "kto"):
        raise ValueError(f"kind must be 'qa', 'preferences' or 'kto', got {kind!r}")
    docs = select_documents(records, max_documents=max_documents, seed=seed)
    if len(docs) < 2:
        raise DatasetFormatError(f"the python-docs corpus has {len(docs)} usable documents (titled, 80+ characters); "
                                 "need at least 2 to make question/answer pairs")
    prepared = []
    for d in docs:
        doc_kind, name, body = subject(d["title"], d["text"])
        answer = answer_text(body, max_answer_chars)
        if len(answer) >= 20:
            prepared.append({"title": d["title"], "kind": doc_kind, "name": name,
                             "answer": f"{lead_in(doc_kind, name)}{answer}",
                             "heldout": is_heldout(d["title"], heldout_fraction)})
    rows: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    pools = {False: [p for p in prepared if not p["heldout"]], True: [p for p in prepared if p["heldout"]]}
    for p in prepared:
        rng = random.Random(_stable_int(f"{seed}:{p['title']}"))
        templates = API_QUESTIONS if p["kind"] == "api" else TOPIC_QUESTIONS
        for template in rng.sample(templates, min(questions_per_document, len(templates))):
            question = template.format(name=p["name"])
            if kind == "qa":
                rows[p["heldout"]].append({"messages": [{"role": "user", "content": question},
                                                        {"role": "assistant", "content": p["answer"]}],
                                           "title": p["title"]})
                continue
            wrong = _pick_wrong(p, pools[p["heldout"]] or prepared, rng, negatives == "sibling")
            if wrong is None:
                continue
            prompt = [{"role": "user", "content": question}]
            chosen = [{"role": "assistant", "content": p["answer"]}]
            rejected = [{"role": "assistant", "content": wrong["answer"]}]
            if kind == "preferences":
                rows[p["heldout"]].append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                                           "title": p["title"]})
            else:
                rows[p["heldout"]].append({"prompt": prompt, "completion": chosen, "label": True, "title": p["title"]})
                rows[p["heldout"]].append({"prompt": prompt, "completion": rejected, "label": False,
                                           "title": p["title"]})
    return rows[False], rows[True]


def _pick_wrong(p: dict[str, Any], pool: list[dict[str, Any]], rng: random.Random,
                siblings_first: bool) -> dict[str, Any] | None:
    """Another document's answer; with siblings_first, one from the same module when there is one."""
    others = [q for q in pool if q["title"] != p["title"] and q["answer"] != p["answer"]]
    if not others:
        return None
    siblings = [q for q in others if _parent(q["title"]) == _parent(p["title"])] if siblings_first else []
    return rng.choice(siblings or others)

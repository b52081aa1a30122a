"""clean: each text operation and filter on crafted documents, near-dup precision/recall, the whole
pipeline (report counts add up, splits load), decontamination and resume after a crash."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from datatrove.data import Document

from llm_recipes.data import load_clean_splits, neardup_set, textops
from llm_recipes.data import steps as S
from llm_recipes.data.cleaning import CleanConfig, clean
from llm_recipes.data.documents import write_parquet_atomic

REPO = Path(__file__).resolve().parent.parent
WORDS = ("time year people way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue "
         "side kind head house service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office door health person "
         "art war history party result change morning reason research girl guy moment air teacher force "
         "education").split()


def prose(rng: random.Random, n_words: int) -> str:
    """Grammatical-looking English sentences over a shared vocabulary (passes the web quality filters)."""
    return neardup_set.prose(rng, n_words, WORDS)


def doc(text: str, source: str = "web", doc_id: str = "d") -> Document:
    return Document(text=text, id=doc_id, metadata={"source": source, "location": "", "title": "", "license": ""})


def write_input(folder: Path, shards: list[list[dict]]) -> Path:
    for i, rows in enumerate(shards):
        write_parquet_atomic(folder / "data" / f"{i:05d}.parquet", rows)
    return folder


def row(text: str, doc_id: str, source: str = "web") -> dict:
    return {"text": text, "id": doc_id, "source": source, "location": f"loc/{doc_id}", "title": doc_id, "license": ""}


def settings(tmp_path, **kw) -> CleanConfig:
    base = dict(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), num_workers=2, progress=False,
                compare_profiles_sample=0.0, validation_fraction=0.1)
    base.update(kw)
    return CleanConfig(**base)


# ------------------------------------------------------------------------------------------- text operations

def test_unicode_repair():
    assert textops.repair_unicode("cafÃ© crÃ¨me") == "café crème"
    assert textops.repair_unicode("zero\u200bwidth\x07bell") == "zerowidthbell"
    assert textops.repair_unicode("e\u0301") == "\u00e9"  # NFC


def test_markup_and_boilerplate():
    md = "# Title\n\nSome **bold** text and a [link](https://x.org/a) and ![img](a.png).\n\n---\n"
    assert textops.strip_markdown(md).strip() == "Title\n\nSome bold text and a link and img."
    rst = ("Join paths\n==========\n\nSee :func:`os.path.join` and :class:`~collections.OrderedDict`."
           "\n\n.. note:: Careful.")
    assert textops.strip_rest_roles(rst) == ("Join paths\n\nSee os.path.join and collections.OrderedDict."
                                             "\n\nNote: Careful.")
    text, n = textops.remove_boilerplate_lines("Skip to content\nWe use cookies to improve your experience.\n"
                                               "Real sentence here.\nShare on Twitter\nAll rights reserved.")
    assert text == "Real sentence here." and n == 4
    html = ("<html><body><nav>Home | About</nav><article><p>" + "Main text of the page is here. " * 10
            + "</p></article></body></html>")
    assert textops.looks_like_html(html) and "Main text" in textops.strip_html(html)


def test_pii_placeholders():
    text = ("Mail jane.doe@gmail.com or see user@example.com. Server 8.8.8.8 and 2001:4860:4860::8888 vs "
            "local 127.0.0.1, 192.168.1.10. Call +1 (555) 123-4567 or 030 1234 5678. Version 3.11.7, year 2024, "
            "id 1234567890, slice s[1::2] and fe80::1.")
    out, counts = textops.scrub_pii(text)
    assert "jane.doe@gmail.com" not in out and "<EMAIL>" in out and "user@example.com" in out
    assert "8.8.8.8" not in out and "<IP_ADDRESS>" in out and "127.0.0.1" in out and "192.168.1.10" in out
    assert "123-4567" not in out and "1234 5678" not in out and out.count("<PHONE>") == 2
    assert "3.11.7" in out and "2024" in out and "1234567890" in out
    assert "2001:4860" not in out and "s[1::2]" in out and "fe80::1" in out
    assert counts == {"email": 1, "ip": 2, "phone": 2}


# ------------------------------------------------------------------------------------------- filters

def quality(profile_map=None, overrides=None, sample=0.0):
    return S.ProfiledQuality(S.resolve_profiles(overrides), profile_map or dict(S.DEFAULT_PROFILE_FOR_SOURCE), sample)


def only(filter_name: str, **settings):
    """A profile with one filter switched on (web thresholds unless given), so each is tested alone."""
    web = S.PROFILES["web"][filter_name]
    return quality({"*": "t"}, {"t": {filter_name: {**web, **settings}}})


def test_each_web_filter_on_crafted_docs():
    rng = random.Random(0)
    good = prose(rng, 300)
    for name in S.FILTER_ORDER:
        assert not isinstance(only(name).process(doc(good)), str), name
    assert not isinstance(quality().process(doc(good)), str)  # and the whole web profile
    assert only("gopher_quality").process(doc("Too short to be a page.")) == "[t] gopher_quality: gopher_short_doc"
    symbols = " ".join(["#tag"] * 80 + ["the", "and"] * 10)
    assert only("gopher_quality").process(doc(symbols)).startswith("[t] gopher_quality")
    repeated = "\n".join(["Buy cheap watches online now at the best store."] * 40)
    assert only("gopher_repetition").process(doc(repeated)).startswith("[t] gopher_repetition")
    curly = good + "\n" + "function f() { return the value of the thing; }"
    assert only("c4").process(doc(curly)) == "[t] c4: curly_bracket"
    lorem = good + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."
    assert only("c4").process(doc(lorem)) == "[t] c4: lorem_ipsum"
    no_punct = "\n".join(f"{w} and the {v} of a thing that is" for w, v in zip(WORDS[:60], WORDS[60:120]))
    assert only("fineweb").process(doc(no_punct)) == "[t] fineweb: line_punct_ratio"
    # a filter's thresholds come from the profile: the same document passes with a looser one
    short = "Too short to be a real page, although the words in it are plain English."
    assert only("gopher_quality").process(doc(short)) == "[t] gopher_quality: gopher_short_doc"
    assert not isinstance(only("gopher_quality", min_doc_words=3).process(doc(short)), str)


def test_docs_profile_keeps_docstrings_the_web_profile_drops():
    docstring = ("Return a new path joining the given components.\n\nArgs:\n    a (str): first part.\n"
                 "    *p (str): more parts.\n\nReturns:\n    str: the joined path, e.g. ``join('a', 'b')``.")
    q = quality(sample=1.0)
    assert not isinstance(q.process(doc(docstring, source="python-docs")), str)
    assert isinstance(q.process(doc(docstring, source="web")), str)
    extra = q.tally.extra
    assert extra["profile docs: web would drop"] == 1 and extra["profile docs: sampled for web comparison"] == 1
    with pytest.raises(ValueError, match="unknown key"):
        S.resolve_profiles({"docs": {"gopher_qualty": {}}})
    with pytest.raises(ValueError, match="filter gopher_quality"):
        S.build_filters(S.resolve_profiles({"docs": {"gopher_quality": {"min_words": 3}}})["docs"])


# ------------------------------------------------------------------------------------------- whole pipeline

def test_near_dedup_precision_recall(tmp_path):
    """~10% of words changed must be found; distinct documents must be kept."""
    rng = random.Random(1)
    originals = [prose(rng, 250) for _ in range(60)]
    variants = []
    for text in originals[:30]:
        words = text.split()
        for i in rng.sample(range(len(words)), k=len(words) // 10):
            words[i] = rng.choice(WORDS)
        variants.append(" ".join(words))
    rows = [row(t, f"orig{i}") for i, t in enumerate(originals)] + [row(t, f"var{i}") for i, t in enumerate(variants)]
    rng.shuffle(rows)
    write_input(tmp_path / "in", [rows[:45], rows[45:]])  # pairs are split over shards: dedup is global
    report = clean(settings(tmp_path, quality_filters=False, pii=False))
    kept = {r["id"] for r in load_clean_splits(tmp_path / "out")["train"]} | \
           {r["id"] for r in load_clean_splits(tmp_path / "out")["validation"]}
    pairs_resolved = sum((f"orig{i}" in kept) + (f"var{i}" in kept) == 1 for i in range(30))
    distinct_kept = sum(f"orig{i}" in kept for i in range(30, 60))
    recall, precision_of_keeping = pairs_resolved / 30, distinct_kept / 30
    assert recall >= 0.9, recall
    assert precision_of_keeping == 1.0
    near = next(s for s in report["steps"] if s["step"] == "near dedup")
    assert sum(near["removed"].values()) == 90 - len(kept)


def test_full_pipeline_report_adds_up_and_splits_load(tmp_path):
    rng = random.Random(2)
    texts = [prose(rng, 200) for _ in range(40)]
    shard0 = [row(t, f"a{i}") for i, t in enumerate(texts[:20])]
    shard0.append(row(texts[25], "copy-of-b5"))  # exact duplicate of a document in the other shard
    shard0.append(row("tiny", "short"))  # dropped by the quality filters
    shard0.append(row("Contact me at bob.smith@mail.org. " + texts[30], "pii"))  # will be scrubbed
    shard1 = [row(t, f"b{i}") for i, t in enumerate(texts[20:])]
    shard1.append(row("cafÃ© " + prose(rng, 200), "mojibake"))
    shard1.append(row("<html><body><p>" + prose(rng, 200) + "</p></body></html>", "html"))
    write_input(tmp_path / "in", [shard0, shard1, []])
    (tmp_path / "in" / "gather_report.json").write_text(json.dumps({"skipped": {"binary file (NUL bytes)": 2}}))
    report = clean(settings(tmp_path))
    out = tmp_path / "out"
    assert report["count_problems"] == []
    steps = {s["step"]: s for s in report["steps"]}
    assert report["input_documents"] == 45
    assert steps["exact dedup"]["removed"] == {"exact duplicate": 1}
    assert any("gopher_short_doc" in r for r in steps["quality"]["removed"])
    assert steps["repair"]["extra"]["unicode repaired"] >= 1 and steps["repair"]["extra"]["html extracted"] == 1
    ds = load_clean_splits(out)
    assert ds["train"].num_rows + ds["validation"].num_rows == report["output_documents"]
    assert ds["train"].num_rows == report["train_documents"] and ds["validation"].num_rows > 0
    assert set(ds["train"].column_names) == {"text", "id", "source", "location", "title", "license"}
    texts_out = {r["id"]: r["text"] for split in ds.values() for r in split}
    assert "<EMAIL>" in texts_out["pii"] and "bob.smith" not in texts_out["pii"]
    assert texts_out["mojibake"].startswith("café")
    assert "short" not in texts_out
    assert "copy-of-b5" in texts_out and "b5" not in texts_out  # first occurrence (shard 0) wins
    assert report["gather"]["skipped"] == {"binary file (NUL bytes)": 2}
    assert (out / "report.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "exact duplicate" in md and "binary file" in md and not (out / "work").exists()
    # the split is by document id: the same id always lands in the same split
    val_ids = {r["id"] for r in ds["validation"]}
    again = S.SplitWriter(str(out), 0.1, 42, "", [])
    assert all(again.split_of(i) == "validation" for i in val_ids)


def test_decontamination(tmp_path):
    rng = random.Random(3)
    texts = [prose(rng, 200) for _ in range(10)]
    write_input(tmp_path / "in", [[row(t, f"d{i}") for i, t in enumerate(texts)]])
    words = texts[4].split()
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": "Q?", "answer": " ".join(words[50:70])}) + "\n")
    report = clean(settings(tmp_path, decontamination_files=[str(tmp_path / "eval.jsonl")], near_dedup=False,
                            quality_filters=False))
    decon = next(s for s in report["steps"] if s["step"] == "decontaminate")
    assert decon["removed"] == {"shares a 13-gram with an evaluation set": 1}
    assert decon["examples"][next(iter(decon["removed"]))][0]["id"] == "d4"
    with pytest.raises(ValueError, match="match no file"):
        clean(settings(tmp_path, decontamination_files=[str(tmp_path / "missing*.jsonl")],
                       output_dir=str(tmp_path / "o2")))


def test_language_filter(tmp_path):
    english = ("The function returns a new list that contains every item of the iterable in ascending order. "
               "It raises a ValueError when the items cannot be compared with each other.")
    german = ("Die Funktion gibt eine neue Liste zurück, die alle Elemente in aufsteigender Reihenfolge enthält. "
              "Sie löst einen Fehler aus, wenn sich die Elemente nicht miteinander vergleichen lassen.")
    french = ("La fonction renvoie une nouvelle liste qui contient tous les éléments dans l'ordre croissant. "
              "Elle lève une erreur lorsque les éléments ne peuvent pas être comparés entre eux.")
    step = S.LanguageFilter(["en"])
    kept = list(step.run([doc(english, doc_id="en"), doc(german, doc_id="de"), doc(french, doc_id="fr")]))
    assert [d.id for d in kept] == ["en"]
    assert kept[0].metadata["language"] == "en" and kept[0].metadata["language_score"] >= 0.65
    assert step.tally.removed == {"language de": 1, "language fr": 1}
    # through the pipeline: the step shows in the report, off by default
    write_input(tmp_path / "in", [[row(english, "a"), row(german, "b")]])
    report = clean(settings(tmp_path, languages=["en"], quality_filters=False, near_dedup=False))
    language = next(s for s in report["steps"] if s["step"] == "language")
    assert language["docs_in"] == 2 and language["docs_out"] == 1
    default = clean(settings(tmp_path, output_dir=str(tmp_path / "o2"), quality_filters=False, near_dedup=False))
    assert "language" not in [s["step"] for s in default["steps"]]


def test_interrupted_clean_resumes(tmp_path, monkeypatch):
    rng = random.Random(4)
    shards = [[row(prose(rng, 150), f"s{k}-{i}") for i in range(8)] for k in range(4)]
    shards[2][3]["text"] += " It ends with CRASH-HERE."
    write_input(tmp_path / "in", shards)
    real = textops.scrub_pii

    def failing(text):
        if "CRASH-HERE" in text:
            raise RuntimeError("simulated crash in one task")
        return real(text)

    monkeypatch.setattr(textops, "scrub_pii", failing)  # workers are forked, so they see the patch
    with pytest.raises(Exception):
        clean(settings(tmp_path, num_workers=1))
    work = tmp_path / "out" / "work"
    done = sorted(p.name for p in (work / "logs" / "final" / "completions").iterdir())
    assert done == ["00000", "00001"]  # tasks finished before the crash are recorded
    # the new splits are written under work/ and moved into place only when all of them are written
    finished = {p.name: p.stat().st_mtime_ns for p in (work / "splits" / "train").glob("0000[01]-*.parquet")}
    assert finished and not (tmp_path / "out" / "train").exists()
    monkeypatch.setattr(textops, "scrub_pii", real)
    report = clean(settings(tmp_path, num_workers=1))
    train = tmp_path / "out" / "train"
    assert all((train / name).stat().st_mtime_ns == m for name, m in finished.items())  # not redone
    assert report["output_documents"] == 32 and report["count_problems"] == []


def test_failed_rerun_keeps_the_previous_splits(tmp_path, monkeypatch):
    """A re-run that crashes half-way leaves the finished train/ and validation/ in place (the new ones are
    written beside them and swapped in at the end); the next successful run replaces them."""
    rng = random.Random(6)
    write_input(tmp_path / "in", [[row(prose(rng, 150), f"s{k}-{i}") for i in range(6)] for k in range(2)])
    first = clean(settings(tmp_path, num_workers=1))
    before = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").glob("*/*.parquet")}
    assert first["output_documents"] == 12 and before
    real = textops.scrub_pii

    def failing(text):
        raise RuntimeError("simulated crash in the final phase")

    monkeypatch.setattr(textops, "scrub_pii", failing)
    with pytest.raises(Exception):
        clean(settings(tmp_path, num_workers=1, seed=7))  # other settings: a new run, not a resume
    assert {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").glob("*/*.parquet")} == before
    monkeypatch.setattr(textops, "scrub_pii", real)
    second = clean(settings(tmp_path, num_workers=1, seed=7))
    assert second["output_documents"] == 12 and not (tmp_path / "out" / "work").exists()
    assert not list((tmp_path / "out").glob(".*"))


def test_cli_and_recipes(tmp_path):
    from llm_recipes.clean import CleanConfig, main
    from llm_recipes.config import parse_config

    for recipe in ("quickstart", "debug"):
        (cfg,) = parse_config([CleanConfig], ["--config", str(REPO / "recipes" / recipe / "clean.yaml")],
                              stage="clean")
        assert cfg.input_dir.endswith("/gather") and cfg.output_dir.endswith("/clean")
    rng = random.Random(5)
    write_input(tmp_path / "in", [[row(prose(rng, 120), f"x{i}") for i in range(6)]])
    out = tmp_path / "out"
    assert main(["--input_dir", str(tmp_path / "in"), "--output_dir", str(out), "--profiles",
                 "{web: {c4: false}}", "--validation_fraction", "0.2"]) == 0
    assert (out / "stage_complete.json").exists() and (out / "report.json").exists()
    from llm_recipes.cli import main as cli_main

    assert cli_main(["clean", "--input_dir", str(tmp_path / "nowhere"), "--output_dir", str(out)]) == 2


@pytest.mark.parametrize("stage", ["gather", "clean"])
def test_help_lists_every_key(stage, capsys):
    from llm_recipes.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main([stage, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--output_dir" in out and ("--minhash_ngram" in out or "--sources" in out)


def test_shard_reader_reads_rows_as_before(tmp_path):
    """The column-wise reader gives each row's values as the former dict-per-row reader did: missing columns and
    nulls as '', ids from the row or the shard and row number, metadata in column order, sizes in the tally."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 5000  # more than one read batch
    texts = [f"text {i} é" if i % 3 else f"text {i}" for i in range(rows)]
    ids = [None if i % 7 == 0 else f"id{i}" for i in range(rows)]
    sources = [None if i % 11 == 0 else "python-docs:json" for i in range(rows)]
    path = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"text": texts, "id": ids, "source": sources,
                             "title": [f"t{i}" for i in range(rows)]}), path)  # no location, no license
    reader = S.ShardReader([str(path)])
    docs = list(reader.run(rank=0))
    expected_bytes = 0
    for i, doc in enumerate(docs):
        assert doc.text == texts[i]
        assert doc.id == (ids[i] or f"shard/{i}")
        assert list(doc.metadata.items()) == [("source", sources[i] or ""), ("location", ""), ("title", f"t{i}"),
                                              ("license", "")]
        expected_bytes += len(texts[i].encode())
    assert len(docs) == rows
    tally = reader.tally.to_dict()
    assert (tally["docs_in"], tally["docs_out"]) == (rows, rows)
    assert tally["bytes_in"] == tally["bytes_out"] == expected_bytes

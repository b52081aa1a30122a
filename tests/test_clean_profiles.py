"""Default profiles for local files: `auto` picks books, articles or web by file type, and the clean stage
keeps generated articles, books and docstrings while it drops generated boilerplate pages
(llm_recipes/data/profile_set.py); forcing the web profile on the same files drops many of the articles
and books (why the defaults changed)."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
from test_clean import write_input

from llm_recipes.data import profile_set
from llm_recipes.data import steps as S
from llm_recipes.data.cleaning import CleanConfig, clean


def test_auto_profile_follows_the_file_type():
    mapping = S.DEFAULT_PROFILE_FOR_SOURCE
    assert S.profile_for("files", mapping, "/data/library/Moby Dick.epub") == "books"
    assert S.profile_for("books", mapping, "scan.PDF#3") == "books"  # split into paragraphs: path#i
    assert S.profile_for("files", mapping, "notes/post.md") == "articles"
    assert S.profile_for("files", mapping, "site/page.html#0") == "articles"
    assert S.profile_for("files", mapping, "https://example.test/page.html") == "web"  # a WARC record
    assert S.profile_for("files", mapping, "dump.jsonl:12") == "web"
    assert S.profile_for("python-docs", mapping, "numpy.sum") == "docs"
    assert S.profile_for("files", {"*": "web"}, "notes/post.md") == "web"  # a recipe's own mapping wins


def kept_by_kind(tmp_path, name: str, **settings) -> dict[str, float]:
    rows = profile_set.labelled_rows(per_kind=12, seed=1)
    kind = {r["id"]: r.pop("kind") for r in rows}
    write_input(tmp_path / name / "in", [rows[::2], rows[1::2]])
    clean(CleanConfig(input_dir=str(tmp_path / name / "in"), output_dir=str(tmp_path / name / "out"), num_workers=1,
                      progress=False, exact_dedup=False, near_dedup=False, pii=False, validation_fraction=0.0,
                      compare_profiles_sample=0.0, **settings))
    kept = Counter(kind[i] for f in (tmp_path / name / "out" / "train").glob("*.parquet")
                   for i in pq.read_table(f, columns=["id"]).column("id").to_pylist())
    return {k: kept[k] / 12 for k in profile_set.KINDS}


def test_defaults_keep_prose_of_every_kind_and_drop_boilerplate(tmp_path):
    rates = kept_by_kind(tmp_path, "auto")
    assert rates["article"] >= 0.9 and rates["book"] >= 0.9 and rates["docs"] >= 0.9, rates
    assert rates["boilerplate"] <= 0.1, rates
    web = kept_by_kind(tmp_path, "web", profile_for_source={"python-docs*": "docs", "*": "web"})
    assert web["article"] < rates["article"] and web["book"] < rates["book"], (web, rates)
    assert web["boilerplate"] <= 0.1


def test_profiles_met_decides_whether_the_driver_readies_spacy(tmp_path):
    # the driver loads spaCy (~1.3 CPU s) only when a document meets a profile that splits English with it:
    # its own profile, or `web` when the report's web comparison samples it
    rows = [{"text": f"Return the sum of x{i}.", "id": f"np.f{i}", "source": "python-docs", "location": f"np.f{i}"}
            for i in range(40)]
    write_input(tmp_path / "docs", [rows[:20], rows[20:]])
    files = sorted(str(p) for p in (tmp_path / "docs" / "data").glob("*.parquet"))
    profiles = S.resolve_profiles({})

    def met(sample, mapping=S.DEFAULT_PROFILE_FOR_SOURCE):
        return S.ProfiledQuality(profiles, dict(mapping), sample).profiles_met(files)

    assert met(0.0) == {"docs"}
    assert not S.needs_english_words({"docs": profiles["docs"]})
    assert met(1.0) == {"docs", "web"} and S.needs_english_words({"web": profiles["web"]})
    # `web` exactly when ProfiledQuality's own sample holds one of the documents
    for sample in (0.01, 0.1):
        sampled = [r["id"] for r in rows if S._sampled(r["id"], sample)]
        assert met(sample) == ({"docs", "web"} if sampled else {"docs"})
    assert met(0.0, {"*": "web"}) == {"web"}

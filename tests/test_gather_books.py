"""gather reads books: PDF (headers, footers, page numbers removed; hyphenation joined; reading order), EPUB
(spine order, navigation dropped), DOCX; title and author; encrypted, image-only and corrupt files skipped."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("pdfminer")
pytest.importorskip("docx")

from llm_recipes.data.gathering import gather  # noqa: E402


def read_docs(out: Path) -> list[dict]:
    return [row for f in sorted((out / "data").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


def gather_folder(folder: Path, out: Path) -> tuple[dict, dict]:
    report = gather([{"type": "files", "paths": [str(folder)]}], out, num_proc=1, progress=False)
    return report, {Path(d["location"]).name: d for d in read_docs(out)}


# ------------------------------------------------------------------------------------------- a tiny PDF writer

PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")  # PDF spec, Algorithm 2


def rc4(key: bytes, data: bytes) -> bytes:
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out, i, j = bytearray(), 0, 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def write_pdf(path: Path, pages: list[list[tuple[float, float, str]]], info: dict | None = None,
              image_only: bool = False, user_password: str | None = None) -> None:
    """A PDF whose pages draw (x, y, text) lines in Helvetica 11, in the order given (not necessarily the
    reading order). `user_password` encrypts it (standard security handler, RC4 40-bit, revision 2)."""
    objects: dict[int, bytes] = {1: b"<< /Type /Catalog /Pages 2 0 R >>", 3: b"<< /Type /Font /Subtype /Type1 "
                                 b"/BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"}
    streams: dict[int, bytes] = {}
    kids = []
    for n, lines in enumerate(pages):
        page_id, content_id = 10 + 2 * n, 11 + 2 * n
        kids.append(f"{page_id} 0 R")
        if image_only:  # one grey 8x8 picture and no text: a scanned page
            streams[content_id] = b"q 500 0 0 700 50 50 cm /Im1 Do Q"
            resources = "/XObject << /Im1 5 0 R >>"
        else:
            streams[content_id] = "\n".join(f"BT /F1 11 Tf {x} {y} Td {pdf_string(t)} Tj ET"
                                            for x, y, t in lines).encode("cp1252")
            resources = "/Font << /F1 3 0 R >>"
        objects[page_id] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << {resources} >> "
                            f"/Contents {content_id} 0 R >>").encode()
    streams[5] = bytes(range(64))
    objects[2] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>".encode()
    file_id = hashlib.md5(str(path).encode()).digest()
    trailer = f"/Root 1 0 R /ID [<{file_id.hex()}> <{file_id.hex()}>]"
    key = None
    if user_password is not None:
        pad = lambda pw: (pw.encode() + PAD)[:32]  # noqa: E731
        owner = rc4(hashlib.md5(pad("owner-secret")).digest()[:5], pad(user_password))  # Algorithm 3
        permissions = -4
        key = hashlib.md5(pad(user_password) + owner + permissions.to_bytes(4, "little", signed=True)
                          + file_id).digest()[:5]  # Algorithm 2
        objects[4] = (f"<< /Filter /Standard /V 1 /R 2 /O <{owner.hex()}> /U <{rc4(key, PAD).hex()}> "
                      f"/P {permissions} >>").encode()
        trailer += " /Encrypt 4 0 R"
    if info:  # (not with encryption: its strings would have to be encrypted too)
        objects[6] = ("<< " + " ".join(f"/{k} {pdf_string(v)}" for k, v in info.items()) + " >>").encode("cp1252")
        trailer += " /Info 6 0 R"
    for number, data in streams.items():
        if key:
            data = rc4(hashlib.md5(key + number.to_bytes(3, "little") + b"\0\0").digest()[:10], data)
        head = b"<< /Type /XObject /Subtype /Image /Width 8 /Height 8 /ColorSpace /DeviceGray /BitsPerComponent 8" \
            if number == 5 else b"<<"
        objects[number] = head + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"
    out, offsets = bytearray(b"%PDF-1.4\n"), {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    size = max(objects) + 1
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets[n] if n in offsets else b"0000000000 65535 f \n"
                    for n in range(1, size))
    out += f"trailer\n<< /Size {size} {trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))


def book_pages() -> list[list[tuple[float, float, str]]]:
    """Four pages with running headers (the author on right pages, the title on left ones), page numbers in
    the footer, words hyphenated across a line break and across a page break, a paragraph broken by a page
    end, and a chapter heading at the top of a page."""
    body = [
        [["Rivers carry water from the mountains to the sea, and along the way they shape",
          "the land with patient and unrelenting force. The process is called ero-",
          "sion, and it is the subject of this short book."],
         ["Some rivers are young and fast; others are old and slow, and they wander across",
          "wide valleys in loops that a well-known geographer compared to a snake, and"]],
        [["the loops move downstream as the outer banks wear away year after year."],
         ["Old rivers also leave lakes behind when a loop is cut off by a flood."]],
        [["CHAPTER TWO"],
         ["Deltas form where a river meets still water and drops the sediment it has carried",
          "for hundreds of miles. Erosion upstream is deposition downstream, and the well-"]],
        [["known deltas of the world grow by the same slow accumulation."],
         ["In the end every river returns its water to the sea."]],
    ]
    pages = []
    for n, paragraphs in enumerate(body):
        lines = [(72 if n % 2 else 520, 40, f"Page {n + 1}")]  # the footer is drawn first
        y = 700
        for paragraph in paragraphs:
            for text in paragraph:
                lines.append((72, y, text))
                y -= 14
            y -= 24
        lines.append((72, 750, "A SHORT BOOK OF RIVERS") if n % 2 else (400, 750, "Ada Lovelace"))
        pages.append(lines)
    # page 2 draws its second paragraph before its first: the file's order is not the reading order
    pages[1][1], pages[1][2] = pages[1][2], pages[1][1]
    return pages


def test_pdf_text_without_headers_footers_and_page_numbers(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_pdf(d / "rivers.pdf", book_pages(), info={"Title": "A Short Book of Rivers", "Author": "Ada Lovelace"})
    report, docs = gather_folder(d, tmp_path / "out")
    assert report["skipped"] == {}
    doc = docs["rivers.pdf"]
    text = doc["text"]
    assert doc["title"] == "A Short Book of Rivers — Ada Lovelace"
    assert "SHORT BOOK OF RIVERS" not in text and "Lovelace" not in text and "Page" not in text
    assert "erosion, and it is the subject" in text and "ero-" not in text  # hyphenated word joined
    assert "a well-known geographer" in text
    assert text.split("\n\n") == [
        "Rivers carry water from the mountains to the sea, and along the way they shape the land with patient and "
        "unrelenting force. The process is called erosion, and it is the subject of this short book.",
        # the paragraph broken by the page end is one paragraph
        "Some rivers are young and fast; others are old and slow, and they wander across wide valleys in loops that "
        "a well-known geographer compared to a snake, and the loops move downstream as the outer banks wear away "
        "year after year.",
        "Old rivers also leave lakes behind when a loop is cut off by a flood.",
        "CHAPTER TWO",  # a chapter heading at the top of a page is not a running header
        # hyphenated across a page break: "well-known" is a compound this book writes with its hyphen
        "Deltas form where a river meets still water and drops the sediment it has carried for hundreds of miles. "
        "Erosion upstream is deposition downstream, and the well-known deltas of the world grow by the same slow "
        "accumulation.",
        "In the end every river returns its water to the sea."]


def test_pdf_reading_order_columns_and_indented_paragraphs(tmp_path):
    """Two columns drawn line by line across the page (left, right, left, ...) read column after column;
    paragraphs set without space between them, only an indented first line, are still paragraphs."""
    from llm_recipes.data.books import read_pdf

    left = [(90, "The left column opens the article with its first"), (72, "paragraph, which runs over two lines."),
            (90, "A second paragraph starts indented and it"), (72, "ends here.")]
    right = [(340, "The right column comes after the left one in"), (340, "reading order, although the file draws it"),
             (340, "first on every line.")]
    lines = []
    for row in range(4):
        if row < len(right):
            lines.append((right[row][0], 700 - 14 * row, right[row][1]))
        lines.append((left[row][0], 700 - 14 * row, left[row][1]))
    write_pdf(tmp_path / "columns.pdf", [lines], info={"Title": "Microsoft Word - draft3.docx"})
    book = read_pdf(str(tmp_path / "columns.pdf"))
    assert book.text.split("\n\n") == [
        "The left column opens the article with its first paragraph, which runs over two lines.",
        "A second paragraph starts indented and it ends here.",
        "The right column comes after the left one in reading order, although the file draws it first on every line."]
    assert book.title == ""  # a converter's file name is not a title: gather uses the file's name


def test_pdf_metadata_from_xmp_and_bulleted_lines(tmp_path):
    from llm_recipes.data.books import _xmp_title_author, read_pdf

    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title><rdf:Alt>'
           b'<rdf:li xml:lang="x-default">Deltas</rdf:li></rdf:Alt></dc:title><dc:creator><rdf:Seq><rdf:li>A. Author'
           b'</rdf:li><rdf:li>B. Author</rdf:li></rdf:Seq></dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>')
    assert _xmp_title_author(xmp) == ("Deltas", "A. Author, B. Author")
    write_pdf(tmp_path / "list.pdf", [[(72, 700, "Three things shape a delta:"), (72, 686, "• the river's sediment,"),
                                       (72, 672, "• the tides,"), (72, 658, "• and the waves.")]])
    assert read_pdf(str(tmp_path / "list.pdf")).text.split("\n\n") == [
        "Three things shape a delta:", "• the river's sediment,", "• the tides,", "• and the waves."]


def test_pdf_lone_page_numbers_go_and_roman_chapter_headings_stay(tmp_path):
    from llm_recipes.data.books import read_pdf

    body = ["The fourth part begins with a storm that comes in from the west over the hills and",
            "the long low valley where the river runs, and nobody in the village is ready for it."]
    for number in ("7", "- 7 -", "xiv", "Page 7 of 9"):
        write_pdf(tmp_path / "one.pdf",
                  [[(300, 750, "IV"), (72, 700, body[0]), (72, 686, body[1]), (300, 40, number)]])
        assert read_pdf(str(tmp_path / "one.pdf")).text == "IV\n\n" + " ".join(body), number


def test_pdf_of_repeated_lines_keeps_them_and_damage_after_some_pages_keeps_those(tmp_path, monkeypatch):
    from pdfminer.pdfinterp import PDFPageInterpreter
    from pdfminer.pdfparser import PDFSyntaxError

    from llm_recipes.data.books import read_pdf

    path = tmp_path / "form.pdf"
    write_pdf(path, [[(72, 700, f"Entry {n}: the same form line on every page")] for n in range(5)])
    book = read_pdf(str(path))
    assert book.text.count("the same form line") == 5 and not book.note  # most of the text: content, not headers

    process_page = PDFPageInterpreter.process_page
    calls = []

    def damaged_from_page_3(self, page):
        calls.append(page)
        if len(calls) == 3:
            raise PDFSyntaxError("damaged content stream")
        return process_page(self, page)

    monkeypatch.setattr(PDFPageInterpreter, "process_page", damaged_from_page_3)
    report, docs = gather_folder(tmp_path, tmp_path / "out")
    assert docs["form.pdf"]["text"].count("the same form line") == 2
    assert report["notes"] == {"damaged PDF (the pages before the damage kept)": 1}


def test_bad_pdfs_are_skipped_with_reasons(tmp_path):
    from pdfminer.high_level import extract_text

    d = tmp_path / "in"
    d.mkdir()
    page = [[(72, 700, "A secret report about the quarterly numbers of the river company.")]]
    write_pdf(d / "locked.pdf", page, user_password="hunter2")
    assert "secret report" in extract_text(d / "locked.pdf", password="hunter2")  # a real encrypted PDF
    write_pdf(d / "owner_only.pdf", page, user_password="")  # opens without a password, as in a viewer
    write_pdf(d / "scanned.pdf", [[], []], image_only=True)
    (d / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pag")
    (d / "z.txt").write_text("A text file after the broken ones is still read by gather, as always.")
    report, docs = gather_folder(d, tmp_path / "out")
    assert set(docs) == {"owner_only.pdf", "z.txt"}
    assert "secret report" in docs["owner_only.pdf"]["text"] and docs["owner_only.pdf"]["title"] == "owner_only"
    assert report["skipped"] == {"encrypted PDF (password required)": 1, "PDF without a text layer (image-only?)": 1,
                                 "corrupt PDF": 1}
    examples = report["sources"][0]["skipped_examples"]
    assert examples["encrypted PDF (password required)"][0].startswith(str(d / "locked.pdf"))
    assert "2 pages, no text" in examples["PDF without a text layer (image-only?)"][0]


# ------------------------------------------------------------------------------------------- EPUB

CONTAINER = ('<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
             '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
             '</rootfiles></container>')


def xhtml(body: str) -> str:
    return (f'<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>x</title>'
            f'<style>p {{ margin: 0 }}</style></head><body>{body}</body></html>')


def write_epub(path: Path, encrypted: bool = False) -> None:
    """Chapters named a_, b_, c_ in the spine order c, a, b; an EPUB 3 nav and an EPUB 2 guide TOC page."""
    files = {
        "OEBPS/nav.xhtml": xhtml('<nav epub:type="toc"><ol><li><a href="c_first.xhtml">The First Chapter</a></li>'
                                 '</ol></nav>'),
        "OEBPS/contents.xhtml": xhtml("<h1>Contents</h1><p>The First Chapter ..... 1</p>"),
        "OEBPS/c_first.xhtml": xhtml("<h1>The First Chapter</h1><p>It began on a cold morning in the harbour.</p>"
                                     "<p>The ships were<br/>waiting.</p>"),
        "OEBPS/a_second.xhtml": xhtml("<h1>The Second Chapter</h1><div><p>By noon the fog had lifted.</p></div>"),
        "OEBPS/b_third.xhtml": xhtml("<h2>The Third Chapter</h2><p>Night fell, and the story ended.</p>"),
        "OEBPS/toc.ncx": "<ncx><navMap/></ncx>",
    }
    manifest = "".join(f'<item id="{Path(n).stem}" href="{Path(n).name}" media-type="application/xhtml+xml"'
                       + (' properties="nav"' if "nav" in n else "") + "/>" for n in files if n.endswith("xhtml"))
    files["OEBPS/content.opf"] = (
        '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">'
        '<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:identifier id="id">urn:x</dc:identifier>'
        '<dc:title>The Harbour</dc:title><dc:creator>Jane Doe</dc:creator><dc:creator>John Roe</dc:creator>'
        '<dc:language>en</dc:language></metadata>'
        f'<manifest>{manifest}<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/></manifest>'
        '<spine toc="ncx"><itemref idref="nav"/><itemref idref="contents"/><itemref idref="c_first"/>'
        '<itemref idref="a_second"/><itemref idref="b_third"/></spine>'
        '<guide><reference type="toc" title="Contents" href="contents.xhtml"/></guide></package>')
    if encrypted:
        files["META-INF/encryption.xml"] = (
            '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
            'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
            '<enc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>'
            '<enc:CipherData><enc:CipherReference URI="OEBPS/a_second.xhtml"/></enc:CipherData>'
            '</enc:EncryptedData></encryption>')
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        z.writestr("META-INF/container.xml", CONTAINER)
        for name, text in sorted(files.items()):
            z.writestr(name, text, compress_type=zipfile.ZIP_DEFLATED)


def test_epub_chapters_in_spine_order_without_navigation(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_epub(d / "harbour.epub")
    report, docs = gather_folder(d, tmp_path / "out")
    assert report["skipped"] == {}
    doc = docs["harbour.epub"]
    assert doc["title"] == "The Harbour — Jane Doe, John Roe"
    assert doc["text"] == ("The First Chapter\n\nIt began on a cold morning in the harbour."
                           "\n\nThe ships were\nwaiting."
                           "\n\nThe Second Chapter\n\nBy noon the fog had lifted."
                           "\n\nThe Third Chapter\n\nNight fell, and the story ended.")


def test_bad_epubs_are_skipped_with_reasons(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_epub(d / "drm.epub", encrypted=True)
    (d / "not_zip.epub").write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with zipfile.ZipFile(d / "no_container.epub", "w") as z:
        z.writestr("mimetype", "application/epub+zip")
    write_epub(d / "truncated.epub")
    data = (d / "truncated.epub").read_bytes()
    (d / "truncated.epub").write_bytes(data[: len(data) // 2])
    report, docs = gather_folder(d, tmp_path / "out")
    assert docs == {}
    assert report["skipped"] == {"encrypted EPUB (DRM)": 1, "corrupt EPUB": 3}
    examples = " ".join(report["sources"][0]["skipped_examples"]["corrupt EPUB"])
    assert "missing META-INF/container.xml" in examples and "not a zip archive" in examples


# ------------------------------------------------------------------------------------------- DOCX

def test_docx_paragraphs_headings_and_core_properties(tmp_path):
    import docx

    d = tmp_path / "in"
    d.mkdir()
    document = docx.Document()
    document.core_properties.title = "Field Notes"
    document.core_properties.author = "Mary Anning"
    document.add_heading("Field Notes", level=0)
    document.add_heading("Lyme Regis", level=1)
    document.add_paragraph("The cliffs give up their fossils after every winter storm.")
    table = document.add_table(rows=2, cols=2)
    for r, row in enumerate([("Find", "Year"), ("Ichthyosaur", "1811")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_paragraph("")
    document.add_paragraph("Most of them end up in London museums.")
    document.sections[0].header.paragraphs[0].text = "RUNNING HEADER"  # page headers are not body text
    document.save(d / "notes.docx")
    (d / "corrupt.docx").write_bytes(b"PK\x03\x04 broken")
    (d / "locked.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 500
                                    + "EncryptedPackage".encode("utf-16-le") + b"\0" * 100)
    report, docs = gather_folder(d, tmp_path / "out")
    assert set(docs) == {"notes.docx"}
    assert docs["notes.docx"]["title"] == "Field Notes — Mary Anning"
    assert docs["notes.docx"]["text"] == ("Field Notes\n\nLyme Regis\n\nThe cliffs give up their fossils after every "
                                          "winter storm.\n\nFind\tYear\n\nIchthyosaur\t1811\n\n"
                                          "Most of them end up in London museums.")
    assert report["skipped"] == {"corrupt DOCX": 1, "encrypted DOCX (password required)": 1}


def test_books_split_into_paragraphs_and_unsupported_types_named(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_epub(d / "harbour.epub")
    (d / "old.doc").write_bytes(b"\xd0\xcf\x11\xe0")
    report = gather([{"type": "files", "paths": [str(d)], "split_text": "paragraphs"}], tmp_path / "out",
                    num_proc=1, progress=False)
    docs = read_docs(tmp_path / "out")
    assert [x["id"].rsplit("#", 1)[1] for x in docs] == [str(i) for i in range(7)]
    assert {x["title"] for x in docs} == {"The Harbour — Jane Doe, John Roe"}
    assert report["skipped"] == {"unsupported file type": 1}
    assert ".pdf .epub .docx" in report["sources"][0]["skipped_examples"]["unsupported file type"][0]

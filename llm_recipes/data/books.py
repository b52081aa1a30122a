"""Books and articles as sources: the text of `.pdf`, `.epub` and `.docx` files, with title and author.

One document per file (a whole book), the form text files take too; `split_text: paragraphs` splits it.

- PDF (pdfminer.six): the text layer, in the reading order of pdfminer's layout analysis (top to bottom,
  columns one after the other), whatever order the file draws it in. Running headers and footers are
  removed: a line among the two top or two bottom lines of a page whose text, digits aside, is also at
  that edge of one of the two pages before or after it (two, for left/right pages with different
  headers); a bare page number ("12", "xiv", "Page 3 of 9", "- 4 -") as the outermost line goes too.
  A chapter heading at the top of a page stays (it does not recur on the neighbouring pages). Words
  hyphenated at a line end are joined ("exam-" + "ple" -> "example") unless the book itself writes the
  hyphenated form and never the joined one ("well-known"). Paragraphs are pdfminer's text boxes, split
  at indented first lines (books set paragraphs without space between them) and at bullets; one broken
  by a page end is joined. Ligatures (U+FB00-FB06) are spelled out.
- EPUB (zipfile + lxml): the chapters of the OPF spine, in spine order; the navigation document (EPUB 3
  `properties="nav"`), the NCX and a table of contents in the EPUB 2 guide are dropped.
- DOCX (python-docx): paragraphs and tables in document order, headings kept as their own paragraphs;
  page headers, footers and comments are not read.

Title and author come from the file (PDF info dictionary, else XMP; OPF `dc:title`/`dc:creator`; DOCX
core properties). The schema has no author column, so the `title` column holds "Title — Author"
(the file name stands in for a missing title).

A file that cannot give text raises `BookSkipped`, with a reason gather counts in its report:
encrypted PDFs that need a password, PDFs without a text layer (scanned pages), DRM-encrypted EPUBs,
password-protected DOCX, and corrupt files of each kind.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .documents import Skipped


@dataclass
class Book:
    text: str
    title: str = ""
    author: str = ""
    note: str = ""  # a caveat gather counts in its report, e.g. that only part of a damaged file was read


class BookSkipped(Exception):
    """The file gives no text; `reason` is the report's key, `detail` the example's explanation."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def book_title(book: Book, path: str) -> str:
    title = book.title.strip() or Path(path).stem
    return f"{title} — {book.author.strip()}" if book.author.strip() else title


def iter_book(spec, path: str, kind: str) -> Iterator[dict | Skipped]:
    """The documents of one book file for a `files` source (see sources.iter_files_source)."""
    from .sources import _doc, _split_text  # sources imports this module for its book files

    reader = {"pdf": read_pdf, "epub": read_epub, "docx": read_docx}[kind]
    try:
        book = reader(path)
    except BookSkipped as e:
        yield Skipped(e.reason, path, e.detail)
        return
    title = book_title(book, path)
    for i, part in enumerate(_split_text(book.text, spec.split_text)):
        yield _doc(part, f"{path}#{i}" if spec.split_text != "none" else path, spec, path, title, note=book.note)


# ----------------------------------------------------------------------------------------------- PDF

ENCRYPTED_PDF = "encrypted PDF (password required)"
NO_TEXT_PDF = "PDF without a text layer (image-only?)"
CORRUPT_PDF = "corrupt PDF"
DAMAGED_PDF = "damaged PDF (the pages before the damage kept)"

# The outermost line of a page that is only a page number: 12, - 12 -, (12), xiv, Page 3, 3 of 9, 3/9.
# Roman numerals in lower case only, up to xxxix (front matter): "IV" alone is more often a chapter heading.
PAGE_NUMBER = re.compile(r"^[-–—(\[]?\s*(?:(?i:page)\s+)?(?:\d+|x{0,3}(?:ix|iv|v?i{0,3}))"
                         r"\s*(?:(?:of|/)\s*\d+)?\s*[-–—)\]]?$")
JUNK_TITLE = re.compile(r"^(microsoft (word|powerpoint) - .*|untitled.*|.*\.(docx?|odt|rtf|pdf|tex|dvi|indd|qxd))$",
                        re.I)
LIGATURES = str.maketrans({"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
                           "\ufb05": "st", "\ufb06": "st"})
BULLETS = ("•", "◦", "▪", "‣", "●", "■")
HYPHENS = "-\u2010\u00ad"  # hyphen-minus, hyphen, soft hyphen
EDGE_LINES = 2  # lines at the top and at the bottom of a page that may be running headers/footers
NEIGHBOURS = 2  # pages before and after to compare with (2: left and right pages differ)


@dataclass
class _Line:
    text: str
    top: float  # PDF points from the page bottom; larger is higher
    bottom: float
    left: float = 0.0
    right: float = 0.0


def read_pdf(path: str) -> Book:
    from pdfminer.converter import PDFPageAggregator
    from pdfminer.layout import LAParams, LTTextContainer, LTTextLine
    from pdfminer.pdfdocument import PDFDocument, PDFEncryptionError, PDFPasswordIncorrect
    from pdfminer.pdfinterp import PDFPageInterpreter, PDFResourceManager
    from pdfminer.pdfpage import PDFPage
    from pdfminer.pdfparser import PDFParser
    from pdfminer.pdftypes import PDFException
    from pdfminer.psparser import PSException

    pages: list[list[list[_Line]]] = []  # page -> text boxes in reading order -> lines
    with open(path, "rb") as f:
        try:
            document = PDFDocument(PDFParser(f), password="")  # an empty user password opens like a viewer
        except PDFPasswordIncorrect:
            raise BookSkipped(ENCRYPTED_PDF) from None
        except PDFEncryptionError as e:
            raise BookSkipped(ENCRYPTED_PDF, f"unsupported encryption: {e}"[:200]) from None
        except (PDFException, PSException) as e:
            raise BookSkipped(CORRUPT_PDF, f"{type(e).__name__}: {e}"[:200]) from None
        try:
            title, author = _pdf_metadata(document)
        except (PDFException, PSException):  # a broken info dictionary only costs the metadata
            title = author = ""
        resources = PDFResourceManager(caching=True)
        device = PDFPageAggregator(resources, laparams=LAParams())
        interpreter = PDFPageInterpreter(resources, device)
        note = ""
        try:
            for page in PDFPage.create_pages(document):
                interpreter.process_page(page)
                boxes = []
                for element in device.get_result():  # pdfminer's layout order: the reading order
                    if isinstance(element, LTTextContainer):
                        lines = [_Line(line.get_text().strip(), line.y1, line.y0, line.x0, line.x1) for line in element
                                 if isinstance(line, LTTextLine) and line.get_text().strip()]
                        if lines:
                            boxes.append(lines)
                pages.append(boxes)
        except (PDFException, PSException) as e:
            if not pages:
                raise BookSkipped(CORRUPT_PDF, f"{type(e).__name__}: {e}"[:200]) from None
            note = DAMAGED_PDF
    raw = " ".join(line.text for boxes in pages for box in boxes for line in box)
    if not raw.strip():
        raise BookSkipped(NO_TEXT_PDF, f"{len(pages)} pages, no text")
    if raw.count("(cid:") * 8 > len(raw):  # glyphs without a Unicode mapping: the text is unreadable
        raise BookSkipped(NO_TEXT_PDF, "fonts without a Unicode mapping ((cid:N) glyphs)")
    _remove_running_lines(pages)
    return Book(_pdf_paragraphs(pages), title, author, note)


def _pdf_metadata(document) -> tuple[str, str]:
    from pdfminer.pdftypes import resolve1
    from pdfminer.utils import decode_text

    def text(value) -> str:
        value = resolve1(value)
        if isinstance(value, bytes):
            return decode_text(value).strip()
        return value.strip() if isinstance(value, str) else ""

    title = author = ""
    for info in document.info:  # one dictionary per trailer
        title = title or text(info.get("Title"))
        author = author or text(info.get("Author"))
    if JUNK_TITLE.match(title):  # what the converter named the file, not a title
        title = ""
    if not (title and author) and "Metadata" in document.catalog:
        try:
            xmp_title, xmp_author = _xmp_title_author(resolve1(document.catalog["Metadata"]).get_data())
            title, author = title or xmp_title, author or xmp_author
        except Exception:  # noqa: BLE001  (broken XMP only costs the metadata)
            pass
    return title, author


def _xmp_title_author(xmp: bytes) -> tuple[str, str]:
    from lxml import etree

    root = etree.fromstring(xmp, etree.XMLParser(recover=True, resolve_entities=False, no_network=True))
    if root is None:
        return "", ""

    def items(tag):  # <dc:title><rdf:Alt><rdf:li>..</rdf:li></rdf:Alt></dc:title>
        return [t.strip() for el in root.iter(DC + tag) for t in el.itertext() if t.strip()]

    titles = items("title")
    return (titles[0] if titles else ""), ", ".join(items("creator"))


def _edge_key(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\d+", "#", text.lower())).strip()


def _remove_running_lines(pages: list[list[list[_Line]]]) -> None:
    """Removes running headers/footers and page numbers in place (see the module docstring)."""
    tops, bottoms = [], []
    for boxes in pages:
        lines = [line for box in boxes for line in box]
        tops.append(sorted(lines, key=lambda line: -line.top)[:EDGE_LINES])
        bottoms.append(sorted(lines, key=lambda line: line.bottom)[:EDGE_LINES])
    running: set[int] = set()
    numbers: set[int] = set()
    for edges in (tops, bottoms):
        keys = [{_edge_key(line.text) for line in page} for page in edges]
        for i, page in enumerate(edges):
            near = set().union(*(keys[j] for j in range(max(0, i - NEIGHBOURS), min(len(pages), i + NEIGHBOURS + 1))
                                 if j != i))
            for rank, line in enumerate(page):
                if rank == 0 and PAGE_NUMBER.match(line.text):
                    numbers.add(id(line))
                elif _edge_key(line.text) in near:
                    running.add(id(line))
    # Lines that recur are most of the text only in a file that repeats itself (a form, one line per page):
    # then they are its content, not running headers.
    lines = {id(line): len(line.text) for boxes in pages for box in boxes for line in box}
    drop = numbers | running if sum(lines[i] for i in running) * 2 < sum(lines.values()) else numbers
    for boxes in pages:
        boxes[:] = [kept for box in boxes if (kept := [line for line in box if id(line) not in drop])]


def _pdf_paragraphs(pages: list[list[list[_Line]]]) -> str:
    """Text boxes become paragraphs; a paragraph that runs on to the next page is joined to its end."""
    words: set[str] = set()
    hyphenated: set[str] = set()
    for boxes in pages:
        for box in boxes:
            for line in box:
                words.update(w.lower() for w in re.findall(r"\w+", line.text))
                hyphenated.update(w.lower() for w in re.findall(r"\w+-\w+", line.text))
    paragraphs: list[str] = []
    for page_index, boxes in enumerate(pages):
        for box_index, box in enumerate(_split_indented(_rejoin_boxes(boxes))):
            text = box[0].text
            for line in box[1:]:
                text = _join_lines(text, line.text, words, hyphenated)
            continues = (box_index == 0 and page_index > 0 and paragraphs and text[:1].islower()
                         and not paragraphs[-1].endswith((".", "!", "?", ":", '"', "”", "’", ")")))
            if continues:  # the page broke a paragraph (or a word) in two
                paragraphs[-1] = _join_lines(paragraphs[-1], text, words, hyphenated)
            else:
                paragraphs.append(text)
    return "\n\n".join(p.replace("\u00ad", "").translate(LIGATURES) for p in paragraphs)


def _rejoin_boxes(boxes: list[list[_Line]]) -> list[list[_Line]]:
    """Puts back together the lines of a paragraph that pdfminer boxed apart: it keeps two lines in one box
    only when their left edges, right edges or centres align, so an indented first line of ragged-right
    text, or a short last line after it, becomes a box of its own (and may be ordered after the next
    column). A box joins the box whose last line is right above its first line, in the same column."""
    joined: list[list[_Line]] = []
    for box in boxes:
        first = box[0]
        for host in joined:
            last, em = host[-1], host[-1].top - host[-1].bottom
            left = min(line.left for line in host)
            if 0 <= last.bottom - first.top <= em / 2 and abs(first.left - left) <= 4 * em:
                host.extend(box)
                break
        else:
            joined.append(list(box))
    return joined


def _split_indented(boxes: list[list[_Line]]) -> list[list[_Line]]:
    """Splits a text box at indented first lines: books set paragraphs without space between them, so
    pdfminer puts a page of them in one box. A line starts a paragraph when it is indented (by more than half
    a line height) and the line before it is not, or ends short of the right edge of the lines that start
    where it starts (so the lines of an indented block quote stay together); a bulleted line starts one."""
    out = []
    for box in boxes:
        left = min(line.left for line in box)
        start = 0
        for k in range(1, len(box)):
            em, previous = box[k].top - box[k].bottom, box[k - 1]
            right = max(line.right for line in box if abs(line.left - previous.left) <= em / 2)
            indented, previous_indented = box[k].left > left + em / 2, previous.left > left + em / 2
            if (indented and (not previous_indented or previous.right < right - 2 * em)) \
                    or box[k].text.startswith(BULLETS):
                out.append(box[start:k])
                start = k
        out.append(box[start:])
    return out


def _join_lines(left: str, right: str, words: set[str], hyphenated: set[str]) -> str:
    end = re.search(r"(\w+)[" + HYPHENS + r"]$", left)
    start = re.match(r"\w+", right)
    if end and start and right[:1].islower():
        joined, compound = end.group(1) + start.group(0), end.group(1) + "-" + start.group(0)
        if left.endswith("\u00ad") or joined.lower() in words or compound.lower() not in hyphenated:
            return left[:-1] + right  # a word broken at the line end
        return left[:-1] + "-" + right  # a compound the book writes with its hyphen
    if (end and start) or left.endswith("—"):  # "anti-" + "American", "a dash—" + "then": no space
        return left + right
    return left + " " + right


# ----------------------------------------------------------------------------------------------- EPUB

CORRUPT_EPUB = "corrupt EPUB"
ENCRYPTED_EPUB = "encrypted EPUB (DRM)"
OPF = "{http://www.idpf.org/2007/opf}"
DC = "{http://purl.org/dc/elements/1.1/}"
FONT_OBFUSCATION = ("http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC")
XHTML_TYPES = ("application/xhtml+xml", "text/html", "application/x-dtbook+xml")
BLOCK_TAGS = {"p", "div", "section", "article", "aside", "blockquote", "pre", "li", "dt", "dd", "tr", "table",
              "h1", "h2", "h3", "h4", "h5", "h6", "header", "footer", "figcaption", "hr", "ul", "ol", "body"}


def read_epub(path: str) -> Book:
    import posixpath
    from urllib.parse import unquote

    from lxml import etree

    parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise BookSkipped(CORRUPT_EPUB, f"not a zip archive, or cut short ({e})"[:200]) from None
    with archive:
        names = set(archive.namelist())

        def xml(name: str):
            if name not in names:
                raise BookSkipped(CORRUPT_EPUB, f"missing {name}")
            try:
                root = etree.fromstring(archive.read(name), parser)
            except (zipfile.BadZipFile, OSError, EOFError, etree.XMLSyntaxError) as e:
                raise BookSkipped(CORRUPT_EPUB, f"{name}: {type(e).__name__}: {e}"[:200]) from None
            if root is None:
                raise BookSkipped(CORRUPT_EPUB, f"{name}: not XML")
            return root

        container = xml("META-INF/container.xml")
        rootfile = next((el.get("full-path") for el in container.iter() if el.tag.endswith("rootfile")), None)
        if not rootfile:
            raise BookSkipped(CORRUPT_EPUB, "META-INF/container.xml names no package (OPF) file")
        opf = xml(rootfile)
        base = posixpath.dirname(rootfile)
        manifest = {item.get("id"): item for item in opf.iter(OPF + "item")}

        def href(item) -> str:
            return posixpath.normpath(posixpath.join(base, unquote(item.get("href", ""))))

        # EPUB 3 nav (properties="nav"), the NCX and an EPUB 2 guide "toc" page are navigation, not text
        navigation = {href(item) for item in manifest.values()
                      if "nav" in (item.get("properties") or "").split()
                      or item.get("media-type") == "application/x-dtbncx+xml"}
        navigation |= {posixpath.normpath(posixpath.join(base, unquote(ref.get("href", "").split("#")[0])))
                       for ref in opf.iter(OPF + "reference") if ref.get("type") == "toc"}
        encrypted = _epub_encrypted(xml("META-INF/encryption.xml")) if "META-INF/encryption.xml" in names else set()
        chapters = []
        for itemref in opf.iter(OPF + "itemref"):
            item = manifest.get(itemref.get("idref"))
            if item is None or item.get("media-type") not in XHTML_TYPES or href(item) in navigation:
                continue
            name = href(item)
            if name in encrypted:
                raise BookSkipped(ENCRYPTED_EPUB, f"{name} is encrypted")
            if name not in names:
                raise BookSkipped(CORRUPT_EPUB, f"spine item {name} is missing")
            try:
                chapters.append(_xhtml_text(archive.read(name)))
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise BookSkipped(CORRUPT_EPUB, f"{name}: {type(e).__name__}: {e}"[:200]) from None
        titles = [el.text.strip() for el in opf.iter(DC + "title") if el.text and el.text.strip()]
        authors = [el.text.strip() for el in opf.iter(DC + "creator") if el.text and el.text.strip()]
    return Book("\n\n".join(c for c in chapters if c), titles[0] if titles else "", ", ".join(authors))


def _epub_encrypted(root) -> set[str]:
    """Files encrypted by DRM (font obfuscation, which every reader undoes, does not count)."""
    encrypted = set()
    for data in root.iter("{http://www.w3.org/2001/04/xmlenc#}EncryptedData"):
        method = next((el.get("Algorithm", "") for el in data.iter() if el.tag.endswith("EncryptionMethod")), "")
        uri = next((el.get("URI", "") for el in data.iter() if el.tag.endswith("CipherReference")), "")
        if uri and method not in FONT_OBFUSCATION:
            encrypted.add(uri)
    return encrypted


def _xhtml_text(data: bytes) -> str:
    """The text of one XHTML chapter: block elements become paragraphs, <br> a line break."""
    import lxml.html

    try:
        root = lxml.html.document_fromstring(data)
    except Exception:  # noqa: BLE001  (lxml raises ParserError on an empty document)
        return ""
    for bad in root.xpath("//script|//style|//head"):
        bad.drop_tree()
    blocks: list[str] = []
    current: list[str] = []

    def flush():
        text = re.sub(r"[ \t\r\f\v]*\n[ \t\r\f\v]*", "\n", re.sub(r"[ \t\r\n\f\v]+", " ", "".join(current))
                      .replace("\x00", "\n")).strip()
        if text:
            blocks.append(text)
        current.clear()

    def walk(el):
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag in BLOCK_TAGS:
            flush()
        elif tag == "br":
            current.append("\x00")  # a line break that survives whitespace collapsing
        if el.text and tag:
            current.append(el.text)
        for child in el:
            walk(child)
            if child.tail:
                current.append(child.tail)
        if tag in BLOCK_TAGS:
            flush()

    walk(root)
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------------------------- DOCX

CORRUPT_DOCX = "corrupt DOCX"
ENCRYPTED_DOCX = "encrypted DOCX (password required)"
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # Compound File: password-protected Office files, old .doc


def read_docx(path: str) -> Book:
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from lxml import etree

    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith(OLE_MAGIC):
        if "EncryptedPackage".encode("utf-16-le") in head:
            raise BookSkipped(ENCRYPTED_DOCX)
        raise BookSkipped(CORRUPT_DOCX, "an OLE compound file (a legacy .doc?), not a DOCX zip package")
    try:
        document = docx.Document(path)
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError,
            etree.XMLSyntaxError) as e:
        raise BookSkipped(CORRUPT_DOCX, f"{type(e).__name__}: {e}"[:200]) from None
    paragraphs = []
    for block in document.iter_inner_content():  # paragraphs and tables in document order
        if isinstance(block, Table):
            for row in block.rows:
                cells: list[str] = []
                for cell in row.cells:  # a merged cell is repeated once per grid column it spans
                    if not cells or cell.text.strip() != cells[-1]:
                        cells.append(cell.text.strip())
                if any(cells):
                    paragraphs.append("\t".join(cells))
        elif block.text.strip():
            paragraphs.append(block.text.strip())  # headings included, as their own paragraphs
    core = document.core_properties
    return Book("\n\n".join(paragraphs), core.title or "", core.author or "")

"""Pure text operations of the clean stage: unicode repair, markup and boilerplate removal, PII
placeholders, n-gram hashes for decontamination. Each is a plain function of a string, tested on
crafted inputs; `steps.py` wraps them as datatrove pipeline steps.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata

from .sources import html_to_text

# ------------------------------------------------------------------------------------------------ unicode

def repair_unicode(text: str) -> str:
    """Fixes mojibake (`cafÃ©` -> `café`), HTML entities left in plain text, and normalizes to NFC.

    ftfy's `fix_text` with its defaults also un-curls quotes; we keep them, since a tokenizer should
    see the characters writers use.
    """
    # Plain ASCII holds no mojibake, ligature, wide character or non-NFC sequence: without HTML entities,
    # carriage returns or terminal escapes, ftfy would only remove the control characters removed here.
    # ftfy fixes a text line by line, each line on its own but for one state: it decodes HTML entities up
    # to the first line holding a "<" and no further. So the lines before that one are fixed as ftfy
    # would (entities decoded), the rest with entity decoding off, and in both only the runs of lines ftfy
    # may change go through it: ftfy runs at ~2.5 MB/s, and web text has a curly quote or a dash on a
    # minority of its lines.
    if text.isascii() and not _ASCII_FTFY_WORK.search(text):  # the commonest case, at >100 MB/s
        return _CONTROL.sub("", text)
    first_tag_line = text.rfind("\n", 0, text.find("<")) + 1 if "<" in text else len(text)
    return _repair_lines(text[:first_tag_line], _FTFY_LINES_ENTITIES, "auto") + \
        _repair_lines(text[first_tag_line:], _FTFY_LINES, False)


def _repair_lines(text: str, lines_to_fix: re.Pattern, unescape_html) -> str:
    parts, pos = [], 0
    for run in lines_to_fix.finditer(text):
        parts += [_CONTROL.sub("", text[pos:run.start()]), repair_unicode_with_ftfy(run.group(), unescape_html)]
        pos = run.end()
    parts.append(_CONTROL.sub("", text[pos:]))
    return "".join(parts)


def repair_unicode_with_ftfy(text: str, unescape_html="auto") -> str:
    import ftfy

    text = ftfy.fix_text(text, unescape_html=unescape_html, uncurl_quotes=False, fix_latin_ligatures=True,
                         fix_character_width=True, normalization="NFC")
    # control characters other than tab/newline carry no text; zero-width spaces hide inside words
    text = _CONTROL.sub("", text)
    return unicodedata.normalize("NFC", text)


_ASCII_FTFY_WORK = re.compile(r"[&\r\x1b]")
# consecutive whole lines of which each has a character ftfy may change: beyond ASCII, \r or \x1b (and
# "&" where ftfy decodes entities)
_FTFY_LINES = re.compile(r"(?:^[^\n]*[^\x00-\x0c\x0e-\x1a\x1c-\x7f][^\n]*(?:\n|\Z))+", re.M)
_FTFY_LINES_ENTITIES = re.compile(r"(?:^[^\n]*[^\x00-\x0c\x0e-\x1a\x1c-\x25\x27-\x7f][^\n]*(?:\n|\Z))+", re.M)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u200c\u200d\u2060\ufeff]")

# ------------------------------------------------------------------------------------------------ markup

_HTML_HINT = re.compile(r"<(?:html|body|div|p|span|a|br|table|script|style|head|!DOCTYPE)\b", re.I)
_TAG = re.compile(r"<[^<>]{1,400}?>")
_SCRIPT_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.I | re.S)
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\((?:https?://|/|#|\.)[^)\s]*(?:\s+\"[^\"]*\")?\)")
_MD_HEADER = re.compile(r"^(#{1,6})\s+(?=\S)", re.M)
_MD_EMPHASIS = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_MD_RULE = re.compile(r"^\s*(?:[-*_]\s*){3,}$", re.M)
_REST_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`~?!?([^`<]+?)(?:\s*<[^>]*>)?`")
_REST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([a-z-]+)::\s*", re.M)
# section adornment: a line of one repeated punctuation character under (or over) a title
_REST_ADORNMENT = re.compile(r"^[ \t]*([=\-~*^#+`'\"_])\1{2,}[ \t]*$\n?", re.M)


def looks_like_html(text: str) -> bool:
    return bool(_HTML_HINT.search(text[:5000]))


def strip_html(text: str) -> str:
    """Main text of an HTML document (trafilatura); falls back to removing tags when it finds none."""

    extracted, _ = html_to_text(text)
    if extracted:
        return extracted
    import html as html_lib

    return html_lib.unescape(_TAG.sub(" ", _SCRIPT_STYLE.sub(" ", text))).strip()


def strip_markdown(text: str) -> str:
    """Removes markdown formatting (headers, emphasis, links, images, rules) and keeps the words."""
    text = _MD_IMAGE.sub(lambda m: m.group(1), text)
    text = _MD_LINK.sub(lambda m: m.group(1), text)
    text = _MD_HEADER.sub("", text)
    text = _MD_EMPHASIS.sub(lambda m: m.group(2), text)
    return _REST_ADORNMENT.sub("", _MD_RULE.sub("", text))


def strip_rest_roles(text: str) -> str:
    """reST/Sphinx markup in docstrings: `:func:`os.path.join`` -> `os.path.join`; `.. note::` -> `Note:`."""
    text = _REST_ROLE.sub(lambda m: m.group(1).strip(), text)
    text = _REST_ADORNMENT.sub("", text)
    return _REST_DIRECTIVE.sub(lambda m: f"{m.group(1)}{m.group(2).replace('-', ' ').capitalize()}: ", text)


# Lines that are page furniture rather than content: navigation, cookie banners, share buttons.
_BOILERPLATE = re.compile(
    r"^\s*(?:skip to (?:main )?content|toggle navigation|main menu|back to top|"
    r"(?:we|this (?:site|website)) uses? cookies.*|accept(?: all)? cookies|cookie (?:settings|policy|preferences)|"
    r"share (?:on|this)\b.*|follow us on\b.*|subscribe to (?:our|the) newsletter.*|"
    r"all rights reserved\.?|copyright ©.*|© \d{4}.*|sign in|log in|sign up|"
    r"(?:home|menu|search)(?:\s*[|/>»›]\s*\w[\w ]{0,30}){1,8}|"
    r"previous(?: page)?\s*[|/]?\s*next(?: page)?|read more|click here.*|loading\.\.\.)\s*$",
    re.I | re.M)


def remove_boilerplate_lines(text: str) -> tuple[str, int]:
    """Drops navigation, cookie and share lines. Returns (text, number of lines removed)."""
    # one scan of the whole text first: a line that matches on its own also matches there (^ and $ match at
    # line ends), and most texts have none; matching line by line took half the repair time on short texts
    if not _BOILERPLATE.search(text):
        return text, 0
    lines = text.split("\n")
    kept = [line for line in lines if not _BOILERPLATE.match(line)]
    return "\n".join(kept), len(lines) - len(kept)


def collapse_blank_lines(text: str) -> str:
    # each pattern only where the text holds what its every match holds (a substring test is ~20x cheaper
    # than the pattern's scan, and most texts hold neither)
    if " \n" in text or "\t\n" in text:
        text = _TRAILING_BLANKS.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_RUN.sub("\n\n", text)
    return text.strip()


_TRAILING_BLANKS = re.compile(r"[ \t]+\n")
_BLANK_RUN = re.compile(r"\n{3,}")


# ------------------------------------------------------------------------------------------------ PII

EMAIL_PLACEHOLDER = "<EMAIL>"
IP_PLACEHOLDER = "<IP_ADDRESS>"
PHONE_PLACEHOLDER = "<PHONE>"

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
# +1 (555) 123-4567, 555-123-4567, +44 20 7946 0958, 030 1234 5678: digit groups joined by separators,
# at least 9 digits; plain numbers (versions, ids, years) have no such separators and are left alone.
_PHONE = re.compile(r"(?<![\w.+-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])"
                    r"\d{3,4}[\s.-]\d{3,4}(?![\w-]|\.\d)")
# What every match of each pattern contains: four digit groups joined by dots (IPv4: its octets); a hex digit,
# a colon, up to four hex digits, a colon (IPv6: at least three groups); three digits, a separator, three digits
# (phone: it ends in two groups of 3-4 digits joined by a separator). Version numbers (3.11), "e: " and dates
# hold none of these, so the full patterns run on few texts.
_IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")
_IPV6_HINT = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f]{0,4}:")
_PHONE_HINT = re.compile(r"\d\d\d[\s.-]\d\d\d")
# Reserved for documentation by RFC 2606 / RFC 6761: not anybody's address.
_EXAMPLE_DOMAINS = ("example.com", "example.org", "example.net", "example.edu",
                    ".example", ".test", ".invalid", ".localhost")


def _is_personal_email(address: str) -> bool:
    domain = address.rsplit("@", 1)[-1].lower()
    return not any(domain == d or domain.endswith(d if d.startswith(".") else "." + d) for d in _EXAMPLE_DOMAINS)


def _is_public_ip(address: str) -> bool:
    # "1::2" is a valid global IPv6 address and also a Python slice: ask for 3+ groups of digits
    if ":" in address and sum(1 for g in address.split(":") if g) < 3:
        return False
    try:
        return ipaddress.ip_address(address).is_global
    except ValueError:
        return False


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """Replaces emails, public IP addresses and phone numbers with placeholders.

    Addresses on documentation domains (example.com) and private or reserved IPs (127.0.0.1,
    192.168.x.x, documentation ranges) identify nobody and are kept: Python's own docs are full of them.

    Returns:
        (scrubbed text, counts per kind).
    """
    counts = {"email": 0, "ip": 0, "phone": 0}

    def sub(kind, placeholder, keep_if=None):
        def repl(match):
            if keep_if is not None and not keep_if(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return placeholder
        return repl

    # each pattern runs only on texts holding what every match of it contains (a cheap scan): most texts hold
    # no address or phone number, and the full patterns, tried at every position, cost more
    if "@" in text:
        text = _EMAIL.sub(sub("email", EMAIL_PLACEHOLDER, _is_personal_email), text)
    if _IPV4_HINT.search(text):
        text = _IPV4.sub(sub("ip", IP_PLACEHOLDER, _is_public_ip), text)
    if _IPV6_HINT.search(text):
        text = _IPV6.sub(sub("ip", IP_PLACEHOLDER, _is_public_ip), text)
    if _PHONE_HINT.search(text):
        text = _PHONE.sub(sub("phone", PHONE_PLACEHOLDER, lambda s: sum(c.isdigit() for c in s) >= 9), text)
    return text, counts


# ------------------------------------------------------------------------------------------------ n-grams

_WORD = re.compile(r"\w+")


def ngram_hashes(text: str, n: int) -> set[int]:
    """64-bit hashes of the lower-cased word n-grams of a text (whole text when shorter than n words)."""
    words = _WORD.findall(text.lower())
    if not words:
        return set()
    if len(words) < n:
        grams = [" ".join(words)]
    else:
        grams = (" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    return {int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams}


def text_hash(text: str) -> int:
    """Exact-duplicate key: whitespace-normalized text, 64-bit."""
    normalized = " ".join(text.split())
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little")

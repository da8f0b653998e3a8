"""Text contrast meets WCAG AA (4.5:1) wherever the site's palette is used.

The settlement report's "no breaks" was light green on white (1.07:1). This reads the colours
from the stylesheets themselves, so a new badge or surface is checked the day it is added:
- every text colour of the palette on every light surface the site paints (the page, panels,
  notices, hover rows, previews, code);
- every rule that sets both a colour and a background (buttons, badges, the key box);
- the settlement report's reconciliation badges, which must carry their own background so
  they read on admin's light and dark themes alike.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

BASE = Path(settings.BASE_DIR)
SITE_CSS = BASE / "static" / "css" / "site.css"
REPORT = BASE / "templates" / "admin" / "metering" / "settlement" / "report.html"
TEXT_VARS = ("--ink", "--muted", "--bid", "--ask", "--accent", "--warn")
AA = 4.5
DECORATIVE = (".live-dot", ".meter")  # coloured shapes that hold no text


def _luminance(hex_colour: str) -> float:
    h = hex_colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    channels = [int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _rules(css: str) -> list[tuple[str, dict[str, str]]]:
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    out = []
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        decls = {}
        for decl in body.split(";"):
            name, _, value = decl.partition(":")
            if value:
                decls[name.strip()] = value.strip()
        out.append((selector.strip(), decls))
    return out


def _palette(rules) -> dict[str, str]:
    return next(d for sel, d in rules if sel == ":root")


def _resolve(value: str, palette: dict[str, str]) -> str | None:
    m = re.fullmatch(r"var\((--[\w-]+)(?:,\s*(#[0-9a-fA-F]{3,6}))?\)", value)
    if m:
        value = palette.get(m.group(1), m.group(2) or "")
    m = re.match(r"#[0-9a-fA-F]{6}\b|#[0-9a-fA-F]{3}\b", value)
    return m.group(0) if m else None


def _surfaces(rules, palette) -> set[str]:
    """Light backgrounds any palette text may sit on. A rule that sets its own text colour
    (the skip link's black on amber) is checked as a pair instead."""
    found = {palette[v] for v in ("--bg", "--panel", "--ok-bg", "--err-bg", "--warn-bg")}
    for selector, decls in rules:
        if "color" in decls or any(d in selector for d in DECORATIVE):
            continue
        for prop in ("background", "background-color"):
            colour = _resolve(decls.get(prop, ""), palette)
            if colour and _luminance(colour) > 0.5:  # a light surface text sits on
                found.add(colour)
    return found


SITE_RULES = _rules(SITE_CSS.read_text())
PALETTE = _palette(SITE_RULES)


@pytest.mark.parametrize("text_var", TEXT_VARS)
def test_each_palette_text_colour_reads_on_every_light_surface(text_var):
    colour = PALETTE[text_var]
    low = {bg: round(contrast(colour, bg), 2) for bg in _surfaces(SITE_RULES, PALETTE) if contrast(colour, bg) < AA}
    assert not low, f"{text_var} {colour} is below {AA}:1 on {low}"


def test_every_rule_with_a_colour_and_a_background_reads():
    checked, low = 0, []
    for selector, decls in SITE_RULES:
        fg = _resolve(decls.get("color", ""), PALETTE)
        bg = _resolve(decls.get("background", decls.get("background-color", "")), PALETTE)
        if fg and bg:
            checked += 1
            if contrast(fg, bg) < AA:
                low.append((selector, fg, bg, round(contrast(fg, bg), 2)))
    assert checked >= 8 and not low, low


def test_the_settlement_reports_badges_carry_their_own_readable_background():
    style = re.search(r"<style>(.*?)</style>", REPORT.read_text(), re.S).group(1)
    rules = {sel: d for sel, d in _rules(style)}
    for badge in (".recon-ok", ".recon-break"):
        fg = _resolve(rules[badge]["color"], {})
        bg = _resolve(rules[badge]["background"], {})
        assert fg and bg, f"{badge} needs a literal colour and background"
        assert contrast(fg, bg) >= AA, (badge, contrast(fg, bg))
        assert contrast(fg, "#ffffff") >= AA  # and against admin's light page, around the badge


def test_the_old_no_breaks_green_would_have_failed():
    assert contrast("#ddffdd", "#ffffff") < 1.1  # admin's --message-success-bg, as it was used

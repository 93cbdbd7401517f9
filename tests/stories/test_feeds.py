"""Feed parsing and cleaning, against the seven real fixture feeds and hand-written edge cases."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import FEED_FILES, FEEDS, OWN_FEED_FILES

from newsletter.stories.feeds import SourceError, parse_feed
from newsletter.stories.text import (
    SUMMARY_CHARS,
    StoryData,
    canonical_url,
    clean_title,
    html_to_text,
    http_url,
    summarise,
)

EXPECTED = {
    "bbc.xml": 38,
    "cnn.xml": 29,
    "elmundo.xml": 30,
    "elpais.xml": 81,
    "huffpost.xml": 31,
    "nytimes.xml": 61,
    "theguardian.xml": 95,
}


def test_fixture_set_is_the_expected_seven(shared: Path) -> None:
    assert sorted(p.name for p in FEED_FILES) == sorted(EXPECTED)


@pytest.mark.parametrize("path", FEED_FILES or [FEEDS / "bbc.xml"], ids=lambda p: p.name)
def test_every_fixture_feed_yields_clean_stories(shared: Path, path: Path) -> None:
    parsed = parse_feed(path.read_bytes())
    assert len(parsed.items) == EXPECTED[path.name]
    assert_clean(parsed.items)
    if path.name == "elpais.xml":
        assert any("malformed" in w for w in parsed.warnings)
    else:
        assert parsed.warnings == []


# The same checks on the project's own fixtures (tests/fixtures/feeds), in every clone.
OWN_EXPECTED = {"planet.xml": 9, "gazeta.xml": 5, "wire.xml": 5, "courier.atom": 4, "broken.xml": 3}


@pytest.mark.parametrize("path", OWN_FEED_FILES, ids=lambda p: p.name)
def test_every_own_fixture_feed_yields_clean_stories(path: Path) -> None:
    parsed = parse_feed(path.read_bytes())
    assert len(parsed.items) == OWN_EXPECTED[path.name]
    assert_clean(parsed.items)
    if path.name == "broken.xml":
        assert any("malformed" in w for w in parsed.warnings)
    else:
        assert parsed.warnings == []


def test_own_fixture_set_is_complete() -> None:
    assert sorted(p.name for p in OWN_FEED_FILES) == sorted(OWN_EXPECTED)


def assert_clean(items: list[StoryData]) -> None:
    """What every parsed story must look like, whatever the feed did."""
    assert len({item.guid for item in items}) == len(items)
    for item in items:
        assert http_url(item.url) == item.url
        assert item.title and item.title == item.title.strip()
        assert not any(ord(c) < 32 for c in item.title)
        assert "<" not in item.summary and "&nbsp;" not in item.summary
        assert "feedburner" not in item.summary and "feedburner" not in item.url
        assert len(item.summary) <= SUMMARY_CHARS + 1
        assert "  " not in item.summary
        if item.image_url:
            assert http_url(item.image_url) and "feedburner" not in item.image_url
        if item.published_at:
            assert item.published_at.tzinfo is not None
            assert item.published_at.utcoffset() == UTC.utcoffset(None)


def test_cnn_keeps_the_original_link_not_the_feedburner_proxy(shared: Path) -> None:
    parsed = parse_feed((FEEDS / "cnn.xml").read_bytes())
    first = parsed.items[0]
    assert first.url == (
        "https://www.cnn.com/2020/01/01/australia/australia-fires-explainer-intl-hnk-scli/index.html"
    )
    assert not any("rss.cnn.com" in item.url for item in parsed.items)
    # The description is only a 1x1 feedburner pixel: nothing of it survives.
    assert first.summary == ""
    kim = parsed.items[3]
    assert kim.summary == (
        'North Korean Leader Kim Jong Un said Tuesday that there "will never" be denuclearization'
        ' on the Korean peninsula if the US "persists in its hostile policy towards" the hermit'
        " nation, according to the country's state news agency."
    )
    # Largest reasonable media:content (1100x619), not the 250px or vertical crops.
    assert first.image_url and first.image_url.endswith("-super-169.jpg")


def test_non_ascii_is_preserved_and_entities_decoded(shared: Path) -> None:
    elpais = parse_feed((FEEDS / "elpais.xml").read_bytes())
    conte = elpais.items[0]
    assert conte.title == (
        "MOCKS - Giuseppe Conte: “Habría sido criminal ocultar datos del coronavirus o minimizarlo”"
    )
    assert conte.author == "STEFANO CAPPELLINI"
    assert conte.image_alt == "El primer ministro de Italia, Giuseppe Conte."
    assert conte.published_at == datetime(2020, 3, 9, 7, 15, 45, tzinfo=UTC)
    elmundo = parse_feed((FEEDS / "elmundo.xml").read_bytes())
    # The description is "&nbsp;<a>Leer</a><img tracker>": the content teaser is used instead.
    assert elmundo.items[0].summary.startswith("EH Bildu ratificó este viernes")
    assert "Leer" not in elmundo.items[0].summary
    guardian = parse_feed((FEEDS / "theguardian.xml").read_bytes())
    assert guardian.items[0].summary.startswith(
        "Prime minister has no plans to step down before getting Brexit deal passed, says No 10 "
        "Theresa May has no intention"
    )
    assert guardian.items[0].summary.endswith("…")
    assert "“get Brexit done”" in guardian.items[0].summary
    assert guardian.items[0].image_url and "width=460" in guardian.items[0].image_url


def test_timezones_become_utc(shared: Path) -> None:
    elmundo = parse_feed((FEEDS / "elmundo.xml").read_bytes())
    # <pubDate>Sat, 01 Jun 2019 02:49:07 +0200</pubDate>
    assert elmundo.items[0].published_at == datetime(2019, 6, 1, 0, 49, 7, tzinfo=UTC)


def test_enclosure_image_and_media_description_alt(shared: Path) -> None:
    huffpost = parse_feed((FEEDS / "huffpost.xml").read_bytes())
    assert huffpost.items[0].image_url == (
        "https://img.huffingtonpost.com/asset/5d386d842600004a0004557d.jpeg"
        "?cache=oocpryhyoj&ops=224_126"
    )
    nyt = parse_feed((FEEDS / "nytimes.xml").read_bytes())
    assert (
        nyt.items[0].image_alt
        == "A protester holding an emblem from the embassy late in the evening."
    )
    assert (
        nyt.items[0].guid
        == "https://www.nytimes.com/2019/12/31/world/middleeast/baghdad-protesters-us-embassy.html"
    )


ATOM = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:media="http://search.yahoo.com/mrss/">
  <title>Atom test</title>
  <link href="https://atom.example.org/"/>
  <id>urn:uuid:60a76c80-d399-11d9-b93C-0003939e0af6</id>
  <updated>2024-05-01T10:00:00Z</updated>
  <entry>
    <title type="html">Caf&amp;eacute; &lt;b&gt;opens&lt;/b&gt;&amp;#27; today</title>
    <link rel="alternate" href="/news/cafe-opens"/>
    <id>tag:atom.example.org,2024:1</id>
    <updated>2024-05-01T09:30:00+02:00</updated>
    <author><name>Ana Ruiz</name></author>
    <summary type="html">&lt;p&gt;The caf&amp;eacute; opened &lt;img src="https://ads.example/p.gif"
      width="1" height="1"/&gt;on Monday.&lt;/p&gt;&lt;div class="feedflare"&gt;&lt;a
      href="http://feeds.feedburner.com/~ff/x?a=1"&gt;Share&lt;/a&gt;&lt;/div&gt;</summary>
    <media:thumbnail url="https://atom.example.org/pixel.gif" width="1" height="1"/>
    <media:thumbnail url="https://atom.example.org/cafe.jpg" width="800" height="450"/>
  </entry>
  <entry>
    <title>Bad link</title>
    <link rel="alternate" href="javascript:alert(1)"/>
    <id>tag:atom.example.org,2024:2</id>
  </entry>
</feed>
"""

RSS10 = b"""<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/"
  xmlns:dc="http://purl.org/dc/elements/1.1/">
  <channel rdf:about="https://rdf.example.org/">
    <title>RDF</title><link>https://rdf.example.org/</link><description>d</description>
  </channel>
  <item rdf:about="https://rdf.example.org/a?utm_source=rss">
    <title>RSS one point oh</title><link>https://rdf.example.org/a?utm_source=rss</link>
    <description>Plain &amp;amp; simple</description><dc:date>2024-01-02T03:04:05Z</dc:date>
  </item>
</rdf:RDF>
"""

RSS091 = b"""<?xml version="1.0"?>
<rss version="0.91"><channel><title>Old</title><link>http://old.example.net/</link>
<description>d</description><language>en</language>
<item><title>Ninety-one</title><link>http://old.example.net/91</link>
<description>An old-style item.</description></item>
<item><title>FTP item</title><link>ftp://old.example.net/file</link></item>
</channel></rss>
"""


def test_atom_feed_html_summary_pixels_feedflare_and_relative_links() -> None:
    parsed = parse_feed(ATOM)
    assert len(parsed.items) == 1
    item = parsed.items[0]
    assert item.title == "Café opens today"
    assert item.url == "https://atom.example.org/news/cafe-opens"
    assert item.guid == "tag:atom.example.org,2024:1"
    assert item.summary == "The café opened on Monday."
    assert item.image_url == "https://atom.example.org/cafe.jpg"
    assert item.author == "Ana Ruiz"
    assert item.published_at == datetime(2024, 5, 1, 7, 30, tzinfo=UTC)
    assert parsed.warnings == ["skipped 'Bad link': refused non-http(s) URL 'javascript:alert(1)'"]


def test_rss_1_0_and_0_91() -> None:
    rdf = parse_feed(RSS10)
    assert [(i.title, i.summary) for i in rdf.items] == [("RSS one point oh", "Plain & simple")]
    assert rdf.items[0].guid == "https://rdf.example.org/a"  # canonical: utm_* dropped
    old = parse_feed(RSS091)
    assert [i.url for i in old.items] == ["http://old.example.net/91"]
    assert "refused non-http(s) URL 'ftp://old.example.net/file'" in old.warnings[0]


@pytest.mark.parametrize(
    "data",
    [b"<html><body><p>Not a feed</p></body></html>", b"\x00\x01garbage", b"", b"<rss><channel>"],
)
def test_not_a_feed_is_an_error(data: bytes) -> None:
    with pytest.raises(SourceError, match="feed"):
        parse_feed(data)


def test_html_to_text_and_summaries() -> None:
    text = html_to_text(
        '<p>One&nbsp;&amp; two</p><script>alert("x")</script><img src="x.gif">'
        '<div class="feedflare"><a href="http://feeds.feedburner.com/~ff/a">Email this</a></div>'
        '<a href="http://feeds.feedburner.com/~r/x">proxy</a><p>three &#8212; four</p>'
    )
    assert " ".join(text.split()) == "One & two three — four"
    long = "word " * 200
    capped = summarise(long)
    assert capped.endswith("…") and len(capped) <= SUMMARY_CHARS + 1
    assert capped[:-1] == capped[:-1].rstrip() and not capped[:-1].endswith("wor")
    assert summarise("  short \n\t text ") == "short text"


def test_titles_lose_control_characters() -> None:
    assert clean_title("Breaking\r\nBcc: evil@example.com\x00\x1b[31m") == (
        "Breaking Bcc: evil@example.com [31m"
    )
    assert clean_title("\u2028line\u2029sep\x85") == "line sep"
    assert len(clean_title("x" * 900)) == 500


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "ftp://example.com/a",
        "mailto:a@example.com",
        "data:text/html,hi",
        "file:///etc/passwd",
        "/relative/path",
        "https://exa mple.com/",
        "https://example.com/\r\nX: y",
        "http://",
        "https://example.com:99999/",
    ],
)
def test_http_url_refuses(url: str) -> None:
    assert http_url(url) is None


def test_canonical_url() -> None:
    assert canonical_url("HTTPS://WWW.Example.COM:443/a?b=1&utm_source=x&emc=rss#frag") == (
        "https://www.example.com/a?b=1"
    )
    assert canonical_url("http://example.com") == "http://example.com/"
    assert canonical_url("http://example.com:8080/x?partner=acme") == (
        "http://example.com:8080/x?partner=acme"
    )


def test_an_empty_but_valid_feed_warns() -> None:
    parsed = parse_feed(
        b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
    )
    assert parsed.items == [] and parsed.warnings == ["the feed has no entries"]


def test_markdown_article_heading_title_and_byline(tmp_path: Path) -> None:
    from newsletter.stories.articles import parse_article

    md = tmp_path / "Élan vital!.md"
    md.write_text(
        "\ufeff# The *élan* of spring\r\n\r\nMarch 3, 2024\r\nBy Ana Ruiz\r\n\r\n"
        "> A quote.\r\n\r\n- one\r\n- two\r\n\r\nRead more exclusive news from Us.\r\nTeaser\r\n",
        encoding="utf-8",
    )
    parsed = parse_article(md, "https://site.example.com/news")
    (item,) = parsed.items
    assert item.title == "The élan of spring"
    assert item.author == "Ana Ruiz"
    assert item.url == "https://site.example.com/news/elan-vital"
    assert item.guid == "article:elan-vital"
    assert item.summary == "A quote. one two"
    assert item.published_at == datetime(2024, 3, 3, tzinfo=UTC)


def test_article_headline_that_looks_like_a_header_line(tmp_path: Path) -> None:
    from newsletter.stories.articles import parse_article

    art = tmp_path / "week.txt"
    art.write_text("Summary: the week in review\n\nJanuary 5, 2024\n\nIt was busy.\n", "utf-8")
    (item,) = parse_article(art, "https://s.example").items
    assert (item.title, item.summary) == ("Summary: the week in review", "It was busy.")

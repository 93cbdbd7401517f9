"""The project's own fixtures (tests/fixtures/, written by us): every quirk of the real
feeds, checked in any clone, with or without ``../shared``.

CDATA titles, feedburner origLink, tracking pixels, missing descriptions, media:group,
non-ASCII text, a malformed feed, an article export, sponsored items.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import OWN_ARTICLES, OWN_FEEDS
from sqlalchemy import select, update

from newsletter.cli import main
from newsletter.context import Context
from newsletter.mail.digest import build_issue
from newsletter.models import Story
from newsletter.stories import import_sources, list_stories, set_featured
from newsletter.stories.feeds import parse_feed, section_from_title, site_domain

PLANET = OWN_FEEDS / "planet.xml"
ADVERTS = {
    "Refinance now and you could save $19,000",
    "Seniors are switching to this hearing aid",
    "Mortgage rates at 2.99% APR. Do you qualify?",
}


def parsed(name: str):  # type: ignore[no-untyped-def]
    return parse_feed((OWN_FEEDS / name).read_bytes())


def test_cdata_titles_origlink_pixels_and_media_group() -> None:
    feed = parsed("planet.xml")
    first = feed.items[0]
    assert first.title == "Harbour tunnel opens a year early, and under budget"  # CDATA, trimmed
    assert first.url.startswith("https://www.dailyplanet.example/metro/2026/11/harbour-tunnel/")
    assert not any("feedburner" in item.url for item in feed.items)  # origLink, not the proxy
    # The description is only a pixel: the teaser comes from content:encoded, no feedflare.
    assert first.summary.startswith("The six-lane tunnel under the harbour opened on Monday")
    assert "feedflare" not in first.summary and "<" not in first.summary
    # media:group: the largest picture up to 1600 px, not the 3600 px original or a crop.
    assert first.image_url == "https://img.dailyplanet.example/2026/11/harbour-tunnel-super-169.jpg"
    assert first.section == "Transport"  # the item's <category>
    assert feed.items[3].section == "Metro"  # no category: the feed title's section


def test_non_ascii_entities_and_the_leer_stub() -> None:
    feed = parsed("gazeta.xml")
    titles = [item.title for item in feed.items]
    assert (
        "¿Quién pagará la nueva línea de tranvía? El Ayuntamiento y la Comunidad, a medias"
        in titles
    )
    tranvia = feed.items[0]
    assert tranvia.summary.startswith("El acuerdo firmado el lunes reparte")  # not "Leer"
    assert tranvia.author == "Lucía Fernández Muñoz"
    assert feed.items[1].image_alt == "Las jugadoras celebran el gol de Martínez en Oporto."
    assert "&amp;" not in feed.items[1].summary and "& entregado" in feed.items[1].summary
    assert "«o paramos ahora" in feed.items[2].summary  # double-escaped entities decoded
    assert tranvia.published_at == datetime(2026, 11, 30, 21, 15, tzinfo=UTC)  # +0100
    assert {item.section for item in feed.items} >= {"Ciudad", "Deportes", "Economía"}


def test_missing_descriptions_enclosures_thumbnails_and_time_zones() -> None:
    feed = parsed("wire.xml")
    geneva, volcano, chile, tokyo, _ = feed.items
    assert geneva.image_url == "https://img.wire.example.net/2026/11/geneva.jpg"  # enclosure
    assert geneva.image_alt == "Delegates arrive at the Palais des Nations in Geneva."
    assert "pixel" not in geneva.summary and geneva.summary.endswith('"several days" of talks.')
    assert volcano.summary == "" and chile.summary == ""  # none, and empty
    assert volcano.sponsored is None  # dated: no summary alone is not an advert
    assert tokyo.published_at == datetime(2026, 11, 30, 17, 30, tzinfo=UTC)  # +0900
    assert chile.published_at == datetime(2026, 11, 30, 12, 45, tzinfo=UTC)  # -0300
    assert geneva.section == "World News"  # "World Wire > World News"


def test_atom_relative_links_html_titles_and_beacons() -> None:
    feed = parsed("courier.atom")
    wildfire = feed.items[0]
    assert wildfire.title == "Wildfire season ends with the fewest fires in two decades"
    assert wildfire.url == "https://courier.example.org/news/2026/11/30/wildfire-season-ends"
    assert wildfire.image_url == "https://img.courier.example.org/2026/11/wildfire.jpg"
    assert feed.items[2].summary == ""  # an entry with no summary at all
    assert wildfire.section == "Environment"


def test_malformed_feed_imports_what_is_readable() -> None:
    feed = parsed("broken.xml")
    assert [item.title for item in feed.items][:2] == [
        "First readable story",
        "Second readable story",
    ]
    assert any("malformed feed" in w and "line" in w for w in feed.warnings)


def test_article_export_title_date_and_no_promo(ctx: Context) -> None:
    with ctx.db.write() as session:
        report = import_sources(
            session, [str(OWN_ARTICLES)], article_base_url="https://site.example.com/", feature=True
        )
    assert report.ok and report.added == 1
    with ctx.db.read() as session:
        story = session.scalars(select(Story)).one()
        assert story.title == "The Harbour Ferry Returns After Forty Years"
        assert story.published_at == datetime(2025, 3, 3, tzinfo=UTC)
        assert story.url == "https://site.example.com/harbour-ferry-returns"
        assert "“We did it for our grandparents" in story.summary  # curly quotes kept
        assert "Get the featured stories" not in story.summary
        assert "second ferry route" not in story.summary


@pytest.mark.parametrize(
    ("title", "section"),
    [
        ("CNN.com - RSS Channel - World", "World"),
        ("BBC News - Home", "BBC News"),
        ("NYT > World News", "World News"),
        ("Portada // elmundo", "elmundo"),
        ("The Guardian", "The Guardian"),
        ("", ""),
    ],
)
def test_section_from_a_feed_title(title: str, section: str) -> None:
    assert section_from_title(title) == section


def test_site_domain() -> None:
    assert site_domain("https://www.bbc.co.uk/news/") == "bbc.co.uk"
    assert site_domain("https://ck.lendingtree.com/?a=1") == "lendingtree.com"
    assert site_domain("http://rss.cnn.com/x") == site_domain("https://www.cnn.com/world")


# --------------------------------------------------------------------------- sponsored


def test_sponsored_items_are_recognised_from_what_the_feed_says() -> None:
    feed = parsed("planet.xml")
    adverts = [item for item in feed.items if item.sponsored]
    assert {item.title for item in adverts} == ADVERTS
    for item in adverts:
        assert "no date, no summary" in item.sponsored  # type: ignore[operator]
        assert "clk.adnetwork.example" in item.sponsored  # type: ignore[operator]
    assert all(item.sponsored is None for item in feed.items if item.title not in ADVERTS)


def test_import_leaves_sponsored_out_of_the_featured_stories_and_says_so(
    cli_env: dict[str, str],
) -> None:
    result = CliRunner().invoke(main, ["stories", "import", "--feature", str(PLANET)])
    assert result.exit_code == 0, result.output
    assert "3 sponsored, left out of the featured stories" in result.output
    assert "no date, no summary, links off dailyplanet.example to clk.adnetwork.example" in (
        result.output
    )
    assert "3 sponsored item(s) left out of the featured stories" in result.output


def _import_planet(ctx: Context, feature: bool = True) -> None:
    with ctx.db.write() as session:
        report = import_sources(session, [str(PLANET)], feature=feature)
        assert report.left_out == 3


def test_sponsored_never_in_a_digest_and_never_the_lead(ctx: Context) -> None:
    _import_planet(ctx)
    with ctx.db.write() as session:
        issue = build_issue(session, ctx)
        assert issue is not None
        titles = [link.story.title for link in issue.stories]
        assert not set(titles) & ADVERTS
        assert titles[0] == "Harbour tunnel opens a year early, and under budget"
        assert "Refi" not in issue.subject and "Mortgage" not in issue.html


def test_reimport_and_polling_keep_them_out(ctx: Context) -> None:
    _import_planet(ctx)
    _import_planet(ctx)  # --feature again: still not featured
    with ctx.db.read() as session:
        featured = {s.title for s in session.scalars(select(Story).where(Story.featured))}
    assert not featured & ADVERTS and len(featured) == 6


def test_an_editor_can_still_feature_a_sponsored_item(ctx: Context) -> None:
    _import_planet(ctx)
    with ctx.db.write() as session:
        advert = session.scalars(select(Story).where(Story.title.in_(ADVERTS))).first()
        assert advert is not None
        assert set_featured(session, [advert.id]) == []
        advert_id = advert.id
    _import_planet(ctx)  # a later import does not undo the editor's choice
    with ctx.db.write() as session:
        issue = build_issue(session, ctx)
        assert issue is not None
        assert advert_id in [link.story_id for link in issue.stories]


def test_undated_items_sort_after_the_dated_ones_of_their_import(ctx: Context) -> None:
    _import_planet(ctx, feature=False)
    with ctx.db.read() as session:
        titles = [s.title for s in list_stories(session)]
    assert set(titles[-3:]) == ADVERTS  # undated: never "newest", after their import's stories
    assert titles[0] == "Harbour tunnel opens a year early, and under budget"
    # A later import's dated stories come before them; an earlier import's after.
    with ctx.db.write() as session:
        session.execute(
            update(Story)
            .where(Story.title == "The bakery that has not changed its recipe since 1952")
            .values(published_at=datetime(2026, 11, 1, tzinfo=UTC) - timedelta(days=30))
        )
    with ctx.db.read() as session:
        titles = [s.title for s in list_stories(session)]
    assert titles[-1] == "The bakery that has not changed its recipe since 1952"


# --------------------------------------------------------------------------- fresh clone


def test_missing_shared_folder_skips_naming_it_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import conftest

    missing = tmp_path / "shared" / "fixtures"
    monkeypatch.setattr(conftest, "FIXTURES", missing)
    monkeypatch.setattr(conftest, "FEEDS", missing / "feeds")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=str(missing)):
        conftest.require_shared()
    assert conftest.feed_set() == (OWN_FEEDS, conftest.OWN_GOOD_FEEDS)  # generic tests go on
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=str(missing)):
        conftest.require_shared()
    with pytest.raises(pytest.fail.Exception):
        conftest.feed_set()

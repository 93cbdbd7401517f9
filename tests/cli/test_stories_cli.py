"""``newsletter stories ...`` through click's runner, against a real SQLite file per test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import ARTICLES, FEEDS

from newsletter.cli import main


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def listed_ids(output: str) -> list[int]:
    return [int(m) for m in re.findall(r"^│\s*(\d+)\s*│", output, flags=re.MULTILINE)]


def test_import_feature_and_list(shared: Path, cli_env: dict[str, str]) -> None:
    result = run(
        "stories", "import", str(FEEDS / "bbc.xml"), str(FEEDS / "elpais.xml"), "--feature"
    )
    assert result.exit_code == 0, result.output
    assert f"{FEEDS / 'bbc.xml'}: 38 added, 0 updated, 0 unchanged" in result.stdout
    assert "119 added, 0 updated (featured)" in result.stdout
    assert "warning:" in result.stderr and "elpais.xml: malformed feed (line 878" in result.stderr

    listed = run("stories", "list", "--featured", "--limit", "3")
    assert listed.exit_code == 0
    assert "3 stories" in listed.stdout
    assert "★" in listed.stdout and "elpais.xml" in listed.stdout
    assert "Giuseppe Conte" in listed.stdout  # newest first: 2020 El País before 2019 BBC
    assert "2020-03-09 07:15" in listed.stdout
    assert len(listed_ids(listed.stdout)) == 3

    again = run("stories", "import", str(FEEDS / "bbc.xml"))
    assert again.exit_code == 0
    assert "0 added, 0 updated" in again.stdout
    everything = run("stories", "list")
    assert "119 stories" in everything.stdout


def test_article_import_links_to_the_configured_base(
    shared: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run("stories", "import", str(ARTICLES))
    assert result.exit_code == 0, result.output
    # Without NEWSLETTER_ARTICLE_BASE_URL the web app's base is used, and said so.
    assert "linking to https://news.example.com/putin-meets-chinas-defense-minister" in (
        result.stderr
    )
    monkeypatch.setenv("NEWSLETTER_ARTICLE_BASE_URL", "https://www.site.example/")
    again = run("stories", "import", str(ARTICLES))
    assert again.exit_code == 0 and again.stderr == ""
    assert "0 added, 1 updated" in again.stdout  # same guid, the link moved
    listed = run("stories", "list")
    assert "Putin Meets with China’s Defense Minister in Moscow" in listed.stdout
    assert "1 story" in listed.stdout


def test_bad_source_among_good_ones_exits_1(
    shared: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.rss"
    broken.write_text("<html>nope</html>", encoding="utf-8")
    result = run(
        "stories", "import", str(FEEDS / "huffpost.xml"), "nowhere/feed.xml", str(broken),
        "javascript:alert(1)//x", "mailto://a@b",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "error: nowhere/feed.xml: no such file or folder" in result.stderr
    assert f"error: {broken}: not an RSS or Atom feed" in result.stderr
    assert "error: mailto://a@b: only http(s) URLs can be fetched" in result.stderr
    assert "error: javascript:alert(1)//x: only http(s) URLs can be fetched" in result.stderr
    assert "31 added, 0 updated; 4 source(s) failed" in result.stderr
    assert "31 stories" in run("stories", "list").stdout


def test_import_needs_a_source(cli_env: dict[str, str]) -> None:
    result = run("stories", "import")
    assert result.exit_code == 2 and "Missing argument" in result.output


def test_add_feature_unfeature(cli_env: dict[str, str]) -> None:
    added = run(
        "stories", "add", "--title", "Launch day", "--url", "https://example.com/launch",
        "--summary", "<b>Big</b> news", "--feature",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    (story_id,) = re.findall(r"added story (\d+)", added.stdout)
    other = run("stories", "add", "--title", "Second", "--url", "http://example.com/2")
    (other_id,) = re.findall(r"added story (\d+)", other.stdout)

    bad = run("stories", "add", "--title", "X", "--url", "javascript:alert(1)")
    assert bad.exit_code == 2
    assert "not an absolute http(s) URL: 'javascript:alert(1)'" in bad.stderr
    assert run("stories", "add", "--title", "\r\n", "--url", "https://e.com").exit_code == 2
    assert run("stories", "add", "--url", "https://e.com").exit_code == 2  # --title missing

    featured = run("stories", "list", "--featured")
    assert listed_ids(featured.stdout) == [int(story_id)]
    assert "Launch day" in featured.stdout and "manual" in featured.stdout

    partly = run("stories", "feature", other_id, "4242")
    assert partly.exit_code == 1
    assert f"featured: {other_id}" in partly.stdout
    assert "error: no story with id 4242" in partly.stderr
    assert sorted(listed_ids(run("stories", "list", "--featured").stdout)) == sorted(
        [int(story_id), int(other_id)]
    )
    off = run("stories", "unfeature", story_id)
    assert off.exit_code == 0 and f"unfeatured: {story_id}" in off.stdout
    assert listed_ids(run("stories", "list", "--featured").stdout) == [int(other_id)]
    assert run("stories", "feature", "abc").exit_code == 2
    unsent = run("stories", "list", "--unsent")
    assert "2 stories" in unsent.stdout


def test_empty_list(cli_env: dict[str, str]) -> None:
    result = run("stories", "list", "--unsent")
    assert result.exit_code == 0 and result.stdout.strip() == "0 stories"

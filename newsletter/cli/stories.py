"""``newsletter stories import | add | list | feature | unfeature``.

Results go to stdout, warnings and failures to stderr; the exit code is 1 when
any source failed or any id was unknown (the rest is still applied and kept).
"""

from __future__ import annotations

import sys

import click

from .state import AppState, pass_state

# Ids are database integers: a larger number is a typo, not an OverflowError traceback.
STORY_ID = click.IntRange(min=1, max=2**63 - 1)


@click.group("stories")
def stories_group() -> None:
    """Import, add, list and feature stories."""


@stories_group.command("import")
@click.argument("sources", nargs=-1, required=True)
@click.option("--feature", is_flag=True, help="Mark every imported story as featured.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.01),
    default=None,
    help="Seconds for the whole fetch of each feed URL [default: NEWSLETTER_FEED_TIMEOUT, 30].",
)
@pass_state
def import_command(
    state: AppState, sources: tuple[str, ...], feature: bool, timeout: float | None
) -> None:
    """Import feed URLs, feed files, article files and folders.

    Feeds are RSS 0.9x/1.0/2.0 or Atom (.xml .rss .atom); articles are the site's
    plain-text or Markdown exports (.txt .md): title line, date line, body. An
    article without a "URL:" line links to NEWSLETTER_ARTICLE_BASE_URL (else
    NEWSLETTER_BASE_URL) plus the file name's slug. Folders are read recursively.
    Importing again updates stories instead of duplicating them.
    """

    from ..stories import import_sources

    ctx = state.ctx
    settings = ctx.settings
    article_base = settings.article_base_url
    with ctx.db.write() as session:
        report = import_sources(
            session,
            list(sources),
            feature=feature,
            timeout=timeout if timeout is not None else settings.feed_timeout,
            article_base_url=article_base or settings.base_url,
            tz=settings.tz,
            warn_derived_url=article_base is None,
            allow_private=settings.feeds_allow_private,
        )
    for result in report.results:
        for warning in result.warnings:
            click.echo(f"warning: {result.source}: {warning}", err=True)
        if result.ok:
            click.echo(result.describe())
        else:
            click.echo(f"error: {result.source}: {result.error}", err=True)
    summary = f"{report.added} added, {report.updated} updated"
    if feature:
        summary += " (featured)"
    if report.left_out:
        summary += f"; {report.left_out} sponsored item(s) left out of the featured stories"
    if report.failed:
        click.echo(f"{summary}; {len(report.failed)} source(s) failed", err=True)
        sys.exit(1)
    click.echo(summary)


@stories_group.command("add")
@click.option("--title", required=True, help="Headline.")
@click.option("--url", required=True, help="Link to the story (http or https).")
@click.option("--summary", default="", help="A sentence or two, plain text.")
@click.option("--image-url", default=None, help="Picture for the story (http or https).")
@click.option("--author", default=None, help="Byline.")
@click.option("--feature", is_flag=True, help="Mark it featured (goes into the next digest).")
@pass_state
def add_command(
    state: AppState,
    title: str,
    url: str,
    summary: str,
    image_url: str | None,
    author: str | None,
    feature: bool,
) -> None:
    """Add one story by hand and print its id.

    A story that already has this URL is updated instead of duplicated.
    """

    from ..stories import InvalidStory, add_story

    ctx = state.ctx
    try:
        with ctx.db.write() as session:
            story, created = add_story(
                session, title, url, summary, feature, image_url=image_url, author=author
            )
            story_id = story.id
    except InvalidStory as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"{'added' if created else 'updated'} story {story_id}")


@stories_group.command("list")
@click.option("--featured", is_flag=True, help="Only featured stories.")
@click.option("--unsent", is_flag=True, help="Only stories no digest has included yet.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most N.")
@pass_state
def list_command(state: AppState, featured: bool, unsent: bool, limit: int | None) -> None:
    """List stories, newest first.

    Columns: id, featured (★), published (in NEWSLETTER_TIMEZONE), title, source.
    """

    from rich.console import Console
    from rich.table import Table

    from ..stories import list_stories

    ctx = state.ctx
    tz = ctx.settings.tz
    out = sys.stdout  # click's runner swaps it in tests
    console = Console(file=out, width=None if out.isatty() else 160, highlight=False)
    table = Table()
    table.add_column("ID", justify="right", no_wrap=True)
    table.add_column("★", no_wrap=True)
    table.add_column("Published", no_wrap=True)
    table.add_column("Title", overflow="fold")
    table.add_column("Source", overflow="fold", max_width=40)
    with ctx.db.read() as session:
        stories = list_stories(
            session, featured=True if featured else None, unsent=unsent, limit=limit
        )
        for story in stories:
            when = (
                story.published_at.astimezone(tz).strftime("%Y-%m-%d %H:%M")
                if story.published_at
                else "-"
            )
            table.add_row(
                str(story.id),
                "★" if story.featured else "",
                when,
                story.title,
                _source_label(story.source),
            )
    if stories:
        console.print(table, markup=False)
    noun = "story" if len(stories) == 1 else "stories"
    click.echo(f"{len(stories)} {noun}")


def _source_label(source: str) -> str:
    if "://" in source:
        return source.split("://", 1)[1].split("/", 1)[0]
    return source.replace("\\", "/").rsplit("/", 1)[-1]


def _feature(state: AppState, ids: tuple[int, ...], featured: bool) -> None:
    from ..stories import set_featured

    with state.ctx.db.write() as session:
        missing = set(set_featured(session, ids, featured))
    applied = [i for i in dict.fromkeys(ids) if i not in missing]
    verb = "featured" if featured else "unfeatured"
    if applied:
        click.echo(f"{verb}: {', '.join(map(str, applied))}")
    if missing:
        click.echo(f"error: no story with id {', '.join(map(str, sorted(missing)))}", err=True)
        sys.exit(1)


@stories_group.command("feature")
@click.argument("ids", nargs=-1, required=True, type=STORY_ID)
@pass_state
def feature_command(state: AppState, ids: tuple[int, ...]) -> None:
    """Mark stories as featured so the next digest includes them."""
    _feature(state, ids, True)


@stories_group.command("unfeature")
@click.argument("ids", nargs=-1, required=True, type=STORY_ID)
@pass_state
def unfeature_command(state: AppState, ids: tuple[int, ...]) -> None:
    """Take stories out of the featured set."""
    _feature(state, ids, False)


COMMANDS: list[click.Command] = [stories_group]

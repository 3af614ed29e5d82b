"""README.md and the docs pages: a newcomer's page that fits, and links that lead somewhere."""
import glob
import os
import re

import pytest

from conftest import ROOT

LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
HEADING = re.compile(r'^(#{1,6}) (.*?)\s*$')
PAGES = ['README.md'] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '**', '*.md'),
                                                                           recursive=True))


def anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def anchors(path):
    """Every heading anchor of a markdown file (outside code blocks), repeats numbered as GitHub does."""
    found, seen, in_code = set(), {}, False
    with open(path, encoding='utf-8') as f:
        for line in f:
            if line.startswith('```'):
                in_code = not in_code
            match = None if in_code else HEADING.match(line)
            if match:
                name = anchor(match.group(2))
                found.add(name if name not in seen else '%s-%d' % (name, seen[name]))
                seen[name] = seen.get(name, 0) + 1
    return found


def broken_links(page):
    """'TARGET: why' for each relative link of `page` that leads to no file or heading."""
    path = os.path.join(ROOT, page)
    with open(path, encoding='utf-8') as f:
        text = re.sub(r'```.*?```', '', f.read(), flags=re.S)  # commands, not links
    broken = []
    for target in LINK.findall(text):
        if re.match(r'[a-z]+:', target):
            continue  # http(s), mailto: not checked here (no network)
        file_part, _, fragment = target.partition('#')
        linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(linked):
            broken.append('%s: no such file' % target)
        elif fragment and linked.endswith('.md') and fragment not in anchors(linked):
            broken.append('%s: no such heading in %s' % (target, os.path.relpath(linked, ROOT)))
    return broken


def test_the_readme_fits_a_newcomers_screenful_and_keeps_the_ci_test_command():
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
        lines = f.read().splitlines()
    assert len(lines) <= 150
    assert 'python -m pytest -q tests' in lines  # .ci/run runs the README's test command


@pytest.mark.parametrize('page', PAGES)
def test_every_link_leads_to_a_file_or_heading(page):
    assert broken_links(page) == []


def test_a_broken_link_is_found(tmp_path, monkeypatch):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'a.md').write_text('# A page\n\n## Its `part` two\n')
    (tmp_path / 'README.md').write_text(
        '[ok](docs/a.md#its-part-two) [x](docs/a.md#part-three) [y](docs/b.md) [z](https://x.org)\n'
        '```\n[in code](nowhere.md)\n```\n')
    monkeypatch.setattr('test_readme.ROOT', str(tmp_path))
    assert broken_links('README.md') == ['docs/a.md#part-three: no such heading in docs/a.md',
                                         'docs/b.md: no such file']

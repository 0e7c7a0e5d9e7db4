"""The web UI's static files (control_plane/web/static/) hold together without a build step: every ES module
import names a file that exists and a name that file exports; the pages load nothing from the network and
run no inline script (the server's Content-Security-Policy is `script-src 'self'`); every UI route the
HTTP API serves index.html for has a page in js/routes.js; the login form is what docs/http-api.md asks."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
STATIC = ROOT / "control_plane" / "web" / "static"
IMPORT = re.compile(r"import\s*\{([^}]*)\}\s*from\s*\"([^\"]+)\"", re.S)
EXPORT = re.compile(r"export\s+(?:async\s+)?(?:function|const|let|class)\s+(\w+)|export\s*\{([^}]*)\}")


def modules() -> list[Path]:
    return sorted((STATIC / "js").rglob("*.js"))


def exported(path: Path) -> set[str]:
    names: set[str] = set()
    for single, group in EXPORT.findall(path.read_text()):
        if single:
            names.add(single)
        for part in group.split(","):
            if part.strip():
                names.add(part.split(" as ")[-1].strip())
    return names


def test_every_import_names_an_existing_module_and_an_exported_name() -> None:
    assert modules(), "no modules under static/js"
    problems = []
    for path in modules():
        for names, target in IMPORT.findall(path.read_text()):
            assert target.startswith("./") or target.startswith("../"), f"{path.name}: bare import {target}"
            source = (path.parent / target).resolve()
            if not source.is_file():
                problems.append(f"{path.relative_to(STATIC)} imports missing {target}")
                continue
            for name in (n.split(" as ")[0].strip() for n in names.split(",")):
                if name and name not in exported(source):
                    problems.append(f"{path.relative_to(STATIC)} imports {name} that {target} does not export")
    assert problems == []


def test_every_imported_name_is_used() -> None:
    unused = []
    for path in modules():
        text = path.read_text()
        body = IMPORT.sub("", text)
        for names, target in IMPORT.findall(text):
            for name in (n.split(" as ")[-1].strip() for n in names.split(",")):
                if name and not re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", body):
                    unused.append(f"{path.relative_to(STATIC)}: {name} from {target}")
    assert unused == []


def test_pages_load_nothing_from_the_network_and_have_no_inline_script() -> None:
    for path in [*STATIC.rglob("*.html"), *STATIC.rglob("*.js"), *STATIC.rglob("*.css"), *STATIC.rglob("*.svg")]:
        text = path.read_text()
        urls = [u for u in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)
                if not u.startswith("http://www.w3.org/2000/svg")]
        assert urls == [], f"{path.name} refers to {urls}"
        if path.suffix == ".html":
            assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", text) == [], f"{path.name} has an inline script"
            assert " on" not in re.sub(r"\s+", " ", "".join(re.findall(r"<[^>]+>", text))).replace(" one", ""), \
                f"{path.name} has an inline event handler"


def test_every_ui_route_of_the_http_api_has_a_page() -> None:
    routes_js = (STATIC / "js" / "routes.js").read_text()
    patterns = [re.compile(p.replace("\\/", "/")) for p in re.findall(r"pattern: /(.+?)/,", routes_js)]
    for path in ("/", "/agents", "/agents/a-1", "/frameworks", "/frameworks/fw-1", "/tasks", "/tasks/fw-1%2Fweb-0",
                 "/events", "/timetravel", "/services", "/services/web"):
        assert any(p.match(path) for p in patterns), f"no page for {path}"
    assert not any(p.match("/tasks/a/b") for p in patterns)


def test_the_login_page_posts_a_token_field_to_login() -> None:
    page = (STATIC / "login.html").read_text()
    assert re.search(r'<form method="post" action="/login">', page)
    assert re.search(r'<input[^>]*name="token"', page) and re.search(r'<input[^>]*name="next"', page)

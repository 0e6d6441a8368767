"""The console's pages, server-rendered from views.py's values (the first paint; no script needed
to read them). Every value goes through markup.el, which escapes it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from supervisor.console.markup import Markup, el, join

PAGES = (("models", "/ui/", "Models"), ("activity", "/ui/activity", "Activity"), ("logs", "/ui/logs", "Logs"),
         ("host", "/ui/host", "Host"))
HOW_TO_LOGIN = ("Read-only: actions need the login URL that 'llama-supervisorctl console' prints"
                " (or an admin key from --admin-keys-file).")


def layout(page: str, title: str, body: Markup, *, csrf: str = "", admin: bool = False) -> str:
    nav = el("nav", el("ul", [el("li", el("a", label, href=href, aria_current="page" if key == page else None))
                              for key, href, label in PAGES]), aria_label="Console pages")
    banner = None if admin else el("p", HOW_TO_LOGIN, class_="readonly", id="readonly")
    return "<!doctype html>\n" + el(
        "html",
        el("head", el("meta", charset="utf-8"), el("meta", name="viewport", content="width=device-width, initial-scale=1"),
           el("meta", name="csrf-token", content=csrf), el("title", f"{title} · llama-supervisor"),
           el("link", rel="stylesheet", href="/ui/static/console.css"),
           el("script", src="/ui/static/console.js", defer=True)),
        el("body", el("header", el("h1", "llama-supervisor"), nav),
           el("main", banner, el("p", "", id="notice", role="status", aria_live="polite"), body),
           data_page=page, data_admin="1" if admin else "0"),
        lang="en")


def _meter(bar: dict[str, Any] | None, cls: str) -> Markup | None:
    if bar is None:
        return None
    return el("div", el("meter", bar["label"], min=0, max=bar["max"], value=bar["value"], aria_label=bar["label"]),
              el("span", bar["label"]), class_=cls)


def model_card(m: dict[str, Any]) -> Markup:
    name = m["name"]
    buttons = [el("button", a.capitalize(), type="button", data_action=a, data_model=name,
                  aria_label=f"{a.capitalize()} {name}") for a in m["actions"]]
    return el(
        "article",
        el("h2", el("span", name, class_="name"), " ", el("span", m["state"], class_=f"state s-{m['state'].lower()}")),
        el("p", m["reason"], class_="reason") if m["reason"] else None,
        el("dl", [join(el("dt", label), el("dd", value)) for label, value in m["fields"]]),
        _meter(m["bar"], "bar"),
        el("div", buttons, class_="actions"),
        class_="model", data_model=name, data_state=m["state"])


def models_page(view: dict[str, Any], *, csrf: str, admin: bool) -> str:
    body = join(el("h2", "Models", class_="page"), _meter(view["budget"], "bar budget"),
                el("div", [model_card(m) for m in view["models"]] or el("p", "No models."), id="models"))
    return layout("models", "Models", body, csrf=csrf, admin=admin)


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], tbody_id: str, caption: str) -> Markup:
    return el("div", el("table", el("caption", caption), el("thead", el("tr", [el("th", c, scope="col") for c in columns])),
                        el("tbody", [el("tr", [el("td", v) for v in r]) for r in rows], id=tbody_id)),
              class_="scroll", tabindex="0")


def activity_page(view: dict[str, Any], columns: Sequence[str], *, csrf: str, admin: bool) -> str:
    body = join(el("h2", "Activity", class_="page"),
                table(columns, view["inflight"], "inflight", "In flight"),
                table(columns, view["done"], "done", "Last requests (newest first)"))
    return layout("activity", "Activity", body, csrf=csrf, admin=admin)


def logs_page(models: Sequence[str], model: str | None, events: Sequence[Sequence[str]], *, csrf: str,
              admin: bool) -> str:
    picker = el("ul", [el("li", el("a", n, href=f"/ui/logs?model={n}", aria_current="true" if n == model else None))
                       for n in models], class_="picker", aria_label="Model logs")
    if model is None:
        log = el("p", "Pick a model to follow its log.")
    elif not admin:
        log = el("p", "A model's log needs the login URL: run 'llama-supervisorctl console'.")
    else:
        log = el("pre", "", id="log", data_model=model, tabindex="0", aria_label=f"Log of {model}")
    body = join(el("h2", "Logs", class_="page"), picker,
                el("section", el("h3", f"Log of {model}" if model else "Model log"), log, class_="log"),
                el("section", el("h3", "Daemon events"),
                   table(("Time", "Model", "Kind", "What"), events, "events", "Transitions, evictions, manifest changes")))
    return layout("logs", "Logs", body, csrf=csrf, admin=admin)


def host_page(sections: Sequence[tuple[str, Sequence[tuple[str, str]]]], *, csrf: str, admin: bool) -> str:
    body = join(el("h2", "Host", class_="page"),
                [el("section", el("h3", title), el("dl", [join(el("dt", k), el("dd", v)) for k, v in rows]))
                 for title, rows in sections])
    return layout("host", "Host", body, csrf=csrf, admin=admin)


def message_page(title: str, text: str) -> str:
    return layout("", title, join(el("h2", title, class_="page"), el("p", text)))

"""Build hooks of the documentation site (mkdocs.yml names this file).

The pages that describe the code are made from the code as the site builds, so they cannot
drift from it:

* ``<!-- cli-reference -->`` in a page becomes every ``tagtune`` command with its usage and a
  table of its arguments, read from the argparse parsers of ``tagtune.apps.cli``;
* ``<!-- openapi-reference -->`` becomes the endpoints and schemas of the OpenAPI description
  that ``tagtune serve`` answers at ``GET /openapi.json`` (for a tagger labelled PER, ORG, LOC);
* ``img/*.png``, the benchmark plots, are drawn by ``bench/plots.py`` from the results JSONs in
  ``bench/`` and added to the site without being written into ``docs/``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
CLI_MARK = "<!-- cli-reference -->"
OPENAPI_MARK = "<!-- openapi-reference -->"
EXAMPLE_LABELS = ["PER", "ORG", "LOC"]


def on_config(config):
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return config


def on_files(files, config):
    """The benchmark plots, drawn into a temporary folder and added as img/NAME.png."""
    plots = _load_module(ROOT / "bench" / "plots.py", "tagtune_bench_plots")
    with tempfile.TemporaryDirectory(prefix="tagtune-plots-") as out:
        for path in plots.write_plots(ROOT / "bench", Path(out)):
            files.append(File.generated(config, f"img/{path.name}", content=path.read_bytes()))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, cli_reference())
    if OPENAPI_MARK in markdown:
        markdown = markdown.replace(OPENAPI_MARK, openapi_reference())
    return markdown


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the command line -------------------------------------------------------------------------

def cli_reference() -> str:
    from tagtune.apps.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    parts = ["## tagtune", "", parser.description or "", "", _usage(parser), "", _arguments(parser), ""]
    for name, sub in commands.choices.items():
        parts += [f"## tagtune {name}", "", _sentence(helps.get(name, "")), "", _usage(sub), "", _arguments(sub), ""]
        if sub.epilog:
            parts += [_fenced(sub.epilog.strip(), "text"), ""]
    return "\n".join(parts) + "\n"


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().strip()
    return _fenced(usage.removeprefix("usage: "), "text")


def _arguments(parser: argparse.ArgumentParser) -> str:
    rows = ["| argument | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        name = ", ".join(f"`{_flag(s, action)}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
        default = action.default
        shown = "" if default in (None, False, argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
        help_text = (action.help or "").replace("%(default)s", str(default)).replace("%%", "%")
        if action.choices and not isinstance(action.choices, dict):
            help_text += f" (one of {', '.join(f'`{c}`' for c in action.choices)})"
        rows.append(f"| {name} | {shown} | {_cell(help_text)} |")
    return "\n".join(rows) if len(rows) > 2 else ""


def _flag(option: str, action: argparse.Action) -> str:
    if action.nargs == 0:
        return option
    metavar = action.metavar or (action.dest.upper() if not action.choices else None)
    return f"{option} {metavar}" if metavar else option


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".") if text else ""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _fenced(text: str, language: str) -> str:
    return f"```{language}\n{text}\n```"


# --- the HTTP API -----------------------------------------------------------------------------

def openapi_reference() -> str:
    from tagtune.apps.serve import Limits, openapi_schema

    schema = openapi_schema(EXAMPLE_LABELS, Limits())
    parts = []
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            parts += [f"### {method.upper()} {path}", "", operation.get("summary", ""), ""]
            if operation.get("description"):
                parts += [operation["description"], ""]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                parts += ["Request body:", "", _schema_table(body, schema), ""]
            rows = ["| status | meaning |", "|---|---|"]
            for status, response in operation.get("responses", {}).items():
                rows.append(f"| {status} | {_cell(response.get('description', ''))} |")
            parts += ["\n".join(rows), ""]
    for name, component in schema.get("components", {}).get("schemas", {}).items():
        parts += [f"### {name}", "", component.get("description", ""), "", _schema_table(component, schema), ""]
    parts += ["### The whole description", "", '??? note "openapi.json"', "",
              _indent(_fenced(json.dumps(schema, indent=2, ensure_ascii=False), "json")), ""]
    return "\n".join(parts)


def _schema_table(node: dict, schema: dict) -> str:
    node = _resolve(node, schema)
    properties = node.get("properties")
    if not properties:
        return f"`{_type(node, schema)}`"
    required = set(node.get("required", []))
    rows = ["| field | type | required | meaning |", "|---|---|---|---|"]
    for field, spec in properties.items():
        resolved = _resolve(spec, schema)
        rows.append(f"| `{field}` | {_type(spec, schema)} | {'yes' if field in required else ''} | "
                    f"{_cell(resolved.get('description', ''))} |")
    return "\n".join(rows)


def _resolve(node: dict, schema: dict) -> dict:
    """``node``, or the component its ``$ref`` names."""
    while "$ref" in node:
        target = schema
        for key in _ref_path(node["$ref"]):
            target = target[key]
        node = target
    return node


def _ref_path(ref: str) -> list[str]:
    return ref.removeprefix("#/").split("/")


def _type(node: dict, schema: dict) -> str:
    if "$ref" in node:
        return f"[{node['$ref'].rsplit('/', 1)[-1]}](#{node['$ref'].rsplit('/', 1)[-1].lower()})"
    kind = node.get("type", "object")
    if kind == "array":
        return f"array of {_type(node.get('items', {}), schema)}"
    if "enum" in node:
        return f"{kind}: " + ", ".join(f"`{v}`" for v in node["enum"])
    return kind


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" if line else "" for line in text.splitlines())

"""docs/config.md, generated from the config schema so that it cannot drift from it.

    ./launch.sh config_reference            # rewrites docs/config.md
    python -m kd_research.tools.config_reference --check   # exit 1 if it is stale

Every field of ``config.base_config()`` is listed with its default, read from the schema;
the meaning of each field comes from ``config_fields.py`` (one line per field) or, for a
training scheme's fields, from the scheme (campaign/schemes/), and each method's section
(``distill.<name>``) from the method's own defaults and reference. A field without a
description, or a description of a field that no longer exists, is an error: the
page is complete or it is not written.
"""

import argparse
import os
import sys

from kd_research import config as config_lib
from kd_research.common import fileio
from kd_research.common.errors import UserError
from kd_research.methods import ctkd
from kd_research.methods import registry as method_registry
from kd_research.tools import config_fields

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "docs", "config.md")
COMMAND = "./launch.sh config_reference"


def format_default(value):
  """A default as a user writes it in an override: 0.7, true, flip,crop, '' for empty."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value) if value else "()"
  if isinstance(value, str):
    return value if value else "''"
  return repr(value)


def schema_fields():
  """{dotted field: default} of every field of base_config(), method sections excluded, with
  the model entries under ``model.`` and the schedules under ``schedule.``, once each."""
  flat = config_lib.flatten(config_lib.base_config().to_dict())
  methods = tuple(f"distill.{name}." for name in method_registry.defaults())
  out = {}
  for field, value in flat.items():
    if field.startswith(methods):
      continue
    for prefix in ("teacher.", "student."):
      if field.startswith(prefix):
        field = "model." + field[len(prefix):]
    for schedule in config_fields.SCHEDULES:
      if field.startswith(schedule + "."):
        field = "schedule." + field[len(schedule) + 1:]
    out.setdefault(field, value)
  return out


def descriptions():
  """{field: what it means}: config_fields.py's, and each training scheme's own fields'."""
  out = dict(config_fields.FIELDS)
  for scheme in config_lib.campaign_schemes().values():
    out.update({f"pipeline.{field}": text for field, (_, text) in scheme.fields.items()})
  return out


def check_descriptions():
  """UserError unless every schema field has a description and every description a field."""
  fields = set(schema_fields())
  described = set(descriptions())
  missing, stale = sorted(fields - described), sorted(described - fields)
  if missing or stale:
    raise UserError("kd_research/tools/config_fields.py and the schema disagree: "
                    f"fields without a description: {', '.join(missing) or 'none'}; "
                    f"descriptions of no field: {', '.join(stale) or 'none'}.")


def _cell(text):
  """Text for a Markdown table cell (a literal | would end the cell)."""
  return text.replace("|", "\\|")


def _table(rows):
  lines = ["| field | default | meaning |", "|---|---|---|"]
  lines += [f"| `{field}` | `{format_default(default)}` | {_cell(meaning)} |"
            for field, default, meaning in rows]
  return "\n".join(lines)


def _section_rows(fields, section):
  """(field, default, meaning) of the fields of one section ('' = the top level)."""
  meanings = descriptions()
  rows = []
  for field, default in fields.items():
    head, _, rest = field.rpartition(".")
    if head == section:
      rows.append((field, default, meanings[field]))
  return rows


def _method_sections():
  """One table per method section (and the CTKD modifier's): each field's default and
  meaning (the method's ``field_docs``), and where the defaults come from."""
  methods = method_registry.methods()
  docs = method_registry.field_docs()
  out = []
  for name, section in method_registry.defaults().items():
    reference = methods[name].reference if name in methods else ctkd.REFERENCE
    rows = [(f"distill.{name}.{field}", value, docs[name].get(field, ""))
            for field, value in section.items()]
    out.append("\n".join([f"### `distill.{name}`", "",
                          f"Defaults from: {reference or 'this project'}.", "",
                          _table(rows)]))
  return out


def check_method_docs():
  """UserError naming every method field without a meaning, or a meaning without a field."""
  docs = method_registry.field_docs()
  bad = []
  for name, section in method_registry.defaults().items():
    bad += [f"distill.{name}.{f}" for f in set(section) ^ set(docs[name])]
  if bad:
    raise UserError(f"Method fields without a meaning in their method's field_docs (or "
                    f"meanings of no field): {', '.join(sorted(bad))}.")


def markdown():
  """The whole page."""
  check_descriptions()
  check_method_docs()
  fields = schema_fields()
  parts = [config_fields.INTRO.format(command=COMMAND)]
  for section, title, text in config_fields.SECTIONS:
    parts.append(f"## {title}\n\n{text}\n\n{_table(_section_rows(fields, section))}")
  parts.append(config_fields.METHODS_INTRO + "\n\n" + "\n\n".join(_method_sections()))
  return "\n\n".join(parts) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default=PAGE)
  parser.add_argument("--check", action="store_true",
                      help="exit 1 if --output differs from the generated page")
  args = parser.parse_args(argv)
  try:
    text = markdown()
  except UserError as e:
    sys.stderr.write(f"error: {e}\n")
    return 1
  if args.check:
    current = open(args.output).read() if os.path.exists(args.output) else ""
    if current != text:
      sys.stderr.write(f"error: {args.output} is stale; regenerate it: {COMMAND}\n")
      return 1
    return 0
  fileio.atomic_write_text(args.output, text)
  print(f"wrote {args.output}: {len(schema_fields())} fields and "
        f"{len(method_registry.defaults())} method sections")
  return 0


if __name__ == "__main__":
  sys.exit(main())

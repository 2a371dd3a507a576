"""The checked-in JSON Schemas are generated from the models, never hand-written."""

from pathlib import Path

from stgr_builder.models import json_schemas

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def test_checked_in_schemas_are_current():
    expected = json_schemas()
    stale = [
        name
        for name, text in expected.items()
        if not (SCHEMAS / f"{name}.json").is_file() or (SCHEMAS / f"{name}.json").read_text() != text
    ]
    extra = sorted({p.stem for p in SCHEMAS.glob("*.json")} - set(expected))
    assert not stale and not extra, f"stale schemas {stale}, unexpected {extra}: run `stgr schemas --write`"


def test_config_schema_forbids_unknown_keys():
    import json

    schema = json.loads(json_schemas()["build_config"])
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["SourceConfig"]["additionalProperties"] is False

import json
from pathlib import Path

from pipelines.contract.events import CHANNELS, EVENT_TYPES, RejectReason

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_json_schema_lists_exactly_the_decoder_vocabulary() -> None:
    schema = json.loads((DOCS / "event.schema.json").read_text())
    assert tuple(schema["properties"]["type"]["enum"]) == EVENT_TYPES
    assert tuple(schema["properties"]["channel"]["enum"]) == CHANNELS
    assert set(schema["required"]) == {"event_id", "user_id", "ts", "type", "channel"}


def test_events_doc_names_every_type_channel_and_reject_reason() -> None:
    text = (DOCS / "events.md").read_text()
    for word in (*EVENT_TYPES, *CHANNELS, *(r.value for r in RejectReason)):
        assert f"`{word}`" in text, word


def test_features_doc_lists_the_registry_in_order() -> None:
    from pipelines.core.features import REGISTRY, schema_hash

    text = (DOCS / "features.md").read_text()
    assert schema_hash() in text
    for i, spec in enumerate(REGISTRY):
        assert f"| {i} | `{spec.name}` |" in text, spec.name

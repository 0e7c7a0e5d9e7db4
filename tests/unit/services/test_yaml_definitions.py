"""App definitions in YAML (and JSON) as `tessera service apply` reads them: the format chosen, YAML 1.1's
traps closed, one document, repeated keys refused, and the field's path (with its line) in every refusal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tessera.control_plane.cli.definitions import DefinitionError, choose_format, load_definition
from tessera.sdk.services.app import AppError, parse_app

pytestmark = pytest.mark.timeout(60)

WEB_YAML = """\
# a Marathon-style app, as YAML
id: web
instances: 3
cpus: 0.1
mem: 64
cmd: python3 -m http.server $PORT0
portDefinitions:
  - {port: 0, name: http}
healthChecks:
  - &check
    protocol: HTTP
    path: /
    intervalSeconds: 2
    timeoutSeconds: 1
constraints:
  - [hostname, UNIQUE]
env:
  VERBOSE: on
  SINCE: 2024-01-01
  MODE: no
labels:
  tessera.lb.port: "10080"
upgradeStrategy:
  minimumHealthCapacity: 0.5
  maximumOverCapacity: 0.5
"""

WEB_JSON = """{"id": "web", "instances": 3, "cpus": 0.1, "mem": 64, "cmd": "python3 -m http.server $PORT0",
 "portDefinitions": [{"port": 0, "name": "http"}],
 "healthChecks": [{"protocol": "HTTP", "path": "/", "intervalSeconds": 2, "timeoutSeconds": 1}],
 "constraints": [["hostname", "UNIQUE"]],
 "env": {"VERBOSE": "on", "SINCE": "2024-01-01", "MODE": "no"}, "labels": {"tessera.lb.port": "10080"},
 "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.5}}"""


def refused(text: str, needle: str, name: str = "web.yaml") -> str:
    with pytest.raises(DefinitionError) as caught:
        load_definition(text, name)
    assert needle in str(caught.value), str(caught.value)
    return str(caught.value)


def app_refused(text: str, path: str) -> tuple[str, str]:
    """parse_app's refusal of a loaded YAML text, and where the file wrote the field."""
    definition = load_definition(text, "web.yaml")
    with pytest.raises(AppError) as caught:
        parse_app(definition.data)
    message = str(caught.value)
    assert message.startswith(path), message
    return message, definition.where(message.split(": ", 1)[0])


def test_a_yaml_definition_is_the_same_app_as_its_json() -> None:
    from_yaml = parse_app(load_definition(WEB_YAML, "web.yaml").data)
    from_json = parse_app(load_definition(WEB_JSON, "web.json").data)
    assert from_yaml == from_json and from_yaml.version == from_json.version
    assert from_yaml.to_json() == from_json.to_json()


def test_yes_no_on_off_and_dates_stay_strings_and_only_true_false_are_booleans() -> None:
    env = load_definition(WEB_YAML, "web.yaml").data["env"]
    assert env == {"VERBOSE": "on", "SINCE": "2024-01-01", "MODE": "no"}
    data = load_definition("a: yes\nb: Off\nc: y\nd: true\ne: False\nf: 12:30:00\ng: 1.5\nh: 3\n", "x.yaml").data
    assert data == {"a": "yes", "b": "Off", "c": "y", "d": True, "e": False, "f": 45000, "g": 1.5, "h": 3}


def test_a_boolean_where_a_string_belongs_names_the_field_and_its_line() -> None:
    message, where = app_refused(WEB_YAML.replace("VERBOSE: on", "VERBOSE: true"), "env.VERBOSE:")
    assert "must be a string, got True" in message and where == "line 18, column 12"


def test_a_broken_rule_in_yaml_names_the_field_path_and_its_line() -> None:
    message, where = app_refused(WEB_YAML.replace("intervalSeconds: 2", "intervalSeconds: 0.5"),
                                 "healthChecks[0].intervalSeconds:")
    assert "timeoutSeconds" in message and where == "line 13, column 22"
    _, where = app_refused(WEB_YAML.replace("instances: 3", "instances: -1"), "instances:")
    assert where == "line 3, column 12"
    _, where = app_refused(WEB_YAML.replace("[hostname, UNIQUE]", "[rack, NEAR]"), "constraints[0][1]:")
    assert where == "line 16, column 12"
    _, where = app_refused(WEB_YAML + "instancez: 2\n", "instancez: unknown field")
    assert where == "line 26, column 12"


def test_keys_that_are_not_strings_are_refused_with_the_path() -> None:
    message, where = app_refused(WEB_YAML.replace("  MODE: no", "  1: one"), "env: keys must be strings, got 1")
    assert where == "line 18, column 3"  # where env's mapping starts
    message, _ = app_refused(WEB_YAML.replace("    path: /", "    null: /"), "healthChecks[0]: keys must be strings")
    assert "None" in message
    with pytest.raises(AppError, match="^keys must be strings, got 7"):
        parse_app(load_definition(WEB_YAML + "7: seven\n", "web.yaml").data)


def test_anchors_aliases_and_merge_keys_are_resolved_before_the_check() -> None:
    text = WEB_YAML.replace("upgradeStrategy:\n  minimumHealthCapacity: 0.5\n  maximumOverCapacity: 0.5\n",
                            "upgradeStrategy: &half\n  minimumHealthCapacity: 0.5\n  maximumOverCapacity: 0.5\n")
    merged = text.replace("healthChecks:\n  - &check\n",
                          "healthChecks:\n  - <<: {protocol: TCP, gracePeriodSeconds: 5}\n")
    app = parse_app(load_definition(merged, "web.yaml").data)
    assert app.health_checks[0].protocol == "HTTP" and app.health_checks[0].grace_period_seconds == 5
    # an alias of a whole mapping is its value again (here: where it is not allowed, named by its path and
    # placed where the anchored value was written)
    _, where = app_refused(text + "container: *half\n", "container.maximumOverCapacity: unknown field")
    assert where == "line 23, column 18"  # the anchor


def test_a_second_document_is_refused_with_its_line_and_an_empty_one_is_ignored() -> None:
    refused(WEB_YAML + "---\nid: api\ncmd: x\n", "line 27, column 1: a second YAML document starts here")
    assert load_definition("---\n" + WEB_YAML + "...\n---\n", "web.yaml").data["id"] == "web"
    refused("", "holds no YAML document")
    refused("# only a comment\n", "holds no YAML document")


def test_a_key_written_twice_is_refused_in_yaml_and_json() -> None:
    refused(WEB_YAML + "instances: 5\n", "line 26, column 1: key 'instances' appears twice")
    refused('{"id": "web", "instances": 3, "instances": 5}', "key 'instances' appears twice", "web.json")


def test_syntax_errors_say_line_and_column() -> None:
    refused("id: web\ncmd: [a, b\n", "not YAML: line 3, column 1: expected ',' or ']'")
    refused("id: web\n  cmd: x\n", "not YAML: line 2, column 6: mapping values are not allowed here")
    refused('{"id": "web",\n "cmd" "x"}', "not JSON: line 2, column 8: Expecting ':' delimiter", "web.json")
    refused("x: !!python/object:os.system ls\n", "line 1, column 4: could not determine a constructor")


def test_the_format_comes_from_the_flag_then_the_extension_then_the_first_character() -> None:
    assert choose_format("web.json", "id: web") == "json"
    assert choose_format("web.YML", "{}") == "yaml" and choose_format("web.yaml", "{}") == "yaml"
    assert choose_format("stdin", '  # comment\n{"id": "web"}') == "json"
    assert choose_format("stdin", "id: web") == "yaml" and choose_format("app.txt", "") == "yaml"
    assert choose_format("web.json", "id: web", "yaml") == "yaml"
    assert load_definition("{id: web, cmd: x}", "stdin", "yaml").data == {"id": "web", "cmd": "x"}
    refused("{id: web, cmd: x}", "not JSON", "stdin")


def test_service_apply_refuses_bad_yaml_in_one_line_before_asking_any_master(tmp_path: Path) -> None:
    """No master listens at --masters: the refusal comes from the file alone (exit 2, nothing written)."""
    def apply(text: str, name: str = "web.yaml", *extra: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / name
        path.write_text(text)
        return subprocess.run([sys.executable, "-m", "tessera.control_plane.cli.main", "--masters", "127.0.0.1:9",
                               "service", "apply", str(path), *extra], capture_output=True, text=True, timeout=30)

    bad = apply(WEB_YAML.replace("intervalSeconds: 2", "intervalSeconds: 0.5"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (f"tessera: refused: healthChecks[0].intervalSeconds: must not be below "
                                  f"timeoutSeconds (1) ({tmp_path / 'web.yaml'}, line 13, column 22)")
    broken = apply("id: web\ncmd: [a\n", "web.yml")
    assert broken.returncode == 2 and "web.yml: not YAML: line 3, column 1" in broken.stderr
    as_json = apply(WEB_YAML, "web.json")
    assert as_json.returncode == 2 and "web.json: not JSON: line 1, column 1" in as_json.stderr
    forced = apply(WEB_YAML.replace("instances: 3", "instances: yes"), "web.json", "--format", "yaml")
    assert forced.returncode == 2 and "instances: must be a number, got 'yes'" in forced.stderr
    piped = subprocess.run([sys.executable, "-m", "tessera.control_plane.cli.main", "--masters", "127.0.0.1:9",
                            "service", "apply", "-"], input=WEB_YAML + "---\nid: two\n", capture_output=True,
                           text=True, timeout=30)
    assert piped.returncode == 2 and "stdin: line 27, column 1: a second YAML document" in piped.stderr


def test_constraints_are_checked_before_the_fixed_port_rule_reads_them() -> None:
    fixed = {"id": "a", "cmd": "x", "instances": 2, "portDefinitions": [{"port": 31000}]}
    with pytest.raises(AppError, match=r"^constraints: must be a list"):
        parse_app({**fixed, "constraints": 5})
    with pytest.raises(AppError, match=r"^constraints\[0\]: must be \[attribute"):
        parse_app({**fixed, "constraints": [7]})
    assert parse_app({**fixed, "constraints": [["hostname", "UNIQUE"]]}).instances == 2

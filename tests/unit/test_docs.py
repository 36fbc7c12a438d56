"""The documentation the code can check: the configuration table, and what comments cite."""

import re
from pathlib import Path

from emotion_stream.worker.cli.reference import settings_reference

ROOT = Path(__file__).resolve().parents[2]


def test_the_configuration_reference_is_the_settings_own():
    page = (ROOT / "docs/configuration.md").read_text(encoding="utf-8")
    table = re.search(r"<!-- settings:start -->\n(.*)<!-- settings:end -->", page, re.S)
    assert table, "docs/configuration.md lost its <!-- settings:start --> ... <!-- settings:end --> markers"
    assert table.group(1) == settings_reference(), (
        "docs/configuration.md's table differs from the settings: paste the output of "
        "`emotion-stream settings` between its markers"
    )


def test_the_readme_names_only_settings_that_exist_with_their_defaults():
    from emotion_stream.worker.cli.usage import known_variables
    from emotion_stream.worker.settings import WorkerSettings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    known = known_variables()
    named = set(re.findall(r"`(EMOTION_[A-Z0-9_]+)(?:\*)?`", readme))
    assert named and {n for n in named if not n.endswith("_")} <= known
    section = readme[readme.index("## Configuration") : readme.index("## Message formats")]
    defaults = WorkerSettings.model_construct()
    for row in re.findall(r"^\| `(EMOTION_[A-Z_]+)`(?:, `(EMOTION_[A-Z_]+)`)? \| `([^`]*)`", section, re.M):
        field = row[0].removeprefix("EMOTION_").lower()
        assert str(getattr(defaults, field)) == row[2], f"README gives {row[0]} the default {row[2]}"


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_every_setting_says_what_it_does():
    from emotion_stream.training.settings import TrainingSettings
    from emotion_stream.worker.settings import WorkerSettings

    for settings in (WorkerSettings, TrainingSettings):
        for name, field in settings.model_fields.items():
            assert field.description and len(field.description) > 10, (
                f"{settings.__name__}.{name} has no description"
            )


def test_code_cites_only_files_in_the_repository():
    cited = re.compile(r"\b((?:[\w-]+/)*[\w-]+\.(?:md|py|toml|yml|yaml))\b")
    allowed_names = {"README.md"}  # the model card every exported model directory holds
    missing = []
    for path in [*ROOT.glob("*/**/*.py")]:
        if ".venv" in path.parts or "artifacts" in path.parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for name in cited.findall(line):
                if name in allowed_names or (ROOT / name).exists() or (path.parent / name).exists():
                    continue
                missing.append(f"{path.relative_to(ROOT)}:{number}: {name}")
    assert missing == []


def test_the_readme_testing_kit_example_is_the_test_that_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(
        r"<!-- kit-example:start -->\n```python\n(.*)```\n<!-- kit-example:end -->", readme, re.S
    )
    assert block, "README.md lost its <!-- kit-example:start --> ... <!-- kit-example:end --> markers"
    assert block.group(1) == (ROOT / "tests/kit/test_example.py").read_text(encoding="utf-8"), (
        "README.md's example test differs from tests/kit/test_example.py: copy the file into the README"
    )

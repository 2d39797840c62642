"""The README documents every setting the code declares (docs drift is a bug)."""

from pathlib import Path

from stream.settings import describe_settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table_with_its_default():
    missing = [name for name, default, desc in describe_settings()
               if f"| `{name}` | `{default}` | {desc} |" not in README and f"| `{name}` | | {desc} |" not in README]
    assert not missing, missing

"""Before/after scenarios: source files loaded under unique module names, and patches for them."""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import sys
import uuid
from pathlib import Path
from types import ModuleType

from gdsu_fork import Outcome, Report

SCENARIOS = Path(__file__).parent / "scenarios"


def committed(report: Report) -> Report:
    """`report`, after checking that its update committed (else fail with its reason)."""
    assert report.outcome == Outcome.COMMITTED, report.reason
    return report


@dataclasses.dataclass
class Scenario:
    """One loaded scenario: its live module and the directory holding its files."""

    name: str
    module: ModuleType
    directory: Path

    @property
    def module_name(self) -> str:
        return self.module.__name__

    def source(self, version: str) -> Path:
        """Copy a version of the scenario next to the module, with MODULE replaced."""
        text = (SCENARIOS / self.name / f"{version}.py").read_text()
        target = self.directory / f"{self.module_name}_{version}.py"
        target.write_text(text.replace("MODULE", self.module_name))
        return target

    def patch_file(self, version: str = "v2", extra: str = "", title: str = "test") -> Path:
        """Write a patch file giving the module the `version` source, plus `extra` lines."""
        source = self.source(version)
        path = self.directory / f"patch_{version}_{uuid.uuid4().hex[:6]}.py"
        path.write_text(
            "from gdsu_fork import Patch, policies\n"
            f"patch = Patch({title!r})\n"
            f"patch.module({self.module_name!r}, {source.name!r})\n" + extra
        )
        return path

    def load_companion(self, file: str) -> ModuleType:
        """Import another file of the scenario (e.g. a user of the module) under a unique name."""
        text = (SCENARIOS / self.name / f"{file}.py").read_text()
        name = f"{self.module_name}_{file}"
        (self.directory / f"{name}.py").write_text(text.replace("MODULE", self.module_name))
        return importlib.import_module(name)


class ScenarioLoader:
    """Loads scenarios into sys.modules and removes them afterwards."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.names: list[str] = []
        sys.path.insert(0, str(directory))

    def __call__(self, name: str, version: str = "v1") -> Scenario:
        module_name = f"scn_{name}_{uuid.uuid4().hex[:8]}"
        shutil.copy(SCENARIOS / name / f"{version}.py", self.directory / f"{module_name}.py")
        importlib.invalidate_caches()
        module = importlib.import_module(module_name)
        self.names.append(module_name)
        return Scenario(name, module, self.directory)

    def close(self) -> None:
        for name in list(sys.modules):
            if any(name.startswith(n) for n in self.names):
                del sys.modules[name]
        sys.path.remove(str(self.directory))

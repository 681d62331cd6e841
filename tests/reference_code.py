"""A family's published code, kept outside the repository, for the tests that compare with it:
found through an environment variable, imported as one package (its relative imports work),
and a skip with the reason where it is absent."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest


@dataclass(frozen=True)
class ReferenceCode:
    family: str  # as the skip reason names it
    env: str  # the variable that names the folder
    package: str  # the name its modules are imported under
    files: tuple[str, ...]  # what the folder must hold
    source: str  # where the files come from, for the skip reason

    def folder(self) -> Path | None:
        value = os.environ.get(self.env)
        if not value:
            return None
        folder = Path(value)
        return folder if all((folder / name).is_file() for name in self.files) else None

    def skip_reason(self) -> str:
        return (
            f"the published {self.family} code is absent: set {self.env} to a folder with "
            f"{', '.join(self.files)} ({self.source})"
        )

    def marker(self) -> pytest.MarkDecorator:
        return pytest.mark.skipif(self.folder() is None, reason=self.skip_reason())

    def module(self, name: str) -> ModuleType:
        """A module of the folder, imported as part of one package; skips where it is absent."""
        folder = self.folder()
        if folder is None:
            pytest.skip(self.skip_reason())
        if self.package not in sys.modules:
            spec = importlib.util.spec_from_file_location(
                self.package, folder / "__init__.py", submodule_search_locations=[str(folder)]
            )
            assert spec is not None and spec.loader is not None
            package = importlib.util.module_from_spec(spec)
            sys.modules[self.package] = package
            if (folder / "__init__.py").is_file():
                spec.loader.exec_module(package)
        return importlib.import_module(f"{self.package}.{name}")

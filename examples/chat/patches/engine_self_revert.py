"""Revert engine_self.py: gdsu_fork.report goes back to the source this checkout installs."""

from gdsu_fork import Patch

patch = Patch("gdsu-fork: back to the installed report module")
patch.module("gdsu_fork.report", "../../../gdsu_fork/report.py")
